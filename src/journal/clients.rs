//! The client registry's run-time entries (`credbroker clients`), which override the
//! configuration's `[[client]]` entries of the same client.

use rusqlite::{Connection, params};

use super::JournalError;
use crate::config::clients::{ClientEntry, ClientStatus};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRow {
    pub entry: ClientEntry,
    pub updated_ms: i64,
    /// `operator:<uid>`.
    pub updated_by: String,
}

pub(super) fn upsert(conn: &Connection, c: &ClientRow) -> rusqlite::Result<usize> {
    let e = &c.entry;
    let grants = serde_json::to_string(&e.grants).unwrap_or_else(|_| "[]".into());
    conn.prepare_cached(
        "INSERT INTO clients (issuer, client_id, owner, expires_ms, grants, status, updated_ms,
            updated_by) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)
         ON CONFLICT (issuer, client_id) DO UPDATE SET owner = ?3, expires_ms = ?4, grants = ?5,
            status = ?6, updated_ms = ?7, updated_by = ?8",
    )?
    .execute(params![
        e.issuer,
        e.client_id,
        e.owner,
        e.expires.map(crate::time::to_ms),
        grants,
        e.status.as_str(),
        c.updated_ms,
        c.updated_by,
    ])
}

pub fn all(conn: &Connection) -> Result<Vec<ClientRow>, JournalError> {
    let mut stmt = conn.prepare(
        "SELECT issuer, client_id, owner, expires_ms, grants, status, updated_ms, updated_by
         FROM clients ORDER BY issuer, client_id",
    )?;
    let rows = stmt.query_map([], |r| {
        let grants: String = r.get(4)?;
        let status: String = r.get(5)?;
        Ok(ClientRow {
            entry: ClientEntry {
                issuer: r.get(0)?,
                client_id: r.get(1)?,
                owner: r.get(2)?,
                expires: r.get::<_, Option<i64>>(3)?.map(crate::time::from_ms),
                grants: serde_json::from_str(&grants).unwrap_or_default(),
                status: ClientStatus::parse(&status).unwrap_or(ClientStatus::Suspended),
            },
            updated_ms: r.get(6)?,
            updated_by: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
