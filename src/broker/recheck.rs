//! `recheck_active`: the tokens of active tasks are introspected again every period, so a token
//! the authorization server revoked (RFC 7009) ends its tasks within that period, not at its
//! expiry.
//!
//! Introspection needs the token itself, so for issuers with `recheck_active` the broker keeps
//! each active task's token in memory (zeroized on drop, never journaled, never logged) until
//! the task ends. After a restart they are gone: those tasks are then bounded by their expiry
//! and by the next BeginTask or RenewTask, which introspect as always.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use credbroker_provider_api::SecretValue;

use super::{Broker, Ender};
use crate::journal::rows::{TaskState, Text};

pub(super) struct Held {
    issuer: String,
    token: SecretValue,
    next: Instant,
}

#[derive(Default)]
pub(super) struct HeldTokens(std::sync::Mutex<HashMap<Text, Held>>);

impl HeldTokens {
    pub(super) fn hold(&self, task: Text, issuer: String, token: SecretValue, period: Duration) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(
                task,
                Held {
                    issuer,
                    token,
                    next: Instant::now() + period,
                },
            );
        }
    }
}

impl Broker {
    pub(super) async fn recheck_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let due: Vec<(Text, String, String)> = {
                let live: std::collections::HashSet<Text> = match self.live_state() {
                    Ok(s) => s
                        .tasks
                        .values()
                        .filter(|t| t.row.state == TaskState::Active)
                        .map(|t| Text::clone(&t.row.id))
                        .collect(),
                    Err(_) => return,
                };
                let Ok(mut held) = self.held.0.lock() else {
                    return;
                };
                held.retain(|id, _| live.contains(id));
                let now = Instant::now();
                held.iter()
                    .filter(|(_, h)| h.next <= now)
                    .map(|(id, h)| {
                        (
                            Text::clone(id),
                            h.issuer.clone(),
                            h.token.expose().to_owned(),
                        )
                    })
                    .collect()
            };
            let rt = self.runtime();
            for (task, issuer, token) in due {
                let token = zeroize::Zeroizing::new(token);
                let period = rt.verifier.recheck_period(&issuer);
                match rt.verifier.still_active(&issuer, &token).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(task = %task, "the task's token is no longer active at its issuer; ending it");
                        if let Err(e) = self.end_task(&task, Ender::TokenInactive).await {
                            tracing::warn!(task = %task, error = %e, "could not end a task whose token was revoked");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(task = %task, error = %e, "could not recheck a task's token; trying again next period");
                    }
                }
                if let Ok(mut held) = self.held.0.lock()
                    && let Some(h) = held.get_mut(&task)
                {
                    h.next = Instant::now() + period.unwrap_or(Duration::from_secs(60));
                }
            }
        }
    }
}
