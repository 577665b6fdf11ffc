//! `credbroker-client` (clients/rust) against the real daemon: a begun task holds working
//! credentials, `end()` revokes them, a dropped task is ended in the background (inside and
//! outside a runtime), a detached one is not, refusals carry their reason code and change
//! nothing, and no `Debug` or `Display` shows the token or a secret.

use std::time::Duration;

use credbroker_client::{BeginTask, Broker, Error, ExposeSecret as _, SecretString};

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::{eventually, get_task, live_tasks};

const GRANT: &str = "orders-db-read";

fn begin(token: &str) -> BeginTask {
    BeginTask::new(SecretString::from(token), "query", [GRANT])
}

/// The test AS, a daemon trusting it, and a token for the postgres workload.
async fn start() -> (AuthServer, Daemon, String) {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    (auth, d, token)
}

async fn connect(d: &Daemon) -> Broker {
    Broker::connect(&d.broker_socket)
        .await
        .expect("the broker socket should accept a connection")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_holds_its_credential_hides_it_and_end_revokes_it() {
    let (_auth, d, token) = start().await;
    let broker = connect(&d).await;

    let request = begin(&token);
    assert!(
        !format!("{request:?}").contains(&token),
        "Debug of BeginTask shows the token"
    );
    let task = broker
        .begin(request)
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"));
    let cred = task
        .credential(GRANT)
        .expect("the task should hold a credential for its grant");
    let password = cred
        .secret
        .get("password")
        .map(|p| p.expose_secret().to_string())
        .unwrap_or_default();
    assert!(password.starts_with("tp_"), "password {password:?}");
    assert_eq!(cred.kind, "test");
    assert_eq!(d.outstanding(), vec![cred.lease_id.clone()]);
    assert!(task.expires_at().is_some());
    assert_eq!(
        task.record().principal.as_ref().map(|p| p.owner.as_str()),
        Some("alice@example.com")
    );
    for shown in [format!("{task:?}"), format!("{cred:?}")] {
        assert!(!shown.contains(&password), "a secret in Debug: {shown}");
        assert!(!shown.contains(&token), "the token in Debug: {shown}");
        assert!(
            shown.contains(&cred.lease_id),
            "Debug shows nothing useful: {shown}"
        );
    }

    let id = task.id().to_string();
    let lease = cred.lease_id.clone();
    let ended = task.end().await.unwrap_or_else(|e| panic!("end: {e}"));
    assert_eq!(ended.state, "ended");
    assert_eq!(get_task(&d, &id).await.state, "ended");
    assert!(d.outstanding().is_empty());
    assert_eq!(d.revoked(), vec![lease]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_task_is_ended_in_the_background_and_a_detached_one_is_not() {
    let (_auth, d, token) = start().await;
    let broker = connect(&d).await;

    // Dropped inside the runtime: ended by a task spawned on it.
    let inside = broker.begin(begin(&token)).await.expect("begin");
    let inside_id = inside.id().to_string();
    drop(inside);
    // Dropped on a thread with no runtime: ended by a thread of its own with a new connection.
    let outside = broker.begin(begin(&token)).await.expect("begin");
    let outside_id = outside.id().to_string();
    std::thread::spawn(move || drop(outside))
        .join()
        .expect("the dropping thread should not panic");
    // The tool panics with the task in hand: unwinding drops it, and it is ended.
    let panicked = broker.begin(begin(&token)).await.expect("begin");
    let panicked_id = panicked.id().to_string();
    let tool = tokio::spawn(async move {
        let _task = panicked;
        panic!("the tool failed");
    });
    assert!(tool.await.is_err_and(|e| e.is_panic()));
    // Detached: handed over by id, left alone on drop.
    let detached = broker.begin(begin(&token)).await.expect("begin");
    let detached_id = detached.detach();

    for id in [&inside_id, &outside_id, &panicked_id] {
        eventually(
            Duration::from_secs(10),
            "the dropped task to be ended",
            || {
                let d = &d;
                async move { get_task(d, id).await.state == "ended" }
            },
        )
        .await;
    }
    assert_eq!(d.revoked().len(), 3);
    assert_eq!(
        live_tasks(&d)
            .await
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        vec![detached_id.as_str()],
        "only the detached task should be live"
    );
    assert_eq!(d.outstanding().len(), 1);
    let ended = broker.end(&detached_id).await.expect("end by id");
    assert_eq!(ended.state, "ended");
    assert!(d.outstanding().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_carry_their_reason_code_name_no_secret_and_change_nothing() {
    let (auth, d, token) = start().await;
    let weak = auth
        .token("agent-noscope", POSTGRES, "mcp.tool:s3.read")
        .await;
    let broker = connect(&d).await;

    let cases = [
        (
            begin(&weak),
            "insufficient_scope",
            tonic::Code::PermissionDenied,
        ),
        (
            BeginTask::new(
                SecretString::from(token.as_str()),
                "query",
                ["no-such-grant"],
            ),
            "unknown_grant",
            tonic::Code::InvalidArgument,
        ),
        (
            begin("not.a.token"),
            "malformed",
            tonic::Code::Unauthenticated,
        ),
        (
            // A grant that exists, but not for this workload.
            BeginTask::new(SecretString::from(token.as_str()), "query", ["s3-read"]),
            "grant_not_allowed",
            tonic::Code::PermissionDenied,
        ),
    ];
    for (request, want, code) in cases {
        let err = broker
            .begin(request)
            .await
            .err()
            .unwrap_or_else(|| panic!("{want}: accepted"));
        assert!(matches!(err, Error::Refused { .. }), "{want}: {err:?}");
        assert_eq!((err.reason(), err.code()), (Some(want), Some(code)));
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(&token) && !shown.contains(&weak), "{shown}");
        }
    }

    // Refused here, before anything is sent.
    let short = BeginTask {
        ttl: Some(Duration::from_millis(500)),
        ..begin(&token)
    };
    assert!(matches!(broker.begin(short).await, Err(Error::Invalid(_))));
    let stray = BeginTask {
        narrow: vec![credbroker_client::Narrow {
            grant: "s3-read".into(),
            param: "tables".into(),
            values: vec!["orders".into()],
        }],
        ..begin(&token)
    };
    assert!(matches!(broker.begin(stray).await, Err(Error::Invalid(_))));
    // Not a socket at all: a typed error that says where it looked.
    let missing = d.broker_socket.with_file_name("nobody.sock");
    match Broker::connect(&missing).await {
        Err(Error::NotConnected { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected NotConnected, got {other:?}"),
    }

    assert!(live_tasks(&d).await.is_empty());
    assert!(d.outstanding().is_empty() && d.revoked().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_waiting_waits_for_a_daemon_that_is_starting() {
    let (_auth, d, token) = start().await;
    // The socket appears 300 ms after the client starts dialling, as when a daemon restarts.
    let later = d.broker_socket.with_file_name("later.sock");
    let (target, link) = (d.broker_socket.clone(), later.clone());
    let appear = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::os::unix::fs::symlink(target, link).expect("the socket link should be made");
    });
    let told = std::sync::atomic::AtomicU32::new(0);
    let broker = Broker::connect_waiting(&later, |e| {
        assert!(matches!(e, Error::NotConnected { .. }), "{e:?}");
        told.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .await
    .unwrap_or_else(|e| panic!("connect_waiting should outwait the restart: {e}"));
    appear.await.expect("the link task should finish");
    assert_eq!(told.into_inner(), 1, "told once that it is waiting");
    let task = broker.begin(begin(&token)).await.expect("begin");
    assert_eq!(task.end().await.expect("end").state, "ended");
}
