//! Start-up: rebuild memory from the journal and resume whatever a crash interrupted.
//!
//! * `issuing` tasks were cut off mid-BeginTask: the workload never got an answer, so the task
//!   fails (`interrupted`). Leases still `pending` may or may not have been issued: they are
//!   reconciled; leases recorded `active` are revoked.
//! * `active` tasks continue; the reaper ends those that expired while the daemon was down.
//! * `ending` tasks continue their revocations, now.
//!
//! Rows are turned into live tasks as they are read, inside the read, so recovering 100,000
//! tasks holds only the live tasks themselves in memory (and takes well under a second).

use std::sync::Arc;
use std::time::SystemTime;

use credbroker_provider_api::RevocationHandle;

use super::Broker;
use super::live::{LiveLease, LiveTask, task_audit};
use crate::journal::read::{self, TaskView};
use crate::journal::rows::{LeaseState, TaskState, Text, end_reason};
use crate::journal::seal::Sealer;
use crate::journal::{JournalError, Op};
use crate::record::{AuditRecord, Outcome, event};
use crate::time::to_ms;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub active: usize,
    pub interrupted: usize,
    pub ending: usize,
}

/// What recovery builds while it reads.
struct Rebuild {
    sealer: Arc<Sealer>,
    now: SystemTime,
    now_ms: i64,
    ops: Vec<Op>,
    report: Recovery,
    tasks: Vec<LiveTask>,
    expiries: Vec<(i64, Text)>,
    retries: Vec<(i64, Text, Text)>,
    /// The provider timeout, in ms: how long a request the previous process sent may still be
    /// running at a backend.
    in_flight_ms: i64,
}

impl Broker {
    pub async fn recover(&self) -> Result<Recovery, JournalError> {
        let intern = Arc::clone(&self.intern);
        let now = self.clock.now();
        let rebuild = Rebuild {
            sealer: Arc::clone(&self.sealer),
            now,
            now_ms: to_ms(now),
            ops: Vec::new(),
            report: Recovery::default(),
            tasks: Vec::new(),
            expiries: Vec::new(),
            retries: Vec::new(),
            in_flight_ms: i64::try_from(self.runtime().config.broker.provider_timeout.as_millis())
                .unwrap_or(i64::MAX),
        };
        let mut rebuild = self
            .journal
            .read(move |c| {
                let mut rebuild = rebuild;
                read::for_each_live_task(c, &|s| intern.get(s), &mut |view| rebuild.take(view))?;
                Ok(rebuild)
            })
            .await?;

        if !rebuild.ops.is_empty() {
            self.journal
                .commit(std::mem::take(&mut rebuild.ops))
                .await?;
        }

        if let Ok(mut state) = self.live_state() {
            // (Refused only if poisoned, which `live_state` logs; the daemon then refuses
            // every request.)
            state.tasks.reserve(rebuild.tasks.len());
            for t in rebuild.tasks {
                state.tasks.insert(Arc::clone(&t.row.id), t);
            }
            state.expiries.extend(rebuild.expiries);
            state.retries.extend(rebuild.retries);
        }
        self.load_blocks().await?;
        self.load_clients().await?;
        let blocked = self.end_blocked_after_restart();
        if blocked > 0 {
            tracing::info!(
                tasks = blocked,
                "ending live tasks that blocks in force cover"
            );
        }
        self.wake_reaper.notify_one();
        self.wake_revoker.notify_one();
        Ok(rebuild.report)
    }
}

impl Broker {
    /// `daemon_started`, once the daemon can serve (sockets bound): a start that fails before
    /// that leaves no record claiming it started.
    pub async fn record_started(&self, r: &Recovery) -> Result<(), JournalError> {
        let rec = AuditRecord::new(event::DAEMON_STARTED, Outcome::Success, self.clock.now())
            .detail("version", env!("CARGO_PKG_VERSION"))
            .detail("active_tasks", r.active)
            .detail("interrupted_tasks", r.interrupted)
            .detail("ending_tasks", r.ending);
        self.journal.commit(vec![Op::Audit(Box::new(rec))]).await
    }
}

impl Rebuild {
    fn take(&mut self, view: TaskView) {
        let (now, now_ms) = (self.now, self.now_ms);
        let mut task = view.task;
        if task.state == TaskState::Issuing {
            task.state = TaskState::Ending;
            task.end_reason = Some(end_reason::INTERRUPTED.into());
            self.ops.push(Op::TaskState {
                id: Arc::clone(&task.id),
                state: TaskState::Ending,
                ended_ms: None,
                end_reason: task.end_reason.clone(),
            });
            self.ops.push(Op::Audit(Box::new(
                task_audit(&task, event::TASK_ENDING, Outcome::Failure, now)
                    .reason(end_reason::INTERRUPTED),
            )));
            self.report.interrupted += 1;
        } else if task.state == TaskState::Active {
            self.expiries.push((task.expires_ms, Arc::clone(&task.id)));
            self.report.active += 1;
        } else {
            self.report.ending += 1;
        }

        // A credential is issued only once its scope is journaled active: under a scope still
        // pending it was never attempted.
        let pending_scopes: Vec<Text> = view
            .leases
            .iter()
            .filter(|l| l.state == LeaseState::Pending)
            .map(|l| Arc::clone(&l.id))
            .collect();
        let mut leases = Vec::with_capacity(view.leases.len());
        for mut lease in view.leases {
            let handle = self.handle(&mut lease);
            let scope_pending = lease
                .parent
                .as_ref()
                .is_some_and(|p| pending_scopes.contains(p));
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
            // An intent whose outcome never reached the journal: the previous process may have
            // died with its request still running at the backend (OpenBao finishing a creds
            // read under the scope token). Settling it at once would race that request: a
            // scope revoked first can leave the credential created after it behind. So it is
            // settled once the request must have finished, a provider timeout after the intent.
            let in_flight = lease.state == LeaseState::Pending;
            let not_before = if in_flight {
                intent_ms(&lease.id)
                    .unwrap_or(now_ms)
                    .saturating_add(self.in_flight_ms)
                    .max(now_ms)
            } else {
                now_ms
            };
            if let Some(state) = wanted {
                lease.state = state;
                lease.next_attempt_ms = (!state.is_terminal()).then_some(not_before);
                self.ops.push(Op::LeaseState {
                    id: Arc::clone(&lease.id),
                    state,
                    revoked_ms: None,
                    attempts: lease.attempts,
                    next_attempt_ms: lease.next_attempt_ms,
                    last_error: lease.last_error.clone(),
                });
            }
            if matches!(lease.state, LeaseState::Revoking | LeaseState::Reconciling) {
                let when = lease.next_attempt_ms.unwrap_or(now_ms).min(not_before);
                self.retries
                    .push((when, Arc::clone(&task.id), Arc::clone(&lease.id)));
            }
            leases.push(LiveLease { row: lease, handle });
        }
        if task.state == TaskState::Ending && leases.iter().all(|l| l.row.state.is_terminal()) {
            self.ops.push(Op::TaskState {
                id: Arc::clone(&task.id),
                state: TaskState::Ended,
                ended_ms: Some(now_ms),
                end_reason: None,
            });
            self.ops.push(Op::Audit(Box::new(task_audit(
                &task,
                event::TASK_ENDED,
                Outcome::Success,
                now,
            ))));
            return;
        }
        // An `ending` task is journaled as such (an interrupted one by this very rebuild).
        let ending_journaled = task.state == TaskState::Ending;
        self.tasks.push(LiveTask {
            row: Arc::new(task),
            leases,
            op: Arc::new(tokio::sync::Mutex::new(())),
            ending_journaled,
        });
    }

    /// Opens a lease's sealed revocation handle.
    fn handle(&self, lease: &mut crate::journal::rows::LeaseRow) -> Option<Arc<RevocationHandle>> {
        match (&lease.reference, lease.sealed_handle.take()) {
            (Some(reference), Some(sealed)) => match self.sealer.open(&lease.id, &sealed) {
                Ok(secret) => Some(Arc::new(RevocationHandle {
                    reference: reference.to_string(),
                    secret: Some(secret),
                })),
                Err(e) => {
                    // Without its secret the handle cannot revoke; the provider may still find
                    // the credential by its lease id.
                    tracing::error!(lease = %lease.id, error = %e, "cannot open a revocation handle");
                    None
                }
            },
            (Some(reference), None) => Some(Arc::new(RevocationHandle {
                reference: reference.to_string(),
                secret: None,
            })),
            (None, _) => None,
        }
    }
}

/// When a lease's intent was written: lease ids are UUIDv7, whose first 48 bits are the Unix
/// time in milliseconds.
fn intent_ms(id: &str) -> Option<i64> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    i64::try_from(secs)
        .ok()?
        .checked_mul(1000)?
        .checked_add(i64::from(nanos / 1_000_000))
}

#[cfg(test)]
mod intent_tests {
    #[test]
    fn a_lease_ids_intent_time_is_read_from_its_uuid() {
        let now = crate::time::to_ms(std::time::SystemTime::now());
        let at = super::intent_ms(&super::super::new_id()).unwrap_or(0);
        assert!((now - 5..=now + 5).contains(&at), "{at} vs {now}");
        assert_eq!(super::intent_ms("not-a-uuid"), None);
    }
}
