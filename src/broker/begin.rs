//! BeginTask: validate, decide, write the intent, issue, record, answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker_provider_api::{
    Credential, ErrorKind as PKind, IssueRequest, Issued, ProviderError, SecretValue,
};
use futures_util::future::join_all;

use super::live::{LiveLease, LiveTask, TaskSummary, context, task_audit};
use super::{Broker, BrokerError, ErrorKind, new_id};
use crate::audit::{Outcome, event};
use crate::journal::Op;
use crate::journal::rows::{LeaseRow, LeaseState, TaskRow, TaskState, end_reason};
use crate::policy::{Ask, GrantAsk};
use crate::providers::Slot;
use crate::time::{rfc3339, to_ms};
use crate::workload::PeerInfo;

const MAX_TOOL_LEN: usize = 128;
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct BeginRequest {
    pub token: SecretValue,
    pub tool: String,
    pub grants: Vec<GrantAsk>,
    pub ttl: Option<Duration>,
}

/// One issued credential, secrets included: it goes to the workload and nowhere else.
pub struct IssuedCredential {
    pub lease_id: String,
    pub grant: String,
    pub provider: String,
    pub kind: String,
    pub expires_at: SystemTime,
    pub credential: Credential,
}

pub struct Begun {
    pub task: TaskSummary,
    pub credentials: Vec<IssuedCredential>,
}

/// Request checks that need nothing but the request. Bad input changes no state.
pub(crate) fn check_shape(
    tool: &str,
    grants: &[GrantAsk],
    ttl: Option<Duration>,
    max: usize,
) -> Result<(), BrokerError> {
    if tool.is_empty()
        || tool.len() > MAX_TOOL_LEN
        || !tool
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
    {
        return Err(BrokerError::invalid(
            "invalid_tool",
            "tool must be 1-128 characters of [A-Za-z0-9._:/-]",
        ));
    }
    if grants.is_empty() {
        return Err(BrokerError::invalid("no_grants", "name at least one grant"));
    }
    if grants.len() > max {
        return Err(BrokerError::invalid(
            "too_many_grants",
            format!("at most {max} grants per task"),
        ));
    }
    for (i, g) in grants.iter().enumerate() {
        if g.name.is_empty() || g.name.len() > 64 {
            return Err(BrokerError::invalid(
                "invalid_grant_name",
                "grant names are 1-64 characters",
            ));
        }
        if grants[..i].iter().any(|o| o.name == g.name) {
            return Err(BrokerError::invalid(
                "duplicate_grant",
                format!("grant {:?} is named twice", g.name),
            ));
        }
        for (key, values) in &g.narrow {
            if key.is_empty()
                || values.len() > 256
                || values.iter().any(|v| v.is_empty() || v.len() > 256)
            {
                return Err(BrokerError::invalid(
                    "invalid_narrowing",
                    format!("grant {:?}: narrowing of {key:?} is malformed", g.name),
                ));
            }
        }
    }
    if let Some(t) = ttl
        && (t.is_zero() || t > MAX_TTL)
    {
        return Err(BrokerError::invalid(
            "invalid_ttl",
            "ttl must be between 1 second and 24 hours",
        ));
    }
    Ok(())
}

impl Broker {
    pub async fn begin(&self, peer: &PeerInfo, req: BeginRequest) -> Result<Begun, BrokerError> {
        let now = self.clock.now();
        let rt = self.runtime();
        if req.token.expose().is_empty() {
            return Err(BrokerError::new(
                ErrorKind::Unauthenticated,
                "missing_token",
                "no access token was given",
            ));
        }
        check_shape(
            &req.tool,
            &req.grants,
            req.ttl,
            rt.config.broker.max_grants_per_task,
        )?;
        let workload = self.identify(&rt, peer, now).await?;
        let verified = self
            .authenticate(&rt, workload, peer, req.token.expose(), now)
            .await?;
        drop(req.token);
        let claims = &verified.claims;
        let task_id = new_id();

        let decision = match rt.policy.decide(&Ask {
            workload,
            claims,
            tool: &req.tool,
            grants: &req.grants,
            ttl: req.ttl,
            task_id: &task_id,
            now,
        }) {
            Ok(d) => d,
            Err(denial) => {
                let mut rec =
                    crate::audit::AuditRecord::new(event::REQUEST_DENIED, Outcome::Denied, now)
                        .reason(denial.code)
                        .detail("message", denial.message.clone());
                rec.peer = Some(peer.record());
                rec.workload = Some(workload.name.clone());
                rec.tool = Some(req.tool.clone());
                rec.grant = denial.grant.clone();
                rec.client_id = Some(claims.client_id.clone());
                rec.subject = Some(claims.subject.clone());
                rec.token_fingerprint = Some(verified.fingerprint.hex());
                rec.jti = Some(claims.jti.clone());
                self.audit_only(vec![rec]).await;
                return Err(denial.into());
            }
        };

        // === The intent: task and leases journaled before any provider is called. ===
        let task = Arc::new(TaskRow {
            id: task_id.clone(),
            state: TaskState::Issuing,
            workload: workload.name.clone(),
            tool: req.tool.clone(),
            issuer: claims.issuer.clone(),
            subject: claims.subject.clone(),
            client_id: claims.client_id.clone(),
            owner: decision.owner.id.clone(),
            owner_source: decision.owner.source.code().into(),
            actors: claims.actors.clone(),
            token_fp: verified.fingerprint.hex(),
            jti: claims.jti.clone(),
            scopes: claims.scopes.clone(),
            token_exp_ms: claims.expires_at.saturating_mul(1000),
            peer: peer.record(),
            created_ms: to_ms(now),
            expires_ms: to_ms(decision.expires_at),
            ended_ms: None,
            end_reason: None,
        });
        let mut slots = Vec::with_capacity(decision.grants.len());
        let mut leases = Vec::with_capacity(decision.grants.len());
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
            leases.push(LeaseRow {
                id: new_id(),
                task_id: task_id.clone(),
                grant: r.grant.name.clone(),
                provider: r.grant.provider.clone(),
                kind: slot.config.kind.clone(),
                state: LeaseState::Pending,
                params: r.params.clone(),
                wanted_exp_ms: to_ms(decision.expires_at),
                issued_ms: None,
                expires_ms: None,
                revoked_ms: None,
                reference: None,
                sealed_handle: None,
                renewable: false,
                attempts: 0,
                next_attempt_ms: None,
                last_error: None,
            });
            slots.push(slot);
        }
        let mut ops = vec![Op::InsertTask(Box::new((*task).clone()))];
        ops.extend(leases.iter().map(|l| Op::InsertLease(Box::new(l.clone()))));
        let accepted = task_audit(&task, event::TOKEN_ACCEPTED, Outcome::Success, now)
            .detail("scopes", claims.scopes.clone())
            .detail("audiences", claims.audiences.clone())
            .detail("token_expires_at", claims.expires_at)
            .detail("token_issued_at", claims.issued_at);
        ops.push(Op::Audit(Box::new(accepted)));
        let opened = task_audit(&task, event::TASK_OPENED, Outcome::Success, now)
            .detail(
                "grants",
                leases.iter().map(|l| l.grant.clone()).collect::<Vec<_>>(),
            )
            .detail(
                "lease_ids",
                leases.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
            )
            .detail("expires_at", rfc3339(decision.expires_at));
        ops.push(Op::Audit(Box::new(opened)));

        // Hold the task's lock from the moment it exists: an EndTask for it waits for issuing.
        let op = Arc::new(tokio::sync::Mutex::new(()));
        let _guard = Arc::clone(&op).lock_owned().await;
        self.journal
            .commit(ops)
            .await
            .map_err(|e| BrokerError::journal(&e))?;
        self.insert_live(LiveTask {
            row: Arc::clone(&task),
            leases: leases
                .iter()
                .map(|l| LiveLease {
                    row: l.clone(),
                    handle: None,
                })
                .collect(),
            op,
        });

        // === Issue every credential, concurrently. ===
        let ctx = context(&task);
        let timeout = rt.config.broker.provider_timeout;
        let results = join_all(leases.iter().zip(&slots).map(|(lease, slot)| {
            let ctx = &ctx;
            async move {
                let req = IssueRequest {
                    lease_id: &lease.id,
                    task: ctx,
                    grant: &lease.grant,
                    params: &lease.params,
                    expires_at: decision.expires_at,
                    now,
                };
                call_provider(slot, timeout, slot.provider.issue(&req)).await
            }
        }))
        .await;

        let done = self.clock.now();
        if results.iter().all(Result::is_ok) {
            self.finish_begin(task, leases, results, done).await
        } else {
            Err(self.fail_begin(task, leases, results, done).await)
        }
    }

    fn insert_live(&self, live: LiveTask) {
        if let Ok(mut state) = self.state.lock() {
            state.tasks.insert(live.row.id.clone(), live);
        }
    }

    /// Every lease issued: record them, activate the task, hand out the credentials.
    async fn finish_begin(
        &self,
        task: Arc<TaskRow>,
        mut leases: Vec<LeaseRow>,
        results: Vec<Result<Issued, ProviderError>>,
        now: SystemTime,
    ) -> Result<Begun, BrokerError> {
        let mut ops = Vec::new();
        let issued_all: Vec<Issued> = results.into_iter().flatten().collect();
        // Seal every secret handle first: one that cannot be sealed cannot be journaled, and a
        // credential whose handle is not durable must not be handed out.
        let mut sealed_all = Vec::with_capacity(issued_all.len());
        for (lease, i) in leases.iter().zip(&issued_all) {
            match i
                .handle
                .secret
                .as_ref()
                .map(|s| self.sealer.seal(&lease.id, s))
                .transpose()
            {
                Ok(s) => sealed_all.push(s),
                Err(e) => {
                    let handles = issued_all.into_iter().map(|i| Some(i.handle)).collect();
                    self.abandon(&task, &leases, handles, now);
                    return Err(BrokerError::new(
                        ErrorKind::Internal,
                        "seal_failed",
                        e.to_string(),
                    ));
                }
            }
        }
        let mut issued = Vec::new();
        for ((lease, i), sealed) in leases.iter_mut().zip(issued_all).zip(sealed_all) {
            lease.state = LeaseState::Active;
            lease.issued_ms = Some(to_ms(now));
            lease.expires_ms = Some(to_ms(i.expires_at));
            lease.reference = Some(i.handle.reference.clone());
            lease.renewable = i.renewable;
            ops.push(Op::LeaseIssued {
                id: lease.id.clone(),
                issued_ms: to_ms(now),
                expires_ms: to_ms(i.expires_at),
                reference: i.handle.reference.clone(),
                sealed_handle: sealed,
                renewable: i.renewable,
            });
            let mut rec = task_audit(&task, event::LEASE_ISSUED, Outcome::Success, now)
                .lease(&lease.id, &lease.grant, &lease.provider)
                .detail("reference", i.handle.reference.clone())
                .detail("expires_at", rfc3339(i.expires_at));
            if i.expires_at > crate::time::from_ms(lease.wanted_exp_ms) {
                // The provider has a floor (STS: 15 minutes): say how long it outlives the task.
                rec = rec.detail("residual_until", rfc3339(i.expires_at));
            }
            ops.push(Op::Audit(Box::new(rec)));
            issued.push(i);
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

        if let Err(e) = self.journal.commit(ops).await {
            // The credentials exist but are not recorded as issued. Their intents are durable,
            // so treat them as outcome-unknown: the revoker reconciles (and revokes) them, now
            // and again after a restart.
            let handles = issued.into_iter().map(|i| Some(i.handle)).collect();
            self.abandon(&task, &leases, handles, now);
            return Err(BrokerError::journal(&e));
        }

        let mut active = (*task).clone();
        active.state = TaskState::Active;
        let active = Arc::new(active);
        let mut credentials = Vec::with_capacity(issued.len());
        if let Ok(mut state) = self.state.lock() {
            if let Some(live) = state.tasks.get_mut(&task.id) {
                live.row = Arc::clone(&active);
                for (ll, (row, i)) in live.leases.iter_mut().zip(leases.iter().zip(&issued)) {
                    ll.row = row.clone();
                    ll.handle = Some(Arc::new(credbroker_provider_api::RevocationHandle {
                        reference: i.handle.reference.clone(),
                        secret: i.handle.secret.as_ref().map(SecretValue::duplicate),
                    }));
                }
            }
            state
                .expiries
                .insert((active.expires_ms, active.id.clone()));
        }
        self.wake_reaper.notify_one();
        for (row, i) in leases.iter().zip(issued) {
            credentials.push(IssuedCredential {
                lease_id: row.id.clone(),
                grant: row.grant.clone(),
                provider: row.provider.clone(),
                kind: row.kind.clone(),
                expires_at: i.expires_at,
                credential: i.credential,
            });
        }
        Ok(Begun {
            task: TaskSummary {
                task: (*active).clone(),
                leases,
            },
            credentials,
        })
    }

    /// Some lease failed: the task fails whole. What was issued is revoked, what is unknown is
    /// reconciled, and the caller hears about the first failure.
    async fn fail_begin(
        &self,
        task: Arc<TaskRow>,
        leases: Vec<LeaseRow>,
        results: Vec<Result<Issued, ProviderError>>,
        now: SystemTime,
    ) -> BrokerError {
        let mut first: Option<BrokerError> = None;
        let mut ops = Vec::new();
        let mut handles = Vec::new();
        let mut rows = Vec::new();
        for (mut lease, result) in leases.into_iter().zip(results) {
            match result {
                Ok(i) => {
                    // Issued, but the task is failing: journal it as issued, then revoking.
                    let sealed = i
                        .handle
                        .secret
                        .as_ref()
                        .and_then(|s| self.sealer.seal(&lease.id, s).ok());
                    ops.push(Op::LeaseIssued {
                        id: lease.id.clone(),
                        issued_ms: to_ms(now),
                        expires_ms: to_ms(i.expires_at),
                        reference: i.handle.reference.clone(),
                        sealed_handle: sealed,
                        renewable: i.renewable,
                    });
                    lease.issued_ms = Some(to_ms(now));
                    lease.expires_ms = Some(to_ms(i.expires_at));
                    lease.reference = Some(i.handle.reference.clone());
                    lease.state = LeaseState::Revoking;
                    handles.push(Some(i.handle));
                }
                Err(e) => {
                    let unknown = e.kind == PKind::OutcomeUnknown;
                    lease.state = if unknown {
                        LeaseState::Reconciling
                    } else {
                        LeaseState::Failed
                    };
                    lease.last_error = Some(e.to_string());
                    let rec = task_audit(&task, event::LEASE_ISSUE_FAILED, Outcome::Failure, now)
                        .lease(&lease.id, &lease.grant, &lease.provider)
                        .reason(e.kind.code())
                        .detail("error", e.message.clone());
                    ops.push(Op::Audit(Box::new(rec)));
                    if first.is_none() {
                        first = Some(BrokerError::provider(&e, &lease.grant, &lease.provider));
                    }
                    handles.push(None);
                }
            }
            let next = (!lease.state.is_terminal()).then_some(to_ms(now));
            lease.next_attempt_ms = next;
            ops.push(Op::LeaseState {
                id: lease.id.clone(),
                state: lease.state,
                revoked_ms: None,
                attempts: 0,
                next_attempt_ms: next,
                last_error: lease.last_error.clone(),
            });
            rows.push(lease);
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
            task_audit(&task, event::TASK_ENDING, Outcome::Failure, now)
                .reason(end_reason::ISSUE_FAILED),
        )));
        if all_terminal {
            ops.push(Op::Audit(Box::new(
                task_audit(&task, event::TASK_ENDED, Outcome::Failure, now)
                    .reason(end_reason::ISSUE_FAILED),
            )));
        }
        let err = first.unwrap_or_else(|| {
            BrokerError::new(ErrorKind::Internal, "issue_failed", "issue failed")
        });
        match self.journal.commit(ops).await {
            Ok(()) => self.track_ending(&task, rows, handles, end_reason::ISSUE_FAILED, now),
            Err(e) => {
                tracing::error!(error = %e, task = %task.id, "could not journal a failed begin");
                self.abandon(&task, &rows, handles, now);
            }
        }
        err
    }

    /// Keeps in memory a task whose leases the revoker must settle, and wakes it.
    fn track_ending(
        &self,
        task: &TaskRow,
        rows: Vec<LeaseRow>,
        handles: Vec<Option<credbroker_provider_api::RevocationHandle>>,
        reason: &str,
        now: SystemTime,
    ) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let all_terminal = rows.iter().all(|l| l.state.is_terminal());
        if all_terminal {
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
        let mut due = Vec::new();
        for (ll, (lease, handle)) in live.leases.iter_mut().zip(rows.into_iter().zip(handles)) {
            if !lease.state.is_terminal() {
                due.push((
                    lease.next_attempt_ms.unwrap_or(to_ms(now)),
                    task.id.clone(),
                    lease.id.clone(),
                ));
            }
            ll.row = lease;
            ll.handle = handle.map(Arc::new);
        }
        state.retries.extend(due);
        drop(state);
        self.wake_revoker.notify_one();
    }

    /// The journal failed after providers answered: keep whatever we hold in memory and let the
    /// revoker settle it (its own commits will be retried until the journal is back).
    fn abandon(
        &self,
        task: &TaskRow,
        leases: &[LeaseRow],
        handles: Vec<Option<credbroker_provider_api::RevocationHandle>>,
        now: SystemTime,
    ) {
        let rows = leases
            .iter()
            .zip(&handles)
            .map(|(l, h)| {
                let mut l = l.clone();
                if !l.state.is_terminal() || h.is_some() {
                    l.state = if h.is_some() {
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

/// Calls a provider within its concurrency limit and the configured timeout. A timeout after
/// the call started means the outcome is unknown.
pub(super) async fn call_provider<T>(
    slot: &Slot,
    timeout: Duration,
    call: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    let _permit = tokio::time::timeout(timeout, slot.limit.acquire())
        .await
        .map_err(|_| {
            ProviderError::new(
                PKind::Unavailable,
                "too many calls in flight to this provider",
            )
        })?
        .map_err(|_| ProviderError::new(PKind::Unavailable, "provider is shutting down"))?;
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(ProviderError::new(
            PKind::OutcomeUnknown,
            format!("no answer within {}s", timeout.as_secs_f64()),
        )),
    }
}
