//! The writes the journal knows, and how each is applied. Every update must touch exactly one
//! row: touching none means the broker's picture and the journal disagree, which is a bug worth
//! failing loudly on rather than papering over. State updates are also guarded by the state
//! machines (`transitions`).

use rusqlite::{Connection, params};

use super::rows::{LeaseRow, LeaseState, TaskRow, TaskState, Text};
use super::{JournalError, transitions};
use crate::record::AuditRecord;

#[derive(Clone, Debug)]
pub enum Op {
    InsertTask(Box<TaskRow>),
    InsertLease(Box<LeaseRow>),
    TaskState {
        id: Text,
        state: TaskState,
        ended_ms: Option<i64>,
        end_reason: Option<Text>,
    },
    TaskExpiry {
        id: Text,
        expires_ms: i64,
        token_exp_ms: i64,
    },
    LeaseIssued {
        id: Text,
        issued_ms: i64,
        expires_ms: i64,
        reference: Text,
        sealed_handle: Option<Vec<u8>>,
        renewable: bool,
    },
    LeaseState {
        id: Text,
        state: LeaseState,
        revoked_ms: Option<i64>,
        attempts: u32,
        next_attempt_ms: Option<i64>,
        last_error: Option<String>,
    },
    LeaseExpiry {
        id: Text,
        expires_ms: i64,
    },
    Audit(Box<AuditRecord>),
    /// A BeginTask idempotency key, in the intent's commit: a second use conflicts.
    BeginKey {
        workload: Text,
        key: String,
        task_id: Text,
        digest: [u8; 32],
        created_ms: i64,
    },
    /// The network an OAuth client made its first allowed MCP call from (kept if already known);
    /// `first` (the `client_first_seen` record) is appended only if this is the first, so it is
    /// written exactly once per client however many first requests race.
    ClientSeen {
        issuer: String,
        client_id: String,
        network: String,
        first_ms: i64,
        call_id: String,
        first: Option<Box<AuditRecord>>,
    },
    /// A Security Event Token taken (its jti): a second one with the same jti conflicts.
    SignalSeen {
        transmitter: String,
        jti: String,
        at_ms: i64,
    },
    /// A client registry entry, as an operator set it.
    SetClient(Box<super::clients::ClientRow>),
    /// A block placed (see `journal::blocks`).
    Block(Box<super::blocks::BlockRow>),
    /// A block lifted before its time; the block must be in force.
    LiftBlock {
        id: String,
        lifted_ms: i64,
        lifted_by: String,
    },
    /// An alert to deliver (the webhook outbox).
    QueueAlert {
        id: String,
        created_ms: i64,
        body: String,
    },
    /// An alert's delivery attempt: delivered, or when to try again.
    AlertAttempt {
        id: String,
        attempts: u32,
        next_attempt_ms: i64,
        delivered_ms: Option<i64>,
        last_error: Option<String>,
    },
    /// A fact about the journal itself (written once, e.g. the key check).
    SetMeta {
        name: &'static str,
        value: Vec<u8>,
    },
    /// Deletes the audit records before `keep_from` (retention) and appends `anchor`, which is
    /// given the hash of the last record deleted, so the rest still verifies.
    PruneAudit {
        keep_from: u64,
        anchor: Box<AuditRecord>,
    },
}

/// Executes through the connection's statement cache: the same dozen statements run for every
/// transition, and preparing them each time would cost more than running them.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// The running end of the audit hash chain.
#[derive(Clone, Copy)]
pub(super) struct Chain {
    pub(super) seq: u64,
    pub(super) hash: [u8; 32],
}

pub(super) fn apply(conn: &Connection, op: &mut Op, chain: &mut Chain) -> Result<(), JournalError> {
    // Audit records get their sequence number in place: no copy of the record.
    match op {
        Op::Audit(record) => return append_audit(conn, record, chain),
        Op::PruneAudit { keep_from, anchor } => {
            return prune_audit(conn, *keep_from, anchor, chain);
        }
        Op::ClientSeen {
            issuer,
            client_id,
            network,
            first_ms,
            call_id,
            first,
        } => {
            let inserted = exec(
                conn,
                "INSERT INTO clients_seen (issuer, client_id, network, first_ms, call_id)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![&*issuer, &*client_id, &*network, *first_ms, &*call_id],
            )?;
            // None inserted: a concurrent first request won; the first network stays the first.
            if let (1, Some(record)) = (inserted, first.as_mut()) {
                return append_audit(conn, record, chain);
            }
            return Ok(());
        }
        _ => {}
    }
    apply_row(conn, op)
}

fn apply_row(conn: &Connection, op: &Op) -> Result<(), JournalError> {
    let changed = match op {
        Op::InsertTask(t) => exec(
            conn,
            "INSERT INTO tasks (id, state, workload, tool, issuer, subject, client_id, owner,
                owner_source, actors, token_fp, jti, scopes, token_exp_ms, peer_uid, peer_gid,
                peer_pid, peer_exe, peer_unit, created_ms, expires_ms, ended_ms, end_reason, call_id)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24)",
            params![
                &*t.id,
                t.state.as_str(),
                &*t.workload,
                &*t.tool,
                &*t.issuer,
                &*t.subject,
                &*t.client_id,
                t.owner.as_deref(),
                &*t.owner_source,
                json(&t.actors)?,
                &*t.token_fp,
                &*t.jti,
                json(&t.scope_list())?,
                t.token_exp_ms,
                t.peer.uid,
                t.peer.gid,
                t.peer.pid,
                t.peer.exe,
                t.peer.unit,
                t.created_ms,
                t.expires_ms,
                t.ended_ms,
                t.end_reason.as_deref(),
                t.call_id.as_deref(),
            ],
        )?,
        Op::InsertLease(l) => exec(
            conn,
            "INSERT INTO leases (id, task_id, role, parent, grant_name, provider, kind, state, params,
                wanted_exp_ms, issued_ms, expires_ms, revoked_ms, reference, sealed_handle,
                renewable, attempts, next_attempt_ms, last_error)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19)",
            params![
                &*l.id,
                &*l.task_id,
                super::rows::role_str(l.role),
                l.parent.as_deref(),
                &*l.grant,
                &*l.provider,
                &*l.kind,
                l.state.as_str(),
                json(&*l.params)?,
                l.wanted_exp_ms,
                l.issued_ms,
                l.expires_ms,
                l.revoked_ms,
                l.reference.as_deref(),
                l.sealed_handle,
                l.renewable,
                l.attempts,
                l.next_attempt_ms,
                l.last_error,
            ],
        )?,
        Op::TaskState { id, state, ended_ms, end_reason } => {
            let sql = transitions::task_update(*state);
            match exec(conn, sql, params![id, state.as_str(), ended_ms, end_reason])? {
                0 => return Err(transitions::refused(conn, "tasks", id, state.as_str())),
                n => n,
            }
        }
        Op::TaskExpiry { id, expires_ms, token_exp_ms } => exec(
            conn,
            "UPDATE tasks SET expires_ms = ?2, token_exp_ms = ?3 WHERE id = ?1",
            params![id, expires_ms, token_exp_ms],
        )?,
        Op::LeaseIssued { id, issued_ms, expires_ms, reference, sealed_handle, renewable } => {
            match exec(
                conn,
                "UPDATE leases SET state = 'active', issued_ms = ?2, expires_ms = ?3, reference = ?4,
                    sealed_handle = ?5, renewable = ?6 WHERE id = ?1 AND state = 'pending'",
                params![id, issued_ms, expires_ms, reference, sealed_handle, renewable],
            )? {
                0 => return Err(transitions::refused(conn, "leases", id, "active")),
                n => n,
            }
        }
        Op::LeaseState { id, state, revoked_ms, attempts, next_attempt_ms, last_error } => {
            // A terminal lease no longer needs what revoked it: drop the sealed handle.
            let clear = state.is_terminal();
            let sql = transitions::lease_update(*state);
            let p = params![id, state.as_str(), revoked_ms, attempts, next_attempt_ms, last_error, clear];
            match exec(conn, sql, p)? {
                0 => return Err(transitions::refused(conn, "leases", id, state.as_str())),
                n => n,
            }
        }
        Op::LeaseExpiry { id, expires_ms } => {
            exec(conn, "UPDATE leases SET expires_ms = ?2 WHERE id = ?1", params![id, expires_ms])?
        }
        Op::BeginKey { workload, key, task_id, digest, created_ms } => exec(
            conn,
            "INSERT INTO begin_keys (workload, key, task_id, digest, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![&**workload, key, &**task_id, digest.as_slice(), created_ms],
        )?,
        Op::SetMeta { name, value } => exec(
            conn,
            "INSERT INTO meta (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = ?2",
            params![name, value],
        )?,
        Op::SetClient(c) => super::clients::upsert(conn, c)?,
        Op::SignalSeen { transmitter, jti, at_ms } => exec(
            conn,
            "INSERT INTO signals_seen (transmitter, jti, at_ms) VALUES (?1, ?2, ?3)",
            params![transmitter, jti, at_ms],
        )?,
        Op::Block(b) => super::blocks::insert(conn, b)?,
        Op::LiftBlock { id, lifted_ms, lifted_by } => {
            match super::blocks::lift(conn, id, *lifted_ms, lifted_by)? {
                0 => {
                    return Err(JournalError::Conflict(format!(
                        "block {id} is not in force"
                    )));
                }
                n => n,
            }
        }
        Op::QueueAlert { id, created_ms, body } => exec(
            conn,
            "INSERT INTO alerts (id, created_ms, body, next_attempt_ms) VALUES (?1, ?2, ?3, ?2)",
            params![id, created_ms, body],
        )?,
        Op::AlertAttempt { id, attempts, next_attempt_ms, delivered_ms, last_error } => exec(
            conn,
            "UPDATE alerts SET attempts = ?2, next_attempt_ms = ?3, delivered_ms = ?4,
                last_error = ?5 WHERE id = ?1 AND delivered_ms IS NULL",
            params![id, attempts, next_attempt_ms, delivered_ms, last_error],
        )?,
        // Handled by `apply`.
        Op::Audit(_) | Op::PruneAudit { .. } | Op::ClientSeen { .. } => 1,
    };
    if changed != 1 {
        return Err(JournalError::Conflict(format!(
            "{} changed {changed} rows",
            name(op)
        )));
    }
    Ok(())
}

fn append_audit(
    conn: &Connection,
    record: &mut AuditRecord,
    chain: &mut Chain,
) -> Result<(), JournalError> {
    record.seq = chain.seq + 1;
    // The hash covers the record's canonical JSON; the table keeps the fields as columns and
    // the canonical form is rebuilt from them to export or verify (see `read::audit_record`).
    let body = serde_json::to_string(&*record).map_err(|e| JournalError::Encode(e.to_string()))?;
    let hash = chain_hash(&chain.hash, body.as_bytes());
    let peer = record.peer.as_ref().map(json).transpose()?;
    let actors = (!record.actors.is_empty())
        .then(|| json(&record.actors))
        .transpose()?;
    let detail = (!record.detail.is_empty())
        .then(|| json(&record.detail))
        .transpose()?;
    exec(
        conn,
        "INSERT INTO audit (seq, at_ms, event, outcome, reason, task_id, lease_id, workload, tool,
            grant_name, provider, peer, issuer, client_id, subject, actors, owner, owner_source,
            token_fp, jti, detail, hash, call_id)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23)",
        params![
            record.seq,
            record.at_ms,
            record.event,
            record.outcome,
            record.reason,
            record.task_id,
            record.lease_id,
            record.workload,
            record.tool,
            record.grant,
            record.provider,
            peer,
            record.issuer,
            record.client_id,
            record.subject,
            actors,
            record.owner,
            record.owner_source,
            record.token_fingerprint,
            record.jti,
            detail,
            hash.as_slice(),
            record.call_id,
        ],
    )?;
    *chain = Chain {
        seq: record.seq,
        hash,
    };
    Ok(())
}

/// Retention: deletes every record before `keep_from` and appends the anchor carrying the hash
/// the record `keep_from` chains from. Refuses when that predecessor is missing (the chain is
/// already damaged; `audit verify` says where), so pruning never hides a deletion.
fn prune_audit(
    conn: &Connection,
    keep_from: u64,
    anchor: &mut AuditRecord,
    chain: &mut Chain,
) -> Result<(), JournalError> {
    if keep_from > chain.seq + 1 {
        return Err(JournalError::Conflict(format!(
            "cannot prune up to record {keep_from}: the audit log ends at {}",
            chain.seq
        )));
    }
    let oldest: Option<u64> = conn.query_row("SELECT MIN(seq) FROM audit", [], |r| r.get(0))?;
    if oldest.is_none_or(|o| o >= keep_from) {
        return Ok(());
    }
    let prev: Vec<u8> = conn
        .query_row(
            "SELECT hash FROM audit WHERE seq = ?1",
            [keep_from - 1],
            |r| r.get(0),
        )
        .map_err(|_| {
            JournalError::Conflict(format!(
                "cannot prune the audit log: record {} is missing (run `credbroker audit verify`)",
                keep_from - 1
            ))
        })?;
    let pruned = exec(conn, "DELETE FROM audit WHERE seq < ?1", [keep_from])?;
    anchor
        .detail
        .insert("first_kept_seq".into(), keep_from.into());
    anchor
        .detail
        .insert("prev_hash".into(), crate::keys::hex(&prev).into());
    anchor.detail.insert("pruned_records".into(), pruned.into());
    append_audit(conn, anchor, chain)
}

/// `SHA-256(prev ‖ body)`: each record commits to everything before it.
pub fn chain_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev);
    ctx.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, JournalError> {
    serde_json::to_string(v).map_err(|e| JournalError::Encode(e.to_string()))
}

fn name(op: &Op) -> &'static str {
    match op {
        Op::InsertTask(_) => "insert task",
        Op::InsertLease(_) => "insert lease",
        Op::TaskState { .. } => "task state",
        Op::TaskExpiry { .. } => "task expiry",
        Op::LeaseIssued { .. } => "lease issued",
        Op::LeaseState { .. } => "lease state",
        Op::LeaseExpiry { .. } => "lease expiry",
        Op::Audit(_) => "audit",
        Op::PruneAudit { .. } => "prune audit",
        Op::BeginKey { .. } => "begin key",
        Op::SetMeta { .. } => "set meta",
        Op::ClientSeen { .. } => "client seen",
        Op::Block(_) => "block",
        Op::SetClient(_) => "set client",
        Op::SignalSeen { .. } => "signal seen",
        Op::LiftBlock { .. } => "lift block",
        Op::QueueAlert { .. } => "queue alert",
        Op::AlertAttempt { .. } => "alert attempt",
    }
}
