//! Ending tasks: by the workload (EndTask), by time (the reaper), by an operator.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use super::live::{TaskSummary, task_audit};
use super::revoke::{Attempt, Target};
use super::settle::scope_handle;
use super::{Broker, BrokerError, ErrorKind};
use crate::journal::read;
use crate::journal::rows::{LeaseState, TaskRow, TaskState, Text, end_reason};
use crate::record::{Outcome, PeerRecord, Reason, event};
use crate::time::to_ms;
use crate::workload::PeerInfo;
use credbroker_provider_api::Role;

enum Marked {
    Gone,
    AlreadyEnding(Box<TaskSummary>),
    Ending(Arc<TaskRow>, Vec<Target>, Reason),
}

/// Who is ending a task.
#[derive(Clone, Debug)]
pub enum Ender {
    /// The workload that began it (EndTask). Only that workload may end it.
    Workload { workload: String },
    /// The same workload retrying a BeginTask whose answer it lost (`broker::replay`).
    Replay { workload: String },
    /// The reaper, at the task's expiry.
    Reaper,
    /// An operator, over the admin socket.
    Operator { peer: PeerRecord, reason: String },
    /// A block covering the task (placed by an operator, a detector or a signal).
    Blocked { block_id: String, source: String },
    /// `recheck_active` found its token revoked at the authorization server.
    TokenInactive,
    /// Its client was suspended or retired in the registry.
    Client {
        status: crate::config::clients::ClientStatus,
    },
}

impl Broker {
    /// EndTask from a workload: the peer is identified exactly as for BeginTask (an unknown
    /// peer is audited, an ambiguous one is reported as ambiguous), then only the task's own
    /// workload may end it.
    pub async fn end_by_workload(
        &self,
        peer: &PeerInfo,
        task_id: &str,
    ) -> Result<TaskSummary, BrokerError> {
        let rt = self.runtime();
        let workload = self.identify(&rt, peer, self.clock.now()).await?;
        let ender = Ender::Workload {
            workload: workload.name.clone(),
        };
        self.end_task(task_id, ender).await
    }

    pub async fn end_task(&self, task_id: &str, ender: Ender) -> Result<TaskSummary, BrokerError> {
        let op = self
            .live_state()?
            .tasks
            .get(task_id)
            .map(|t| Arc::clone(&t.op));
        let Some(op) = op else {
            return self.ended_view(task_id, &ender).await;
        };
        let _guard = op.lock_owned().await;

        let now = self.clock.now();
        let picked = self.mark_ending(task_id, &ender)?;
        let (task, targets, reason) = match picked {
            Marked::Gone => return self.ended_view(task_id, &ender).await,
            Marked::AlreadyEnding(summary) => return Ok(*summary),
            Marked::Ending(task, targets, reason) => (task, targets, reason),
        };

        let rt = self.runtime();
        let wait = match ender {
            Ender::Reaper => rt.config.broker.provider_timeout,
            _ => rt.config.broker.end_task_wait,
        };
        // Credentials first; a scope only once everything under it is settled.
        let (scopes, creds): (Vec<&Target>, Vec<&Target>) =
            targets.iter().partition(|t| t.lease.role == Role::Scope);
        let mut attempts =
            join_all(creds.iter().map(|t| self.attempt(&rt, &task, t, wait, now))).await;
        let blocked = |scope: &Target, attempts: &[Attempt]| {
            creds.iter().any(|c| {
                c.lease.parent.as_deref() == Some(&scope.lease.id)
                    && attempts
                        .iter()
                        .any(|a| a.lease_id == c.lease.id && !a.state.is_terminal())
            })
        };
        let (waiting, ready): (Vec<&Target>, Vec<&Target>) =
            scopes.into_iter().partition(|s| blocked(s, &attempts));
        attempts.extend(waiting.iter().map(|s| self.scope_waits(&s.lease, now)));
        attempts
            .extend(join_all(ready.iter().map(|t| self.attempt(&rt, &task, t, wait, now))).await);

        let mut ending =
            task_audit(&task, event::TASK_ENDING, Outcome::Success, now).reason(reason);
        if let Ender::Operator { peer, reason: why } = &ender {
            ending.detail.insert(
                "operator".into(),
                serde_json::to_value(peer).unwrap_or_default(),
            );
            ending
                .detail
                .insert("operator_reason".into(), why.clone().into());
        }
        if let Ender::Blocked { block_id, source } = &ender {
            ending = ending
                .detail("block_id", block_id.clone())
                .detail("block_source", source.clone());
        }
        match self
            .settle(task_id, attempts, Some(ending), Some(reason), now)
            .await
        {
            Ok(Some(summary)) => Ok(summary),
            Ok(None) => self.ended_view(task_id, &ender).await,
            Err(e) => {
                // Nothing was recorded: the leases stay `revoking` in memory and the revoker
                // tries again (revocation is idempotent), committing when the journal is back.
                if let Ok(mut state) = self.live_state() {
                    let next = to_ms(now + Duration::from_secs(1));
                    for t in &targets {
                        state
                            .retries
                            .insert((next, Text::from(task_id), t.lease.id.clone()));
                    }
                }
                Err(BrokerError::journal(&e))
            }
        }
    }

    /// Moves a live, active task to `ending` in memory and picks the leases to revoke.
    fn mark_ending(&self, task_id: &str, ender: &Ender) -> Result<Marked, BrokerError> {
        let mut state = self.live_state()?;
        let Some(live) = state.tasks.get_mut(task_id) else {
            return Ok(Marked::Gone);
        };
        check_owner(ender, &live.row.workload)?;
        if live.row.state != TaskState::Active {
            // Already ending (or the reaper got there first): ending is idempotent.
            return Ok(Marked::AlreadyEnding(Box::new(live.summary())));
        }
        let reason = match ender {
            Ender::Workload { .. } => end_reason::BY_WORKLOAD,
            Ender::Replay { .. } => end_reason::BEGIN_REPLAYED,
            Ender::Operator { .. } => end_reason::BY_OPERATOR,
            Ender::Blocked { .. } => end_reason::BY_BLOCK,
            Ender::TokenInactive => end_reason::TOKEN_INACTIVE,
            Ender::Client { status } => match status {
                crate::config::clients::ClientStatus::Retired => end_reason::CLIENT_RETIRED,
                _ => end_reason::CLIENT_SUSPENDED,
            },
            Ender::Reaper if live.row.expires_ms >= live.row.token_exp_ms => {
                end_reason::TOKEN_EXPIRED
            }
            Ender::Reaper => end_reason::EXPIRED,
        };
        let mut row = (*live.row).clone();
        row.state = TaskState::Ending;
        row.end_reason = Some(reason.into());
        let expiry = (live.row.expires_ms, live.row.id.clone());
        live.row = Arc::new(row);
        for l in live
            .leases
            .iter_mut()
            .filter(|l| l.row.state == LeaseState::Active)
        {
            l.row.state = LeaseState::Revoking;
        }
        let targets: Vec<Target> = live
            .leases
            .iter()
            .filter(|l| l.row.state == LeaseState::Revoking && l.row.revoked_ms.is_none())
            .map(|l| Target {
                lease: l.row.clone(),
                handle: l.handle.clone(),
                scope: scope_handle(live, &l.row),
            })
            .collect();
        let task = Arc::clone(&live.row);
        state.expiries.remove(&expiry);
        Ok(Marked::Ending(task, targets, reason))
    }

    /// A task that is no longer in memory: ended, or never existed.
    pub(super) async fn ended_view(
        &self,
        task_id: &str,
        ender: &Ender,
    ) -> Result<TaskSummary, BrokerError> {
        let id = task_id.to_string();
        let view = self
            .journal
            .read(move |c| read::task(c, &id))
            .await
            .map_err(|e| BrokerError::journal(&e))?;
        match view {
            Some(v) => {
                check_owner(ender, &v.task.workload)?;
                Ok(v)
            }
            None => Err(BrokerError::new(
                ErrorKind::NotFound,
                "task_not_found",
                format!("no task {task_id:?}"),
            )),
        }
    }

    /// Ends every task whose expiry has passed, until the process ends.
    /// Takes the tasks due by `now_ms` out of the expiry queue (so a slow revocation is not
    /// started twice: `end_task` moves a task to `ending`, and from then on the revoker owns
    /// what is left), and says when the next one is due. `None`: the state lock is poisoned.
    fn take_due(&self, now_ms: i64) -> Option<(Vec<Text>, Option<i64>)> {
        let mut state = self.live_state().ok()?;
        let later = state.expiries.split_off(&(now_ms + 1, Text::from("")));
        let due = std::mem::replace(&mut state.expiries, later);
        let next = state.expiries.first().map(|(t, _)| *t);
        Some((due.into_iter().map(|(_, id)| id).collect(), next))
    }

    /// Ends every task due now, one after the other: the reaper's work, awaited, for tests that
    /// move a [`ManualClock`](crate::time::ManualClock).
    #[cfg(test)]
    pub(super) async fn reap_due(&self) -> Vec<Result<TaskSummary, BrokerError>> {
        let (due, _) = self.take_due(to_ms(self.clock.now())).unwrap_or_default();
        let mut out = Vec::new();
        for id in due {
            out.push(self.end_task(&id, Ender::Reaper).await);
        }
        out
    }

    pub(super) async fn reaper_loop(self: Arc<Self>) {
        let mut purged = std::time::Instant::now();
        let mut flushed = std::time::Instant::now();
        loop {
            if purged.elapsed() > Duration::from_secs(60) {
                self.intern.purge();
                self.detectors.prune(to_ms(self.clock.now()));
                self.blocks.prune(to_ms(self.clock.now()));
                purged = std::time::Instant::now();
            }
            if flushed.elapsed() > Duration::from_secs(1) {
                self.flush_refusals().await;
                flushed = std::time::Instant::now();
            }
            let now_ms = to_ms(self.clock.now());
            let Some((due, next)) = self.take_due(now_ms) else {
                return;
            };
            for id in due {
                let me = Arc::clone(&self);
                tokio::spawn(async move {
                    if let Err(e) = me.end_task(&id, Ender::Reaper).await {
                        tracing::warn!(task = %id, error = %e, "reaper could not end a task; will retry");
                    }
                });
            }
            let wait = next.map_or(Duration::from_secs(1), |t| {
                Duration::from_millis((t - now_ms).clamp(1, 1000) as u64)
            });
            tokio::select! {
                () = self.wake_reaper.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn check_owner(ender: &Ender, task_workload: &str) -> Result<(), BrokerError> {
    match ender {
        Ender::Workload { workload } | Ender::Replay { workload } if workload != task_workload => {
            Err(BrokerError::new(
                ErrorKind::PermissionDenied,
                "task_not_owned",
                "this task belongs to another workload",
            ))
        }
        _ => Ok(()),
    }
}
