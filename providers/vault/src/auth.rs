//! credbroker's own Vault token: where it comes from, and keeping it alive.
//!
//! A token read from a file or a systemd credential is renewed (`renew-self`) before it runs
//! out, and the source is read again when renewal fails, so rotating the file is enough to
//! rotate the token. With AppRole, a token that can no longer be renewed is replaced by a fresh
//! login. `lookup-self` results are kept for `Status`.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use credbroker_provider_api::settings::FileStamp;
use credbroker_provider_api::{ErrorKind, ProviderError, SecretValue};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::Client;

/// Where a secret (the token, or an AppRole secret_id) is read from. Read again on every login.
pub(crate) type Source = credbroker_provider_api::settings::SecretFile;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Login {
    Token(Source),
    AppRole {
        mount: String,
        role_id: String,
        secret_id: Source,
    },
}

/// What `Status` shows about the token. No secret in here.
#[derive(Clone, Debug, Default)]
pub(crate) struct TokenInfo {
    pub(crate) accessor: String,
    pub(crate) policies: Vec<String>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) creation_ttl: Duration,
    pub(crate) renewable: bool,
    pub(crate) checked: Option<SystemTime>,
    pub(crate) error: Option<String>,
}

pub(crate) struct SelfToken {
    login: Login,
    current: RwLock<Option<Arc<SecretValue>>>,
    /// For a token read from a file: the file as it was when it was last read to a verdict (its
    /// token accepted, or the file or its token refused). A rotated file (Vault Agent's sink, an
    /// operator's new token) is read again at the next call, not at the next restart or
    /// refusal; so is one whose token could not be checked (Vault unreachable, rate limited).
    read_from: Mutex<Option<FileStamp>>,
    info: Mutex<TokenInfo>,
    /// One login at a time.
    gate: tokio::sync::Mutex<()>,
}

impl SelfToken {
    pub(crate) fn new(login: Login) -> Self {
        Self {
            login,
            current: RwLock::new(None),
            read_from: Mutex::new(None),
            info: Mutex::new(TokenInfo::default()),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn info(&self) -> TokenInfo {
        self.info.lock().map(|i| i.clone()).unwrap_or_default()
    }

    fn set_error(&self, e: &str) {
        if let Ok(mut i) = self.info.lock() {
            i.error = Some(e.to_string());
        }
    }

    /// The current token, logging in first if there is none, or reading the token file again
    /// if it has been rotated since.
    pub(crate) async fn get(&self, client: &Client) -> Result<Arc<SecretValue>, ProviderError> {
        if let Some(t) = self.current_unless_rotated() {
            return Ok(t);
        }
        let _gate = self.gate.lock().await;
        if let Some(t) = self.current_unless_rotated() {
            return Ok(t);
        }
        let old = self.current.read().ok().and_then(|c| c.clone());
        match (self.login(client).await, old) {
            (Ok(t), _) => Ok(t),
            // A rotated file that is refused (its mode or owner), or whose token does not work
            // (half written, or not yet valid): keep the token that worked, say so, and try the
            // file again when it changes next. One whose token could not be checked (Vault
            // unreachable) is tried again at the next call. The error names the file, never
            // the token.
            (Err(e), Some(old)) => {
                tracing::warn!(error = %e, "the rotated Vault token file did not give a working token; keeping the current token");
                self.set_error(&e.to_string());
                Ok(old)
            }
            (Err(e), None) => Err(e),
        }
    }

    fn current_unless_rotated(&self) -> Option<Arc<SecretValue>> {
        let current = self.current.read().ok().and_then(|c| c.clone())?;
        match &self.login {
            Login::Token(src) => {
                let read_from = self.read_from.lock().ok().and_then(|s| *s);
                (src.stamp() == read_from).then_some(current)
            }
            Login::AppRole { .. } => Some(current),
        }
    }

    /// Replaces the token from its source (a new login for AppRole).
    pub(crate) async fn relogin(&self, client: &Client) -> Result<Arc<SecretValue>, ProviderError> {
        let _gate = self.gate.lock().await;
        self.login(client).await
    }

    async fn login(&self, client: &Client) -> Result<Arc<SecretValue>, ProviderError> {
        let unauthorized = |m: String| ProviderError::new(ErrorKind::Unauthorized, m);
        let token = match &self.login {
            Login::Token(src) => {
                // Stamped before reading: a rotation racing this read is seen next time.
                let stamp = src.stamp();
                // The same check as at startup: the file may have been replaced by one with
                // another mode or owner since. Refused like an unreadable file.
                let result = match src.read_checked() {
                    Ok(token) => self.accept(client, token).await,
                    Err(e) => Err(unauthorized(format!("Vault token: {e}"))),
                };
                // Recorded only on a verdict on this file: a token that could not be checked
                // (Vault unreachable, rate limited) is tried again at the next call rather than
                // left unused until Vault refuses the old one.
                if consumes_stamp(&result)
                    && let Ok(mut s) = self.read_from.lock()
                {
                    *s = stamp;
                }
                return result;
            }
            Login::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let sid = secret_id
                    .read_checked()
                    .map_err(|e| unauthorized(format!("AppRole secret_id: {e}")))?;
                let body = json!({ "role_id": role_id, "secret_id": sid.expose() });
                let env = client
                    .call(
                        Method::POST,
                        &format!("auth/{mount}/login"),
                        None,
                        Some(&body),
                    )
                    .await
                    .map_err(|f| match f.status().map(|s| s.as_u16()) {
                        Some(400) | Some(403) => {
                            unauthorized(format!("AppRole login refused: {}", f.message()))
                        }
                        _ => f.retryable("AppRole login"),
                    })?;
                let auth = env
                    .and_then(|e| e.auth)
                    .ok_or_else(|| unauthorized("AppRole login returned no token".into()))?;
                SecretValue::new(auth.client_token)
            }
        };
        self.accept(client, token).await
    }

    /// Makes `token` the current one once `lookup-self` accepts it.
    async fn accept(
        &self,
        client: &Client,
        token: SecretValue,
    ) -> Result<Arc<SecretValue>, ProviderError> {
        let token = Arc::new(token);
        self.lookup(client, &token)
            .await
            .inspect_err(|e| self.set_error(&e.to_string()))?;
        if let Ok(mut c) = self.current.write() {
            *c = Some(Arc::clone(&token));
        }
        Ok(token)
    }

    /// `lookup-self`: records TTL, policies, accessor. Fails when Vault refuses the token.
    async fn lookup(&self, client: &Client, token: &SecretValue) -> Result<(), ProviderError> {
        let env = client
            .call(Method::GET, "auth/token/lookup-self", Some(token), None)
            .await
            .map_err(|f| {
                if f.status().is_some_and(|s| s.as_u16() == 403) {
                    ProviderError::new(
                        ErrorKind::Unauthorized,
                        format!("Vault refuses credbroker's token: {}", f.message()),
                    )
                } else {
                    f.retryable("token lookup")
                }
            })?;
        let data = env.and_then(|e| e.data).unwrap_or(Value::Null);
        let ttl = data.get("ttl").and_then(Value::as_u64).unwrap_or(0);
        let info = TokenInfo {
            accessor: data
                .get("accessor")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            policies: data
                .get("policies")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            // ttl 0 means a token that never expires (root, or a periodic token at its period).
            expires_at: (ttl > 0).then(|| SystemTime::now() + Duration::from_secs(ttl)),
            creation_ttl: Duration::from_secs(
                data.get("creation_ttl")
                    .and_then(Value::as_u64)
                    .unwrap_or(ttl),
            ),
            renewable: data
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            checked: Some(SystemTime::now()),
            error: None,
        };
        if let Ok(mut i) = self.info.lock() {
            *i = info;
        }
        Ok(())
    }

    /// One maintenance round: look the token up; renew it when less than half its life is left;
    /// log in again when it cannot be renewed or Vault refuses it. Returns when to come back.
    pub(crate) async fn maintain(&self, client: &Client) -> Duration {
        let token = match self.get(client).await {
            Ok(t) => t,
            Err(e) => {
                self.set_error(&e.to_string());
                return Duration::from_secs(5);
            }
        };
        if let Err(e) = self.lookup(client, &token).await {
            if e.kind == ErrorKind::Unauthorized {
                tracing::warn!(error = %e, "Vault token refused; logging in again");
                if let Err(e) = self.relogin(client).await {
                    self.set_error(&e.to_string());
                }
            } else {
                self.set_error(&e.to_string());
            }
            return Duration::from_secs(5);
        }
        let info = self.info();
        let Some(expires) = info.expires_at else {
            return Duration::from_secs(300);
        };
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if left < (info.creation_ttl / 2).max(Duration::from_secs(120)) {
            let renewed = info.renewable
                && client
                    .call(
                        Method::POST,
                        "auth/token/renew-self",
                        Some(&token),
                        Some(&json!({})),
                    )
                    .await
                    .is_ok();
            let result = if renewed {
                self.lookup(client, &token).await
            } else {
                // Not renewable (or renewal refused): a new login, or the rotated file.
                self.relogin(client).await.map(|_| ())
            };
            if let Err(e) = result {
                self.set_error(&e.to_string());
                return Duration::from_secs(5);
            }
        }
        let left = self
            .info()
            .expires_at
            .and_then(|e| e.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        (left / 3).clamp(Duration::from_secs(5), Duration::from_secs(300))
    }
}

/// Whether reading the token file to `result` settles it, so it is not read again until it
/// changes: its token was accepted, or Vault refused it (or the file itself was refused).
/// Anything else (Vault unreachable, overloaded or rate limiting, or an answer that says
/// nothing about the token) leaves the file to be tried again at the next call.
fn consumes_stamp(result: &Result<Arc<SecretValue>, ProviderError>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => matches!(e.kind, ErrorKind::Unauthorized | ErrorKind::Denied),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_verdict_on_the_token_file_consumes_its_stamp() {
        let accepted = Ok(Arc::new(SecretValue::new("s.test")));
        assert!(consumes_stamp(&accepted));
        for kind in ErrorKind::ALL {
            let settled = matches!(kind, ErrorKind::Unauthorized | ErrorKind::Denied);
            let result = Err(ProviderError::new(kind, "token lookup: refused"));
            assert_eq!(consumes_stamp(&result), settled, "{kind:?}");
            // Above all, nothing worth retrying marks the new file as used.
            if kind.retryable() {
                assert!(!consumes_stamp(&result), "{kind:?}");
            }
        }
    }
}
