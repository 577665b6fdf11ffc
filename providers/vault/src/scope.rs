//! A task's scope: the token every credential of the task is issued with.
//!
//! **Service scopes** (the default, `scope_type = "service"`): a child token of credbroker's
//! own, made per task with the task's TTL (or taken from the pool, `pool.rs`). Revoking it takes
//! back every lease made with it, including one whose id never reached the journal. Its cost is
//! OpenBao's: a storage write (a raft commit, an fsync) to make it, another to revoke it, and a
//! third to shorten each lease to the task (after the answer), on every task.
//!
//! **Batch scopes** (`scope_type = "batch"`): `batch.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker_provider_api::{
    Credential, IssueRequest, Issued, ProviderError, RevocationHandle, SecretValue,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::pool::Made;
use crate::provider::{Inner, TOKEN_CREATE, invalid_config, secs_until};

impl Inner {
    /// The per-task scope: a child of credbroker's token that dies with the task. Taken from
    /// the pool when there is one (`pool`), its TTL fitted to the task just after the answer.
    pub(crate) async fn open_scope(
        self: &Arc<Self>,
        req: &IssueRequest<'_>,
    ) -> Result<Issued, ProviderError> {
        if self.batch_scopes {
            return self.open_batch_scope(req).await;
        }
        if let Some(made) = self.pool.as_ref().and_then(|p| p.take(req.now)) {
            let (inner, accessor) = (Arc::clone(self), made.accessor.clone());
            let increment = format!("{}s", secs_until(req.expires_at, req.now));
            tokio::spawn(async move {
                let body = json!({ "accessor": accessor, "increment": increment });
                let fitted = inner
                    .with_token(|t| {
                        let body = body.clone();
                        let inner = &inner;
                        async move {
                            inner
                                .client
                                .call(
                                    Method::PUT,
                                    "auth/token/renew-accessor",
                                    Some(&t),
                                    Some(&body),
                                )
                                .await
                        }
                    })
                    .await;
                if let Err(f) = fitted {
                    tracing::warn!(error = %f.retryable("fitting a pooled scope to its task"),
                        "a pooled scope keeps its own TTL; its task's leases are shortened still");
                }
            });
            return Ok(Issued {
                credential: Credential::default(),
                expires_at: req.expires_at,
                renewable: made.renewable,
                handle: RevocationHandle {
                    reference: made.accessor,
                    secret: Some(made.token),
                },
            });
        }
        let secs = secs_until(req.expires_at, req.now);
        let auth = self.create_scope(secs, json!(self.meta(req))).await?;
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

    /// A scope token for the pool: made before its task is known, so its metadata says so.
    pub(crate) async fn make_scope(&self, ttl: Duration) -> Result<Made, ProviderError> {
        let meta = json!({ "purpose": "mcp", "credbroker_scope": "pooled" });
        let now = SystemTime::now();
        let auth = self.create_scope(ttl.as_secs().max(1), meta).await?;
        Ok(Made {
            accessor: auth.accessor,
            token: SecretValue::new(auth.client_token),
            expires_at: now + Duration::from_secs(auth.lease_duration),
            renewable: auth.renewable,
        })
    }

    /// `auth/token/create` (or `…/create/{scope_role}`) for a scope token of `secs`.
    async fn create_scope(
        &self,
        secs: u64,
        meta: Value,
    ) -> Result<crate::client::Auth, ProviderError> {
        let mut body = json!({
            "ttl": format!("{secs}s"),
            "renewable": true,
            "display_name": "credbroker-task",
            "meta": meta,
            "num_uses": 0,
        });
        if !self.scope_policies.is_empty() {
            body["policies"] = json!(self.scope_policies);
        }
        let create_path = match &self.scope_role {
            Some(role) => format!("auth/token/create/{role}"),
            None => TOKEN_CREATE.to_string(),
        };
        self.create_token(&create_path, &body).await
    }

    /// A scope token from `create_path`, with credbroker's own token.
    pub(crate) async fn create_token(
        &self,
        create_path: &str,
        body: &Value,
    ) -> Result<crate::client::Auth, ProviderError> {
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
        env.and_then(|e| e.auth)
            .ok_or_else(|| invalid_config("token create returned no token"))
    }
}
