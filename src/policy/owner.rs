//! Attribution: the human accountable for a task.
//!
//! In order:
//! 1. `act` present (RFC 8693 delegation): the agent in `act` acts for `sub`, so `sub` owns it.
//! 2. `sub` differs from `client_id`: RFC 9068 §2.2 puts the resource owner in `sub`, and uses
//!    the client's own id there only for grants without a resource owner (client credentials).
//! 3. The client is in the configured registry (a machine client someone answers for).
//! 4. Otherwise the task is unattributed, which `require_owner = true` refuses.

use crate::config::Attribution;
use crate::token::Claims;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerSource {
    ActSubject,
    ResourceOwner,
    ClientRegistry,
    None,
}

impl OwnerSource {
    pub fn code(self) -> &'static str {
        match self {
            Self::ActSubject => "act_subject",
            Self::ResourceOwner => "resource_owner",
            Self::ClientRegistry => "client_registry",
            Self::None => "none",
        }
    }

    pub fn from_code(code: &str) -> Self {
        match code {
            "act_subject" => Self::ActSubject,
            "resource_owner" => Self::ResourceOwner,
            "client_registry" => Self::ClientRegistry,
            _ => Self::None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub id: Option<String>,
    pub source: OwnerSource,
}

pub fn attribute(claims: &Claims, attribution: &Attribution) -> Owner {
    if !claims.actors.is_empty() {
        return Owner {
            id: Some(claims.subject.clone()),
            source: OwnerSource::ActSubject,
        };
    }
    if claims.subject != claims.client_id {
        return Owner {
            id: Some(claims.subject.clone()),
            source: OwnerSource::ResourceOwner,
        };
    }
    match attribution.owner_of(&claims.issuer, &claims.client_id) {
        Some(owner) => Owner {
            id: Some(owner.to_owned()),
            source: OwnerSource::ClientRegistry,
        },
        None => Owner {
            id: None,
            source: OwnerSource::None,
        },
    }
}
