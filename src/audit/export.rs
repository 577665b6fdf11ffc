//! `credbroker audit export`: the audit log as JSON Lines, streamed record by record so an
//! export of any size runs in constant memory. Records hold identifiers and fingerprints only.

use std::io::Write;
use std::time::SystemTime;

use rusqlite::Connection;

use crate::journal::{JournalError, read};
use crate::time::to_ms;

/// Writes every record with `since <= time < until`, one JSON object per line, in journal order.
pub fn jsonl(
    conn: &Connection,
    since: SystemTime,
    until: SystemTime,
    out: &mut dyn Write,
) -> Result<u64, JournalError> {
    let n = read::audit_range(conn, to_ms(since), to_ms(until), &mut |body| {
        out.write_all(body.as_bytes())?;
        out.write_all(b"\n")
    })?;
    out.flush().map_err(|error| JournalError::Io {
        path: "output".into(),
        error,
    })?;
    Ok(n)
}
