//! `credbroker task begin|renew|end`: the workload side, over the broker socket.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::output::{self, Output};
use crate::client::{self, DEFAULT_BROKER_SOCKET, Refused};
use crate::proto::v1;
use crate::proto::v1::broker_client::BrokerClient;

#[derive(Args)]
pub(super) struct Conn {
    /// The broker socket.
    #[arg(long, env = "CREDBROKER_SOCKET", default_value = DEFAULT_BROKER_SOCKET)]
    socket: PathBuf,
}

#[derive(Args)]
pub(super) struct TokenSource {
    /// Read the access token from this file (`-` for stdin). Default: $CREDBROKER_TOKEN, else stdin.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    Env,
    CredentialProcess,
}

#[derive(Subcommand)]
pub(super) enum TaskCommand {
    /// Begin a task: validate the token, issue a credential per grant, print them.
    Begin {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        token: TokenSource,
        /// The MCP tool about to run.
        #[arg(long)]
        tool: String,
        /// A grant to request (repeat for several).
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        /// Narrow a list parameter: GRANT.PARAM=v1,v2 (repeatable).
        #[arg(long = "narrow")]
        narrow: Vec<String>,
        /// Wanted lifetime, e.g. 10m (capped by policy and the token's expiry).
        #[arg(long)]
        ttl: Option<String>,
        /// The MCP call this task serves: the `Credbroker-Call` header `credbroker gateway`
        /// added to the request (links call → task in the lineage).
        #[arg(long = "call-id")]
        call_id: Option<String>,
        /// json | env | credential-process (`--format` is accepted too).
        #[arg(long = "output", alias = "format", value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Extend a task (needs a valid token for the same client and subject).
    Renew {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        token: TokenSource,
        #[arg(long)]
        task: String,
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// End a task and revoke its credentials.
    End {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        task: String,
        #[arg(long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
}

fn read_token(src: &TokenSource) -> anyhow::Result<Zeroizing<String>> {
    let mut buf = Zeroizing::new(String::new());
    match &src.token_file {
        Some(p) if p.as_os_str() == "-" => {
            std::io::stdin()
                .read_to_string(&mut buf)
                .context("reading the token from stdin")?;
        }
        Some(p) => {
            *buf =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        }
        None => match std::env::var("CREDBROKER_TOKEN") {
            Ok(t) => *buf = t,
            Err(_) => {
                std::io::stdin()
                    .read_to_string(&mut buf)
                    .context("reading the token from stdin")?;
            }
        },
    }
    let trimmed = Zeroizing::new(buf.trim().to_string());
    if trimmed.is_empty() {
        bail!("no access token given (use --token-file, $CREDBROKER_TOKEN or stdin)");
    }
    Ok(trimmed)
}

fn ttl_seconds(ttl: &Option<String>) -> anyhow::Result<Option<u32>> {
    ttl.as_deref()
        .map(|t| {
            let d = crate::config::parse_duration(t).map_err(anyhow::Error::msg)?;
            // Whole seconds on the wire: below one second would round to none at all.
            if d < std::time::Duration::from_secs(1) {
                bail!("--ttl {t}: a task lives at least 1s");
            }
            u32::try_from(d.as_secs()).context("ttl too long")
        })
        .transpose()
}

fn grant_requests(grants: &[String], narrow: &[String]) -> anyhow::Result<Vec<v1::GrantRequest>> {
    let mut out: Vec<v1::GrantRequest> = grants
        .iter()
        .map(|g| v1::GrantRequest {
            name: g.clone(),
            narrow: HashMap::new(),
        })
        .collect();
    for n in narrow {
        let (lhs, values) = n
            .split_once('=')
            .with_context(|| format!("--narrow {n:?}: expected GRANT.PARAM=v1,v2"))?;
        let (grant, param) = lhs
            .split_once('.')
            .with_context(|| format!("--narrow {n:?}: expected GRANT.PARAM=v1,v2"))?;
        let g = out
            .iter_mut()
            .find(|g| g.name == grant)
            .with_context(|| format!("--narrow names grant {grant:?}, which is not requested"))?;
        g.narrow.insert(
            param.into(),
            v1::StringList {
                values: values.split(',').map(str::to_owned).collect(),
            },
        );
    }
    Ok(out)
}

pub(super) async fn run(cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TaskCommand::Begin {
            conn,
            token,
            tool,
            grants,
            narrow,
            ttl,
            call_id,
            format,
        } => {
            let token = read_token(&token)?;
            let request = v1::BeginTaskRequest {
                token: token.to_string(),
                tool,
                grants: grant_requests(&grants, &narrow)?,
                ttl_seconds: ttl_seconds(&ttl)?,
                idempotency_key: None,
                call_id,
            };
            let resp = client::begin_task(&conn.socket, request).await?;
            let task = resp.task.unwrap_or_default();
            let written = match format {
                Format::Json => {
                    let doc = serde_json::json!({
                        "task": output::task_json(&task),
                        "credentials": output::credentials_json(&resp.credentials),
                    });
                    serde_json::to_string_pretty(&doc)
                        .map_err(anyhow::Error::from)
                        .and_then(|d| Ok(outln!("{d}")?))
                }
                Format::Env => Ok(out!("{}", output::env_lines(&task.id, &resp.credentials))?),
                Format::CredentialProcess => output::credential_process(&resp.credentials)
                    .and_then(|doc| Ok(serde_json::to_string(&doc)?))
                    .and_then(|d| Ok(outln!("{d}")?)),
            };
            if let Err(e) = written {
                // Credentials nobody received must not stay alive until the task expires.
                let ended = match client::end_task(&conn.socket, &task.id).await {
                    Ok(t) => format!("ended ({})", t.state),
                    Err(end) => format!("NOT ended ({end:#}): end it with `credbroker task end`"),
                };
                bail!(
                    "{e:#}; task {} was not delivered, so it was {ended}",
                    task.id
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Renew {
            conn,
            token,
            task,
            ttl,
            output,
        } => {
            let token = read_token(&token)?;
            let mut client = BrokerClient::new(client::channel(&conn.socket).await?);
            let resp = client
                .renew_task(v1::RenewTaskRequest {
                    task_id: task,
                    token: token.to_string(),
                    ttl_seconds: ttl_seconds(&ttl)?,
                })
                .await
                .map_err(Refused::from)?
                .into_inner();
            print_task(&resp.task.unwrap_or_default(), output)?;
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::End { conn, task, output } => {
            let mut client = BrokerClient::new(client::channel(&conn.socket).await?);
            let ticker =
                super::progress::Ticker::start("ending the task: revoking its credentials");
            let resp = client
                .end_task(v1::EndTaskRequest { task_id: task })
                .await
                .map_err(Refused::from)?
                .into_inner();
            // The progress line is cleared before the answer is printed on the same terminal.
            drop(ticker);
            print_task(&resp.task.unwrap_or_default(), output)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_task(task: &v1::Task, shape: Output) -> anyhow::Result<()> {
    match shape {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&output::task_json(task))?
        )?,
        Output::Table => out!("{}", output::task_detail(task))?,
    }
    Ok(())
}
