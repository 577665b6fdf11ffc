//! Running the daemon: reload, sockets and files, shutdown, the CLI's output formats, and the
//! annotated example configurations.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use credbroker::config::Config;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::{eventually, reason, repo};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn sockets_and_journal_have_tight_permissions_and_a_second_daemon_refuses_to_start() {
    let auth = AuthServer::start();
    let mut d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    assert_eq!(mode(&d.broker_socket), 0o660);
    assert_eq!(mode(&d.admin_socket), 0o600);
    assert_eq!(mode(&d.journal), 0o600);

    let second = std::process::Command::new(crate::support::daemon::testd())
        .args(["serve", "--config"])
        .arg(&d.config)
        .output()
        .expect("the second daemon should run and exit");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already runs on the journal"), "{stderr}");

    // SIGTERM: a clean exit; a stale socket left behind is replaced on the next start.
    d.signal(Signal::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(15)).map(|s| s.code()),
        Some(Some(0))
    );
    d.spawn().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_a_good_configuration_and_keeps_the_old_one_on_a_bad_one() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth
        .token(
            "agent-1",
            POSTGRES,
            "mcp.tool:postgres.read mcp.tool:s3.read",
        )
        .await;
    let denied = d.begin(&token, &["s3-read"]).await.err();
    assert_eq!(
        denied.map(|e| reason(&e)).as_deref(),
        Some("grant_not_allowed")
    );

    let original = std::fs::read_to_string(&d.config).unwrap_or_default();
    let widened = original.replace(
        "grants = [\"orders-db-read\"]",
        "grants = [\"orders-db-read\", \"s3-read\"]",
    );
    d.rewrite_config(&widened);
    d.signal(Signal::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "the new grant is allowed",
        || async { d.begin(&token, &["s3-read"]).await.is_ok() },
    )
    .await;

    // A broken file: the daemon says why and keeps serving the last good configuration.
    d.rewrite_config(&widened.replace("max_ttl = \"10m\"", "max_ttl = \"ten minutes\""));
    d.signal(Signal::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "the failed reload is logged",
        || async { d.log_text().contains("reload failed") },
    )
    .await;
    assert!(d.log_text().contains("grant.orders-db-read.max_ttl"));
    assert!(d.begin(&token, &["s3-read"]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_credentials_as_json_and_shell_exports_and_lists_tasks() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let out = d
        .cli()
        .args([
            "task",
            "begin",
            "--tool",
            "query",
            "--grant",
            "orders-db-read",
            "--ttl",
            "2m",
            "--format",
            "env",
        ])
        .env("CREDBROKER_TOKEN", &token)
        .output()
        .expect("the cli task begin should run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(env.contains("export USERNAME='u-"));
    assert!(env.contains("export PASSWORD='tp_"));
    let task = env
        .lines()
        .find_map(|l| l.strip_prefix("export CREDBROKER_TASK_ID='"))
        .map(|s| s.trim_end_matches('\'').to_string())
        .unwrap_or_default();

    let list = d
        .cli()
        .args(["tasks", "list", "--output", "json"])
        .output()
        .expect("the cli tasks list should run");
    let v: Value = serde_json::from_slice(&list.stdout).unwrap_or_default();
    assert_eq!(v[0]["id"], task.as_str());
    assert_eq!(v[0]["principal"]["owner"], "alice@example.com");
    let table = d
        .cli()
        .args(["tasks", "show", &task])
        .output()
        .expect("the cli tasks show should run");
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("alice@example.com (from client_registry)"),
        "{table}"
    );
    assert!(!table.contains("tp_"), "tasks show must not print secrets");

    let end = d
        .cli()
        .args(["task", "end", "--task", &task])
        .output()
        .expect("the cli task end should run");
    let v: Value = serde_json::from_slice(&end.stdout).unwrap_or_default();
    assert_eq!(v["state"], "ended");
    let status = d
        .cli()
        .args(["status", "--output", "json"])
        .output()
        .expect("the cli status should run");
    let s: Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    assert_eq!(
        (s["active_tasks"].as_u64(), s["issuers"][0]["keys"].as_u64()),
        (Some(0), Some(3))
    );

    // Refusals exit 1 with the reason code, and never print the token.
    let out = d
        .cli()
        .args(["task", "begin", "--tool", "query", "--grant", "s3-read"])
        .env("CREDBROKER_TOKEN", &token)
        .output()
        .expect("the refused cli task begin should run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("grant_not_allowed") && !stderr.contains(&token),
        "{stderr}"
    );
}

/// The environment of a host where systemd passes credentials: a credentials directory with
/// every credential the examples name (the GitHub App's key is a throwaway test key, the others
/// placeholders; only their presence is checked at load).
struct ExampleEnv(tempfile::TempDir);

impl ExampleEnv {
    fn new(configs: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("a temp credentials directory should be created");
        let key = repo().join("providers/github/testdata/app-key.pem");
        for text in configs {
            for line in text.lines() {
                let Some((k, v)) = line.split_once('=') else {
                    continue;
                };
                if k.trim().ends_with("_credential") {
                    let name = v.trim().trim_matches('"');
                    let bytes = std::fs::read(&key).expect("the test key should be readable");
                    crate::support::write_secret(dir.path().join(name), bytes)
                        .expect("the test key should copy in as an example credential");
                }
            }
        }
        Self(dir)
    }
}

impl credbroker_provider_api::Env for ExampleEnv {
    fn var(&self, key: &str) -> Option<String> {
        (key == "CREDENTIALS_DIRECTORY").then(|| self.0.path().display().to_string())
    }
}

#[test]
fn every_example_configuration_is_valid() {
    let mut n = 0;
    let paths: Vec<_> = std::fs::read_dir(repo().join("config"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    let texts: Vec<String> = paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    let env = ExampleEnv::new(&texts);
    for path in paths {
        // The gateway's file has its own shape.
        if path.file_name().is_some_and(|n| n == "gateway.toml") {
            credbroker::config::gateway::GatewayFile::load(&path)
                .expect("the example gateway file should load");
            n += 1;
            continue;
        }
        {
            let config = Config::load(&path).expect("each example configuration should load");
            // Providers and their grants too, as `serve` builds them.
            let registry = credbroker::providers::Registry::builtin();
            if let Err(e) = credbroker::broker::Runtime::build(config, &registry, &env, None) {
                panic!("{}: {e:?}", path.display());
            }
            n += 1;
        }
    }
    assert!(n > 0, "no example configuration found");
}

/// Suspected: the example's `s3:ListBucket` on the reports bucket had no `s3:prefix` condition,
/// so each owner could list every other owner's keys. Every example session policy that lets a
/// session list a bucket must confine the listing to a prefix.
#[test]
fn example_session_policies_confine_bucket_listings_to_a_prefix() {
    let config = Config::load(&repo().join("config/credbroker.toml"))
        .expect("the annotated example configuration should load");
    let mut checked = 0;
    for grant in config.grants.values() {
        let statements = grant
            .params
            .get("session_policy")
            .and_then(|p| p.get("Statement"));
        for s in statements.and_then(Value::as_array).into_iter().flatten() {
            let actions: Vec<&str> = match &s["Action"] {
                Value::String(a) => vec![a.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if s["Effect"] == "Allow"
                && actions
                    .iter()
                    .any(|a| *a == "s3:ListBucket" || *a == "s3:*")
            {
                let prefixes = s["Condition"]["StringLike"]["s3:prefix"].as_array();
                assert!(
                    prefixes.is_some_and(|p| !p.is_empty()
                        && p.iter()
                            .all(|v| v.as_str().is_some_and(|v| v.starts_with("{owner}/")))),
                    "grant {}: {s} lists a bucket without confining it to the owner's prefix",
                    grant.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "the example has a listing statement to check");
}

#[tokio::test(flavor = "multi_thread")]
async fn both_sockets_serve_health_and_reflection_for_grpcurl() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    for (socket, service) in [
        (&d.broker_socket, "credbroker.v1.Broker"),
        (&d.admin_socket, "credbroker.v1.Admin"),
    ] {
        let channel = credbroker::client::channel(socket)
            .await
            .expect("a channel to each daemon socket should connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let h = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service}: {e:?}"));
        assert_eq!(
            h.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        let mut refl = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = refl
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_inner();
        let resp = stream
            .message()
            .await
            .ok()
            .flatten()
            .and_then(|r| r.message_response);
        let Some(MessageResponse::ListServicesResponse(list)) = resp else {
            panic!("no service list")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&service.to_string()), "{names:?}");
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
    }
}

/// `check-config` on the annotated example explains, offline, what each AWS role's trust
/// policy must allow and what deny-session needs.
#[test]
fn check_config_explains_what_the_example_roles_need() {
    let creds = tempfile::tempdir()
        .expect("a temp credentials directory for check-config should be created");
    let key = std::process::Command::new(crate::support::daemon::testd())
        .arg("keygen")
        .output()
        .expect("testd keygen should run");
    crate::support::write_secret(creds.path().join("journal-key"), &key.stdout)
        .expect("the journal key credential should be written");
    crate::support::write_secret(creds.path().join("audit-head-key"), &key.stdout)
        .expect("the audit head key credential should be written");
    crate::support::write_secret(creds.path().join("vault-token"), "s.example")
        .expect("the vault token credential should be written");
    std::fs::copy(
        repo().join("providers/github/testdata/app-key.pem"),
        creds.path().join("github-app-key"),
    )
    .expect("the github app key credential should be copied");
    std::fs::set_permissions(
        creds.path().join("github-app-key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("the copied app key should be made private");
    let auth_key = std::fs::read(crate::support::oidc::client_key_pem())
        .expect("the oauth client key should read");
    crate::support::write_secret(creds.path().join("auth-client-key"), auth_key)
        .expect("the oauth client key credential should be written");
    let out = std::process::Command::new(crate::support::daemon::testd())
        .args(["check-config", "--config"])
        .arg(repo().join("config/credbroker.toml"))
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .expect("check-config should run on the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().last().is_some_and(|l| l.starts_with("ok: ")),
        "the verdict is the last line: {stdout}"
    );
    assert!(
        stdout.contains("sts:SetSourceIdentity")
            && stdout.contains("iam:PutRolePolicy")
            && stdout.contains("hold the permissions contents: write, issues: write")
            && stdout.contains("must be allowed RFC 8693 token exchange"),
        "{stdout}"
    );
}
