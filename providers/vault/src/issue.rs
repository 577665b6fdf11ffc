//! Issuing from Vault under a task's scope (`scope.rs`): dynamic secrets and workload tokens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use credbroker_provider_api::{
    Credential, ErrorKind, IssueRequest, Issued, ProviderError, RevocationHandle, SecretValue,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::batch::is_batch;
use crate::client::Envelope;
use crate::provider::{Inner, invalid_config, secs_until};

impl Inner {
    pub(crate) fn meta(&self, req: &IssueRequest<'_>) -> BTreeMap<String, String> {
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

    pub(crate) async fn read_dynamic(
        self: &Arc<Self>,
        req: &IssueRequest<'_>,
        scope: &SecretValue,
        path: &str,
        post: Option<&Value>,
        public: &[String],
    ) -> Result<Issued, ProviderError> {
        // A batch scope already cut the lease to the task in OpenBao, and its leases cannot be
        // renewed (`batch.rs`): nothing to shorten.
        let batch = req.scope.is_some_and(|s| is_batch(&s.reference));
        let method = if post.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let read = self.client.call(method, path, Some(scope), post).await;
        if batch
            && let Err(f) = &read
            && f.status().is_some_and(|s| s.as_u16() == 403)
        {
            self.forget_if_dead(scope).await;
        }
        let env = read.map_err(|f| match f.status().map(|s| s.as_u16()) {
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
        // Engines pick their own lease TTL (a role's default_ttl, an hour say). The scope token,
        // whose TTL is the task's, already bounds the lease: OpenBao revokes every lease made
        // under a token when the token expires. Shortening the lease to the task also moves the
        // backend's own expiry (PostgreSQL's VALID UNTIL, through the role's renew statements),
        // so the credential dies on time even if OpenBao is down by then. That is defence in
        // depth on top of the scope, so it is done after the answer, not before it: a renewal
        // costs a storage write in OpenBao and a statement in the database, on every issue.
        let wanted = secs_until(req.expires_at, req.now);
        let lease_duration = env.lease_duration.min(wanted);
        if !batch && env.renewable && env.lease_duration > wanted {
            let (inner, lease) = (Arc::clone(self), env.lease_id.clone());
            tokio::spawn(async move {
                if let Err(e) = inner.renew_lease(&lease, wanted).await {
                    tracing::warn!(
                        error = %e,
                        "could not shorten a lease to its task; its scope still ends it"
                    );
                }
            });
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
            renewable: env.renewable && !batch,
            handle: RevocationHandle {
                reference: env.lease_id,
                secret: None,
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn child_token(
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
}
