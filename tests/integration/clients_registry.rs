//! The client registry: registered, expired, suspended, retired and unknown clients, each
//! refused with its own code; operators' changes journaled and enforced at once (live tasks
//! ended); the first sight of every client audited exactly once.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, ClientSpec, Options, PG_READ, POSTGRES, default_clients};
use crate::support::{eventually, reason};

fn client(id: &'static str) -> ClientSpec {
    ClientSpec {
        id,
        scope: PG_READ,
        extra: json!({}),
        may_act_for: vec![],
    }
}

const REGISTRY: &str = r#"
[[client]]
id = "agent-1"
owner = "alice@example.com"
expires = "2099-01-01T00:00:00Z"

[[client]]
id = "agent-expired"
expires = "2020-01-01T00:00:00Z"

[[client]]
id = "agent-suspended"
status = "suspended"

[[client]]
id = "agent-retired"
status = "retired"

[[client]]
id = "agent-7"
grants = ["s3-read"]
"#;

async fn setup() -> (AuthServer, Daemon) {
    let mut clients = default_clients();
    clients.extend(
        [
            "agent-expired",
            "agent-suspended",
            "agent-retired",
            "agent-new",
        ]
        .map(client),
    );
    let auth = AuthServer::start_with(Options {
        clients,
        ..Default::default()
    });
    let d = Daemon::start(|dir| {
        base_config(dir, &auth.issuer, REGISTRY).replacen(
            "[broker]\n",
            "[broker]\nrequire_registered_client = true\n",
            1,
        )
    })
    .await;
    (auth, d)
}

fn cli_json(d: &Daemon, args: &[&str]) -> Value {
    let out = d
        .cli()
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("the CLI should run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the CLI prints JSON")
}

fn first_seen(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = d
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "client_first_seen")
        .map(|r| r["client_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_unusable_client_is_refused_with_its_own_code_and_seen_once() {
    let (auth, d) = setup().await;
    for (client, code) in [
        ("agent-new", "client_unregistered"),
        ("agent-expired", "client_expired"),
        ("agent-suspended", "client_suspended"),
        ("agent-retired", "client_retired"),
        ("agent-7", "grant_not_allowed"),
    ] {
        let token = auth.token(client, POSTGRES, PG_READ).await;
        for _ in 0..2 {
            let e = d.begin(&token, &["orders-db-read"]).await.unwrap_err();
            assert_eq!(reason(&e), code, "{client}");
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
        }
    }
    assert!(
        d.outstanding().is_empty(),
        "nothing was issued to any of them"
    );
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    for _ in 0..3 {
        d.begin(&token, &["orders-db-read"])
            .await
            .unwrap_or_else(|e| panic!("a registered client is served: {e:?}"));
    }
    // Once per client, refused or not: new clients are what a reviewer looks at.
    assert_eq!(
        first_seen(&d),
        [
            "agent-1",
            "agent-7",
            "agent-expired",
            "agent-new",
            "agent-retired",
            "agent-suspended"
        ]
    );
    let audit = d.audit();
    let unregistered = audit
        .iter()
        .find(|r| r["event"] == "client_first_seen" && r["client_id"] == "agent-new")
        .expect("agent-new was seen");
    assert_eq!(unregistered["detail"]["refused"], "client_unregistered");
    let denied = audit
        .iter()
        .filter(|r| r["event"] == "request_denied" && r["reason"] == "client_expired")
        .count();
    assert_eq!(denied, 2, "every refusal is audited");
}

#[tokio::test(flavor = "multi_thread")]
async fn suspending_a_client_ends_its_tasks_and_survives_a_restart_until_it_is_activated() {
    let (auth, mut d) = setup().await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d
        .begin(&token, &["orders-db-read"])
        .await
        .expect("agent-1 is registered")
        .into_inner();
    let lease = begun.credentials[0].lease_id.clone();

    let r = cli_json(&d, &["clients", "suspend", "agent-1"]);
    assert_eq!(r["client"]["status"], "suspended");
    assert_eq!(
        r["client"]["owner"], "alice@example.com",
        "the entry is kept, not replaced"
    );
    assert_eq!(r["ending_tasks"].as_array().map(Vec::len), Some(1));
    eventually(
        Duration::from_secs(10),
        "the suspended client's lease revoked",
        || async { d.revoked().contains(&lease) },
    )
    .await;
    assert_eq!(
        reason(&d.begin(&token, &["orders-db-read"]).await.unwrap_err()),
        "client_suspended"
    );
    d.kill9();
    d.spawn().await;
    assert_eq!(
        reason(&d.begin(&token, &["orders-db-read"]).await.unwrap_err()),
        "client_suspended",
        "the operator's change is journaled"
    );
    let listed = cli_json(&d, &["clients", "list"]);
    let one = listed
        .as_array()
        .and_then(|l| l.iter().find(|c| c["client_id"] == "agent-1"))
        .expect("agent-1 is listed")
        .clone();
    assert_eq!(
        (one["status"].clone(), one["source"].clone()),
        (json!("suspended"), json!("operator"))
    );

    cli_json(&d, &["clients", "activate", "agent-1"]);
    d.begin(&token, &["orders-db-read"])
        .await
        .expect("an activated client is served again");
    cli_json(&d, &["clients", "retire", "agent-1"]);
    assert_eq!(
        reason(&d.begin(&token, &["orders-db-read"]).await.unwrap_err()),
        "client_retired"
    );
    // Registering a new client at run time serves it at once.
    let new = auth.token("agent-new", POSTGRES, PG_READ).await;
    assert_eq!(
        reason(&d.begin(&new, &["orders-db-read"]).await.unwrap_err()),
        "client_unregistered"
    );
    cli_json(
        &d,
        &[
            "clients",
            "add",
            "agent-new",
            "--owner",
            "erin@example.com",
            "--grant",
            "orders-db-read",
        ],
    );
    let e = d.begin(&new, &["orders-db-read"]).await.unwrap_err();
    assert_eq!(
        reason(&e),
        "owner_required",
        "past the registry, policy decides as before"
    );

    let updates: Vec<Value> = d
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "client_updated")
        .collect();
    let statuses: Vec<&str> = updates
        .iter()
        .map(|r| r["detail"]["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(statuses, ["suspended", "active", "retired", "active"]);
    assert!(
        updates[0]["detail"]["updated_by"]
            .as_str()
            .unwrap_or_default()
            .starts_with("operator:")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_registry_changes_are_refused_and_change_nothing() {
    let (_auth, d) = setup().await;
    let before = cli_json(&d, &["clients", "list"]);
    for (args, code) in [
        (
            vec!["clients", "add", "agent-x", "--grant", "no-such-grant"],
            "invalid_client",
        ),
        (
            vec!["clients", "add", "agent-x", "--expires", "next tuesday"],
            "invalid_client",
        ),
        (
            vec![
                "clients",
                "add",
                "agent-x",
                "--issuer",
                "https://elsewhere.example",
            ],
            "invalid_client",
        ),
        (vec!["clients", "add", "bad\u{7}id"], "invalid_client"),
    ] {
        let out = d.cli().args(&args).output().expect("the CLI should run");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(code), "{args:?}: {err}");
    }
    assert_eq!(cli_json(&d, &["clients", "list"]), before);
    assert!(
        !d.audit().iter().any(|r| r["event"] == "client_updated"),
        "nothing was recorded"
    );
}

#[test]
fn a_registry_entry_naming_an_unknown_grant_or_status_is_a_configuration_error() {
    let text = base_config(std::path::Path::new("/tmp"), "https://auth.example.com", "")
        + "\n[[client]]\nid = \"a\"\nstatus = \"paused\"\ngrants = [\"nope\"]\nexpires = \"soon\"\n";
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).expect("the config is written");
    let errors = match credbroker::config::Config::check_file(&path).finish("c.toml") {
        Ok(_) => panic!("the configuration should be refused"),
        Err(e) => format!("{e:?}"),
    };
    for needle in ["client.a.status", "client.a.grants", "client.a.expires"] {
        assert!(errors.contains(needle), "{needle}: {errors}");
    }
}
