//! Start-up: rebuild memory from the journal and resume whatever a crash interrupted.
//!
//! * `issuing` tasks were cut off mid-BeginTask: the workload never got an answer, so the task
//!   fails (`interrupted`). Leases still `pending` may or may not have been issued: they are
//!   reconciled; leases recorded `active` are revoked.
//! * `active` tasks continue; the reaper ends those that expired while the daemon was down.
//! * `ending` tasks continue their revocations, now.

use std::sync::Arc;

use credbroker_provider_api::RevocationHandle;

use super::Broker;
use super::live::{LiveLease, LiveTask, task_audit};
use crate::audit::{AuditRecord, Outcome, event};
use crate::journal::rows::{LeaseState, TaskState, end_reason};
use crate::journal::{JournalError, Op, read};
use crate::time::to_ms;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub active: usize,
    pub interrupted: usize,
    pub ending: usize,
}

impl Broker {
    pub async fn recover(&self) -> Result<Recovery, JournalError> {
        let intern = Arc::clone(&self.intern);
        let views = self
            .journal
            .read(move |c| read::live_tasks(c, &|s| intern.get(s)))
            .await?;
        let now = self.clock.now();
        let now_ms = to_ms(now);
        let mut ops = Vec::new();
        let mut report = Recovery::default();
        let mut live_tasks = Vec::new();
        let mut expiries = Vec::new();
        let mut retries = Vec::new();

        for view in views {
            let mut task = view.task;
            let interrupted = task.state == TaskState::Issuing;
            if interrupted {
                task.state = TaskState::Ending;
                task.end_reason = Some(end_reason::INTERRUPTED.into());
                ops.push(Op::TaskState {
                    id: task.id.clone(),
                    state: TaskState::Ending,
                    ended_ms: None,
                    end_reason: task.end_reason.clone(),
                });
                ops.push(Op::Audit(Box::new(
                    task_audit(&task, event::TASK_ENDING, Outcome::Failure, now)
                        .reason(end_reason::INTERRUPTED),
                )));
                report.interrupted += 1;
            } else if task.state == TaskState::Active {
                expiries.push((task.expires_ms, task.id.clone()));
                report.active += 1;
            } else {
                report.ending += 1;
            }

            let scope_states: std::collections::HashMap<crate::journal::rows::Text, LeaseState> =
                view.leases
                    .iter()
                    .map(|l| (l.id.clone(), l.state))
                    .collect();
            let mut leases = Vec::with_capacity(view.leases.len());
            for mut lease in view.leases {
                let handle = match (&lease.reference, lease.sealed_handle.take()) {
                    (Some(reference), Some(sealed)) => match self.sealer.open(&lease.id, &sealed) {
                        Ok(secret) => Some(Arc::new(RevocationHandle {
                            reference: reference.to_string(),
                            secret: Some(secret),
                        })),
                        Err(e) => {
                            // Without its secret the handle cannot revoke; the provider may still
                            // find the credential by its lease id.
                            tracing::error!(lease = %lease.id, error = %e, "cannot open a revocation handle");
                            None
                        }
                    },
                    (Some(reference), None) => Some(Arc::new(RevocationHandle {
                        reference: reference.to_string(),
                        secret: None,
                    })),
                    (None, _) => None,
                };
                // A credential is issued only once its scope is journaled active: under a scope
                // still pending it was never attempted.
                let scope_pending = lease
                    .parent
                    .as_ref()
                    .is_some_and(|p| scope_states.get(p) == Some(&LeaseState::Pending));
                let wanted = match (task.state, lease.state) {
                    (TaskState::Ending, LeaseState::Pending) if scope_pending => {
                        Some(LeaseState::Failed)
                    }
                    (TaskState::Ending, LeaseState::Pending) => Some(LeaseState::Reconciling),
                    (TaskState::Ending, LeaseState::Active) if handle.is_none() => {
                        Some(LeaseState::Reconciling)
                    }
                    (TaskState::Ending, LeaseState::Active) => Some(LeaseState::Revoking),
                    _ => None,
                };
                if let Some(state) = wanted {
                    lease.state = state;
                    lease.next_attempt_ms = (!state.is_terminal()).then_some(now_ms);
                    ops.push(Op::LeaseState {
                        id: lease.id.clone(),
                        state,
                        revoked_ms: None,
                        attempts: lease.attempts,
                        next_attempt_ms: lease.next_attempt_ms,
                        last_error: lease.last_error.clone(),
                    });
                }
                if matches!(lease.state, LeaseState::Revoking | LeaseState::Reconciling) {
                    retries.push((
                        lease.next_attempt_ms.unwrap_or(now_ms).min(now_ms),
                        task.id.clone(),
                        lease.id.clone(),
                    ));
                }
                leases.push(LiveLease { row: lease, handle });
            }
            if task.state == TaskState::Ending && leases.iter().all(|l| l.row.state.is_terminal()) {
                ops.push(Op::TaskState {
                    id: task.id.clone(),
                    state: TaskState::Ended,
                    ended_ms: Some(now_ms),
                    end_reason: None,
                });
                ops.push(Op::Audit(Box::new(task_audit(
                    &task,
                    event::TASK_ENDED,
                    Outcome::Success,
                    now,
                ))));
                continue;
            }
            live_tasks.push(LiveTask {
                row: Arc::new(task),
                leases,
                op: Arc::new(tokio::sync::Mutex::new(())),
            });
        }

        ops.push(Op::Audit(Box::new(
            AuditRecord::new(event::DAEMON_STARTED, Outcome::Success, now)
                .detail("version", env!("CARGO_PKG_VERSION"))
                .detail("active_tasks", report.active)
                .detail("interrupted_tasks", report.interrupted)
                .detail("ending_tasks", report.ending),
        )));
        self.journal.commit(ops).await?;

        if let Ok(mut state) = self.state.lock() {
            for t in live_tasks {
                state.tasks.insert(t.row.id.clone(), t);
            }
            state.expiries.extend(expiries);
            state.retries.extend(retries);
        }
        self.wake_reaper.notify_one();
        self.wake_revoker.notify_one();
        Ok(report)
    }
}
