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
        let key = source.read(env).map_err(SealError::Key)?;
        Self::from_bytes(&key)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let key = crate::keys::key_bytes(bytes)
            .ok_or_else(|| SealError::Key(crate::keys::KEY_SHAPE.into()))?;
        let key = RandomizedNonceKey::new(&AES_256_GCM, &key)
            .map_err(|_| SealError::Key(crate::keys::KEY_SHAPE.into()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_bytes(&[7u8; 32]).expect("a 32-byte key should build a sealer")
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
        let other =
            Sealer::from_bytes(&[8u8; 32]).expect("a second 32-byte key should build a sealer");
        assert!(matches!(
            other.open("lease-1", &sealed),
            Err(SealError::Open)
        ));
    }

    #[test]
    fn key_formats() {
        assert!(Sealer::from_bytes(&[1u8; 31]).is_err());
        let hex =
            crate::keys::generate_hex().expect("a random hex journal key should be generated");
        assert!(Sealer::from_bytes(format!("{}\n", hex.as_str()).as_bytes()).is_ok());
        assert!(Sealer::from_bytes(b"zz").is_err());
    }
}
