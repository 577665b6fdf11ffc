use std::os::unix::fs::PermissionsExt;

use super::super::tests::{audit, lease, task};
use super::super::{Journal, read};
use super::*;

fn intent(id: &str, key: Option<&str>) -> Vec<Op> {
    let t = task(id);
    let mut ops = vec![
        Op::InsertTask(Box::new(t.clone())),
        Op::InsertLease(Box::new(lease(&format!("{id}-l"), id))),
        audit("token_accepted"),
        audit("task_opened"),
    ];
    if let Some(k) = key {
        ops.push(Op::BeginKey {
            workload: Arc::clone(&t.workload),
            key: k.into(),
            task_id: Arc::clone(&t.id),
            digest: [7; 32],
            created_ms: t.created_ms,
        });
    }
    ops
}

fn all(left: &Leftovers) -> Vec<Vec<Op>> {
    let mut out = Vec::new();
    left.for_each(|ops| {
        out.push(ops);
        Ok(())
    })
    .expect("the leftovers should read");
    out
}

fn segments(db: &Path) -> Vec<PathBuf> {
    let mut dir = db.as_os_str().to_owned();
    dir.push("-intents");
    let mut out: Vec<PathBuf> = std::fs::read_dir(PathBuf::from(dir))
        .expect("the intent directory should exist")
        .map(|e| e.expect("a directory entry should read").path())
        .collect();
    out.sort();
    out
}

fn same(a: &[Op], b: &[Op]) {
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        match (a, b) {
            (Op::InsertTask(a), Op::InsertTask(b)) => assert_eq!(a, b),
            (Op::InsertLease(a), Op::InsertLease(b)) => assert_eq!(a, b),
            (Op::Audit(a), Op::Audit(b)) => assert_eq!(a, b),
            (
                Op::BeginKey {
                    workload: wa,
                    key: ka,
                    task_id: ta,
                    digest: da,
                    created_ms: ca,
                },
                Op::BeginKey {
                    workload: wb,
                    key: kb,
                    task_id: tb,
                    digest: db,
                    created_ms: cb,
                },
            ) => assert_eq!((wa, ka, ta, da, ca), (wb, kb, tb, db, cb)),
            (a, b) => panic!("{a:?} read back as {b:?}"),
        }
    }
}

#[test]
fn intents_read_back_as_written_and_a_torn_tail_is_ignored() {
    let dir = tempfile::tempdir().expect("a temp dir should be created");
    let db = dir.path().join("j.db");
    let (log, left) = IntentLog::open(&db).expect("a fresh log should open");
    assert!(all(&left).is_empty());
    let mut a = intent("t1", Some("k1"));
    if let Op::InsertTask(t) = &mut a[0] {
        // Text that JSON must escape still reads back.
        t.tool = "q\"uote\\d ünïcode\n".into();
    }
    let b = intent("t2", None);
    let pa = log.append(&a).expect("an intent should be written");
    let pb = log.append(&b).expect("an intent should be written");
    same(&a, &pa.ops().expect("the pin should hold its intent"));
    // A crash mid-write: half of a third frame.
    let torn = frame(&entry::encode(&intent("t3", None)).expect("an intent should encode"));
    let seg = segments(&db).pop().expect("a segment should exist");
    let mode = std::fs::metadata(&seg).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "intents are private");
    let mut f = OpenOptions::new()
        .append(true)
        .open(&seg)
        .expect("the segment should open");
    f.write_all(&torn[..torn.len() / 2])
        .expect("the torn frame should be written");
    drop((pa, pb, log));

    let (_log, left) = IntentLog::open(&db).expect("the log should reopen");
    let read = all(&left);
    assert_eq!(read.len(), 2, "the torn frame is not an intent");
    same(&a, &read[0]);
    same(&b, &read[1]);
    left.clear().expect("leftovers should be deleted");
    assert_eq!(segments(&db).len(), 1, "only the new segment is left");
}

/// Review finding: a frame damaged in the middle of a segment (the torn end of a failed write
/// with intents appended after it, or blocks a power cut left zeroed) stopped the reader, and
/// every intent after it was silently skipped: credentials issued under them were never
/// revoked. The reader now resynchronises at the next whole frame.
#[test]
fn a_damaged_frame_in_the_middle_hides_no_intent_after_it() {
    for damage in [Damage::Torn, Damage::Zeroed, Damage::Flipped] {
        let dir = tempfile::tempdir().expect("a temp dir should be created");
        let db = dir.path().join("j.db");
        let (log, _) = IntentLog::open(&db).expect("a fresh log should open");
        let (a, b, c) = (
            intent("t1", None),
            intent("t2", None),
            intent("t3", Some("k")),
        );
        let pa = log.append(&a).expect("written");
        let seg = segments(&db).pop().expect("a segment should exist");
        let pb = log.append(&b).expect("written");
        let mut bytes = std::fs::read(&seg).expect("the segment should read");
        let second = pa.frame.len();
        match damage {
            // Half of a frame, then the rest of the segment after it.
            Damage::Torn => {
                let torn = frame(&entry::encode(&intent("tx", None)).expect("encodes"));
                bytes.splice(second..second, torn[..torn.len() / 2].iter().copied());
            }
            Damage::Zeroed => bytes.splice(second..second, [0u8; 4096]).for_each(drop),
            // One bit of b's payload: b is lost (its checksum fails), c is not.
            Damage::Flipped => bytes[second + 40] ^= 0x10,
        }
        std::fs::write(&seg, &bytes).expect("the segment should be rewritten");
        let pc = log.append(&c).expect("written");
        for p in [pa, pb, pc] {
            p.keep();
        }
        drop(log);

        let (_log, left) = IntentLog::open(&db).expect("the log should reopen");
        let read = all(&left);
        let ids: Vec<_> = read
            .iter()
            .map(|ops| task_id(ops).map(str::to_owned))
            .collect();
        let want = match damage {
            Damage::Flipped => vec![Some("t1".into()), Some("t3".into())],
            _ => vec![Some("t1".into()), Some("t2".into()), Some("t3".into())],
        };
        assert_eq!(ids, want, "{damage:?}");
        same(&c, read.last().expect("c is read"));
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Torn,
    Zeroed,
    Flipped,
}

/// After a failed write, nothing is appended behind what it may have left: the next intent
/// starts a new segment.
#[test]
fn a_failed_write_moves_the_next_intent_to_a_new_segment() {
    let dir = tempfile::tempdir().expect("a temp dir should be created");
    let db = dir.path().join("j.db");
    let (log, _) = IntentLog::open(&db).expect("a fresh log should open");
    let first = log.append(&intent("t1", None)).expect("written");
    let seg = segments(&db).pop().expect("a segment should exist");
    let before = std::fs::read(&seg).expect("the segment should read");
    // A descriptor that cannot write: every write fails, as on a full or failing disk.
    log.current.lock().expect("unpoisoned").file =
        File::open(&seg).expect("the segment should open read-only");
    let e = log.append(&intent("t2", None)).err();
    assert!(matches!(e, Some(JournalError::Io { .. })), "{e:?}");
    let next = log
        .append(&intent("t3", None))
        .expect("written to a new segment");
    assert_eq!(segments(&db).len(), 2);
    assert_eq!(
        std::fs::read(&seg).ok(),
        Some(before),
        "nothing after the failed write"
    );
    first.keep();
    next.keep();
    drop(log);
    let (_log, left) = IntentLog::open(&db).expect("the log should reopen");
    let ids: Vec<_> = all(&left)
        .iter()
        .map(|ops| task_id(ops).map(str::to_owned))
        .collect();
    assert_eq!(ids, vec![Some("t1".into()), Some("t3".into())]);
}

#[test]
fn the_intent_directory_is_private_and_a_real_directory() {
    let dir = tempfile::tempdir().expect("a temp dir should be created");
    let db = dir.path().join("j.db");
    let intents = dir.path().join("j.db-intents");
    std::fs::create_dir(&intents).expect("created");
    std::fs::set_permissions(&intents, std::fs::Permissions::from_mode(0o755)).expect("set");
    drop(IntentLog::open(&db).expect("the log should open"));
    let mode = std::fs::metadata(&intents).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o700), "loosened modes are tightened");
    // A link in its place would send intents elsewhere: refused, nothing written there.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("created");
    let db2 = dir.path().join("k.db");
    std::os::unix::fs::symlink(&elsewhere, dir.path().join("k.db-intents")).expect("linked");
    let e = IntentLog::open(&db2).err();
    assert!(
        matches!(&e, Some(JournalError::Io { error, .. }) if error.to_string().contains("not a directory")),
        "{e:?}"
    );
    assert_eq!(
        std::fs::read_dir(&elsewhere).map(|d| d.count()).ok(),
        Some(0)
    );
}

#[test]
fn a_segment_goes_when_it_is_full_and_its_last_intent_is_committed() {
    let dir = tempfile::tempdir().expect("a temp dir should be created");
    let db = dir.path().join("j.db");
    let (mut log, _) = IntentLog::open(&db).expect("a fresh log should open");
    log.segment_bytes = 1;
    let first = log.append(&intent("t1", None)).expect("written");
    let second = log.append(&intent("t2", None)).expect("written");
    let third = log.append(&intent("t3", None)).expect("written");
    // t1 in segment 1, t2 in segment 2, t3 in segment 3 (the current one).
    assert_eq!(segments(&db).len(), 3);
    drop(second);
    assert_eq!(
        segments(&db).len(),
        2,
        "a retired segment with no pin left is deleted"
    );
    drop(third);
    assert_eq!(segments(&db).len(), 2, "the current segment stays");
    first.keep();
    drop(log);
    assert_eq!(
        segments(&db).len(),
        2,
        "a kept intent keeps its segment for recovery"
    );
}

#[test]
fn only_an_intent_can_be_written() {
    let dir = tempfile::tempdir().expect("a temp dir should be created");
    let (log, _) = IntentLog::open(&dir.path().join("j.db")).expect("a fresh log should open");
    let mut active = task("t");
    active.state = crate::journal::rows::TaskState::Active;
    let cases = [
        vec![],
        vec![Op::InsertTask(Box::new(task("t")))],
        vec![
            Op::InsertTask(Box::new(active)),
            Op::InsertLease(Box::new(lease("l", "t"))),
        ],
        vec![
            Op::InsertTask(Box::new(task("t"))),
            Op::InsertLease(Box::new(lease("l", "t"))),
            Op::LeaseExpiry {
                id: "l".into(),
                expires_ms: 1,
            },
        ],
    ];
    for ops in cases {
        let e = log.append(&ops).err();
        assert!(matches!(e, Some(JournalError::Encode(_))), "{ops:?}: {e:?}");
    }
    let seg = segments(&dir.path().join("j.db")).pop().expect("a segment");
    assert_eq!(
        std::fs::metadata(seg).map(|m| m.len()).ok(),
        Some(0),
        "nothing written"
    );
}

#[tokio::test]
async fn open_commits_the_intents_whose_tasks_never_reached_sqlite() {
    let dir = tempfile::tempdir().expect("a temp dir should be created");
    let db = dir.path().join("j.db");
    let j = Journal::open(&db).expect("a fresh journal should open");
    // t1: logged and committed (the normal case); t2: logged, then the daemon died.
    let one = intent("t1", Some("k1"));
    let p1 = j.log_intent(&one).expect("logged");
    let p2 = j.log_intent(&intent("t2", Some("k2"))).expect("logged");
    j.commit(one).await.expect("t1's rows should commit");
    drop(p1);
    p2.keep();
    drop(j);

    let j = Journal::open(&db).expect("the journal should reopen");
    let t2 = j
        .read(|c| read::task(c, "t2"))
        .await
        .expect("readable")
        .expect("t2 is in SQLite now");
    assert_eq!(t2.task.state, crate::journal::rows::TaskState::Issuing);
    assert_eq!(t2.leases.len(), 1);
    assert_eq!(
        t2.leases[0].state,
        crate::journal::rows::LeaseState::Pending
    );
    let key = j.begin_key_now("w", "k2").expect("readable");
    assert_eq!(key.map(|(t, _)| t), Some("t2".to_string()));
    let count: u64 = j
        .read(|c| Ok(c.query_row("SELECT count(*) FROM audit", [], |r| r.get(0))?))
        .await
        .expect("readable");
    assert_eq!(count, 4, "t1's two records and t2's two, once each");
    assert_eq!(segments(&db).len(), 1, "the leftovers are gone");
    drop(j);
    // Opening again commits nothing twice.
    let j = Journal::open(&db).expect("the journal should reopen");
    let count: u64 = j
        .read(|c| Ok(c.query_row("SELECT count(*) FROM audit", [], |r| r.get(0))?))
        .await
        .expect("readable");
    assert_eq!(count, 4);
}

/// An intent kept for recovery whose idempotency key another task took meanwhile: the start
/// must not fail on the key's second row (it did), and the intent's task must still be
/// committed, so its credentials are settled.
#[tokio::test]
async fn a_leftover_whose_key_was_taken_is_committed_without_it() {
    let dir = tempfile::tempdir().expect("a temp dir should be created");
    let db = dir.path().join("j.db");
    let j = Journal::open(&db).expect("a fresh journal should open");
    j.log_intent(&intent("t1", Some("k")))
        .expect("logged")
        .keep();
    j.commit(intent("t2", Some("k")))
        .await
        .expect("t2 takes the key");
    drop(j);

    let j = Journal::open(&db).expect("the journal should reopen");
    let t1 = j.read(|c| read::task(c, "t1")).await.expect("readable");
    assert!(t1.is_some(), "t1's intent is committed");
    let key = j.begin_key_now("w", "k").expect("readable");
    assert_eq!(
        key.map(|(t, _)| t),
        Some("t2".to_string()),
        "the key stays t2's"
    );
    assert_eq!(segments(&db).len(), 1, "the leftovers are gone");
}

#[test]
fn an_intent_from_a_newer_format_stops_the_open() {
    let dir = tempfile::tempdir().expect("a temp dir should be created");
    let db = dir.path().join("j.db");
    let (log, _) = IntentLog::open(&db).expect("a fresh log should open");
    drop(log);
    let payload = br#"{"v":2,"task":{}}"#;
    let seg = segments(&db).pop().expect("a segment");
    std::fs::write(&seg, frame(payload)).expect("the segment should be written");
    let e = Journal::open(&db).err();
    assert!(
        matches!(&e, Some(JournalError::Encode(m)) if m.contains("version 2")),
        "{:?}",
        e.map(|e| e.to_string())
    );
}

#[tokio::test]
async fn a_carried_intent_leaves_the_rows_its_commits_in_sequence_would() {
    use crate::journal::rows::TaskState;
    let then = || {
        vec![
            Op::LeaseIssued {
                id: "t1-l".into(),
                issued_ms: 5,
                expires_ms: 9,
                reference: "ref".into(),
                sealed_handle: Some(vec![1, 2, 3]),
                renewable: true,
            },
            audit("lease_issued"),
            Op::TaskState {
                id: "t1".into(),
                state: TaskState::Active,
                ended_ms: None,
                end_reason: None,
            },
            audit("task_begun"),
        ]
    };
    let dir = tempfile::tempdir().expect("a temp dir should be created");
    let apart = Journal::open(&dir.path().join("a.db")).expect("a journal should open");
    apart
        .commit(intent("t1", Some("k")))
        .await
        .expect("the intent commits");
    apart.commit(then()).await.expect("the answer commits");
    let folded = carry(intent("t1", Some("k")), then());
    let updates = folded
        .iter()
        .filter(|o| matches!(o, Op::LeaseIssued { .. } | Op::TaskState { .. }))
        .count();
    assert_eq!(updates, 0, "both updates are folded into the inserts");
    let together = Journal::open(&dir.path().join("b.db")).expect("a journal should open");
    together
        .commit(folded)
        .await
        .expect("the folded commit commits");
    let (a, b) = (view(&apart).await, view(&together).await);
    assert_eq!(a.task, b.task);
    assert_eq!(a.leases, b.leases);
    assert_eq!(b.task.state, TaskState::Active);
    assert_eq!(
        events(&apart).await,
        events(&together).await,
        "same records, same order"
    );
    // A later commit that is not the intent's next step is carried unfolded.
    let other = carry(
        intent("t2", None),
        vec![Op::LeaseExpiry {
            id: "t2-l".into(),
            expires_ms: 3,
        }],
    );
    assert!(matches!(other.last(), Some(Op::LeaseExpiry { .. })));
}

async fn view(j: &Journal) -> read::TaskView {
    j.read(|c| read::task(c, "t1"))
        .await
        .expect("readable")
        .expect("t1 exists")
}

async fn events(j: &Journal) -> Vec<String> {
    j.read(|c| {
        let mut st = c.prepare("SELECT event FROM audit ORDER BY seq")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
    .expect("readable")
}
