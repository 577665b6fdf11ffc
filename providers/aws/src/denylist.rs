//! Writing a role's deny list: revocations batched per role, one read-merge-write of the policy
//! document per batch (the document itself is `deny`'s).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use credbroker_provider_api::{ErrorKind, ProviderError};
use tokio::sync::oneshot;

use crate::deny::{self, Entry, MergeError, Outcome};
use crate::errors::{Effect, classify};
use crate::grant::Grant;
use crate::provider::AwsProvider;

impl AwsProvider {
    /// Writes `entry` into the role's deny list, batched with whatever else is waiting.
    pub(crate) async fn deny(
        &self,
        g: &Grant,
        entry: Entry,
        now: SystemTime,
    ) -> Result<Outcome, ProviderError> {
        let list = {
            let Ok(mut lists) = self.deny_lists.lock() else {
                return Err(ProviderError::new(
                    ErrorKind::Unavailable,
                    "deny list poisoned",
                ));
            };
            Arc::clone(lists.entry(g.role_name().to_string()).or_default())
        };
        list.deny(self, g.role_name(), entry, now).await
    }

    /// One read-merge-write of a role's deny list: GetRolePolicy, merge, PutRolePolicy.
    async fn write_deny_list(
        &self,
        role: &str,
        entries: &[Entry],
        now: SystemTime,
    ) -> Result<Outcome, ProviderError> {
        let iam = &self.clients().await.iam;
        let policy_name = &self.settings.deny_policy_name;
        let what = format!("deny list {policy_name} on role {role}");
        let existing = match iam
            .get_role_policy()
            .role_name(role)
            .policy_name(policy_name)
            .send()
            .await
        {
            Ok(out) => Some(deny::decode_document(out.policy_document())),
            Err(e) => {
                let e = classify(
                    &format!("GetRolePolicy of {what}"),
                    &e,
                    Effect::ReadsOrIdempotent,
                );
                if e.kind != ErrorKind::NotFound {
                    return Err(e);
                }
                None
            }
        };
        let max = self.settings.deny_policy_max_chars;
        let mut force_cutoff = false;
        loop {
            let merged = deny::merge(existing.as_deref(), entries, now, max, force_cutoff)
                .map_err(|e| match e {
                    MergeError::Unreadable(why) => ProviderError::new(
                        ErrorKind::Config,
                        format!("{what}: the existing document is not a policy credbroker can read ({why}); fix or delete it"),
                    ),
                    MergeError::Full { chars, max } => ProviderError::new(
                        ErrorKind::Config,
                        format!("{what}: {chars} characters even with a single cut-off statement (limit {max}); remove the statements that are not credbroker's"),
                    ),
                })?;
            let put = iam
                .put_role_policy()
                .role_name(role)
                .policy_name(policy_name)
                .policy_document(&merged.document)
                .send()
                .await;
            match put {
                Ok(_) => {
                    tracing::info!(provider = %self.name, role, entries = entries.len(),
                        pruned = merged.pruned, outcome = ?merged.outcome, "deny list written");
                    return Ok(merged.outcome);
                }
                Err(e) => {
                    let mut e = classify(
                        &format!("PutRolePolicy of {what}"),
                        &e,
                        Effect::ReadsOrIdempotent,
                    );
                    // NoSuchEntity here is the role itself. Its sessions cannot be denied by
                    // us, and whether they still work is not ours to assume: never "already
                    // gone". The revocation is retried until the session has expired.
                    if e.kind == ErrorKind::NotFound {
                        e = ProviderError::new(
                            ErrorKind::Config,
                            format!(
                                "{}: the role does not exist, so its sessions cannot be denied",
                                e.message
                            ),
                        );
                    }
                    // IAM counts all the role's inline policies together; when they are over
                    // its limit, cut off instead (once).
                    if e.message.contains("LimitExceeded") && !force_cutoff {
                        force_cutoff = true;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// A role's deny-list writer. Revocations that arrive while a write is in flight wait and go
/// out together in the next one: one GetRolePolicy + PutRolePolicy per batch, not per session,
/// and never two writers racing on the same document.
#[derive(Default)]
pub(crate) struct DenyList {
    pending: Mutex<Vec<(Entry, Answer)>>,
    writer: tokio::sync::Mutex<()>,
}

/// Where a queued revocation learns how the write carrying it went.
type Answer = oneshot::Sender<Result<Outcome, ProviderError>>;

impl DenyList {
    async fn deny(
        &self,
        provider: &AwsProvider,
        role: &str,
        entry: Entry,
        now: SystemTime,
    ) -> Result<Outcome, ProviderError> {
        let (tx, mut rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.push((entry, tx));
        }
        let _writing = self.writer.lock().await;
        // A writer drains the queue and answers everyone in it before letting go of the
        // lock, so ours is either answered or still queued.
        match rx.try_recv() {
            Ok(result) => return result,
            Err(oneshot::error::TryRecvError::Closed) => {
                return Err(ProviderError::new(
                    ErrorKind::Unavailable,
                    "the deny-list write carrying this session was interrupted",
                ));
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let batch = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        let entries: Vec<Entry> = batch.iter().map(|(e, _)| e.clone()).collect();
        let result = provider.write_deny_list(role, &entries, now).await;
        for (_, tx) in batch {
            let _ = tx.send(result.clone());
        }
        rx.await.unwrap_or_else(|_| {
            Err(ProviderError::new(
                ErrorKind::Unavailable,
                "deny-list write lost",
            ))
        })
    }
}
