//! A small client for the Vault HTTP API: just the endpoints credbroker uses.
//!
//! Why not vaultrs: 0.8 has no `sys/leases/*` endpoints and no lease-bearing generic read, keeps
//! the token as a plain `String` in a `Debug` struct (`EndpointMiddleware`), unwraps header
//! values, and needs `&mut` to switch tokens — while every task here reads with its own child
//! token. Tokens here stay in `SecretValue`, and the `X-Vault-Token` header is marked sensitive
//! so the HTTP stack never logs it.

use std::time::Duration;

use credbroker_provider_api::{ErrorKind, ParamError, ProviderError, SecretValue};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

/// What Vault wraps every response in.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Envelope {
    #[serde(default)]
    pub(crate) lease_id: String,
    #[serde(default)]
    pub(crate) lease_duration: u64,
    #[serde(default)]
    pub(crate) renewable: bool,
    #[serde(default)]
    pub(crate) data: Option<Value>,
    #[serde(default)]
    pub(crate) auth: Option<Auth>,
    #[serde(default)]
    pub(crate) warnings: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Auth {
    pub(crate) client_token: String,
    pub(crate) accessor: String,
    #[serde(default)]
    pub(crate) lease_duration: u64,
    #[serde(default)]
    pub(crate) renewable: bool,
    #[serde(default)]
    pub(crate) policies: Vec<String>,
}

#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    namespace: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// How a request failed, before it is mapped to a provider error by the caller (which knows
/// whether an unanswered request could have had an effect).
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing was sent, or the server refused the connection.
    NotSent(String),
    /// Sent, but no answer came (timeout, connection dropped).
    NoAnswer(String),
    /// An HTTP error status with Vault's `errors` joined.
    Status(StatusCode, String),
}

impl Failure {
    /// The provider error for a request whose repetition is harmless (reads, revokes, renews).
    pub(crate) fn retryable(self, what: &str) -> ProviderError {
        match self {
            Self::NotSent(m) | Self::NoAnswer(m) => ProviderError::new(
                ErrorKind::Unavailable,
                format!("{what}: Vault unreachable: {m}"),
            ),
            Self::Status(s, m) => status_error(what, s, &m),
        }
    }

    /// The provider error for a request that creates something: no answer means it may exist.
    pub(crate) fn creating(self, what: &str) -> ProviderError {
        match self {
            Self::NoAnswer(m) => ProviderError::new(
                ErrorKind::OutcomeUnknown,
                format!("{what}: no answer from Vault: {m}"),
            ),
            other => other.retryable(what),
        }
    }

    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status(s, _) => Some(*s),
            _ => None,
        }
    }

    /// Vault's `errors`, one by one.
    pub(crate) fn errors(&self) -> Vec<&str> {
        self.message().split("; ").collect()
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Self::NotSent(m) | Self::NoAnswer(m) | Self::Status(_, m) => m,
        }
    }
}

fn status_error(what: &str, status: StatusCode, message: &str) -> ProviderError {
    let kind = match status.as_u16() {
        429 => ErrorKind::RateLimited,
        // 503: sealed, standby or in maintenance. 5xx: Vault or a backend it depends on failed.
        500..=599 => ErrorKind::Unavailable,
        403 => ErrorKind::Denied,
        404 => ErrorKind::NotFound,
        400 | 405 | 409 | 412 => ErrorKind::Invalid,
        _ => ErrorKind::Unavailable,
    };
    let detail = match status.as_u16() {
        503 => format!("Vault is sealed or unavailable ({message})"),
        _ => message.to_string(),
    };
    ProviderError::new(kind, format!("{what}: HTTP {}: {detail}", status.as_u16()))
}

impl Client {
    /// `ca` (the certificates of `ca_file`, read by the settings) are trusted on top of the
    /// system's roots. An error names the setting it is about.
    pub(crate) fn new(
        address: &str,
        namespace: Option<String>,
        ca: Vec<reqwest::Certificate>,
        timeout: Duration,
    ) -> Result<Self, ParamError> {
        let mut base = reqwest::Url::parse(address)
            .map_err(|e| ParamError::new("address", format!("{address:?}: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        // The settings have parsed the PEM, but rustls parses each certificate only now: with
        // certificates of its own, a failed TLS setup is one of them it cannot use.
        let key = if ca.is_empty() { "address" } else { "ca_file" };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("credbroker/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(ca)
            .build()
            .map_err(|e| ParamError::new(key, describe(&e)))?;
        Ok(Self {
            http,
            base,
            namespace,
        })
    }

    /// Calls `path` (relative to `/v1/`). `None` for a 204.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&SecretValue>,
        body: Option<&Value>,
    ) -> Result<Option<Envelope>, Failure> {
        // `Url::join` resolves `.` and `..`: `kv/users/./creds` would read `kv/users/creds`.
        // The broker refuses such values in templates; this is the last line, for any path.
        if path.split('/').any(|seg| {
            let s = seg.to_ascii_lowercase().replace("%2e", ".");
            s == "." || s == ".." || s.contains("%2f") || s.contains('\\')
        }) {
            return Err(Failure::NotSent(format!(
                "refusing to call a Vault path with a dot segment: {path:?}"
            )));
        }
        let url = self
            .base
            .join(&format!("v1/{}", path.trim_start_matches('/')))
            .map_err(|e| Failure::NotSent(e.to_string()))?;
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            let mut v = HeaderValue::from_str(t.expose())
                .map_err(|_| Failure::NotSent("token is not a valid header value".into()))?;
            v.set_sensitive(true);
            headers.insert("X-Vault-Token", v);
        }
        if let Some(ns) = &self.namespace {
            let v = HeaderValue::from_str(ns)
                .map_err(|_| Failure::NotSent("namespace is not a valid header value".into()))?;
            headers.insert("X-Vault-Namespace", v);
        }
        headers.insert("X-Vault-Request", HeaderValue::from_static("true"));
        let mut req = self.http.request(method, url).headers(headers);
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| {
            let m = describe(&e);
            if e.is_connect() || e.is_builder() || e.is_request() && !e.is_timeout() {
                Failure::NotSent(m)
            } else {
                Failure::NoAnswer(m)
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::NoAnswer(describe(&e)))?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Failure::Status(status, errors_of(&bytes)));
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        // Bodies can hold secrets: never put their content in an error.
        // serde_json's messages can quote values; keep only the position.
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Failure::Status(
                status,
                format!(
                    "unreadable response (line {} column {})",
                    e.line(),
                    e.column()
                ),
            )
        })
    }
}

/// Vault's error bodies are `{"errors": ["…"]}`; they hold messages, never secrets.
fn errors_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
        .map(|errs| {
            errs.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "no error message".into())
}

/// A reqwest error with its causes: its own message alone is often just "builder error".
pub(crate) fn describe(e: &reqwest::Error) -> String {
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
