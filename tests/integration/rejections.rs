//! Every refusal, over the socket and through `credbroker token check`, each with its reason
//! code — and none of them changes any state.

use std::io::Write;
use std::process::{Command, Stdio};

use credbroker::proto::v1;
use credbroker::token::Fingerprint;
use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::forge::{self, Signer};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES, S3};
use crate::support::{begin_request, live_tasks, now, reason};

/// Another registered workload (no process here matches it), so its audience is known.
const S3_WORKLOAD: &str = r#"
[[workload]]
name = "s3-mcp"
gid = 4242
audience = "https://mcp.example.test/s3"
grants = ["s3-read"]
"#;

fn token_check(d: &Daemon, token: &str) -> (i32, Value) {
    let mut child = d
        .cli()
        .args(["token", "check", "--config"])
        .arg(&d.config)
        .args(["--workload", "postgres-mcp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("token check should spawn");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(token.as_bytes());
    }
    let out = child
        .wait_with_output()
        .expect("token check output should be collected");
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_token_rejection_has_its_code_over_the_socket_and_in_token_check() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, S3_WORKLOAD)).await;
    let signer = Signer::fixture("keys", "es256-1");
    let rotated = Signer::fixture("keys-rotated", "es256-2");
    let now = now();
    let good = forge::claims(&auth.issuer, POSTGRES, PG_READ, now);

    // A token forged with the issuer's own key passes, through the real JWKS.
    let ok = d.begin(&signer.token(&good), &["orders-db-read"]).await;
    let ok = ok
        .unwrap_or_else(|e| panic!("the control token must pass: {e:?}"))
        .into_inner();
    let ok_id = ok.task.unwrap_or_default().id;
    assert_eq!(token_check(&d, &signer.token(&good)).0, 0);
    d.end(&ok_id).await.unwrap_or_else(|e| panic!("{e:?}"));

    let mut failures = Vec::new();
    let mut fingerprints = Vec::new();
    for (want, what, token) in forge::rejection_cases(&signer, &rotated, &good, now) {
        let err = d.begin(&token, &["orders-db-read"]).await.err();
        let got = err
            .as_ref()
            .map(reason)
            .unwrap_or_else(|| "accepted".into());
        let code = err.as_ref().map(tonic::Status::code);
        if got != want || code != Some(tonic::Code::Unauthenticated) {
            failures.push(format!(
                "socket, {what}: expected {want}, got {got} ({code:?})"
            ));
        }
        if err.is_some_and(|e| e.message().contains(&token)) {
            failures.push(format!("socket, {what}: the error echoes the token"));
        }
        let (exit, verdict) = token_check(&d, &token);
        if exit != 1 || verdict["reason"] != want || verdict["verdict"] != "rejected" {
            failures.push(format!(
                "token check, {what}: expected {want}, got exit {exit} {verdict}"
            ));
        }
        fingerprints.push(Fingerprint::of(&token).hex());
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // No state changed: nothing live, nothing issued beyond the control task.
    assert!(live_tasks(&d).await.is_empty());
    assert!(d.outstanding().is_empty());
    assert_eq!(d.revoked().len(), 1);
    // Every refusal is audited with the token's fingerprint (the oversized one is not hashed).
    let audit = d.audit();
    let rejected: Vec<&Value> = audit
        .iter()
        .filter(|r| r["event"] == "token_rejected")
        .collect();
    assert_eq!(rejected.len(), fingerprints.len());
    assert!(
        rejected
            .iter()
            .filter(|r| r["token_fingerprint"].is_string())
            .all(|r| fingerprints.contains(
                &r["token_fingerprint"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            ))
    );
    assert!(
        rejected
            .iter()
            .all(|r| r["peer"]["pid"] == std::process::id())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_and_request_refusals_have_their_codes_and_change_nothing() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, S3_WORKLOAD)).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begin = |req: v1::BeginTaskRequest| {
        let d = &d;
        async move {
            let err = d.broker().await.begin_task(req).await.err();
            err.map(|e| (e.code(), reason(&e)))
                .unwrap_or((Ok, "accepted".into()))
        }
    };
    use tonic::Code::*;

    // Token valid, but for another registered workload's resource.
    let s3_token = auth.token("agent-1", S3, "mcp.tool:s3.read").await;
    assert_eq!(
        begin(begin_request(&s3_token, &["orders-db-read"])).await,
        (Unauthenticated, "audience_mismatch".into())
    );
    // The token lacks the grant's scope.
    let weak = auth
        .token("agent-noscope", POSTGRES, "mcp.tool:s3.read")
        .await;
    assert_eq!(
        begin(begin_request(&weak, &["orders-db-read"])).await,
        (PermissionDenied, "insufficient_scope".into())
    );
    // Nobody answers for this client and require_owner is set.
    let orphan = auth.token("agent-unowned", POSTGRES, PG_READ).await;
    assert_eq!(
        begin(begin_request(&orphan, &["orders-db-read"])).await,
        (PermissionDenied, "owner_required".into())
    );
    assert_eq!(
        begin(begin_request(&token, &["s3-read"])).await,
        (PermissionDenied, "grant_not_allowed".into())
    );
    assert_eq!(
        begin(begin_request(&token, &["no-such-grant"])).await,
        (InvalidArgument, "unknown_grant".into())
    );
    let narrow = |param: &str, values: &[&str]| {
        let mut r = begin_request(&token, &["orders-db-read"]);
        r.grants[0].narrow.insert(
            param.into(),
            v1::StringList {
                values: values.iter().map(|s| s.to_string()).collect(),
            },
        );
        r
    };
    assert_eq!(
        begin(narrow("items", &["orders", "secrets"])).await,
        (PermissionDenied, "narrowing_exceeds_grant".into())
    );
    assert_eq!(
        begin(narrow("label", &["x"])).await,
        (InvalidArgument, "narrowing_not_allowed".into())
    );

    // Malformed requests, refused before the token is even looked at.
    assert_eq!(
        begin(begin_request("", &["orders-db-read"])).await,
        (Unauthenticated, "missing_token".into())
    );
    assert_eq!(
        begin(begin_request(&token, &[])).await,
        (InvalidArgument, "no_grants".into())
    );
    assert_eq!(
        begin(begin_request(&token, &["orders-db-read", "orders-db-read"])).await,
        (InvalidArgument, "duplicate_grant".into())
    );
    let mut bad_tool = begin_request(&token, &["orders-db-read"]);
    bad_tool.tool = "rm -rf /".into();
    assert_eq!(
        begin(bad_tool).await,
        (InvalidArgument, "invalid_tool".into())
    );
    let mut zero = begin_request(&token, &["orders-db-read"]);
    zero.ttl_seconds = Some(0);
    assert_eq!(begin(zero).await, (InvalidArgument, "invalid_ttl".into()));
    let bad_id = d.end("../../etc").await;
    assert_eq!(
        bad_id.err().map(|e| reason(&e)).as_deref(),
        Some("invalid_task_id")
    );
    let unknown = d.end("01a20123-0000-7000-8000-000000000000").await;
    assert_eq!(
        unknown.err().map(|e| (e.code(), reason(&e))),
        Some((NotFound, "task_not_found".into()))
    );
    // An oversized request is refused by the transport before decoding.
    let huge = begin(begin_request(&"x".repeat(100_000), &["orders-db-read"])).await;
    assert_eq!(huge.0, OutOfRange);

    assert!(live_tasks(&d).await.is_empty());
    assert!(d.outstanding().is_empty() && d.revoked().is_empty());
    let audit = d.audit();
    let wrong = audit
        .iter()
        .find(|r| r["event"] == "token_presented_by_wrong_workload");
    let wrong = wrong.unwrap_or_else(|| panic!("no wrong-workload record in {audit:#?}"));
    assert_eq!(
        (
            wrong["workload"].as_str(),
            wrong["detail"]["intended_workload"].as_str()
        ),
        (Some("postgres-mcp"), Some("s3-mcp"))
    );
    assert_eq!(wrong["reason"], "audience_mismatch");
    let denied: Vec<&str> = audit
        .iter()
        .filter(|r| r["event"] == "request_denied")
        .filter_map(|r| r["reason"].as_str())
        .collect();
    for code in [
        "insufficient_scope",
        "owner_required",
        "grant_not_allowed",
        "unknown_grant",
        "narrowing_exceeds_grant",
    ] {
        assert!(denied.contains(&code), "{code} not audited: {denied:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_peers_and_non_admins_are_refused() {
    let auth = AuthServer::start();
    // Let uid/gid 65534 (nobody) reach the broker socket through its group, so the daemon itself
    // has to refuse the peer; the admin socket stays 0600.
    let d = Daemon::start(|dir| {
        base_config(dir, &auth.issuer, "")
            .replace("[server]\n", "[server]\nbroker_socket_group = \"65534\"\n")
    })
    .await;
    std::fs::set_permissions(
        d.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap_or_default();
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::support::daemon::testd())
            .args(args);
        c.env("CREDBROKER_SOCKET", &d.broker_socket)
            .env("CREDBROKER_ADMIN_SOCKET", &d.admin_socket)
            .env("CREDBROKER_TOKEN", &token);
        c.output().unwrap_or_else(|e| panic!("setpriv: {e}"))
    };
    let out = as_nobody(&[
        "task",
        "begin",
        "--tool",
        "query",
        "--grant",
        "orders-db-read",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown_peer"), "{stderr}");
    assert!(!stderr.contains(&token));
    // EndTask identifies the peer the same way: refused, and audited, and the task lives on.
    let begun = d
        .begin(&token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("begin: {e:?}"))
        .into_inner();
    let id = begun.task.map(|t| t.id).unwrap_or_default();
    let out = as_nobody(&["task", "end", "--task", &id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown_peer"), "{stderr}");
    assert_eq!(live_tasks(&d).await.len(), 1, "the task was not ended");
    let out = as_nobody(&["tasks", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied on"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = d.audit();
    let rejected = audit
        .iter()
        .filter(|r| {
            r["event"] == "peer_rejected"
                && r["peer"]["uid"] == 65534
                && r["reason"] == "unknown_peer"
        })
        .count();
    assert_eq!(
        rejected, 2,
        "BeginTask and EndTask refusals are both audited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_pinned_to_an_executable_admits_only_that_executable() {
    let auth = AuthServer::start();
    let exe = std::fs::canonicalize(crate::support::daemon::testd())
        .expect("the testd binary path should canonicalize");
    let d = Daemon::start(|dir| {
        base_config(dir, &auth.issuer, "").replace(
            "grants = [\"orders-db-read\"]",
            &format!("grants = [\"orders-db-read\"]\nexe = \"{}\"", exe.display()),
        )
    })
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    // This test binary is not that executable.
    let err = d.begin(&token, &["orders-db-read"]).await.err();
    assert_eq!(err.map(|e| reason(&e)).as_deref(), Some("unknown_peer"));
    // The CLI is.
    let out = d
        .cli()
        .args([
            "task",
            "begin",
            "--tool",
            "query",
            "--grant",
            "orders-db-read",
        ])
        .env("CREDBROKER_TOKEN", &token)
        .output()
        .expect("task begin from the pinned executable should run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(v["task"]["peer"]["exe"], exe.display().to_string());
}
