//! Encryption of the secret half of revocation handles before they reach the journal.
//!
//! AES-256-GCM with a random 96-bit nonce per record and the lease id as associated data, so a
//! sealed handle copied onto another lease's row does not open. Format: `0x01 ‖ nonce ‖ ct ‖ tag`.
//! Random nonces are safe here for far more records than a journal will ever hold (the limit is
//! about 2^32 per key).

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use credbroker_provider_api::{Env, SecretValue};
use zeroize::Zeroizing;

use crate::config::KeySource;

const VERSION: u8 = 1;

pub struct Sealer {
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("journal key: {0}")]
    Key(String),
    #[error("a sealed handle does not open: wrong journal key, or the record was altered")]
    Open,
    #[error("encryption failed")]
    Seal,
}

impl Sealer {
    /// Reads the key: 32 raw bytes, or 64 hex digits (a trailing newline is fine).
    pub fn load(source: &KeySource, env: &dyn Env) -> Result<Self, SealError> {
        let key = read_key(source, env).map_err(SealError::Key)?;
        Self::from_bytes(&key)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let key = key_bytes(bytes).ok_or_else(|| SealError::Key(shape()))?;
        let key =
            RandomizedNonceKey::new(&AES_256_GCM, &key).map_err(|_| SealError::Key(shape()))?;
        Ok(Self { key })
    }

    pub fn seal(&self, lease_id: &str, secret: &SecretValue) -> Result<Vec<u8>, SealError> {
        let mut buf = Zeroizing::new(secret.expose().as_bytes().to_vec());
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(lease_id.as_bytes()), &mut *buf)
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, lease_id: &str, sealed: &[u8]) -> Result<SecretValue, SealError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(SealError::Open);
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
            .map_err(|_| SealError::Open)?;
        let mut buf = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(lease_id.as_bytes()), &mut buf)
            .map_err(|_| SealError::Open)?;
        let text = std::str::from_utf8(plain).map_err(|_| SealError::Open)?;
        Ok(SecretValue::new(text))
    }
}

/// A 256-bit key from its file or credential: 32 raw bytes, or 64 hex digits (a trailing
/// newline is fine). The same shape for every key credbroker reads (journal, audit head, export).
pub(crate) fn read_key(source: &KeySource, env: &dyn Env) -> Result<Zeroizing<Vec<u8>>, String> {
    let bytes = match source {
        KeySource::File(path) => {
            Zeroizing::new(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        KeySource::Credential(name) => {
            let secret = env.credential(name)?;
            Zeroizing::new(secret.expose().as_bytes().to_vec())
        }
    };
    key_bytes(&bytes).ok_or_else(shape)
}

fn key_bytes(bytes: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if bytes.len() == 32 {
        return Some(Zeroizing::new(bytes.to_vec()));
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = Zeroizing::new(vec![0u8; 32]);
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn shape() -> String {
    "must be 32 raw bytes or 64 hex digits (create one with `credbroker keygen`)".into()
}

/// A fresh key as 64 hex digits.
pub fn generate_hex() -> Result<Zeroizing<String>, SealError> {
    let mut key = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut *key).map_err(|_| SealError::Seal)?;
    let mut out = Zeroizing::new(String::with_capacity(64));
    for b in key.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_bytes(&[7u8; 32]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn round_trip_and_binding_to_the_lease() {
        let s = sealer();
        let sealed = s
            .seal("lease-1", &SecretValue::new("ghs_secret"))
            .unwrap_or_default();
        assert!(
            !sealed.windows(10).any(|w| w == b"ghs_secret"),
            "plaintext must not appear"
        );
        assert_eq!(
            s.open("lease-1", &sealed)
                .map(|v| v.expose().to_string())
                .ok(),
            Some("ghs_secret".into())
        );
        assert!(matches!(s.open("lease-2", &sealed), Err(SealError::Open)));
        let mut tampered = sealed.clone();
        if let Some(b) = tampered.last_mut() {
            *b ^= 1;
        }
        assert!(matches!(s.open("lease-1", &tampered), Err(SealError::Open)));
        let other = Sealer::from_bytes(&[8u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            other.open("lease-1", &sealed),
            Err(SealError::Open)
        ));
    }

    #[test]
    fn key_formats() {
        assert!(Sealer::from_bytes(&[1u8; 31]).is_err());
        let hex = generate_hex().unwrap_or_else(|e| panic!("{e}"));
        assert!(Sealer::from_bytes(format!("{}\n", hex.as_str()).as_bytes()).is_ok());
        assert!(Sealer::from_bytes(b"zz").is_err());
    }
}
