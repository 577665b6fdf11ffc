use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::rows::{LeaseRow, LeaseState, TaskRow, TaskState};
use super::*;
use crate::record::{AuditRecord, Outcome, PeerRecord};

pub(super) fn task(id: &str) -> TaskRow {
    TaskRow {
        id: id.into(),
        state: TaskState::Issuing,
        workload: "w".into(),
        tool: "t".into(),
        issuer: "https://as".into(),
        subject: "alice".into(),
        client_id: "agent".into(),
        owner: Some("alice".into()),
        owner_source: "resource_owner".into(),
        actors: vec![],
        token_fp: "ff".into(),
        jti: "j".into(),
        scopes: "s".into(),
        token_exp_ms: 2,
        peer: Arc::new(PeerRecord {
            uid: 1,
            gid: 2,
            pid: 3,
            exe: None,
            unit: None,
        }),
        created_ms: 1,
        expires_ms: 2,
        ended_ms: None,
        end_reason: None,
        call_id: None,
    }
}

pub(super) fn lease(id: &str, task: &str) -> LeaseRow {
    LeaseRow {
        id: id.into(),
        task_id: task.into(),
        role: credbroker_provider_api::Role::Credential,
        parent: None,
        grant: "g".into(),
        provider: "p".into(),
        kind: "test".into(),
        state: LeaseState::Pending,
        params: Default::default(),
        wanted_exp_ms: 2,
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

pub(super) fn audit(event: &str) -> Op {
    Op::Audit(Box::new(AuditRecord::new(
        event,
        Outcome::Success,
        SystemTime::now(),
    )))
}

#[tokio::test]
async fn commits_are_durable_private_and_chained() {
    let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
    let path = dir.path().join("j.db");
    let j = Journal::open(&path).expect("a fresh journal should open");
    let mode = std::fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600);
    j.commit(vec![
        Op::InsertTask(Box::new(task("t1"))),
        Op::InsertLease(Box::new(lease("l1", "t1"))),
        audit("a"),
    ])
    .await
    .expect("the first task, lease and record should commit");
    j.commit(vec![audit("b")])
        .await
        .expect("the second audit record should commit");
    drop(j);

    // Reopened: the data and the chain continue.
    let j = Journal::open(&path).expect("the journal should reopen with its data");
    j.commit(vec![audit("c")])
        .await
        .expect("a record after reopening should commit");
    let (live, chain) = j
        .read(|c| {
            let live = read::live_tasks(c, &|s| s.into())?;
            let mut stmt = c.prepare(&format!(
                "SELECT {} FROM audit ORDER BY seq",
                read::AUDIT_COLUMNS
            ))?;
            let rows: Vec<(u64, String, Vec<u8>)> = stmt
                .query_map([], |r| {
                    let rec = read::audit_record(r)?;
                    Ok((
                        rec.seq,
                        serde_json::to_string(&rec).unwrap_or_default(),
                        r.get(21)?,
                    ))
                })?
                .collect::<Result<_, _>>()?;
            Ok((live, rows))
        })
        .await
        .expect("live tasks and the audit chain should read back");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].leases.len(), 1);
    assert_eq!(chain.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    // The canonical JSON rebuilt from the columns is exactly what was hashed.
    let mut prev = [0u8; 32];
    for (_, body, h) in &chain {
        assert_eq!(h.as_slice(), chain_hash(&prev, body.as_bytes()).as_slice());
        prev.copy_from_slice(h);
    }
}

#[tokio::test]
async fn a_failing_submission_changes_nothing_and_spares_its_group() {
    let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
    let j = Arc::new(Journal::open(&dir.path().join("j.db")).expect("a fresh journal should open"));
    // Submitted together so they share a group commit; the middle one updates a missing row.
    let a = j.commit(vec![Op::InsertTask(Box::new(task("t1"))), audit("ok-1")]);
    let b = j.commit(vec![
        audit("doomed"),
        Op::TaskState {
            id: "missing".into(),
            state: TaskState::Ended,
            ended_ms: None,
            end_reason: None,
        },
    ]);
    let c = j.commit(vec![Op::InsertTask(Box::new(task("t2"))), audit("ok-2")]);
    let (a, b, c) = tokio::join!(a, b, c);
    assert!(a.is_ok() && c.is_ok());
    assert!(matches!(b, Err(JournalError::Conflict(_))));
    let events = j
        .read(|c| {
            let mut stmt = c.prepare("SELECT seq, event FROM audit ORDER BY seq")?;
            let rows: Vec<(u64, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap_or_default();
    // The doomed record is gone and the chain has no gap.
    assert_eq!(
        events,
        vec![(1, "ok-1".to_string()), (2, "ok-2".to_string())]
    );
}

#[tokio::test]
async fn concurrent_commits_share_fsyncs() {
    let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
    let j = Arc::new(Journal::open(&dir.path().join("j.db")).expect("a fresh journal should open"));
    let mut handles = Vec::new();
    for i in 0..200 {
        let j = Arc::clone(&j);
        handles.push(tokio::spawn(async move {
            j.commit(vec![audit(&format!("e{i}"))]).await
        }));
    }
    for h in handles {
        assert!(h.await.is_ok_and(|r| r.is_ok()));
    }
    let commits = j.stats.commits.load(Ordering::Relaxed);
    assert_eq!(j.stats.submissions.load(Ordering::Relaxed), 200);
    assert!(
        commits < 200,
        "expected group commits, got {commits} commits for 200 submissions"
    );
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
    let path = dir.path().join("j.db");
    let c = Connection::open(&path).expect("sqlite should create a bare database file");
    c.pragma_update(None, "user_version", 99)
        .expect("setting a future schema version should apply");
    drop(c);
    assert!(matches!(
        Journal::open(&path),
        Err(JournalError::TooNew { found: 99, .. })
    ));
}

/// The CLI reads journals read-only and cannot migrate: an older or newer schema is named, not
/// met with an SQL error about a column.
#[test]
fn a_read_only_reader_names_a_schema_it_does_not_match() {
    let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
    let path = dir.path().join("j.db");
    let c = Connection::open(&path).expect("sqlite should create a bare database file");
    c.execute_batch(schema::MIGRATIONS[0])
        .expect("the first schema migration should apply");
    c.pragma_update(None, "user_version", 4)
        .expect("marking the database as schema 4 should apply");
    drop(c);
    let old = Journal::open_read_only(&path).expect_err("an older schema");
    assert!(
        matches!(old, JournalError::TooOld { found: 4, .. }) && old.to_string().contains("serve"),
        "{old}"
    );
    Connection::open(&path)
        .and_then(|c| c.pragma_update(None, "user_version", 99))
        .expect("setting a future schema version should apply");
    assert!(matches!(
        Journal::open_read_only(&path),
        Err(JournalError::TooNew { found: 99, .. })
    ));
}

#[tokio::test]
async fn migrates_an_older_journal_keeping_its_rows() {
    let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
    let path = dir.path().join("j.db");
    // A journal written by a build that knew only the first schema.
    let c = Connection::open(&path).expect("sqlite should create a bare database file");
    c.execute_batch(schema::MIGRATIONS[0])
        .expect("the first schema migration should apply");
    c.pragma_update(None, "user_version", 1)
        .expect("marking the database as schema 1 should apply");
    c.execute(
        "INSERT INTO tasks (id, state, workload, tool, issuer, subject, client_id, owner_source,
            actors, token_fp, jti, scopes, token_exp_ms, peer_uid, peer_gid, peer_pid,
            created_ms, expires_ms)
         VALUES ('t1','active','w','t','i','s','c','none','[]','ff','j','[]',2,1,2,3,1,2)",
        [],
    )
    .expect("a v1 task row should insert");
    drop(c);

    let j = Journal::open(&path).expect("the old journal should open and migrate");
    let (version, index): (usize, i64) = {
        let r = j
            .reader
            .lock()
            .expect("the reader lock should not be poisoned");
        (
            r.query_row("PRAGMA user_version", [], |r| r.get(0))
                .expect("the migrated schema version should be readable"),
            r.query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'tasks_created'",
                [],
                |r| r.get(0),
            )
            .expect("sqlite_master should be queryable for the old index"),
        )
    };
    assert_eq!(version, schema::VERSION);
    assert_eq!(index, 0, "the unused index is gone");
    let kept = j
        .read(|c| read::task(c, "t1"))
        .await
        .expect("the pre-migration task should be readable");
    assert!(kept.is_some(), "rows written before the migration are kept");
}

fn lease_state(id: &str, state: LeaseState) -> Op {
    Op::LeaseState {
        id: id.into(),
        state,
        revoked_ms: None,
        attempts: 0,
        next_attempt_ms: None,
        last_error: None,
    }
}

fn issued(id: &str) -> Op {
    Op::LeaseIssued {
        id: id.into(),
        issued_ms: 1,
        expires_ms: 2,
        reference: "ref".into(),
        sealed_handle: None,
        renewable: false,
    }
}

fn task_state(id: &str, state: TaskState) -> Op {
    Op::TaskState {
        id: id.into(),
        state,
        ended_ms: None,
        end_reason: None,
    }
}

/// The state machine is the journal's: a forbidden transition is a typed error, and its whole
/// submission (audit record included) rolls back.
#[tokio::test]
async fn forbidden_transitions_are_journal_errors_that_change_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir for the journal should be created");
    let j = Journal::open(&dir.path().join("j.db")).expect("a fresh journal should open");
    let ok = |r: Result<(), JournalError>| r.expect("each allowed lifecycle step should commit");
    ok(j.commit(vec![
        Op::InsertTask(Box::new(task("t"))),
        Op::InsertLease(Box::new(lease("l", "t"))),
    ])
    .await);
    ok(
        j.commit(vec![issued("l"), task_state("t", TaskState::Active)])
            .await,
    );
    // Issued twice: refused.
    let twice = j.commit(vec![audit("second-issue"), issued("l")]).await;
    assert!(
        matches!(&twice, Err(JournalError::Transition { what: "lease", from, to: "active", .. }) if from == "active"),
        "{twice:?}"
    );
    ok(j.commit(vec![lease_state("l", LeaseState::Revoking)]).await);
    ok(j.commit(vec![
        lease_state("l", LeaseState::Revoked),
        task_state("t", TaskState::Ended),
    ])
    .await);

    // revoked → active, → revoking, → pending; ended → active, → ending.
    for (op, what, from) in [
        (issued("l"), "lease", "revoked"),
        (lease_state("l", LeaseState::Revoking), "lease", "revoked"),
        (lease_state("l", LeaseState::Pending), "lease", "revoked"),
        (lease_state("l", LeaseState::Failed), "lease", "revoked"),
        (task_state("t", TaskState::Active), "task", "ended"),
        (task_state("t", TaskState::Ending), "task", "ended"),
        (task_state("t", TaskState::Ended), "task", "ended"),
    ] {
        let r = j.commit(vec![audit("doomed"), op]).await;
        match &r {
            Err(
                e @ JournalError::Transition {
                    what: w, from: f, ..
                },
            ) => {
                assert_eq!((*w, f.as_str()), (what, from));
                assert!(e.to_string().contains("is not a transition"), "{e}");
            }
            other => panic!("expected a refused transition, got {other:?}"),
        }
    }
    // A missing row is a conflict, not a transition.
    let missing = j
        .commit(vec![lease_state("nope", LeaseState::Revoked)])
        .await;
    assert!(
        matches!(missing, Err(JournalError::Conflict(_))),
        "{missing:?}"
    );

    let (states, audits) = j
        .read(|c| {
            let t: String =
                c.query_row("SELECT state FROM tasks WHERE id = 't'", [], |r| r.get(0))?;
            let l: String =
                c.query_row("SELECT state FROM leases WHERE id = 'l'", [], |r| r.get(0))?;
            let n: i64 = c.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))?;
            Ok(((t, l), n))
        })
        .await
        .expect("final task and lease states should read back");
    assert_eq!(states, ("ended".to_string(), "revoked".to_string()));
    assert_eq!(audits, 0, "no refused submission left an audit record");
}
