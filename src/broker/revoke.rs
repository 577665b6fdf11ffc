//! Taking credentials back: one revocation (or reconciliation) attempt, recording its outcome,
//! and the durable retry queue.
//!
//! A failed revocation stays `revoking` in the journal with its attempt count and next attempt
//! time, and is retried with exponential backoff and jitter until the provider confirms, or the
//! credential has expired on its own; the audit log records every failed attempt and which of
//! the two ended it (invariant 4).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker_provider_api::{
    ErrorKind as PKind, IssueRequest, LeaseRef, Reconciled, RevocationHandle, Revoked, Role,
};

use super::begin::call_provider;
use super::live::{LiveTask, TaskSummary, context, task_audit};
use super::{Broker, Runtime};
use crate::audit::{AuditRecord, Outcome, event};
use crate::journal::rows::{LeaseRow, LeaseState, TaskRow, TaskState, Text, role_str};
use crate::journal::{JournalError, Op};
use crate::time::{from_ms, rfc3339, to_ms};

/// How long after its wanted expiry a lease of unknown outcome is still chased. Covers provider
/// floors (STS issues at least 15 minutes) with a wide margin.
const RECONCILE_GRACE: Duration = Duration::from_secs(3600);
/// How far the provider's clock may be ahead of ours.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The result of one attempt on one lease.
pub(super) struct Attempt {
    pub(super) lease_id: Text,
    pub(super) state: LeaseState,
    pub(super) revoked_ms: Option<i64>,
    pub(super) expires_ms: Option<i64>,
    pub(super) attempts: u32,
    pub(super) next_attempt_ms: Option<i64>,
    pub(super) last_error: Option<String>,
    /// None for "not yet": a scope waiting for its credentials.
    pub(super) audit: Option<AuditRecord>,
}

/// A lease to revoke or reconcile, with what that needs.
pub(super) struct Target {
    pub(super) lease: LeaseRow,
    pub(super) handle: Option<Arc<RevocationHandle>>,
    /// The task's scope, for a credential of a scoped provider.
    pub(super) scope: Option<Arc<RevocationHandle>>,
}

impl Broker {
    /// One attempt to revoke (`revoking`) or reconcile (`reconciling`) a lease.
    pub(super) async fn attempt(
        &self,
        rt: &Runtime,
        task: &TaskRow,
        target: &Target,
        timeout: Duration,
        now: SystemTime,
    ) -> Attempt {
        let lease = &target.lease;
        let handle = target.handle.as_deref();
        let scope = target.scope.as_deref();
        let base = |state, ev: &str, outcome| Attempt {
            lease_id: lease.id.clone(),
            state,
            revoked_ms: None,
            expires_ms: None,
            attempts: lease.attempts,
            next_attempt_ms: None,
            last_error: None,
            audit: Some(
                task_audit(task, ev, outcome, now)
                    .lease(&lease.id, &lease.grant, &lease.provider)
                    .detail("role", role_str(lease.role)),
            ),
        };
        let now_ms = to_ms(now);
        let reconciling = lease.state == LeaseState::Reconciling || handle.is_none();
        let deadline = if reconciling {
            lease
                .wanted_exp_ms
                .saturating_add(RECONCILE_GRACE.as_millis() as i64)
        } else {
            lease
                .expires_ms
                .unwrap_or(lease.wanted_exp_ms)
                .saturating_add(CLOCK_SKEW.as_millis() as i64)
        };
        // The provider is always asked at least once, even at or after expiry: its clock, not
        // ours, decides when the credential stops working. Retries stop once it has surely
        // stopped working on its own, and the audit log says that is how it ended.
        if lease.attempts > 0 && now_ms >= deadline {
            let mut a = base(
                LeaseState::Expired,
                event::LEASE_EXPIRED_UNREVOKED,
                Outcome::Failure,
            );
            a = a.note(|r| {
                r.reason("revocation_abandoned")
                    .detail("attempts", lease.attempts)
            });
            if reconciling {
                a = a.note(|r| r.detail("outcome_unknown", true));
            }
            return a;
        }
        let Some(slot) = rt.providers.get(&lease.provider) else {
            return self.failed(
                base,
                lease,
                "provider_missing",
                "the provider instance is not loaded",
                None,
                now,
            );
        };
        let rt_timeout = timeout.min(rt.config.broker.provider_timeout);
        if reconciling {
            let ctx = context(task);
            let req = IssueRequest {
                lease_id: &lease.id,
                role: lease.role,
                task: &ctx,
                scope,
                grant: &lease.grant,
                params: &lease.params,
                expires_at: from_ms(lease.wanted_exp_ms),
                now,
            };
            return match call_provider(slot, rt_timeout, slot.provider.reconcile(&req, now)).await {
                Ok(Reconciled::NothingIssued) => {
                    let a = base(
                        LeaseState::Failed,
                        event::LEASE_RECONCILED,
                        Outcome::Success,
                    );
                    a.note(|r| r.reason("nothing_issued"))
                }
                Ok(Reconciled::Revoked) => {
                    let a = base(
                        LeaseState::Revoked,
                        event::LEASE_RECONCILED,
                        Outcome::Success,
                    );
                    Attempt {
                        revoked_ms: Some(now_ms),
                        ..a.note(|r| r.reason("revoked"))
                    }
                }
                Ok(Reconciled::WillExpire { at }) => self.lapsing(base, at),
                Ok(Reconciled::CutOff { issued_before }) => {
                    let a = base(
                        LeaseState::Revoked,
                        event::LEASE_RECONCILED,
                        Outcome::Success,
                    );
                    Attempt {
                        revoked_ms: Some(now_ms),
                        ..a.note(|r| cut_off(r.reason("revoked"), issued_before))
                    }
                }
                Err(e) => self.failed(base, lease, e.kind.code(), &e.message, e.retry_after, now),
            };
        }
        let params = &lease.params;
        let Some(handle) = handle else {
            return self.failed(
                base,
                lease,
                "handle_missing",
                "no revocation handle",
                None,
                now,
            );
        };
        let lease_ref = LeaseRef {
            lease_id: &lease.id,
            role: lease.role,
            scope,
            grant: &lease.grant,
            params,
            handle,
            expires_at: from_ms(lease.expires_ms.unwrap_or(lease.wanted_exp_ms)),
        };
        match call_provider(slot, rt_timeout, slot.provider.revoke(&lease_ref, now)).await {
            Ok(Revoked::Revoked) => {
                let a = base(LeaseState::Revoked, event::LEASE_REVOKED, Outcome::Success);
                Attempt {
                    revoked_ms: Some(now_ms),
                    ..a.note(|r| r.detail("confirmed", true))
                }
            }
            Ok(Revoked::AlreadyGone) => {
                let a = base(LeaseState::Revoked, event::LEASE_REVOKED, Outcome::Success);
                Attempt {
                    revoked_ms: Some(now_ms),
                    ..a.note(|r| r.detail("already_gone", true))
                }
            }
            Err(e) if e.kind == PKind::NotFound => {
                let a = base(LeaseState::Revoked, event::LEASE_REVOKED, Outcome::Success);
                Attempt {
                    revoked_ms: Some(now_ms),
                    ..a.note(|r| r.detail("already_gone", true))
                }
            }
            Ok(Revoked::WillExpire { at }) => self.lapsing(base, at),
            Ok(Revoked::CutOff { issued_before }) => {
                let a = base(LeaseState::Revoked, event::LEASE_REVOKED, Outcome::Success);
                Attempt {
                    revoked_ms: Some(now_ms),
                    ..a.note(|r| cut_off(r.detail("confirmed", true), issued_before))
                }
            }
            Err(e) => self.failed(base, lease, e.kind.code(), &e.message, e.retry_after, now),
        }
    }

    fn lapsing(
        &self,
        base: impl Fn(LeaseState, &str, Outcome) -> Attempt,
        at: SystemTime,
    ) -> Attempt {
        let a = base(
            LeaseState::Expiring,
            event::LEASE_EXPIRED_UNREVOKED,
            Outcome::Success,
        );
        Attempt {
            expires_ms: Some(to_ms(at)),
            ..a.note(|r| {
                r.reason("provider_cannot_revoke")
                    .detail("residual_until", rfc3339(at))
            })
        }
    }

    fn failed(
        &self,
        base: impl Fn(LeaseState, &str, Outcome) -> Attempt,
        lease: &LeaseRow,
        code: &str,
        message: &str,
        retry_after: Option<Duration>,
        now: SystemTime,
    ) -> Attempt {
        let attempts = lease.attempts.saturating_add(1);
        let next = to_ms(now + self.backoff(attempts).max(retry_after.unwrap_or_default()));
        let state = match lease.state {
            LeaseState::Reconciling | LeaseState::Pending => LeaseState::Reconciling,
            _ => LeaseState::Revoking,
        };
        let a = base(state, event::LEASE_REVOCATION_FAILED, Outcome::Failure);
        Attempt {
            attempts,
            next_attempt_ms: Some(next),
            last_error: Some(format!("{code}: {message}")),
            ..a.note(|r| {
                r.reason(code)
                    .detail("error", message.to_string())
                    .detail("attempt", attempts)
                    .detail("next_attempt_at", rfc3339(from_ms(next)))
            })
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let settings = &self.runtime().config.broker;
        backoff(
            attempt,
            settings.revoke_backoff_initial,
            settings.revoke_backoff_max,
        )
    }

    /// A scope not yet revocable (some credential under it is still being revoked): look again
    /// shortly, without calling the provider or writing an audit record.
    pub(super) fn scope_waits(&self, lease: &LeaseRow, now: SystemTime) -> Attempt {
        Attempt {
            lease_id: lease.id.clone(),
            state: LeaseState::Revoking,
            revoked_ms: None,
            expires_ms: None,
            attempts: lease.attempts,
            next_attempt_ms: Some(to_ms(now + self.backoff(1))),
            last_error: lease.last_error.clone(),
            audit: None,
        }
    }

    /// Records attempts on one task's leases (plus `ops` before them), ends the task if every
    /// lease is now terminal, and updates memory. One commit.
    ///
    /// A scope that reached a terminal state takes the credentials still unsettled under it
    /// along: revoking a Vault child token revokes every lease created with it, including any
    /// whose id never reached the journal.
    pub(super) async fn settle(
        &self,
        task_id: &str,
        mut attempts: Vec<Attempt>,
        ending: Option<AuditRecord>,
        end_reason: Option<&str>,
        now: SystemTime,
    ) -> Result<Option<TaskSummary>, JournalError> {
        let (task_row, all_terminal, ending_journaled) = {
            let Ok(state) = self.state.lock() else {
                return Err(JournalError::Closed);
            };
            let Some(live) = state.tasks.get(task_id) else {
                return Ok(None);
            };
            let mut covered = Vec::new();
            for a in attempts.iter().filter(|a| a.state.is_terminal()) {
                let is_scope = live
                    .leases
                    .iter()
                    .any(|l| l.row.id == a.lease_id && l.row.role == Role::Scope);
                if !is_scope {
                    continue;
                }
                for child in live.leases.iter().filter(|l| {
                    l.row.parent.as_deref() == Some(&a.lease_id)
                        && !l.row.state.is_terminal()
                        && !attempts.iter().any(|x| x.lease_id == l.row.id)
                }) {
                    covered.push(with_scope(&live.row, &child.row, a, now));
                }
            }
            attempts.extend(covered);
            let all = live.leases.iter().all(|l| {
                attempts
                    .iter()
                    .find(|a| a.lease_id == l.row.id)
                    .map_or(l.row.state.is_terminal(), |a| a.state.is_terminal())
            });
            (Arc::clone(&live.row), all, live.ending_journaled)
        };
        let mut ops = Vec::with_capacity(attempts.len() * 2 + 3);
        // A task that ends in this very commit gets one `task_ended` record (carrying the
        // reason and any operator detail); `task_ending` is written only when it stays ending.
        let mut ending = ending;
        if !all_terminal && let Some(rec) = ending.take() {
            ops.push(Op::Audit(Box::new(rec)));
        }
        for a in &mut attempts {
            ops.push(Op::LeaseState {
                id: a.lease_id.clone(),
                state: a.state,
                revoked_ms: a.revoked_ms,
                attempts: a.attempts,
                next_attempt_ms: a.next_attempt_ms,
                last_error: a.last_error.clone(),
            });
            if let Some(exp) = a.expires_ms {
                ops.push(Op::LeaseExpiry {
                    id: a.lease_id.clone(),
                    expires_ms: exp,
                });
            }
            if let Some(rec) = a.audit.take() {
                ops.push(Op::Audit(Box::new(rec)));
            }
        }
        let reason: Option<Text> = end_reason
            .map(Text::from)
            .or_else(|| task_row.end_reason.clone());
        if all_terminal {
            ops.push(Op::TaskState {
                id: task_id.into(),
                state: TaskState::Ended,
                ended_ms: Some(to_ms(now)),
                end_reason: reason.clone(),
            });
            let mut rec = match ending {
                Some(mut e) => {
                    e.event = event::TASK_ENDED.into();
                    e
                }
                None => task_audit(&task_row, event::TASK_ENDED, Outcome::Success, now),
            };
            rec.reason = reason.as_deref().map(str::to_owned);
            ops.push(Op::Audit(Box::new(rec)));
        } else if !ending_journaled {
            // Memory already says `ending` (EndTask marked it before revoking); the journal
            // must say so too, or a GetTask reads `active` and a restart re-arms the task.
            ops.push(Op::TaskState {
                id: task_id.into(),
                state: TaskState::Ending,
                ended_ms: None,
                end_reason: reason.clone(),
            });
        }
        self.journal.commit(ops).await?;

        let Ok(mut state) = self.state.lock() else {
            return Err(JournalError::Closed);
        };
        let Some(live) = state.tasks.get_mut(task_id) else {
            return Ok(None);
        };
        let mut row = (*live.row).clone();
        row.state = if all_terminal {
            TaskState::Ended
        } else {
            TaskState::Ending
        };
        row.end_reason = reason;
        if all_terminal {
            row.ended_ms = Some(to_ms(now));
        }
        live.row = Arc::new(row);
        live.ending_journaled = true;
        let mut retries = Vec::new();
        for a in attempts {
            if let Some(l) = live.lease_mut(&a.lease_id) {
                l.row.state = a.state;
                l.row.attempts = a.attempts;
                l.row.next_attempt_ms = a.next_attempt_ms;
                l.row.last_error = a.last_error;
                l.row.revoked_ms = a.revoked_ms.or(l.row.revoked_ms);
                l.row.expires_ms = a.expires_ms.or(l.row.expires_ms);
                if a.state.is_terminal() {
                    l.handle = None;
                } else if let Some(next) = a.next_attempt_ms {
                    retries.push((next, Arc::clone(&live.row.id), a.lease_id));
                }
            }
        }
        let summary = live.summary();
        if all_terminal {
            state.tasks.remove(task_id);
        }
        state.retries.extend(retries);
        drop(state);
        self.wake_revoker.notify_one();
        Ok(Some(summary))
    }

    /// Works the retry queue until the process ends.
    pub(super) async fn revoker_loop(self: Arc<Self>) {
        loop {
            let now_ms = to_ms(self.clock.now());
            let (due, next) = {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                let later = state
                    .retries
                    .split_off(&(now_ms + 1, Text::from(""), Text::from("")));
                let due = std::mem::replace(&mut state.retries, later);
                (due, state.retries.first().map(|(t, _, _)| *t))
            };
            for (_, task_id, lease_id) in due {
                let me = Arc::clone(&self);
                tokio::spawn(async move { me.retry_lease(&task_id, &lease_id).await });
            }
            let wait = next.map_or(Duration::from_secs(5), |t| {
                Duration::from_millis((t - now_ms).clamp(1, 5000) as u64)
            });
            tokio::select! {
                () = self.wake_revoker.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn retry_lease(&self, task_id: &str, lease_id: &str) {
        let Some(op) = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.tasks.get(task_id).map(|t| Arc::clone(&t.op)))
        else {
            return;
        };
        let _guard = op.lock_owned().await;
        let now = self.clock.now();
        let picked = {
            let Ok(state) = self.state.lock() else { return };
            state.tasks.get(task_id).and_then(|t| {
                let l = t.leases.iter().find(|l| *l.row.id == *lease_id)?;
                if !matches!(l.row.state, LeaseState::Revoking | LeaseState::Reconciling) {
                    return None;
                }
                if covered_by_scope(t, &l.row) {
                    // Its scope takes it back (see `settle`); nothing to ask the provider.
                    return None;
                }
                let target = Target {
                    lease: l.row.clone(),
                    handle: l.handle.clone(),
                    scope: scope_handle(t, &l.row),
                };
                Some((Arc::clone(&t.row), target, scope_ready(t, &l.row)))
            })
        };
        let Some((task, target, ready)) = picked else {
            return;
        };
        let rt = self.runtime();
        let a = if ready {
            self.attempt(&rt, &task, &target, rt.config.broker.provider_timeout, now)
                .await
        } else {
            self.scope_waits(&target.lease, now)
        };
        if let Err(e) = self.settle(task_id, vec![a], None, None, now).await {
            tracing::error!(error = %e, lease = lease_id, "could not record a revocation attempt; retrying");
            if let Ok(mut state) = self.state.lock() {
                let next = to_ms(now + rt.config.broker.revoke_backoff_initial);
                state
                    .retries
                    .insert((next, Text::from(task_id), Text::from(lease_id)));
            }
        }
    }
}

impl Attempt {
    fn note(mut self, f: impl FnOnce(AuditRecord) -> AuditRecord) -> Self {
        self.audit = self.audit.map(f);
        self
    }
}

/// A credential whose outcome is unknown, under a scope that will be revoked: the scope settles it.
pub(super) fn covered_by_scope(task: &LiveTask, lease: &LeaseRow) -> bool {
    lease.role == Role::Credential
        && lease.parent.is_some()
        && (lease.state == LeaseState::Reconciling
            || !task
                .leases
                .iter()
                .any(|l| l.row.id == lease.id && l.handle.is_some()))
}

/// A scope may be revoked once nothing under it still needs its own revocation.
pub(super) fn scope_ready(task: &LiveTask, lease: &LeaseRow) -> bool {
    lease.role != Role::Scope
        || task
            .leases
            .iter()
            .filter(|l| l.row.parent.as_deref() == Some(&lease.id))
            .all(|l| l.row.state.is_terminal() || covered_by_scope(task, &l.row))
}

pub(super) fn scope_handle(task: &LiveTask, lease: &LeaseRow) -> Option<Arc<RevocationHandle>> {
    let parent = lease.parent.as_deref()?;
    task.leases
        .iter()
        .find(|l| *l.row.id == *parent)
        .and_then(|l| l.handle.clone())
}

/// The attempt recording that a credential went with its scope.
fn with_scope(task: &TaskRow, child: &LeaseRow, scope: &Attempt, now: SystemTime) -> Attempt {
    let (ev, reason) = match scope.state {
        LeaseState::Revoked => (event::LEASE_REVOKED, "revoked_with_scope"),
        LeaseState::Expiring => (event::LEASE_EXPIRED_UNREVOKED, "expires_with_scope"),
        _ => (event::LEASE_EXPIRED_UNREVOKED, "scope_abandoned"),
    };
    Attempt {
        lease_id: child.id.clone(),
        state: scope.state,
        revoked_ms: scope.revoked_ms,
        expires_ms: scope.expires_ms,
        attempts: child.attempts,
        next_attempt_ms: None,
        last_error: None,
        audit: Some(
            task_audit(task, ev, Outcome::Success, now)
                .lease(&child.id, &child.grant, &child.provider)
                .reason(reason)
                .detail("scope", scope.lease_id.to_string()),
        ),
    }
}

/// Exponential backoff with jitter: attempt n waits a random time in [d/2, d], where
/// d = initial · 2^(n-1), capped at `max`. Jitter keeps a fleet of retries from marching in step
/// against a provider that is just coming back.
pub(super) fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    exp.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// The audit details of a [`Revoked::CutOff`]: the provider could not take back this credential
/// alone and took back every credential of its kind issued before `issued_before`, which may
/// include other tasks' credentials. Said plainly, so nobody mistakes it for a precise revoke.
fn cut_off(record: AuditRecord, issued_before: SystemTime) -> AuditRecord {
    record
        .detail("fallback", "issued_before_cutoff")
        .detail("issued_before", rfc3339(issued_before))
        .detail(
            "note",
            "the provider could not deny this credential alone; every credential it issued \
             for the same target before this instant was cut off, including other tasks'",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..100 {
            let b1 = backoff(1, i, m);
            assert!(b1 >= Duration::from_millis(500) && b1 <= i);
            let b4 = backoff(4, i, m);
            assert!(b4 >= Duration::from_secs(4) && b4 <= Duration::from_secs(8));
            let b30 = backoff(30, i, m);
            assert!(b30 >= Duration::from_secs(30) && b30 <= m);
        }
    }
}
