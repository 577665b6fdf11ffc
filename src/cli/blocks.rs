//! `credbroker blocks list|add|lift`: what the broker refuses whatever the token says.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use super::admin::{AdminConn, admin_client};
use super::output::{self, Output};
use crate::client::Refused;
use crate::proto::v1;

#[derive(Args)]
#[group(required = true, multiple = false)]
pub(super) struct Target {
    /// One token, by its jti (with --issuer).
    #[arg(long)]
    jti: Option<String>,
    /// Every token of an OAuth client (with --issuer).
    #[arg(long)]
    client: Option<String>,
    /// Every token attributed to a human owner (any issuer unless --issuer).
    #[arg(long)]
    owner: Option<String>,
    /// Every token of a subject (with --issuer).
    #[arg(long)]
    subject: Option<String>,
}

impl Target {
    fn kind_value(self) -> (&'static str, String) {
        match (self.jti, self.client, self.owner, self.subject) {
            (Some(v), ..) => ("jti", v),
            (_, Some(v), ..) => ("client", v),
            (_, _, Some(v), _) => ("owner", v),
            (.., Some(v)) => ("subject", v),
            _ => ("", String::new()),
        }
    }
}

#[derive(Subcommand)]
pub(super) enum BlocksCommand {
    /// Blocks in force (with --all, lifted and lapsed ones too), newest first.
    List {
        #[command(flatten)]
        conn: AdminConn,
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Refuse a token, client, owner or subject, and end its live tasks.
    Add {
        #[command(flatten)]
        conn: AdminConn,
        #[command(flatten)]
        target: Target,
        /// The issuer the jti, client or subject belongs to.
        #[arg(long)]
        issuer: Option<String>,
        /// How long (`30m`, `12h`, `7d`; at most 30 days).
        #[arg(long = "for", default_value = "1h")]
        duration: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a block before its time.
    Lift {
        #[command(flatten)]
        conn: AdminConn,
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn block_json(b: &v1::Block) -> serde_json::Value {
    json!({
        "id": b.id, "kind": b.kind, "issuer": b.issuer, "value": b.value,
        "created_at": b.created_at, "until": b.until, "reason": b.reason, "source": b.source,
        "lifted_at": b.lifted_at, "lifted_by": b.lifted_by,
    })
}

fn table(blocks: &[v1::Block]) -> String {
    let mut rows = vec![
        ["BLOCK", "KIND", "VALUE", "UNTIL", "SOURCE", "LIFTED"]
            .map(String::from)
            .to_vec(),
    ];
    for b in blocks {
        rows.push(vec![
            b.id.clone(),
            b.kind.clone(),
            b.value.clone(),
            b.until.clone(),
            b.source.clone(),
            if b.lifted_at.is_empty() {
                "-".into()
            } else {
                b.lifted_at.clone()
            },
        ]);
    }
    output::table(&rows)
}

pub(super) async fn run(cmd: BlocksCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BlocksCommand::List { conn, all, limit } => {
            let mut c = admin_client(&conn.admin_socket).await?;
            let blocks = c
                .list_blocks(v1::ListBlocksRequest { all, limit })
                .await
                .map_err(Refused::from)?
                .into_inner()
                .blocks;
            match conn.output {
                Output::Json => {
                    let v: Vec<_> = blocks.iter().map(block_json).collect();
                    outln!("{}", serde_json::to_string_pretty(&v)?)?;
                }
                Output::Table => out!("{}", table(&blocks))?,
            }
        }
        BlocksCommand::Add {
            conn,
            target,
            issuer,
            duration,
            reason,
        } => {
            let seconds = crate::config::parse_duration(&duration)
                .map_err(|e| anyhow::anyhow!("--for {duration:?}: {e}"))?
                .as_secs();
            let (kind, value) = target.kind_value();
            let mut c = admin_client(&conn.admin_socket).await?;
            let r = c
                .add_block(v1::AddBlockRequest {
                    kind: kind.into(),
                    issuer: issuer.unwrap_or_default(),
                    value,
                    seconds,
                    reason,
                })
                .await
                .map_err(Refused::from)?
                .into_inner();
            let b = r.block.unwrap_or_default();
            match conn.output {
                Output::Json => outln!(
                    "{}",
                    json!({"block": block_json(&b), "ending_tasks": r.task_ids})
                )?,
                Output::Table => {
                    outln!(
                        "blocked {} {} until {} (block {})",
                        b.kind,
                        b.value,
                        b.until,
                        b.id
                    )?;
                    for t in &r.task_ids {
                        outln!("ending {t}")?;
                    }
                }
            }
        }
        BlocksCommand::Lift { conn, id, reason } => {
            let mut c = admin_client(&conn.admin_socket).await?;
            let b = c
                .lift_block(v1::LiftBlockRequest { id, reason })
                .await
                .map_err(Refused::from)?
                .into_inner()
                .block
                .unwrap_or_default();
            match conn.output {
                Output::Json => outln!("{}", block_json(&b))?,
                Output::Table => outln!("lifted block {} ({} {})", b.id, b.kind, b.value)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
