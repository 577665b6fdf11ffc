//! The client registry: the OAuth clients (agents) an organisation has registered, each with an
//! owner, an expiry, the grants it may ask for and a status. Declared in `[[client]]`, and
//! changed at run time by `credbroker clients` (journaled; an operator's change wins over the
//! file until the file's entry changes).

use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientStatus {
    Active,
    /// Refused for now (an incident, a review); may be made active again.
    Suspended,
    /// Refused for good: the client is decommissioned.
    Retired,
}

impl ClientStatus {
    pub const ALL: [ClientStatus; 3] = [Self::Active, Self::Suspended, Self::Retired];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEntry {
    pub issuer: String,
    pub client_id: String,
    /// The human or team accountable for it.
    pub owner: Option<String>,
    /// Refused from then on (`client_expired`).
    pub expires: Option<SystemTime>,
    /// The grants it may ask for; empty: whatever its workloads allow.
    pub grants: Vec<String>,
    pub status: ClientStatus,
}
