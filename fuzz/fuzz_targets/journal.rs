//! The journal's recovery from a truncated or corrupted database file.
//!
//! Once per process, a real journal is built through the public API (`Journal::open_with` and
//! `Op`s: tasks in every state, leases in several, sealed revocation handles, audit records with
//! a sealed head), closed, and its WAL checkpointed into the main file, whose bytes are kept.
//! Each input is a list of mutations (truncate, overwrite bytes, zero a page, flip a bit, set
//! a 32-bit big-endian field; then optionally overwrite each occurrence of a byte string)
//! applied to a copy written to a new file. That copy is then
//! opened as the daemon opens it at start (`Journal::open_with`, which migrates and reads the
//! audit chain's head) and read as recovery reads it (`read::for_each_live_task`, opening each
//! sealed handle), as the admin queries read it (`read::task`, `read::tasks`,
//! `read::audit_of_task`), and as `credbroker audit verify` does (`audit::verify::verify`);
//! then the audit record recovery writes is committed. Errors are fine; panics, hangs and
//! aborts are not.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use arbitrary::{Arbitrary, Unstructured};
use credbroker::keys::AuditKey;
use credbroker::audit::{AuditRecord, Outcome, PeerRecord, event};
use credbroker::journal::read::{self, TaskFilter};
use credbroker::journal::rows::{LeaseRow, LeaseState, TaskRow, TaskState, Text};
use credbroker::journal::seal::Sealer;
use credbroker::journal::{Journal, Op};
use credbroker_provider_api::{Role, SecretValue};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const JOURNAL_KEY: [u8; 32] = [0x42; 32];
const HEAD_KEY: [u8; 32] = [0x07; 32];

struct World {
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    sealer: Sealer,
    /// The checkpointed database file.
    image: Vec<u8>,
    page_size: usize,
    task_ids: Vec<String>,
}

fn id() -> Text {
    uuid::Uuid::now_v7().to_string().into()
}

fn task(id: &Text, state: TaskState, n: u32) -> TaskRow {
    TaskRow {
        id: Arc::clone(id),
        state,
        workload: "postgres-mcp".into(),
        tool: "query".into(),
        issuer: "https://as.fuzz.test".into(),
        subject: format!("agent-{n}").into(),
        client_id: "agent-1".into(),
        owner: (n % 2 == 0).then(|| "alice@example.com".into()),
        owner_source: "client_registry".into(),
        actors: if n % 3 == 0 { vec!["orchestrator".into()] } else { vec![] },
        token_fp: "ab".repeat(32).into(),
        jti: format!("jti-{n}").into(),
        scopes: "mcp.tool:postgres.read extra".into(),
        token_exp_ms: 1_800_000_300_000,
        peer: Arc::new(PeerRecord {
            uid: 1000 + n,
            gid: 1000,
            pid: 4242,
            exe: Some("/usr/bin/postgres-mcp".into()),
            unit: (n % 2 == 1).then(|| "postgres-mcp.service".into()),
        }),
        created_ms: 1_800_000_000_000 + i64::from(n),
        expires_ms: 1_800_000_900_000,
        ended_ms: None,
        end_reason: None,
        call_id: None,
    }
}

fn lease(id: &Text, task: &Text, state: LeaseState, role: Role, parent: Option<&Text>) -> LeaseRow {
    let params = serde_json::json!({"kind": "dynamic", "path": "database/creds/orders-read",
        "public": ["username"], "n": 3, "nested": {"a": [1, 2.5, null, true]}});
    LeaseRow {
        id: Arc::clone(id),
        task_id: Arc::clone(task),
        role,
        parent: parent.cloned(),
        grant: "orders-db-read".into(),
        provider: "vault-main".into(),
        kind: "vault".into(),
        state,
        params: Arc::new(params.as_object().cloned().unwrap_or_default()),
        wanted_exp_ms: 1_800_000_600_000,
        issued_ms: None,
        expires_ms: None,
        revoked_ms: None,
        reference: None,
        sealed_handle: None,
        renewable: false,
        attempts: 0,
        next_attempt_ms: None,
        last_error: None,
    }
}

fn audit(ev: &str, task: Option<&TaskRow>, lease: Option<&LeaseRow>) -> Op {
    let mut r = AuditRecord::new(ev, Outcome::Success, SystemTime::now());
    if let Some(t) = task {
        r.task_id = Some(t.id.to_string());
        r.workload = Some(t.workload.to_string());
        r.tool = Some(t.tool.to_string());
        r.peer = Some((*t.peer).clone());
        r.issuer = Some(t.issuer.to_string());
        r.client_id = Some(t.client_id.to_string());
        r.subject = Some(t.subject.to_string());
        r.actors = t.actors.clone();
        r.owner = t.owner.as_ref().map(|o| o.to_string());
        r.owner_source = Some(t.owner_source.to_string());
        r.token_fingerprint = Some(t.token_fp.to_string());
        r.jti = Some(t.jti.to_string());
    }
    if let Some(l) = lease {
        r = r.lease(&l.id, &l.grant, &l.provider).detail("ttl_s", 300).detail("public", "username");
    }
    Op::Audit(Box::new(r))
}

/// Builds the journal every input starts from; returns the task ids.
async fn populate(j: &Journal, sealer: &Sealer) -> Vec<String> {
    let mut ids = Vec::new();
    let commit = |ops: Vec<Op>| async move {
        j.commit(ops).await.unwrap_or_else(|e| panic!("building the journal: {e}"));
    };
    commit(vec![audit(event::DAEMON_STARTED, None, None)]).await;
    for n in 0..8u32 {
        let tid = id();
        ids.push(tid.to_string());
        let t = task(&tid, TaskState::Issuing, n);
        // A scope lease and a credential under it; every other task has a plain credential.
        let scope_id = id();
        let scope = lease(&scope_id, &tid, LeaseState::Pending, Role::Scope, None);
        let cred_id = id();
        let parent = (n % 2 == 0).then_some(&scope_id);
        let cred = lease(&cred_id, &tid, LeaseState::Pending, Role::Credential, parent);
        let mut ops = vec![Op::InsertTask(Box::new(t.clone()))];
        if n % 2 == 0 {
            ops.push(Op::InsertLease(Box::new(scope.clone())));
        }
        ops.push(Op::InsertLease(Box::new(cred.clone())));
        ops.push(audit(event::TASK_OPENED, Some(&t), None));
        commit(ops).await;
        if n == 0 {
            // Left issuing, its leases pending: what a crash mid-BeginTask leaves.
            continue;
        }
        let mut issued = Vec::new();
        for l in [(n % 2 == 0).then_some(&scope), Some(&cred)].into_iter().flatten() {
            let handle = sealer
                .seal(&l.id, &SecretValue::new(format!("secret-of-{}", l.id)))
                .unwrap_or_else(|e| panic!("{e}"));
            issued.push(Op::LeaseIssued {
                id: Arc::clone(&l.id),
                issued_ms: 1_800_000_001_000,
                expires_ms: 1_800_000_600_000,
                reference: format!("auth/token/accessor/{}", l.id).into(),
                sealed_handle: (n % 3 != 1).then_some(handle),
                renewable: n % 2 == 1,
            });
            issued.push(audit(event::LEASE_ISSUED, Some(&t), Some(l)));
        }
        issued.push(Op::TaskState {
            id: Arc::clone(&tid),
            state: TaskState::Active,
            ended_ms: None,
            end_reason: None,
        });
        issued.push(audit(event::TASK_BEGUN, Some(&t), None));
        commit(issued).await;
        match n % 4 {
            // Ending, a revocation failing and due again.
            2 => {
                commit(vec![
                    Op::TaskState {
                        id: Arc::clone(&tid),
                        state: TaskState::Ending,
                        ended_ms: None,
                        end_reason: Some("ended_by_workload".into()),
                    },
                    Op::LeaseState {
                        id: Arc::clone(&cred_id),
                        state: LeaseState::Revoking,
                        revoked_ms: None,
                        attempts: 2,
                        next_attempt_ms: Some(1_800_000_010_000),
                        last_error: Some("connection refused".into()),
                    },
                    audit(event::TASK_ENDING, Some(&t), None),
                ])
                .await;
            }
            // Ended, its leases revoked.
            3 => {
                let mut ops = vec![Op::LeaseState {
                    id: Arc::clone(&cred_id),
                    state: LeaseState::Revoked,
                    revoked_ms: Some(1_800_000_020_000),
                    attempts: 1,
                    next_attempt_ms: None,
                    last_error: None,
                }];
                ops.push(audit(event::LEASE_REVOKED, Some(&t), Some(&cred)));
                ops.push(Op::TaskState {
                    id: Arc::clone(&tid),
                    state: TaskState::Ended,
                    ended_ms: Some(1_800_000_020_000),
                    end_reason: Some("ended_by_workload".into()),
                });
                ops.push(audit(event::TASK_ENDED, Some(&t), None));
                commit(ops).await;
            }
            // Active, its expiry extended.
            _ => {
                commit(vec![
                    Op::TaskExpiry {
                        id: Arc::clone(&tid),
                        expires_ms: 1_800_001_800_000,
                        token_exp_ms: 1_800_001_800_000,
                    },
                    Op::LeaseExpiry {
                        id: Arc::clone(&cred_id),
                        expires_ms: 1_800_001_800_000,
                    },
                    audit(event::TASK_RENEWED, Some(&t), None),
                ])
                .await;
            }
        }
    }
    ids
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    // A tmpfs when there is one: every input writes and fsyncs a database.
    let dir = common::scratch_dir("journal");
    let sealer = Sealer::from_bytes(&JOURNAL_KEY).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("base.db");
    let j = Journal::open_with(&path, Some(AuditKey::from_key(&HEAD_KEY)))
        .unwrap_or_else(|e| panic!("{e}"));
    let task_ids = rt.block_on(populate(&j, &sealer));
    drop(j);
    // The writer thread closes its connection once the queue is dropped; then fold the WAL
    // into the file, so the file alone is the journal.
    std::thread::sleep(Duration::from_millis(300));
    {
        let c = rusqlite::Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0))
            .unwrap_or_else(|e| panic!("checkpoint: {e}"));
    }
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "the WAL was not checkpointed");
    let image = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let page_size = match u16::from_be_bytes([image[16], image[17]]) {
        1 => 65536,
        n => usize::from(n),
    };
    assert!(page_size >= 512 && image.len() % page_size == 0, "not an SQLite file");
    World {
        rt,
        dir,
        sealer,
        image,
        page_size,
        task_ids,
    }
});

#[derive(Arbitrary, Debug)]
enum Mutation {
    Truncate(u32),
    Overwrite { offset: u32, bytes: Vec<u8> },
    ZeroPage(u16),
    FlipBit(u32),
    /// SQLite's header and page fields are big-endian integers.
    SetBe32 { offset: u32, value: u32 },
}

/// Overwrites each occurrence of `find` (up to 64) with `with`: a damage that finds its place by
/// content (a live record and its stale copies alike), so that a reproducer still hits its field
/// when the journal's layout changes.
#[derive(Arbitrary, Debug)]
struct Patch {
    find: Vec<u8>,
    with: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    mutations: Vec<Mutation>,
    head_key: bool,
    /// Last, so that inputs written before it was added still decode as they did.
    patch: Option<Patch>,
}

fn mutate(w: &World, input: &Input) -> Vec<u8> {
    let mut b = w.image.clone();
    for m in input.mutations.iter().take(16) {
        let len = b.len();
        match m {
            Mutation::Truncate(at) => b.truncate(*at as usize % (len + 1)),
            _ if len == 0 => {}
            Mutation::Overwrite { offset, bytes } => {
                let start = *offset as usize % len;
                let n = bytes.len().min(len - start).min(4096);
                b[start..start + n].copy_from_slice(&bytes[..n]);
            }
            Mutation::ZeroPage(p) => {
                let pages = len.div_ceil(w.page_size);
                let start = (usize::from(*p) % pages) * w.page_size;
                let end = (start + w.page_size).min(len);
                b[start..end].fill(0);
            }
            Mutation::FlipBit(bit) => {
                let i = (*bit as usize / 8) % len;
                b[i] ^= 1 << (bit % 8);
            }
            Mutation::SetBe32 { offset, value } => {
                let start = *offset as usize % len;
                for (i, byte) in value.to_be_bytes().iter().enumerate() {
                    if let Some(slot) = b.get_mut(start + i) {
                        *slot = *byte;
                    }
                }
            }
        }
    }
    if let Some(Patch { find, with }) = &input.patch
        && !find.is_empty()
        && find.len() <= 64
    {
        let places: Vec<usize> = b
            .windows(find.len())
            .enumerate()
            .filter(|(_, w)| *w == find.as_slice())
            .map(|(at, _)| at)
            .take(64)
            .collect();
        for at in places {
            let n = with.len().min(b.len() - at);
            b[at..at + n].copy_from_slice(&with[..n]);
        }
    }
    b
}

static N: AtomicU64 = AtomicU64::new(0);

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

async fn recover(w: &'static World, j: &Journal, head_key: Option<AuditKey>) {
    let sealer = &w.sealer;
    // What `Broker::recover` reads, and the handles it opens.
    let live = j
        .read(move |c| {
            let mut n = 0usize;
            read::for_each_live_task(c, &|s| Text::from(s), &mut |view| {
                n += 1;
                for l in &view.leases {
                    if let Some(sealed) = &l.sealed_handle {
                        let _ = sealer.open(&l.id, sealed);
                    }
                    let _ = l.state.is_terminal();
                }
                let _ = view.task.scope_list();
            })?;
            Ok(n)
        })
        .await;
    // The admin queries and `audit verify`.
    let ids = w.task_ids.clone();
    let _ = j
        .read(move |c| {
            for id in ids.iter().take(3) {
                let _ = read::task(c, id);
                let _ = read::audit_of_task(c, id);
            }
            let _ = read::tasks(c, &TaskFilter { include_ended: true, limit: 100, ..Default::default() });
            let _ = read::tasks(
                c,
                &TaskFilter {
                    grant: Some("orders-db-read".into()),
                    provider: Some("vault-main".into()),
                    limit: 10,
                    ..Default::default()
                },
            );
            let report = credbroker::audit::verify::verify(c, head_key.as_ref());
            if let Ok(r) = &report {
                assert_eq!(r.problems == 0, r.ok());
                assert!(r.listed.len() as u64 <= r.problems);
            }
            Ok(())
        })
        .await;
    if live.is_ok() {
        // Recovery then commits what it decided, with the daemon_started record.
        let started = AuditRecord::new(event::DAEMON_STARTED, Outcome::Success, SystemTime::now())
            .detail("active_tasks", 0);
        let _ = j.commit(vec![Op::Audit(Box::new(started))]).await;
    }
}

fuzz_target!(|data: &[u8]| {
    let w = &*WORLD;
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else { return };
    let bytes = mutate(w, &input);
    // A new file each time: the previous journal's writer thread may still be closing its own.
    let n = N.fetch_add(1, Ordering::Relaxed);
    if n > 0 {
        remove_db(&w.dir.join(format!("j{}.db", n - 1)));
    }
    let path = w.dir.join(format!("j{n}.db"));
    std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let head_key = input.head_key.then(|| AuditKey::from_key(&HEAD_KEY));
    let opened = Journal::open_with(&path, input.head_key.then(|| AuditKey::from_key(&HEAD_KEY)));
    if let Ok(j) = opened {
        w.rt.block_on(recover(w, &j, head_key));
        drop(j);
    }
});
