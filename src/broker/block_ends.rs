//! Ending the live tasks that blocks (and the client registry) cover: found from memory, ended
//! off the request path by the block loop, and again after a restart for every block in force.

use futures_util::StreamExt;

use super::blocks::{Who, task_matches};
use super::{Broker, BrokerError, Ender};
use crate::journal::blocks::BlockRow;
use crate::journal::rows::{TaskState, Text};
use crate::time::to_ms;

/// Tasks a block ends at once.
const END_CONCURRENCY: usize = 64;

impl Broker {
    /// A block placed while this BeginTask was issuing (after its check, before its task was
    /// in memory for the block to find) ends the task here: nothing a block covers outlives it.
    pub(super) async fn unless_blocked_meanwhile(
        &self,
        begun: super::Begun,
        who: &Who,
    ) -> Result<super::Begun, BrokerError> {
        let Some((b, e)) = self.blocked(who, self.clock.now()) else {
            return Ok(begun);
        };
        let ender = Ender::Blocked {
            block_id: b.id.clone(),
            source: b.source.clone(),
        };
        let id = begun.task.task.id.clone();
        drop(begun);
        if let Err(end) = self.end_task(&id, ender).await {
            tracing::warn!(task = %id, error = %end, "a task begun under a new block could not be ended now");
        }
        Err(e)
    }

    /// Live, active tasks the blocks cover, each with the block that covers it.
    pub(super) fn covered_tasks(&self, rows: &[BlockRow]) -> Vec<(Text, BlockRow)> {
        let Ok(state) = self.live_state() else {
            return Vec::new();
        };
        state
            .tasks
            .values()
            .filter(|t| t.row.state == TaskState::Active)
            .filter_map(|t| {
                rows.iter()
                    .find(|b| task_matches(b, &t.row))
                    .map(|b| (Text::clone(&t.row.id), b.clone()))
            })
            .collect()
    }

    /// After recovery: the live tasks a block in force covers (they were being ended when the
    /// daemon stopped, or the block was placed just before).
    pub(super) fn end_blocked_after_restart(&self) -> usize {
        let now_ms = to_ms(self.clock.now());
        let rows = self.blocks.all(now_ms);
        if rows.is_empty() {
            return 0;
        }
        let covered = self.covered_tasks(&rows);
        self.queue_block_ends(&covered);
        covered.len()
    }

    pub(super) fn queue_block_ends(&self, tasks: &[(Text, BlockRow)]) {
        self.queue_ends(tasks.iter().map(|(id, b)| {
            let ender = Ender::Blocked {
                block_id: b.id.clone(),
                source: b.source.clone(),
            };
            (Text::clone(id), ender)
        }));
    }

    /// Hands tasks to the block loop, which ends them off the request path.
    pub(super) fn queue_ends(&self, tasks: impl Iterator<Item = (Text, Ender)>) {
        let Ok(mut q) = self.block_ends.lock() else {
            return;
        };
        let before = q.len();
        q.extend(tasks);
        if q.len() > before {
            self.wake_blocker.notify_one();
        }
    }

    /// Ends the live tasks of a client the registry suspended or retired.
    pub(super) fn end_client_tasks(
        &self,
        issuer: &str,
        client: &str,
        status: crate::config::clients::ClientStatus,
    ) -> Vec<Text> {
        let ids: Vec<Text> = self
            .live_state()
            .map(|state| {
                state
                    .tasks
                    .values()
                    .filter(|t| t.row.state == TaskState::Active)
                    .filter(|t| &*t.row.issuer == issuer && &*t.row.client_id == client)
                    .map(|t| Text::clone(&t.row.id))
                    .collect()
            })
            .unwrap_or_default();
        self.queue_ends(
            ids.iter()
                .map(|id| (Text::clone(id), Ender::Client { status })),
        );
        ids
    }

    /// Ends the tasks blocks cover, off the request path: the request that placed a block is
    /// answered when the block is durable, not when every provider has revoked.
    pub(super) async fn block_loop(self: std::sync::Arc<Self>) {
        loop {
            let batch: Vec<(Text, Ender)> = self
                .block_ends
                .lock()
                .map(|mut q| std::mem::take(&mut *q))
                .unwrap_or_default();
            futures_util::stream::iter(batch.into_iter().map(|(id, ender)| {
                let me = &self;
                async move {
                    if let Err(e) = me.end_task(&id, ender).await {
                        tracing::warn!(task = %id, error = %e,
                            "a blocked task could not be ended now; the revoker retries");
                    }
                }
            }))
            .buffer_unordered(END_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
            let pending = self
                .block_ends
                .lock()
                .map(|q| !q.is_empty())
                .unwrap_or(false);
            if !pending {
                self.wake_blocker.notified().await;
            }
        }
    }
}
