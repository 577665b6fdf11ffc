//! credbroker's own signing keys at an authorization server: the `private_key_jwt` client
//! assertion (RFC 7523 §2.2) and the actor token (RFC 8693 §2.1) that names the calling
//! workload.
//!
//! The PEM is held as a [`SecretValue`] and parsed again for each signature, as the GitHub
//! provider does with its App key: no parsed key object outlives a call. The algorithm follows
//! the key (P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA, RSA → RS256), found once at load by
//! signing with each candidate, so an operator never has to name it and cannot name it wrong.

use std::time::{SystemTime, UNIX_EPOCH};

use credbroker_provider_api::SecretValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

pub(crate) struct SigningKey {
    pem: SecretValue,
    alg: Algorithm,
    kid: Option<String>,
}

fn encoding_key(pem: &str, alg: Algorithm) -> Option<EncodingKey> {
    let bytes = pem.as_bytes();
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(bytes).ok(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(bytes).ok(),
        _ => EncodingKey::from_rsa_pem(bytes).ok(),
    }
}

impl SigningKey {
    /// Checks that `pem` is a private key credbroker can sign with. The error never quotes it.
    pub(crate) fn new(pem: SecretValue, kid: Option<String>) -> Result<Self, String> {
        let probe = serde_json::json!({"probe": true});
        for alg in [
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
            Algorithm::RS256,
        ] {
            let signs = encoding_key(pem.expose(), alg)
                .is_some_and(|k| jsonwebtoken::encode(&Header::new(alg), &probe, &k).is_ok());
            if signs {
                return Ok(Self { pem, alg, kid });
            }
        }
        Err("is not a P-256, P-384, Ed25519 or RSA private key in PEM (PKCS#8) form".into())
    }

    #[cfg(test)]
    pub(crate) fn alg(&self) -> Algorithm {
        self.alg
    }

    /// Signs `claims` with header `typ`.
    pub(crate) fn sign(&self, typ: &str, claims: &Value) -> Result<SecretValue, String> {
        let key = encoding_key(self.pem.expose(), self.alg)
            .ok_or_else(|| "the signing key cannot be read".to_string())?;
        let mut header = Header::new(self.alg);
        header.typ = Some(typ.into());
        header.kid.clone_from(&self.kid);
        jsonwebtoken::encode(&header, claims, &key)
            .map(SecretValue::new)
            .map_err(|e| format!("signing: {e}"))
    }
}

/// Seconds since the epoch.
pub(crate) fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = include_str!("../testdata/es256.pem");
    const ED: &str = include_str!("../testdata/ed25519.pem");
    /// PEM armour around the word "secret": shaped like a key, not one.
    const NOT_A_KEY: &str = include_str!("../testdata/not-a-key.pem");

    #[test]
    fn the_algorithm_follows_the_key_and_signatures_carry_typ_and_kid() {
        for (pem, alg) in [(EC, Algorithm::ES256), (ED, Algorithm::EdDSA)] {
            let k = SigningKey::new(SecretValue::new(pem), Some("k1".into()))
                .expect("the test key should be accepted");
            assert_eq!(k.alg(), alg);
            let jwt = k
                .sign("JWT", &serde_json::json!({"sub": "x"}))
                .expect("signing should work");
            let h = jsonwebtoken::decode_header(jwt.expose()).expect("a readable header");
            assert_eq!(
                (h.alg, h.typ.as_deref(), h.kid.as_deref()),
                (alg, Some("JWT"), Some("k1"))
            );
        }
    }

    #[test]
    fn a_bad_key_is_refused_without_quoting_it() {
        let e = SigningKey::new(SecretValue::new(NOT_A_KEY), None)
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("is not a P-256"), "{e}");
        assert!(!e.contains("c2VjcmV0"));
    }
}
