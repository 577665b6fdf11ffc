//! Issuer metadata and keys: discovery both ways, issuer mismatch, key rotation, JWKS outage,
//! static JWKS for air-gapped hosts.

use std::time::Duration;

use credbroker::proto::v1;
use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::forge::{self, Signer};
use crate::support::oidc::{AuthServer, Options, PG_READ, POSTGRES};
use crate::support::{eventually, now, reason};

async fn begin(d: &Daemon, token: &str) -> Result<String, String> {
    match d.begin(token, &["orders-db-read"]).await {
        Ok(r) => Ok(r.into_inner().task.unwrap_or_default().id),
        Err(e) => Err(reason(&e)),
    }
}

async fn issuer_status(d: &Daemon) -> v1::IssuerStatus {
    let s = d
        .admin()
        .await
        .status(v1::StatusRequest {})
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    s.issuers.into_iter().next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_is_found_by_rfc8414_or_oidc_discovery() {
    for mode in ["oauth", "oidc"] {
        let auth = AuthServer::start_with(Options {
            metadata: mode,
            ..Default::default()
        });
        let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
        let token = auth.token("agent-1", POSTGRES, PG_READ).await;
        assert!(begin(&d, &token).await.is_ok(), "{mode}");
        assert_eq!(issuer_status(&d).await.keys, 3, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_naming_another_issuer_is_refused() {
    let auth = AuthServer::start();
    // Same server, named differently: its metadata says 127.0.0.1, we configure localhost.
    let configured = auth.issuer.replace("127.0.0.1", "localhost");
    let d = Daemon::start(|dir| base_config(dir, &configured, "")).await;
    let signer = Signer::fixture("keys", "es256-1");
    let token = signer.token(&forge::claims(&configured, POSTGRES, PG_READ, now()));
    let err = d.begin(&token, &["orders-db-read"]).await.err();
    let err = err.unwrap_or_else(|| panic!("must be refused"));
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (tonic::Code::Unavailable, "issuer_keys_unavailable")
    );
    let status = issuer_status(&d).await;
    assert_eq!(status.keys, 0);
    assert!(
        status.last_error.contains("not the configured one"),
        "{}",
        status.last_error
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_is_fetched_on_first_sight_and_old_keys_survive_an_outage() {
    let mut auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let old = auth.token("agent-1", POSTGRES, PG_READ).await;
    assert!(begin(&d, &old).await.is_ok());

    // The issuer rotates: restart it on the same port signing with a new key.
    let port = auth.port;
    drop(auth);
    auth = AuthServer::start_with(Options {
        key_sets: vec!["keys-rotated", "keys"],
        port: Some(port),
        ..Default::default()
    });
    let new = auth.token("agent-1", POSTGRES, PG_READ).await;
    let header: Value = {
        use base64::Engine;
        let h = new.split('.').next().unwrap_or_default();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap_or_default(),
        )
        .unwrap_or_default()
    };
    assert_eq!(header["kid"], "es256-2");
    // Unknown kid → one refresh → accepted.
    assert!(begin(&d, &new).await.is_ok());
    assert_eq!(issuer_status(&d).await.keys, 6);

    // The JWKS endpoint goes down: a refresh fails, the last good keys stay in use. (Wait out
    // the 1 s floor between unknown-kid refreshes first.)
    auth.jwks_ok(false).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let unknown = Signer::fixture("keys-rotated", "rs256-2");
    let mut claims = forge::claims(&auth.issuer, POSTGRES, PG_READ, now());
    claims["client_id"] = "agent-1".into();
    let mut h = unknown.header();
    h["kid"] = "never-published".into();
    assert_eq!(
        begin(&d, &unknown.sign(&h, &claims)).await,
        Err("unknown_kid".into())
    );
    eventually(
        Duration::from_secs(5),
        "the failed refresh is reported",
        || async { issuer_status(&d).await.last_error.contains("503") },
    )
    .await;
    assert_eq!(issuer_status(&d).await.keys, 6);
    let during = auth.token("agent-1", POSTGRES, PG_READ).await;
    assert!(
        begin(&d, &during).await.is_ok(),
        "last good keys must still verify"
    );
    auth.jwks_ok(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_jwks_file_needs_no_network() {
    let dir = tempfile::tempdir().expect("a temp dir for the static jwks should be created");
    let mut jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(forge::fixtures().join("keys/keys.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    for k in jwks["keys"].as_array_mut().into_iter().flatten() {
        if let Some(m) = k.as_object_mut() {
            for p in ["d", "p", "q", "dp", "dq", "qi"] {
                m.remove(p);
            }
        }
    }
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap_or_default();
    // Nothing listens at this issuer URL.
    let issuer = format!("http://127.0.0.1:{}", crate::support::free_port());
    let d = Daemon::start(|dir| {
        base_config(dir, &issuer, "").replace(
            "min_refresh_interval = \"1s\"",
            &format!("jwks_file = \"{}\"", jwks_path.display()),
        )
    })
    .await;
    let token =
        Signer::fixture("keys", "eddsa-1").token(&forge::claims(&issuer, POSTGRES, PG_READ, now()));
    assert!(begin(&d, &token).await.is_ok());

    // token check, ad hoc, against the same file.
    let mut child = d
        .cli()
        .args([
            "token",
            "check",
            "--issuer",
            &issuer,
            "--audience",
            POSTGRES,
            "--require-scope",
            PG_READ,
            "--jwks",
        ])
        .arg(&jwks_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("token check with --jwks should spawn");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(token.as_bytes());
    }
    let out = child
        .wait_with_output()
        .expect("token check with --jwks output should be collected");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["verdict"], "accepted");
    assert_eq!(v["claims"]["client_id"], "agent-1");
    assert_eq!(
        v["fingerprint"],
        credbroker::token::Fingerprint::of(&token).hex()
    );
}
