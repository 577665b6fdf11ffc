//! `credbroker mcp`, driven over stdio by the official MCP Python SDK's client: the tools are
//! listed with input and output schemas, each answers exactly what the CLI prints for the same
//! question, bad input is a typed refusal that changes nothing, and `revoke` really revokes.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::daemon::{Daemon, base_config, testd};
use crate::support::free_port;
use crate::support::mcp::{GatewayProc, gateway_daemon, wait_for_port};
use crate::support::oidc::{AuthServer, ClientSpec, Options, PG_READ, POSTGRES, default_clients};
use crate::support::venv;

/// Runs the SDK client against `credbroker mcp` (with `extra` arguments) and the calls.
fn session(d: &Daemon, extra: &[&str], calls: Value) -> Value {
    let mut command = vec![
        testd().display().to_string(),
        "mcp".into(),
        "--journal".into(),
        d.journal.display().to_string(),
        "--admin-socket".into(),
        d.admin_socket.display().to_string(),
    ];
    command.extend(extra.iter().map(|s| s.to_string()));
    sdk_client(json!({ "command": command, "calls": calls, "env": {"RUST_LOG": "warn"} }))
}

/// The SDK client over Streamable HTTP, with a bearer token.
fn http_session(url: &str, token: &str, calls: Value) -> Value {
    sdk_client(json!({ "url": url, "token": token, "calls": calls }))
}

fn sdk_client(plan: Value) -> Value {
    let python = venv::ensure("mcp==2.3.0", |v| {
        let py = v.join("bin/python");
        Command::new(&py)
            .args(["-c", "import mcp.client.stdio"])
            .status()
            .is_ok_and(|s| s.success())
            .then_some(py)
    });
    let mut child = Command::new(python)
        .arg(crate::support::repo().join("tests/support/mcp/security_client.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the SDK client should start");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(plan.to_string().as_bytes())
        .expect("the plan should be written");
    let out = child
        .wait_with_output()
        .expect("the SDK client should finish");
    assert!(
        out.status.success(),
        "the SDK client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the SDK client prints JSON")
}

fn cli_json(d: &Daemon, args: &[&str], journal: bool) -> Value {
    let mut c = d.cli();
    c.args(args);
    if journal {
        c.arg("--journal").arg(&d.journal);
    }
    let out = c.output().expect("the CLI should run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the CLI prints JSON")
}

fn structured(result: &Value, key: &str) -> Value {
    assert_eq!(result["is_error"], false, "{result}");
    result["structured"][key].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_client_sees_the_cli_answers_and_revoke_revokes() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let alice = auth.token("agent-1", POSTGRES, PG_READ).await;
    let bob = auth
        .token("agent-noscope", POSTGRES, "mcp.tool:s3.read")
        .await;
    let mut alice_tasks = Vec::new();
    for _ in 0..2 {
        let t = d
            .begin(&alice, &["orders-db-read"])
            .await
            .expect("alice's task");
        alice_tasks.push(t.into_inner().task.expect("a task").id);
    }
    let refused = d.begin(&bob, &["orders-db-read"]).await;
    assert!(refused.is_err(), "bob's token lacks the scope");
    let issued_before = d.outstanding();
    assert_eq!(issued_before.len(), 2, "{issued_before:?}");

    let query = json!({"event": ["task_begun", "request_denied"], "since": "1h",
                       "group_by": ["client", "owner", "outcome"]});
    let out = session(
        &d,
        &[],
        json!([
            {"tool": "lineage", "args": {"owner": "alice@example.com"}},
            {"tool": "audit_query", "args": query},
            {"tool": "tasks_list", "args": {}},
            // Bad input: refused, nothing revoked.
            {"tool": "revoke", "args": {"owner": "alice@example.com", "reason": " "}},
            {"tool": "revoke", "args": {"reason": "no selector"}},
            {"tool": "revoke", "args": {"agent": "agent-1", "reason": "misspelt field"}},
            {"tool": "audit_query", "args": {"event": ["no_such_event"]}},
            {"tool": "lineage", "args": {"token": "not-a-fingerprint"}},
            {"tool": "lineage", "args": {"since": "yesterday-ish"}},
        ]),
    );

    // Every tool is listed with a described input schema, an output schema and annotations.
    let tools: Vec<&Value> = out["tools"].as_array().expect("tools").iter().collect();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for want in ["lineage", "audit_query", "tasks_list", "revoke"] {
        let t = tools
            .iter()
            .find(|t| t["name"] == want)
            .unwrap_or_else(|| panic!("{want} is listed: {names:?}"));
        assert!(
            t["description"].as_str().is_some_and(|d| d.len() > 80),
            "{t}"
        );
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert_eq!(t["outputSchema"]["type"], "object", "{t}");
    }
    let revoke = tools
        .iter()
        .find(|t| t["name"] == "revoke")
        .expect("revoke");
    assert_eq!(revoke["annotations"]["destructiveHint"], true);
    assert_eq!(revoke["inputSchema"]["required"], json!(["reason"]));
    let q = tools
        .iter()
        .find(|t| t["name"] == "audit_query")
        .expect("q");
    assert_eq!(q["annotations"]["readOnlyHint"], true);
    assert!(q["inputSchema"].to_string().contains("workload"), "{q}");

    let calls = out["calls"].as_array().expect("calls");
    // The same answers as the CLI's JSON for the same questions.
    assert_eq!(
        calls[0]["structured"],
        cli_json(
            &d,
            &[
                "lineage",
                "--owner",
                "alice@example.com",
                "--output",
                "json"
            ],
            true
        )
    );
    let grouped = structured(&calls[1], "groups");
    let cli = cli_json(
        &d,
        &[
            "audit",
            "query",
            "--event",
            "task_begun,request_denied",
            "--since",
            "1h",
            "--group-by",
            "client,owner,outcome",
            "--output",
            "json",
        ],
        true,
    );
    assert_eq!(grouped, cli);
    assert!(
        grouped
            .as_array()
            .is_some_and(|g| g.iter().any(|r| r["client"] == "agent-noscope"
                && r["outcome"] == "denied"
                && r["count"] == 1)),
        "{grouped}"
    );
    let listed = structured(&calls[2], "tasks");
    let ids: Vec<&str> = listed
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}");
    for id in &alice_tasks {
        assert!(ids.contains(&id.as_str()), "{id} in {ids:?}");
    }

    // Bad input: tool errors that say why (or the SDK's invalid-params for an unknown field).
    assert!(
        calls[3]["is_error"] == true
            && calls[3]["text"]
                .as_str()
                .is_some_and(|t| t.contains("reason")),
        "{}",
        calls[3]
    );
    assert!(
        calls[4]["is_error"] == true
            && calls[4]["text"]
                .as_str()
                .is_some_and(|t| t.contains("task_id")),
        "{}",
        calls[4]
    );
    let misspelt = &calls[5];
    assert!(
        misspelt["is_error"] == true || misspelt.get("raised").is_some(),
        "an unknown field is refused, not ignored: {misspelt}"
    );
    assert!(misspelt.to_string().contains("agent"), "{misspelt}");
    assert!(
        calls[6]["text"]
            .as_str()
            .is_some_and(|t| t.contains("no_such_event")),
        "{}",
        calls[6]
    );
    assert!(
        calls[7]["text"]
            .as_str()
            .is_some_and(|t| t.contains("fingerprint")),
        "{}",
        calls[7]
    );
    assert_eq!(calls[8]["is_error"], true, "{}", calls[8]);
    // …and none of them revoked anything.
    assert_eq!(d.outstanding(), issued_before);
    let again = session(
        &d,
        &[],
        json!([{"tool": "revoke", "args": {"owner": "alice@example.com", "reason": "looks wrong"}}]),
    );
    let mut revoked = structured(&again["calls"][0], "revoked")
        .as_array()
        .expect("revoked ids")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect::<Vec<_>>();
    revoked.sort();
    alice_tasks.sort();
    assert_eq!(revoked, alice_tasks);
    // Really revoked: the provider holds nothing, the leases are in its revoked set.
    assert!(d.outstanding().is_empty(), "{:?}", d.outstanding());
    for lease in &issued_before {
        assert!(
            d.revoked().contains(lease),
            "{lease} revoked at the provider"
        );
    }
    let audit = d.audit();
    let count = |e: &str| audit.iter().filter(|r| r["event"] == e).count();
    let by_operator = audit
        .iter()
        .filter(|r| r["event"] == "task_ended" && r["detail"]["operator_reason"] == "looks wrong")
        .count();
    assert_eq!(by_operator, 2, "the revocation and its reason are audited");
    assert_eq!(count("task_ended"), 2, "both of alice's tasks ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_leaves_out_revoke() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let out = session(
        &d,
        &["--read-only"],
        json!([{"tool": "revoke", "args": {"owner": "x", "reason": "r"}}]),
    );
    let names: Vec<&str> = out["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(!names.contains(&"revoke"), "{names:?}");
    let call = &out["calls"][0];
    assert!(
        call["is_error"] == true || call.get("raised").is_some(),
        "{call}"
    );
}

const RESOURCE: &str = "https://mcp.example.test/credbroker";

fn names(out: &Value) -> Vec<String> {
    let mut n: Vec<String> = out["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    n.sort();
    n
}

/// Behind the gateway, over Streamable HTTP: an analyst (`credbroker.audit`) reads but cannot
/// revoke, neither through the gateway nor by going around it to the port; a lead
/// (`credbroker.admin`) revokes, and the trail names who did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_behind_the_gateway_revoke_needs_the_admin_scope() {
    let mut clients = default_clients();
    for (id, scope) in [
        ("soc-analyst", "credbroker.audit"),
        ("soc-lead", "credbroker.audit credbroker.admin"),
    ] {
        clients.push(ClientSpec {
            id,
            scope,
            extra: json!({}),
            may_act_for: vec![],
        });
    }
    let auth = AuthServer::start_with(Options {
        clients,
        resources: vec![RESOURCE.into()],
        ..Options::default()
    });
    let daemon = gateway_daemon(&auth.issuer).await;
    let alice = auth.token("agent-1", POSTGRES, PG_READ).await;
    daemon
        .begin(&alice, &["orders-db-read"])
        .await
        .expect("alice's task");
    let port = free_port();
    let mut mcp = Command::new(testd())
        .args(["mcp", "--config"])
        .arg(&daemon.config)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--resource",
            RESOURCE,
        ])
        .env("RUST_LOG", "info")
        .spawn()
        .expect("credbroker mcp should start");
    wait_for_port(port, "credbroker mcp").await;
    let gateway = GatewayProc::start_reporting(
        daemon,
        free_port(),
        &auth.issuer,
        r#"clients = { "soc-analyst" = "sam@example.com", "soc-lead" = "lee@example.com" }"#,
        &format!(
            "name = \"credbroker\"\nresource = \"{RESOURCE}\"\nupstream = \"http://127.0.0.1:{port}/mcp\"\n\
             [gateway.tools]\nlineage = [\"credbroker.audit\"]\naudit_query = [\"credbroker.audit\"]\n\
             tasks_list = [\"credbroker.audit\"]\nrevoke = [\"credbroker.admin\"]\n"
        ),
    )
    .await;
    // The gateway serves the resource at its URL's path.
    let url = format!("{}/credbroker", gateway.base);
    let revoke =
        json!({"tool": "revoke", "args": {"owner": "alice@example.com", "reason": "incident 7"}});

    let analyst = auth
        .token("soc-analyst", RESOURCE, "credbroker.audit")
        .await;
    let seen = http_session(
        &url,
        &analyst,
        json!([{"tool": "tasks_list", "args": {}}, revoke]),
    );
    assert_eq!(
        names(&seen),
        ["audit_query", "lineage", "tasks_list"],
        "the gateway lists what the scope allows"
    );
    assert_eq!(
        seen["calls"][0]["structured"]["tasks"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{seen}"
    );
    assert!(
        seen["calls"][1].get("raised").is_some() || seen["calls"][1]["is_error"] == true,
        "{seen}"
    );
    // Around the gateway, straight to the port: the token is checked there too.
    let direct = format!("http://127.0.0.1:{port}/mcp");
    let around = http_session(&direct, &analyst, json!([revoke]));
    assert_eq!(around["calls"][0]["is_error"], true, "{around}");
    assert!(
        around["calls"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("insufficient_scope")),
        "{around}"
    );
    let wrong_audience = auth.token("agent-1", POSTGRES, PG_READ).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");
    for token in [None, Some(wrong_audience.as_str()), Some("garbage")] {
        let mut req = http
            .post(&direct)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("the request is answered");
        assert_eq!(r.status(), 401, "{token:?}");
    }
    assert_eq!(
        gateway.daemon.outstanding().len(),
        1,
        "nothing was revoked yet"
    );

    let lead = auth
        .token("soc-lead", RESOURCE, "credbroker.audit credbroker.admin")
        .await;
    let done = http_session(&url, &lead, json!([revoke]));
    assert_eq!(names(&done).len(), 4);
    assert_eq!(
        structured(&done["calls"][0], "revoked")
            .as_array()
            .map(Vec::len),
        Some(1),
        "{done}"
    );
    assert!(gateway.daemon.outstanding().is_empty());
    let ended: Vec<Value> = gateway
        .daemon
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "task_ended")
        .collect();
    assert_eq!(ended.len(), 1);
    let why = ended[0]["detail"]["operator_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("incident 7") && why.contains("soc-lead"),
        "{why}"
    );
    let _ = mcp.kill();
    let _ = mcp.wait();
}
