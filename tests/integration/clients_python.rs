//! The Python client library (`clients/python`, package `credbroker`) against the real daemon
//! and the real test authorization server: its pytest suite runs here, and this side checks
//! what the daemon and the provider saw, and that nothing secret was printed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES, S3};
use crate::support::{repo, venv};

/// The pinned packages the client and its tests need (scripts/deps.sh installs the same).
const REQUIREMENTS: &[&str] = &[
    "grpcio==1.85.0",
    "grpcio-tools==1.85.0",
    "grpcio-status==1.85.0",
    "googleapis-common-protos==1.76.0",
    "pytest==9.2.0",
    "mcp==2.3.0",
];

/// The venv's Python with the client's requirements installed.
pub fn python() -> std::path::PathBuf {
    let mut py = None;
    for req in REQUIREMENTS {
        let module = match req.split("==").next().unwrap_or_default() {
            "grpcio" => "grpc",
            "grpcio-tools" => "grpc_tools",
            "grpcio-status" => "grpc_status",
            "googleapis-common-protos" => "google.rpc.status_pb2",
            "mcp" => "mcp.server",
            other => other,
        };
        py = Some(venv::ensure(req, |v| {
            let py = v.join("bin/python");
            Command::new(&py)
                .args(["-c", &format!("import {module}")])
                .status()
                .is_ok_and(|s| s.success())
                .then_some(py)
        }));
    }
    py.expect("at least one requirement")
}

/// Runs the client's pytest suite (or the tests matching `select`) with the daemon's socket
/// and tokens in the environment. Returns (success, everything printed, the tests' report).
fn pytest(env: &[(&str, String)], select: &str, report: &Path) -> (bool, String, Vec<Value>) {
    let mut cmd = Command::new(python());
    cmd.current_dir(repo().join("clients/python"))
        .args(["-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"])
        // Everything the tests print and log (the client's DEBUG lines included) reaches the
        // output searched below, not only what pytest shows of failing tests.
        .args(["-s", "-o", "log_cli=true", "--log-cli-level=DEBUG"])
        .env("PYTHONPATH", repo().join("clients/python/src"))
        .env("CREDBROKER_TEST_REPORT", report)
        // No __pycache__ left in the work tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("CREDBROKER_TOKEN");
    if !select.is_empty() {
        cmd.args(["-k", select]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    crate::support::suite::run(cmd, report)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_begins_uses_ends_and_reports_each_refusal() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let noscope = auth
        .token("agent-noscope", POSTGRES, "mcp.tool:s3.read")
        .await;
    let wrong_aud = auth.token("agent-1", S3, "mcp.tool:s3.read").await;
    let scratch = tempfile::tempdir().expect("a temp dir for the report should be created");
    let env = [
        (
            "CREDBROKER_TEST_SOCKET",
            d.broker_socket.display().to_string(),
        ),
        (
            "CREDBROKER_TEST_PROVIDER_STATE",
            d.state.display().to_string(),
        ),
        ("CREDBROKER_TEST_TOKEN", token.clone()),
        ("CREDBROKER_TEST_TOKEN_NOSCOPE", noscope.clone()),
        ("CREDBROKER_TEST_TOKEN_WRONG_AUD", wrong_aud.clone()),
    ];
    let (ok, output, report) = pytest(&env, "", &scratch.path().join("report.jsonl"));
    assert!(ok, "{output}\n--- daemon log ---\n{}", d.log_text());
    assert!(output.contains(" passed"), "{output}");
    assert!(
        !output.contains(" skipped"),
        "no test may skip here: {output}"
    );

    // What the tests were handed is secret: none of it, nor any token, was printed or logged.
    let secrets: BTreeSet<&str> = report.iter().filter_map(|r| r["secret"].as_str()).collect();
    assert!(secrets.len() >= 5, "{report:?}");
    for s in &secrets {
        assert!(
            !output.contains(s),
            "a credential's secret value was printed"
        );
    }
    for t in [&token, &noscope, &wrong_aud] {
        assert!(!output.contains(t.as_str()), "a token was printed");
    }

    // The daemon's side: every credential the tests were given is revoked, none is left.
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "every lease revoked",
        || async { d.outstanding().is_empty() },
    )
    .await;
    let revoked: BTreeSet<String> = d.revoked().into_iter().collect();
    for lease in report.iter().filter_map(|r| r["lease"].as_str()) {
        assert!(revoked.contains(lease), "lease {lease} was not revoked");
    }
    // Each refusal the tests saw is in the audit trail with the same reason code.
    let audit = d.audit();
    let reasons: BTreeSet<&str> = audit
        .iter()
        .filter(|r| r["event"] == "request_denied" || r["event"] == "token_rejected")
        .filter_map(|r| r["reason"].as_str())
        .collect();
    for reason in [
        "insufficient_scope",
        "audience_mismatch",
        "malformed",
        "unknown_grant",
        "grant_not_allowed",
    ] {
        assert!(
            reasons.contains(reason),
            "{reason} not audited: {reasons:?}"
        );
    }
    let ended = audit
        .iter()
        .filter(|r| r["event"] == "task_ended" && r["reason"] == "ended_by_workload")
        .count();
    assert!(ended >= 5, "{ended} tasks ended by the workload");
}
