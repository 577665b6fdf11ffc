//! What the broker does when a detector fires: the responses `[abuse]` names for it.
//!
//! The finding, the blocks it places and the alert it queues are one commit, fsync'd before the
//! request that fired it is answered; the tasks the blocks cover are ended by the block loop
//! (and by recovery, if the daemon stops first).

use serde_json::{Value, json};

use super::abuse::{Finding, Signal};
use super::blocks::Who;
use super::{Broker, BrokerError, ErrorKind, Runtime};
use crate::config::abuse::Response;
use crate::journal::blocks::{BlockKind, BlockRow};
use crate::journal::{Durability, Op};
use crate::record::{AuditRecord, Outcome, PeerRecord, event, reason};
use crate::time::{rfc3339, to_ms};

/// A token's block lasts until it expires, and at least this long (clock skew, leeway).
const MIN_TOKEN_BLOCK_MS: i64 = 300_000;

/// Where the request that fired a detector came in, for its records.
#[derive(Clone, Copy, Default)]
pub(super) struct Context<'a> {
    pub(super) peer: Option<&'a PeerRecord>,
    pub(super) workload: Option<&'a str>,
    pub(super) call_id: Option<&'a str>,
}

impl Broker {
    /// Runs the detectors on a signal and carries out what fires. `Err`: the request must be
    /// refused (a `deny`, or a block now covering it).
    pub(super) async fn detect(
        &self,
        rt: &Runtime,
        who: &Who,
        signal: Signal<'_>,
        ctx: Context<'_>,
    ) -> Result<(), BrokerError> {
        let Some(cfg) = rt.config.abuse.as_ref() else {
            return Ok(());
        };
        let now = self.clock.now();
        let findings = self.detectors.observe(cfg, who, &signal, to_ms(now));
        let mut refusal = Ok(());
        for f in findings {
            if let Err(e) = self.respond(rt, who, f, ctx).await
                && refusal.is_ok()
            {
                refusal = Err(e);
            }
        }
        refusal
    }

    async fn respond(
        &self,
        rt: &Runtime,
        who: &Who,
        f: Finding,
        ctx: Context<'_>,
    ) -> Result<(), BrokerError> {
        let Some(cfg) = rt.config.abuse.as_ref() else {
            return Ok(());
        };
        let now = self.clock.now();
        let now_ms = to_ms(now);
        let deny = f.responses.contains(&Response::Deny);
        let mut rec = AuditRecord::new(
            event::ABUSE_DETECTED,
            if deny {
                Outcome::Denied
            } else {
                Outcome::Success
            },
            now,
        )
        .detail("detector", f.detector)
        .detail("evidence", Value::Object(f.evidence.clone()))
        .detail(
            "responses",
            f.responses.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        );
        who.stamp(&mut rec);
        rec.peer = ctx.peer.cloned();
        rec.workload = ctx.workload.map(str::to_owned);
        rec.call_id = ctx.call_id.map(str::to_owned);
        tracing::warn!(detector = f.detector, client = %who.client_id,
            owner = who.owner.as_deref().unwrap_or("-"), repeat = f.repeat, "abuse detected");
        if f.repeat {
            rec = rec.detail("repeat", true);
            self.audit_only(vec![rec]).await;
            return if deny {
                Err(denied(f.detector))
            } else {
                Ok(())
            };
        }

        let mut blocks = Vec::new();
        let mut not_taken = Vec::new();
        for r in &f.responses {
            let (kind, issuer, value, until_ms) = match r {
                Response::RevokeToken if !who.jti.is_empty() => (
                    BlockKind::Jti,
                    Some(who.issuer.clone()),
                    who.jti.clone(),
                    who.token_exp_ms.max(now_ms + MIN_TOKEN_BLOCK_MS),
                ),
                Response::RevokeClient => (
                    BlockKind::Client,
                    Some(who.issuer.clone()),
                    who.client_id.clone(),
                    now_ms + ms(cfg.block_for),
                ),
                Response::RevokeOwner if who.owner.is_some() => (
                    BlockKind::Owner,
                    None,
                    who.owner.clone().unwrap_or_default(),
                    now_ms + ms(cfg.block_for),
                ),
                Response::RevokeToken | Response::RevokeOwner => {
                    not_taken.push(r.as_str());
                    continue;
                }
                _ => continue,
            };
            blocks.push(BlockRow {
                id: super::new_id(),
                kind,
                issuer,
                value,
                created_ms: now_ms,
                until_ms,
                reason: format!("abuse detector {}", f.detector),
                source: format!("abuse:{}", f.detector),
                lifted_ms: None,
                lifted_by: None,
            });
        }
        if !not_taken.is_empty() {
            // No jti to block, or no owner attributed: said in the record, not silently skipped.
            rec = rec.detail("responses_not_taken", not_taken);
        }
        if !blocks.is_empty() {
            rec = rec.detail(
                "block_ids",
                blocks.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
            );
        }
        let covered = self.covered_summary(&blocks);
        let mut ops = vec![];
        let alert = f.responses.contains(&Response::Alert);
        if alert {
            let id = super::new_id();
            rec = rec.detail("alert_id", id.clone());
            let body = json!({
                "type": "abuse_detected",
                "id": id,
                "at": rfc3339(now),
                "detector": f.detector,
                "owner": who.owner,
                "client_id": who.client_id,
                "subject": who.subject,
                "issuer": who.issuer,
                "jti": who.jti,
                "token_fingerprint": who.token_fp,
                "workload": ctx.workload,
                "call_id": ctx.call_id,
                "evidence": f.evidence,
                "responses": f.responses.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                "blocks": blocks.iter().map(|b| json!({
                    "id": b.id, "kind": b.kind.as_str(), "issuer": b.issuer,
                    "value": b.value, "until": rfc3339(crate::time::from_ms(b.until_ms)),
                })).collect::<Vec<_>>(),
                "revoked": covered,
            });
            ops.push(Op::QueueAlert {
                id,
                created_ms: now_ms,
                body: body.to_string(),
            });
        }
        ops.insert(0, Op::Audit(Box::new(rec)));
        if !blocks.is_empty() {
            let placed_on = blocks.clone();
            self.place_blocks(blocks, ops).await?;
            if alert {
                self.wake_alerts.notify_one();
            }
            let covering = placed_on.iter().find(|b| super::blocks::covers(b, who));
            return match (deny, covering) {
                (true, _) => Err(denied(f.detector)),
                (false, Some(b)) => Err(self.refusal_for(b)),
                (false, None) => Ok(()),
            };
        }
        if alert {
            self.journal
                .commit_with(ops, Durability::Fsync)
                .await
                .map_err(|e| BrokerError::journal(&e))?;
            self.wake_alerts.notify_one();
        } else {
            let records = ops
                .into_iter()
                .filter_map(|op| match op {
                    Op::Audit(r) => Some(*r),
                    _ => None,
                })
                .collect();
            self.audit_only(records).await;
        }
        if deny {
            Err(denied(f.detector))
        } else {
            Ok(())
        }
    }

    /// The tasks and leases blocks would end now, for the alert.
    fn covered_summary(&self, blocks: &[BlockRow]) -> Value {
        if blocks.is_empty() {
            return json!([]);
        }
        let Ok(state) = self.live_state() else {
            return json!([]);
        };
        let tasks: Vec<Value> = state
            .tasks
            .values()
            .filter(|t| t.row.state == crate::journal::rows::TaskState::Active)
            .filter(|t| {
                blocks
                    .iter()
                    .any(|b| super::blocks::task_matches(b, &t.row))
            })
            .map(|t| {
                json!({
                    "task_id": &*t.row.id,
                    "workload": &*t.row.workload,
                    "tool": &*t.row.tool,
                    "leases": t.leases.iter().map(|l| json!({
                        "lease_id": &*l.row.id, "grant": &*l.row.grant,
                        "provider": &*l.row.provider,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        Value::Array(tasks)
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn denied(detector: &str) -> BrokerError {
    BrokerError::new(
        ErrorKind::PermissionDenied,
        reason::ABUSE_DETECTED.as_str(),
        format!("refused: abuse detector {detector} fired on this request"),
    )
}
