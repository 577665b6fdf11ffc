//! Per-task scopes (what the Vault provider's child tokens are), exercised with the test
//! provider in scoped mode: revoking a scope takes back everything issued under it.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::{begin_request, eventually, live_tasks, reason};

fn scoped(dir: &Path, issuer: &str) -> String {
    base_config(dir, issuer, "").replace("type = \"test\"\n", "type = \"test\"\nscoped = true\n")
}

fn count(d: &Daemon, sub: &str) -> usize {
    std::fs::read_dir(d.state.join(sub))
        .map(|r| r.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_task_revokes_its_credentials_then_its_scope() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| scoped(dir, &auth.issuer)).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d.begin(&token, &["orders-db-read"]).await;
    let task = begun
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .task
        .unwrap_or_default();
    assert_eq!(
        task.leases.len(),
        2,
        "a scope and a credential: {:?}",
        task.leases
    );
    assert_eq!((count(&d, "scopes"), d.outstanding().len()), (1, 1));

    let ended = d.end(&task.id).await;
    let ended = ended
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .task
        .unwrap_or_default();
    assert_eq!(ended.state, "ended");
    assert_eq!(
        (
            count(&d, "scopes"),
            count(&d, "revoked-scopes"),
            d.outstanding().len()
        ),
        (0, 1, 0)
    );
    let audit = d.audit();
    let revoked: Vec<&str> = audit
        .iter()
        .filter(|r| r["event"] == "lease_revoked")
        .filter_map(|r| r["detail"]["role"].as_str())
        .collect();
    assert_eq!(
        revoked,
        ["credential", "scope"],
        "credentials first, then the scope"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_of_unknown_outcome_is_taken_back_with_its_scope() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| scoped(dir, &auth.issuer)).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    d.provider_flag("hang-issue", true);
    let err = d.begin(&token, &["orders-db-read"]).await.err();
    assert_eq!(
        err.map(|e| reason(&e)).as_deref(),
        Some("provider_outcome_unknown")
    );
    eventually(
        Duration::from_secs(15),
        "the scope takes the credential back",
        || async { live_tasks(&d).await.is_empty() },
    )
    .await;
    assert_eq!((d.outstanding().len(), count(&d, "scopes")), (0, 0));
    assert_eq!(d.revoked().len(), 1);
    let audit = d.audit();
    let with_scope: Vec<&Value> = audit
        .iter()
        .filter(|r| r["reason"] == "revoked_with_scope")
        .collect();
    assert_eq!(with_scope.len(), 1, "{audit:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_while_issuing_under_a_scope_leaves_nothing() {
    let auth = AuthServer::start();
    let mut d = Daemon::start(|dir| scoped(dir, &auth.issuer)).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    std::fs::write(d.state.join("slow-answer-ms"), "5000").unwrap_or_default();
    let mut client = d.broker().await;
    let pending = tokio::spawn(async move {
        client
            .begin_task(begin_request(&token, &["orders-db-read"]))
            .await
    });
    // The scope is open and journaled; the credential is being issued under it.
    eventually(Duration::from_secs(5), "the scope exists", || async {
        count(&d, "scopes") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.kill9();
    let _ = pending.await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The provider finished issuing after the crash: an orphan only the scope knows about.
    d.provider_flag("slow-issue-ms", false);
    d.spawn().await;
    eventually(
        Duration::from_secs(15),
        "recovery revokes the scope and its orphan",
        || async { live_tasks(&d).await.is_empty() },
    )
    .await;
    assert_eq!((d.outstanding().len(), count(&d, "scopes")), (0, 0));
    assert!(
        d.audit()
            .iter()
            .any(|r| r["event"] == "task_ending" && r["reason"] == "interrupted")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scope_that_cannot_open_fails_the_task_and_issues_nothing() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| scoped(dir, &auth.issuer)).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    d.provider_flag("fail-scope", true);
    let err = d.begin(&token, &["orders-db-read"]).await.err();
    let err = err.unwrap_or_else(|| panic!("must fail"));
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (tonic::Code::Unavailable, "provider_unavailable")
    );
    assert!(live_tasks(&d).await.is_empty());
    assert_eq!((d.outstanding().len(), count(&d, "scopes")), (0, 0));
}
