//! The command line: one binary for the daemon, the workload side and the operator side.
//!
//! Exit codes: 0 success, 1 refused or failed (a rejected token, a denied task, an unreachable
//! daemon), 2 bad usage or configuration.

mod admin;
mod audit;
mod check;
mod output;
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
    about = "Short-lived, narrowly scoped credentials for MCP servers"
)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `info`, `credbroker=debug`). Overrides $RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Plain,
    Json,
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
    /// The operator side: list, show and revoke tasks over the admin socket.
    Tasks {
        #[command(subcommand)]
        command: admin::TasksCommand,
    },
    /// The daemon's status, over the admin socket.
    Status(admin::StatusArgs),
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Print a fresh journal encryption key (64 hex digits) for `journal.key_file`.
    Keygen,
}

/// Runs the command line with the providers in `registry`.
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref(), cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        Command::Token { command } => token::run(command).await,
        Command::Task { command } => task::run(command).await,
        Command::Tasks { command } => admin::run(command).await,
        Command::Status(args) => admin::status(args).await,
        Command::Audit { command } => audit::run(command),
        Command::Keygen => match crate::journal::seal::generate_hex() {
            Ok(k) => {
                println!("{}", k.as_str());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<crate::config::ConfigErrors>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(level: Option<&str>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
