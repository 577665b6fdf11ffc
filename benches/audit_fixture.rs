//! A generated audit log for the audit benchmarks (`benches/micro.rs` `audit`, and
//! `credbroker-bench audit`): N records over the last 30 days, written through the journal
//! itself (hash chain, indexes, sealed head), shaped like a busy deployment — per task, a token
//! acceptance, the task opening, one to three credentials issued and revoked, and the end —
//! with 12 grants (one in four credentials is `orders-db-read`), 40 clients and 400 owners.
//!
//! The expected answer of the benchmark's query is counted while generating, so the benchmark
//! checks the journal's answer, not only its speed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use credbroker::audit::{AuditRecord, Outcome, event};
use credbroker::journal::{Journal, Op};
use credbroker::keys::AuditKey;

pub(crate) const GRANT: &str = "orders-db-read";

/// (client, owner) → credentials issued for [`GRANT`] in the 24 hours before generation.
pub(crate) type Expected = BTreeMap<(String, String), u64>;

/// The journal's "last 24 hours" (Unix ms, from generation time) and the expected answer.
/// Reuses `path` if it was generated before with its sidecar (generation takes a while).
pub(crate) fn ensure(path: &Path, records: u64) -> (i64, Expected) {
    let sidecar = PathBuf::from(format!("{}.expected.json", path.display()));
    if path.exists()
        && let Ok(text) = std::fs::read_to_string(&sidecar)
        && let Ok((since, list)) = serde_json::from_str::<(i64, Vec<(String, String, u64)>)>(&text)
    {
        return (
            since,
            list.into_iter().map(|(c, o, n)| ((c, o), n)).collect(),
        );
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let (since, expected) = generate(path, records);
    let list: Vec<(&String, &String, &u64)> =
        expected.iter().map(|((c, o), n)| (c, o, n)).collect();
    std::fs::write(
        &sidecar,
        serde_json::to_string(&(since, list)).unwrap_or_default(),
    )
    .expect("the expected-answer sidecar should be written");
    (since, expected)
}

fn generate(path: &Path, records: u64) -> (i64, Expected) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime for generation should build");
    let journal = Journal::open_with(path, Some(AuditKey::from_key(&[1; 32])))
        .expect("the fixture journal should open with its audit key");
    let now = SystemTime::now();
    let span = Duration::from_secs(30 * 86_400);
    let day_ago = now - Duration::from_secs(86_400);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut expected = Expected::new();
    let mut batch: Vec<Op> = Vec::with_capacity(10_000);
    let mut written = 0u64;
    let mut task_no = 0u64;
    while written < records {
        task_no += 1;
        // Tasks evenly over the span, oldest first (records are appended in time order).
        let at = now - span + span.mul_f64(written as f64 / records as f64);
        let client = format!("agent-{}", rng.u32(0..40));
        let owner = format!("user-{}@example.com", rng.u32(0..400));
        let task = format!("task-{task_no}");
        let fp = format!("{:064x}", rng.u128(..));
        let base = |e: &str, outcome: Outcome| {
            let mut r = AuditRecord::new(e, outcome, at);
            r.task_id = Some(task.clone());
            r.client_id = Some(client.clone());
            r.owner = Some(owner.clone());
            r.subject = Some(owner.clone());
            r.token_fingerprint = Some(fp.clone());
            r.workload = Some("postgres-mcp".into());
            r
        };
        let mut rs = vec![
            base(event::TOKEN_ACCEPTED, Outcome::Success),
            base(event::TASK_OPENED, Outcome::Success),
        ];
        for l in 0..rng.u32(1..4) {
            let grant = if rng.u32(0..4) == 0 {
                GRANT.to_string()
            } else {
                format!("grant-{}", rng.u32(0..11))
            };
            let lease = format!("{task}-l{l}");
            if grant == GRANT && at >= day_ago {
                *expected.entry((client.clone(), owner.clone())).or_default() += 1;
            }
            rs.push(base(event::LEASE_ISSUED, Outcome::Success).lease(&lease, &grant, "pg"));
            rs.push(base(event::LEASE_REVOKED, Outcome::Success).lease(&lease, &grant, "pg"));
        }
        rs.push(base(event::TASK_ENDED, Outcome::Success));
        // Whole tasks only, so the expected counts are exact (a few records past N).
        for r in rs {
            batch.push(Op::Audit(Box::new(r)));
            written += 1;
        }
        if batch.len() >= 10_000 {
            rt.block_on(journal.commit(std::mem::take(&mut batch)))
                .expect("a full batch of audit records should commit");
        }
    }
    if !batch.is_empty() {
        rt.block_on(journal.commit(batch))
            .expect("the last partial batch should commit");
    }
    // Recount through another index than the benchmark's query uses.
    let conn =
        Journal::open_read_only(path).expect("the generated journal should reopen read-only");
    let mut stmt = conn
        .prepare(
            "SELECT client_id, owner, COUNT(*) FROM audit INDEXED BY audit_event
             WHERE event = 'lease_issued' AND at_ms >= ?1 AND grant_name = ?2
             GROUP BY client_id, owner",
        )
        .expect("the recount query should prepare against audit_event");
    let check: Expected = stmt
        .query_map(
            rusqlite::params![credbroker::time::to_ms(day_ago), GRANT],
            |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)),
        )
        .expect("the recount query should bind and run")
        .collect::<Result<_, _>>()
        .expect("every recount row should read as client, owner, count");
    assert_eq!(check, expected, "generator and journal disagree");
    (credbroker::time::to_ms(day_ago), expected)
}
