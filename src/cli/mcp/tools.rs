//! The tools. A question the CLI would refuse as bad usage (an unknown event, a malformed
//! fingerprint, a bad time) is a tool error the assistant can read and correct, never a crash;
//! nothing here ever returns a credential's secret (the journal keeps none in clear, the admin
//! API returns none).

use std::path::PathBuf;
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Value, json};

use super::http::{ADMIN_SCOPE, Caller};
use super::input::{AuditQueryInput, LineageInput, RevokeInput, TasksListInput};
use super::schema;
use crate::audit::{lineage, query};
use crate::cli::audit::{JournalArgs, groups_json, task_filter};
use crate::cli::{admin, output};

#[derive(Clone)]
pub(super) struct Security {
    journal: Arc<JournalArgs>,
    admin_socket: PathBuf,
    tool_router: ToolRouter<Self>,
}

type Answer = Result<CallToolResult, ErrorData>;

/// A tool error: the request was understood and refused or failed; the text says why.
fn refused(msg: impl std::fmt::Display) -> Answer {
    Ok(CallToolResult::error(vec![ContentBlock::text(format!(
        "{msg:#}"
    ))]))
}

fn answer(key: &str, v: Value) -> Answer {
    Ok(CallToolResult::structured(json!({ key: v })))
}

/// Runs a journal read off the async threads (SQLite blocks).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("the journal read stopped: {e}"))?
}

#[tool_router]
impl Security {
    pub(super) fn new(journal: JournalArgs, admin_socket: PathBuf, read_only: bool) -> Self {
        let mut tool_router = Self::tool_router();
        if read_only {
            tool_router.remove_route("revoke");
        }
        Self {
            journal: Arc::new(journal),
            admin_socket,
            tool_router,
        }
    }

    /// Who got which credential, as a tree: owner (the human) → agent (OAuth client) → access
    /// token (by fingerprint) → MCP call (when the task was begun for a call through the
    /// gateway) → task (tool, MCP server, process) → leases (the downstream credentials, with
    /// their state: active, revoked, expired). Filter by owner, client, token, task, grant,
    /// provider and time; with no filter, the newest tasks. Read from the journal; the same
    /// JSON as `credbroker lineage --output json`.
    #[tool(
        name = "lineage",
        output_schema = schema::lineage(),
        annotations(title = "Credential lineage", read_only_hint = true, open_world_hint = false)
    )]
    async fn lineage(&self, Parameters(input): Parameters<LineageInput>) -> Answer {
        let (filter, task, limit) = match input.filter() {
            Ok(f) => f,
            Err(e) => return refused(e),
        };
        let filter = match task_filter(&filter, task, limit) {
            Ok(f) => f,
            Err(e) => return refused(e),
        };
        let journal = self.journal.clone();
        let tree = blocking(move || {
            let (conn, _) = journal.open()?;
            Ok(lineage::build(&conn, &filter, limit)?)
        })
        .await;
        match tree.and_then(|t| Ok(serde_json::to_value(t)?)) {
            Ok(Value::Object(m)) => Ok(CallToolResult::structured(Value::Object(m))),
            Ok(_) => refused("the lineage did not serialise as an object"),
            Err(e) => refused(e),
        }
    }

    /// Counts audit records, grouped: e.g. every MCP call (`event: ["mcp_call"]`) in the last
    /// 24 hours (`since: "24h"`) grouped by `workload` (the MCP server called), `client` (the
    /// calling agent) and `owner` (its human), or refusals (`outcome: "denied"`) grouped by
    /// `reason`. Filters combine with AND. The same JSON as `credbroker audit query --output
    /// json`, under `groups`.
    #[tool(
        name = "audit_query",
        output_schema = schema::groups(),
        annotations(title = "Count audit records", read_only_hint = true, open_world_hint = false)
    )]
    async fn audit_query(&self, Parameters(input): Parameters<AuditQueryInput>) -> Answer {
        let (records, keys) = match input.records() {
            Ok(r) => r,
            Err(e) => return refused(e),
        };
        let filter = match records.filter() {
            Ok(f) => f,
            Err(e) => return refused(e),
        };
        let journal = self.journal.clone();
        let counted = blocking(move || {
            let (conn, _) = journal.open()?;
            let groups = query::count(&conn, &filter, &keys)?;
            Ok(groups_json(&keys, &groups))
        })
        .await;
        match counted {
            Ok(rows) => answer("groups", Value::Array(rows)),
            Err(e) => refused(e),
        }
    }

    /// Lists tasks (live ones unless `include_ended`), newest first, with their principal
    /// (owner, agent, token fingerprint, scopes) and leases, from the running daemon. The same
    /// JSON as `credbroker tasks list --output json`, under `tasks`.
    #[tool(
        name = "tasks_list",
        output_schema = schema::tasks(),
        annotations(title = "List tasks", read_only_hint = true, open_world_hint = false)
    )]
    async fn tasks_list(&self, Parameters(input): Parameters<TasksListInput>) -> Answer {
        let (selector, all, limit) = input.selector();
        let listed = async {
            let mut c = admin::admin_client(&self.admin_socket).await?;
            admin::list(&mut c, selector.selector(), all, limit).await
        }
        .await;
        match listed {
            Ok(tasks) => answer(
                "tasks",
                Value::Array(tasks.iter().map(output::task_json).collect()),
            ),
            Err(e) => refused(e),
        }
    }

    /// Ends tasks now and revokes their credentials at the providers: one task by `task_id`,
    /// or every live task matching the selector (owner, client, subject, jti, grant, provider,
    /// workload; fields combine with AND). `reason` is required and recorded in the audit log.
    /// Irreversible: the credentials stop working. The same JSON as `credbroker tasks revoke
    /// --output json`.
    #[tool(
        name = "revoke",
        output_schema = schema::revoked(),
        annotations(
            title = "Revoke credentials",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn revoke(
        &self,
        Parameters(input): Parameters<RevokeInput>,
        ctx: RequestContext<RoleServer>,
    ) -> Answer {
        // Over HTTP the verified token says who asks; over stdio it is the local operator.
        let caller = ctx
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<Caller>());
        if caller.is_some_and(|c| !c.admin) {
            return refused(format!(
                "insufficient_scope: revoke needs the {ADMIN_SCOPE} scope"
            ));
        }
        let (task, selector, mut reason) = match input.target() {
            Ok(t) => t,
            Err(e) => return refused(e),
        };
        if let Some(c) = caller {
            reason = format!(
                "{reason} (by {} via client {} over credbroker mcp)",
                c.subject, c.client_id
            );
        }
        let revoked = async {
            let mut c = admin::admin_client(&self.admin_socket).await?;
            admin::revoke(&mut c, task, selector.selector(), reason).await
        }
        .await;
        match revoked {
            Ok(ids) => answer("revoked", json!(ids)),
            Err(e) => refused(e),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Security {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("credbroker", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "credbroker issues short-lived downstream credentials to MCP servers for the \
                 OAuth-authenticated agents that call them, and records every MCP call and \
                 credential with its human owner. Use audit_query to count and group what \
                 happened (MCP calls are event mcp_call; group by workload = the MCP server, \
                 client = the agent, owner = the human), lineage to see who holds or held which \
                 credential and why, tasks_list for what is live now, and revoke to end tasks \
                 and kill their credentials (give a reason). Times are RFC 3339 or durations \
                 ago such as 24h.",
            )
    }
}
