//! Keys and their encodings, a leaf every layer may use: the 256-bit key shape credbroker reads
//! everywhere (journal, audit head, export), hex, and the HMAC-SHA256 keys of the audit trail:
//! one seals the chain head (so rewriting the whole chain, or cutting its end off, needs the key),
//! another pseudonymises identifiers in exports (as Vault's audit devices do). Each is its own
//! key: an export key handed to a SIEM team must not be able to forge the head. Reading a key
//! from its file or credential is `config::KeySource::read`.

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

/// Distinct contexts, so a MAC made for one purpose never verifies for another.
const HEAD_CONTEXT: &[u8] = b"credbroker audit head v1\0";
const FIELD_CONTEXT: &[u8] = b"credbroker audit field v1\0";

pub struct AuditKey {
    key: hmac::Key,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([redacted])")
    }
}

impl AuditKey {
    pub fn from_key(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// The MAC of the chain's end: its sequence number and hash.
    pub fn seal_head(&self, seq: u64, hash: &[u8; 32]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(HEAD_CONTEXT);
        ctx.update(&seq.to_be_bytes());
        ctx.update(hash);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Constant-time check of a head seal.
    pub fn head_is_sealed(&self, seq: u64, hash: &[u8; 32], mac: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(HEAD_CONTEXT.len() + 40);
        msg.extend_from_slice(HEAD_CONTEXT);
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(hash);
        hmac::verify(&self.key, &msg, mac).is_ok()
    }

    /// `hmac-sha256:<hex>` of an identifier: equal inputs stay equal (joins and group-bys still
    /// work on the export), the value itself is not readable without the key.
    pub fn field(&self, value: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(FIELD_CONTEXT);
        ctx.update(value.as_bytes());
        format!("hmac-sha256:{}", hex(ctx.sign().as_ref()))
    }
}

/// What a key file or credential must hold.
pub const KEY_SHAPE: &str =
    "must be 32 raw bytes or 64 hex digits (create one with `credbroker keygen`)";

/// A 256-bit key: 32 raw bytes, or 64 hex digits (a trailing newline is fine).
pub fn key_bytes(bytes: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if bytes.len() == 32 {
        return Some(Zeroizing::new(bytes.to_vec()));
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = Zeroizing::new(vec![0u8; 32]);
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// A fresh key as 64 hex digits.
pub fn generate_hex() -> Result<Zeroizing<String>, String> {
    let mut key = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut *key).map_err(|_| "no randomness".to_string())?;
    Ok(Zeroizing::new(hex(&*key)))
}

/// Lower-case hex (the `hex` crate).
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Hex digits to bytes; `None` for anything else (odd length, a sign, a space).
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_seal_binds_seq_hash_and_key() {
        let k = AuditKey::from_key(&[7u8; 32]);
        let h = [1u8; 32];
        let mac = k.seal_head(5, &h);
        assert!(k.head_is_sealed(5, &h, &mac));
        assert!(!k.head_is_sealed(4, &h, &mac));
        assert!(!k.head_is_sealed(5, &[2u8; 32], &mac));
        assert!(!AuditKey::from_key(&[8u8; 32]).head_is_sealed(5, &h, &mac));
        // A field MAC of the same bytes is not a head seal.
        assert_ne!(k.field("x"), k.field("y"));
        assert_eq!(k.field("alice"), k.field("alice"));
        assert!(k.field("alice").starts_with("hmac-sha256:"));
        assert!(!format!("{k:?}").contains('7'));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex(&hex(&[0, 15, 255])), Some(vec![0, 15, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
