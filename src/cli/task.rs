//! `credbroker task begin|renew|end`: the workload side, over the broker socket.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use credbroker_client::{BeginTask, Broker, Narrow, SecretString};
use zeroize::Zeroizing;

use super::output::{self, Output};
use crate::client::DEFAULT_BROKER_SOCKET;
use crate::proto::v1;

#[derive(Args)]
pub(super) struct Conn {
    /// The broker socket.
    #[arg(long, env = "CREDBROKER_SOCKET", default_value = DEFAULT_BROKER_SOCKET)]
    socket: PathBuf,
}

impl Conn {
    /// Connects; a BeginTask or EndTask that has to wait for the daemon (a restart) says so,
    /// once, to a person at a terminal (a script sees only the outcome).
    pub(super) async fn broker(&self) -> anyhow::Result<Broker> {
        Ok(Broker::connect_waiting(&self.socket, tell_waiting)
            .await?
            .on_retry(tell_waiting))
    }
}

fn tell_waiting(e: &credbroker_client::Error) {
    use std::io::IsTerminal as _;
    if std::io::stderr().is_terminal() {
        eprintln!(
            "{e:#}; retrying for up to {}s…",
            credbroker_client::RETRY_FOR.as_secs()
        );
    }
}

#[derive(Args)]
pub(super) struct TokenSource {
    /// Read the access token from this file (`-` for stdin). Default: $CREDBROKER_TOKEN, else stdin.
    #[arg(long)]
    pub(super) token_file: Option<PathBuf>,
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
        /// json | env | credential-process (`--format` is accepted too). A `credential_process`
        /// profile begins a new task at every SDK credential refresh, and nobody ends them: they
        /// are left to the expiry reaper (a 3-call boto3 session made 5 tasks). For a process
        /// that lives longer than one call, use `credbroker exec`, which ends its task.
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

pub(super) fn read_token(src: &TokenSource) -> anyhow::Result<SecretString> {
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
    let trimmed = buf.trim();
    if trimmed.is_empty() {
        bail!("no access token given (use --token-file, $CREDBROKER_TOKEN or stdin)");
    }
    Ok(SecretString::from(trimmed))
}

pub(super) fn ttl(ttl: &Option<String>) -> anyhow::Result<Option<std::time::Duration>> {
    ttl.as_deref()
        .map(|t| crate::config::parse_duration(t).map_err(|e| anyhow::anyhow!("--ttl {t}: {e}")))
        .transpose()
}

pub(super) fn narrowings(narrow: &[String]) -> anyhow::Result<Vec<Narrow>> {
    narrow
        .iter()
        .map(|n| {
            let parsed = n.split_once('=').and_then(|(lhs, values)| {
                let (grant, param) = lhs.split_once('.')?;
                Some(Narrow {
                    grant: grant.into(),
                    param: param.into(),
                    values: values.split(',').map(str::to_owned).collect(),
                })
            });
            parsed.with_context(|| format!("--narrow {n:?}: expected GRANT.PARAM=v1,v2"))
        })
        .collect()
}

pub(super) async fn run(cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TaskCommand::Begin {
            conn,
            token,
            tool,
            grants,
            narrow,
            ttl: wanted,
            call_id,
            format,
        } => {
            let begin = BeginTask {
                ttl: ttl(&wanted)?,
                narrow: narrowings(&narrow)?,
                call_id,
                ..BeginTask::new(read_token(&token)?, tool, grants)
            };
            let task = conn.broker().await?.begin(begin).await?;
            let creds = task.credentials();
            let written = match format {
                Format::Json => {
                    let doc = serde_json::json!({
                        "task": output::task_json(task.record()),
                        "credentials": output::credentials_json(creds),
                    });
                    serde_json::to_string_pretty(&doc)
                        .map_err(anyhow::Error::from)
                        .and_then(|d| Ok(outln!("{d}")?))
                }
                Format::Env => Ok(out!("{}", output::env_lines(task.id(), creds))?),
                Format::CredentialProcess => output::credential_process(creds)
                    .and_then(|doc| Ok(serde_json::to_string(&doc)?))
                    .and_then(|d| Ok(outln!("{d}")?)),
            };
            if let Err(e) = written {
                // Credentials nobody received must not stay alive until the task expires.
                let id = task.id().to_string();
                let ended = match task.end().await {
                    Ok(t) => format!("ended ({})", t.state),
                    Err(end) => format!("NOT ended ({end:#}): end it with `credbroker task end`"),
                };
                bail!("{e:#}; task {id} was not delivered, so it was {ended}");
            }
            // Delivered: the task is the caller's now, to end with `task end` (or to expire).
            task.detach();
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Renew {
            conn,
            token,
            task,
            ttl: wanted,
            output,
        } => {
            let token = read_token(&token)?;
            let broker = conn.broker().await?;
            let renewed = broker.renew(&task, &token, ttl(&wanted)?).await?;
            print_task(&renewed, output)?;
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::End { conn, task, output } => {
            let broker = conn.broker().await?;
            let ticker =
                super::progress::Ticker::start("ending the task: revoking its credentials");
            let ended = broker.end(&task).await?;
            // The progress line is cleared before the answer is printed on the same terminal.
            drop(ticker);
            print_task(&ended.task, output)?;
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
