//! One configured issuer: its metadata, its JWKS, and keeping them fresh.
//!
//! * Metadata comes from RFC 8414 (`/.well-known/oauth-authorization-server`, inserted before the
//!   issuer's path) or OpenID Connect discovery (`/.well-known/openid-configuration`, appended);
//!   its `issuer` must equal the configured URL exactly, or the document is refused.
//! * Keys are refreshed every `refresh`, and at most once per `min_refresh_interval` when a token
//!   names a `kid` we do not have (key rotation). A failed refresh keeps the last good keys.
//! * A static `jwks_file` replaces all of this for hosts without network access to the issuer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde_json::Value;

use super::keys::{KeySet, MAX_JWKS_BYTES};
use crate::config::{IssuerConfig, MetadataMode};

/// What `Status` reports about an issuer.
#[derive(Clone, Debug, Default)]
pub struct IssuerStatus {
    pub url: String,
    pub keys: usize,
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<String>,
}

pub(crate) struct Issuer {
    pub(crate) cfg: IssuerConfig,
    keys: ArcSwapOption<KeySet>,
    status: Mutex<IssuerStatus>,
    jwks_uri: Mutex<Option<String>>,
    /// Serialises refreshes; holds when the last unknown-kid refresh happened.
    refresh_gate: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
    /// RFC 7662, when configured; its endpoint from the configuration or the metadata.
    pub(crate) introspector: Option<super::introspect::Introspector>,
    introspection_uri: Mutex<Option<String>>,
}

impl Issuer {
    pub(crate) fn new(cfg: IssuerConfig) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.http_timeout)
            .connect_timeout(cfg.http_timeout)
            // A redirect could hand key discovery to another origin; refuse them.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("credbroker/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        let cfg_introspection = cfg.introspection.clone();
        let url = cfg.url.clone();
        let status = IssuerStatus {
            url: cfg.url.clone(),
            ..Default::default()
        };
        Ok(Self {
            cfg,
            keys: ArcSwapOption::empty(),
            status: Mutex::new(status),
            jwks_uri: Mutex::new(None),
            refresh_gate: tokio::sync::Mutex::new(None),
            introspector: match cfg_introspection {
                Some(i) => Some(super::introspect::Introspector::new(&url, i, http.clone())?),
                None => None,
            },
            introspection_uri: Mutex::new(None),
            http,
        })
    }

    /// The introspection endpoint: configured, or from the metadata (discovered now if need be).
    pub(crate) async fn introspection_endpoint(&self) -> Option<String> {
        let i = self.introspector.as_ref()?;
        if let Some(e) = &i.cfg.endpoint {
            return Some(e.clone());
        }
        if let Some(e) = self.introspection_uri.lock().ok().and_then(|u| u.clone()) {
            return Some(e);
        }
        if let Err(e) = self.discover().await {
            tracing::warn!(issuer = %self.cfg.url, error = %e, "cannot discover the introspection endpoint");
        }
        self.introspection_uri.lock().ok().and_then(|u| u.clone())
    }

    pub(crate) fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    pub(crate) fn status(&self) -> IssuerStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Loads metadata and keys now. On failure the last good keys stay in use.
    pub(crate) async fn refresh(&self) -> Result<usize, String> {
        let _gate = self.refresh_gate.lock().await;
        self.refresh_locked(true).await
    }

    /// Called when a token names an unknown `kid`: refresh at most once per
    /// `min_refresh_interval`, so a flood of made-up kids cannot hammer the issuer.
    pub(crate) async fn refresh_for_unknown_kid(&self) {
        let mut gate = self.refresh_gate.lock().await;
        if gate.is_some_and(|last| last.elapsed() < self.cfg.min_refresh_interval) {
            return;
        }
        *gate = Some(Instant::now());
        let _ = self.refresh_locked(false).await;
    }

    async fn refresh_locked(&self, rediscover: bool) -> Result<usize, String> {
        let result = self.load(rediscover).await;
        let mut status = self
            .status
            .lock()
            .map_err(|_| "status lock poisoned".to_string())?;
        match &result {
            Ok((set, skipped)) => {
                status.keys = set.len();
                status.last_refresh = Some(SystemTime::now());
                status.last_error = None;
                for note in skipped {
                    tracing::warn!(issuer = %self.cfg.url, "{note}");
                }
            }
            Err(e) => {
                status.last_error = Some(e.clone());
                tracing::warn!(issuer = %self.cfg.url, error = %e, "key refresh failed; keeping the last good keys");
            }
        }
        drop(status);
        let (set, _) = result?;
        let n = set.len();
        self.keys.store(Some(Arc::new(set)));
        Ok(n)
    }

    async fn load(&self, rediscover: bool) -> Result<(KeySet, Vec<String>), String> {
        if let Some(path) = &self.cfg.jwks_file {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
            return KeySet::parse(&bytes, &self.cfg.algorithms);
        }
        let known = self.jwks_uri.lock().ok().and_then(|u| u.clone());
        let uri = match known {
            Some(uri) if !rediscover => uri,
            _ => {
                let uri = self.discover().await?;
                if let Ok(mut slot) = self.jwks_uri.lock() {
                    *slot = Some(uri.clone());
                }
                uri
            }
        };
        let bytes = self.get(&uri).await?;
        KeySet::parse(&bytes, &self.cfg.algorithms)
    }

    /// Finds the `jwks_uri` from the issuer's metadata.
    async fn discover(&self) -> Result<String, String> {
        let urls = metadata_urls(&self.cfg.url, self.cfg.metadata)?;
        let mut errors = Vec::new();
        for url in urls {
            match self.get(&url).await.and_then(|b| self.read_metadata(&b)) {
                Ok(uri) => return Ok(uri),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(format!("metadata discovery failed: {}", errors.join("; ")))
    }

    fn read_metadata(&self, bytes: &[u8]) -> Result<String, String> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let issuer = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or("no issuer in metadata")?;
        if issuer != self.cfg.url {
            // RFC 8414 §3.3: a mismatch means the document describes another issuer.
            return Err(format!(
                "metadata names issuer {issuer:?}, not the configured one"
            ));
        }
        if let Some(i) = doc.get("introspection_endpoint").and_then(Value::as_str)
            && reqwest::Url::parse(i).is_ok_and(|u| {
                u.scheme() == "https"
                    || (u.scheme() == "http"
                        && u.host_str().is_some_and(|h| {
                            h == "localhost"
                                || h.trim_matches(['[', ']'])
                                    .parse::<std::net::IpAddr>()
                                    .is_ok_and(|ip| ip.is_loopback())
                        }))
            })
            && let Ok(mut slot) = self.introspection_uri.lock()
        {
            *slot = Some(i.to_owned());
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("no jwks_uri in metadata")?;
        let parsed = reqwest::Url::parse(uri).map_err(|e| format!("jwks_uri: {e}"))?;
        let loopback = parsed.host_str().is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
            return Err("jwks_uri must be https".into());
        }
        Ok(uri.to_string())
    }

    /// GET with a size limit, so a hostile or broken server cannot exhaust memory.
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut resp = self.http.get(url).send().await.map_err(|e| describe(&e))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("response larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Keeps the keys fresh until the process ends: retries quickly until the first load
    /// succeeds, then refreshes every `refresh` with a little jitter.
    pub(crate) async fn keep_fresh(self: Arc<Self>) {
        let mut retry = Duration::from_secs(1);
        loop {
            let wait = match self.refresh().await {
                Ok(_) => {
                    retry = Duration::from_secs(1);
                    jitter(self.cfg.refresh)
                }
                Err(_) if self.keys.load().is_none() => {
                    retry = (retry * 2).min(Duration::from_secs(60));
                    retry
                }
                Err(_) => jitter(self.cfg.refresh.min(Duration::from_secs(60))),
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// reqwest errors can include the URL, which is fine (no secrets in issuer URLs), but we keep
/// only the chain of causes so messages stay short.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// Metadata URLs to try, in order.
pub(crate) fn metadata_urls(issuer: &str, mode: MetadataMode) -> Result<Vec<String>, String> {
    let url = reqwest::Url::parse(issuer).map_err(|e| e.to_string())?;
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    // RFC 8414 §3.1: the well-known segment goes between the host and the issuer's path.
    let oauth = format!("{origin}/.well-known/oauth-authorization-server{path}");
    // OpenID Connect Discovery §4: appended to the issuer.
    let oidc = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    Ok(match mode {
        MetadataMode::Auto => vec![oauth, oidc],
        MetadataMode::OAuth => vec![oauth],
        MetadataMode::Oidc => vec![oidc],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls() {
        assert_eq!(
            metadata_urls("https://as.example.com/tenant/1", MetadataMode::Auto).ok(),
            Some(vec![
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/1".into(),
                "https://as.example.com/tenant/1/.well-known/openid-configuration".into(),
            ])
        );
        assert_eq!(
            metadata_urls("http://127.0.0.1:8080", MetadataMode::OAuth).ok(),
            Some(vec![
                "http://127.0.0.1:8080/.well-known/oauth-authorization-server".into()
            ])
        );
    }
}
