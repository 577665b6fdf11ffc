//! Blocks: what the broker refuses until a time, whatever the token says (a revoked token, a
//! client or owner cut off after abuse, a subject the identity provider disabled). Journaled,
//! so a block survives a restart; lifted, not deleted, so the table says who lifted what.

use rusqlite::{Connection, Row, params};

use super::JournalError;

/// What a block matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockKind {
    /// One token, by its `jti` (with its issuer).
    Jti,
    /// Every token of one OAuth client (with its issuer).
    Client,
    /// Every token attributed to one human owner (any issuer unless one is named).
    Owner,
    /// Every token of one subject (with its issuer).
    Subject,
}

impl BlockKind {
    pub const ALL: [BlockKind; 4] = [Self::Jti, Self::Client, Self::Owner, Self::Subject];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jti => "jti",
            Self::Client => "client",
            Self::Owner => "owner",
            Self::Subject => "subject",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRow {
    pub id: String,
    pub kind: BlockKind,
    /// `None`: any issuer.
    pub issuer: Option<String>,
    pub value: String,
    pub created_ms: i64,
    /// Refused until then (Unix ms).
    pub until_ms: i64,
    /// Why, in words (an operator's reason, a detector's evidence summary).
    pub reason: String,
    /// Who placed it: `operator:<uid>`, `abuse:<detector>`, `signal:<transmitter>`.
    pub source: String,
    pub lifted_ms: Option<i64>,
    pub lifted_by: Option<String>,
}

impl BlockRow {
    pub fn in_force(&self, now_ms: i64) -> bool {
        self.lifted_ms.is_none() && self.until_ms > now_ms
    }
}

const COLUMNS: &str =
    "id, kind, issuer, value, created_ms, until_ms, reason, source, lifted_ms, lifted_by";

fn row(r: &Row<'_>) -> rusqlite::Result<BlockRow> {
    let kind: String = r.get(1)?;
    Ok(BlockRow {
        id: r.get(0)?,
        kind: BlockKind::parse(&kind).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown block kind {kind:?}").into(),
            )
        })?,
        issuer: r.get(2)?,
        value: r.get(3)?,
        created_ms: r.get(4)?,
        until_ms: r.get(5)?,
        reason: r.get(6)?,
        source: r.get(7)?,
        lifted_ms: r.get(8)?,
        lifted_by: r.get(9)?,
    })
}

/// Blocks in force at `now_ms` (for the broker's index at start), oldest first.
pub fn in_force(conn: &Connection, now_ms: i64) -> Result<Vec<BlockRow>, JournalError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM blocks WHERE lifted_ms IS NULL AND until_ms > ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([now_ms], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every block, newest first, including lifted and lapsed ones when `all`.
pub fn list(
    conn: &Connection,
    now_ms: i64,
    all: bool,
    limit: usize,
) -> Result<Vec<BlockRow>, JournalError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM blocks WHERE ?3 OR (lifted_ms IS NULL AND until_ms > ?1)
         ORDER BY id DESC LIMIT ?2"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![now_ms, limit, all], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<BlockRow>, JournalError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM blocks WHERE id = ?1"),
            [id],
            row,
        )
        .optional()?)
}

pub(super) fn insert(conn: &Connection, b: &BlockRow) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO blocks (id, kind, issuer, value, created_ms, until_ms, reason, source,
            lifted_ms, lifted_by) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
    )?
    .execute(params![
        b.id,
        b.kind.as_str(),
        b.issuer,
        b.value,
        b.created_ms,
        b.until_ms,
        b.reason,
        b.source,
        b.lifted_ms,
        b.lifted_by,
    ])
}

/// Lifts a block in force; lifting one already lifted changes nothing (and is a conflict).
pub(super) fn lift(conn: &Connection, id: &str, at_ms: i64, by: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE blocks SET lifted_ms = ?2, lifted_by = ?3 WHERE id = ?1 AND lifted_ms IS NULL",
    )?
    .execute(params![id, at_ms, by])
}
