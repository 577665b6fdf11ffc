//! What the integration tests run against: the real authorization server, the daemon as a
//! separate process, and helpers to talk to both. Everything the tests use lives here, in
//! `tests/support/`: these Rust helpers, the servers they start (`oidc/`, `github/`, …) and the
//! token forge the unit tests share (`forge.rs`).

#![allow(dead_code)]

pub mod daemon;
pub mod forge;
pub mod github;
pub mod mcp;
pub mod moto;
pub mod npm;
pub mod oidc;
pub mod openbao;
pub mod postgres;
pub mod recorder;
pub mod ssf;
pub mod suite;
pub mod venv;
pub mod webhook;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use credbroker::proto::v1;

/// Writes a secret (a key, a token) the way an operator must: readable by its owner only.
/// credbroker refuses secret files that other users can read.
pub fn write_secret(
    path: impl AsRef<std::path::Path>,
    contents: impl AsRef<[u8]>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = path.as_ref();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through open(): set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents.as_ref())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The reason code of a refused call.
pub fn reason(status: &tonic::Status) -> String {
    credbroker::server::status::reason_of(status)
        .unwrap_or_else(|| format!("<no reason: {status:?}>"))
}

pub fn begin_request(token: &str, grants: &[&str]) -> v1::BeginTaskRequest {
    v1::BeginTaskRequest {
        token: token.into(),
        tool: "query".into(),
        grants: grants
            .iter()
            .map(|g| v1::GrantRequest {
                name: (*g).into(),
                narrow: Default::default(),
            })
            .collect(),
        ttl_seconds: None,
        idempotency_key: None,
        call_id: None,
    }
}

/// Live tasks as the admin API lists them.
pub async fn live_tasks(d: &daemon::Daemon) -> Vec<v1::Task> {
    d.admin()
        .await
        .list_tasks(v1::ListTasksRequest {
            include_ended: false,
            filter: None,
            limit: 1000,
            after: String::new(),
        })
        .await
        .map(|r| r.into_inner().tasks)
        .unwrap_or_default()
}

pub async fn get_task(d: &daemon::Daemon, id: &str) -> v1::Task {
    d.admin()
        .await
        .get_task(v1::GetTaskRequest { task_id: id.into() })
        .await
        .map(|r| r.into_inner().task.unwrap_or_default())
        .unwrap_or_else(|e| panic!("get task {id}: {e}"))
}
