//! The `oauth` provider as operators meet it: `check-config --online`, a crash in the middle of
//! an exchange, and the caller's token kept from every provider that does not exchange it.

use std::time::Duration;

use super::oauth_setup::{AT_CRM, EXCHANGE, Servers, config, daemon};
use crate::support::daemon::Daemon;
use crate::support::{begin_request, reason, write_secret};

fn check_online(d: &Daemon) -> (bool, String) {
    let out = d
        .cli()
        .args(["check-config", "--online", "--config"])
        .arg(&d.config)
        .output()
        .expect("check-config runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_online_proves_metadata_client_authentication_and_grant_types() {
    let s = Servers::start();
    let d = daemon(&s, "info").await;
    let (ok, out) = check_online(&d);
    assert!(!ok, "idp-cc lacks the grant type: {out}");
    // The grants that work pass; the one for a resource the AS does not know does not.
    assert!(
        out.contains("grant crm-unknown: ")
            && out.contains("the server does not know the grant's resource or audience"),
        "{out}"
    );
    for grant in ["crm", "crm-jag", "crm-service"] {
        assert!(
            !out.contains(&format!("  grant {grant}: ")),
            "{grant}: {out}"
        );
    }
    assert!(out.contains("provider idp-post (oauth): ok"), "{out}");
    assert!(out.contains("provider idp-cc (oauth): FAILED"), "{out}");
    assert!(
        out.contains(
            "client credbroker-cc may not use urn:ietf:params:oauth:grant-type:token-exchange"
        ),
        "{out}"
    );
    // Offline, it says what each grant needs from its AS.
    assert!(
        out.contains("must be allowed RFC 8693 token exchange"),
        "{out}"
    );
    assert!(out.contains("the JWT bearer grant (RFC 7523)"), "{out}");

    // A wrong secret at the resource's AS: its client authentication fails, and says so.
    write_secret(
        d.dir.path().join(format!("{AT_CRM}.secret")),
        "not-the-secret",
    )
    .expect("the wrong secret is written");
    let (ok, out) = check_online(&d);
    assert!(!ok, "{out}");
    assert!(out.contains("provider idp (oauth): FAILED"), "{out}");
    assert!(
        out.contains(&format!(
            "client {AT_CRM} failed to authenticate with client_secret_basic"
        )),
        "{out}"
    );
    assert!(
        !out.contains("not-the-secret"),
        "the secret is echoed: {out}"
    );
    // Nothing was issued by any probe but the client-credentials grant's (revoked at once).
    let log = s.idp.log().await;
    assert!(
        log.iter()
            .filter(|e| e["event"] == "token")
            .all(|e| e["grant_type"] == "client_credentials" || e["client_id"] != "credbroker"),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_an_exchange_leaves_its_residual_audited_after_restart() {
    let s = Servers::start();
    let mut d = daemon(&s, "info").await;
    let carol = s.carol().await;
    s.idp.token_mode("hang").await;
    let socket = d.broker_socket.clone();
    let pending = tokio::spawn(async move {
        let channel = credbroker::client::channel(&socket).await.ok()?;
        credbroker::proto::v1::broker_client::BrokerClient::new(channel)
            .begin_task(begin_request(&carol, &["crm"]))
            .await
            .err()
    });
    // The exchange is on the wire: the intent is journaled, the answer will never come.
    crate::support::eventually(Duration::from_secs(10), "the exchange sent", || async {
        d.audit().iter().any(|r| r["event"] == "task_opened")
    })
    .await;
    d.kill9();
    let _ = pending.await;
    s.idp.token_mode("ok").await;
    d.spawn().await;
    let r = super::oauth_setup::residual(&d).await;
    assert!(r["lease_id"].is_string(), "{r:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_callers_token_reaches_only_the_provider_that_exchanges_it() {
    let s = Servers::start();
    let d = daemon(&s, "info").await;
    let carol = s.carol().await;
    let begun = d
        .begin(&carol, &["orders-db-read", "crm"])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    assert_eq!(begun.credentials.len(), 2);
    let issued = d.outstanding();
    assert_eq!(issued.len(), 1, "{issued:?}");
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.state.join("issued").join(format!("{}.json", issued[0])))
            .expect("the test provider's record reads"),
    )
    .expect("the record is JSON");
    assert_eq!(
        record["subject_token"], false,
        "the test provider got the caller's token"
    );
    assert!(
        Servers::exchanges(&s.idp, EXCHANGE)
            .await
            .iter()
            .any(|e| e["client_id"] == "credbroker"),
        "the oauth provider did exchange it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_an_issuer_not_listed_is_never_sent_to_the_authorization_server() {
    let s = Servers::start();
    let d = Daemon::start(|dir| {
        config(
            dir,
            &s,
            "subject_issuers = [\"https://other-idp.example.test\"]",
        )
    })
    .await;
    let carol = s.carol().await;
    let before = Servers::exchanges(&s.idp, EXCHANGE).await.len();
    let err = d
        .begin(&carol, &["crm"])
        .await
        .err()
        .unwrap_or_else(|| panic!("the exchange was made"));
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (tonic::Code::PermissionDenied, "provider_denied"),
        "{err:?}"
    );
    assert!(
        err.message().contains("subject_issuers"),
        "{}",
        err.message()
    );
    assert_eq!(
        Servers::exchanges(&s.idp, EXCHANGE).await.len(),
        before,
        "the token was sent"
    );
}
