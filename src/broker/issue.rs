//! Carrying out a BeginTask's plan: the intent, the scopes, the credentials.
//!
//! ```text
//! commit 1: task issuing + every lease pending (+ token_accepted, task_opened)
//! issue the scopes of scoped providers (Vault: a per-task child token)
//! commit 2: scopes active, their handles sealed          (only for scopes that can be revoked)
//! issue the credentials, each under its scope
//! commit 3: credentials active, task active              → the response leaves the process
//! ```
//! Any failure fails the task whole (`failed`): what was issued is revoked, what is unknown is
//! reconciled (or, under a scope, taken back with the scope), and the caller hears the first
//! failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use credbroker_provider_api::{
    ErrorKind as PKind, IssueRequest, Issued, ProviderError, RevocationHandle, Role, SecretValue,
};
use futures_util::future::join_all;

use super::begin::{Begun, IssuedCredential};
use super::failed::duplicate;
use super::intent::Intent;
use super::live::{LiveLease, LiveTask, TaskSummary, context, task_audit};
use super::plan::Plan;
use super::{Broker, BrokerError, ErrorKind, Runtime};
use crate::journal::rows::{LeaseRow, LeaseState, TaskRow, TaskState, Text, role_str};
use crate::journal::{Durability, Op};
use crate::providers::Instance;
use crate::record::{Outcome, event};
use crate::time::{from_ms, rfc3339, to_ms};

pub(super) type Outcomes = HashMap<Text, Result<Issued, ProviderError>>;

/// Internal: the intent's idempotency key was used before (see `broker::replay`).
pub(super) const KEY_SEEN: &str = "idempotency_key_seen";

/// The journal op recording that lease `id` was issued (`pending → active`).
pub(super) fn issued_op(id: &Text, i: &Issued, now: SystemTime, sealed: Option<Vec<u8>>) -> Op {
    Op::LeaseIssued {
        id: id.clone(),
        issued_ms: to_ms(now),
        expires_ms: to_ms(i.expires_at),
        reference: Text::from(i.handle.reference.as_str()),
        sealed_handle: sealed,
        renewable: i.renewable,
    }
}

impl Broker {
    pub(super) async fn open_and_issue(
        &self,
        rt: &Runtime,
        plan: Plan,
        now: SystemTime,
        subject: Option<&SecretValue>,
    ) -> Result<Begun, BrokerError> {
        let Plan {
            task,
            mut rows,
            instances,
            intent: ops,
            key,
        } = plan;

        // Hold the task's lock from the moment it exists: an EndTask for it waits for issuing,
        // and so does a second BeginTask with its idempotency key.
        let op = Arc::new(tokio::sync::Mutex::new(()));
        let _guard = Arc::clone(&op).lock_owned().await;
        let durability = Durability::for_intents(rt.config.journal.fsync_intents);
        let mut intent = if rt.config.journal.fsync_intents {
            self.journal
                .commit_with(ops, durability)
                .await
                .map_err(|e| {
                    if key.is_some() && e.is_duplicate() {
                        BrokerError::new(ErrorKind::Aborted, KEY_SEEN, "idempotency key seen")
                    } else {
                        BrokerError::journal(&e)
                    }
                })?;
            Intent::Journaled
        } else {
            let claim = match &key {
                Some(k) => Some(self.claim_key(&task.workload, k, &op).await?),
                None => None,
            };
            let pin = self
                .journal
                .log_intent(&ops)
                .map_err(|e| BrokerError::journal(&e))?;
            Intent::Logged {
                ops: Some(ops),
                pin: Some(pin),
                claim,
                kept: &self.kept_intents,
            }
        };
        let live = LiveTask {
            row: Arc::clone(&task),
            leases: rows
                .iter()
                .map(|l| LiveLease {
                    row: l.clone(),
                    handle: None,
                })
                .collect(),
            op,
            ending_journaled: false,
        };
        if let Err(e) = self.insert_live(live) {
            // Refused, but the intent stays findable: recovery settles it after the restart.
            let _ = self.journal_intent(&mut intent).await;
            return Err(e);
        }

        let mut handles: HashMap<Text, RevocationHandle> = HashMap::new();
        // The ops recording scopes that cannot be revoked, for the answering commit: journaling
        // their handles first would serve no recovery (`Provider::scopes_revocable`).
        let mut deferred: Vec<Op> = Vec::new();

        // === Scopes, then commit 2 (carrying the intent). ===
        let scopes: Vec<LeaseRow> = rows
            .iter()
            .filter(|l| l.role == Role::Scope)
            .cloned()
            .collect();
        if !scopes.is_empty() {
            let outcomes = self
                .issue_rows(rt, &task, &scopes, &instances, &handles, now, None)
                .await;
            let done = self.clock.now();
            if outcomes.values().any(Result::is_err) {
                let _ = self.journal_intent(&mut intent).await;
                return Err(self.fail_begin(&task, rows, outcomes, handles, done).await);
            }
            let mut ops = Vec::new();
            for row in rows.iter_mut().filter(|l| l.role == Role::Scope) {
                if let Some(Ok(i)) = outcomes.get(&row.id) {
                    match self.issued_ops(&task, row, i, done) {
                        Ok(mut o) => ops.append(&mut o),
                        Err(e) => {
                            let _ = self.journal_intent(&mut intent).await;
                            let outcomes = outcomes.into_iter().collect();
                            return Err(self
                                .fail_with(&task, rows, outcomes, handles, done, e)
                                .await);
                        }
                    }
                }
            }
            for (id, r) in outcomes {
                if let Ok(i) = r {
                    handles.insert(id, i.handle);
                }
            }
            let revocable = scopes.iter().any(|s| {
                instances
                    .get(&*s.provider)
                    .is_none_or(|i| i.provider.scopes_revocable())
            });
            if !revocable {
                deferred = ops;
            } else if let Err(e) = self
                .commit_scopes(&task, &rows, &handles, ops, durability, &mut intent)
                .await
            {
                self.abandon(&task, rows, handles, done);
                return Err(e);
            }
        }

        // === Credentials, then commit 3 (carrying the intent if no scope commit did). ===
        let creds: Vec<LeaseRow> = rows
            .iter()
            .filter(|l| l.role == Role::Credential)
            .cloned()
            .collect();
        let outcomes = self
            .issue_rows(rt, &task, &creds, &instances, &handles, now, subject)
            .await;
        let done = self.clock.now();
        if outcomes.values().any(Result::is_err) {
            // The failure is recorded against scopes the journal knows as issued.
            if !deferred.is_empty()
                && let Err(e) = self
                    .commit_scopes(&task, &rows, &handles, deferred, durability, &mut intent)
                    .await
            {
                // Nothing recorded: the credentials that were issued are revoked from memory
                // with the scopes, not left to reconciliation.
                for (id, r) in outcomes {
                    if let Ok(i) = r {
                        handles.insert(id, i.handle);
                    }
                }
                self.abandon(&task, rows, handles, done);
                return Err(e);
            }
            let _ = self.journal_intent(&mut intent).await;
            return Err(self.fail_begin(&task, rows, outcomes, handles, done).await);
        }
        self.finish_begin(task, rows, outcomes, handles, deferred, done, &mut intent)
            .await
    }

    /// Commit 2: the scopes issued (carrying the intent), before anything is issued under them.
    /// On failure the intent is kept for the revoker, and the caller abandons what it holds.
    async fn commit_scopes(
        &self,
        task: &TaskRow,
        rows: &[LeaseRow],
        handles: &HashMap<Text, RevocationHandle>,
        ops: Vec<Op>,
        durability: Durability,
        intent: &mut Intent<'_>,
    ) -> Result<(), BrokerError> {
        let ops = intent.carried(ops);
        if let Err(e) = self.journal.commit_with(ops, durability).await {
            let _ = self.journal_intent(intent).await;
            return Err(BrokerError::journal(&e));
        }
        intent.committed();
        self.mirror(&task.id, rows, handles);
        Ok(())
    }

    /// Makes a task live in memory. Its intent is already durable: if memory is unusable the
    /// caller is refused, and recovery after the restart settles the intent.
    pub(super) fn insert_live(&self, live: LiveTask) -> Result<(), BrokerError> {
        self.live_state()?.tasks.insert(live.row.id.clone(), live);
        Ok(())
    }

    /// Issues `rows` concurrently, each within its provider's limit and timeout. The caller's
    /// token (`subject`) reaches only providers that exchange it.
    #[allow(clippy::too_many_arguments)]
    async fn issue_rows(
        &self,
        rt: &Runtime,
        task: &TaskRow,
        rows: &[LeaseRow],
        instances: &HashMap<String, Arc<Instance>>,
        handles: &HashMap<Text, RevocationHandle>,
        now: SystemTime,
        subject: Option<&SecretValue>,
    ) -> Outcomes {
        let ctx = context(task);
        let timeout = rt.config.broker.provider_timeout;
        let results = join_all(rows.iter().map(|lease| {
            let ctx = &ctx;
            async move {
                let Some(instance) = instances.get(&*lease.provider) else {
                    return Err(ProviderError::new(PKind::Config, "provider not loaded"));
                };
                let req = IssueRequest {
                    lease_id: &lease.id,
                    role: lease.role,
                    task: ctx,
                    scope: lease.parent.as_ref().and_then(|p| handles.get(p)),
                    grant: &lease.grant,
                    params: &lease.params,
                    expires_at: from_ms(lease.wanted_exp_ms),
                    now,
                    subject_token: subject.filter(|_| instance.provider.exchanges_caller_token()),
                };
                let started = std::time::Instant::now();
                let result = instance.call(timeout, instance.provider.issue(&req)).await;
                self.metrics
                    .observe_issue(&lease.provider, started.elapsed());
                result
            }
        }))
        .await;
        rows.iter().map(|l| l.id.clone()).zip(results).collect()
    }

    /// The ops recording one issued lease (its sealed handle included), updating `row`.
    fn issued_ops(
        &self,
        task: &TaskRow,
        row: &mut LeaseRow,
        i: &Issued,
        now: SystemTime,
    ) -> Result<Vec<Op>, BrokerError> {
        let sealed = i
            .handle
            .secret
            .as_ref()
            .map(|s| self.sealer.seal(&row.id, s))
            .transpose()
            .map_err(|e| BrokerError::new(ErrorKind::Internal, "seal_failed", e.to_string()))?;
        row.state = LeaseState::Active;
        row.issued_ms = Some(to_ms(now));
        row.expires_ms = Some(to_ms(i.expires_at));
        row.reference = Some(Text::from(i.handle.reference.as_str()));
        row.renewable = i.renewable;
        let mut rec = task_audit(task, event::LEASE_ISSUED, Outcome::Success, now)
            .lease(&row.id, &row.grant, &row.provider)
            .detail("role", role_str(row.role))
            .detail("reference", i.handle.reference.clone())
            .detail("expires_at", rfc3339(i.expires_at));
        if i.expires_at > from_ms(row.wanted_exp_ms) + std::time::Duration::from_secs(1) {
            // The provider has a floor (STS: 15 minutes): say how long it outlives the task.
            // Not for the rounding of an expiry to whole seconds.
            rec = rec.detail("residual_until", rfc3339(i.expires_at));
        }
        Ok(vec![
            issued_op(&row.id, i, now, sealed),
            Op::Audit(Box::new(rec)),
        ])
    }

    /// Copies rows and handles into the live task.
    fn mirror(&self, task_id: &str, rows: &[LeaseRow], handles: &HashMap<Text, RevocationHandle>) {
        let Ok(mut state) = self.live_state() else {
            return;
        };
        let Some(live) = state.tasks.get_mut(task_id) else {
            return;
        };
        for row in rows {
            if let Some(l) = live.lease_mut(&row.id) {
                l.row = row.clone();
                if l.handle.is_none() {
                    l.handle = handles.get(&row.id).map(|h| Arc::new(duplicate(h)));
                }
            }
        }
    }

    /// Every credential issued: record them, activate the task, hand out the credentials.
    #[allow(clippy::too_many_arguments)]
    async fn finish_begin(
        &self,
        task: Arc<TaskRow>,
        mut rows: Vec<LeaseRow>,
        mut outcomes: Outcomes,
        mut handles: HashMap<Text, RevocationHandle>,
        scope_ops: Vec<Op>,
        now: SystemTime,
        intent: &mut Intent<'_>,
    ) -> Result<Begun, BrokerError> {
        let mut ops = scope_ops;
        for row in rows.iter_mut().filter(|l| l.role == Role::Credential) {
            if let Some(Ok(i)) = outcomes.get(&row.id) {
                match self.issued_ops(&task, row, i, now) {
                    Ok(mut o) => ops.append(&mut o),
                    Err(e) => {
                        let _ = self.journal_intent(intent).await;
                        return Err(self.fail_with(&task, rows, outcomes, handles, now, e).await);
                    }
                }
            }
        }
        ops.push(Op::TaskState {
            id: task.id.clone(),
            state: TaskState::Active,
            ended_ms: None,
            end_reason: None,
        });
        ops.push(Op::Audit(Box::new(task_audit(
            &task,
            event::TASK_BEGUN,
            Outcome::Success,
            now,
        ))));

        // Split each issued credential: the handle stays, the credential goes to the caller.
        let mut credentials = Vec::new();
        for row in rows.iter().filter(|l| l.role == Role::Credential) {
            if let Some(Ok(i)) = outcomes.remove(&row.id) {
                handles.insert(row.id.clone(), i.handle);
                credentials.push(IssuedCredential {
                    lease_id: row.id.to_string(),
                    grant: row.grant.to_string(),
                    provider: row.provider.to_string(),
                    kind: row.kind.to_string(),
                    // The caller may use it until the task ends, never longer, even where the
                    // provider's credential lives on (STS's 15-minute floor).
                    expires_at: i.expires_at.min(from_ms(task.expires_ms)),
                    credential: i.credential,
                });
            }
        }
        if let Err(e) = self.journal.commit(intent.carried(ops)).await {
            // Issued but not recorded as issued. Their intents are durable, so the revoker
            // settles them now, and recovery would after a restart.
            drop(credentials);
            let _ = self.journal_intent(intent).await;
            self.abandon(&task, rows, handles, now);
            return Err(BrokerError::journal(&e));
        }
        intent.committed();

        let mut active = (*task).clone();
        active.state = TaskState::Active;
        let active = Arc::new(active);
        self.mirror(&task.id, &rows, &handles);
        if let Ok(mut state) = self.live_state() {
            if let Some(live) = state.tasks.get_mut(&task.id) {
                live.row = Arc::clone(&active);
            }
            state
                .expiries
                .insert((active.expires_ms, active.id.clone()));
        }
        self.wake_reaper.notify_one();
        Ok(Begun {
            task: TaskSummary {
                task: (*active).clone(),
                leases: rows,
            },
            credentials,
        })
    }
}
