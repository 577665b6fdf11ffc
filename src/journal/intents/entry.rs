//! How an intent is written in the log: the ops of a BeginTask's intent (its task, its pending
//! leases, their audit records, its idempotency key) as one JSON document. Explicit structs
//! rather than the rows themselves, so the format on disk changes only on purpose (`v`).

use std::borrow::Cow;
use std::sync::Arc;

use credbroker_provider_api::{Params, Role};
use serde::{Deserialize, Serialize};

use super::super::rows::{LeaseRow, LeaseState, TaskRow, TaskState, parse_role, role_str};
use super::super::{JournalError, Op};
use crate::record::{AuditRecord, PeerRecord};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    v: u32,
    task: Task<'a>,
    leases: Vec<Lease<'a>>,
    /// With each record its `at_ms`, which the record's own serialisation leaves out.
    audit: Vec<(i64, Cow<'a, AuditRecord>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Key<'a>>,
}

#[derive(Serialize, Deserialize)]
struct Task<'a> {
    id: Cow<'a, str>,
    workload: Cow<'a, str>,
    tool: Cow<'a, str>,
    issuer: Cow<'a, str>,
    subject: Cow<'a, str>,
    client_id: Cow<'a, str>,
    owner: Option<Cow<'a, str>>,
    owner_source: Cow<'a, str>,
    actors: Vec<String>,
    token_fp: Cow<'a, str>,
    jti: Cow<'a, str>,
    scopes: Cow<'a, str>,
    token_exp_ms: i64,
    peer: Cow<'a, PeerRecord>,
    created_ms: i64,
    expires_ms: i64,
    call_id: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
struct Lease<'a> {
    id: Cow<'a, str>,
    role: Cow<'a, str>,
    parent: Option<Cow<'a, str>>,
    grant: Cow<'a, str>,
    provider: Cow<'a, str>,
    kind: Cow<'a, str>,
    params: Cow<'a, Params>,
    wanted_exp_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Key<'a> {
    key: Cow<'a, str>,
    digest: String,
}

fn b(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

fn bad(what: impl std::fmt::Display) -> JournalError {
    JournalError::Encode(format!("intent: {what}"))
}

/// The intent `ops` as a log payload. Only a task's intent can be written: its task (issuing),
/// its leases (pending), audit records and idempotency key.
pub(super) fn encode(ops: &[Op]) -> Result<Vec<u8>, JournalError> {
    let mut task = None;
    let mut leases = Vec::new();
    let mut audit = Vec::new();
    let mut key = None;
    for op in ops {
        match op {
            Op::InsertTask(t) if t.state == TaskState::Issuing && task.is_none() => {
                task = Some(Task {
                    id: b(&t.id),
                    workload: b(&t.workload),
                    tool: b(&t.tool),
                    issuer: b(&t.issuer),
                    subject: b(&t.subject),
                    client_id: b(&t.client_id),
                    owner: t.owner.as_deref().map(b),
                    owner_source: b(&t.owner_source),
                    actors: t.actors.clone(),
                    token_fp: b(&t.token_fp),
                    jti: b(&t.jti),
                    scopes: b(&t.scopes),
                    token_exp_ms: t.token_exp_ms,
                    peer: Cow::Borrowed(&*t.peer),
                    created_ms: t.created_ms,
                    expires_ms: t.expires_ms,
                    call_id: t.call_id.as_deref().map(b),
                });
            }
            Op::InsertLease(l) if l.state == LeaseState::Pending => leases.push(Lease {
                id: b(&l.id),
                role: b(role_str(l.role)),
                parent: l.parent.as_deref().map(b),
                grant: b(&l.grant),
                provider: b(&l.provider),
                kind: b(&l.kind),
                params: Cow::Borrowed(&*l.params),
                wanted_exp_ms: l.wanted_exp_ms,
            }),
            Op::Audit(r) => audit.push((r.at_ms, Cow::Borrowed(&**r))),
            Op::BeginKey {
                key: k,
                digest,
                task_id,
                ..
            } if key.is_none() && task.as_ref().is_some_and(|t| *t.id == **task_id) => {
                key = Some(Key {
                    key: b(k),
                    digest: hex::encode(digest),
                });
            }
            _ => return Err(bad("an op that is not part of an intent")),
        }
    }
    let task = task.ok_or_else(|| bad("no task"))?;
    if leases.is_empty() {
        return Err(bad("no lease"));
    }
    let entry = Entry {
        v: VERSION,
        task,
        leases,
        audit,
        key,
    };
    serde_json::to_vec(&entry).map_err(bad)
}

/// The ops a payload stands for, as the SQLite intent commit would have made them.
pub(super) fn decode(payload: &[u8]) -> Result<Vec<Op>, JournalError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    // The version first: a newer format is said so, not met with a missing field.
    let v = serde_json::from_slice::<Version>(payload).map_err(bad)?.v;
    if v != VERSION {
        return Err(bad(format_args!(
            "version {v} is not {VERSION}: written by a newer credbroker"
        )));
    }
    let e: Entry<'_> = serde_json::from_slice(payload).map_err(bad)?;
    let t = e.task;
    let task = TaskRow {
        id: t.id.as_ref().into(),
        state: TaskState::Issuing,
        workload: t.workload.as_ref().into(),
        tool: t.tool.as_ref().into(),
        issuer: t.issuer.as_ref().into(),
        subject: t.subject.as_ref().into(),
        client_id: t.client_id.as_ref().into(),
        owner: t.owner.as_deref().map(Into::into),
        owner_source: t.owner_source.as_ref().into(),
        actors: t.actors,
        token_fp: t.token_fp.as_ref().into(),
        jti: t.jti.as_ref().into(),
        scopes: t.scopes.as_ref().into(),
        token_exp_ms: t.token_exp_ms,
        peer: Arc::new(t.peer.into_owned()),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
        ended_ms: None,
        end_reason: None,
        call_id: t.call_id.as_deref().map(Into::into),
    };
    let mut ops = vec![];
    for l in e.leases {
        let role: Role =
            parse_role(&l.role).ok_or_else(|| bad(format_args!("role {:?}", l.role)))?;
        ops.push(Op::InsertLease(Box::new(LeaseRow {
            id: l.id.as_ref().into(),
            task_id: Arc::clone(&task.id),
            role,
            parent: l.parent.as_deref().map(Into::into),
            grant: l.grant.as_ref().into(),
            provider: l.provider.as_ref().into(),
            kind: l.kind.as_ref().into(),
            state: LeaseState::Pending,
            params: Arc::new(l.params.into_owned()),
            wanted_exp_ms: l.wanted_exp_ms,
            issued_ms: None,
            expires_ms: None,
            revoked_ms: None,
            reference: None,
            sealed_handle: None,
            renewable: false,
            attempts: 0,
            next_attempt_ms: None,
            last_error: None,
        })));
    }
    for (at_ms, r) in e.audit {
        let mut r = r.into_owned();
        r.at_ms = at_ms;
        ops.push(Op::Audit(Box::new(r)));
    }
    if let Some(k) = e.key {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&k.digest, &mut digest).map_err(bad)?;
        ops.push(Op::BeginKey {
            workload: Arc::clone(&task.workload),
            key: k.key.into_owned(),
            task_id: Arc::clone(&task.id),
            digest,
            created_ms: task.created_ms,
        });
    }
    ops.insert(0, Op::InsertTask(Box::new(task)));
    Ok(ops)
}

/// The task an intent's ops open.
pub(crate) fn task_id(ops: &[Op]) -> Option<&str> {
    ops.iter().find_map(|op| match op {
        Op::InsertTask(t) => Some(&*t.id),
        _ => None,
    })
}
