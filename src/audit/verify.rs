//! `credbroker audit verify`: walks the hash chain and names every record that was edited,
//! deleted or moved.
//!
//! Each record's hash is `SHA-256(previous hash ‖ canonical JSON)`, and the canonical JSON
//! includes the record's number, so:
//! - an edited record no longer matches its hash;
//! - a deleted record leaves a gap in the numbers;
//! - a moved record matches its hash only with another number and another predecessor, which
//!   the verifier finds by trying the numbers and hashes around it.
//!
//! A chain alone cannot show that its newest records were cut off, or that the whole chain was
//! rebuilt. With a head key, the daemon MACs the chain's end in every commit (`audit_head`), and
//! the verifier checks the chain ends exactly there.
//!
//! The walk streams: memory stays flat however long the journal is.

use rusqlite::Connection;
use serde::Serialize;

use super::AuditRecord;
use super::ends::{anchor, check_head};
use crate::journal::{JournalError, chain_hash, read};
use crate::keys::AuditKey;

/// How far around a mismatching record the verifier looks for where it came from.
const WINDOW: u64 = 8;
/// Problems listed at most; the count is always exact.
const MAX_LISTED: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The record's content does not match its hash.
    Edited,
    /// Records are missing.
    Deleted,
    /// The record is intact but sits at another position than it was written at.
    Reordered,
    /// The sealed head does not vouch for the chain's end.
    Unsealed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The record (or the first missing record) concerned.
    pub seq: u64,
    pub kind: Kind,
    pub message: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Records before this one were pruned by retention (an `audit_pruned` anchor vouches).
    pub pruned_before: Option<u64>,
    /// Whether the head seal was checked (a head key was given).
    pub head_checked: bool,
    /// Records read from retention archives before the live log.
    pub archived: u64,
    pub problems: u64,
    pub listed: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems == 0
    }

    pub(super) fn add(&mut self, seq: u64, kind: Kind, message: String) {
        self.problems += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(Problem { seq, kind, message });
        }
    }
}

struct Row {
    record: AuditRecord,
    hash: Vec<u8>,
}

pub(super) fn body(record: &AuditRecord) -> Result<String, JournalError> {
    serde_json::to_string(record).map_err(|e| JournalError::Encode(e.to_string()))
}

pub(super) fn hash32(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

/// Walks the whole chain. `head_key` also checks the sealed head.
pub fn verify(conn: &Connection, head_key: Option<&AuditKey>) -> Result<Report, JournalError> {
    verify_with_archive(conn, head_key, &[])
}

/// [`verify`], starting from record 1 in `archives` (retention's JSON Lines files, in order):
/// the archived records must number on without a gap, and the live log must chain from the
/// hash they end with. Archives keep no hashes of their own, so an altered archive shows as
/// the live log not linking to it, not as a particular record.
pub fn verify_with_archive(
    conn: &Connection,
    head_key: Option<&AuditKey>,
    archives: &[std::path::PathBuf],
) -> Result<Report, JournalError> {
    let mut report = Report {
        head_checked: head_key.is_some(),
        ..Report::default()
    };
    let archived = if archives.is_empty() {
        None
    } else {
        Some(walk_archives(archives, &mut report)?)
    };
    // One read transaction: every statement sees the same snapshot, so records the running
    // daemon appends meanwhile are not mistaken for records past the sealed head.
    let snapshot = conn.unchecked_transaction()?;
    walk(&snapshot, head_key, archived, &mut report)?;
    snapshot.finish()?;
    Ok(report)
}

/// Recomputes the chain over the archived lines. Returns the hash they end with and the next
/// record number.
fn walk_archives(
    files: &[std::path::PathBuf],
    report: &mut Report,
) -> Result<([u8; 32], u64), JournalError> {
    use std::io::BufRead as _;
    let mut prev = [0u8; 32];
    let mut expected = 1u64;
    for path in files {
        let io = |error| JournalError::Io {
            path: path.display().to_string(),
            error,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(io)?;
            let seq = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("seq")?.as_u64());
            let Some(seq) = seq else {
                report.add(
                    expected,
                    Kind::Edited,
                    format!("{}: a line that is not an audit record", path.display()),
                );
                continue;
            };
            if seq != expected {
                report.add(
                    expected,
                    Kind::Deleted,
                    format!(
                        "{}: record {seq} follows {} (records missing or out of order)",
                        path.display(),
                        expected - 1
                    ),
                );
            }
            prev = chain_hash(&prev, line.as_bytes());
            report.archived += 1;
            expected = seq + 1;
        }
    }
    Ok((prev, expected))
}

fn walk(
    conn: &Connection,
    head_key: Option<&AuditKey>,
    archived: Option<([u8; 32], u64)>,
    report: &mut Report,
) -> Result<(), JournalError> {
    let first: Option<u64> = conn.query_row("SELECT MIN(seq) FROM audit", [], |r| r.get(0))?;
    let (mut prev, mut expected, mut after_gap) = match (first, archived) {
        (_, Some((hash, next))) => {
            // The live log must go on where the archives end; its first link is then checked
            // against the archives' hash, so an altered archive shows here.
            match anchor(conn)? {
                // The live log is checked from the anchor; the archives must end where it says.
                Some((kept, anchor_prev)) if kept == next => {
                    if anchor_prev != hash {
                        report.add(
                            kept,
                            Kind::Edited,
                            "the archives do not end with the hash the retention anchor \
                             recorded: an archived record was altered, or an archive is missing"
                                .into(),
                        );
                    }
                    report.pruned_before = Some(kept);
                    (anchor_prev, next, false)
                }
                _ => (hash, next, false),
            }
        }
        (None, None) => ([0u8; 32], 1, false),
        (Some(first), None) => start(conn, first, report)?,
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM audit ORDER BY seq",
        read::AUDIT_COLUMNS
    ))?;
    let mut rows = stmt.query([])?;
    let mut last: Option<(u64, [u8; 32])> = None;
    while let Some(r) = rows.next()? {
        let row = Row {
            record: read::audit_record(r)?,
            hash: r.get(21)?,
        };
        let seq = row.record.seq;
        report.records += 1;
        report.first_seq.get_or_insert(seq);
        report.last_seq = Some(seq);
        if seq > expected {
            let msg = if seq - expected == 1 {
                format!("record {expected} is missing (deleted)")
            } else {
                format!("records {expected}..{} are missing (deleted)", seq - 1)
            };
            report.add(expected, Kind::Deleted, msg);
            after_gap = true;
        }
        let Some(stored) = hash32(&row.hash) else {
            report.add(
                seq,
                Kind::Edited,
                format!("record {seq}: its hash was damaged"),
            );
            expected = seq + 1;
            after_gap = true;
            continue;
        };
        let intact = chain_hash(&prev, body(&row.record)?.as_bytes()) == stored;
        if !intact && !after_gap {
            diagnose(conn, &row, stored, report)?;
        }
        // Resynchronise on the stored hash: one tampered record is reported once, and the
        // records after it are checked against what they were written after.
        prev = stored;
        expected = seq + 1;
        after_gap = false;
        last = Some((seq, stored));
    }
    if let Some(key) = head_key {
        check_head(conn, key, last, report)?;
    }
    Ok(())
}

/// Where the walk starts: record 1 after the zero hash, or the first kept record after the hash
/// its retention anchor carries. The flag: the first link cannot be checked (its predecessor is
/// gone unanchored; the deletion is what gets reported).
fn start(
    conn: &Connection,
    first: u64,
    report: &mut Report,
) -> Result<([u8; 32], u64, bool), JournalError> {
    if first == 1 {
        return Ok(([0u8; 32], 1, false));
    }
    let parsed = anchor(conn)?;
    match parsed {
        Some((kept, prev)) if kept <= first => {
            report.pruned_before = Some(kept);
            Ok((prev, kept, false))
        }
        _ => {
            // No anchor explains the missing beginning: it was deleted. Report it and walk on
            // from the first record present, checking each later link.
            report.add(
                1,
                Kind::Deleted,
                format!(
                    "records 1..{} are missing and no retention anchor covers them (deleted)",
                    first - 1
                ),
            );
            Ok(([0u8; 32], first, true))
        }
    }
}

/// A record that does not match: moved, or edited?
fn diagnose(
    conn: &Connection,
    row: &Row,
    stored: [u8; 32],
    report: &mut Report,
) -> Result<(), JournalError> {
    let seq = row.record.seq;
    let lo = seq.saturating_sub(WINDOW).max(1);
    let hi = seq + WINDOW;
    let mut preds: Vec<[u8; 32]> = vec![[0u8; 32]];
    let mut stmt = conn.prepare_cached("SELECT hash FROM audit WHERE seq BETWEEN ?1 AND ?2")?;
    for h in stmt.query_map([lo.saturating_sub(1), hi], |r| r.get::<_, Vec<u8>>(0))? {
        if let Some(h) = hash32(&h?) {
            preds.push(h);
        }
    }
    let mut moved = row.record.clone();
    for q in lo..=hi {
        moved.seq = q;
        let b = body(&moved)?;
        if preds.iter().any(|p| chain_hash(p, b.as_bytes()) == stored) {
            if q != seq {
                report.add(
                    seq,
                    Kind::Reordered,
                    format!("record {seq} was written as record {q} (moved)"),
                );
            }
            // q == seq: intact and in place; what changed is before it, reported there.
            return Ok(());
        }
    }
    report.add(
        seq,
        Kind::Edited,
        format!(
            "record {seq} does not match its hash (edited, or the record before it was rewritten \
             with a recomputed hash)"
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::audit::{Outcome, event};
    use crate::journal::{Journal, Op};

    fn record(at: SystemTime) -> Op {
        Op::Audit(Box::new(AuditRecord::new("x", Outcome::Success, at)))
    }

    async fn journal(dir: &std::path::Path) -> Journal {
        let j = Journal::open_with(&dir.join("j.db"), Some(AuditKey::from_key(&[9; 32])))
            .expect("a fresh journal with a head key should open");
        let old = SystemTime::now() - Duration::from_secs(10 * 86_400);
        // 6 old records, then 4 recent ones.
        for i in 0..10 {
            let at = if i < 6 { old } else { SystemTime::now() };
            j.commit(vec![record(at)])
                .await
                .expect("each seeded audit record should commit");
        }
        j
    }

    fn check(path: &std::path::Path) -> Report {
        let conn = Journal::open_read_only(path)
            .expect("the journal should reopen read-only for verifying");
        verify(&conn, Some(&AuditKey::from_key(&[9; 32])))
            .expect("the verifier should walk the whole chain")
    }

    #[tokio::test]
    async fn retention_prunes_behind_an_anchor_and_the_rest_still_verifies() {
        let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
        let j = journal(dir.path()).await;
        let path = dir.path().join("j.db");
        let prune = |keep_from: u64| Op::PruneAudit {
            keep_from,
            anchor: Box::new(AuditRecord::new(
                event::AUDIT_PRUNED,
                Outcome::Success,
                SystemTime::now(),
            )),
        };
        // Records 1..6 are the old ones.
        j.commit(vec![prune(7)])
            .await
            .expect("pruning the six old records should commit");
        let r = check(&path);
        assert!(r.ok(), "{r:?}");
        assert_eq!(
            (r.records, r.first_seq, r.last_seq, r.pruned_before),
            (5, Some(7), Some(11), Some(7))
        );
        // Nothing more to prune: no second anchor. Past the end of the log: refused.
        j.commit(vec![prune(7)])
            .await
            .expect("a prune with nothing left should still commit");
        assert!(j.commit(vec![prune(99)]).await.is_err());
        assert_eq!(check(&path).records, 5);
        drop(j);

        // The anchor is chained too: editing what it vouches for is caught.
        let conn = Connection::open(&path).expect("sqlite should open the journal file read-write");
        conn.execute(
            "UPDATE audit SET detail = replace(detail, '\"first_kept_seq\":7', '\"first_kept_seq\":8') WHERE seq = 11",
            [],
        )
        .expect("forging the anchor's first kept seq should apply");
        let r = check(&path);
        // The forged anchor no longer vouches for the pruned beginning either.
        assert_eq!(
            r.listed.iter().map(|p| (p.seq, p.kind)).collect::<Vec<_>>(),
            vec![(1, Kind::Deleted), (11, Kind::Edited)],
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_deleted_beginning_without_an_anchor_is_reported() {
        let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
        drop(journal(dir.path()).await);
        let path = dir.path().join("j.db");
        let conn = Connection::open(&path).expect("sqlite should open the journal file read-write");
        conn.execute("DELETE FROM audit WHERE seq < 4", [])
            .expect("deleting the first three records should apply");
        let r = check(&path);
        assert_eq!(r.problems, 1, "{r:?}");
        assert_eq!((r.listed[0].seq, r.listed[0].kind), (1, Kind::Deleted));
        assert!(r.listed[0].message.contains("records 1..3 are missing"));
        // Deleting the sealed head row itself is reported, not silently skipped.
        conn.execute("DELETE FROM audit_head", [])
            .expect("deleting the sealed head row should apply");
        let r = check(&path);
        assert!(r.listed.iter().any(|p| p.kind == Kind::Unsealed), "{r:?}");
    }

    #[tokio::test]
    async fn an_empty_journal_verifies() {
        let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
        drop(Journal::open(&dir.path().join("j.db")).expect("an empty journal should be created"));
        let conn = Journal::open_read_only(&dir.path().join("j.db"))
            .expect("the empty journal should reopen read-only");
        let r = verify(&conn, None).expect("an empty chain should verify without a head key");
        assert!(r.ok() && r.records == 0);
    }
}
