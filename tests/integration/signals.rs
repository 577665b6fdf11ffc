//! Shared Signals (SSF 1.0): a CAEP `session-revoked` SET, pushed (RFC 8935) or polled
//! (RFC 8936), ends the subject's tasks — leases revoked at OpenBao — and blocks new ones; every
//! kind of bad SET is refused with its RFC 8935 error and changes nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::{Daemon, base_config};
use crate::support::forge::Signer;
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::ssf::{
    AUDIENCE, ISSUER, POLL_BEARER, PUSH_BEARER, SESSION_REVOKED, Transmitter, write_public_jwks,
};
use crate::support::{eventually, free_port, now, reason, write_secret};
use crate::vault::{backends, token_file, vault_config};

/// `[signals]` and the transmitter, its files written into the daemon's directory.
fn signals_config(d: &std::path::Path, port: u16, tx: &Transmitter) -> String {
    write_public_jwks("keys-rotated", &d.join("ssf-jwks.json"));
    write_secret(d.join("ssf-push.bearer"), PUSH_BEARER.as_bytes()).expect("written");
    write_secret(d.join("ssf-poll.bearer"), POLL_BEARER.as_bytes()).expect("written");
    format!(
        "[signals]\nlisten = \"127.0.0.1:{port}\"\n\n[[transmitter]]\nname = \"idp\"\n\
         issuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"{d}/ssf-jwks.json\"\n\
         push_bearer_file = \"{d}/ssf-push.bearer\"\npoll_url = \"{}\"\n\
         poll_bearer_file = \"{d}/ssf-poll.bearer\"\npoll_interval = \"1s\"\nmax_age = \"5m\"\n\
         block_for = \"1h\"\n",
        tx.poll_url,
        d = d.display()
    )
}

/// What is pushed (a description, the SET, the bearer, the media type) and the answer expected
/// (status, RFC 8935 `err`).
type Case<'a> = (&'a str, String, Option<&'a str>, &'a str, u16, &'a str);

struct Setup {
    auth: AuthServer,
    tx: Transmitter,
    port: u16,
    d: Daemon,
    token: String,
    /// A live task's lease, of the subject the SETs name.
    lease: String,
}

/// The daemon with the transmitter, and a task of `agent-1` holding one lease.
async fn setup() -> Setup {
    let auth = AuthServer::start();
    let tx = Transmitter::start().await;
    let port = free_port();
    let d =
        Daemon::start(|dir| base_config(dir, &auth.issuer, &signals_config(dir, port, &tx))).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d
        .begin(&token, &["orders-db-read"])
        .await
        .expect("begin")
        .into_inner();
    let lease = begun.credentials[0].lease_id.clone();
    Setup {
        auth,
        tx,
        port,
        d,
        token,
        lease,
    }
}

fn records(d: &Daemon, event: &str) -> Vec<Value> {
    d.audit()
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pushed_session_revoked_ends_the_subjects_tasks_at_openbao_and_blocks_new_ones() {
    let auth = AuthServer::start();
    let (_pg, bao, secrets) = backends().await;
    let tx = Transmitter::start().await;
    let port = free_port();
    let d = Daemon::start(|dir| {
        vault_config(dir, &auth.issuer, &bao, &token_file(&secrets))
            + &signals_config(dir, port, &tx)
    })
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    d.begin(&token, &["orders-db"])
        .await
        .unwrap_or_else(|e| panic!("begin: {e:?}"));
    assert_eq!(
        bao.leases().await.len(),
        1,
        "one database credential is out"
    );

    let set = tx.sign(&tx.session_revoked(&auth.issuer, "agent-1", "set-1"));
    let url = format!("http://127.0.0.1:{port}/ssf/idp");
    let (status, body) = tx
        .push(&url, Some(PUSH_BEARER), "application/secevent+jwt", &set)
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(
        Duration::from_secs(15),
        "the lease revoked at OpenBao",
        || async { bao.leases().await.is_empty() },
    )
    .await;
    let e = d.begin(&token, &["orders-db"]).await.unwrap_err();
    assert_eq!(reason(&e), "subject_blocked");
    assert!(bao.leases().await.is_empty(), "nothing new was issued");

    let got = records(&d, "signal_received");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["detail"]["events"], json!([SESSION_REVOKED]));
    assert_eq!(got[0]["subject"], "agent-1");
    let blocks = records(&d, "block_added");
    assert_eq!(blocks[0]["detail"]["source"], "signal:idp");
    assert_eq!(blocks[0]["detail"]["kind"], "subject");
    assert_eq!(blocks[0]["issuer"], auth.issuer.as_str());
    assert!(
        !d.log_text().contains(PUSH_BEARER),
        "the bearer token is never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_bad_set_is_refused_with_its_error_and_changes_nothing() {
    let Setup {
        auth,
        tx,
        port,
        d,
        token: _,
        lease,
    } = setup().await;
    let url = format!("http://127.0.0.1:{port}/ssf/idp");
    let ctype = "application/secevent+jwt";
    let good = |jti: &str| tx.session_revoked(&auth.issuer, "agent-1", jti);
    let with = |jti: &str, key: &str, v: Value| {
        let mut c = good(jti);
        c[key] = v;
        c
    };
    let foreign = Signer::fixture("keys", "es256-1");
    let tampered = {
        let s = tx.sign(&good("t-0"));
        let mut parts: Vec<String> = s.split('.').map(str::to_owned).collect();
        parts[1] = tx
            .sign(&with(
                "t-0",
                "sub_id",
                json!({"format": "email", "email": "mallory@example.com"}),
            ))
            .split('.')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        parts.join(".")
    };
    let cases: Vec<Case<'_>> = vec![
        (
            "signed by a key the transmitter does not have",
            tx.sign_with(&foreign, &good("t-1")),
            Some(PUSH_BEARER),
            ctype,
            400,
            "invalid_key",
        ),
        (
            "a payload swapped under a good signature",
            tampered,
            Some(PUSH_BEARER),
            ctype,
            400,
            "invalid_key",
        ),
        (
            "another issuer",
            tx.sign(&with("t-2", "iss", json!("https://evil.example"))),
            Some(PUSH_BEARER),
            ctype,
            400,
            "invalid_issuer",
        ),
        (
            "another audience",
            tx.sign(&with("t-3", "aud", json!("https://someone-else.example"))),
            Some(PUSH_BEARER),
            ctype,
            400,
            "invalid_audience",
        ),
        (
            "too old",
            tx.sign(&with("t-4", "iat", json!(now() - 3600))),
            Some(PUSH_BEARER),
            ctype,
            400,
            "invalid_request",
        ),
        (
            "not a JWS",
            "not-a-set".into(),
            Some(PUSH_BEARER),
            ctype,
            400,
            "invalid_request",
        ),
        (
            "no bearer",
            tx.sign(&good("t-5")),
            None,
            ctype,
            401,
            "authentication_failed",
        ),
        (
            "a wrong bearer",
            tx.sign(&good("t-6")),
            Some("guess"),
            ctype,
            401,
            "authentication_failed",
        ),
        (
            "the wrong media type",
            tx.sign(&good("t-7")),
            Some(PUSH_BEARER),
            "application/json",
            400,
            "invalid_request",
        ),
    ];
    for (what, set, bearer, ct, status, err) in &cases {
        let (s, body) = tx.push(&url, *bearer, ct, set).await;
        assert_eq!(
            (s, body["err"].as_str()),
            (*status, Some(*err)),
            "{what}: {body}"
        );
    }
    assert!(
        d.outstanding().contains(&lease),
        "no bad SET ended anything"
    );
    assert!(
        records(&d, "block_added").is_empty(),
        "no bad SET placed a block"
    );
    assert!(records(&d, "signal_received").is_empty());
    assert_eq!(
        records(&d, "signal_rejected").len(),
        cases.len(),
        "every refusal is audited"
    );

    // A good one is taken; the same jti again is a replay, refused, and changes nothing more.
    let set = tx.sign(&good("t-8"));
    assert_eq!(tx.push(&url, Some(PUSH_BEARER), ctype, &set).await.0, 202);
    let (s, body) = tx.push(&url, Some(PUSH_BEARER), ctype, &set).await;
    assert_eq!(
        (s, body["err"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(
        body["description"]
            .as_str()
            .unwrap_or_default()
            .contains("already received")
    );
    assert_eq!(
        records(&d, "block_added").len(),
        1,
        "the replay placed no second block"
    );
    eventually(
        Duration::from_secs(10),
        "the good SET's revocation",
        || async { d.revoked().contains(&lease) },
    )
    .await;
    // An unknown transmitter is not found.
    let (s, _) = tx
        .push(
            &format!("http://127.0.0.1:{port}/ssf/nobody"),
            Some(PUSH_BEARER),
            ctype,
            &set,
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_polled_session_revoked_ends_the_subjects_tasks_and_bad_ones_are_reported_back() {
    let Setup {
        auth,
        tx,
        port: _,
        d,
        token,
        lease,
    } = setup().await;

    let mut bad = tx.session_revoked(&auth.issuer, "agent-1", "p-bad");
    bad["aud"] = json!("https://someone-else.example");
    tx.queue("p-bad", tx.sign(&bad));
    tx.queue(
        "p-1",
        tx.sign(&tx.session_revoked(&auth.issuer, "agent-1", "p-1")),
    );
    eventually(
        Duration::from_secs(10),
        "the polled SET acknowledged",
        || async { tx.acks().contains(&"p-1".to_string()) && tx.errs().contains_key("p-bad") },
    )
    .await;
    assert_eq!(tx.errs()["p-bad"]["err"], "invalid_audience");
    eventually(
        Duration::from_secs(10),
        "the subject's lease revoked",
        || async { d.revoked().contains(&lease) },
    )
    .await;
    assert_eq!(
        reason(&d.begin(&token, &["orders-db-read"]).await.unwrap_err()),
        "subject_blocked"
    );
    let got = records(&d, "signal_received");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["detail"]["via"], "poll");
    assert_eq!(
        records(&d, "block_added").len(),
        1,
        "the bad SET placed nothing"
    );
}
