//! The Provider implementation: scopes, dynamic secrets, workload tokens.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker_provider_api::{
    ErrorKind, IssueRequest, Issued, LeaseRef, ParamError, ParamRule, Params, Provider,
    ProviderError, ProviderHealth, Reconciled, Renewed, Revoked, Role, SecretValue,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::SelfToken;
use crate::batch::is_batch;
use crate::client::{Client, Envelope, Failure};
use crate::grants::{self, Grant};
use crate::policies::{Parent, RoleLists, ScopeRole};

pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) client: Client,
    pub(crate) token: SelfToken,
    pub(crate) scope_policies: Vec<String>,
    pub(crate) scope_role: Option<String>,
    /// `scope_type = "batch"`: scopes are batch tokens (`batch.rs`).
    pub(crate) batch_scopes: bool,
    /// Batch scopes kept for the next tasks of the same access token.
    pub(crate) batch: crate::batch::BatchScopes,
    /// Scope tokens made ahead of need (`scope_pool`), if configured.
    pub(crate) pool: Option<Arc<crate::pool::Pool>>,
}

pub(crate) struct VaultProvider {
    pub(crate) inner: Arc<Inner>,
    /// Whether the token's maintenance loop runs (see `start`).
    pub(crate) started: std::sync::atomic::AtomicBool,
}

/// Whole seconds until `until`, at least one.
pub(crate) fn secs_until(until: SystemTime, now: SystemTime) -> u64 {
    until
        .duration_since(now)
        .map(|d| d.as_secs_f64().ceil() as u64)
        .unwrap_or(0)
        .max(1)
}

pub(crate) fn invalid_config(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::Config, message)
}

impl Inner {
    /// Runs `call` with credbroker's token; if Vault refuses the token itself, logs in again
    /// (or re-reads the rotated token) and tries once more.
    pub(crate) async fn with_token<T, F, Fut>(&self, call: F) -> Result<T, Failure>
    where
        F: Fn(Arc<SecretValue>) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let token = self
            .token
            .get(&self.client)
            .await
            .map_err(|e| Failure::NotSent(e.message))?;
        match call(token).await {
            Err(f)
                if f.status().is_some_and(|s| s.as_u16() == 403) && self.token_refused().await =>
            {
                let fresh = self
                    .token
                    .relogin(&self.client)
                    .await
                    .map_err(|e| Failure::NotSent(e.message))?;
                call(fresh).await
            }
            other => other,
        }
    }

    /// After a 403: is it credbroker's token that Vault refuses, rather than the path?
    async fn token_refused(&self) -> bool {
        match self.token.get(&self.client).await {
            Ok(t) => self
                .client
                .call(Method::GET, "auth/token/lookup-self", Some(&t), None)
                .await
                .is_err_and(|f| f.status().is_some_and(|s| s.as_u16() == 403)),
            Err(_) => true,
        }
    }
}

/// Where tokens are created without a role: scope tokens without `scope_role`, and always
/// the grants' tokens (by their scope token).
pub(crate) const TOKEN_CREATE: &str = "auth/token/create";

/// What `sys/capabilities-self` says credbroker's token may do on `path`.
fn capabilities<'a>(caps: &'a Value, path: &str) -> Vec<&'a str> {
    caps.get(path)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn has_sudo(caps: &Value, path: &str) -> bool {
    let have = capabilities(caps, path);
    have.contains(&"sudo") || have.contains(&"root")
}

impl Inner {
    /// `scope_role`'s policy lists, which decide a scope token's policies when it has any.
    /// Only `check-config --online` reads them: issuing does not need `read` on the role.
    async fn read_role<'a>(&self, name: &'a str, token: &SecretValue) -> ScopeRole<'a> {
        let path = format!("auth/token/roles/{name}");
        match self
            .client
            .call(Method::GET, &path, Some(token), None)
            .await
        {
            Ok(Some(Envelope {
                data: Some(data), ..
            })) => ScopeRole::Read {
                name,
                lists: RoleLists::from_data(&data),
            },
            Ok(_) => ScopeRole::Unread {
                name,
                why: format!("{path} returned nothing"),
            },
            Err(f) => ScopeRole::Unread {
                name,
                why: f.retryable(&path).to_string(),
            },
        }
    }
}

#[async_trait::async_trait]
impl Provider for VaultProvider {
    fn kind(&self) -> &'static str {
        "vault"
    }

    fn scoped(&self) -> bool {
        true
    }

    fn scopes_revocable(&self) -> bool {
        !self.inner.batch_scopes
    }

    /// Keeps credbroker's token alive while the instance exists (the loop holds a weak ref).
    /// Not at build: building for `check-config` must not log in (an AppRole secret_id can
    /// have a limited number of uses).
    fn start(&self) {
        use std::sync::atomic::Ordering;
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&self.inner);
            rt.spawn(async move {
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let wait = inner.token.maintain(&inner.client).await;
                    drop(inner);
                    tokio::time::sleep(wait).await;
                }
            });
            if let Some(pool) = &self.inner.pool {
                let weak = Arc::downgrade(&self.inner);
                rt.spawn(crate::pool::Pool::refill(Arc::clone(pool), weak));
            }
        }
    }

    fn check_grant(&self, params: &Params) -> Result<(), Vec<ParamError>> {
        match grants::parse(params)? {
            Grant::Token { .. } if self.inner.batch_scopes => Err(vec![ParamError::new(
                "kind",
                "a workload token cannot be made under a batch scope (a batch token makes no \
                 tokens): give this grant a provider instance with scope_type = \"service\"",
            )]),
            _ => Ok(()),
        }
    }

    fn param_rules(&self) -> &'static [ParamRule] {
        // Never narrowed: Vault policies can deny (an explicit deny wins), so dropping one from
        // the list can *add* access. Vault lowercases policy names.
        const RULES: [ParamRule; 1] = [ParamRule::fixed("policies").case_insensitive()];
        &RULES
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, ProviderError> {
        let inner = &self.inner;
        if req.role == Role::Scope {
            return inner.open_scope(req).await;
        }
        let scope = req
            .scope
            .and_then(|s| s.secret.as_ref())
            .ok_or_else(|| invalid_config("no task scope to issue under"))?;
        match grants::parse(req.params)
            .map_err(|e| invalid_config(format!("grant parameters: {:?}", e)))?
        {
            Grant::Dynamic { path, post, public } => {
                inner
                    .read_dynamic(req, scope, &path, post.as_ref(), &public)
                    .await
            }
            Grant::Token {
                policies,
                ttl,
                num_uses,
                renewable,
                meta,
            } => {
                inner
                    .child_token(req, scope, &policies, ttl, num_uses, renewable, &meta)
                    .await
            }
        }
    }

    async fn renew(
        &self,
        lease: &LeaseRef<'_>,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Renewed, ProviderError> {
        if lease.role == Role::Scope && is_batch(&lease.handle.reference) {
            // Never asked (a batch scope is issued not renewable); OpenBao would refuse it.
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                "a batch scope cannot be renewed",
            ));
        }
        let increment = format!("{}s", secs_until(expires_at, now));
        let inner = &self.inner;
        let (path, body) = match (lease.role, grants::parse(lease.params).ok()) {
            (Role::Credential, Some(Grant::Dynamic { .. })) => (
                "sys/leases/renew",
                json!({ "lease_id": lease.handle.reference, "increment": increment }),
            ),
            _ => (
                "auth/token/renew-accessor",
                json!({ "accessor": lease.handle.reference, "increment": increment }),
            ),
        };
        let env = inner
            .with_token(|t| {
                let body = body.clone();
                async move {
                    inner
                        .client
                        .call(Method::PUT, path, Some(&t), Some(&body))
                        .await
                }
            })
            .await
            .map_err(|f| f.retryable("renewing"))?
            .unwrap_or_default();
        let secs = env
            .auth
            .as_ref()
            .map_or(env.lease_duration, |a| a.lease_duration);
        Ok(Renewed {
            expires_at: now + Duration::from_secs(secs),
        })
    }

    async fn revoke(
        &self,
        lease: &LeaseRef<'_>,
        _now: SystemTime,
    ) -> Result<Revoked, ProviderError> {
        match (lease.role, grants::parse(lease.params).ok()) {
            (Role::Credential, Some(Grant::Dynamic { .. })) => {
                self.inner.revoke_lease(&lease.handle.reference).await
            }
            // OpenBao cannot revoke a batch token; it ends at the task's expiry, and with it
            // whatever was made with it (`scope.rs`).
            (Role::Scope, _) if is_batch(&lease.handle.reference) => Ok(Revoked::WillExpire {
                at: lease.expires_at,
            }),
            // A scope or a workload token: revoking the token revokes its children and leases.
            _ => self.inner.revoke_accessor(&lease.handle.reference).await,
        }
    }

    async fn reconcile(
        &self,
        req: &IssueRequest<'_>,
        _now: SystemTime,
    ) -> Result<Reconciled, ProviderError> {
        // Vault cannot be asked "what did you issue for lease X?" without sudo on the token
        // accessor list. But whatever a scope or credential request created carries a TTL no
        // longer than the task's, and the broker revokes a scope's credentials with the scope:
        // anything unrecorded stops working at the task's expiry at the latest.
        Ok(Reconciled::WillExpire { at: req.expires_at })
    }

    async fn health(&self) -> ProviderHealth {
        let info = self.inner.token.info();
        let left = info
            .expires_at
            .and_then(|e| e.duration_since(SystemTime::now()).ok());
        let detail = match (&info.error, info.checked) {
            (Some(e), _) => format!("{}: {e}", self.inner.name),
            (None, None) => "not yet checked".into(),
            (None, Some(_)) => format!(
                "token {} policies {:?} {}{}",
                info.accessor,
                info.policies,
                left.map_or("never expires".into(), |l| format!(
                    "expires in {}s",
                    l.as_secs()
                )),
                if info.renewable { " (renewable)" } else { "" }
            ),
        };
        ProviderHealth {
            healthy: info.error.is_none() && info.checked.is_some(),
            detail,
        }
    }

    async fn check_online(&self, grants: &[(&str, &Params)]) -> Vec<String> {
        let inner = &self.inner;
        let token = match inner.token.get(&inner.client).await {
            Ok(t) => t,
            Err(e) => return vec![format!("credbroker's token: {e}")],
        };
        let create = inner
            .scope_role
            .as_ref()
            .map_or("auth/token/create".to_string(), |r| {
                format!("auth/token/create/{r}")
            });
        let mut paths: Vec<(String, &'static str, String)> =
            vec![(create.clone(), "update", "per-task scope tokens".into())];
        for (name, params) in grants {
            if let Ok(Grant::Dynamic { path, post, .. }) = grants::parse(params) {
                paths.push((
                    path,
                    if post.is_some() { "update" } else { "read" },
                    format!("grant {name}"),
                ));
            }
        }
        paths.push((
            "sys/leases/revoke".into(),
            "update",
            "revoking leases".into(),
        ));
        // A batch scope's leases are neither shortened nor renewed, and the scope is not revoked.
        if !inner.batch_scopes {
            paths.push((
                "sys/leases/renew".into(),
                "update",
                "renewing leases".into(),
            ));
            paths.push((
                "auth/token/revoke-accessor".into(),
                "update",
                "revoking scope tokens".into(),
            ));
        }
        let mut asked: Vec<String> = paths.iter().map(|(p, _, _)| p.clone()).collect();
        // Asked too with a scope_role: the grants' tokens are created there, by the scope token.
        if !asked.iter().any(|p| p == TOKEN_CREATE) {
            asked.push(TOKEN_CREATE.into());
        }
        let body = json!({ "paths": asked });
        let env = match inner
            .client
            .call(
                Method::POST,
                "sys/capabilities-self",
                Some(&token),
                Some(&body),
            )
            .await
        {
            Ok(Some(e)) => e,
            Ok(None) => return vec!["capabilities-self returned nothing".into()],
            Err(f) => return vec![f.retryable("capabilities-self").to_string()],
        };
        let caps = env.data.unwrap_or(Value::Null);
        let own = inner.token.info().policies;
        // Vault lifts its subset rule for a parent with sudo on the path it creates through.
        let parent = Parent {
            policies: &own,
            sudo_on_scope_create: has_sudo(&caps, &create),
            sudo_on_create: has_sudo(&caps, TOKEN_CREATE),
        };
        let role = match inner.scope_role.as_deref() {
            Some(name) => inner.read_role(name, &token).await,
            None => ScopeRole::None,
        };
        let mut problems = crate::policies::problems(&parent, &inner.scope_policies, &role, grants);
        problems.extend(paths.iter().filter_map(|(path, need, why)| {
            let have = capabilities(&caps, path);
            let ok = have.contains(need) || have.contains(&"root");
            (!ok).then(|| {
                format!("{why}: credbroker's token lacks {need:?} on {path} (has {have:?})")
            })
        }));
        problems
    }
}
