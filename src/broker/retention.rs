//! Audit retention: once an hour, records older than `audit.retention` are deleted and an
//! `audit_pruned` anchor is appended in the same commit, so the chain still verifies from the
//! first record kept. With `audit.archive_dir`, the records are first written there as JSON
//! Lines (the bodies the chain hashed: recomputing SHA-256 over them ends at the anchor's
//! `prev_hash`), fsync'd, and only then deleted; if archiving fails, nothing is pruned.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Broker;
use crate::journal::{JournalError, Op};
use crate::record::{AuditRecord, Outcome, event};
use crate::time::to_ms;

const EVERY: Duration = Duration::from_secs(3600);

impl Broker {
    pub(super) async fn retention_loop(self: Arc<Self>) {
        loop {
            if let Err(e) = self.prune_audit().await {
                tracing::error!(error = %e, "audit retention: nothing pruned; will retry");
            }
            tokio::time::sleep(EVERY).await;
        }
    }

    /// One retention pass. Returns how many records were pruned.
    pub async fn prune_audit(&self) -> Result<u64, JournalError> {
        let cfg = self.runtime().config.clone();
        let Some(keep) = cfg.audit.retention else {
            return Ok(0);
        };
        let now = self.clock.now();
        let before_ms = to_ms(now) - keep.as_millis() as i64;
        let (oldest, keep_from) = self
            .journal
            .read(move |c| {
                let oldest: Option<u64> =
                    c.query_row("SELECT MIN(seq) FROM audit", [], |r| r.get(0))?;
                let keep_from: Option<u64> = c.query_row(
                    "SELECT MIN(seq) FROM audit WHERE at_ms >= ?1",
                    [before_ms],
                    |r| r.get(0),
                )?;
                let last: u64 =
                    c.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))?;
                Ok((oldest, keep_from.unwrap_or(last + 1)))
            })
            .await?;
        let Some(oldest) = oldest.filter(|o| *o < keep_from) else {
            return Ok(0);
        };
        let mut anchor = AuditRecord::new(event::AUDIT_PRUNED, Outcome::Success, now)
            .detail("retention", humantime::format_duration(keep).to_string());
        if let Some(dir) = cfg.audit.archive_dir.clone() {
            let file = self
                .journal
                .read(move |c| archive(c, &dir, oldest, keep_from))
                .await?;
            anchor = anchor.detail("archive", file.display().to_string());
        }
        self.journal
            .commit(vec![Op::PruneAudit {
                keep_from,
                anchor: Box::new(anchor),
            }])
            .await?;
        tracing::info!(
            pruned = keep_from - oldest,
            keep_from,
            "audit retention pruned"
        );
        Ok(keep_from - oldest)
    }
}

/// Writes records `[from, until)` to `dir/audit-<from>-<last>.jsonl` (mode 0600), durably:
/// temporary file, fsync, rename, fsync of the directory.
fn archive(
    conn: &rusqlite::Connection,
    dir: &Path,
    from: u64,
    until: u64,
) -> Result<PathBuf, JournalError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |error| JournalError::Io {
        path: dir.display().to_string(),
        error,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = format!("audit-{from:012}-{:012}.jsonl", until - 1);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    // Each line is exactly the body the chain hashed (the canonical JSON of the record), as
    // `audit export --format jsonl` writes it, so `audit verify --archive` can recompute it.
    let n = crate::journal::read::for_each_audit_between(conn, from, until, &mut |r| {
        let line = serde_json::to_string(r).map_err(|e| JournalError::Encode(e.to_string()))?;
        out.write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .map_err(io)
    })?;
    out.flush().map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    if n != until - from {
        let _ = std::fs::remove_file(&tmp);
        return Err(JournalError::Conflict(format!(
            "archiving records {from}..{}: found {n} of {} (run `credbroker audit verify`)",
            until - 1,
            until - from
        )));
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(path)
}
