//! The TypeScript client library (`clients/typescript`, package `@credbroker/client`) against the
//! real daemon and the real test authorization server: its `node --test` suite runs here (the
//! MCP wrapper through a real SDK server and client included), and this side checks what the
//! daemon and the provider saw, and that nothing secret was printed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES, S3};
use crate::support::{npm, repo};

/// Runs the package's tests with the daemon's socket and tokens in the environment. Returns
/// (success, everything printed, the tests' report lines).
fn node_test(env: &[(&str, String)], report: &Path) -> (bool, String, Vec<Value>) {
    let dir = repo().join("clients/typescript");
    npm::ensure(&dir, "@grpc/grpc-js");
    let mut cmd = Command::new("node");
    cmd
        // One file at a time: the provider-outage test sets a fault flag the others would see.
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-reporter=tap",
            "test/",
        ])
        .current_dir(&dir)
        .env("CB_REPORT", report)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    crate::support::suite::run(cmd, report)
}

/// A value of the test provider's secret shape (`tp_` + hex), anywhere in `text`.
fn has_provider_secret(text: &str) -> bool {
    text.match_indices("tp_").any(|(at, _)| {
        let rest = &text[at + 3..];
        rest.len() >= 16 && rest.bytes().take(16).all(|b| b.is_ascii_hexdigit())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_client_begins_uses_ends_and_reports_each_refusal() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let noscope = auth
        .token("agent-noscope", POSTGRES, "mcp.tool:s3.read")
        .await;
    let wrong_aud = auth.token("agent-1", S3, "mcp.tool:s3.read").await;
    let scratch = tempfile::tempdir().expect("a temp dir for the report should be created");
    let env = [
        ("CREDBROKER_SOCKET", d.broker_socket.display().to_string()),
        ("CB_PROVIDER_STATE", d.state.display().to_string()),
        ("CB_TOKEN", token.clone()),
        ("CB_TOKEN_NOSCOPE", noscope.clone()),
        ("CB_TOKEN_WRONG_AUD", wrong_aud.clone()),
    ];
    let (ok, output, report) = node_test(&env, &scratch.path().join("report.jsonl"));
    assert!(ok, "{output}\n--- daemon log ---\n{}", d.log_text());
    assert!(output.contains("# fail 0"), "{output}");
    // Every test ran: none skipped for want of the daemon.
    assert!(output.contains("# skipped 0"), "{output}");
    let passed: u32 = output
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(passed >= 20, "{passed} tests passed:\n{output}");

    // Nothing secret printed: no token, no credential value, in anything the tests printed.
    for t in [&token, &noscope, &wrong_aud] {
        assert!(!output.contains(t.as_str()), "a token was printed");
    }
    assert!(
        !has_provider_secret(&output),
        "a credential's secret value was printed"
    );

    // The daemon's side: every task the tests began was opened, ended by the workload, and its
    // lease revoked at the provider; nothing is left outstanding.
    let tasks: BTreeSet<&str> = report.iter().filter_map(|r| r["task"].as_str()).collect();
    let vias: BTreeSet<&str> = report
        .iter()
        .filter(|r| r["task"].is_string())
        .filter_map(|r| r["via"].as_str())
        .collect();
    assert_eq!(
        vias,
        BTreeSet::from([
            "begin",
            "late",
            "mcp",
            "mcp-throw",
            "replayed",
            "throw",
            "withTask"
        ]),
        "{report:?}"
    );
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "every lease revoked",
        || async { d.outstanding().is_empty() },
    )
    .await;
    let audit = d.audit();
    for task in &tasks {
        let of = |event: &str| {
            audit
                .iter()
                .find(|r| r["event"] == event && r["task_id"] == *task)
                .unwrap_or_else(|| panic!("no {event} for task {task}"))
        };
        of("task_opened");
        of("lease_revoked");
        assert_eq!(of("task_ended")["reason"], "ended_by_workload", "{task}");
    }
    // The attempt whose answer the relay lost was ended by the daemon on the replay.
    assert!(
        audit
            .iter()
            .any(|r| r["event"] == "task_ended" && r["reason"] == "begin_replayed"),
        "no task ended as begin_replayed"
    );
    // Each task had one lease; the provider revoked exactly those.
    assert!(d.revoked().len() >= tasks.len(), "{:?}", d.revoked());

    // Each refusal the tests saw is in the audit trail with the same reason code.
    let seen: BTreeSet<&str> = report
        .iter()
        .filter_map(|r| r["refused"].as_str())
        .collect();
    let audited: BTreeSet<&str> = audit.iter().filter_map(|r| r["reason"].as_str()).collect();
    for reason in [
        "insufficient_scope",
        "audience_mismatch",
        "malformed",
        "unknown_grant",
        "provider_unavailable",
        "call_unknown",
    ] {
        assert!(seen.contains(reason), "the tests did not see {reason}");
        assert!(
            audited.contains(reason),
            "{reason} not audited: {audited:?}"
        );
    }
}
