//! `credbroker tasks list|show|revoke` and `credbroker status`: the operator side.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::output::{self, Output};
use crate::client::{self, DEFAULT_ADMIN_SOCKET, Refused};
use crate::proto::v1;
use crate::proto::v1::admin_client::AdminClient;

#[derive(Args)]
pub(super) struct AdminConn {
    /// The admin socket.
    #[arg(long, env = "CREDBROKER_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub(super) admin_socket: PathBuf,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub(super) output: Output,
}

#[derive(Args, Default)]
pub(super) struct SelectorArgs {
    #[arg(long)]
    pub(super) jti: Option<String>,
    #[arg(long)]
    pub(super) subject: Option<String>,
    #[arg(long)]
    pub(super) client: Option<String>,
    #[arg(long)]
    pub(super) owner: Option<String>,
    #[arg(long)]
    pub(super) grant: Option<String>,
    #[arg(long)]
    pub(super) provider: Option<String>,
    #[arg(long)]
    pub(super) workload: Option<String>,
}

impl SelectorArgs {
    pub(super) fn selector(self) -> v1::Selector {
        v1::Selector {
            jti: self.jti.unwrap_or_default(),
            subject: self.subject.unwrap_or_default(),
            client_id: self.client.unwrap_or_default(),
            owner: self.owner.unwrap_or_default(),
            grant: self.grant.unwrap_or_default(),
            provider: self.provider.unwrap_or_default(),
            workload: self.workload.unwrap_or_default(),
        }
    }
}

#[derive(Subcommand)]
pub(super) enum TasksCommand {
    /// List tasks, newest first (live ones unless --all).
    List {
        #[command(flatten)]
        conn: AdminConn,
        #[command(flatten)]
        filter: SelectorArgs,
        /// Include ended tasks.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one task and its leases.
    Show {
        #[command(flatten)]
        conn: AdminConn,
        task: String,
    },
    /// End tasks and revoke their credentials: one by id, or every live task matching a selector.
    Revoke {
        #[command(flatten)]
        conn: AdminConn,
        task: Option<String>,
        #[command(flatten)]
        selector: SelectorArgs,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    conn: AdminConn,
}

async fn connect(conn: &AdminConn) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    admin_client(&conn.admin_socket).await
}

pub(super) async fn admin_client(
    socket: &std::path::Path,
) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    Ok(AdminClient::new(client::channel(socket).await?))
}

/// The tasks `tasks list` shows, newest first.
pub(super) async fn list(
    c: &mut AdminClient<tonic::transport::Channel>,
    selector: v1::Selector,
    include_ended: bool,
    limit: u32,
) -> anyhow::Result<Vec<v1::Task>> {
    let req = v1::ListTasksRequest {
        include_ended,
        filter: Some(selector),
        limit,
        after: String::new(),
    };
    Ok(c.list_tasks(req)
        .await
        .map_err(Refused::from)?
        .into_inner()
        .tasks)
}

/// Ends one task by id, or every live task the selector matches: the ids revoked.
pub(super) async fn revoke(
    c: &mut AdminClient<tonic::transport::Channel>,
    task: Option<String>,
    sel: v1::Selector,
    reason: String,
) -> anyhow::Result<Vec<String>> {
    match task {
        Some(id) => {
            if sel != v1::Selector::default() {
                bail!("give a task id or a selector, not both");
            }
            let t = c
                .revoke_task(v1::RevokeTaskRequest {
                    task_id: id,
                    reason,
                })
                .await
                .map_err(Refused::from)?;
            Ok(vec![t.into_inner().task.unwrap_or_default().id])
        }
        None => Ok(c
            .revoke(v1::RevokeRequest {
                selector: Some(sel),
                reason,
            })
            .await
            .map_err(Refused::from)?
            .into_inner()
            .task_ids),
    }
}

pub(super) async fn run(cmd: TasksCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TasksCommand::List {
            conn,
            filter,
            all,
            limit,
        } => {
            let mut c = connect(&conn).await?;
            let tasks = list(&mut c, filter.selector(), all, limit).await?;
            match conn.output {
                Output::Json => {
                    let v: Vec<_> = tasks.iter().map(output::task_json).collect();
                    outln!("{}", serde_json::to_string_pretty(&v)?)?;
                }
                Output::Table => out!("{}", output::tasks_table(&tasks))?,
            }
        }
        TasksCommand::Show { conn, task } => {
            let mut c = connect(&conn).await?;
            let t = c
                .get_task(v1::GetTaskRequest { task_id: task })
                .await
                .map_err(Refused::from)?
                .into_inner();
            let t = t.task.unwrap_or_default();
            match conn.output {
                Output::Json => {
                    outln!("{}", serde_json::to_string_pretty(&output::task_json(&t))?)?
                }
                Output::Table => out!("{}", output::task_detail(&t))?,
            }
        }
        TasksCommand::Revoke {
            conn,
            task,
            selector,
            reason,
        } => {
            let mut c = connect(&conn).await?;
            let sel = selector.selector();
            let ticker = super::progress::Ticker::start("revoking");
            let ids = revoke(&mut c, task, sel, reason).await?;
            drop(ticker);
            match conn.output {
                Output::Json => outln!("{}", serde_json::json!({ "revoked": ids }))?,
                Output::Table => {
                    for id in &ids {
                        outln!("revoked {id}")?;
                    }
                    if ids.is_empty() {
                        outln!("no live task matched")?;
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut c = connect(&args.conn).await?;
    let s = c
        .status(v1::StatusRequest {})
        .await
        .map_err(Refused::from)?
        .into_inner();
    match args.conn.output {
        Output::Json => {
            let doc = serde_json::json!({
                "version": s.version, "uptime_seconds": s.uptime_seconds,
                "active_tasks": s.active_tasks, "active_leases": s.active_leases,
                "revocation_backlog": s.revocation_backlog, "config_loaded_at": s.config_loaded_at,
                "issuers": s.issuers.iter().map(|i| serde_json::json!({
                    "url": i.url, "keys": i.keys, "last_refresh": i.last_refresh, "last_error": i.last_error,
                })).collect::<Vec<_>>(),
                "providers": s.providers.iter().map(|p| serde_json::json!({
                    "name": p.name, "kind": p.kind, "healthy": p.healthy, "detail": p.detail,
                })).collect::<Vec<_>>(),
            });
            outln!("{}", serde_json::to_string_pretty(&doc)?)?;
        }
        Output::Table => {
            outln!(
                "credbroker {} up {}s, configuration loaded {}",
                s.version,
                s.uptime_seconds,
                s.config_loaded_at
            )?;
            outln!(
                "active tasks {}  active leases {}  revocation backlog {}",
                s.active_tasks,
                s.active_leases,
                s.revocation_backlog
            )?;
            let mut rows = vec![vec![
                "ISSUER".into(),
                "KEYS".into(),
                "LAST REFRESH".into(),
                "LAST ERROR".into(),
            ]];
            rows.extend(s.issuers.iter().map(|i| {
                vec![
                    i.url.clone(),
                    i.keys.to_string(),
                    i.last_refresh.clone(),
                    i.last_error.clone(),
                ]
            }));
            out!("{}", output::table(&rows))?;
            let mut rows = vec![vec![
                "PROVIDER".into(),
                "KIND".into(),
                "HEALTHY".into(),
                "DETAIL".into(),
            ]];
            rows.extend(s.providers.iter().map(|p| {
                vec![
                    p.name.clone(),
                    p.kind.clone(),
                    p.healthy.to_string(),
                    p.detail.clone(),
                ]
            }));
            out!("{}", output::table(&rows))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
