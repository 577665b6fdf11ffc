//! Recording revocation attempts: one commit per task for its leases' new states, the task's
//! end when every lease is settled, and the credentials a settled scope takes along.

use std::sync::Arc;
use std::time::SystemTime;

use credbroker_provider_api::{RevocationHandle, Role};

use super::Broker;
use super::live::{LiveTask, TaskSummary, task_audit};
use super::revoke::Attempt;
use crate::journal::rows::{LeaseRow, LeaseState, TaskRow, TaskState, Text};
use crate::journal::{JournalError, Op};
use crate::record::{AuditRecord, Outcome, Reason, event, reason};
use crate::time::to_ms;

impl Broker {
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
        end_reason: Option<Reason>,
        now: SystemTime,
    ) -> Result<Option<TaskSummary>, JournalError> {
        let (task_row, all_terminal, ending_journaled) = {
            let Ok(state) = self.live_state() else {
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

        let Ok(mut state) = self.live_state() else {
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
        LeaseState::Revoked => (event::LEASE_REVOKED, reason::REVOKED_WITH_SCOPE),
        LeaseState::Expiring => (event::LEASE_EXPIRED_UNREVOKED, reason::EXPIRES_WITH_SCOPE),
        _ => (event::LEASE_EXPIRED_UNREVOKED, reason::SCOPE_ABANDONED),
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
