//! The Provider implementation: scopes, dynamic secrets, workload tokens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker_provider_api::{
    Credential, ErrorKind, IssueRequest, Issued, LeaseRef, ParamError, ParamRule, Params, Provider,
    ProviderError, ProviderHealth, Reconciled, Renewed, RevocationHandle, Revoked, Role,
    SecretValue,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::SelfToken;
use crate::client::{Client, Envelope, Failure};
use crate::grants::{self, Grant};

pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) client: Client,
    pub(crate) token: SelfToken,
    pub(crate) scope_policies: Vec<String>,
    pub(crate) scope_role: Option<String>,
}

pub(crate) struct VaultProvider {
    pub(crate) inner: Arc<Inner>,
}

/// Whole seconds until `until`, at least one.
fn secs_until(until: SystemTime, now: SystemTime) -> u64 {
    until
        .duration_since(now)
        .map(|d| d.as_secs_f64().ceil() as u64)
        .unwrap_or(0)
        .max(1)
}

fn invalid_config(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::Config, message)
}

/// Whether a failed revocation means the lease or token is already gone. Almost never: OpenBao
/// answers 204 to revoking an unknown lease and 200 with a warning for an unknown accessor
/// (both handled as successes by the callers). A 400 is what a *backend* failure looks like
/// (a revocation statement that fails, `failed to revoke entry: …`), whatever words the
/// backend's own message happens to contain, so only Vault's own phrases for an id that does
/// not exist count, matched whole, never as words inside another message.
fn gone(f: &Failure) -> bool {
    const GONE: [&str; 4] = [
        "lease not found",
        "invalid lease",
        "invalid lease id",
        "token not found",
    ];
    f.status()
        .is_some_and(|s| s.as_u16() == 400 || s.as_u16() == 404)
        && f.errors()
            .iter()
            .any(|e| GONE.contains(&e.trim().trim_end_matches('.').to_ascii_lowercase().as_str()))
}

impl Inner {
    /// Runs `call` with credbroker's token; if Vault refuses the token itself, logs in again
    /// (or re-reads the rotated token) and tries once more.
    async fn with_token<T, F, Fut>(&self, call: F) -> Result<T, Failure>
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

    fn meta(&self, req: &IssueRequest<'_>) -> BTreeMap<String, String> {
        let t = req.task;
        let mut m = BTreeMap::new();
        m.insert("credbroker_task".to_string(), t.task_id.clone());
        m.insert("credbroker_lease".into(), req.lease_id.to_string());
        m.insert(
            "owner".into(),
            t.owner.clone().unwrap_or_else(|| "(unattributed)".into()),
        );
        m.insert("client_id".into(), t.client_id.clone());
        m.insert("subject".into(), t.subject.clone());
        m.insert("workload".into(), t.workload.clone());
        m.insert("tool".into(), t.tool.clone());
        m.insert("token_sha256".into(), t.token_fingerprint.clone());
        if !req.grant.is_empty() {
            m.insert("grant".into(), req.grant.to_string());
        }
        m
    }

    /// The per-task scope: a child of credbroker's token that dies with the task.
    async fn open_scope(&self, req: &IssueRequest<'_>) -> Result<Issued, ProviderError> {
        let mut body = json!({
            "ttl": format!("{}s", secs_until(req.expires_at, req.now)),
            "renewable": true,
            "display_name": "credbroker-task",
            "meta": self.meta(req),
            "num_uses": 0,
        });
        if !self.scope_policies.is_empty() {
            body["policies"] = json!(self.scope_policies);
        }
        let create_path = match &self.scope_role {
            Some(role) => format!("auth/token/create/{role}"),
            None => "auth/token/create".to_string(),
        };
        let create_path = create_path.as_str();
        let env = self
            .with_token(|t| {
                let body = body.clone();
                async move {
                    self.client
                        .call(Method::POST, create_path, Some(&t), Some(&body))
                        .await
                }
            })
            .await
            .map_err(|f| f.creating("creating the task's scope token"))?;
        let auth = env
            .and_then(|e| e.auth)
            .ok_or_else(|| invalid_config("token create returned no token"))?;
        Ok(Issued {
            credential: Credential::default(),
            expires_at: req.now + Duration::from_secs(auth.lease_duration),
            renewable: auth.renewable,
            handle: RevocationHandle {
                reference: auth.accessor,
                secret: Some(SecretValue::new(auth.client_token)),
            },
        })
    }

    async fn read_dynamic(
        &self,
        req: &IssueRequest<'_>,
        scope: &SecretValue,
        path: &str,
        post: Option<&Value>,
        public: &[String],
    ) -> Result<Issued, ProviderError> {
        let method = if post.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let env = self
            .client
            .call(method, path, Some(scope), post)
            .await
            .map_err(|f| match f.status().map(|s| s.as_u16()) {
                Some(403) => ProviderError::new(
                    ErrorKind::Denied,
                    format!("permission denied reading {path}: {}", f.message()),
                ),
                Some(404) | Some(400) => invalid_config(format!("reading {path}: {}", f.message())),
                _ => f.creating(&format!("reading {path}")),
            })?;
        let env: Envelope =
            env.ok_or_else(|| invalid_config(format!("{path} returned nothing")))?;
        if env.lease_id.is_empty() {
            // Nothing to revoke: brokering it would hand out a credential that outlives its task.
            return Err(invalid_config(format!(
                "{path} returned no lease; only lease-bearing secrets can be brokered"
            )));
        }
        // Engines pick their own lease TTL (a role's default_ttl, an hour say). OpenBao revokes
        // the lease when the scope token expires anyway, but shortening the lease to the task
        // also moves the backend's own expiry (PostgreSQL's VALID UNTIL, through the role's
        // renew statements): the credential dies on time even if Vault is down by then.
        let wanted = secs_until(req.expires_at, req.now);
        let mut lease_duration = env.lease_duration;
        if env.renewable && lease_duration > wanted {
            match self.renew_lease(&env.lease_id, wanted).await {
                Ok(d) => lease_duration = d,
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not shorten a lease to its task; its scope still ends it"
                ),
            }
        }
        let mut credential = Credential::default();
        credential
            .public
            .insert("lease_id".into(), env.lease_id.clone());
        credential
            .public
            .insert("lease_duration".into(), lease_duration.to_string());
        if let Some(Value::Object(data)) = env.data {
            for (k, v) in data {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                if public.contains(&k) {
                    credential.public.insert(k, text);
                } else {
                    credential.secret.insert(k, SecretValue::new(text));
                }
            }
        }
        Ok(Issued {
            credential,
            // The scope token's expiry (the task's) ends the lease even if the shortening failed.
            expires_at: (req.now + Duration::from_secs(lease_duration))
                .min(req.expires_at.max(req.now)),
            renewable: env.renewable,
            handle: RevocationHandle {
                reference: env.lease_id,
                secret: None,
            },
        })
    }

    /// `sys/leases/renew` to `secs` from now; returns the lease's new duration.
    async fn renew_lease(&self, lease_id: &str, secs: u64) -> Result<u64, ProviderError> {
        let body = json!({ "lease_id": lease_id, "increment": secs });
        let env = self
            .with_token(|t| {
                let body = body.clone();
                async move {
                    self.client
                        .call(Method::PUT, "sys/leases/renew", Some(&t), Some(&body))
                        .await
                }
            })
            .await
            .map_err(|f| f.retryable("renewing a lease"))?;
        Ok(env.map_or(secs, |e| e.lease_duration))
    }

    #[allow(clippy::too_many_arguments)]
    async fn child_token(
        &self,
        req: &IssueRequest<'_>,
        scope: &SecretValue,
        policies: &[String],
        ttl: Option<Duration>,
        num_uses: u64,
        renewable: bool,
        extra_meta: &BTreeMap<String, String>,
    ) -> Result<Issued, ProviderError> {
        let until = secs_until(req.expires_at, req.now);
        let ttl = ttl.map_or(until, |t| t.as_secs().clamp(1, until));
        let mut meta = self.meta(req);
        meta.extend(extra_meta.clone());
        let body = json!({
            "policies": policies,
            "ttl": format!("{ttl}s"),
            "num_uses": num_uses,
            "renewable": renewable,
            "display_name": format!("credbroker-{}", req.grant),
            "meta": meta,
        });
        let env = self
            .client
            .call(Method::POST, "auth/token/create", Some(scope), Some(&body))
            .await
            .map_err(|f| match f.status().map(|s| s.as_u16()) {
                Some(403) | Some(400) => ProviderError::new(
                    ErrorKind::Denied,
                    format!(
                        "creating a token with policies {policies:?}: {}",
                        f.message()
                    ),
                ),
                _ => f.creating("creating the workload token"),
            })?;
        let auth = env
            .and_then(|e| e.auth)
            .ok_or_else(|| invalid_config("token create returned no token"))?;
        let mut credential = Credential::default();
        credential
            .public
            .insert("accessor".into(), auth.accessor.clone());
        credential
            .public
            .insert("policies".into(), auth.policies.join(","));
        credential
            .public
            .insert("lease_duration".into(), auth.lease_duration.to_string());
        credential
            .secret
            .insert("token".into(), SecretValue::new(auth.client_token));
        Ok(Issued {
            credential,
            expires_at: req.now + Duration::from_secs(auth.lease_duration),
            renewable: auth.renewable,
            handle: RevocationHandle {
                reference: auth.accessor,
                secret: None,
            },
        })
    }

    async fn revoke_accessor(&self, accessor: &str) -> Result<Revoked, ProviderError> {
        let body = json!({ "accessor": accessor });
        match self
            .with_token(|t| {
                let body = body.clone();
                async move {
                    self.client
                        .call(
                            Method::POST,
                            "auth/token/revoke-accessor",
                            Some(&t),
                            Some(&body),
                        )
                        .await
                }
            })
            .await
        {
            // An unknown accessor is a 200 with a warning, not an error.
            Ok(Some(env))
                if env
                    .warnings
                    .iter()
                    .flatten()
                    .any(|w| w.contains("No token found")) =>
            {
                Ok(Revoked::AlreadyGone)
            }
            Ok(_) => Ok(Revoked::Revoked),
            Err(f) if gone(&f) => Ok(Revoked::AlreadyGone),
            Err(f) => Err(f.retryable("revoking a token")),
        }
    }

    async fn revoke_lease(&self, lease_id: &str) -> Result<Revoked, ProviderError> {
        let body = json!({ "lease_id": lease_id });
        match self
            .with_token(|t| {
                let body = body.clone();
                async move {
                    self.client
                        .call(Method::PUT, "sys/leases/revoke", Some(&t), Some(&body))
                        .await
                }
            })
            .await
        {
            Ok(_) => Ok(Revoked::Revoked),
            Err(f) if gone(&f) => Ok(Revoked::AlreadyGone),
            Err(f) => Err(f.retryable("revoking a lease")),
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

    fn check_grant(&self, params: &Params) -> Result<(), Vec<ParamError>> {
        grants::parse(params).map(|_| ())
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
            vec![(create, "update", "per-task scope tokens".into())];
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
        let body = json!({ "paths": paths.iter().map(|(p, _, _)| p.clone()).collect::<Vec<_>>() });
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
        paths
            .iter()
            .filter_map(|(path, need, why)| {
                let have: Vec<&str> = caps
                    .get(path)
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let ok = have.contains(need) || have.contains(&"root");
                (!ok).then(|| {
                    format!("{why}: credbroker's token lacks {need:?} on {path} (has {have:?})")
                })
            })
            .collect()
    }
}
