//! A BeginTask that failed part-way: the task fails whole. Issued leases are revoked, unknown
//! ones reconciled, leases never attempted are failed, and the revoker is handed what is left.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use credbroker_provider_api::{ErrorKind as PKind, RevocationHandle, Role, SecretValue};

use super::issue::Outcomes;
use super::live::task_audit;
use super::{Broker, BrokerError, ErrorKind};
use crate::journal::Op;
use crate::journal::rows::{LeaseRow, LeaseState, TaskRow, TaskState, Text, end_reason, role_str};
use crate::record::{Outcome, Reason, event, reason};
use crate::time::to_ms;

impl Broker {
    pub(super) async fn fail_with(
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
    pub(super) async fn fail_begin(
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
                    let sealed = match i
                        .handle
                        .secret
                        .as_ref()
                        .map(|s| self.sealer.seal(&row.id, s))
                    {
                        Some(Ok(sealed)) => Some(sealed),
                        None => None,
                        // The revoker still holds the handle in memory; only a restart before it
                        // revokes would lose it. Say so, never drop it silently.
                        Some(Err(e)) => {
                            tracing::error!(task = %task.id, lease = %row.id, error = %e,
                                "an issued handle could not be sealed; it is revoked from memory");
                            ops.push(Op::Audit(Box::new(
                                task_audit(task, event::LEASE_ISSUED, Outcome::Failure, now)
                                    .lease(&row.id, &row.grant, &row.provider)
                                    .detail("role", role_str(row.role))
                                    .reason(reason::SEAL_FAILED)
                                    .detail("error", e.to_string()),
                            )));
                            None
                        }
                    };
                    ops.push(super::issue::issued_op(&row.id, &i, now, sealed));
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
                            .reason(reason::provider(e.kind))
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
    pub(super) fn track_ending(
        &self,
        task: &TaskRow,
        rows: Vec<LeaseRow>,
        handles: HashMap<Text, RevocationHandle>,
        reason: Reason,
        now: SystemTime,
    ) {
        let Ok(mut state) = self.live_state() else {
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
    pub(super) fn abandon(
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

pub(super) fn duplicate(h: &RevocationHandle) -> RevocationHandle {
    RevocationHandle {
        reference: h.reference.clone(),
        secret: h.secret.as_ref().map(SecretValue::duplicate),
    }
}
