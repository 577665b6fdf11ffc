//! End to end, all real but GitHub: the official MCP TypeScript SDK client → `credbroker
//! gateway` → `examples/github-mcp` (official SDK server, `@credbroker/client`) → credbroker →
//! the GitHub stand-in. The issue is created with an installation token narrowed to that one
//! repository, revoked at GitHub when the call returns; a caller without the scope is refused
//! with `insufficient_scope` and nothing is minted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::daemon::{Daemon, base_config};
use crate::support::github::{APP_ID, FakeGithub};
use crate::support::mcp::{GatewayProc, wait_for_port};
use crate::support::oidc::{AuthServer, GITHUB};
use crate::support::{eventually, free_port, npm, repo};

const SCOPE: &str = "mcp.tool:github.create_issue";

fn example() -> PathBuf {
    repo().join("examples/github-mcp")
}

/// The daemon with the GitHub provider and one grant (owner acme, notes and docs), taking
/// the gateway's call reports.
async fn daemon(issuer: &str, gh: &FakeGithub, creds: &std::path::Path) -> Daemon {
    let uid = nix::unistd::geteuid().as_raw();
    let extra = format!(
        r#"
[[provider]]
name = "github"
type = "github"
app_id = {APP_ID}
private_key_credential = "github-app-key"
api_url = "{url}"
timeout = "3s"

[[grant]]
name = "github-issues"
provider = "github"
scopes = ["{SCOPE}"]
max_ttl = "10m"
params = {{ owner = "acme", repositories = ["notes", "docs"], permissions = {{ issues = "write" }} }}
"#,
        url = gh.url
    );
    let env = vec![(
        "CREDENTIALS_DIRECTORY".to_string(),
        creds.display().to_string(),
    )];
    Daemon::start_opts(
        |dir| {
            base_config(dir, issuer, &extra)
                .replacen(
                    "[server]\n",
                    &format!("[server]\ngateway_uids = [{uid}]\n"),
                    1,
                )
                .replace(
                    "audience = \"https://mcp.example.test/postgres\"\ngrants = [\"orders-db-read\"]",
                    &format!("audience = \"{GITHUB}\"\ngrants = [\"github-issues\"]"),
                )
        },
        "info",
        env,
    )
    .await
}

/// `examples/github-mcp/server.mjs`, its output in a file (searched for secrets).
struct GithubMcp {
    url: String,
    log: PathBuf,
    child: Child,
}

impl GithubMcp {
    async fn start(socket: &std::path::Path, api: &str, dir: &std::path::Path) -> Self {
        npm::ensure(&repo().join("clients/typescript"), "@grpc/grpc-js");
        npm::ensure(&example(), "@modelcontextprotocol/sdk");
        let port = free_port();
        let log = dir.join("github-mcp.log");
        let out = std::fs::File::create(&log).expect("the example's log should be created");
        let child = Command::new("node")
            .arg(example().join("server.mjs"))
            .env("CREDBROKER_SOCKET", socket)
            .env("GITHUB_MCP_LISTEN", format!("127.0.0.1:{port}"))
            .env("GITHUB_API_URL", api)
            .stdout(out.try_clone().expect("the log handle should be cloned"))
            .stderr(out)
            .spawn()
            .expect("github-mcp should start");
        wait_for_port(port, "github-mcp").await;
        Self {
            url: format!("http://127.0.0.1:{port}/mcp"),
            log,
            child,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GithubMcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example's SDK client: one create_issue call with `token` (on stdin). Its JSON line and
/// everything it printed.
fn create_issue(url: &str, token: &str, repo_name: &str) -> (Value, String) {
    use std::io::Write as _;
    let mut child = Command::new("node")
        .arg(example().join("client.mjs"))
        .args([url, repo_name, "Found by the e2e test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the SDK client should start");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(token.as_bytes());
    }
    let out = child
        .wait_with_output()
        .expect("the SDK client should finish");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let printed = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().last().unwrap_or_default();
    (serde_json::from_str(line).unwrap_or(Value::Null), printed)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issue_is_created_with_a_one_repository_token_revoked_after_the_call() {
    let auth = AuthServer::start();
    let gh = FakeGithub::start();
    let scratch = tempfile::tempdir().expect("a temp dir should be created");
    std::fs::copy(&gh.key, scratch.path().join("github-app-key"))
        .expect("the github app key should be copied into credentials");
    let d = daemon(&auth.issuer, &gh, scratch.path()).await;
    let mcp = GithubMcp::start(&d.broker_socket, &gh.url, scratch.path()).await;
    let gateway = GatewayProc::start_reporting(
        d,
        free_port(),
        &auth.issuer,
        r#"clients = { "agent-1" = "alice@example.com", "agent-noscope" = "bob@example.com" }"#,
        &format!(
            "name = \"github\"\nresource = \"{GITHUB}\"\nupstream = \"{}\"\n\
             [gateway.tools]\ncreate_issue = [\"{SCOPE}\"]\n",
            mcp.url
        ),
    )
    .await;
    let url = format!("{}/github", gateway.base);
    let d = &gateway.daemon;

    // The call: the issue is created in acme/notes.
    let token = auth.token("agent-1", GITHUB, SCOPE).await;
    let (out, printed) = create_issue(&url, &token, "notes");
    let result = &out["result"];
    assert_eq!(result["isError"], Value::Null, "{out}\n{}", mcp.output());
    assert_eq!(result["structuredContent"]["repository"], "acme/notes");
    assert_eq!(result["structuredContent"]["number"], 1);

    // What GitHub received: a token request for exactly that repository, the issue POST with
    // the minted token, then that token's revocation.
    let log: Vec<Value> = gh
        .log()
        .await
        .into_iter()
        .filter(|r| r["path"] != "/app")
        .collect();
    let minted: Vec<&Value> = log
        .iter()
        .filter(|r| r["path"] == "/app/installations/77/access_tokens")
        .collect();
    assert_eq!(minted.len(), 1, "{log:#?}");
    assert_eq!(
        minted[0]["body"],
        json!({"repositories": ["notes"], "permissions": {"issues": "write"}})
    );
    let tokens = gh.tokens().await;
    assert_eq!(tokens.len(), 1, "{tokens:#?}");
    assert_eq!(tokens[0]["repositories"], json!(["notes"]));
    let fingerprint = tokens[0]["fingerprint"].clone();
    let at = |pred: &dyn Fn(&Value) -> bool| log.iter().position(pred);
    let issue = at(&|r| r["method"] == "POST" && r["path"] == "/repos/acme/notes/issues")
        .unwrap_or_else(|| panic!("no issue POST in {log:#?}"));
    assert_eq!(
        log[issue]["token"], fingerprint,
        "the issue was created with the minted token"
    );
    assert_eq!(log[issue]["issue"], 1);
    assert_eq!(
        log[issue]["body"]["title"], "Found by the e2e test",
        "{log:#?}"
    );
    eventually(
        std::time::Duration::from_secs(10),
        "the token revoked at GitHub",
        || async {
            gh.tokens()
                .await
                .first()
                .is_some_and(|t| t["revoked"] == true)
        },
    )
    .await;
    let log = gh.log().await;
    let revoked = log
        .iter()
        .position(|r| r["method"] == "DELETE" && r["path"] == "/installation/token")
        .unwrap_or_else(|| panic!("no revocation in {log:#?}"));
    assert_eq!(log[revoked]["revoked"], fingerprint);
    let issue_at = log
        .iter()
        .position(|r| r["path"] == "/repos/acme/notes/issues")
        .unwrap_or_default();
    assert!(revoked > issue_at, "revoked after the issue was created");

    // The daemon's side: the task served the gateway's call, its lease revoked, ended by the
    // workload.
    let audit = d.audit();
    let call_id = audit
        .iter()
        .find(|r| r["event"] == "mcp_call" && r["tool"] == "create_issue")
        .and_then(|r| r["call_id"].as_str())
        .unwrap_or_else(|| panic!("no mcp_call in {audit:#?}"))
        .to_string();
    let opened = audit
        .iter()
        .find(|r| r["event"] == "task_opened")
        .unwrap_or_else(|| panic!("no task_opened in {audit:#?}"));
    assert_eq!(opened["call_id"], call_id.as_str(), "{opened:#}");
    let task = opened["task_id"].clone();
    for (event, reason) in [
        ("lease_revoked", None),
        ("task_ended", Some("ended_by_workload")),
    ] {
        let r = audit
            .iter()
            .find(|r| r["event"] == event && r["task_id"] == task)
            .unwrap_or_else(|| panic!("no {event} for {task} in {audit:#?}"));
        if let Some(reason) = reason {
            assert_eq!(r["reason"], reason, "{r:#}");
        }
    }
    assert!(!printed.contains(&token), "the client printed its token");

    // A caller without the scope: refused at the gateway naming insufficient_scope; nothing
    // reaches credbroker's provider.
    let noscope = auth
        .token("agent-noscope", GITHUB, "mcp.tool:s3.read")
        .await;
    let (out, printed) = create_issue(&url, &noscope, "notes");
    let refused = out["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("insufficient_scope"), "{out}");
    assert!(refused.contains(SCOPE), "{out}");
    assert!(!printed.contains(&noscope), "the client printed its token");

    // A repository the grant does not cover: the daemon refuses the narrowing, and the tool
    // error the client sees names the reason.
    let (out, _) = create_issue(&url, &token, "secrets");
    assert_eq!(out["result"]["isError"], true, "{out}");
    let text = out["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.starts_with("narrowing_exceeds_grant"), "{text}");
    // Neither minted anything.
    assert_eq!(gh.tokens().await.len(), 1);

    // Nothing secret in what github-mcp printed: no bearer token, no installation token.
    let server_out = mcp.output();
    assert!(
        server_out.contains("create_issue: acme/notes#1"),
        "{server_out}"
    );
    for t in [&token, &noscope] {
        assert!(
            !server_out.contains(t.as_str()),
            "github-mcp printed a token"
        );
    }
    assert!(
        !server_out.contains("ghs_"),
        "github-mcp printed an installation token"
    );
}
