//! credbroker: short-lived, narrowly scoped downstream credentials for MCP servers.
//!
//! See `ARCHITECTURE.md` for the flow of one request through these modules.

pub mod audit;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod gateway;
pub mod jose;
pub mod journal;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod providers;
pub mod record;
pub mod server;
pub mod template;
pub mod time;
pub mod token;
pub mod workload;

/// The process environment, read through a trait so tests never call `set_var`.
pub struct ProcessEnv;

impl credbroker_provider_api::Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// Test tokens signed with the fixture keys, shared by the unit tests (token, broker).
#[cfg(test)]
#[path = "../tests/support/forge.rs"]
pub(crate) mod forge;
