//! What the journal stores, and the state machines of tasks and leases.
//!
//! ```text
//! task:   issuing ──▶ active ──▶ ending ──▶ ended
//!            └──────────────────────▲
//! lease:  pending ──▶ active ──▶ revoking ──▶ revoked | expired | expiring
//!            │                      ▲
//!            ├──▶ failed            │
//!            └──▶ reconciling ──────┴──▶ revoked | expired | expiring | failed
//! ```
//! `pending` is the intent, written before the provider is called. `reconciling` is a pending
//! lease whose outcome is unknown (crash or timeout): the provider is asked what was issued.
//! `expiring` is terminal for the broker: the provider cannot revoke (an STS session), so the
//! credential stops working on its own at `expires_ms`, and the audit log says so.

use std::sync::Arc;

use credbroker_provider_api::{Params, Role};

use crate::record::PeerRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    Issuing,
    Active,
    Ending,
    Ended,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issuing => "issuing",
            Self::Active => "active",
            Self::Ending => "ending",
            Self::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "issuing" => Self::Issuing,
            "active" => Self::Active,
            "ending" => Self::Ending,
            "ended" => Self::Ended,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseState {
    Pending,
    Active,
    Revoking,
    Reconciling,
    Revoked,
    Expired,
    Expiring,
    Failed,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Revoking => "revoking",
            Self::Reconciling => "reconciling",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Expiring => "expiring",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "revoking" => Self::Revoking,
            "reconciling" => Self::Reconciling,
            "revoked" => Self::Revoked,
            "expired" => Self::Expired,
            "expiring" => Self::Expiring,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// Nothing more will happen to a lease in a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Revoked | Self::Expired | Self::Expiring | Self::Failed
        )
    }
}

pub fn role_str(r: Role) -> &'static str {
    match r {
        Role::Credential => "credential",
        Role::Scope => "scope",
    }
}

pub fn parse_role(s: &str) -> Option<Role> {
    match s {
        "credential" => Some(Role::Credential),
        "scope" => Some(Role::Scope),
        _ => None,
    }
}

/// How a task ended: the registered reason codes a task row's `end_reason` holds.
pub mod end_reason {
    use crate::record::reason::{self, Reason};

    pub const BY_WORKLOAD: Reason = reason::ENDED_BY_WORKLOAD;
    pub const EXPIRED: Reason = reason::EXPIRED;
    pub const TOKEN_EXPIRED: Reason = reason::TOKEN_EXPIRED;
    pub const BY_OPERATOR: Reason = reason::REVOKED_BY_OPERATOR;
    pub const ISSUE_FAILED: Reason = reason::ISSUE_FAILED;
    pub const INTERRUPTED: Reason = reason::INTERRUPTED;
    pub const BEGIN_REPLAYED: Reason = reason::BEGIN_REPLAYED;
    pub const BY_BLOCK: Reason = reason::REVOKED_BY_BLOCK;
    pub const TOKEN_INACTIVE: Reason = reason::TOKEN_INACTIVE;
    pub const CLIENT_SUSPENDED: Reason = reason::CLIENT_SUSPENDED;
    pub const CLIENT_RETIRED: Reason = reason::CLIENT_RETIRED;
}

/// Text shared between rows: interned (see `broker::intern`), so 100,000 tasks of one workload
/// and client hold one copy of each name, not 100,000.
pub type Text = Arc<str>;

#[derive(Clone, Debug, PartialEq)]
pub struct TaskRow {
    pub id: Text,
    pub state: TaskState,
    pub workload: Text,
    pub tool: Text,
    pub issuer: Text,
    pub subject: Text,
    pub client_id: Text,
    pub owner: Option<Text>,
    pub owner_source: Text,
    pub actors: Vec<String>,
    pub token_fp: Text,
    pub jti: Text,
    /// Space-separated, as in the token's `scope` claim.
    pub scopes: Text,
    pub token_exp_ms: i64,
    /// Shared by every task begun on one connection.
    pub peer: Arc<PeerRecord>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub ended_ms: Option<i64>,
    pub end_reason: Option<Text>,
    /// The MCP call (`credbroker gateway`'s call id) this task was begun for.
    pub call_id: Option<Text>,
}

impl TaskRow {
    pub fn scope_list(&self) -> Vec<String> {
        self.scopes
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LeaseRow {
    pub id: Text,
    pub task_id: Text,
    pub role: Role,
    /// For a credential of a scoped provider: the id of its task's scope lease.
    pub parent: Option<Text>,
    pub grant: Text,
    pub provider: Text,
    pub kind: Text,
    pub state: LeaseState,
    /// The grant's parameters as issued (rendered, narrowed). Never secret. Shared with the
    /// grant when it has no template.
    pub params: Arc<Params>,
    /// The expiry asked of the provider.
    pub wanted_exp_ms: i64,
    pub issued_ms: Option<i64>,
    /// When the credential stops working on its own, as the provider reported it.
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub reference: Option<Text>,
    /// The secret half of the revocation handle, sealed (see `seal`).
    pub sealed_handle: Option<Vec<u8>>,
    pub renewable: bool,
    pub attempts: u32,
    pub next_attempt_ms: Option<i64>,
    pub last_error: Option<String>,
}
