//! `credbroker audit export`: reads the journal file directly (read-only), so it works beside
//! a running daemon and without one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::config::Config;
use crate::journal::Journal;
use crate::time::parse_when;

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum Format {
    Jsonl,
}

#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Export audit records, oldest first.
    Export {
        /// Find the journal through this configuration.
        #[arg(long, short, env = "CREDBROKER_CONFIG", conflicts_with = "journal")]
        config: Option<PathBuf>,
        /// The journal file itself.
        #[arg(long)]
        journal: Option<PathBuf>,
        /// Start: an RFC 3339 time, or a duration meaning that long ago (24h).
        #[arg(long, default_value = "100y")]
        since: String,
        /// End (exclusive); default now.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
    },
}

pub(super) fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Export {
        config,
        journal,
        since,
        until,
        format: Format::Jsonl,
    } = cmd;
    let path = match (config, journal) {
        (_, Some(j)) => j,
        (Some(c), None) => Config::load(&c)?.journal.path,
        (None, None) => bail!("give --config or --journal"),
    };
    let now = SystemTime::now();
    let since = parse_when(&since, now).map_err(anyhow::Error::msg)?;
    let until = match until {
        Some(u) => parse_when(&u, now).map_err(anyhow::Error::msg)?,
        None => now + std::time::Duration::from_secs(1),
    };
    let conn =
        Journal::open_read_only(&path).with_context(|| format!("opening {}", path.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    crate::audit::export::jsonl(&conn, since, until, &mut out)?;
    Ok(ExitCode::SUCCESS)
}
