//! Audit records: one per decision, appended by the journal in the same transaction as the state
//! change it describes, chained by SHA-256 so an edit, deletion or reordering is detectable.
//!
//! A record carries identifiers and fingerprints only (peer, client, subject, owner, token
//! fingerprint, grant, task, lease); there is no field a secret could go into, and `detail`
//! is filled only from non-secret values by the broker. The type is a leaf: the journal writes
//! it, the broker fills it, the audit tools (`audit/`) read it back.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::time::rfc3339;

pub mod reason;
pub use reason::Reason;

/// Stable event names.
pub mod event {
    pub const DAEMON_STARTED: &str = "daemon_started";
    pub const TOKEN_ACCEPTED: &str = "token_accepted";
    pub const TOKEN_REJECTED: &str = "token_rejected";
    pub const TOKEN_WRONG_WORKLOAD: &str = "token_presented_by_wrong_workload";
    pub const PEER_REJECTED: &str = "peer_rejected";
    pub const REQUEST_DENIED: &str = "request_denied";
    pub const TASK_OPENED: &str = "task_opened";
    pub const LEASE_ISSUED: &str = "lease_issued";
    pub const LEASE_ISSUE_FAILED: &str = "lease_issue_failed";
    pub const TASK_BEGUN: &str = "task_begun";
    pub const TASK_RENEWED: &str = "task_renewed";
    pub const LEASE_RENEWED: &str = "lease_renewed";
    pub const TASK_ENDING: &str = "task_ending";
    pub const LEASE_REVOKED: &str = "lease_revoked";
    pub const LEASE_REVOCATION_FAILED: &str = "lease_revocation_failed";
    pub const LEASE_EXPIRED_UNREVOKED: &str = "lease_expired_unrevoked";
    pub const LEASE_RECONCILED: &str = "lease_reconciled";
    pub const TASK_ENDED: &str = "task_ended";
    pub const OPERATOR_REVOKE: &str = "operator_revoke";
    /// Retention deleted the records before `detail.first_kept_seq`; `detail.prev_hash` is the
    /// hash that record chains from.
    pub const AUDIT_PRUNED: &str = "audit_pruned";
    /// Refusals beyond a peer's audit budget, counted in one record per window.
    pub const REFUSALS_SUPPRESSED: &str = "refusals_suppressed";
    /// An MCP call `credbroker gateway` decided on: allowed (`success`, written before the call
    /// is forwarded) or refused (`denied`, with its reason).
    pub const MCP_CALL: &str = "mcp_call";
    /// What the upstream answered an allowed MCP call, and how long it took.
    pub const MCP_CALL_FINISHED: &str = "mcp_call_finished";
    /// A detector fired: `detail.detector`, its evidence, and the responses taken.
    pub const ABUSE_DETECTED: &str = "abuse_detected";
    /// A block placed (by an operator, a detector or a signal) or lifted.
    pub const BLOCK_ADDED: &str = "block_added";
    pub const BLOCK_LIFTED: &str = "block_lifted";
    /// An abuse alert the webhook took (`detail.alert_id`, `detail.attempts`).
    pub const ALERT_DELIVERED: &str = "alert_delivered";
    /// An OAuth client made its first request here (for review of new registrations).
    pub const CLIENT_FIRST_SEEN: &str = "client_first_seen";
    /// An operator changed a client's registry entry (`credbroker clients`).
    pub const CLIENT_UPDATED: &str = "client_updated";
    /// A Security Event Token taken from a Shared Signals transmitter, and what it did.
    pub const SIGNAL_RECEIVED: &str = "signal_received";
    /// A SET refused (`detail.err` is its RFC 8935 code); nothing changed.
    pub const SIGNAL_REJECTED: &str = "signal_rejected";

    /// Every event name, for validating what a user asks to filter on.
    pub const ALL: [&str; 31] = [
        DAEMON_STARTED,
        TOKEN_ACCEPTED,
        TOKEN_REJECTED,
        TOKEN_WRONG_WORKLOAD,
        PEER_REJECTED,
        REQUEST_DENIED,
        TASK_OPENED,
        LEASE_ISSUED,
        LEASE_ISSUE_FAILED,
        TASK_BEGUN,
        TASK_RENEWED,
        LEASE_RENEWED,
        TASK_ENDING,
        LEASE_REVOKED,
        LEASE_REVOCATION_FAILED,
        LEASE_EXPIRED_UNREVOKED,
        LEASE_RECONCILED,
        TASK_ENDED,
        OPERATOR_REVOKE,
        AUDIT_PRUNED,
        REFUSALS_SUPPRESSED,
        MCP_CALL,
        MCP_CALL_FINISHED,
        ABUSE_DETECTED,
        BLOCK_ADDED,
        BLOCK_LIFTED,
        ALERT_DELIVERED,
        CLIENT_FIRST_SEEN,
        CLIENT_UPDATED,
        SIGNAL_RECEIVED,
        SIGNAL_REJECTED,
    ];
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerRecord {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// One audit record. Field order is the canonical order the hash chain covers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// Assigned by the journal when the record is appended.
    pub seq: u64,
    pub time: String,
    /// `time` as Unix milliseconds, for the index; not part of the record's body.
    #[serde(skip)]
    pub at_ms: i64,
    pub event: String,
    /// success | denied | failure
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// The MCP call (gateway records, and the tasks begun for a call). Absent from older
    /// records, which therefore hash as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub detail: Map<String, Value>,
}

/// Mirrors an audit record to the log, target `credbroker::audit`, one field per identifier.
/// Under journald these are journal fields: `journalctl -u credbroker TASK_ID=…` lists a task's
/// whole story. Records hold identifiers and fingerprints only, never a secret.
pub fn log(r: &AuditRecord) {
    tracing::info!(
        target: "credbroker::audit",
        event = %r.event,
        outcome = %r.outcome,
        reason = r.reason.as_deref(),
        task_id = r.task_id.as_deref(),
        lease_id = r.lease_id.as_deref(),
        call_id = r.call_id.as_deref(),
        grant = r.grant.as_deref(),
        provider = r.provider.as_deref(),
        workload = r.workload.as_deref(),
        client_id = r.client_id.as_deref(),
        owner = r.owner.as_deref(),
        "{}",
        r.event
    );
}

impl AuditRecord {
    pub fn new(event: &str, outcome: Outcome, at: SystemTime) -> Self {
        Self {
            time: rfc3339(at),
            at_ms: crate::time::to_ms(at),
            event: event.into(),
            outcome: outcome.as_str().into(),
            ..Default::default()
        }
    }

    pub fn reason(mut self, code: Reason) -> Self {
        self.reason = Some(code.as_str().into());
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.into(), value.into());
        self
    }

    pub fn lease(mut self, lease_id: &str, grant: &str, provider: &str) -> Self {
        self.lease_id = Some(lease_id.into());
        self.grant = Some(grant.into());
        self.provider = Some(provider.into());
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Denied,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failure => "failure",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::event;

    #[test]
    fn every_event_name_is_in_the_list_users_filter_with() {
        let source = include_str!("record.rs");
        let module = source
            .split("pub mod event {")
            .nth(1)
            .and_then(|m| m.split("\n}\n").next())
            .unwrap_or_default();
        let declared: Vec<&str> = module
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const "))
            .filter(|l| !l.starts_with("ALL"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(declared.len(), event::ALL.len(), "{declared:?}");
        for name in declared {
            assert!(
                event::ALL.contains(&name),
                "{name} is missing from event::ALL"
            );
        }
    }
}
