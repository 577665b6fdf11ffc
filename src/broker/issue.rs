//! Issuing a task's credentials: the intent, the scopes, the credentials, and what to do when
//! any of it fails.
//!
//! ```text
//! commit 1: task issuing + every lease pending (+ token_accepted, task_opened)
//! issue the scopes of scoped providers (Vault: a per-task child token)
//! commit 2: scopes active, their handles sealed          (only when there are scopes)
//! issue the credentials, each under its scope
//! commit 3: credentials active, task active              → the response leaves the process
//! ```
//! Any failure fails the task whole: what was issued is revoked, what is unknown is reconciled
//! (or, under a scope, taken back with the scope), and the caller hears the first failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use credbroker_provider_api::{
    ErrorKind as PKind, IssueRequest, Issued, Params, ProviderError, RevocationHandle, Role,
    SecretValue,
};
use futures_util::future::join_all;

use super::begin::{Begun, IssuedCredential, call_provider};
use super::intern::Interner;
use super::live::{LiveLease, LiveTask, TaskSummary, context, task_audit, task_audit_full};
use super::{Broker, BrokerError, ErrorKind, Runtime, new_id};
use crate::audit::{Outcome, event};
use crate::config::WorkloadConfig;
use crate::journal::Op;
use crate::journal::rows::{LeaseRow, LeaseState, TaskRow, TaskState, Text, end_reason, role_str};
use crate::policy::Decision;
use crate::providers::Slot;
use crate::time::{from_ms, rfc3339, to_ms};
use crate::token::Verified;
use crate::workload::PeerInfo;

type Outcomes = HashMap<Text, Result<Issued, ProviderError>>;

/// Internal: the intent's idempotency key was used before (see `broker::replay`).
pub(super) const KEY_SEEN: &str = "idempotency_key_seen";

fn lease_row(
    intern: &Interner,
    task: &TaskRow,
    role: Role,
    parent: Option<Text>,
    grant: &str,
    slot: &Slot,
    params: Arc<Params>,
) -> LeaseRow {
    LeaseRow {
        id: new_id().into(),
        task_id: Arc::clone(&task.id),
        role,
        parent,
        grant: intern.get(grant),
        provider: intern.get(&slot.config.name),
        kind: intern.get(&slot.config.kind),
        state: LeaseState::Pending,
        params,
        wanted_exp_ms: task.expires_ms,
        issued_ms: None,
        expires_ms: None,
        revoked_ms: None,
        reference: None,
        sealed_handle: None,
        renewable: false,
        attempts: 0,
        next_attempt_ms: None,
        last_error: None,
    }
}

impl Broker {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open_and_issue(
        &self,
        rt: &Runtime,
        peer: &PeerInfo,
        workload: &WorkloadConfig,
        verified: &Verified,
        tool: &str,
        task_id: String,
        decision: Decision,
        key: Option<&super::replay::BeginKey>,
        now: SystemTime,
    ) -> Result<Begun, BrokerError> {
        let claims = &verified.claims;
        let i = &self.intern;
        let task = Arc::new(TaskRow {
            id: task_id.into(),
            state: TaskState::Issuing,
            workload: i.get(&workload.name),
            tool: i.get(tool),
            issuer: i.get(&claims.issuer),
            subject: i.get(&claims.subject),
            client_id: i.get(&claims.client_id),
            owner: i.opt(decision.owner.id.as_deref()),
            owner_source: i.get(decision.owner.source.code()),
            actors: claims.actors.clone(),
            token_fp: i.get(&verified.fingerprint.hex()),
            jti: i.get(&claims.jti),
            scopes: i.get(&claims.scopes.join(" ")),
            token_exp_ms: claims.expires_at.saturating_mul(1000),
            peer: peer.shared_record(),
            created_ms: to_ms(now),
            expires_ms: to_ms(decision.expires_at),
            ended_ms: None,
            end_reason: None,
        });

        // One scope per scoped provider instance, one credential per grant.
        let mut rows: Vec<LeaseRow> = Vec::new();
        let mut slots: HashMap<String, Arc<Slot>> = HashMap::new();
        let mut scope_of: HashMap<String, Text> = HashMap::new();
        for r in &decision.grants {
            let slot = rt
                .providers
                .get(&r.grant.provider)
                .cloned()
                .ok_or_else(|| {
                    BrokerError::new(
                        ErrorKind::Internal,
                        "provider_missing",
                        format!("provider {:?} is not loaded", r.grant.provider),
                    )
                })?;
            let parent = if slot.provider.scoped() {
                let id = scope_of.entry(slot.config.name.clone()).or_insert_with(|| {
                    let scope = lease_row(i, &task, Role::Scope, None, "", &slot, Arc::default());
                    let id = scope.id.clone();
                    rows.push(scope);
                    id
                });
                Some(id.clone())
            } else {
                None
            };
            rows.push(lease_row(
                i,
                &task,
                Role::Credential,
                parent,
                &r.grant.name,
                &slot,
                Arc::clone(&r.params),
            ));
            slots.insert(slot.config.name.clone(), slot);
        }

        // === Commit 1: the intent, before any provider is called. ===
        let mut ops = vec![Op::InsertTask(Box::new((*task).clone()))];
        ops.extend(rows.iter().map(|l| Op::InsertLease(Box::new(l.clone()))));
        let accepted = task_audit_full(&task, event::TOKEN_ACCEPTED, Outcome::Success, now)
            .detail("scopes", claims.scopes.clone())
            .detail("audiences", claims.audiences.clone())
            .detail("token_expires_at", claims.expires_at)
            .detail("token_issued_at", claims.issued_at);
        let credentials: Vec<&LeaseRow> =
            rows.iter().filter(|l| l.role == Role::Credential).collect();
        let opened = task_audit_full(&task, event::TASK_OPENED, Outcome::Success, now)
            .detail(
                "grants",
                credentials
                    .iter()
                    .map(|l| l.grant.to_string())
                    .collect::<Vec<_>>(),
            )
            .detail(
                "lease_ids",
                credentials
                    .iter()
                    .map(|l| l.id.to_string())
                    .collect::<Vec<_>>(),
            )
            .detail("expires_at", rfc3339(decision.expires_at));
        ops.push(Op::Audit(Box::new(accepted)));
        ops.push(Op::Audit(Box::new(opened)));
        if let Some(k) = key {
            ops.push(Op::BeginKey {
                workload: Arc::clone(&task.workload),
                key: k.key.clone(),
                task_id: Arc::clone(&task.id),
                digest: k.digest,
                created_ms: task.created_ms,
            });
        }

        // Hold the task's lock from the moment it exists: an EndTask for it waits for issuing.
        let op = Arc::new(tokio::sync::Mutex::new(()));
        let _guard = Arc::clone(&op).lock_owned().await;
        let intent = rt.config.journal.intent_durability();
        self.journal.commit_with(ops, intent).await.map_err(|e| {
            if key.is_some() && e.is_duplicate() {
                BrokerError::new(ErrorKind::Aborted, KEY_SEEN, "idempotency key seen")
            } else {
                BrokerError::journal(&e)
            }
        })?;
        self.insert_live(LiveTask {
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
        });

        let mut handles: HashMap<Text, RevocationHandle> = HashMap::new();

        // === Scopes, then commit 2. ===
        let scopes: Vec<LeaseRow> = rows
            .iter()
            .filter(|l| l.role == Role::Scope)
            .cloned()
            .collect();
        if !scopes.is_empty() {
            let outcomes = self
                .issue_rows(rt, &task, &scopes, &slots, &handles, now)
                .await;
            let done = self.clock.now();
            if outcomes.values().any(Result::is_err) {
                return Err(self.fail_begin(&task, rows, outcomes, handles, done).await);
            }
            let mut ops = Vec::new();
            for row in rows.iter_mut().filter(|l| l.role == Role::Scope) {
                if let Some(Ok(i)) = outcomes.get(&row.id) {
                    match self.issued_ops(&task, row, i, done) {
                        Ok(mut o) => ops.append(&mut o),
                        Err(e) => {
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
            if let Err(e) = self.journal.commit_with(ops, intent).await {
                self.abandon(&task, rows, handles, done);
                return Err(BrokerError::journal(&e));
            }
            self.mirror(&task.id, &rows, &handles);
        }

        // === Credentials, then commit 3. ===
        let creds: Vec<LeaseRow> = rows
            .iter()
            .filter(|l| l.role == Role::Credential)
            .cloned()
            .collect();
        let outcomes = self
            .issue_rows(rt, &task, &creds, &slots, &handles, now)
            .await;
        let done = self.clock.now();
        if outcomes.values().any(Result::is_err) {
            return Err(self.fail_begin(&task, rows, outcomes, handles, done).await);
        }
        self.finish_begin(task, rows, outcomes, handles, done).await
    }

    pub(super) fn insert_live(&self, live: LiveTask) {
        if let Ok(mut state) = self.state.lock() {
            state.tasks.insert(live.row.id.clone(), live);
        }
    }

    /// Issues `rows` concurrently, each within its provider's limit and timeout.
    async fn issue_rows(
        &self,
        rt: &Runtime,
        task: &TaskRow,
        rows: &[LeaseRow],
        slots: &HashMap<String, Arc<Slot>>,
        handles: &HashMap<Text, RevocationHandle>,
        now: SystemTime,
    ) -> Outcomes {
        let ctx = context(task);
        let timeout = rt.config.broker.provider_timeout;
        let results = join_all(rows.iter().map(|lease| {
            let ctx = &ctx;
            async move {
                let Some(slot) = slots.get(&*lease.provider) else {
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
                };
                let started = std::time::Instant::now();
                let result = call_provider(slot, timeout, slot.provider.issue(&req)).await;
                self.journal
                    .metrics()
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
            Op::LeaseIssued {
                id: row.id.clone(),
                issued_ms: to_ms(now),
                expires_ms: to_ms(i.expires_at),
                reference: Text::from(i.handle.reference.as_str()),
                sealed_handle: sealed,
                renewable: i.renewable,
            },
            Op::Audit(Box::new(rec)),
        ])
    }

    /// Copies rows and handles into the live task.
    fn mirror(&self, task_id: &str, rows: &[LeaseRow], handles: &HashMap<Text, RevocationHandle>) {
        let Ok(mut state) = self.state.lock() else {
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
    async fn finish_begin(
        &self,
        task: Arc<TaskRow>,
        mut rows: Vec<LeaseRow>,
        mut outcomes: Outcomes,
        mut handles: HashMap<Text, RevocationHandle>,
        now: SystemTime,
    ) -> Result<Begun, BrokerError> {
        let mut ops = Vec::new();
        for row in rows.iter_mut().filter(|l| l.role == Role::Credential) {
            if let Some(Ok(i)) = outcomes.get(&row.id) {
                match self.issued_ops(&task, row, i, now) {
                    Ok(mut o) => ops.append(&mut o),
                    Err(e) => {
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
        if let Err(e) = self.journal.commit(ops).await {
            // Issued but not recorded as issued. Their intents are durable, so the revoker
            // settles them now, and recovery would after a restart.
            drop(credentials);
            self.abandon(&task, rows, handles, now);
            return Err(BrokerError::journal(&e));
        }

        let mut active = (*task).clone();
        active.state = TaskState::Active;
        let active = Arc::new(active);
        self.mirror(&task.id, &rows, &handles);
        if let Ok(mut state) = self.state.lock() {
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

    async fn fail_with(
        &self,
        task: &TaskRow,
        rows: Vec<LeaseRow>,
        outcomes: Outcomes,
        handles: HashMap<Text, RevocationHandle>,
        now: SystemTime,
        err: BrokerError,
    ) -> BrokerError {
        let _ = self.fail_begin(task, rows, outcomes, handles, now).await;
        err
    }

    /// Something failed: the task fails whole. Issued leases are revoked, unknown ones
    /// reconciled, leases never attempted are failed; the first provider error is returned.
    async fn fail_begin(
        &self,
        task: &TaskRow,
        mut rows: Vec<LeaseRow>,
        mut outcomes: Outcomes,
        mut handles: HashMap<Text, RevocationHandle>,
        now: SystemTime,
    ) -> BrokerError {
        let mut first: Option<BrokerError> = None;
        let mut ops = Vec::new();
        for row in &mut rows {
            match outcomes.remove(&row.id) {
                Some(Ok(i)) => {
                    // Issued, but the task is failing: journal it as issued, then revoking.
                    let sealed = i
                        .handle
                        .secret
                        .as_ref()
                        .and_then(|s| self.sealer.seal(&row.id, s).ok());
                    ops.push(Op::LeaseIssued {
                        id: row.id.clone(),
                        issued_ms: to_ms(now),
                        expires_ms: to_ms(i.expires_at),
                        reference: Text::from(i.handle.reference.as_str()),
                        sealed_handle: sealed,
                        renewable: i.renewable,
                    });
                    row.issued_ms = Some(to_ms(now));
                    row.expires_ms = Some(to_ms(i.expires_at));
                    row.reference = Some(Text::from(i.handle.reference.as_str()));
                    row.state = LeaseState::Revoking;
                    handles.insert(row.id.clone(), i.handle);
                }
                Some(Err(e)) => {
                    row.state = if e.kind == PKind::OutcomeUnknown {
                        LeaseState::Reconciling
                    } else {
                        LeaseState::Failed
                    };
                    row.last_error = Some(e.to_string());
                    ops.push(Op::Audit(Box::new(
                        task_audit(task, event::LEASE_ISSUE_FAILED, Outcome::Failure, now)
                            .lease(&row.id, &row.grant, &row.provider)
                            .detail("role", role_str(row.role))
                            .reason(e.kind.code())
                            .detail("error", e.message.clone()),
                    )));
                    if first.is_none() {
                        let grant = if row.role == Role::Scope {
                            "(task scope)"
                        } else {
                            &*row.grant
                        };
                        first = Some(BrokerError::provider(&e, grant, &row.provider));
                    }
                }
                // Not attempted in this phase: an active scope is revoked, the rest never happened.
                None if row.state == LeaseState::Active => row.state = LeaseState::Revoking,
                None => {
                    row.state = LeaseState::Failed;
                    row.last_error = Some("not attempted: the task failed first".into());
                }
            }
            row.next_attempt_ms = (!row.state.is_terminal()).then_some(to_ms(now));
            ops.push(Op::LeaseState {
                id: row.id.clone(),
                state: row.state,
                revoked_ms: None,
                attempts: 0,
                next_attempt_ms: row.next_attempt_ms,
                last_error: row.last_error.clone(),
            });
        }
        let all_terminal = rows.iter().all(|l| l.state.is_terminal());
        let (state, ended) = if all_terminal {
            (TaskState::Ended, Some(to_ms(now)))
        } else {
            (TaskState::Ending, None)
        };
        ops.push(Op::TaskState {
            id: task.id.clone(),
            state,
            ended_ms: ended,
            end_reason: Some(end_reason::ISSUE_FAILED.into()),
        });
        ops.push(Op::Audit(Box::new(
            task_audit(task, event::TASK_ENDING, Outcome::Failure, now)
                .reason(end_reason::ISSUE_FAILED),
        )));
        if all_terminal {
            ops.push(Op::Audit(Box::new(
                task_audit(task, event::TASK_ENDED, Outcome::Failure, now)
                    .reason(end_reason::ISSUE_FAILED),
            )));
        }
        let err = first.unwrap_or_else(|| {
            BrokerError::new(ErrorKind::Internal, "issue_failed", "issue failed")
        });
        match self.journal.commit(ops).await {
            Ok(()) => self.track_ending(task, rows, handles, end_reason::ISSUE_FAILED, now),
            Err(e) => {
                tracing::error!(error = %e, task = %task.id, "could not journal a failed begin");
                self.abandon(task, rows, handles, now);
            }
        }
        err
    }

    /// Keeps in memory a task whose leases the revoker must settle, and wakes it.
    fn track_ending(
        &self,
        task: &TaskRow,
        rows: Vec<LeaseRow>,
        handles: HashMap<Text, RevocationHandle>,
        reason: &str,
        now: SystemTime,
    ) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if rows.iter().all(|l| l.state.is_terminal()) {
            state.tasks.remove(&task.id);
            return;
        }
        let Some(live) = state.tasks.get_mut(&task.id) else {
            return;
        };
        let mut row = task.clone();
        row.state = TaskState::Ending;
        row.end_reason = Some(reason.into());
        live.row = Arc::new(row);
        live.ending_journaled = true;
        let mut due = Vec::new();
        for lease in rows {
            if !lease.state.is_terminal() {
                due.push((
                    lease.next_attempt_ms.unwrap_or(to_ms(now)),
                    task.id.clone(),
                    lease.id.clone(),
                ));
            }
            if let Some(l) = live.lease_mut(&lease.id) {
                if l.handle.is_none() {
                    l.handle = handles.get(&lease.id).map(|h| Arc::new(duplicate(h)));
                }
                l.row = lease;
            }
        }
        state.retries.extend(due);
        drop(state);
        self.wake_revoker.notify_one();
    }

    /// The journal failed after providers answered: keep what we hold in memory and let the
    /// revoker settle it (its own commits are retried until the journal is back).
    fn abandon(
        &self,
        task: &TaskRow,
        rows: Vec<LeaseRow>,
        handles: HashMap<Text, RevocationHandle>,
        now: SystemTime,
    ) {
        let rows = rows
            .into_iter()
            .map(|mut l| {
                let held = handles.contains_key(&l.id);
                if held || !l.state.is_terminal() {
                    l.state = if held {
                        LeaseState::Revoking
                    } else {
                        LeaseState::Reconciling
                    };
                    l.next_attempt_ms = Some(to_ms(now));
                }
                l
            })
            .collect();
        self.track_ending(task, rows, handles, end_reason::ISSUE_FAILED, now);
    }
}

fn duplicate(h: &RevocationHandle) -> RevocationHandle {
    RevocationHandle {
        reference: h.reference.clone(),
        secret: h.secret.as_ref().map(SecretValue::duplicate),
    }
}
