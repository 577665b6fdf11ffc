//! Reads: recovery on start, admin queries, and the audit log.

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, Row, params_from_iter};

use super::JournalError;
use super::ops::Chain;
use super::rows::{LeaseRow, LeaseState, TaskRow, TaskState, Text};
use crate::record::{AuditRecord, PeerRecord};

/// A task with its leases.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskView {
    pub task: TaskRow,
    pub leases: Vec<LeaseRow>,
}

/// Admin filters; empty fields do not filter.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    /// One task, by id (lineage of a single task).
    pub task_id: Option<String>,
    pub jti: Option<String>,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub owner: Option<String>,
    pub grant: Option<String>,
    pub provider: Option<String>,
    pub workload: Option<String>,
    /// The token's SHA-256 fingerprint.
    pub token_fp: Option<String>,
    /// Tasks created in `[since, until)`, Unix milliseconds.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub include_ended: bool,
    pub limit: usize,
    /// Page after this task id (ids are time-ordered; newest first).
    pub after: Option<String>,
}

impl TaskFilter {
    pub fn is_empty_selector(&self) -> bool {
        [
            &self.jti,
            &self.subject,
            &self.client_id,
            &self.owner,
            &self.grant,
            &self.provider,
            &self.workload,
            &self.token_fp,
        ]
        .iter()
        .all(|f| f.is_none())
    }
}

pub(super) fn chain_head(conn: &Connection) -> Result<Chain, JournalError> {
    let row = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, u64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    Ok(match row {
        None => Chain {
            seq: 0,
            hash: [0u8; 32],
        },
        Some((seq, bytes)) => {
            let mut hash = [0u8; 32];
            if bytes.len() != 32 {
                return Err(JournalError::Conflict(format!(
                    "audit record {seq} has a damaged hash"
                )));
            }
            hash.copy_from_slice(&bytes);
            Chain { seq, hash }
        }
    })
}

const TASK_COLUMNS: &str =
    "id, state, workload, tool, issuer, subject, client_id, owner, owner_source,
    actors, token_fp, jti, scopes, token_exp_ms, peer_uid, peer_gid, peer_pid, peer_exe, peer_unit,
    created_ms, expires_ms, ended_ms, end_reason, call_id";

const LEASE_COLUMNS: &str = "id, task_id, grant_name, provider, kind, state, params, wanted_exp_ms,
    issued_ms, expires_ms, revoked_ms, reference, sealed_handle, renewable, attempts,
    next_attempt_ms, last_error, role, parent";

fn bad(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, what.into(), rusqlite::types::Type::Text)
}

/// Turns a column's text into shared text; recovery passes an interner, reads for display
/// do not bother.
pub type Intern<'a> = &'a dyn Fn(&str) -> Text;

fn plain(s: &str) -> Text {
    Text::from(s)
}

fn text(r: &Row<'_>, i: usize, intern: Intern<'_>) -> rusqlite::Result<Text> {
    Ok(intern(&r.get::<_, String>(i)?))
}

fn opt_text(r: &Row<'_>, i: usize, intern: Intern<'_>) -> rusqlite::Result<Option<Text>> {
    Ok(r.get::<_, Option<String>>(i)?.map(|s| intern(&s)))
}

fn task_row(r: &Row<'_>, intern: Intern<'_>) -> rusqlite::Result<TaskRow> {
    let state: String = r.get(1)?;
    let actors: String = r.get(9)?;
    let scopes: Vec<String> =
        serde_json::from_str(&r.get::<_, String>(12)?).map_err(|_| bad("scopes"))?;
    Ok(TaskRow {
        id: r.get::<_, String>(0)?.into(),
        state: TaskState::parse(&state).ok_or_else(|| bad("task state"))?,
        workload: text(r, 2, intern)?,
        tool: text(r, 3, intern)?,
        issuer: text(r, 4, intern)?,
        subject: text(r, 5, intern)?,
        client_id: text(r, 6, intern)?,
        owner: opt_text(r, 7, intern)?,
        owner_source: text(r, 8, intern)?,
        actors: serde_json::from_str(&actors).map_err(|_| bad("actors"))?,
        token_fp: text(r, 10, intern)?,
        jti: text(r, 11, intern)?,
        scopes: intern(&scopes.join(" ")),
        token_exp_ms: r.get(13)?,
        peer: std::sync::Arc::new(PeerRecord {
            uid: r.get(14)?,
            gid: r.get(15)?,
            pid: r.get(16)?,
            exe: r.get(17)?,
            unit: r.get(18)?,
        }),
        created_ms: r.get(19)?,
        expires_ms: r.get(20)?,
        ended_ms: r.get(21)?,
        end_reason: opt_text(r, 22, intern)?,
        call_id: opt_text(r, 23, intern)?,
    })
}

fn lease_row(r: &Row<'_>, intern: Intern<'_>) -> rusqlite::Result<LeaseRow> {
    let state: String = r.get(5)?;
    let params: String = r.get(6)?;
    Ok(LeaseRow {
        id: r.get::<_, String>(0)?.into(),
        task_id: r.get::<_, String>(1)?.into(),
        grant: text(r, 2, intern)?,
        provider: text(r, 3, intern)?,
        kind: text(r, 4, intern)?,
        state: LeaseState::parse(&state).ok_or_else(|| bad("lease state"))?,
        params: std::sync::Arc::new(serde_json::from_str(&params).map_err(|_| bad("params"))?),
        wanted_exp_ms: r.get(7)?,
        issued_ms: r.get(8)?,
        expires_ms: r.get(9)?,
        revoked_ms: r.get(10)?,
        reference: r.get::<_, Option<String>>(11)?.map(Text::from),
        sealed_handle: r.get(12)?,
        renewable: r.get(13)?,
        attempts: r.get(14)?,
        next_attempt_ms: r.get(15)?,
        last_error: r.get(16)?,
        role: super::rows::parse_role(&r.get::<_, String>(17)?).ok_or_else(|| bad("lease role"))?,
        parent: r.get::<_, Option<String>>(18)?.map(Text::from),
    })
}

fn leases_of(conn: &Connection, task_id: &str) -> Result<Vec<LeaseRow>, JournalError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {LEASE_COLUMNS} FROM leases WHERE task_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([task_id], |r| lease_row(r, &plain))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Every task that is not ended, with its leases: what recovery resumes.
pub fn live_tasks(conn: &Connection, intern: Intern<'_>) -> Result<Vec<TaskView>, JournalError> {
    let mut out = Vec::new();
    for_each_live_task(conn, intern, &mut |v| out.push(v))?;
    Ok(out)
}

/// The same, handed over one task at a time: tasks and leases are read in one ordered pass each
/// and merged, so nothing is held but what `each` keeps.
pub fn for_each_live_task(
    conn: &Connection,
    intern: Intern<'_>,
    each: &mut dyn FnMut(TaskView),
) -> Result<(), JournalError> {
    let mut tasks_stmt = conn.prepare(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE state <> 'ended' ORDER BY id"
    ))?;
    let mut leases_stmt = conn.prepare(&format!(
        "SELECT {LEASE_COLUMNS} FROM leases
         WHERE task_id IN (SELECT id FROM tasks WHERE state <> 'ended') ORDER BY task_id, id"
    ))?;
    let mut leases = leases_stmt
        .query_map([], |r| lease_row(r, intern))?
        .peekable();
    for task in tasks_stmt.query_map([], |r| task_row(r, intern))? {
        let task = task?;
        let mut mine = Vec::new();
        loop {
            match leases.peek() {
                Some(Ok(l)) if *l.task_id <= *task.id => {}
                Some(Err(_)) => {
                    if let Some(Err(e)) = leases.next() {
                        return Err(e.into());
                    }
                }
                _ => break,
            }
            if let Some(Ok(mut l)) = leases.next()
                && l.task_id == task.id
            {
                // One copy of the task id, shared.
                l.task_id = std::sync::Arc::clone(&task.id);
                mine.push(l);
            }
        }
        each(TaskView { task, leases: mine });
    }
    Ok(())
}

pub fn task(conn: &Connection, id: &str) -> Result<Option<TaskView>, JournalError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
    let mut rows = stmt.query_map([id], |r| task_row(r, &plain))?;
    match rows.next() {
        None => Ok(None),
        Some(task) => {
            let task = task?;
            let leases = leases_of(conn, &task.id)?;
            Ok(Some(TaskView { task, leases }))
        }
    }
}

/// The task a workload's BeginTask idempotency key began, and the digest of that request.
pub fn begin_key(
    conn: &Connection,
    workload: &str,
    key: &str,
) -> Result<Option<(String, Vec<u8>)>, JournalError> {
    let mut stmt = conn.prepare_cached(
        "SELECT task_id, digest FROM begin_keys WHERE workload = ?1 AND key = ?2",
    )?;
    let mut rows = stmt.query_map([workload, key], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.next().transpose()?)
}

/// A fact about the journal itself.
pub fn meta(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>, JournalError> {
    let mut stmt = conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?;
    let mut rows = stmt.query_map([name], |r| r.get(0))?;
    Ok(rows.next().transpose()?)
}

/// Any sealed revocation handle and its lease id: a journal from before the key check was
/// recorded proves its key with one of these.
pub fn any_sealed_handle(conn: &Connection) -> Result<Option<(String, Vec<u8>)>, JournalError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, sealed_handle FROM leases WHERE sealed_handle IS NOT NULL LIMIT 1",
    )?;
    let mut rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.next().transpose()?)
}

pub fn tasks(conn: &Connection, f: &TaskFilter) -> Result<Vec<TaskView>, JournalError> {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE 1=1");
    let mut args: Vec<Sql> = Vec::new();
    let mut eq = |sql: &mut String, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            args.push(Sql::Text(v.clone()));
            sql.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
    };
    eq(&mut sql, "t.id", &f.task_id);
    eq(&mut sql, "t.jti", &f.jti);
    eq(&mut sql, "t.subject", &f.subject);
    eq(&mut sql, "t.client_id", &f.client_id);
    eq(&mut sql, "t.owner", &f.owner);
    eq(&mut sql, "t.workload", &f.workload);
    eq(&mut sql, "t.token_fp", &f.token_fp);
    if let Some(t) = f.since_ms {
        args.push(Sql::Integer(t));
        sql.push_str(&format!(" AND t.created_ms >= ?{}", args.len()));
    }
    if let Some(t) = f.until_ms {
        args.push(Sql::Integer(t));
        sql.push_str(&format!(" AND t.created_ms < ?{}", args.len()));
    }
    if let Some(g) = &f.grant {
        args.push(Sql::Text(g.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM leases l WHERE l.task_id = t.id AND l.grant_name = ?{})",
            args.len()
        ));
    }
    if let Some(p) = &f.provider {
        args.push(Sql::Text(p.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM leases l WHERE l.task_id = t.id AND l.provider = ?{})",
            args.len()
        ));
    }
    if !f.include_ended {
        sql.push_str(" AND t.state <> 'ended'");
    }
    if let Some(after) = &f.after {
        args.push(Sql::Text(after.clone()));
        sql.push_str(&format!(" AND t.id < ?{}", args.len()));
    }
    sql.push_str(&format!(
        " ORDER BY t.id DESC LIMIT {}",
        f.limit.clamp(1, 100_000)
    ));
    let mut stmt = conn.prepare(&sql)?;
    let tasks: Vec<TaskRow> = stmt
        .query_map(params_from_iter(args), |r| task_row(r, &plain))?
        .collect::<Result<_, _>>()?;
    tasks
        .into_iter()
        .map(|task| {
            let leases = leases_of(conn, &task.id)?;
            Ok(TaskView { task, leases })
        })
        .collect()
}

/// The columns of an audit record, in the order `audit_record` reads them.
pub const AUDIT_COLUMNS: &str =
    "seq, at_ms, event, outcome, reason, task_id, lease_id, workload, tool,
    grant_name, provider, peer, issuer, client_id, subject, actors, owner, owner_source, token_fp,
    jti, detail, hash, call_id";

fn json_col<T: serde::de::DeserializeOwned + Default>(
    r: &Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    match r.get::<_, Option<String>>(i)? {
        None => Ok(T::default()),
        Some(text) => serde_json::from_str(&text).map_err(|_| bad("audit json column")),
    }
}

/// An audit record rebuilt from its columns; its canonical JSON is what the chain hashed.
pub fn audit_record(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let at_ms: i64 = r.get(1)?;
    Ok(AuditRecord {
        seq: r.get(0)?,
        time: crate::time::rfc3339_ms(at_ms),
        at_ms,
        event: r.get(2)?,
        outcome: r.get(3)?,
        reason: r.get(4)?,
        task_id: r.get(5)?,
        lease_id: r.get(6)?,
        workload: r.get(7)?,
        tool: r.get(8)?,
        grant: r.get(9)?,
        provider: r.get(10)?,
        peer: match r.get::<_, Option<String>>(11)? {
            None => None,
            Some(text) => Some(serde_json::from_str(&text).map_err(|_| bad("audit peer"))?),
        },
        issuer: r.get(12)?,
        client_id: r.get(13)?,
        subject: r.get(14)?,
        actors: json_col(r, 15)?,
        owner: r.get(16)?,
        owner_source: r.get(17)?,
        token_fingerprint: r.get(18)?,
        jti: r.get(19)?,
        detail: json_col(r, 20)?,
        call_id: r.get(22)?,
    })
}

/// Records `[from, until)` in order, streamed: each is handed to `each` as it is read.
pub fn for_each_audit_between(
    conn: &Connection,
    from: u64,
    until: u64,
    each: &mut dyn FnMut(&AuditRecord) -> Result<(), JournalError>,
) -> Result<u64, JournalError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit WHERE seq >= ?1 AND seq < ?2 ORDER BY seq"
    ))?;
    let mut rows = stmt.query_map([from, until], audit_record)?;
    let mut n = 0;
    for r in rows.by_ref() {
        each(&r?)?;
        n += 1;
    }
    Ok(n)
}

/// Every audit record of a task, in order.
pub fn audit_of_task(conn: &Connection, task_id: &str) -> Result<Vec<AuditRecord>, JournalError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit WHERE task_id = ?1 ORDER BY seq"
    ))?;
    let rows = stmt.query_map([task_id], audit_record)?;
    Ok(rows.collect::<Result<_, _>>()?)
}
