//! The audit trail as a security team uses it: `audit verify` against a journal tampered with
//! directly in SQLite, `lineage` of a delegated token (table, JSON, and DOT rendered by
//! Graphviz), `audit query` counts, and exports (CSV, OCSF validated against the OCSF schema,
//! identifiers HMACed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use credbroker::proto::v1;
use credbroker::token::Fingerprint;
use serde_json::Value;

use crate::support::daemon::{Daemon, base_config, testd};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::{begin_request, npm, repo, venv};

const HEAD_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn with_head_key(dir: &Path, issuer: &str) -> String {
    crate::support::write_secret(dir.join("audit-head.key"), HEAD_KEY)
        .expect("the audit head key file should be written");
    base_config(
        dir,
        issuer,
        &format!(
            "[audit]\nhead_key_file = \"{}/audit-head.key\"\nretention = \"400d\"\n",
            dir.display()
        ),
    )
}

/// Begins a task with `token` and, if `end`, ends it. Returns the task id and lease id.
async fn task(d: &Daemon, token: &str, end: bool) -> (String, String) {
    let begun = d
        .begin(token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("begin: {e:?}"))
        .into_inner();
    let id = begun.task.unwrap_or_default().id;
    let lease = begun.credentials[0].lease_id.clone();
    if end {
        d.end(&id).await.unwrap_or_else(|e| panic!("end: {e:?}"));
    }
    (id, lease)
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], journal: &Path, stdin: Option<&str>) -> Out {
    let mut c = Command::new(testd());
    c.args(args).arg("--journal").arg(journal);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("testd should spawn for the audit command");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        pipe.write_all(text.as_bytes())
            .expect("the audit command should accept its stdin");
    }
    let out = child
        .wait_with_output()
        .expect("the audit command's output should be collected");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A copy of the journal (and its WAL) to tamper with.
fn copy_journal(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", src.display()));
        if from.exists() {
            std::fs::copy(&from, format!("{}{suffix}", dst.display()))
                .expect("the journal files should copy for tampering");
        }
    }
    dst
}

fn sql(journal: &Path, statements: &str) {
    let conn = rusqlite::Connection::open(journal).expect("the journal copy should open in sqlite");
    conn.execute_batch(statements)
        .unwrap_or_else(|e| panic!("{statements}: {e}"));
}

fn verify(journal: &Path, head_key: Option<&Path>) -> Out {
    let mut args = vec!["audit", "verify"];
    let key;
    if let Some(k) = head_key {
        key = k.display().to_string();
        args.extend(["--head-key-file", &key]);
    }
    run(&args, journal, None)
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_names_every_edited_deleted_and_moved_record_and_the_head_seal_catches_the_rest()
 {
    let auth = AuthServer::start();
    let mut d = Daemon::start(|dir| with_head_key(dir, &auth.issuer)).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    for _ in 0..3 {
        task(&d, &token, true).await;
    }
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    let total = d.audit().len();
    assert!(total >= 18, "{total} records");
    let dir = d.dir.path().to_path_buf();
    let key = dir.join("audit-head.key");

    // Untouched: verifies, with and without the head key.
    let ok = verify(&d.journal, Some(&key));
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains(&format!(
            "ok: {total} records verified (1..{total}); sealed head checked"
        )),
        "{}",
        ok.stdout
    );
    // Through the configuration: the journal and the head key are found there.
    let cfg = Command::new(testd())
        .args(["audit", "verify", "--config"])
        .arg(&d.config)
        .output()
        .expect("audit verify --config should run");
    assert!(cfg.status.success(), "{cfg:?}");
    assert!(String::from_utf8_lossy(&cfg.stdout).contains("sealed head checked"));

    // Edited: one record's owner changed in place.
    let j = copy_journal(&d.journal, &dir, "edited");
    sql(
        &j,
        "UPDATE audit SET owner = 'mallory@example.com' WHERE seq = 5",
    );
    let out = verify(&j, None);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.starts_with("record 5: Edited"), "{}", out.stdout);
    assert!(
        out.stdout.contains("FAILED: 1 problem(s)"),
        "{}",
        out.stdout
    );

    // Edited: the detail JSON of another.
    let j = copy_journal(&d.journal, &dir, "edited-detail");
    sql(
        &j,
        "UPDATE audit SET detail = '{\"scopes\":[\"admin\"]}' WHERE seq = (SELECT MIN(seq) FROM audit WHERE event = 'token_accepted')",
    );
    let out = verify(&j, None);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains(": Edited: "), "{}", out.stdout);

    // Deleted: one record in the middle, then a run of three.
    let j = copy_journal(&d.journal, &dir, "deleted");
    sql(&j, "DELETE FROM audit WHERE seq = 8");
    let out = verify(&j, None);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .starts_with("record 8: Deleted: record 8 is missing (deleted)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("FAILED: 1 problem(s)"),
        "{}",
        out.stdout
    );
    sql(&j, "DELETE FROM audit WHERE seq IN (12, 13, 14)");
    let out = verify(&j, None);
    assert!(
        out.stdout
            .contains("record 12: Deleted: records 12..14 are missing"),
        "{}",
        out.stdout
    );

    // Swapped: records 10 and 11 trade places.
    let j = copy_journal(&d.journal, &dir, "swapped");
    sql(
        &j,
        "UPDATE audit SET seq = -1 WHERE seq = 10;
         UPDATE audit SET seq = 10 WHERE seq = 11;
         UPDATE audit SET seq = 11 WHERE seq = -1;",
    );
    let out = verify(&j, None);
    assert_eq!(out.code, 1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[..2],
        [
            "record 10: Reordered: record 10 was written as record 11 (moved)",
            "record 11: Reordered: record 11 was written as record 10 (moved)",
        ],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("FAILED: 2 problem(s)"),
        "{}",
        out.stdout
    );

    // The newest record cut off: invisible to the chain alone, caught by the sealed head.
    let j = copy_journal(&d.journal, &dir, "truncated");
    sql(&j, &format!("DELETE FROM audit WHERE seq = {total}"));
    assert_eq!(verify(&j, None).code, 0);
    let out = verify(&j, Some(&key));
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains(&format!(
            "record {total}: Deleted: the sealed head is record {total}, but the chain ends at {}",
            total - 1
        )),
        "{}",
        out.stdout
    );

    // The whole chain rebuilt after an edit (every hash recomputed, as an attacker without the
    // key would): consistent, so only the sealed head tells.
    let j = copy_journal(&d.journal, &dir, "rewritten");
    sql(
        &j,
        "UPDATE audit SET owner = 'mallory@example.com' WHERE seq = 3",
    );
    let bodies = run(&["audit", "export"], &j, None).stdout;
    {
        let conn =
            rusqlite::Connection::open(&j).expect("the edited journal should open for rehashing");
        let mut prev = [0u8; 32];
        for (i, body) in bodies.lines().enumerate() {
            let h = credbroker::journal::chain_hash(&prev, body.as_bytes());
            conn.execute(
                "UPDATE audit SET hash = ?1 WHERE seq = ?2",
                rusqlite::params![h.as_slice(), i as i64 + 1],
            )
            .expect("each record's recomputed hash should be written");
            prev = h;
        }
    }
    assert_eq!(
        verify(&j, None).code,
        0,
        "a rebuilt chain is self-consistent"
    );
    let out = verify(&j, Some(&key));
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains(&format!(
            "record {total}: Edited: record {total} is not the record the head sealed"
        )),
        "{}",
        out.stdout
    );
    // A wrong key says so, rather than blaming the chain.
    let wrong = dir.join("wrong.key");
    crate::support::write_secret(&wrong, HEAD_KEY.replace('0', "1"))
        .expect("the wrong head key file should be written");
    let out = verify(&d.journal, Some(&wrong));
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("Unsealed: the sealed head does not verify with this key")
    );
    // And a key of the wrong shape is a clear error, not a verdict.
    crate::support::write_secret(&wrong, "short")
        .expect("the malformed head key file should be written");
    let out = verify(&d.journal, Some(&wrong));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("audit head key") && out.stderr.contains("64 hex digits"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("short"),
        "the key is not echoed: {}",
        out.stderr
    );
}

fn graphviz(dot: &str) -> Out {
    let dir = repo().join("tests/support/graphviz");
    npm::ensure(&dir, "@hpcc-js/wasm-graphviz");
    let mut child = Command::new("node")
        .arg(dir.join("render.mjs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node should start the graphviz renderer");
    {
        use std::io::Write as _;
        let mut pipe = child.stdin.take().unwrap_or_else(|| panic!("stdin"));
        pipe.write_all(dot.as_bytes())
            .expect("the renderer should accept the dot on stdin");
    }
    let out = child
        .wait_with_output()
        .expect("the renderer's svg output should be collected");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn site_packages(venv: &Path, package: &str) -> Option<PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages").join(package))
        .find(|p| p.exists())
}

fn ocsf_validate(events: &str) -> (i32, Value) {
    venv::ensure("jsonschema==4.26.0", |v| site_packages(v, "jsonschema"));
    venv::ensure("ocsf-json-schema==1.2.0", |v| {
        site_packages(v, "ocsf_json_schema")
    });
    let mut child = Command::new(venv::dir().join("bin/python"))
        .arg(repo().join("tests/support/ocsf/validate.py"))
        .arg(credbroker::audit::ocsf::VERSION)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the ocsf validator should start in the venv");
    {
        use std::io::Write as _;
        let mut pipe = child.stdin.take().unwrap_or_else(|| panic!("stdin"));
        pipe.write_all(events.as_bytes())
            .expect("the validator should accept the events on stdin");
    }
    let out = child
        .wait_with_output()
        .expect("the validator's report should be collected");
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn lineage_queries_and_exports_of_a_delegated_token() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| with_head_key(dir, &auth.issuer)).await;
    let alice = auth.token("agent-1", POSTGRES, PG_READ).await;
    // RFC 8693: agent-7 acting for carol; sub = carol, act = {sub: agent-7}.
    let carol = auth
        .delegated_token("agent-7", "carol@example.com", POSTGRES, PG_READ)
        .await;
    task(&d, &alice, true).await;
    task(&d, &alice, true).await;
    let (ended, ended_lease) = task(&d, &carol, true).await;
    let (active, active_lease) = task(&d, &carol, false).await;
    let j = d.journal.clone();

    // Lineage, JSON: owner → agent → token → tasks → leases.
    let out = run(
        &[
            "lineage",
            "--owner",
            "carol@example.com",
            "--output",
            "json",
        ],
        &j,
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let tree: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    let owners = tree["owners"].as_array().cloned().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{tree:#}");
    assert_eq!(owners[0]["owner"], "carol@example.com");
    let client = &owners[0]["clients"][0];
    assert_eq!(client["client_id"], "agent-7");
    let token = &client["tokens"][0];
    assert_eq!(token["subject"], "carol@example.com");
    assert_eq!(token["actors"], serde_json::json!(["agent-7"]));
    assert_eq!(token["owner_source"], "act_subject");
    assert_eq!(token["fingerprint"], Fingerprint::of(&carol).hex());
    let tasks = token["tasks"].as_array().cloned().unwrap_or_default();
    let summary: Vec<(String, String, String, String, String)> = tasks
        .iter()
        .map(|t| {
            let l = &t["leases"][0];
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&t["task_id"]),
                s(&t["tool"]),
                s(&l["lease_id"]),
                s(&l["grant"]),
                s(&l["state"]),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                ended.clone(),
                "query".into(),
                ended_lease.clone(),
                "orders-db-read".into(),
                "revoked".into()
            ),
            (
                active.clone(),
                "query".into(),
                active_lease.clone(),
                "orders-db-read".into(),
                "active".into()
            ),
        ],
        "{tree:#}"
    );
    assert!(tasks[0]["leases"][0]["revoked"].is_string());
    assert!(tasks[1]["leases"][0]["revoked"].is_null());
    assert_eq!(tasks[0]["workload"], "postgres-mcp");
    assert_eq!(tasks[0]["peer_pid"], std::process::id());

    // The same tree by token fingerprint; and all owners without a filter.
    let by_token = run(
        &[
            "lineage",
            "--token",
            &Fingerprint::of(&carol).hex(),
            "--output",
            "json",
        ],
        &j,
        None,
    );
    let by_token: Value = serde_json::from_str(&by_token.stdout).unwrap_or_default();
    assert_eq!(by_token["owners"], tree["owners"]);
    let all: Value = serde_json::from_str(&run(&["lineage", "--output", "json"], &j, None).stdout)
        .unwrap_or_default();
    let names: Vec<&str> = all["owners"]
        .as_array()
        .map(|o| o.iter().filter_map(|o| o["owner"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["alice@example.com", "carol@example.com"]);

    // Table.
    let table = run(&["lineage", "--owner", "carol@example.com"], &j, None).stdout;
    for want in [
        "owner carol@example.com\n",
        "  agent (client) agent-7\n",
        "act=agent-7",
        &format!("task {active} tool=query workload=postgres-mcp"),
        &format!("lease {active_lease} credential pg/orders-db-read active"),
    ] {
        assert!(table.contains(want), "{want:?} not in\n{table}");
    }

    // DOT, rendered by Graphviz.
    let dot = run(&["lineage", "--output", "dot"], &j, None).stdout;
    assert!(dot.starts_with("digraph lineage {"), "{dot}");
    let svg = graphviz(&dot);
    assert_eq!(
        svg.code, 0,
        "graphviz refused the DOT: {}\n{dot}",
        svg.stderr
    );
    assert!(svg.stderr.starts_with("graphviz "), "{}", svg.stderr);
    assert!(svg.stdout.contains("<svg"), "{}", svg.stdout);
    for want in [
        "carol@example.com",
        "agent&#45;7",
        &active_lease[..8],
        "alice@example.com",
    ] {
        assert!(svg.stdout.contains(want), "{want} not drawn");
    }
    // Graphviz is really parsing: broken DOT fails.
    assert_eq!(graphviz(&dot.replace('}', "")).code, 1);

    // Query: credentials issued for the grant in the last 24 hours, by client and owner.
    let q = run(
        &[
            "audit",
            "query",
            "--event",
            "lease_issued",
            "--grant",
            "orders-db-read",
            "--since",
            "24h",
            "--group-by",
            "client,owner",
            "--output",
            "json",
        ],
        &j,
        None,
    );
    assert_eq!(q.code, 0, "{}", q.stderr);
    let groups: Value = serde_json::from_str(&q.stdout).unwrap_or_default();
    assert_eq!(
        groups,
        serde_json::json!([
            {"client": "agent-1", "owner": "alice@example.com", "count": 2},
            {"client": "agent-7", "owner": "carol@example.com", "count": 2},
        ])
    );
    let none = run(
        &[
            "audit",
            "query",
            "--event",
            "lease_issued",
            "--until",
            "24h",
        ],
        &j,
        None,
    );
    assert_eq!(none.stdout, "count\n0\n");
    // Bad input: a clear error, exit 2, nothing on stdout.
    for (args, want) in [
        (
            vec!["audit", "query", "--group-by", "password"],
            "cannot group by \"password\"",
        ),
        (
            vec!["audit", "query", "--outcome", "maybe"],
            "possible values: success, denied, failure",
        ),
        (
            vec!["audit", "query", "--since", "yesterday-ish"],
            "neither an RFC 3339 time",
        ),
        (vec!["lineage", "--limit", "0"], "--limit"),
        (
            vec![
                "audit",
                "export",
                "--hmac-key-file",
                "/dev/null",
                "--hmac-fields",
                "seq",
            ],
            "cannot HMAC field \"seq\"",
        ),
        (
            vec!["audit", "export", "--hmac-key-file", "/dev/null"],
            "export HMAC key /dev/null: must be 32 raw bytes",
        ),
    ] {
        let out = run(&args, &j, None);
        assert!(out.code == 2 || out.code == 1, "{args:?}: {}", out.code);
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }

    // Exports: JSONL, CSV (one row per record), OCSF (valid against the schema).
    let jsonl = run(&["audit", "export"], &j, None).stdout;
    let n = jsonl.lines().count();
    let csv = run(&["audit", "export", "--format", "csv"], &j, None).stdout;
    assert_eq!(csv.lines().count(), n + 1);
    assert!(csv.starts_with("seq,time,event,outcome,reason,task_id,lease_id"));
    let carol_csv = run(
        &[
            "audit",
            "export",
            "--format",
            "csv",
            "--owner",
            "carol@example.com",
            "--event",
            "lease_issued",
        ],
        &j,
        None,
    )
    .stdout;
    assert_eq!(carol_csv.lines().count(), 3, "{carol_csv}");
    let ocsf = run(&["audit", "export", "--format", "ocsf"], &j, None).stdout;
    assert_eq!(ocsf.lines().count(), n);
    let (code, report) = ocsf_validate(&ocsf);
    assert_eq!(code, 0, "OCSF validation: {report:#}");
    assert_eq!(report["events"], n);
    for class in ["3001", "3002", "6003"] {
        assert!(report["classes"][class].as_u64() > Some(0), "{report:#}");
    }
    // The validator is strict: an attribute OCSF does not define is refused.
    let broken = ocsf.replacen("\"class_uid\":", "\"not_ocsf\":1,\"class_uid\":", 1);
    assert_eq!(ocsf_validate(&broken).0, 1);

    // HMACed identifiers: filters still select by the real value, the output never shows it.
    let key = d.dir.path().join("export.key");
    crate::support::write_secret(&key, HEAD_KEY.replace('1', "2"))
        .expect("the export hmac key file should be written");
    let hidden = run(
        &[
            "audit",
            "export",
            "--owner",
            "carol@example.com",
            "--hmac-key-file",
            &key.display().to_string(),
            "--hmac-fields",
            "owner,sub,actors,client",
        ],
        &j,
        None,
    );
    assert_eq!(hidden.code, 0, "{}", hidden.stderr);
    assert!(hidden.stdout.lines().count() >= 8, "{}", hidden.stdout);
    assert!(!hidden.stdout.contains("carol"), "{}", hidden.stdout);
    assert!(!hidden.stdout.contains("agent-7"), "{}", hidden.stdout);
    // The first record of the task (the client's first sight, before it, names no task).
    let first: Value = hidden
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_default())
        .find(|r| r["event"] != "client_first_seen")
        .unwrap_or_default();
    assert!(
        first["owner"]
            .as_str()
            .is_some_and(|o| o.starts_with("hmac-sha256:"))
    );
    assert_eq!(first["task_id"], ended, "ids stay readable");
    // No secret in any export: the credential's password never reaches the audit log.
    for export in [&jsonl, &csv, &ocsf] {
        assert!(!export.contains("tp_"), "a credential in an export");
        assert!(!export.contains(&carol), "a token in an export");
    }

    // Verifying beside a busy daemon: records appended meanwhile are not taken for records
    // past the sealed head (the walk reads one snapshot).
    let mut client = d.broker().await;
    let busy = tokio::spawn(async move {
        for _ in 0..40 {
            if let Ok(b) = client
                .begin_task(begin_request(&alice, &["orders-db-read"]))
                .await
            {
                let task_id = b.into_inner().task.unwrap_or_default().id;
                let _ = client.end_task(v1::EndTaskRequest { task_id }).await;
            }
        }
    });
    let key = d.dir.path().join("audit-head.key");
    while !busy.is_finished() {
        let out = verify(&j, Some(&key));
        assert_eq!(out.code, 0, "{}", out.stdout);
    }
    busy.await
        .expect("the concurrent begin/end loop should not panic");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_metrics_count_what_the_audit_log_records() {
    let auth = AuthServer::start();
    let port = crate::support::free_port();
    let d = Daemon::start(|dir| {
        base_config(
            dir,
            &auth.issuer,
            &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        )
    })
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    task(&d, &token, true).await;
    task(&d, &token, false).await;
    // Two refusals before any task: a token that does not parse, and an expired-looking one.
    for bad in ["not-a-jwt", "a.b.c"] {
        let refused = d.begin(bad, &["orders-db-read"]).await;
        assert!(refused.is_err());
    }
    let http = reqwest::Client::new();
    // Counters are fed by the journal's observers just after each commit, once its submitters
    // have their answer: a scrape may run microseconds ahead of the last refusal's count.
    let mut text = String::new();
    for _ in 0..50 {
        let resp = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("the metrics endpoint should answer over tcp");
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap_or_default()
                .starts_with("text/plain; version=0.0.4")
        );
        text = resp.text().await.unwrap_or_default();
        if text.contains("credbroker_token_rejections_total{reason=\"malformed\"} 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
    };
    assert_eq!(value("credbroker_tasks_active"), 1.0);
    assert_eq!(value("credbroker_leases_active{provider=\"pg\"}"), 1.0);
    assert_eq!(value("credbroker_revocation_backlog{provider=\"pg\"}"), 0.0);
    assert_eq!(
        value("credbroker_issues_total{provider=\"pg\",result=\"issued\"}"),
        2.0
    );
    assert_eq!(
        value("credbroker_revocations_total{provider=\"pg\",result=\"revoked\"}"),
        1.0
    );
    assert_eq!(
        value("credbroker_issue_duration_seconds_count{provider=\"pg\"}"),
        2.0
    );
    assert_eq!(
        value("credbroker_token_rejections_total{reason=\"malformed\"}"),
        2.0
    );
    // Labels are reason codes and provider names only: no token, owner or client in the text.
    assert!(!text.contains(&token) && !text.contains("alice") && !text.contains("agent-1"));
    let missing = http
        .get(format!("http://127.0.0.1:{port}/secrets"))
        .send()
        .await
        .expect("the metrics server should answer an unknown path");
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_archives_then_prunes_behind_an_anchor_and_the_chain_still_verifies() {
    use credbroker::audit::{AuditRecord, Outcome};
    use credbroker::journal::{Journal, Op};
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| {
        // Five records from three days ago, in a journal the daemon then opens.
        let path = dir.join("journal.db");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime should build for seeding");
            let j = Journal::open(&path).expect("a fresh journal should open for seeding");
            let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86_400);
            for _ in 0..5 {
                let r = AuditRecord::new("old_event", Outcome::Success, old);
                rt.block_on(j.commit(vec![Op::Audit(Box::new(r))]))
                    .expect("an old audit record should commit to the journal");
            }
        })
        .join()
        .unwrap_or_else(|_| panic!("seeding the journal"));
        let mut config = with_head_key(dir, &auth.issuer);
        config = config.replace(
            "retention = \"400d\"",
            &format!(
                "retention = \"1d\"\narchive_dir = \"{}/archive\"",
                dir.display()
            ),
        );
        config
    })
    .await;
    let mut audit = Vec::new();
    crate::support::eventually(Duration::from_secs(10), "the retention pass", || {
        audit = d.audit();
        let done = audit.iter().any(|r| r["event"] == "audit_pruned");
        async move { done }
    })
    .await;
    assert_eq!(audit[0]["seq"], 6, "records 1..5 pruned, the rest kept");
    let anchor = audit
        .iter()
        .find(|r| r["event"] == "audit_pruned")
        .cloned()
        .unwrap_or_default();
    assert_eq!(anchor["detail"]["first_kept_seq"], 6);
    assert_eq!(anchor["detail"]["pruned_records"], 5);
    assert_eq!(anchor["detail"]["retention"], "1day");

    // The archive holds exactly the pruned records, private, and their chain ends where the
    // anchor says.
    let archive = d
        .dir
        .path()
        .join("archive/audit-000000000001-000000000005.jsonl");
    assert_eq!(anchor["detail"]["archive"], archive.display().to_string());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&archive)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600);
    let lines = std::fs::read_to_string(&archive).unwrap_or_default();
    assert_eq!(lines.lines().count(), 5);
    let mut prev = [0u8; 32];
    for (i, line) in lines.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap_or_default();
        assert_eq!(
            (v["seq"].as_u64(), v["event"].as_str()),
            (Some(i as u64 + 1), Some("old_event"))
        );
        prev = credbroker::journal::chain_hash(&prev, line.as_bytes());
    }
    let hex: String = prev.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(anchor["detail"]["prev_hash"], hex);

    // The pruned journal verifies, the anchor vouching for its start.
    let out = verify(&d.journal, Some(&d.dir.path().join("audit-head.key")));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("records before 6 pruned by retention (anchored)"),
        "{}",
        out.stdout
    );

    // From record 1, through the archive: the whole history verifies.
    let dir = d.dir.path().join("archive").display().to_string();
    let out = run(&["audit", "verify", "--archive", &dir], &d.journal, None);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("5 archived records chained in from record 1"),
        "{}",
        out.stdout
    );
    // An archived record altered, or one removed: the archive no longer joins the live log.
    std::fs::write(&archive, lines.replacen("old_event", "new_event", 1))
        .expect("the altered archive should be written");
    let out = run(&["audit", "verify", "--archive", &dir], &d.journal, None);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "record 6: Edited: the archives do not end with the hash the retention anchor recorded"
        ),
        "{}",
        out.stdout
    );
    let without_third: Vec<&str> = lines
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&archive, without_third.join("\n") + "\n")
        .expect("the archive missing a record should be written");
    let out = run(&["audit", "verify", "--archive", &dir], &d.journal, None);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("record 3: Deleted:") && out.stdout.contains("record 4 follows 2"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_over_a_unix_socket() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| {
        base_config(
            dir,
            &auth.issuer,
            &format!(
                "[metrics]\nlisten = \"unix:{}/metrics.sock\"\n",
                dir.display()
            ),
        )
    })
    .await;
    let path = d.dir.path().join("metrics.sock");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o660);
    let mut s = tokio::net::UnixStream::connect(&path)
        .await
        .expect("the metrics unix socket should accept a connection");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: credbroker\r\nConnection: close\r\n\r\n")
        .await
        .expect("the metrics request should be sent over the socket");
    let mut text = String::new();
    s.read_to_string(&mut text)
        .await
        .expect("the metrics response should be read until close");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\ncredbroker_tasks_active 0\n"), "{text}");
    assert!(
        text.contains("\ncredbroker_leases_active{provider=\"pg\"} 0\n"),
        "{text}"
    );
}
