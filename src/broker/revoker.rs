//! The revoker: the durable retry queue of leases still to revoke or reconcile, worked until
//! the process ends. Each attempt is one call (`revoke`) and one commit (`settle`).

use std::sync::Arc;
use std::time::Duration;

use super::Broker;
use super::revoke::Target;
use super::settle::{covered_by_scope, scope_handle, scope_ready};
use crate::journal::rows::{LeaseState, Text};
use crate::time::to_ms;

impl Broker {
    /// Works the retry queue until the process ends.
    pub(super) async fn revoker_loop(self: Arc<Self>) {
        loop {
            // First the intents a failing journal kept: the retries below record against
            // their rows.
            self.heal_kept_intents().await;
            let now_ms = to_ms(self.clock.now());
            let (due, next) = {
                let Ok(mut state) = self.live_state() else {
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

    pub(super) async fn retry_lease(&self, task_id: &str, lease_id: &str) {
        let Some(op) = self
            .live_state()
            .ok()
            .and_then(|s| s.tasks.get(task_id).map(|t| Arc::clone(&t.op)))
        else {
            return;
        };
        let _guard = op.lock_owned().await;
        let now = self.clock.now();
        let picked = {
            let Ok(state) = self.live_state() else { return };
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
            if let Ok(mut state) = self.live_state() {
                let next = to_ms(now + rt.config.broker.revoke_backoff_initial);
                state
                    .retries
                    .insert((next, Text::from(task_id), Text::from(lease_id)));
            }
        }
    }
}
