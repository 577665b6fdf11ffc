//! `credbroker mcp`: an MCP server (stdio) for security teams, over the journal and the admin
//! socket, so an AI client can answer "which agent called what, for whom" and act on it.
//!
//! Every tool answers with exactly the JSON the CLI prints for the same question (`lineage
//! --output json`, `audit query --output json`, `tasks list --output json`, `tasks revoke
//! --output json`), as `structuredContent` under one key, so what an assistant reports can be
//! checked against the CLI. It runs as the operator who starts it: the journal must be readable
//! and, for `tasks_list` and `revoke`, the admin socket reachable (the daemon's user,
//! `server.admin_uids`).

mod http;
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
    /// Serve Streamable HTTP on this loopback address instead of stdio, for `credbroker
    /// gateway` to front. Needs --config (its issuers check the tokens) and --resource.
    #[arg(long, requires_all = ["resource", "config"])]
    listen: Option<std::net::SocketAddr>,
    /// The audience tokens must carry over HTTP: the gateway's resource URL for this server.
    #[arg(long, requires = "listen")]
    resource: Option<String>,
}

pub(super) async fn run(args: McpArgs) -> anyhow::Result<ExitCode> {
    // Fail at start, not at the first tool call, when the journal cannot be read.
    let (_, config) = args.journal.open()?;
    let admin_socket = match (&args.admin_socket, &config) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => c.server.admin_socket.clone(),
        (None, None) => PathBuf::from(DEFAULT_ADMIN_SOCKET),
    };
    let server = tools::Security::new(args.journal, admin_socket, args.read_only);
    if let (Some(listen), Some(resource), Some(config)) = (args.listen, args.resource, config) {
        if !listen.ip().is_loopback() {
            anyhow::bail!("--listen {listen}: bind a loopback address; the gateway fronts it");
        }
        http::serve(listen, resource, &config, server).await?;
        return Ok(ExitCode::SUCCESS);
    }
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
