//! `credbroker audit export|verify|query` and `credbroker lineage`: read the journal file
//! directly (read-only), so they work beside a running daemon and without one.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::output::Output;

use super::progress::{LineCounter, Ticker};
use crate::audit::export::{self, Pseudonymise};
use crate::audit::query::{self, AuditFilter};
use crate::audit::{lineage, verify};
use crate::config::{Config, KeySource};
use crate::journal::Journal;
use crate::journal::read::TaskFilter;
use crate::keys::AuditKey;
use crate::record::{Reason, event, reason};
use crate::time::{parse_when, to_ms};

/// Where the journal is.
#[derive(Args)]
pub(super) struct JournalArgs {
    /// Find the journal (and the audit keys) through this configuration.
    #[arg(long, short, env = "CREDBROKER_CONFIG", conflicts_with = "journal")]
    pub(super) config: Option<PathBuf>,
    /// The journal file itself.
    #[arg(long)]
    pub(super) journal: Option<PathBuf>,
}

impl JournalArgs {
    pub(super) fn open(&self) -> anyhow::Result<(rusqlite::Connection, Option<Config>)> {
        let (path, config) = match (&self.config, &self.journal) {
            (_, Some(j)) => (j.clone(), None),
            (Some(c), None) => {
                let config = Config::load(c)?;
                (config.journal.path.clone(), Some(config))
            }
            (None, None) => bail!("give --config or --journal"),
        };
        let conn = Journal::open_read_only(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok((conn, config))
    }
}

/// Who, what and when: the same filters for every audit command.
#[derive(Args, Clone, Default)]
pub(super) struct FilterArgs {
    /// The human (or team) the credentials were issued for.
    #[arg(long)]
    pub(super) owner: Option<String>,
    /// The OAuth client (the agent).
    #[arg(long)]
    pub(super) client: Option<String>,
    /// The token's subject.
    #[arg(long)]
    pub(super) sub: Option<String>,
    /// The token's SHA-256 fingerprint (as `token check` and the audit log print it), with or
    /// without its `sha256:` prefix.
    #[arg(long, value_parser = fingerprint)]
    pub(super) token: Option<String>,
    #[arg(long)]
    pub(super) grant: Option<String>,
    #[arg(long)]
    pub(super) provider: Option<String>,
    /// From: an RFC 3339 time, or a duration meaning that long ago (24h).
    #[arg(long)]
    pub(super) since: Option<String>,
    /// Until (exclusive): an RFC 3339 time or a duration ago.
    #[arg(long)]
    pub(super) until: Option<String>,
}

#[derive(Args, Clone, Default)]
pub(super) struct RecordArgs {
    #[command(flatten)]
    pub(super) filter: FilterArgs,
    /// Only these events (repeat, or separate with commas), e.g. lease_issued.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(event::ALL))]
    pub(super) event: Vec<String>,
    #[arg(long, value_parser = ["success", "denied", "failure"])]
    pub(super) outcome: Option<String>,
    /// A reason code, e.g. token_expired (the operations manual lists them all).
    #[arg(long, hide_possible_values = true,
          value_parser = clap::builder::PossibleValuesParser::new(reason::ALL.map(Reason::as_str)))]
    pub(super) reason: Option<String>,
    #[arg(long)]
    pub(super) task: Option<String>,
    /// An MCP call (its `call_id`): the gateway's records of it and those of the tasks begun
    /// for it.
    #[arg(long)]
    pub(super) call: Option<String>,
    /// Only records after this record number: ship incrementally from where the last export
    /// ended (each record carries its `seq`).
    #[arg(long)]
    pub(super) after_seq: Option<u64>,
}

fn when(text: &Option<String>, now: SystemTime) -> anyhow::Result<Option<i64>> {
    text.as_deref()
        .map(|t| parse_when(t, now).map(to_ms).map_err(anyhow::Error::msg))
        .transpose()
}

impl RecordArgs {
    pub(super) fn filter(&self) -> anyhow::Result<AuditFilter> {
        let now = SystemTime::now();
        let f = &self.filter;
        Ok(AuditFilter {
            owner: f.owner.clone(),
            client: f.client.clone(),
            sub: f.sub.clone(),
            token: f.token.clone(),
            grant: f.grant.clone(),
            provider: f.provider.clone(),
            task: self.task.clone(),
            call: self.call.clone(),
            events: self.event.clone(),
            outcome: self.outcome.clone(),
            reason: self.reason.clone(),
            since_ms: when(&f.since, now)?,
            until_ms: when(&f.until, now)?,
            seq_from: self.after_seq.map(|n| n.saturating_add(1)),
            seq_until: None,
        })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum ExportFormat {
    Jsonl,
    Csv,
    Ocsf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum Shape {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum TreeShape {
    Table,
    Json,
    Dot,
}

#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Export audit records, oldest first (JSON Lines, CSV or OCSF).
    Export {
        #[command(flatten)]
        journal: JournalArgs,
        #[command(flatten)]
        records: RecordArgs,
        /// jsonl | csv | ocsf (`--format` is accepted too).
        #[arg(long = "output", alias = "format", value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Replace identifiers with their HMAC-SHA256 under this key (32 bytes or 64 hex).
        #[arg(long)]
        hmac_key_file: Option<PathBuf>,
        /// Which identifiers --hmac-key-file replaces.
        #[arg(long, value_delimiter = ',', default_value = "owner,sub,actors")]
        hmac_fields: Vec<String>,
    },
    /// Walk the hash chain: name every record edited, deleted or moved. Exit 1 if any.
    Verify {
        #[command(flatten)]
        journal: JournalArgs,
        /// Also check the sealed head with this key (default: the configuration's head key).
        #[arg(long)]
        head_key_file: Option<PathBuf>,
        /// Verify from record 1 through retention archives: a directory of `audit-*.jsonl`
        /// (taken in name order) or files, repeatable.
        #[arg(long)]
        archive: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Count audit records matching the filters, grouped.
    Query {
        #[command(flatten)]
        journal: JournalArgs,
        #[command(flatten)]
        records: RecordArgs,
        /// Group by these (comma-separated): client, owner, grant, provider, event, outcome,
        /// reason, workload, tool, sub, token, day.
        #[arg(long, value_delimiter = ',')]
        group_by: Vec<String>,
        #[arg(long, value_enum, default_value_t = Shape::Table)]
        output: Shape,
    },
}

#[derive(Args)]
pub(super) struct LineageArgs {
    #[command(flatten)]
    journal: JournalArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// One task, by id.
    #[arg(long)]
    task: Option<String>,
    /// At most this many tasks (newest).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[arg(long, value_enum, default_value_t = TreeShape::Table)]
    output: TreeShape,
}

/// A token fingerprint as every output prints it (`sha256:<64 hex>`), or its bare hex: the
/// bare hex, lower case, as the journal stores it.
pub(super) fn fingerprint(text: &str) -> Result<String, String> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(
            "expected a token fingerprint: sha256: and 64 hex digits, as `token check` and \
             `audit export` print it"
                .into(),
        )
    }
}

/// A usage error: exit 2, like clap's own.
fn usage(msg: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {msg}");
    Ok(ExitCode::from(2))
}

pub(super) fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Export {
            journal,
            records,
            format,
            hmac_key_file,
            hmac_fields,
        } => {
            let filter = match records.filter() {
                Ok(f) => f,
                Err(e) => return usage(e),
            };
            let pseudo = match hmac_key_file {
                None => None,
                Some(path) => {
                    // A field name is a usage error, found before any key is read.
                    let check =
                        Pseudonymise::new(AuditKey::from_key(&[0; 32]), hmac_fields.clone());
                    if let Err(e) = check {
                        return usage(e);
                    }
                    let key = KeySource::File(path.clone())
                        .audit_key(&crate::ProcessEnv)
                        .map_err(|e| anyhow::anyhow!("export HMAC key {}: {e}", path.display()))?;
                    Pseudonymise::new(key, hmac_fields).ok()
                }
            };
            let (conn, _) = journal.open()?;
            let format = match format {
                ExportFormat::Jsonl => export::Format::Jsonl,
                ExportFormat::Csv => export::Format::Csv,
                ExportFormat::Ocsf => export::Format::Ocsf,
            };
            // Counted after the buffer: what the ticker shows has reached stdout.
            let mut out = std::io::BufWriter::new(LineCounter::new(std::io::stdout().lock()));
            // Only when the records go elsewhere: on the terminal they show progress themselves,
            // and a progress line between them would corrupt them.
            let _ticker = (!std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .then(|| Ticker::counting("exporting", "lines", out.get_ref().lines()));
            export::export(&conn, &filter, format, pseudo.as_ref(), &mut out)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            journal,
            head_key_file,
            archive,
            output,
        } => {
            let archives = archive_files(&archive)?;
            let (conn, config) = journal.open()?;
            let source = match head_key_file {
                Some(p) => Some(KeySource::File(p)),
                None => config.and_then(|c| c.audit.head_key),
            };
            let hint = match &source {
                Some(KeySource::Credential(_)) => {
                    " (a systemd credential is readable only inside the service: give \
                     --head-key-file, e.g. /etc/credbroker/credentials/audit-head-key)"
                }
                _ => "",
            };
            let key = source
                .map(|s| s.audit_key(&crate::ProcessEnv))
                .transpose()
                .map_err(|e| anyhow::anyhow!("audit head key: {e}{hint}"))?;
            let report = {
                let _ticker = Ticker::start("verifying the audit chain");
                verify::verify_with_archive(&conn, key.as_ref(), &archives)?
            };
            print_report(&report, output)?;
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Query {
            journal,
            records,
            group_by,
            output,
        } => {
            let filter = match records.filter() {
                Ok(f) => f,
                Err(e) => return usage(e),
            };
            let (conn, _) = journal.open()?;
            let counted = {
                let _ticker = Ticker::start("counting audit records");
                query::count(&conn, &filter, &group_by)
            };
            let groups = match counted {
                Ok(g) => g,
                Err(e @ query::QueryError::UnknownGroup(..)) => return usage(e),
                Err(query::QueryError::Journal(e)) => return Err(e.into()),
            };
            print_groups(&group_by, &groups, output)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Archive paths: files as given, directories as their `audit-*.jsonl` in name order (the
/// names carry zero-padded record numbers).
fn archive_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn print_report(r: &verify::Report, output: Output) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if let Output::Json = output {
        writeln!(out, "{}", serde_json::to_string_pretty(r)?)?;
        return Ok(());
    }
    for p in &r.listed {
        writeln!(out, "record {}: {:?}: {}", p.seq, p.kind, p.message)?;
    }
    if r.problems as usize > r.listed.len() {
        writeln!(out, "… and {} more", r.problems as usize - r.listed.len())?;
    }
    let range = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!(" ({a}..{b})"),
        _ => String::new(),
    };
    let pruned = match (r.pruned_before, r.archived) {
        (_, n) if n > 0 => format!("; {n} archived records chained in from record 1"),
        (Some(p), _) => format!("; records before {p} pruned by retention (anchored)"),
        _ => String::new(),
    };
    let head = if r.head_checked {
        "; sealed head checked"
    } else {
        "; head not checked (no head key): the newest records could have been cut off unnoticed"
    };
    if r.ok() {
        writeln!(
            out,
            "ok: {} records verified{range}{pruned}{head}",
            r.records
        )?;
    } else {
        writeln!(
            out,
            "FAILED: {} problem(s) in {} records{range}{pruned}{head}",
            r.problems, r.records
        )?;
    }
    Ok(())
}

/// The groups as `audit query --output json` prints them: one object per group, its keys and
/// `count`.
pub(super) fn groups_json(keys: &[String], groups: &[query::Group]) -> Vec<serde_json::Value> {
    groups
        .iter()
        .map(|g| {
            let mut m = serde_json::Map::new();
            for (k, v) in keys.iter().zip(&g.key) {
                m.insert(k.clone(), v.clone().into());
            }
            m.insert("count".into(), g.count.into());
            serde_json::Value::Object(m)
        })
        .collect()
}

fn print_groups(keys: &[String], groups: &[query::Group], output: Shape) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Shape::Json => {
            let rows = groups_json(keys, groups);
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        }
        Shape::Csv | Shape::Table => {
            let sep = if let Shape::Csv = output { "," } else { "\t" };
            let mut header: Vec<&str> = keys.iter().map(String::as_str).collect();
            header.push("count");
            writeln!(out, "{}", header.join(sep))?;
            for g in groups {
                let mut cells: Vec<String> = g
                    .key
                    .iter()
                    .map(|v| v.clone().unwrap_or_else(|| "-".into()))
                    .collect();
                cells.push(g.count.to_string());
                writeln!(out, "{}", cells.join(sep))?;
            }
        }
    }
    Ok(())
}

/// The tasks `lineage` traces: the filters, one task, at most `limit` (1..=100000).
pub(super) fn task_filter(
    f: &FilterArgs,
    task: Option<String>,
    limit: usize,
) -> anyhow::Result<TaskFilter> {
    let now = SystemTime::now();
    if limit == 0 || limit > 100_000 {
        bail!("--limit must be between 1 and 100000");
    }
    Ok(TaskFilter {
        task_id: task,
        subject: f.sub.clone(),
        client_id: f.client.clone(),
        owner: f.owner.clone(),
        grant: f.grant.clone(),
        provider: f.provider.clone(),
        token_fp: f.token.clone(),
        since_ms: when(&f.since, now)?,
        until_ms: when(&f.until, now)?,
        ..Default::default()
    })
}

pub(super) fn lineage(args: LineageArgs) -> anyhow::Result<ExitCode> {
    let filter = match task_filter(&args.filter, args.task, args.limit) {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    let (conn, _) = args.journal.open()?;
    let tree = {
        let _ticker = Ticker::start("tracing lineage");
        lineage::build(&conn, &filter, args.limit)?
    };
    let mut out = std::io::stdout().lock();
    match args.output {
        TreeShape::Table => write!(out, "{}", lineage::text(&tree))?,
        TreeShape::Json => writeln!(out, "{}", serde_json::to_string_pretty(&tree)?)?,
        TreeShape::Dot => write!(out, "{}", lineage::dot(&tree))?,
    }
    Ok(ExitCode::SUCCESS)
}
