//! No secret is logged, printed in an error, or stored unencrypted.

use credbroker::proto::v1;

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::reason;

fn find_all(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_task_at_trace_level_logs_no_token_and_no_credential() {
    let auth = AuthServer::start();
    let d = Daemon::start_logging(|dir| base_config(dir, &auth.issuer, ""), "trace").await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let signature = token.rsplit('.').next().unwrap_or_default().to_string();

    let begun = d.begin(&token, &["orders-db-read"]).await;
    let begun = begun.unwrap_or_else(|e| panic!("{e:?}")).into_inner();
    let task = begun.task.unwrap_or_default().id;
    let password = begun.credentials[0]
        .secret
        .get("password")
        .cloned()
        .unwrap_or_default();
    assert!(password.len() > 20);
    let renewed = d
        .broker()
        .await
        .renew_task(v1::RenewTaskRequest {
            task_id: task.clone(),
            token: token.clone(),
            ttl_seconds: Some(120),
        })
        .await;
    assert!(renewed.is_ok(), "{renewed:?}");
    // A rejected token too: its refusal must not echo it.
    let at = token.len() - 10;
    let swapped = if &token[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{swapped}{}", &token[..at], &token[at + 1..]);
    let err = d.begin(&tampered, &["orders-db-read"]).await.err();
    assert!(
        err.as_ref()
            .is_some_and(|e| !e.message().contains(&tampered))
    );
    assert_eq!(err.map(|e| reason(&e)).as_deref(), Some("bad_signature"));
    d.end(&task).await.unwrap_or_else(|e| panic!("{e:?}"));

    let log = d.log_text();
    // The daemon really logged at trace level (h2 frames, tonic, our own spans).
    assert!(log.lines().count() > 100, "trace logging is not on:\n{log}");
    assert!(log.contains("TRACE"));
    for (what, secret) in [
        ("token", token.as_str()),
        ("token signature", signature.as_str()),
        ("credential", password.as_str()),
    ] {
        assert!(!log.contains(secret), "the {what} appears in the log");
    }
    let key = std::fs::read_to_string(d.dir.path().join("journal.key")).unwrap_or_default();
    assert!(
        !log.contains(key.trim()),
        "the journal key appears in the log"
    );

    // The journal and its WAL hold neither the token nor the credential in clear.
    for file in ["journal.db", "journal.db-wal"] {
        let bytes = std::fs::read(d.dir.path().join(file)).unwrap_or_default();
        assert!(
            !find_all(&bytes, &password),
            "{file} holds the credential in clear"
        );
        assert!(!find_all(&bytes, &signature), "{file} holds the token");
    }
    // The audit export carries fingerprints only.
    let audit = serde_json::to_string(&d.audit()).unwrap_or_default();
    assert!(!audit.contains(&signature) && !audit.contains(&password));
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_handles_are_ciphertext_bound_to_their_lease() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d.begin(&token, &["orders-db-read"]).await;
    let begun = begun.unwrap_or_else(|e| panic!("{e:?}")).into_inner();
    let lease = begun.credentials[0].lease_id.clone();
    let conn = rusqlite::Connection::open(&d.journal).expect("the journal should open with sqlite");
    let sealed: Vec<u8> = conn
        .query_row(
            "SELECT sealed_handle FROM leases WHERE id = ?1",
            [&lease],
            |r| r.get(0),
        )
        .expect("the lease's sealed handle should be in the journal");
    assert_eq!(sealed[0], 1, "format version");
    let password = begun.credentials[0]
        .secret
        .get("password")
        .cloned()
        .unwrap_or_default();
    assert!(!find_all(&sealed, &password));
    // Once revoked, the handle is dropped from the journal altogether.
    let task = begun.task.unwrap_or_default().id;
    d.end(&task).await.unwrap_or_else(|e| panic!("{e:?}"));
    let after: Option<Vec<u8>> = conn
        .query_row(
            "SELECT sealed_handle FROM leases WHERE id = ?1",
            [&lease],
            |r| r.get(0),
        )
        .expect("the sealed handle query should run after revocation");
    assert_eq!(after, None);
}
