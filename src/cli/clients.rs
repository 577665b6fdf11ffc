//! `credbroker clients list|add|suspend|retire|activate`: the client registry.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use super::admin::{AdminConn, admin_client};
use super::output::{self, Output};
use crate::client::Refused;
use crate::proto::v1;

#[derive(Args)]
pub(super) struct Which {
    /// The client id.
    id: String,
    /// Its issuer (needed when the daemon has more than one).
    #[arg(long, default_value = "")]
    issuer: String,
}

#[derive(Subcommand)]
pub(super) enum ClientsCommand {
    /// Every registered client: the configuration's and operators' (which win).
    List {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Register a client (or replace its entry), active.
    Add {
        #[command(flatten)]
        conn: AdminConn,
        #[command(flatten)]
        which: Which,
        /// The human or team accountable for it.
        #[arg(long)]
        owner: Option<String>,
        /// When its registration ends (RFC 3339, e.g. 2027-06-30T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
        /// A grant it may ask for (repeat; none: whatever its workloads allow).
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
    /// Refuse its tokens for now, and end its live tasks.
    Suspend {
        #[command(flatten)]
        conn: AdminConn,
        #[command(flatten)]
        which: Which,
    },
    /// Refuse its tokens for good, and end its live tasks.
    Retire {
        #[command(flatten)]
        conn: AdminConn,
        #[command(flatten)]
        which: Which,
    },
    /// Make a suspended client active again.
    Activate {
        #[command(flatten)]
        conn: AdminConn,
        #[command(flatten)]
        which: Which,
    },
}

fn client_json(c: &v1::Client) -> serde_json::Value {
    json!({
        "issuer": c.issuer, "client_id": c.client_id, "owner": c.owner, "expires": c.expires,
        "grants": c.grants, "status": c.status, "source": c.source,
    })
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn print_set(conn: &AdminConn, r: v1::SetClientResponse) -> anyhow::Result<()> {
    let c = r.client.unwrap_or_default();
    match conn.output {
        Output::Json => outln!(
            "{}",
            json!({"client": client_json(&c), "ending_tasks": r.task_ids})
        )?,
        Output::Table => {
            outln!("client {} is {}", c.client_id, c.status)?;
            for t in &r.task_ids {
                outln!("ending {t}")?;
            }
        }
    }
    Ok(())
}

pub(super) async fn run(cmd: ClientsCommand) -> anyhow::Result<ExitCode> {
    let status_of = |cmd: &ClientsCommand| match cmd {
        ClientsCommand::Suspend { .. } => "suspended",
        ClientsCommand::Retire { .. } => "retired",
        _ => "active",
    };
    let status = status_of(&cmd);
    match cmd {
        ClientsCommand::List { conn } => {
            let mut c = admin_client(&conn.admin_socket).await?;
            let clients = c
                .list_clients(v1::ListClientsRequest {})
                .await
                .map_err(Refused::from)?
                .into_inner()
                .clients;
            match conn.output {
                Output::Json => {
                    let v: Vec<_> = clients.iter().map(client_json).collect();
                    outln!("{}", serde_json::to_string_pretty(&v)?)?;
                }
                Output::Table => {
                    let mut rows = vec![
                        ["CLIENT", "STATUS", "OWNER", "EXPIRES", "GRANTS", "SOURCE"]
                            .map(String::from)
                            .to_vec(),
                    ];
                    for c in &clients {
                        rows.push(vec![
                            c.client_id.clone(),
                            c.status.clone(),
                            dash(&c.owner),
                            dash(&c.expires),
                            dash(&c.grants.join(",")),
                            c.source.clone(),
                        ]);
                    }
                    out!("{}", output::table(&rows))?;
                }
            }
        }
        ClientsCommand::Add {
            conn,
            which,
            owner,
            expires,
            grants,
        } => {
            let mut c = admin_client(&conn.admin_socket).await?;
            let r = c
                .set_client(v1::SetClientRequest {
                    client: Some(v1::Client {
                        issuer: which.issuer,
                        client_id: which.id,
                        owner: owner.unwrap_or_default(),
                        expires: expires.unwrap_or_default(),
                        grants,
                        status: "active".into(),
                        source: String::new(),
                    }),
                })
                .await
                .map_err(Refused::from)?
                .into_inner();
            print_set(&conn, r)?;
        }
        ClientsCommand::Suspend { conn, which }
        | ClientsCommand::Retire { conn, which }
        | ClientsCommand::Activate { conn, which } => {
            let mut c = admin_client(&conn.admin_socket).await?;
            let r = c
                .set_client_status(v1::SetClientStatusRequest {
                    issuer: which.issuer,
                    client_id: which.id,
                    status: status.into(),
                })
                .await
                .map_err(Refused::from)?
                .into_inner();
            print_set(&conn, r)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
