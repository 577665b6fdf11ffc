//! Stock gRPC clients of other languages talk to the daemon over its unix socket exactly as their
//! users would write them: no channel options, no authority override.
//!
//! grpcio (C-core) sends `:authority` = the percent-encoded socket path
//! (`%2Ftmp%2F…%2Fbroker.sock`), which the HTTP/2 layer used to refuse with
//! `RST_STREAM(PROTOCOL_ERROR)` before any request reached the service, and without a log line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::{npm, repo, venv};

/// Python stubs generated from the project's protos by the pinned grpcio-tools.
fn python_stubs(out: &Path) -> PathBuf {
    let python = venv::ensure("grpcio-tools==1.85.0", |v| {
        let py = v.join("bin/python");
        Command::new(&py)
            .args(["-c", "import grpc_tools, grpc"])
            .status()
            .is_ok_and(|s| s.success())
            .then_some(py)
    });
    let includes = Command::new(&python)
        .args([
            "-c",
            "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))",
        ])
        .output()
        .expect("python should print the grpc_tools proto include dir");
    let includes = String::from_utf8_lossy(&includes.stdout).trim().to_string();
    let protos: Vec<PathBuf> = std::fs::read_dir(repo().join("proto/credbroker/v1"))
        .expect("the project's proto dir should be listed")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let status = Command::new(&python)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", repo().join("proto").display()))
        .arg(format!("-I{includes}"))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&protos)
        .status()
        .expect("grpc_tools.protoc should run");
    assert!(status.success(), "grpc_tools.protoc failed");
    python
}

fn run(mut cmd: Command, token: &str) -> (bool, Value, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the stock client should spawn");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(token.as_bytes());
    }
    let out = child
        .wait_with_output()
        .expect("the stock client's output should be collected");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    (
        out.status.success(),
        serde_json::from_str(line).unwrap_or_default(),
        format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn assert_task_begun_and_ended(who: &str, ok: bool, got: &Value, output: &str, d: &Daemon) {
    assert!(ok, "{who}: {output}\n--- daemon log ---\n{}", d.log_text());
    assert_eq!(got["begun_state"], "active", "{who}: {got}");
    assert_eq!(got["credentials"], 1, "{who}: {got}");
    assert_eq!(got["ended_state"], "ended", "{who}: {got}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_python_and_node_grpc_clients_begin_and_end_a_task() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let sock = d.broker_socket.display().to_string();

    let stubs = tempfile::tempdir().expect("a temp dir for python stubs should be created");
    let python = python_stubs(stubs.path());
    let mut py = Command::new(python);
    py.arg(repo().join("tests/support/grpc-python/client.py"))
        .arg(&sock)
        .arg(stubs.path())
        .arg("orders-db-read");
    let (ok, got, output) = run(py, &token);
    assert_task_begun_and_ended("grpcio", ok, &got, &output, &d);

    let node_dir = repo().join("tests/support/grpc-node");
    npm::ensure(&node_dir, "@grpc/grpc-js");
    let mut node = Command::new("node");
    node.arg(node_dir.join("client.mjs"))
        .arg(&sock)
        .arg(repo().join("proto"))
        .arg("orders-db-read");
    let (ok, got, output) = run(node, &token);
    assert_task_begun_and_ended("@grpc/grpc-js", ok, &got, &output, &d);

    // Both tasks really were issued and revoked at the provider.
    assert_eq!(d.revoked().len(), 2);
    assert!(d.outstanding().is_empty());
}

/// A request the HTTP/2 layer refuses before any service sees it (here: no `:path`) is logged
/// with the peer and the HTTP/2 error, where before it vanished without a trace.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_refused_by_the_http2_layer_is_logged() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let mut s = tokio::net::UnixStream::connect(&d.broker_socket)
        .await
        .expect("the broker socket should accept a raw connection");
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "localhost"),
    ] {
        block.push(0x00);
        block.push(n.len() as u8);
        block.extend_from_slice(n.as_bytes());
        block.push(v.len() as u8);
        block.extend_from_slice(v.as_bytes());
    }
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    bytes.extend_from_slice(&block);
    s.write_all(&bytes)
        .await
        .expect("the raw http/2 bytes should be written");
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await;
    crate::support::eventually(
        std::time::Duration::from_secs(5),
        "the refusal in the log",
        || async { d.log_text().contains("the HTTP/2 layer refused a request") },
    )
    .await;
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("the HTTP/2 layer refused a request"))
        .unwrap_or_default();
    assert!(
        line.contains("code=\"PROTOCOL_ERROR\"") || line.contains("code=PROTOCOL_ERROR"),
        "{line}"
    );
    assert!(line.contains("peer_pid="), "{line}");
}
