//! Access-token validation: RFC 9068 JWT access tokens, checked by the rules of RFC 8725 and the
//! MCP authorization specification.
//!
//! Order of checks (each with its own [`Rejection`] code):
//! size → structure and header (no key needed) → issuer → alg allowlist → key (by `kid`, with a
//! rate-limited refresh on an unknown one) → signature → claims and times → audience.
//! Claims are not looked at for a decision until the signature has verified, so a forged token
//! learns nothing but `bad_signature`.

mod alg;
mod cache;
mod claims;
mod introspect;
mod issuer;
mod json;
mod jws;
mod keys;
mod reason;
pub mod set;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub use alg::Alg;
pub use claims::Claims;
pub use issuer::IssuerStatus;
pub use keys::KeySet;
pub use reason::Rejection;

use crate::config::{IssuerConfig, TokenSettings};
use issuer::Issuer;

/// SHA-256 of an access token. Identifies the token in audit records without revealing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(token: &str) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    pub fn hex(&self) -> String {
        crate::keys::hex(&self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.hex())
    }
}

/// A token that passed every check except the audience, which depends on who presents it.
#[derive(Clone, Debug)]
pub struct Verified {
    pub claims: Arc<Claims>,
    pub fingerprint: Fingerprint,
}

impl Verified {
    /// RFC 8707: the token must have been issued for this resource.
    pub fn check_audience(&self, audience: &str) -> Result<(), Rejection> {
        if self.claims.audiences.iter().any(|a| a == audience) {
            Ok(())
        } else {
            Err(Rejection::AudienceMismatch)
        }
    }

    /// The workload's own issuer: another configured issuer's token, even with the right
    /// audience, is another principal's.
    pub fn check_issuer(&self, issuer: &str) -> Result<(), Rejection> {
        if self.claims.issuer == issuer {
            Ok(())
        } else {
            Err(Rejection::IssuerNotAccepted)
        }
    }
}

/// Validates access tokens against the configured issuers.
pub struct Verifier {
    issuers: HashMap<String, Arc<Issuer>>,
    settings: TokenSettings,
    cache: cache::Cache,
}

impl Verifier {
    pub fn new(issuers: &[IssuerConfig], settings: &TokenSettings) -> Result<Self, String> {
        let mut map = HashMap::new();
        for cfg in issuers {
            let issuer =
                Issuer::new(cfg.clone()).map_err(|e| format!("issuer {}: {e}", cfg.url))?;
            map.insert(cfg.url.clone(), Arc::new(issuer));
        }
        Ok(Self {
            issuers: map,
            settings: settings.clone(),
            cache: cache::Cache::new(settings.cache_entries),
        })
    }

    /// Loads every issuer's keys once, now. Returns the issuers that failed, with why.
    pub async fn load_keys(&self) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for (url, issuer) in &self.issuers {
            if let Err(e) = issuer.refresh().await {
                failed.push((url.clone(), e));
            }
        }
        failed
    }

    /// Starts background refresh of every issuer's keys (on the current tokio runtime).
    /// The returned handles abort the refresh loops when dropped via `abort`.
    pub fn spawn_refresh(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.issuers
            .values()
            .map(|i| tokio::spawn(Arc::clone(i).keep_fresh()))
            .collect()
    }

    pub fn statuses(&self) -> Vec<IssuerStatus> {
        let mut out: Vec<IssuerStatus> = self.issuers.values().map(|i| i.status()).collect();
        out.sort_by(|a, b| a.url.cmp(&b.url));
        out
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Validates everything but the audience. `now` is passed in so expiry can be tested.
    pub async fn verify(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<Verified, (Rejection, Option<Fingerprint>)> {
        if token.len() > self.settings.max_token_bytes {
            // Not even hashed: an oversized token is refused before any work is spent on it.
            return Err((
                Rejection::TooLarge {
                    limit: self.settings.max_token_bytes,
                },
                None,
            ));
        }
        let fingerprint = Fingerprint::of(token);
        self.verify_inner(token, fingerprint, unix(now))
            .await
            .map(|claims| Verified {
                claims,
                fingerprint,
            })
            .map_err(|r| (r, Some(fingerprint)))
    }

    async fn verify_inner(
        &self,
        token: &str,
        fp: Fingerprint,
        now: i64,
    ) -> Result<Arc<Claims>, Rejection> {
        let leeway = self.settings.leeway.as_secs() as i64;
        // An opaque token (no JWS shape) can only be introspected, at the one issuer that
        // takes them: it names no issuer, and is sent to no other.
        if !token.contains('.')
            && let Some(issuer) = self.opaque_issuer()
        {
            return match self.introspect(issuer, token, fp, now, false).await? {
                introspect::Answer::Active(c) => Ok(c),
                introspect::Answer::Inactive => Err(Rejection::Inactive),
            };
        }
        let claims = self.verify_local(token, fp, now, leeway).await?;
        if let Some(issuer) = self.issuers.get(&claims.issuer)
            && issuer
                .introspector
                .as_ref()
                .is_some_and(|i| i.cfg.mode == crate::config::IntrospectMode::Always)
            && let introspect::Answer::Inactive =
                self.introspect(issuer, token, fp, now, false).await?
        {
            self.cache.remove(&fp.0);
            return Err(Rejection::Inactive);
        }
        Ok(claims)
    }

    /// The issuer opaque tokens are introspected at (validation allows at most one).
    fn opaque_issuer(&self) -> Option<&Issuer> {
        self.issuers
            .values()
            .map(|i| &**i)
            .find(|i| i.introspector.is_some())
    }

    async fn introspect(
        &self,
        issuer: &Issuer,
        token: &str,
        fp: Fingerprint,
        now: i64,
        fresh: bool,
    ) -> Result<introspect::Answer, Rejection> {
        let Some(i) = issuer.introspector.as_ref() else {
            return Err(Rejection::IntrospectionUnavailable);
        };
        let endpoint = issuer
            .introspection_endpoint()
            .await
            .ok_or(Rejection::IntrospectionUnavailable)?;
        let leeway = self.settings.leeway.as_secs() as i64;
        i.ask(&endpoint, token, fp.0, now, leeway, fresh).await
    }

    /// `recheck_active`: asks the token's issuer again, past the cache. `Ok(false)`: revoked.
    pub async fn still_active(&self, issuer: &str, token: &str) -> Result<bool, Rejection> {
        let Some(iss) = self.issuers.get(issuer) else {
            return Err(Rejection::UnknownIssuer);
        };
        let fp = Fingerprint::of(token);
        let now = unix(SystemTime::now());
        match self.introspect(iss, token, fp, now, true).await {
            Ok(introspect::Answer::Active(_)) => Ok(true),
            Ok(introspect::Answer::Inactive) | Err(Rejection::Expired) => {
                self.cache.remove(&fp.0);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// How often active tasks' tokens of `issuer` are introspected again, if at all.
    pub fn recheck_period(&self, issuer: &str) -> Option<std::time::Duration> {
        self.issuers
            .get(issuer)?
            .introspector
            .as_ref()?
            .cfg
            .recheck_active
    }

    async fn verify_local(
        &self,
        token: &str,
        fp: Fingerprint,
        now: i64,
        leeway: i64,
    ) -> Result<Arc<Claims>, Rejection> {
        if let Some(hit) = self.cache.get(&fp.0) {
            let keys_ok = self
                .issuers
                .get(&hit.claims.issuer)
                .and_then(|i| i.keys())
                .is_some_and(|k| k.still_has(hit.kid.as_deref(), hit.alg));
            if keys_ok {
                if now >= hit.claims.expires_at.saturating_add(leeway) {
                    self.cache.remove(&fp.0);
                    return Err(Rejection::Expired);
                }
                return Ok(hit.claims);
            }
            // The signing key was rotated out: verify from scratch (and probably fail).
            self.cache.remove(&fp.0);
        }

        let jws = jws::parse(token)?;
        let iss = match jws.payload.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(Rejection::InvalidClaim("iss")),
            None => return Err(Rejection::MissingClaim("iss")),
        };
        let issuer = self.issuers.get(iss).ok_or(Rejection::UnknownIssuer)?;
        if !issuer.cfg.algorithms.contains(&jws.alg) {
            return Err(Rejection::AlgNotAllowed(jws.alg.name().into()));
        }
        let keys = match issuer.keys() {
            Some(k) => k,
            None => {
                issuer.refresh_for_unknown_kid().await;
                issuer.keys().ok_or(Rejection::KeysUnavailable)?
            }
        };
        let verified = match keys.find(jws.kid.as_deref(), jws.alg) {
            Ok(key) => key.verify(jws.alg, jws.signing_input.as_bytes(), jws.signature),
            Err(Rejection::UnknownKid) => {
                issuer.refresh_for_unknown_kid().await;
                let keys = issuer.keys().ok_or(Rejection::KeysUnavailable)?;
                let key = keys.find(jws.kid.as_deref(), jws.alg)?;
                key.verify(jws.alg, jws.signing_input.as_bytes(), jws.signature)
            }
            Err(e) => return Err(e),
        };
        if !verified {
            return Err(Rejection::BadSignature);
        }
        let (alg, kid) = (jws.alg, jws.kid.clone());
        let claims = Arc::new(claims::check(jws.payload, now, leeway)?);
        self.cache.insert(
            fp.0,
            cache::Entry {
                claims: Arc::clone(&claims),
                kid,
                alg,
            },
            now,
        );
        Ok(claims)
    }
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => 0,
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
