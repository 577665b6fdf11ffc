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

use credbroker_provider_api::{Params, Role};

use crate::audit::PeerRecord;

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

/// Why a task ended. Stable codes.
pub mod end_reason {
    pub const BY_WORKLOAD: &str = "ended_by_workload";
    pub const EXPIRED: &str = "expired";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    pub const BY_OPERATOR: &str = "revoked_by_operator";
    pub const ISSUE_FAILED: &str = "issue_failed";
    pub const INTERRUPTED: &str = "interrupted";
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskRow {
    pub id: String,
    pub state: TaskState,
    pub workload: String,
    pub tool: String,
    pub issuer: String,
    pub subject: String,
    pub client_id: String,
    pub owner: Option<String>,
    pub owner_source: String,
    pub actors: Vec<String>,
    pub token_fp: String,
    pub jti: String,
    pub scopes: Vec<String>,
    pub token_exp_ms: i64,
    pub peer: PeerRecord,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub ended_ms: Option<i64>,
    pub end_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LeaseRow {
    pub id: String,
    pub task_id: String,
    pub role: Role,
    /// For a credential of a scoped provider: the id of its task's scope lease.
    pub parent: Option<String>,
    pub grant: String,
    pub provider: String,
    pub kind: String,
    pub state: LeaseState,
    /// The grant's parameters as issued (rendered, narrowed). Never secret.
    pub params: Params,
    /// The expiry asked of the provider.
    pub wanted_exp_ms: i64,
    pub issued_ms: Option<i64>,
    /// When the credential stops working on its own, as the provider reported it.
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub reference: Option<String>,
    /// The secret half of the revocation handle, sealed (see `seal`).
    pub sealed_handle: Option<Vec<u8>>,
    pub renewable: bool,
    pub attempts: u32,
    pub next_attempt_ms: Option<i64>,
    pub last_error: Option<String>,
}
