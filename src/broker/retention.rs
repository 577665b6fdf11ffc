//! Audit retention: once an hour, records older than `audit.retention` are deleted and an
//! `audit_pruned` anchor is appended in the same commit, so the chain still verifies from the
//! first record kept. Export first (`credbroker audit export --until …`) if the records must be
//! kept elsewhere: the anchor proves what was deleted, not what it said.

use std::sync::Arc;
use std::time::Duration;

use super::Broker;
use crate::audit::{AuditRecord, Outcome, event};
use crate::journal::Op;
use crate::time::to_ms;

const EVERY: Duration = Duration::from_secs(3600);

impl Broker {
    pub(super) async fn retention_loop(self: Arc<Self>) {
        loop {
            if let Some(keep) = self.runtime().config.audit.retention {
                let now = self.clock.now();
                let anchor = AuditRecord::new(event::AUDIT_PRUNED, Outcome::Success, now)
                    .detail("retention", humantime::format_duration(keep).to_string());
                let op = Op::PruneAudit {
                    before_ms: to_ms(now) - keep.as_millis() as i64,
                    anchor: Box::new(anchor),
                };
                if let Err(e) = self.journal.commit(vec![op]).await {
                    tracing::error!(error = %e, "audit retention: pruning failed; will retry");
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    }
}
