//! The journal's tables. Versioned with `PRAGMA user_version`; each migration runs once, in a
//! transaction.

use rusqlite::Connection;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: tasks, leases, audit. Tasks and leases are keyed by their time-ordered id with no
    // separate rowid tree; audit records keep their fields as columns (no JSON copy) and the
    // hash of their canonical JSON.
    r#"
    CREATE TABLE tasks (
        id            TEXT PRIMARY KEY,
        state         TEXT NOT NULL,
        workload      TEXT NOT NULL,
        tool          TEXT NOT NULL,
        issuer        TEXT NOT NULL,
        subject       TEXT NOT NULL,
        client_id     TEXT NOT NULL,
        owner         TEXT,
        owner_source  TEXT NOT NULL,
        actors        TEXT NOT NULL,
        token_fp      TEXT NOT NULL,
        jti           TEXT NOT NULL,
        scopes        TEXT NOT NULL,
        token_exp_ms  INTEGER NOT NULL,
        peer_uid      INTEGER NOT NULL,
        peer_gid      INTEGER NOT NULL,
        peer_pid      INTEGER NOT NULL,
        peer_exe      TEXT,
        peer_unit     TEXT,
        created_ms    INTEGER NOT NULL,
        expires_ms    INTEGER NOT NULL,
        ended_ms      INTEGER,
        end_reason    TEXT
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX tasks_live ON tasks(state) WHERE state <> 'ended';
    CREATE INDEX tasks_created ON tasks(created_ms);

    CREATE TABLE leases (
        id               TEXT PRIMARY KEY,
        task_id          TEXT NOT NULL REFERENCES tasks(id),
        role             TEXT NOT NULL,
        parent           TEXT,
        grant_name       TEXT NOT NULL,
        provider         TEXT NOT NULL,
        kind             TEXT NOT NULL,
        state            TEXT NOT NULL,
        params           TEXT NOT NULL,
        wanted_exp_ms    INTEGER NOT NULL,
        issued_ms        INTEGER,
        expires_ms       INTEGER,
        revoked_ms       INTEGER,
        reference        TEXT,
        sealed_handle    BLOB,
        renewable        INTEGER NOT NULL DEFAULT 0,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms  INTEGER,
        last_error       TEXT
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX leases_task ON leases(task_id);

    CREATE TABLE audit (
        seq          INTEGER PRIMARY KEY,
        at_ms        INTEGER NOT NULL,
        event        TEXT NOT NULL,
        outcome      TEXT NOT NULL,
        reason       TEXT,
        task_id      TEXT,
        lease_id     TEXT,
        workload     TEXT,
        tool         TEXT,
        grant_name   TEXT,
        provider     TEXT,
        peer         TEXT,
        issuer       TEXT,
        client_id    TEXT,
        subject      TEXT,
        actors       TEXT,
        owner        TEXT,
        owner_source TEXT,
        token_fp     TEXT,
        jti          TEXT,
        detail       TEXT,
        hash         BLOB NOT NULL
    ) STRICT;
    CREATE INDEX audit_at ON audit(at_ms);
    CREATE INDEX audit_task ON audit(task_id);
    "#,
    // 2: no index on tasks.created_ms. Task ids are time-ordered, so listing by id is listing by
    // creation; the index only cost a page write on every task insert.
    r#"
    DROP INDEX IF EXISTS tasks_created;
    "#,
    // 3: the sealed chain head (one row, rewritten in every commit that appends records, when a
    // head key is configured), and the indexes `audit query` needs: credentials of a grant over
    // time grouped by client and owner is answered from the index alone; everything else by
    // event and time.
    r#"
    CREATE TABLE audit_head (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        seq   INTEGER NOT NULL,
        hash  BLOB NOT NULL,
        mac   BLOB NOT NULL
    ) STRICT;
    CREATE INDEX audit_grant ON audit(grant_name, event, at_ms, client_id, owner)
        WHERE grant_name IS NOT NULL;
    CREATE INDEX audit_event ON audit(event, at_ms);
    "#,
    // 4: facts about the journal itself (the journal key's check value), and BeginTask
    // idempotency keys: which task a workload's key began, and a digest of the request, so a
    // retry after a lost answer finds the task instead of leaving it unknown to its client.
    r#"
    CREATE TABLE meta (
        name   TEXT PRIMARY KEY,
        value  BLOB NOT NULL
    ) STRICT;
    CREATE TABLE begin_keys (
        workload    TEXT NOT NULL,
        key         TEXT NOT NULL,
        task_id     TEXT NOT NULL,
        digest      BLOB NOT NULL,
        created_ms  INTEGER NOT NULL,
        PRIMARY KEY (workload, key)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 5: MCP calls. The gateway's records carry the call's id, and so do the tasks an upstream
    // began for a call: `lineage` links call → task, and a BeginTask naming a call finds the
    // call's record by the index, which also keeps a call id from being recorded twice.
    r#"
    ALTER TABLE audit ADD COLUMN call_id TEXT;
    ALTER TABLE tasks ADD COLUMN call_id TEXT;
    CREATE INDEX audit_call ON audit(call_id) WHERE call_id IS NOT NULL;
    CREATE UNIQUE INDEX audit_call_once ON audit(call_id) WHERE event = 'mcp_call';
    -- Where each OAuth client made its first allowed MCP call from: the network (/24, /48)
    -- and the call. Written once per client, never updated.
    CREATE TABLE clients_seen (
        issuer     TEXT NOT NULL,
        client_id  TEXT NOT NULL,
        network    TEXT NOT NULL,
        first_ms   INTEGER NOT NULL,
        call_id    TEXT NOT NULL,
        PRIMARY KEY (issuer, client_id)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 6: blocks (see `journal::blocks`), the client registry's run-time changes, and the outbox of abuse alerts: an alert is written in
    // the same commit as the finding it reports, and the delivery loop sends it until the
    // webhook takes it, across restarts.
    r#"
    CREATE TABLE blocks (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        issuer      TEXT,
        value       TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        until_ms    INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        source      TEXT NOT NULL,
        lifted_ms   INTEGER,
        lifted_by   TEXT
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX blocks_live ON blocks(until_ms) WHERE lifted_ms IS NULL;
    CREATE TABLE alerts (
        id               TEXT PRIMARY KEY,
        created_ms       INTEGER NOT NULL,
        body             TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms  INTEGER NOT NULL,
        delivered_ms     INTEGER,
        last_error       TEXT
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX alerts_due ON alerts(next_attempt_ms) WHERE delivered_ms IS NULL;
    -- Security Event Tokens received (Shared Signals), by transmitter and jti: a replay is refused.
    CREATE TABLE signals_seen (
        transmitter  TEXT NOT NULL,
        jti          TEXT NOT NULL,
        at_ms        INTEGER NOT NULL,
        PRIMARY KEY (transmitter, jti)
    ) STRICT, WITHOUT ROWID;
    -- The client registry as operators changed it (`credbroker clients`); it overrides the
    -- configuration's [[client]] entry of the same client.
    CREATE TABLE clients (
        issuer      TEXT NOT NULL,
        client_id   TEXT NOT NULL,
        owner       TEXT,
        expires_ms  INTEGER,
        grants      TEXT NOT NULL,
        status      TEXT NOT NULL,
        updated_ms  INTEGER NOT NULL,
        updated_by  TEXT NOT NULL,
        PRIMARY KEY (issuer, client_id)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 7: one time index where there were two. `audit_event (event, at_ms)` put each commit's
    // records on as many index pages as the commit had events (a BeginTask and an EndTask
    // have six), and every page a commit touches is written whole to the WAL: with it and
    // `audit_at`, the audit indexes were a third of the pages a group commit wrote.
    // `(at_ms, event)` appends to one page and still answers a filter on time and event from
    // the index alone (an event without a time reads this index whole rather than the
    // table). The retention anchor, the one lookup by event alone, gets a partial index that
    // no other record touches.
    r#"
    DROP INDEX IF EXISTS audit_at;
    DROP INDEX IF EXISTS audit_event;
    CREATE INDEX audit_time ON audit(at_ms, event);
    CREATE INDEX audit_anchor ON audit(seq) WHERE event = 'audit_pruned';
    "#,
];

pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// The newest schema version this build knows; a newer journal is refused, not guessed at.
pub(super) const VERSION: usize = MIGRATIONS.len();
