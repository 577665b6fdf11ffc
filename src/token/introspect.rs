//! RFC 7662 introspection at an issuer: for opaque tokens (which cannot be checked any other
//! way) and, with `introspect = "always"`, for JWTs after their local checks, so a token the AS
//! revoked (RFC 7009) stops working within `introspection_cache` instead of at its expiry.
//!
//! credbroker authenticates as its own client (`client_secret_basic`); the secret is read when
//! the verifier is built and never logged. Answers are cached by the token's fingerprint (the
//! token itself is never kept here), for at most `introspection_cache` and never past `exp`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credbroker_provider_api::SecretValue;
use serde_json::{Map, Value};

use super::claims::{self, Claims};
use super::reason::Rejection;
use crate::config::Introspection;

/// Answers cached per issuer; past this the oldest half is dropped.
const MAX_CACHED: usize = 100_000;
/// An introspection answer is small; a larger one is refused.
const MAX_ANSWER: usize = 64 * 1024;

pub(crate) struct Introspector {
    pub(crate) cfg: Introspection,
    issuer: String,
    secret: SecretValue,
    http: reqwest::Client,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

/// An answer by fingerprint: the claims when active, and until when it is trusted (unix s).
type Cached = (Option<Arc<Claims>>, i64);

/// What introspection said of a token.
pub(crate) enum Answer {
    Active(Arc<Claims>),
    Inactive,
}

/// `application/x-www-form-urlencoded` of one value (RFC 6749 Appendix B).
fn form(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

impl Introspector {
    pub(crate) fn new(
        issuer: &str,
        cfg: Introspection,
        http: reqwest::Client,
    ) -> Result<Self, String> {
        let secret = cfg
            .secret
            .read()
            .map_err(|e| format!("introspection secret: {e}"))?;
        Ok(Self {
            cfg,
            issuer: issuer.to_owned(),
            secret,
            http,
            cache: Mutex::default(),
        })
    }

    /// The cached answer, if still trusted.
    fn cached(&self, fp: &[u8; 32], now: i64) -> Option<Answer> {
        let c = self.cache.lock().ok()?;
        match c.get(fp) {
            Some((claims, until)) if *until > now => Some(match claims {
                Some(c) => Answer::Active(Arc::clone(c)),
                None => Answer::Inactive,
            }),
            _ => None,
        }
    }

    fn remember(&self, fp: [u8; 32], answer: &Answer, now: i64) {
        let Ok(mut c) = self.cache.lock() else {
            return;
        };
        if c.len() >= MAX_CACHED {
            c.retain(|_, (_, until)| *until > now);
            if c.len() >= MAX_CACHED {
                c.clear();
            }
        }
        let ttl = i64::try_from(self.cfg.cache.as_secs()).unwrap_or(300);
        let (claims, until) = match answer {
            Answer::Active(cl) => (Some(Arc::clone(cl)), (now + ttl).min(cl.expires_at)),
            Answer::Inactive => (None, now + ttl),
        };
        c.insert(fp, (claims, until));
    }

    /// Asks the AS (or the cache, unless `fresh`) about `token`.
    pub(crate) async fn ask(
        &self,
        endpoint: &str,
        token: &str,
        fp: [u8; 32],
        now: i64,
        leeway: i64,
        fresh: bool,
    ) -> Result<Answer, Rejection> {
        if !fresh && let Some(a) = self.cached(&fp, now) {
            return Ok(a);
        }
        let body = format!("token={}&token_type_hint=access_token", form(token));
        let basic = format!(
            "{}:{}",
            form(&self.cfg.client_id),
            form(self.secret.expose())
        );
        let auth = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, basic.as_bytes())
        );
        let resp = self
            .http
            .post(endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .header("authorization", auth)
            .timeout(Duration::from_secs(5))
            .body(body)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(issuer = %self.issuer, error = %e.without_url(), "introspection failed");
                Rejection::IntrospectionUnavailable
            })?;
        if !resp.status().is_success() {
            tracing::warn!(issuer = %self.issuer, status = resp.status().as_u16(),
                "the introspection endpoint refused credbroker's request");
            return Err(Rejection::IntrospectionUnavailable);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|_| Rejection::IntrospectionUnavailable)?;
        if bytes.len() > MAX_ANSWER {
            return Err(Rejection::IntrospectionUnavailable);
        }
        let mut doc: Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|_| Rejection::IntrospectionUnavailable)?;
        let answer = if doc.get("active") == Some(&Value::Bool(true)) {
            // The answer speaks for this issuer only: another `iss` is a misconfiguration.
            match doc.get("iss") {
                None => {
                    doc.insert("iss".into(), self.issuer.clone().into());
                }
                Some(Value::String(i)) if *i == self.issuer => {}
                Some(_) => return Err(Rejection::IssuerNotAccepted),
            }
            // RFC 7662 makes `jti` optional (oidc-provider leaves it out): the fingerprint then
            // names the token, for blocks and reuse detection.
            if !doc.contains_key("jti") {
                doc.insert(
                    "jti".into(),
                    format!("sha256:{}", crate::keys::hex(&fp)).into(),
                );
            }
            // RFC 9068 §2.2: a token without a resource owner names its client as `sub`.
            if !doc.contains_key("sub")
                && let Some(c) = doc.get("client_id").cloned()
            {
                doc.insert("sub".into(), c);
            }
            doc.remove("active");
            Answer::Active(Arc::new(claims::check(doc, now, leeway)?))
        } else {
            Answer::Inactive
        };
        self.remember(fp, &answer, now);
        Ok(answer)
    }
}
