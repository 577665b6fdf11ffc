//! The App's own identity: a short RS256 JWT signed with the App's private key, which GitHub
//! accepts for the `/app/...` endpoints.
//!
//! GitHub's rules: `iss` is the App id, `iat` and `exp` are integers, and `exp` is at most ten
//! minutes after `iat`. `iat` is backdated by 60 s so a clock a little ahead of GitHub's is not
//! refused; `exp` is 9 minutes after now (10 after `iat`). A JWT is reused until a minute
//! before it expires, then minted again.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credbroker_provider_api::SecretValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

const BACKDATE: u64 = 60;
const LIFETIME: u64 = 540;
const REMINT_BEFORE: Duration = Duration::from_secs(60);

pub(crate) struct AppJwt {
    app_id: u64,
    /// The PEM, kept as a secret; the parsed key lives only while signing.
    key: SecretValue,
    cached: Mutex<Option<(SecretValue, SystemTime)>>,
}

#[derive(Serialize)]
struct Claims {
    iss: String,
    iat: u64,
    exp: u64,
}

impl AppJwt {
    /// Checks that `pem` is an RSA private key (PKCS#1, as GitHub hands it out, or PKCS#8).
    /// The error never quotes the key.
    pub(crate) fn new(app_id: u64, pem: SecretValue) -> Result<Self, String> {
        EncodingKey::from_rsa_pem(pem.expose().as_bytes())
            .map_err(|_| "is not an RSA private key in PEM form".to_string())?;
        Ok(Self {
            app_id,
            key: pem,
            cached: Mutex::new(None),
        })
    }

    /// A JWT valid for at least another minute.
    pub(crate) fn current(&self, now: SystemTime) -> Result<SecretValue, String> {
        if let Ok(cached) = self.cached.lock()
            && let Some((jwt, exp)) = cached.as_ref()
            && now + REMINT_BEFORE < *exp
        {
            return Ok(jwt.duplicate());
        }
        let (jwt, exp) = self.mint(now)?;
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((jwt.duplicate(), exp));
        }
        Ok(jwt)
    }

    fn mint(&self, now: SystemTime) -> Result<(SecretValue, SystemTime), String> {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            iss: self.app_id.to_string(),
            iat: secs.saturating_sub(BACKDATE),
            exp: secs + LIFETIME,
        };
        let key = EncodingKey::from_rsa_pem(self.key.expose().as_bytes())
            .map_err(|_| "the App's private key cannot be read".to_string())?;
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
            .map_err(|e| format!("signing the App JWT: {e}"))?;
        Ok((
            SecretValue::new(jwt),
            UNIX_EPOCH + Duration::from_secs(claims.exp),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway 2048-bit key, generated for these tests only.
    const PEM: &str = include_str!("../testdata/app-key.pem");

    fn claims(jwt: &SecretValue) -> serde_json::Value {
        jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(jwt.expose())
            .map(|t| t.claims)
            .unwrap_or_default()
    }

    #[test]
    fn jwts_follow_githubs_rules_and_are_reused_until_nearly_expired() {
        let app = AppJwt::new(4242, SecretValue::new(PEM))
            .expect("the test PEM should be accepted as an app key");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = app.current(t0).expect("the first app JWT should be minted");
        let c = claims(&first);
        assert_eq!(c["iss"], "4242");
        assert_eq!(c["iat"], 1_800_000_000 - 60);
        assert_eq!(c["exp"], 1_800_000_000 + 540);
        let header = jsonwebtoken::decode_header(first.expose())
            .expect("the app JWT should have a readable header");
        assert_eq!(header.alg, Algorithm::RS256);
        let later = app
            .current(t0 + Duration::from_secs(400))
            .expect("the app JWT should still be served at 400s");
        assert_eq!(
            later.expose(),
            first.expose(),
            "reused while over a minute is left"
        );
        let fresh = app
            .current(t0 + Duration::from_secs(490))
            .expect("a fresh app JWT should be minted at 490s");
        assert_ne!(
            fresh.expose(),
            first.expose(),
            "minted again in its last minute"
        );
        assert_eq!(claims(&fresh)["exp"], 1_800_000_490u64 + 540);
    }

    #[test]
    fn a_bad_key_is_refused_without_quoting_it() {
        let e = AppJwt::new(
            1,
            SecretValue::new(
                "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0\n-----END RSA PRIVATE KEY-----",
            ),
        )
        .err()
        .unwrap_or_default();
        assert_eq!(e, "is not an RSA private key in PEM form");
    }
}
