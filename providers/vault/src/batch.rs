//! Batch scopes (`scope_type = "batch"`): a task's scope as a batch token.
//!
//! A *batch* token, made per task with the task's
//! TTL, as a child of credbroker's token. OpenBao stores nothing for it (the token is its own
//! encrypted entry), and it constrains every lease made with it: a lease's expiry is cut to the
//! batch token's (`expiration.go`, `Register`), and such a lease cannot be renewed. So:
//! - *Bounded by construction, as a service scope is.* Every lease of the task expires at the
//!   task's expiry at the latest, in OpenBao's own record, whether or not credbroker ever comes
//!   back; a lease made and never journaled (a crash, a lost answer) too. Nothing has to run
//!   after the answer to get there, so no lease shortening is needed.
//! - *Ending* revokes each credential by its lease id, confirmed, as with a service scope.
//!   The scope itself cannot be revoked (OpenBao refuses to revoke batch tokens): the broker
//!   records it as `expiring` until the task's expiry. It is a bearer token only credbroker
//!   ever held, in memory and sealed in its journal, and both drop it when the task ends.
//! - *What is weaker:* a credential of **unknown outcome** (a lost answer, a crash mid-issue) is
//!   not taken back early: it ends at the task's expiry, not at its end, where a service
//!   scope's revocation would have taken it at once. It is recorded `expiring` until then
//!   (`lease_expired_unrevoked`), as any credential `reconcile` cannot find; it was never
//!   handed out.
//!   Credentials are not renewable, so a `RenewTask` extends the task but not its Vault
//!   credentials. Workload-token grants cannot be issued (a batch token makes no tokens), so an
//!   instance with batch scopes refuses them at configuration load. PostgreSQL's `VALID UNTIL`
//!   stays the role's `default_ttl` (OpenBao drops the role at the lease's expiry).
//! - *What it buys:* the task's only OpenBao writes are the credential's own (its lease and its
//!   revocation), as when a workload uses OpenBao directly (BENCHMARKS.md, the real-provider
//!   cycle).
//! - Revoking credbroker's own token revokes every lease made with its batch children (they are
//!   indexed under the parent): the same fail-closed behaviour as service scopes.
//! - *One per access token.* A batch token made for a task is kept and reused by the next tasks
//!   of the same access token, workload and expiry (an agent's tool calls with one cached
//!   token: their tasks all end at the token's `exp`), so most tasks make no OpenBao call for
//!   their scope at all. Sharing takes nothing away: a batch token cannot be revoked anyway,
//!   every lease made with it is revoked on its own, and the shared token caps each lease at
//!   the same instant, its task's expiry. Its metadata therefore names the principal (owner,
//!   client, subject, workload, token fingerprint), not one task; the task behind each lease
//!   is in credbroker's journal. A kept token is dropped at its expiry, when credbroker's own
//!   token is replaced (it was that token's child), and when OpenBao refuses a read with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use credbroker_provider_api::{
    Credential, IssueRequest, Issued, ProviderError, RevocationHandle, SecretValue,
};
use reqwest::Method;
use serde_json::json;

use crate::provider::{Inner, TOKEN_CREATE, secs_until};

/// The reference of a batch scope, followed by its lease id: a batch token has no accessor,
/// and the reference tells `revoke` that there is nothing to revoke.
pub(crate) const BATCH_REF: &str = "batch-scope:";

/// Whether `reference` names a batch scope.
pub(crate) fn is_batch(reference: &str) -> bool {
    reference.starts_with(BATCH_REF)
}

/// At most this many batch tokens are kept; past it, a new one is used without being kept.
const KEPT_MAX: usize = 4096;

/// Batch tokens kept for reuse, by (token fingerprint, workload, expiry in Unix seconds).
#[derive(Default)]
pub(crate) struct BatchScopes {
    kept: Mutex<HashMap<(String, String, u64), Kept>>,
}

struct Kept {
    token: SecretValue,
    expires_at: SystemTime,
    /// credbroker's token it is a child of: once that is replaced, this one is not reused.
    parent: Weak<SecretValue>,
}

fn key(req: &IssueRequest<'_>) -> (String, String, u64) {
    let exp = req
        .expires_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs_f64().ceil() as u64);
    (
        req.task.token_fingerprint.clone(),
        req.task.workload.clone(),
        exp,
    )
}

impl BatchScopes {
    fn get(
        &self,
        key: &(String, String, u64),
        parent: &Arc<SecretValue>,
        now: SystemTime,
    ) -> Option<(SecretValue, SystemTime)> {
        let kept = self.kept.lock().ok()?;
        let k = kept.get(key)?;
        (k.expires_at > now && Weak::ptr_eq(&k.parent, &Arc::downgrade(parent)))
            .then(|| (k.token.duplicate(), k.expires_at))
    }

    fn keep(&self, key: (String, String, u64), kept: Kept, now: SystemTime) {
        let Ok(mut all) = self.kept.lock() else {
            return;
        };
        if all.len() >= KEPT_MAX {
            all.retain(|_, k| k.expires_at > now && k.parent.strong_count() > 0);
        }
        if all.len() < KEPT_MAX {
            all.insert(key, kept);
        }
    }

    /// Forgets `token` (OpenBao no longer takes it).
    pub(crate) fn forget(&self, token: &SecretValue) {
        if let Ok(mut all) = self.kept.lock() {
            all.retain(|_, k| k.token.expose() != token.expose());
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.lock().map_or(0, |k| k.len())
    }
}

impl Inner {
    /// After a 403 on a read with a batch scope: a kept token that OpenBao no longer takes
    /// (its parent, credbroker's token, revoked) is forgotten, so the next task makes a new one.
    /// A 403 for the path alone (a policy) leaves it kept.
    pub(crate) async fn forget_if_dead(&self, scope: &SecretValue) {
        let looked = self
            .client
            .call(Method::GET, "auth/token/lookup-self", Some(scope), None)
            .await;
        if looked.is_err_and(|f| f.status().is_some_and(|s| s.as_u16() == 403)) {
            self.batch.forget(scope);
        }
    }

    /// A batch scope: kept from an earlier task of the same access token, or made with
    /// `auth/token/create` and `type = "batch"`. OpenBao stores nothing of it (the token is its
    /// own encrypted entry), so making one costs no storage write.
    pub(crate) async fn open_batch_scope(
        &self,
        req: &IssueRequest<'_>,
    ) -> Result<Issued, ProviderError> {
        let key = key(req);
        let parent = self.token.get(&self.client).await?;
        let issued = |token: SecretValue, expires_at: SystemTime| Issued {
            credential: Credential::default(),
            expires_at,
            renewable: false,
            handle: RevocationHandle {
                reference: format!("{BATCH_REF}{}", req.lease_id),
                secret: Some(token),
            },
        };
        if let Some((token, expires_at)) = self.batch.get(&key, &parent, req.now) {
            return Ok(issued(token, expires_at));
        }
        let secs = secs_until(req.expires_at, req.now);
        let t = req.task;
        let mut body = json!({
            "type": "batch",
            "ttl": format!("{secs}s"),
            "display_name": "credbroker-task",
            "meta": {
                "credbroker_scope": "batch",
                "owner": t.owner.clone().unwrap_or_else(|| "(unattributed)".into()),
                "client_id": t.client_id,
                "subject": t.subject,
                "workload": t.workload,
                "token_sha256": t.token_fingerprint,
            },
        });
        if !self.scope_policies.is_empty() {
            body["policies"] = json!(self.scope_policies);
        }
        let auth = self.create_token(TOKEN_CREATE, &body).await?;
        let expires_at = req.now + Duration::from_secs(auth.lease_duration);
        let token = SecretValue::new(auth.client_token);
        self.batch.keep(
            key,
            Kept {
                token: token.duplicate(),
                expires_at,
                parent: Arc::downgrade(&parent),
            },
            req.now,
        );
        Ok(issued(token, expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(exp: u64) -> (String, String, u64) {
        ("fp".into(), "w".into(), exp)
    }

    fn kept(token: &str, expires_at: SystemTime, parent: &Arc<SecretValue>) -> Kept {
        Kept {
            token: SecretValue::new(token),
            expires_at,
            parent: Arc::downgrade(parent),
        }
    }

    #[test]
    fn a_kept_scope_is_reused_only_for_its_key_its_parent_and_its_life() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let later = now + Duration::from_secs(300);
        let parent = Arc::new(SecretValue::new("s.parent"));
        let scopes = BatchScopes::default();
        scopes.keep(k(1300), kept("b.one", later, &parent), now);
        let got = scopes.get(&k(1300), &parent, now);
        assert_eq!(
            got.map(|(t, e)| (t.expose().to_string(), e)),
            Some(("b.one".to_string(), later))
        );
        assert!(
            scopes.get(&k(1301), &parent, now).is_none(),
            "another expiry"
        );
        assert!(scopes.get(&k(1300), &parent, later).is_none(), "expired");
        // credbroker's token replaced: its children are not reused.
        let relogged = Arc::new(SecretValue::new("s.parent"));
        assert!(scopes.get(&k(1300), &relogged, now).is_none());
        // Refused by OpenBao: forgotten.
        scopes.forget(&SecretValue::new("b.one"));
        assert!(scopes.get(&k(1300), &parent, now).is_none());
    }

    #[test]
    fn at_most_kept_max_are_kept_and_the_dead_make_room() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let parent = Arc::new(SecretValue::new("s.parent"));
        let scopes = BatchScopes::default();
        for i in 0..KEPT_MAX as u64 {
            // Half of them expire at `now + 1`.
            let exp = now + Duration::from_secs(1 + (i % 2) * 300);
            scopes.keep(k(i), kept("b.x", exp, &parent), now);
        }
        assert_eq!(scopes.len(), KEPT_MAX);
        // Full, with none expired: the new one is used but not kept.
        scopes.keep(
            k(99_999),
            kept("b.y", now + Duration::from_secs(9), &parent),
            now,
        );
        assert_eq!(scopes.len(), KEPT_MAX);
        assert!(scopes.get(&k(99_999), &parent, now).is_none());
        // Later, the expired half makes room.
        let later = now + Duration::from_secs(2);
        scopes.keep(
            k(99_999),
            kept("b.y", now + Duration::from_secs(9), &parent),
            later,
        );
        assert_eq!(scopes.len(), KEPT_MAX / 2 + 1);
        assert!(scopes.get(&k(99_999), &parent, later).is_some());
    }
}
