//! The two ends of the audit chain, for `verify`: where it starts after retention pruned it
//! (the anchor), and whether it ends exactly at the head the daemon sealed with its key.

use rusqlite::Connection;

use super::verify::{Kind, Report, hash32};
use crate::journal::JournalError;
use crate::keys::{AuditKey, hex, unhex};

/// The event is a literal, not a parameter: only then may SQLite use the partial index
/// `audit_anchor` (schema 7) instead of reading the table backwards.
pub(super) const ANCHOR: &str =
    "SELECT detail FROM audit WHERE event = 'audit_pruned' ORDER BY seq DESC LIMIT 1";

/// The newest retention anchor: the first record it kept and the hash that record chains from.
/// The anchor is itself a chained record, so editing it shows up in the walk.
pub(super) fn anchor(conn: &Connection) -> Result<Option<(u64, [u8; 32])>, JournalError> {
    let detail: Option<String> = conn
        .query_row(ANCHOR, [], |r| r.get::<_, Option<String>>(0))
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    Ok(detail.and_then(|detail| {
        let v: serde_json::Value = serde_json::from_str(&detail).ok()?;
        let kept = v.get("first_kept_seq")?.as_u64()?;
        let prev = hash32(&unhex(v.get("prev_hash")?.as_str()?)?)?;
        Some((kept, prev))
    }))
}

/// Checks the chain's last record against the sealed head: cut-off, appended or rewritten ends.
pub(super) fn check_head(
    conn: &Connection,
    key: &AuditKey,
    last: Option<(u64, [u8; 32])>,
    report: &mut Report,
) -> Result<(), JournalError> {
    let head: Option<(u64, Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash, mac FROM audit_head WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let last_seq = last.map_or(0, |l| l.0);
    let Some((seq, hash, mac)) = head else {
        if last.is_some() {
            report.add(
                last_seq,
                Kind::Unsealed,
                "there is no sealed head: the daemon never sealed this chain with a key, or the \
                 seal was deleted"
                    .into(),
            );
        }
        return Ok(());
    };
    let Some(hash) = hash32(&hash).filter(|h| key.head_is_sealed(seq, h, &mac)) else {
        report.add(
            seq,
            Kind::Unsealed,
            "the sealed head does not verify with this key: the head was forged, or the key is \
             not the daemon's"
                .into(),
        );
        return Ok(());
    };
    match last {
        Some((s, h)) if s == seq && h == hash => {}
        Some((s, _)) if s < seq => report.add(
            s + 1,
            Kind::Deleted,
            format!("the sealed head is record {seq}, but the chain ends at {s}: records {}..{seq} were deleted", s + 1),
        ),
        Some((s, _)) if s > seq => report.add(
            seq + 1,
            Kind::Unsealed,
            format!("records {}..{s} come after the sealed head ({seq}): appended without the key", seq + 1),
        ),
        None => report.add(
            1,
            Kind::Deleted,
            format!("the sealed head is record {seq}, but the audit log is empty"),
        ),
        Some(_) => report.add(
            seq,
            Kind::Edited,
            format!(
                "record {seq} is not the record the head sealed (hash {}): the chain was rewritten",
                hex(&hash[..8])
            ),
        ),
    }
    Ok(())
}
