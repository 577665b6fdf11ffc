//! Micro-benchmarks of the request path's parts: token validation (cold and cached), policy
//! resolution, journal transitions (one at a time, and 64 at once sharing fsyncs).
//!
//!     cargo bench --bench micro
//!
//! The journal benchmarks write to a real file under /var/tmp (not a tmpfs): `fsync` measures
//! an acknowledged transition (synchronous=FULL), `intent` one written without fsync (the
//! SQLite intent commit `journal.fsync_intents` keeps), `intent-log` one appended to the intent
//! log (what BeginTask does by default). Ids are
//! time-ordered, as the broker's are, so inserts land where they do in production.

#![allow(clippy::expect_used)] // a benchmark's setup that fails should stop the run at that line

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker::config::{Config, IssuerConfig, MetadataMode, TokenSettings};
use credbroker::journal::{Durability, Journal, Op};
use credbroker::policy::{Ask, GrantAsk, Policy};
use credbroker::token::{Alg, Verifier};
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../tests/support/forge.rs"]
mod forge;

const ISS: &str = "https://as.bench.test";
const AUD: &str = "https://mcp.bench.test/db";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a one-worker bench runtime should build")
}

fn public_jwks(dir: &Path) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(forge::fixtures().join("keys/keys.json")).unwrap_or_default();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    for k in v["keys"].as_array_mut().into_iter().flatten() {
        if let Some(m) = k.as_object_mut() {
            for p in ["d", "p", "q", "dp", "dq", "qi"] {
                m.remove(p);
            }
        }
    }
    let path = dir.join("jwks.json");
    std::fs::write(&path, v.to_string())
        .expect("the public JWKS should be written to the temp dir");
    path
}

fn verifier(jwks: &Path, cache_entries: usize) -> Verifier {
    let issuer = IssuerConfig {
        introspection: None,
        url: ISS.into(),
        algorithms: vec![Alg::RS256, Alg::ES256, Alg::EdDSA],
        metadata: MetadataMode::Auto,
        jwks_file: Some(jwks.to_path_buf()),
        refresh: Duration::from_secs(900),
        min_refresh_interval: Duration::from_secs(30),
        http_timeout: Duration::from_secs(1),
        ca_file: None,
    };
    let settings = TokenSettings {
        cache_entries,
        ..TokenSettings::default()
    };
    Verifier::new(&[issuer], &settings).expect("a verifier over the bench JWKS should build")
}

fn token_validation(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("a temp dir for the bench JWKS should be created");
    let jwks = public_jwks(dir.path());
    let cold = verifier(&jwks, 0);
    let cached = verifier(&jwks, 1024);
    rt.block_on(async {
        assert!(cold.load_keys().await.is_empty());
        assert!(cached.load_keys().await.is_empty());
    });
    let now = SystemTime::now();
    let unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut g = c.benchmark_group("token");
    for kid in ["es256-1", "rs256-1", "eddsa-1"] {
        let token = forge::Signer::fixture("keys", kid).token(&forge::claims(
            ISS,
            AUD,
            "mcp.tool:db.read",
            unix,
        ));
        g.bench_function(format!("cold/{kid}"), |b| {
            b.iter(|| {
                rt.block_on(cold.verify(&token, now))
                    .map(|v| v.check_audience(AUD))
                    .is_ok()
            })
        });
        g.bench_function(format!("cached/{kid}"), |b| {
            b.iter(|| {
                rt.block_on(cached.verify(&token, now))
                    .map(|v| v.check_audience(AUD))
                    .is_ok()
            })
        });
    }
    g.finish();
}

const CONFIG: &str = r#"
[server]
broker_socket = "/run/b.sock"
admin_socket = "/run/a.sock"
[journal]
path = "/tmp/j.db"
key_file = "/tmp/k"
[[issuer]]
url = "https://as.bench.test"
[attribution]
require_owner = true
clients = { "agent-1" = "alice@example.com" }
[[provider]]
name = "p"
type = "noop"
[[grant]]
name = "read"
provider = "p"
scopes = ["mcp.tool:db.read"]
max_ttl = "10m"
tools = ["query"]
params = { path = "database/creds/{owner}-{task_id}", items = ["a", "b"] }
[grant.conditions]
"client_id" = ["agent-1"]
[[workload]]
name = "db"
uid = 1000
audience = "https://mcp.bench.test/db"
grants = ["read"]
"#;

fn policy(c: &mut Criterion) {
    let config = Config::parse(CONFIG, "bench").expect("the bench policy config should parse");
    let policy = Policy::new(&config, Default::default());
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims_json = forge::claims(ISS, AUD, "mcp.tool:db.read other", unix);
    let claims = credbroker::token::Claims {
        issuer: ISS.into(),
        subject: "agent-1".into(),
        client_id: "agent-1".into(),
        jti: "j".into(),
        audiences: vec![AUD.into()],
        expires_at: unix + 300,
        issued_at: unix,
        not_before: None,
        scopes: vec!["mcp.tool:db.read".into(), "other".into()],
        actors: vec![],
        all: claims_json.as_object().cloned().unwrap_or_default(),
    };
    let grants = [GrantAsk {
        name: "read".into(),
        narrow: Default::default(),
    }];
    c.bench_function("policy/decide", |b| {
        b.iter(|| {
            policy
                .decide(&Ask {
                    workload: &config.workloads[0],
                    claims: &claims,
                    tool: "query",
                    grants: &grants,
                    ttl: Some(Duration::from_secs(300)),
                    task_id: "01a2012d-2b6b-71d7-bf11-b771b6e0a944",
                    now: SystemTime::now(),
                })
                .is_ok()
        })
    });
}

fn intent() -> Vec<Op> {
    use credbroker::audit::{AuditRecord, Outcome, PeerRecord};
    use credbroker::journal::rows::{LeaseRow, LeaseState, TaskRow, TaskState};
    let id: Arc<str> = uuid::Uuid::now_v7().to_string().into();
    let task = TaskRow {
        id: Arc::clone(&id),
        state: TaskState::Issuing,
        workload: "db".into(),
        tool: "query".into(),
        issuer: ISS.into(),
        subject: "agent-1".into(),
        client_id: "agent-1".into(),
        owner: Some("alice@example.com".into()),
        owner_source: "client_registry".into(),
        actors: vec![],
        token_fp: "ab".repeat(32).into(),
        jti: "jti".into(),
        scopes: "mcp.tool:db.read".into(),
        token_exp_ms: 0,
        peer: Arc::new(PeerRecord {
            uid: 1000,
            gid: 1000,
            pid: 4242,
            exe: None,
            unit: Some("db-mcp.service".into()),
        }),
        created_ms: 0,
        expires_ms: 0,
        ended_ms: None,
        end_reason: None,
        call_id: None,
    };
    let lease = LeaseRow {
        id: uuid::Uuid::now_v7().to_string().into(),
        task_id: Arc::clone(&id),
        role: credbroker_provider_api::Role::Credential,
        parent: None,
        grant: "read".into(),
        provider: "p".into(),
        kind: "noop".into(),
        state: LeaseState::Pending,
        params: Arc::default(),
        wanted_exp_ms: 0,
        issued_ms: None,
        expires_ms: None,
        revoked_ms: None,
        reference: None,
        sealed_handle: None,
        renewable: false,
        attempts: 0,
        next_attempt_ms: None,
        last_error: None,
    };
    let mut rec = AuditRecord::new("task_opened", Outcome::Success, SystemTime::now());
    rec.task_id = Some(id.to_string());
    rec.owner = Some("alice@example.com".into());
    vec![
        Op::InsertTask(Box::new(task)),
        Op::InsertLease(Box::new(lease)),
        Op::Audit(Box::new(rec)),
    ]
}

fn journal(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::Builder::new()
        .tempdir_in("/var/tmp")
        .expect("a temp dir under /var/tmp should be created");
    let plain = Arc::new(
        Journal::open(&dir.path().join("j.db")).expect("the plain bench journal should open"),
    );
    // With an audit head key: one HMAC and one upsert of the sealed head per commit.
    let sealed = Arc::new(
        Journal::open_with(
            &dir.path().join("sealed.db"),
            Some(credbroker::keys::AuditKey::from_key(&[5; 32])),
        )
        .expect("the sealed-head bench journal should open"),
    );
    let mut g = c.benchmark_group("journal");
    for (name, durability, journal) in [
        ("fsync", Durability::Fsync, &plain),
        ("intent", Durability::Process, &plain),
        ("fsync+sealed-head", Durability::Fsync, &sealed),
    ] {
        g.bench_function(format!("{name}/one-at-a-time"), |b| {
            b.iter(|| {
                rt.block_on(journal.commit_with(intent(), durability))
                    .is_ok()
            })
        });
        g.bench_function(format!("{name}/64-concurrent (per transition)"), |b| {
            b.iter_custom(|iters| {
                let started = std::time::Instant::now();
                rt.block_on(async {
                    let mut done = 0;
                    while done < iters {
                        let batch = (iters - done).min(64);
                        let futs = (0..batch).map(|_| {
                            let j = Arc::clone(journal);
                            async move { j.commit_with(intent(), durability).await.is_ok() }
                        });
                        futures_util::future::join_all(futs).await;
                        done += batch;
                    }
                });
                started.elapsed()
            })
        });
    }
    // The intent as BeginTask now writes it: one frame appended to the intent log, on the
    // request's thread (its rows reach SQLite with the answering commit).
    g.bench_function("intent-log/one-at-a-time", |b| {
        b.iter(|| plain.log_intent(&intent()).is_ok())
    });
    // A keyed BeginTask's check that its key is new, on the request's thread.
    g.bench_function("begin-key-lookup", |b| {
        b.iter(|| {
            plain
                .begin_key_now("db", &uuid::Uuid::now_v7().to_string())
                .is_ok()
        })
    });
    g.finish();
}

#[path = "audit_fixture.rs"]
mod audit_fixture;

/// `audit query` on a million-record journal: the issue's example (credentials issued for one
/// grant in the last 24 hours, by client and owner), answered from the `audit_grant` index; and,
/// for contrast, a count by event over all of it. The answer is checked against the generator's.
fn audit(c: &mut Criterion) {
    use credbroker::audit::query::{AuditFilter, count};
    let records = std::env::var("AUDIT_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000u64);
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-data/audit-{records}.db"));
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .expect("target/bench-data should be created");
    let (since, expected) = audit_fixture::ensure(&path, records);
    let conn =
        Journal::open_read_only(&path).expect("the audit fixture journal should open read-only");
    let filter = AuditFilter {
        events: vec!["lease_issued".into()],
        grant: Some(audit_fixture::GRANT.into()),
        since_ms: Some(since),
        ..Default::default()
    };
    let by = ["client".to_string(), "owner".to_string()];
    let groups = count(&conn, &filter, &by).expect("the audit count query should run");
    let got: audit_fixture::Expected = groups
        .iter()
        .map(|g| {
            let k = |i: usize| g.key[i].clone().unwrap_or_default();
            ((k(0), k(1)), g.count)
        })
        .collect();
    let total: u64 = got.values().sum();
    assert_eq!(got, expected, "audit query disagrees with the generator");
    eprintln!(
        "audit: {records} records; the query's {} groups ({total} credentials) match the generator",
        got.len()
    );
    let mut g = c.benchmark_group("audit");
    g.sample_size(20);
    g.bench_function(
        "query/lease_issued for one grant, 24h, by client+owner (1M records)",
        |b| b.iter(|| count(&conn, &filter, &by).map(|g| g.len()).unwrap_or(0)),
    );
    let all = AuditFilter::default();
    let by_event = ["event".to_string()];
    g.bench_function("query/all records by event (full scan, 1M records)", |b| {
        b.iter(|| count(&conn, &all, &by_event).map(|g| g.len()).unwrap_or(0))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = token_validation, policy, journal, audit
}
criterion_main!(benches);
