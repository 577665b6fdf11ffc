//! `credbroker mcp`: an MCP server (stdio) for security teams, over the journal and the admin
//! socket, so an AI client can answer "which agent called what, for whom" and act on it.
//!
//! Every tool answers with exactly the JSON the CLI prints for the same question (`lineage
//! --output json`, `audit query --output json`, `tasks list --output json`, `tasks revoke
//! --output json`), as `structuredContent` under one key, so what an assistant reports can be
//! checked against the CLI. It runs as the operator who starts it: the journal must be readable
//! and, for `tasks_list` and `revoke`, the admin socket reachable (the daemon's user,
//! `server.admin_uids`).

mod input;
mod schema;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use rmcp::ServiceExt as _;

use super::audit::JournalArgs;
use crate::client::DEFAULT_ADMIN_SOCKET;

#[derive(Args)]
pub(super) struct McpArgs {
    #[command(flatten)]
    journal: JournalArgs,
    /// The admin socket (default: the configuration's `server.admin_socket`, else
    /// /run/credbroker/admin.sock).
    #[arg(long, env = "CREDBROKER_ADMIN_SOCKET")]
    admin_socket: Option<PathBuf>,
    /// Leave out the `revoke` tool: the assistant can look, not act.
    #[arg(long)]
    read_only: bool,
}

pub(super) async fn run(args: McpArgs) -> anyhow::Result<ExitCode> {
    let admin_socket = match (&args.admin_socket, &args.journal.config) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => crate::config::Config::load(c)?.server.admin_socket,
        (None, None) => PathBuf::from(DEFAULT_ADMIN_SOCKET),
    };
    // Fail at start, not at the first tool call, when the journal cannot be read.
    args.journal.open()?;
    let server = tools::Security::new(args.journal, admin_socket, args.read_only);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP server on stdin/stdout")?;
    running
        .waiting()
        .await
        .context("the MCP session on stdin/stdout")?;
    Ok(ExitCode::SUCCESS)
}
