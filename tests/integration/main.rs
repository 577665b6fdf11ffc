//! Integration tests: the daemon as a separate process, against real components started by
//! the tests themselves (the npm `oidc-provider` authorization server; later OpenBao,
//! PostgreSQL and moto). One test binary; `support/` starts the components.

#![allow(unreachable_pub)]
// A test binary: `pub` in its modules is for its own modules.
// A test binary: its helpers (support/, setup functions) stop the test at the line that failed,
// which clippy's allow-expect-in-tests covers only inside `#[test]` functions.
#![allow(clippy::expect_used)]

mod abuse;
mod abuse_gateway;
mod audit;
mod aws;
mod check_config;
mod cli;
mod clients_python;
mod clients_registry;
mod clients_rust;
mod clients_typescript;
mod conformance;
mod defects;
mod e2e_github;
mod e2e_postgres;
mod exec;
mod gateway;
mod gateway_audit;
mod gateway_oauth;
mod gateway_upstreams;
mod github;
mod introspection;
mod keys;
mod lifecycle;
mod mcp_security;
mod oauth;
mod oauth_ops;
mod oauth_setup;
mod operations;
mod package;
mod probe;
mod quickstart;
mod rejections;
mod scopes;
mod secrets;
mod signals;
mod stock_clients;
#[path = "../support/mod.rs"]
mod support;
mod systemd;
mod vault;
