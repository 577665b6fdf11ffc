//! End to end, all real: the official MCP Python SDK client → `credbroker gateway` →
//! `examples/postgres-mcp` (official SDK server, `credbroker.mcp.broker_tool`) → the daemon →
//! OpenBao (database secrets engine) → PostgreSQL. The database user a call runs as exists
//! while the call runs and is gone, at OpenBao and in PostgreSQL, when it returns.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::{Daemon, base_config};
use crate::support::mcp::GatewayProc;
use crate::support::oidc::{AuthServer, PG_READ, PG_WRITE, POSTGRES};
use crate::support::openbao::OpenBao;
use crate::support::postgres::{DB, Postgres};
use crate::support::{eventually, free_port, repo, venv};

/// The daemon's grants: `orders-db-read` from OpenBao's database engine instead of the test
/// provider, and a write grant that needs the write scope.
fn config(dir: &Path, issuer: &str, bao: &OpenBao, token_file: &Path) -> String {
    let test_grant = "provider = \"pg\"\nscopes = [\"mcp.tool:postgres.read\"]\nmax_ttl = \"10m\"\n\
                      params = { label = \"orders-{owner}\", items = [\"orders\", \"customers\"] }";
    let base = base_config(dir, issuer, "");
    assert!(
        base.contains(test_grant),
        "base_config's read grant changed"
    );
    let uid = nix::unistd::geteuid().as_raw();
    base.replace(
        test_grant,
        "provider = \"vault\"\nscopes = [\"mcp.tool:postgres.read\"]\nmax_ttl = \"10m\"\n\
         params = { kind = \"dynamic\", path = \"database/creds/orders-read\", public = [\"username\"] }",
    )
    .replace("grants = [\"orders-db-read\"]", "grants = [\"orders-db-read\", \"orders-db-write\"]")
    .replacen("[server]\n", &format!("[server]\ngateway_uids = [{uid}]\n"), 1)
        + &format!(
            r#"
[[provider]]
name = "vault"
type = "vault"
address = "{addr}"
timeout = "3s"
token_file = "{token}"

[[grant]]
name = "orders-db-write"
provider = "vault"
scopes = ["{PG_WRITE}"]
max_ttl = "10m"
params = {{ kind = "dynamic", path = "database/creds/orders-write", public = ["username"] }}
"#,
            addr = bao.addr,
            token = token_file.display(),
        )
}

fn python() -> std::path::PathBuf {
    crate::clients_python::python();
    venv::ensure("psycopg[binary]==3.3.9", |v| {
        let py = v.join("bin/python");
        Command::new(&py)
            .args(["-c", "import psycopg, mcp.server, grpc_status"])
            .status()
            .is_ok_and(|s| s.success())
            .then_some(py)
    })
}

/// `examples/postgres-mcp`, configured by its environment variables as its README says.
struct PostgresMcp {
    url: String,
    child: Child,
}

impl PostgresMcp {
    async fn start(socket: &Path, pg: &Postgres) -> Self {
        let port = free_port();
        let child = Command::new(python())
            .arg(repo().join("examples/postgres-mcp/server.py"))
            .env("PYTHONPATH", repo().join("clients/python/src"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("CREDBROKER_SOCKET", socket)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", pg.port.to_string())
            .env("PGDATABASE", DB)
            .env("POSTGRES_MCP_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("postgres-mcp should start");
        eventually(
            Duration::from_secs(30),
            "postgres-mcp listening",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        Self {
            url: format!("http://127.0.0.1:{port}/mcp"),
            child,
        }
    }
}

impl Drop for PostgresMcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct E2e {
    auth: AuthServer,
    pg: Postgres,
    bao: OpenBao,
    gateway: GatewayProc,
    _mcp: PostgresMcp,
    _secrets: tempfile::TempDir,
}

async fn setup() -> E2e {
    let auth = AuthServer::start();
    let pg = Postgres::start();
    let bao = OpenBao::dev().await;
    bao.setup_database(&pg).await;
    let secrets = tempfile::tempdir().expect("a temp dir for the vault token should be created");
    let token_file = secrets.path().join("vault-token");
    crate::support::write_secret(&token_file, bao.broker_token().await)
        .expect("the vault token file should be written");
    let daemon = Daemon::start(|d| config(d, &auth.issuer, &bao, &token_file)).await;
    let mcp = PostgresMcp::start(&daemon.broker_socket, &pg).await;
    // The gateway asks only the read scope of delete_rows, so that the broker's own check (the
    // write grant needs the write scope) is what refuses it: the refusal under test is the one
    // credbroker.mcp turns into a tool error.
    let gateway = GatewayProc::start_reporting(
        daemon,
        free_port(),
        &auth.issuer,
        r#"clients = { "agent-1" = "alice@example.com" }"#,
        &format!(
            "name = \"orders\"\nresource = \"{POSTGRES}\"\nupstream = \"{}\"\n\
             record_arguments = [\"sql\"]\n[gateway.tools]\nquery = [\"{PG_READ}\"]\n\
             delete_rows = [\"{PG_READ}\"]\n",
            mcp.url
        ),
    )
    .await;
    E2e {
        auth,
        pg,
        bao,
        gateway,
        _mcp: mcp,
        _secrets: secrets,
    }
}

impl E2e {
    /// The official MCP client (examples/postgres-mcp/client.py) calling `tool` through the
    /// gateway, started in the background.
    fn call(&self, token: &str, tool: &str, args: Value) -> Child {
        Command::new(python())
            .arg(repo().join("examples/postgres-mcp/client.py"))
            .arg(format!("{}/postgres", self.gateway.base))
            .arg(tool)
            .arg(args.to_string())
            .env("MCP_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the MCP client should start")
    }

    fn result(child: Child) -> Value {
        let out = child
            .wait_with_output()
            .expect("the MCP client should finish");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the MCP client failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// Sessions PostgreSQL has open for OpenBao's dynamic users.
    fn dynamic_sessions(&self) -> Vec<String> {
        self.pg
            .superuser(
                "postgres",
                "SELECT usename FROM pg_stat_activity WHERE usename LIKE 'v-%'",
            )
            .lines()
            .map(str::to_owned)
            .collect()
    }

    async fn nothing_outstanding(&self) {
        eventually(Duration::from_secs(10), "no lease at OpenBao", || async {
            self.bao.leases().await.is_empty()
        })
        .await;
        assert!(
            self.pg.dynamic_roles().is_empty(),
            "{:?}",
            self.pg.dynamic_roles()
        );
        assert!(self.gateway.daemon.outstanding().is_empty());
    }

    fn lineage(&self, token: &str) -> Value {
        let digest = hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            token.as_bytes(),
        ));
        let out = self
            .gateway
            .daemon
            .cli()
            .args([
                "lineage",
                "--output",
                "json",
                "--token",
                &digest,
                "--journal",
            ])
            .arg(&self.gateway.daemon.journal)
            .output()
            .expect("lineage should run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("lineage --output json prints JSON")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_runs_as_a_postgres_user_that_lives_only_for_the_call() {
    let s = setup().await;
    let alice = s.auth.token("agent-1", POSTGRES, PG_READ).await;

    // The user exists, and has logged in, while the call runs.
    let slow = s.call(
        &alice,
        "query",
        json!({"sql": "SELECT current_user AS who, count(*) AS n, pg_sleep(3)::text AS slept FROM orders"}),
    );
    eventually(
        Duration::from_secs(20),
        "the call's user logged in",
        || async { !s.dynamic_sessions().is_empty() },
    )
    .await;
    let during = s.pg.dynamic_roles();
    assert_eq!(during.len(), 1, "{during:?}");
    assert_eq!(s.dynamic_sessions(), during, "the session is that user's");
    assert_eq!(s.bao.leases().await.len(), 1);
    let got = E2e::result(slow);
    assert_eq!(got["is_error"], false, "{got}");
    let rows = &got["structured"];
    assert_eq!(rows["user"], during[0].as_str(), "{got}");
    assert_eq!(rows["columns"], json!(["who", "n", "slept"]));
    assert_eq!(rows["rows"][0][0], during[0].as_str());
    assert_eq!(rows["rows"][0][1], 3);

    // After it returned: no lease at OpenBao, no such user, no login.
    s.nothing_outstanding().await;
    let login = s.pg.query_as(&during[0], "any-password", "SELECT 1");
    assert!(login.is_err(), "{login:?}");
    assert!(s.dynamic_sessions().is_empty());

    // A plain query returns the rows.
    let got = E2e::result(s.call(
        &alice,
        "query",
        json!({"sql": "SELECT id, item FROM orders ORDER BY id"}),
    ));
    assert_eq!(
        got["structured"]["rows"],
        json!([[1, "apple"], [2, "banana"], [3, "cherry"]]),
        "{got}"
    );
    s.nothing_outstanding().await;

    // The lineage of alice's token: owner → client → token → call → task → lease.
    let tree = s.lineage(&alice);
    let owner = &tree["owners"][0];
    assert_eq!(owner["owner"], "alice@example.com", "{tree:#}");
    let client = &owner["clients"][0];
    assert_eq!(client["client_id"], "agent-1", "{tree:#}");
    let tasks = client["tokens"][0]["tasks"]
        .as_array()
        .expect("the token's tasks");
    assert_eq!(tasks.len(), 2, "{tree:#}");
    for task in tasks {
        assert_eq!(task["call"]["name"], "query", "{tree:#}");
        assert_eq!(task["call"]["method"], "tools/call");
        assert!(
            task["call"]["call_id"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        );
        assert_eq!(task["tool"], "query");
        // Beside the credential, the Vault child token it was issued under (role `scope`).
        let leases = task["leases"].as_array().expect("the task's leases");
        let lease = leases
            .iter()
            .find(|l| l["role"] == "credential")
            .unwrap_or_else(|| panic!("no credential lease in {tree:#}"));
        assert_eq!(lease["grant"], "orders-db-read", "{tree:#}");
        assert_eq!(lease["provider"], "vault");
        assert!(
            lease["reference"]
                .as_str()
                .is_some_and(|r| r.starts_with("database/creds/orders-read/")),
            "{tree:#}"
        );
        assert!(leases.iter().all(|l| l["state"] == "revoked"), "{tree:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_that_raises_ends_its_task_and_a_missing_scope_is_the_mcp_error() {
    let s = setup().await;
    let alice = s.auth.token("agent-1", POSTGRES, PG_READ).await;

    // The statement fails after the tool logged in: the task still ends.
    let got = E2e::result(s.call(
        &alice,
        "query",
        json!({"sql": "SELECT * FROM no_such_table"}),
    ));
    assert_eq!(got["is_error"], true, "{got}");
    assert!(
        got["text"]
            .as_str()
            .is_some_and(|t| t.contains("sql_error")),
        "{got}"
    );
    s.nothing_outstanding().await;
    let audit = s.gateway.daemon.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["event"] == "task_ended" && r["reason"] == "ended_by_workload"),
        "{audit:#?}"
    );

    // A write refused at the broker: the MCP client sees the reason and the scope it lacks.
    let got = E2e::result(s.call(&alice, "delete_rows", json!({"ids": [1]})));
    assert_eq!(got["is_error"], true, "{got}");
    let text = got["text"].as_str().unwrap_or_default();
    assert!(text.contains("insufficient_scope"), "{got}");
    assert!(text.contains(PG_WRITE), "{got}");
    assert!(!text.contains(&alice));
    s.nothing_outstanding().await;
    assert_eq!(
        s.pg.superuser(DB, "SELECT count(*) FROM orders"),
        "3",
        "nothing was deleted"
    );
}
