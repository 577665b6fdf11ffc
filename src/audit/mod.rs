//! The audit tools: verifying the chain (`verify`), queries and counts (`query`), lineage,
//! exports (JSON Lines, CSV, OCSF); their keys are [`crate::keys`]. They read the
//! journal; the record type itself is [`crate::record`].

mod ends;
pub mod export;
pub mod lineage;
pub mod ocsf;
pub mod query;
pub mod verify;

pub use crate::record::{AuditRecord, Outcome, PeerRecord, event};
