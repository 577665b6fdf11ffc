//! The command line: one binary for the daemon, the workload side and the operator side.
//!
//! Exit codes: 0 success, 1 refused or failed (a rejected token, a denied task, an unreachable
//! daemon), 2 bad usage or configuration. A closed stdout (`credbroker status | head -1`) ends
//! the command quietly, never with a panic.

/// `println!` that returns the write's error instead of panicking on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` likewise.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod admin;
mod audit;
mod blocks;
mod check;
mod clients;
mod exec;
mod manual;
mod mcp;
mod output;
mod probe;
mod progress;
mod task;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::providers::Registry;

#[derive(Parser)]
#[command(
    name = "credbroker",
    version,
    propagate_version = true,
    about = "Short-lived, narrowly scoped credentials for MCP servers"
)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `info`, `credbroker=debug`). Overrides $RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format. `auto`: native journald records when stderr is the journal (systemd sets
    /// JOURNAL_STREAM), plain lines otherwise.
    #[arg(long, global = true, value_enum, env = "CREDBROKER_LOG_FORMAT", default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Plain,
    Json,
    Journald,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        #[arg(long, short, env = "CREDBROKER_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file (and, with --online, reach the issuers).
    CheckConfig {
        #[arg(long, short, env = "CREDBROKER_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        online: bool,
    },
    /// Access-token tools.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// The workload side: begin, renew and end tasks over the broker socket.
    Task {
        #[command(subcommand)]
        command: task::TaskCommand,
    },
    /// Run a command with a task's credentials in its environment; the task is renewed while
    /// it runs and ended when it exits: `credbroker exec --grant G -- COMMAND…`.
    Exec(exec::ExecArgs),
    /// The operator side: list, show and revoke tasks over the admin socket.
    Tasks {
        #[command(subcommand)]
        command: admin::TasksCommand,
    },
    /// The daemon's status, over the admin socket.
    Status(admin::StatusArgs),
    /// Blocks: refuse a token, client, owner or subject whatever its token says (list, add, lift).
    Blocks {
        #[command(subcommand)]
        command: blocks::BlocksCommand,
    },
    /// The client registry: list, add, suspend, retire, activate.
    Clients {
        #[command(subcommand)]
        command: clients::ClientsCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Who got which credential: owner → agent → token → task → leases (table, JSON or DOT).
    Lineage(audit::LineageArgs),
    /// Finds naked and half-protected MCP servers: answers without a token, a 401 that leads
    /// nowhere, authorization servers unfit for MCP, tokens accepted that must be refused.
    /// Exit 2 when anything is critical.
    Probe(probe::ProbeArgs),
    /// An MCP server (stdio) for security teams: lineage, audit queries, live tasks and
    /// revocation as tools an AI client can call.
    Mcp(mcp::McpArgs),
    /// The MCP gateway: an OAuth 2.1 resource server in front of each `[[gateway]]`'s MCP
    /// server (its own file; it holds no provider credential or key).
    Gateway {
        #[arg(long)]
        config: PathBuf,
    },
    /// Write the manual pages (one per command) into a directory.
    Man(manual::ManArgs),
    /// Print a shell's completion script: `credbroker completions bash > …/credbroker`.
    Completions(manual::CompletionsArgs),
    /// Print a fresh key (64 hex digits): a journal, audit head or export key. With `--dir`,
    /// write what a fresh install needs instead: DIR/journal-key and DIR/audit-head-key, mode
    /// 0600, never over an existing file.
    Keygen {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs the command line with the providers in `registry`.
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref(), cli.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // The gateway's file says how many threads it runs on (a bad file is reported by `run`).
    if let Command::Gateway { config } = &cli.command
        && let Ok(file) = crate::config::gateway::GatewayFile::load(config)
    {
        builder.worker_threads(file.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli.command, registry))
}

async fn run(command: Command, registry: Registry) -> ExitCode {
    let env: Arc<dyn credbroker_provider_api::Env> = Arc::new(crate::ProcessEnv);
    let result = match command {
        Command::Serve { config } => crate::server::Daemon {
            config_path: config,
            registry,
            env,
        }
        .run()
        .await
        .map(|()| ExitCode::SUCCESS),
        Command::CheckConfig { config, online } => {
            check::run(&config, online, &registry, env.as_ref()).await
        }
        Command::Gateway { config } => match crate::config::gateway::GatewayFile::load(&config) {
            Ok(file) => crate::gateway::run(file).await.map(|()| ExitCode::SUCCESS),
            Err(e) => Err(e.into()),
        },
        Command::Probe(args) => probe::run(args).await,
        Command::Token { command } => token::run(command).await,
        Command::Task { command } => task::run(command).await,
        Command::Exec(args) => exec::run(args).await,
        Command::Man(args) => manual::man(&args),
        Command::Completions(args) => manual::completions(&args),
        Command::Tasks { command } => admin::run(command).await,
        Command::Status(args) => admin::status(args).await,
        Command::Blocks { command } => blocks::run(command).await,
        Command::Clients { command } => clients::run(command).await,
        Command::Audit { command } => audit::run(command),
        Command::Lineage(args) => audit::lineage(args),
        Command::Mcp(args) => mcp::run(args).await,
        Command::Keygen { dir: None } => match crate::keys::generate_hex() {
            Ok(k) => outln!("{}", k.as_str())
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::anyhow!(e)),
        },
        Command::Keygen { dir: Some(dir) } => install_keys(&dir),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`| head`): what it wanted, it got.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e);
            if e.downcast_ref::<crate::config::ConfigErrors>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The keys a fresh install needs, each named as the systemd credential it becomes.
///
/// A key that already exists is kept (a replaced journal key would orphan every revocation
/// handle sealed under the old one); only the missing ones are written, so a host with a
/// journal key but no audit head key can run this to add the one it lacks.
fn install_keys(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut wrote_any = false;
    for name in ["journal-key", "audit-head-key"] {
        let path = dir.join(name);
        let written = match std::fs::symlink_metadata(&path) {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_key_once(dir, name)?,
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        if written {
            wrote_any = true;
            outln!("wrote {} (0600)", path.display())?;
        } else {
            // Never the key itself: only that it is there.
            let _ = writeln!(std::io::stderr(), "{} exists: kept", path.display());
        }
    }
    if wrote_any {
        // The new names are durable only once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (syncing the directory after writing the keys)",
                    dir.display()
                )
            })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a fresh key to `dir/name` unless that file exists: `Ok(false)` if it does (it is
/// left untouched). The key goes to a private temporary file first, synced, then hard-linked
/// into place — the link fails if the name exists, so nothing is ever overwritten, and a failed
/// write never leaves an empty or partial key under the final name.
fn write_key_once(dir: &std::path::Path, name: &str) -> anyhow::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let key = crate::keys::generate_hex().map_err(anyhow::Error::msg)?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot create the temporary file {}: {e}",
                path.display(),
                tmp.display()
            )
        })?;
    // From here the temporary file is ours, and it is removed whatever happens.
    let linked = sync_and_link(f, key.as_bytes(), &tmp, &path);
    let removed = std::fs::remove_file(&tmp);
    let linked = linked.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    removed.map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (a leftover temporary copy of a key; delete it)",
            tmp.display()
        )
    })?;
    Ok(linked)
}

/// Writes `key` and a newline to `f` (the temporary file `tmp`), syncs it, and hard-links it
/// as `path`: `Ok(false)` if `path` exists by then (created since we looked), untouched.
fn sync_and_link(
    mut f: std::fs::File,
    key: &[u8],
    tmp: &std::path::Path,
    path: &std::path::Path,
) -> std::io::Result<bool> {
    use std::io::Write as _;
    f.write_all(key)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    match std::fs::hard_link(tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(level: Option<&str>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Plain,
        other => other,
    };
    if let LogFormat::Journald = format {
        // Native journal records: every field is a journal field (TASK_ID, LEASE_ID, GRANT,
        // OWNER, REASON…), so `journalctl -u credbroker TASK_ID=…` finds a task's lines.
        match tracing_journald::layer() {
            Ok(layer) => {
                // syslog's levels: INFO is "informational" (6), not tracing-journald's
                // default "notice" (5), so `journalctl -p notice` shows only what needs a look.
                let mut priorities = tracing_journald::PriorityMappings::new();
                priorities.info = tracing_journald::Priority::Informational;
                priorities.debug = tracing_journald::Priority::Debug;
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("credbroker".into())
                    .with_priority_mappings(priorities);
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => eprintln!("journald is not reachable ({e}); logging to stderr"),
        }
    }
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal who has not asked for none
        // (https://no-color.org), never into files or the journal.
        .with_ansi(colour_wanted(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => {
            JSON_ERRORS.store(true, std::sync::atomic::Ordering::Relaxed);
            builder.json().try_init()
        }
        _ => builder.try_init(),
    };
}

/// With `--log-format json`, the error a command ends with is a JSON log line like the rest.
static JSON_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `NO_COLOR` set to anything but the empty string turns colour off.
fn colour_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

fn report_error(e: &anyhow::Error) {
    if JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!(error = %format!("{e:#}"), "command failed");
    } else {
        eprintln!("error: {e:#}");
    }
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for a service whose stderr is the journal; it is
/// trusted only if stderr is still that stream (not when inherited by a child that redirected).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd as _;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    stream == format!("{}:{}", st.st_dev, st.st_ino)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn no_color_turns_colour_off_unless_empty() {
        assert!(super::colour_wanted(true, None));
        assert!(super::colour_wanted(true, Some(OsStr::new(""))));
        assert!(!super::colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!super::colour_wanted(false, None));
    }
}
