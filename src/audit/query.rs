//! Filters over the audit log, and `audit query`'s counts.
//!
//! Every filter is a bound parameter (no value is ever spliced into SQL); the columns a filter
//! or a group-by may name come from fixed tables below. The example the indexes are built for —
//! credentials issued for one grant over a day, by client and owner — reads only the
//! `audit_grant` index (`benches/micro.rs`, `audit_query`).

use rusqlite::Connection;
use rusqlite::types::Value as Sql;
use serde::Serialize;

use crate::journal::{JournalError, read};

/// Empty fields do not filter. Times are Unix milliseconds, `[since, until)`.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub owner: Option<String>,
    pub client: Option<String>,
    pub sub: Option<String>,
    pub token: Option<String>,
    pub grant: Option<String>,
    pub provider: Option<String>,
    pub task: Option<String>,
    pub call: Option<String>,
    pub events: Vec<String>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Records numbered in `[from, until)`.
    pub seq_from: Option<u64>,
    pub seq_until: Option<u64>,
}

/// What `--group-by` accepts, and the column each names.
pub const GROUP_KEYS: &[(&str, &str)] = &[
    ("client", "client_id"),
    ("owner", "owner"),
    ("grant", "grant_name"),
    ("provider", "provider"),
    ("event", "event"),
    ("outcome", "outcome"),
    ("reason", "reason"),
    ("workload", "workload"),
    ("tool", "tool"),
    ("sub", "subject"),
    ("token", "token_fp"),
    ("day", "strftime('%Y-%m-%d', at_ms / 1000, 'unixepoch')"),
];

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot group by {0:?}: use one of {1}")]
    UnknownGroup(String, String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl AuditFilter {
    /// ` WHERE …` and its parameters.
    fn clause(&self) -> (String, Vec<Sql>) {
        let mut sql = String::from(" WHERE 1=1");
        let mut args: Vec<Sql> = Vec::new();
        let mut eq = |col: &str, v: &Option<String>| {
            if let Some(v) = v {
                args.push(Sql::Text(v.clone()));
                sql.push_str(&format!(" AND {col} = ?{}", args.len()));
            }
        };
        eq("owner", &self.owner);
        eq("client_id", &self.client);
        eq("subject", &self.sub);
        eq("token_fp", &self.token);
        eq("grant_name", &self.grant);
        eq("provider", &self.provider);
        eq("task_id", &self.task);
        eq("call_id", &self.call);
        eq("outcome", &self.outcome);
        eq("reason", &self.reason);
        if !self.events.is_empty() {
            let mut marks = Vec::new();
            for e in &self.events {
                args.push(Sql::Text(e.clone()));
                marks.push(format!("?{}", args.len()));
            }
            sql.push_str(&format!(" AND event IN ({})", marks.join(",")));
        }
        if let Some(t) = self.since_ms {
            args.push(Sql::Integer(t));
            sql.push_str(&format!(" AND at_ms >= ?{}", args.len()));
        }
        if let Some(t) = self.until_ms {
            args.push(Sql::Integer(t));
            sql.push_str(&format!(" AND at_ms < ?{}", args.len()));
        }
        if let Some(n) = self.seq_from {
            args.push(Sql::Integer(n as i64));
            sql.push_str(&format!(" AND seq >= ?{}", args.len()));
        }
        if let Some(n) = self.seq_until {
            args.push(Sql::Integer(n as i64));
            sql.push_str(&format!(" AND seq < ?{}", args.len()));
        }
        (sql, args)
    }
}

/// Hands every matching record to `each`, oldest first, one at a time: constant memory.
pub fn for_each_record(
    conn: &Connection,
    f: &AuditFilter,
    each: &mut dyn FnMut(&super::AuditRecord) -> std::io::Result<()>,
) -> Result<u64, JournalError> {
    let (clause, args) = f.clause();
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM audit{clause} ORDER BY seq",
        read::AUDIT_COLUMNS
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut n = 0;
    while let Some(row) = rows.next()? {
        let record = read::audit_record(row)?;
        each(&record).map_err(|error| JournalError::Io {
            path: "output".into(),
            error,
        })?;
        n += 1;
    }
    Ok(n)
}

/// One group and its count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    /// The group-by values, in the order asked (absent values are null).
    pub key: Vec<Option<String>>,
    pub count: u64,
}

/// Counts matching records, grouped by `group_by` (names from [`GROUP_KEYS`]); largest first.
pub fn count(
    conn: &Connection,
    f: &AuditFilter,
    group_by: &[String],
) -> Result<Vec<Group>, QueryError> {
    let cols = group_by
        .iter()
        .map(|g| {
            GROUP_KEYS
                .iter()
                .find(|(name, _)| name == g)
                .map(|(_, col)| *col)
                .ok_or_else(|| {
                    let names: Vec<&str> = GROUP_KEYS.iter().map(|(n, _)| *n).collect();
                    QueryError::UnknownGroup(g.clone(), names.join(", "))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (clause, args) = f.clause();
    let sql = if cols.is_empty() {
        format!("SELECT COUNT(*) FROM audit{clause}")
    } else {
        let list = cols.join(", ");
        format!(
            "SELECT {list}, COUNT(*) AS n FROM audit{clause} GROUP BY {list} ORDER BY n DESC, {list}"
        )
    };
    let mut stmt = conn.prepare(&sql).map_err(JournalError::from)?;
    let n = cols.len();
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |r| {
            let key = (0..n)
                .map(|i| r.get::<_, Option<String>>(i))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Group {
                key,
                count: r.get(n)?,
            })
        })
        .map_err(JournalError::from)?;
    Ok(rows
        .collect::<Result<Vec<_>, _>>()
        .map_err(JournalError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;
    use crate::record::event;

    fn plan(conn: &Connection, sql: &str, args: Vec<Sql>) -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("the query should prepare");
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .expect("the plan should be readable");
        rows.map(|r| r.unwrap_or_default())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Schema 7 keeps one time index (`audit_time`) for what two answered: every filter on time,
    /// with or without an event, still reads an index and not the whole table, and so does the
    /// retention anchor, by its partial index.
    #[tokio::test]
    async fn the_filters_still_read_an_index() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("j.db");
        drop(Journal::open(&path).expect("the journal should open"));
        let conn = Journal::open_read_only(&path).expect("a reader");
        assert_eq!(
            event::AUDIT_PRUNED,
            "audit_pruned",
            "the literal in ends::ANCHOR"
        );
        let anchor = plan(&conn, super::super::ends::ANCHOR, Vec::new());
        assert!(anchor.contains("audit_anchor"), "{anchor}");
        for f in [
            AuditFilter {
                since_ms: Some(1),
                until_ms: Some(2),
                ..AuditFilter::default()
            },
            AuditFilter {
                events: vec![event::TASK_BEGUN.into(), event::TASK_ENDED.into()],
                since_ms: Some(1),
                ..AuditFilter::default()
            },
        ] {
            let (clause, args) = f.clause();
            let p = plan(&conn, &format!("SELECT COUNT(*) FROM audit{clause}"), args);
            assert!(p.contains("USING COVERING INDEX audit_time"), "{f:?}: {p}");
        }
        let grant = AuditFilter {
            grant: Some("db".into()),
            events: vec![event::LEASE_ISSUED.into()],
            since_ms: Some(1),
            ..AuditFilter::default()
        };
        let (clause, args) = grant.clause();
        let p = plan(&conn, &format!("SELECT COUNT(*) FROM audit{clause}"), args);
        assert!(p.contains("audit_grant"), "{p}");
    }
}
