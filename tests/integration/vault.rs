//! The Vault provider against a real OpenBao and a real PostgreSQL: credentials that work, and
//! stop working for real when the task ends, when the token expires, across daemon crashes and
//! OpenBao outages.

use std::path::Path;
use std::time::Duration;

use credbroker::proto::v1;
use reqwest::Method;
use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::openbao::OpenBao;
use crate::support::postgres::Postgres;
use crate::support::{begin_request, eventually, live_tasks, reason};

const COUNT: &str = "SELECT count(*) FROM orders";

/// The daemon's configuration with a Vault instance and two grants on it.
fn vault_config(dir: &Path, issuer: &str, bao: &OpenBao, auth: &str) -> String {
    let extra = format!(
        r#"
[[provider]]
name = "vault"
type = "vault"
address = "{addr}"
timeout = "3s"
{auth}

[[grant]]
name = "orders-db"
provider = "vault"
scopes = ["mcp.tool:postgres.read"]
max_ttl = "10m"
params = {{ kind = "dynamic", path = "database/creds/orders-read", public = ["username"] }}

[[grant]]
name = "orders-token"
provider = "vault"
scopes = ["mcp.tool:postgres.read"]
max_ttl = "10m"
params = {{ kind = "token", policies = ["orders-read"], meta = {{ purpose = "mcp" }} }}

[[grant]]
name = "forbidden-db"
provider = "vault"
scopes = ["mcp.tool:postgres.read"]
max_ttl = "10m"
params = {{ kind = "dynamic", path = "database/creds/orders-write" }}
"#,
        addr = bao.addr
    );
    base_config(dir, issuer, &extra).replace(
        "grants = [\"orders-db-read\"]",
        "grants = [\"orders-db-read\", \"orders-db\", \"orders-token\", \"forbidden-db\"]",
    )
}

/// OpenBao with the database engine, PostgreSQL, and a broker token in a file.
async fn backends() -> (Postgres, OpenBao, tempfile::TempDir) {
    let pg = Postgres::start();
    let bao = OpenBao::dev().await;
    bao.setup_database(&pg).await;
    let secrets = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(secrets.path().join("vault-token"), bao.broker_token().await)
        .unwrap_or_else(|e| panic!("{e}"));
    (pg, bao, secrets)
}

fn token_file(secrets: &tempfile::TempDir) -> String {
    format!(
        "token_file = \"{}\"",
        secrets.path().join("vault-token").display()
    )
}

fn cred<'a>(creds: &'a [v1::Credential], grant: &str) -> &'a v1::Credential {
    creds
        .iter()
        .find(|c| c.grant == grant)
        .unwrap_or_else(|| panic!("no credential for {grant}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_credential_works_until_the_task_ends_then_is_gone_for_real() {
    let auth = AuthServer::start();
    let (pg, bao, secrets) = backends().await;
    let d = Daemon::start(|dir| vault_config(dir, &auth.issuer, &bao, &token_file(&secrets))).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;

    let begun = d
        .broker()
        .await
        .begin_task(begin_request(&token, &["orders-db", "orders-token"]))
        .await;
    let begun = begun
        .unwrap_or_else(|e| panic!("begin: {e:?}\n{}", d.log_text()))
        .into_inner();
    let task = begun.task.unwrap_or_default();
    let db = cred(&begun.credentials, "orders-db");
    let (user, password) = (db.public["username"].clone(), db.secret["password"].clone());
    assert!(user.starts_with("v-token-cr"), "created under the scope token (display name credbroker-task): {user}");
    assert_eq!(pg.query_as(&user, &password, COUNT).as_deref(), Ok("3"));
    let lease_id = db.public["lease_id"].clone();
    assert_eq!(bao.leases().await.len(), 1);
    // The lease lives no longer than the task, in OpenBao and in PostgreSQL itself.
    let task_left = task.expires_at.map(|t| t.seconds).unwrap_or_default() - crate::support::now();
    let lease_left = bao.lease_ttl(&lease_id).await.unwrap_or(u64::MAX) as i64;
    assert!(
        lease_left <= task_left + 1,
        "lease {lease_left}s outlives task {task_left}s"
    );

    // The workload token carries the human in its metadata, for OpenBao's own audit log.
    let vt = cred(&begun.credentials, "orders-token").secret["token"].clone();
    let (status, me) = bao
        .call(Method::GET, "auth/token/lookup-self", None, Some(&vt))
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["data"]["meta"]["owner"], "alice@example.com");
    assert_eq!(me["data"]["meta"]["purpose"], "mcp");
    assert_eq!(me["data"]["meta"]["credbroker_task"], task.id.as_str());
    assert!(
        bao.audit_log().contains("alice@example.com"),
        "OpenBao's audit log names the owner"
    );

    // A session open at the time the task ends is cut off too.
    let ended = d
        .broker()
        .await
        .end_task(v1::EndTaskRequest {
            task_id: task.id.clone(),
        })
        .await;
    let ended = ended
        .unwrap_or_else(|e| panic!("end: {e:?}"))
        .into_inner()
        .task
        .unwrap_or_default();
    assert_eq!(ended.state, "ended", "{:?}", ended.leases);
    assert!(
        ended.leases.iter().all(|l| l.state == "revoked"),
        "{:?}",
        ended.leases
    );
    let refused = pg
        .query_as(&user, &password, COUNT)
        .err()
        .unwrap_or_default();
    assert!(
        refused.contains("password authentication failed"),
        "{refused}"
    );
    assert!(pg.dynamic_roles().is_empty(), "{:?}", pg.dynamic_roles());
    assert!(bao.leases().await.is_empty());
    let (status, _) = bao
        .call(Method::GET, "auth/token/lookup-self", None, Some(&vt))
        .await;
    assert_eq!(status, 403, "the workload token is revoked");

    // Status shows credbroker's own token, kept alive.
    let s = d
        .admin()
        .await
        .status(v1::StatusRequest {})
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let p = s
        .providers
        .iter()
        .find(|p| p.name == "vault")
        .cloned()
        .unwrap_or_default();
    assert!(p.healthy && p.detail.contains("credbroker"), "{p:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vault_down_sealed_or_forbidden_is_refused_cleanly() {
    let auth = AuthServer::start();
    let (_pg, mut bao, secrets) = backends().await;
    let d = Daemon::start(|dir| vault_config(dir, &auth.issuer, &bao, &token_file(&secrets))).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;

    // A path credbroker's token may not read: the grant is named, and it is not the caller's fault.
    let err = d
        .broker()
        .await
        .begin_task(begin_request(&token, &["forbidden-db"]))
        .await
        .err();
    let err = err.unwrap_or_else(|| panic!("must be refused"));
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (tonic::Code::PermissionDenied, "provider_denied")
    );
    assert!(
        err.message().contains("forbidden-db") && err.message().contains("configuration"),
        "{}",
        err.message()
    );

    // `check-config --online` finds the same problem before any request does.
    let out = d
        .cli()
        .args(["check-config", "--online", "--config"])
        .arg(&d.config)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("grant forbidden-db") && stdout.contains("database/creds/orders-write"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("grant orders-db:"),
        "the readable grant passes: {stdout}"
    );

    // Sealed: UNAVAILABLE, saying so.
    bao.seal().await;
    let err = d
        .broker()
        .await
        .begin_task(begin_request(&token, &["orders-db"]))
        .await
        .err();
    let err = err.unwrap_or_else(|| panic!("must be refused"));
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (tonic::Code::Unavailable, "provider_unavailable")
    );
    assert!(err.message().contains("sealed"), "{}", err.message());

    // Down: UNAVAILABLE too.
    bao.stop();
    let err = d
        .broker()
        .await
        .begin_task(begin_request(&token, &["orders-db"]))
        .await
        .err();
    assert_eq!(
        err.map(|e| (e.code(), reason(&e))),
        Some((tonic::Code::Unavailable, "provider_unavailable".to_string()))
    );

    // No task was left half-made.
    assert!(live_tasks(&d).await.is_empty());
    let audit = d.audit();
    let failed: Vec<&Value> = audit
        .iter()
        .filter(|r| r["event"] == "task_ended" && r["reason"] == "issue_failed")
        .collect();
    assert_eq!(failed.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn approle_login_from_systemd_credentials() {
    let auth = AuthServer::start();
    let (pg, bao, _secrets) = backends().await;
    bao.api(
        Method::POST,
        "sys/auth/approle",
        Some(serde_json::json!({"type": "approle"})),
    )
    .await;
    bao.api(
        Method::POST,
        "auth/approle/role/credbroker",
        Some(
            serde_json::json!({"token_policies": ["credbroker", "orders-read"], "token_ttl": "1h"}),
        ),
    )
    .await;
    let (_, rid) = bao
        .api(Method::GET, "auth/approle/role/credbroker/role-id", None)
        .await;
    let (_, sid) = bao
        .api(
            Method::POST,
            "auth/approle/role/credbroker/secret-id",
            Some(serde_json::json!({})),
        )
        .await;
    let creds = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        creds.path().join("vault-secret-id"),
        sid["data"]["secret_id"].as_str().unwrap_or_default(),
    )
    .unwrap_or_default();
    let approle = format!(
        "approle = {{ role_id = \"{}\", secret_id_credential = \"vault-secret-id\" }}",
        rid["data"]["role_id"].as_str().unwrap_or_default()
    );
    let env = vec![(
        "CREDENTIALS_DIRECTORY".to_string(),
        creds.path().display().to_string(),
    )];
    let d = Daemon::start_opts(
        |dir| vault_config(dir, &auth.issuer, &bao, &approle),
        "info",
        env,
    )
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d
        .broker()
        .await
        .begin_task(begin_request(&token, &["orders-db"]))
        .await;
    let begun = begun
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log_text()))
        .into_inner();
    let db = cred(&begun.credentials, "orders-db");
    assert_eq!(
        pg.query_as(&db.public["username"], &db.secret["password"], COUNT)
            .as_deref(),
        Ok("3")
    );
}
