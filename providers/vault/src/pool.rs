//! Scope tokens made ahead of need (`scope_pool = N`, off by default).
//!
//! Creating a task's scope token is a storage write in OpenBao (with raft, an fsync'd log
//! entry per write): on a BeginTask it cost more than the dynamic secret read itself. With a
//! pool, a background loop keeps `N` scope tokens ready, each living `scope_pool_ttl` (two
//! minutes by default); a BeginTask takes one and fits its TTL to the task just after the
//! answer (`renew-accessor` with the time the task has left), the way the lease is shortened.
//!
//! What this trades, and why it stays safe:
//! - A pooled token is a child of credbroker's token exactly as an inline scope is, with the
//!   same policies and display name; nothing is issued under it before the broker has journaled
//!   it as the task's scope, so an unused one holds nothing and ends on its own within
//!   `scope_pool_ttl`. A pooled token is used only while at least half its TTL is left.
//! - Until its TTL is fitted (milliseconds after the answer), the scope may end up to
//!   `scope_pool_ttl` after the task, or before it. After: exactly with it. If the fitting
//!   fails, or credbroker dies before it runs, the task's credentials still end with the scope
//!   no later than `scope_pool_ttl` after the task's end (each dynamic lease is also shortened to
//!   the task), or early, which fails closed.
//! - Its metadata cannot name the task, owner and client, which are not known when it is made:
//!   OpenBao's own audit log then shows the scope as `credbroker_scope = pooled`, and the link
//!   from the scope's accessor to the task, owner and token is in credbroker's journal only.
//!   Workload tokens (grants of `kind = "token"`) still carry the task's metadata.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use credbroker_provider_api::SecretValue;

use crate::provider::Inner;

pub(crate) struct Pool {
    pub(crate) size: usize,
    pub(crate) ttl: Duration,
    ready: Mutex<VecDeque<Made>>,
    wake: tokio::sync::Notify,
}

/// A scope token made ahead of need.
pub(crate) struct Made {
    pub(crate) accessor: String,
    pub(crate) token: SecretValue,
    pub(crate) expires_at: SystemTime,
    pub(crate) renewable: bool,
}

impl Pool {
    pub(crate) fn new(size: usize, ttl: Duration) -> Self {
        Self {
            size,
            ttl,
            ready: Mutex::new(VecDeque::with_capacity(size)),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// A ready token with at least half its TTL left, if there is one; the refill loop is
    /// woken either way. Older ones are dropped: they end on their own.
    pub(crate) fn take(&self, now: SystemTime) -> Option<Made> {
        let fresh_until = now + self.ttl / 2;
        let taken = self.ready.lock().ok().and_then(|mut ready| {
            while let Some(made) = ready.pop_front() {
                if made.expires_at >= fresh_until {
                    return Some(made);
                }
            }
            None
        });
        self.wake.notify_one();
        taken
    }

    fn ready(&self) -> usize {
        self.ready.lock().map_or(0, |r| r.len())
    }

    fn put(&self, made: Made) {
        if let Ok(mut ready) = self.ready.lock() {
            ready.push_back(made);
        }
    }

    /// Keeps `pool` full while the instance lives (`inner` is weak: the loop ends with it).
    pub(crate) async fn refill(pool: Arc<Pool>, inner: Weak<Inner>) {
        let mut failures = 0u32;
        loop {
            // Replace tokens before they are too old to hand out.
            let stale = SystemTime::now() + pool.ttl / 2;
            if let Ok(mut ready) = pool.ready.lock() {
                ready.retain(|m| m.expires_at >= stale);
            }
            while pool.ready() < pool.size {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                let made = strong.make_scope(pool.ttl).await;
                drop(strong);
                match made {
                    Ok(made) => {
                        failures = 0;
                        pool.put(made);
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(error = %e, "cannot make a scope token ahead of need; BeginTasks make their own meanwhile");
                        break;
                    }
                }
            }
            if inner.strong_count() == 0 {
                return;
            }
            if failures > 0 {
                // Not woken by takes while OpenBao refuses: BeginTasks make their own.
                let backoff = Duration::from_millis(200).saturating_mul(1 << failures.min(6));
                tokio::time::sleep(backoff).await;
            } else {
                tokio::select! {
                    _ = pool.wake.notified() => {}
                    _ = tokio::time::sleep(pool.ttl / 4) => {}
                }
            }
        }
    }
}
