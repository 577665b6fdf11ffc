//! Delivering abuse alerts to the webhook: from the journal's outbox, signed, retried with
//! backoff until the webhook takes them (2xx), across restarts.
//!
//! The signature is `Credbroker-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<body>"` with the configured key, so a receiver checks both origin and freshness (and
//! rejects a replay by `t` and `Credbroker-Alert-Id`). The key is never logged; the body names
//! people and credentials' ids, never a secret.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use rusqlite::params;

use super::Broker;
use crate::journal::{Durability, JournalError, Op};
use crate::record::{AuditRecord, Outcome, event};
use crate::time::to_ms;

/// Alerts sent per round.
const BATCH: usize = 32;
const BACKOFF_MIN_MS: i64 = 1_000;
const BACKOFF_MAX_MS: i64 = 300_000;

/// The webhook's signing key, read from its file or credential when the runtime is built.
pub struct AlertKey(hmac::Key);

impl AlertKey {
    pub fn new(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The `Credbroker-Signature` header value for `body` sent at `t` (Unix seconds).
    pub fn sign(&self, t: u64, body: &str) -> String {
        let tag = hmac::sign(&self.0, format!("{t}.{body}").as_bytes());
        format!("t={t},v1={}", crate::keys::hex(tag.as_ref()))
    }
}

impl std::fmt::Debug for AlertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlertKey(..)")
    }
}

struct Due {
    id: String,
    body: String,
    attempts: u32,
}

fn due(conn: &rusqlite::Connection, now_ms: i64) -> Result<Vec<Due>, JournalError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, body, attempts FROM alerts
         WHERE delivered_ms IS NULL AND next_attempt_ms <= ?1 ORDER BY next_attempt_ms LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now_ms, BATCH as i64], |r| {
        Ok(Due {
            id: r.get(0)?,
            body: r.get(1)?,
            attempts: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn next_due(conn: &rusqlite::Connection) -> Result<Option<i64>, JournalError> {
    Ok(conn.query_row(
        "SELECT MIN(next_attempt_ms) FROM alerts WHERE delivered_ms IS NULL",
        [],
        |r| r.get(0),
    )?)
}

fn backoff_ms(attempts: u32) -> i64 {
    BACKOFF_MIN_MS
        .saturating_mul(1 << attempts.min(20))
        .min(BACKOFF_MAX_MS)
}

impl Broker {
    pub(super) async fn alert_loop(self: Arc<Self>) {
        let mut client: Option<(String, reqwest::Client)> = None;
        loop {
            let wait = self.deliver_round(&mut client).await;
            tokio::select! {
                () = self.wake_alerts.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends what is due; how long until the next is.
    async fn deliver_round(&self, client: &mut Option<(String, reqwest::Client)>) -> Duration {
        let idle = Duration::from_secs(5);
        let rt = self.runtime();
        let (Some(hook), Some(key)) = (
            rt.config.abuse.as_ref().and_then(|a| a.webhook.as_ref()),
            rt.alert_key.as_ref(),
        ) else {
            return idle;
        };
        if client.as_ref().is_none_or(|(url, _)| *url != hook.url) {
            match reqwest::Client::builder()
                .timeout(hook.timeout)
                .connect_timeout(hook.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("credbroker/", env!("CARGO_PKG_VERSION")))
                .build()
            {
                Ok(c) => *client = Some((hook.url.clone(), c)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the alert webhook's HTTP client");
                    return idle;
                }
            }
        }
        let Some((_, http)) = client.as_ref() else {
            return idle;
        };
        let now_ms = to_ms(self.clock.now());
        let batch = match self.journal.read(move |c| due(c, now_ms)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the alert outbox");
                return idle;
            }
        };
        for a in batch {
            let t = u64::try_from(to_ms(self.clock.now()) / 1000).unwrap_or_default();
            let sent = http
                .post(&hook.url)
                .header("content-type", "application/json")
                .header("credbroker-alert-id", &a.id)
                .header("credbroker-signature", key.sign(t, &a.body))
                .body(a.body.clone())
                .send()
                .await;
            let error = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("the webhook answered {}", r.status())),
                // Without the URL: it may carry a token in its path.
                Err(e) => Some(format!("{}", e.without_url())),
            };
            let attempts = a.attempts + 1;
            let at_ms = to_ms(self.clock.now());
            let mut ops = vec![Op::AlertAttempt {
                id: a.id.clone(),
                attempts,
                next_attempt_ms: at_ms + backoff_ms(attempts),
                delivered_ms: error.is_none().then_some(at_ms),
                last_error: error.clone(),
            }];
            match &error {
                None => ops.push(Op::Audit(Box::new(
                    AuditRecord::new(event::ALERT_DELIVERED, Outcome::Success, self.clock.now())
                        .detail("alert_id", a.id.clone())
                        .detail("attempts", attempts),
                ))),
                Some(e) => tracing::warn!(alert = %a.id, attempts, error = %e,
                    "the alert webhook did not take an alert; retrying with backoff"),
            }
            if let Err(e) = self.journal.commit_with(ops, Durability::Fsync).await {
                tracing::error!(error = %e, "cannot record an alert delivery");
            }
        }
        match self.journal.read(next_due).await {
            Ok(Some(next)) => {
                Duration::from_millis((next - to_ms(self.clock.now())).clamp(10, 5_000) as u64)
            }
            _ => idle,
        }
    }
}
