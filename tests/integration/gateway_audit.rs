//! Every MCP call through `credbroker gateway` in the daemon's audit trail: counted by client,
//! owner and tool; a task an upstream begins for a call sits under the call in the lineage;
//! without the daemon nothing is forwarded; only the gateway's uid may report calls.

use std::time::Duration;

use credbroker::proto::v1;
use credbroker::proto::v1::calls_client::CallsClient;
use serde_json::{Value, json};

use crate::support::daemon::{Daemon, base_config};
use crate::support::mcp::{GatewayProc, NakedMcp, gateway_daemon};
use crate::support::oidc::{AuthServer, PG_READ, PG_WRITE, POSTGRES};
use crate::support::{eventually, free_port};

struct Setup {
    auth: AuthServer,
    upstream: NakedMcp,
    gateway: GatewayProc,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    let auth = AuthServer::start();
    let daemon = gateway_daemon(&auth.issuer).await;
    let upstream = NakedMcp::start_with_broker(&daemon.broker_socket).await;
    let gateway = GatewayProc::start_reporting(
        daemon,
        free_port(),
        &auth.issuer,
        r#"clients = { "agent-1" = "alice@example.com", "agent-7" = "dave@example.com" }"#,
        &format!(
            "name = \"orders\"\nresource = \"{POSTGRES}\"\nupstream = \"{}\"\n\
             record_arguments = [\"sql\"]\n[gateway.tools]\nquery = [\"{PG_READ}\"]\n\
             report = [\"{PG_READ}\"]\nwrite = [\"{PG_READ}\", \"{PG_WRITE}\"]\n",
            upstream.url
        ),
    )
    .await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("the http client should build");
    Setup {
        auth,
        upstream,
        gateway,
        http,
    }
}

impl Setup {
    /// Sends one message; the HTTP status.
    async fn send(&self, token: Option<&str>, body: String) -> u16 {
        let mut r = self
            .http
            .post(format!("{}/postgres", self.gateway.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.expect("the gateway should answer");
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        status
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        self.gateway
            .daemon
            .cli()
            .args(args)
            .arg("--journal")
            .arg(&self.gateway.daemon.journal)
            .output()
            .expect("the CLI should run")
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("the CLI prints JSON")
    }

    fn records(&self, event: &str) -> Vec<Value> {
        self.gateway
            .daemon
            .audit()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }
}

fn call(id: u64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
    .to_string()
}

/// `(client, owner, tool, count)` rows of a grouped query, sorted.
fn groups(v: &Value) -> Vec<(Value, Value, Value, u64)> {
    let mut rows: Vec<_> = v
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|g| {
            (
                g["client"].clone(),
                g["owner"].clone(),
                g["tool"].clone(),
                g["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    rows.sort_by_key(|r| format!("{r:?}"));
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mcp_call_is_recorded_and_counted_by_client_owner_and_tool() {
    let s = setup().await;
    let alice = s.auth.token("agent-1", POSTGRES, PG_READ).await;
    let dave = s.auth.token("agent-7", POSTGRES, PG_READ).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
        "params": {"_meta": {"io.modelcontextprotocol/clientInfo": {"name": "orders-agent", "version": "4.2"}}}})
    .to_string();
    // Allowed: alice lists and queries twice, dave queries once.
    assert_eq!(s.send(Some(&alice), list).await, 200);
    for _ in 0..2 {
        let q = call(2, "query", json!({"sql": "select 1"}));
        assert_eq!(s.send(Some(&alice), q).await, 200);
    }
    let q = call(3, "query", json!({"sql": "select 2"}));
    assert_eq!(s.send(Some(&dave), q).await, 200);
    // Refused: alice's write (scope), no token, a garbage token, bad bodies.
    assert_eq!(
        s.send(Some(&alice), call(4, "write", json!({"row": "r"})))
            .await,
        403
    );
    assert_eq!(s.send(None, call(5, "query", json!({}))).await, 401);
    assert_eq!(
        s.send(Some("garbage"), call(6, "query", json!({}))).await,
        401
    );
    assert_eq!(s.send(Some(&alice), "{not json".into()).await, 400);
    let no_method = json!({"jsonrpc": "2.0", "id": 7}).to_string();
    assert_eq!(s.send(Some(&alice), no_method).await, 400);

    let since = [
        "--event",
        "mcp_call",
        "--since",
        "24h",
        "--group-by",
        "client,owner,tool",
    ];
    let allowed = s.json(
        &[
            &["audit", "query"][..],
            &since,
            &["--outcome", "success", "--output", "json"],
        ]
        .concat(),
    );
    assert_eq!(
        groups(&allowed),
        groups(&json!([
            {"client": "agent-1", "owner": "alice@example.com", "tool": "query", "count": 2},
            {"client": "agent-1", "owner": "alice@example.com", "tool": null, "count": 1},
            {"client": "agent-7", "owner": "dave@example.com", "tool": "query", "count": 1},
        ])),
        "{allowed:#}"
    );
    let all = s.json(&[&["audit", "query"][..], &since, &["--output", "json"]].concat());
    assert_eq!(
        groups(&all),
        groups(&json!([
            {"client": "agent-1", "owner": "alice@example.com", "tool": "query", "count": 2},
            // The listing and the two bodies that could not be read.
            {"client": "agent-1", "owner": "alice@example.com", "tool": null, "count": 3},
            {"client": "agent-1", "owner": "alice@example.com", "tool": "write", "count": 1},
            {"client": "agent-7", "owner": "dave@example.com", "tool": "query", "count": 1},
            {"client": null, "owner": null, "tool": "query", "count": 2},
        ])),
        "{all:#}"
    );

    // Each refusal with its reason; none of them reached the upstream (4 allowed calls did).
    let calls = s.records("mcp_call");
    let mut refused: Vec<&str> = calls
        .iter()
        .filter(|r| r["outcome"] == "denied")
        .filter_map(|r| r["reason"].as_str())
        .collect();
    refused.sort_unstable();
    assert_eq!(
        refused,
        [
            "insufficient_scope",
            "invalid_jsonrpc",
            "malformed",
            "malformed_json",
            "no_token"
        ],
        "{calls:#?}"
    );
    assert_eq!(s.upstream.requests().len(), 4);
    // The network each client was first seen from, on its first allowed call only.
    let first: Vec<(&Value, &Value)> = calls
        .iter()
        .filter(|r| r["detail"].get("first_seen_network").is_some())
        .map(|r| (&r["client_id"], &r["detail"]["first_seen_network"]))
        .collect();
    assert_eq!(
        first,
        [
            (&json!("agent-1"), &json!("127.0.0.0/24")),
            (&json!("agent-7"), &json!("127.0.0.0/24"))
        ]
    );
    // What a record holds: the digest of the arguments, the one named in clear, the client's
    // own name, where it came from; never a token.
    let q = calls
        .iter()
        .find(|r| r["tool"] == "query" && r["client_id"] == "agent-7")
        .expect("dave's query is recorded");
    let digest = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        br#"{"sql":"select 2"}"#,
    ));
    assert_eq!(q["detail"]["arguments_sha256"], digest.as_str(), "{q:#}");
    assert_eq!(q["detail"]["arguments"], json!({"sql": "select 2"}));
    assert_eq!(q["detail"]["method"], "tools/call");
    assert_eq!(q["detail"]["gateway"], "orders");
    assert!(
        q["detail"]["source"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{q:#}"
    );
    assert_eq!(
        q["token_fingerprint"],
        credbroker::token::Fingerprint::of(&dave).hex()
    );
    let listed = calls
        .iter()
        .find(|r| r["detail"]["method"] == "tools/list")
        .expect("the listing is recorded");
    assert_eq!(
        listed["detail"]["client"],
        json!({"name": "orders-agent", "version": "4.2"})
    );
    let export = s
        .gateway
        .daemon
        .audit()
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    for token in [&alice, &dave] {
        assert!(
            !export.contains(token.as_str()),
            "a token is in the audit trail"
        );
    }
    // Each allowed call's result follows it: the upstream's status and the time it took.
    eventually(Duration::from_secs(10), "the calls' results", || async {
        s.records("mcp_call_finished").len() == 4
    })
    .await;
    let finished = s.records("mcp_call_finished");
    let allowed_ids: Vec<&Value> = calls
        .iter()
        .filter(|r| r["outcome"] == "success")
        .map(|r| &r["call_id"])
        .collect();
    for f in &finished {
        assert!(allowed_ids.contains(&&f["call_id"]), "{f:#}");
        assert_eq!(f["detail"]["http_status"], 200, "{f:#}");
        assert!(f["detail"]["duration_ms"].is_u64(), "{f:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_begun_for_a_call_sits_under_it_in_the_lineage() {
    let s = setup().await;
    let alice = s.auth.token("agent-1", POSTGRES, PG_READ).await;
    let q = call(1, "report", json!({}));
    assert_eq!(s.send(Some(&alice), q).await, 200);
    let calls = s.records("mcp_call");
    let call_id = calls
        .iter()
        .find(|r| r["tool"] == "report")
        .and_then(|r| r["call_id"].as_str())
        .expect("the call is recorded")
        .to_string();
    // The upstream got the call's id and began (and ended) a task with it.
    let sent = s.upstream.requests();
    assert_eq!(sent[0]["headers"]["credbroker-call"], call_id.as_str());
    let opened: Vec<Value> = s.records("task_opened");
    assert_eq!(opened.len(), 1, "{opened:#?}");
    assert_eq!(opened[0]["call_id"], call_id.as_str());

    let tree = s.json(&["lineage", "--output", "json"]);
    let token = &tree["owners"][0]["clients"][0]["tokens"][0];
    assert_eq!(tree["owners"][0]["owner"], "alice@example.com", "{tree:#}");
    let task = &token["tasks"][0];
    assert_eq!(task["call"]["call_id"], call_id.as_str(), "{tree:#}");
    assert_eq!(task["call"]["name"], "report");
    assert_eq!(task["call"]["method"], "tools/call");
    assert_eq!(task["tool"], "report");
    assert_eq!(task["leases"][0]["grant"], "orders-db-read", "{tree:#}");
    let text = String::from_utf8_lossy(&s.cli(&["lineage"]).stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| {
            l.trim_start()
                .starts_with(&format!("call {call_id} tools/call report"))
        })
        .unwrap_or_else(|| panic!("no call line in\n{text}"));
    assert!(lines[at + 1].trim_start().starts_with("task "), "{text}");
    assert!(lines[at + 2].trim_start().starts_with("lease "), "{text}");

    // `--call` gives the call's whole story: the gateway's records and the task's.
    let story = s.cli(&["audit", "export", "--call", &call_id]);
    let events: Vec<Value> = String::from_utf8_lossy(&story.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for e in [
        "mcp_call",
        "token_accepted",
        "task_opened",
        "lease_issued",
        "task_ended",
    ] {
        assert!(
            events.iter().any(|r| r["event"] == e),
            "no {e} in {events:#?}"
        );
    }
    assert!(events.iter().all(|r| r["call_id"] == call_id.as_str()));

    // Another token (same client, same owner) cannot file its task under alice's call, nor
    // can anyone name a call that was never made; neither begins anything.
    let other = s.auth.token("agent-1", POSTGRES, PG_READ).await;
    for (id, reason) in [
        (call_id.as_str(), "call_unknown"),
        ("0190a5b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b", "call_unknown"),
        ("not-a-uuid", "invalid_call_id"),
    ] {
        let mut begin = s.gateway.daemon.cli();
        begin.args([
            "task",
            "begin",
            "--tool",
            "report",
            "--grant",
            "orders-db-read",
            "--call-id",
            id,
        ]);
        let out = begin
            .env("CREDBROKER_TOKEN", &other)
            .output()
            .expect("task begin should run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{id}: {err}");
    }
    assert_eq!(s.records("task_opened").len(), 1);
    let denied: Vec<Value> = s.records("request_denied");
    assert_eq!(denied.len(), 2, "{denied:#?}");
    assert!(denied.iter().all(|r| r["reason"] == "call_unknown"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_daemon_nothing_is_forwarded() {
    let mut s = setup().await;
    let alice = s.auth.token("agent-1", POSTGRES, PG_READ).await;
    s.gateway.daemon.kill9();
    let q = call(1, "query", json!({"sql": "select 1"}));
    let resp = s
        .http
        .post(format!("{}/postgres", s.gateway.base))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(q.clone())
        .send()
        .await
        .expect("the gateway should answer");
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap_or_default();
    assert_eq!(
        body["error"]["data"]["reason"], "audit_unavailable",
        "{body}"
    );
    assert!(
        s.upstream.requests().is_empty(),
        "a call went through unrecorded"
    );
    // The daemon back: calls pass again, without restarting the gateway.
    s.gateway.daemon.spawn().await;
    assert_eq!(s.send(Some(&alice), q).await, 200);
    assert_eq!(s.upstream.requests().len(), 1);
}

fn report(call_id: &str) -> v1::RecordCallRequest {
    v1::RecordCallRequest {
        call_id: call_id.into(),
        gateway: "orders".into(),
        resource: POSTGRES.into(),
        method: "tools/call".into(),
        name: "query".into(),
        source: "192.0.2.7:4242".into(),
        caller: Some(v1::CallCaller {
            issuer: "https://as.example".into(),
            subject: "agent-1".into(),
            client_id: "agent-1".into(),
            owner: "alice@example.com".into(),
            owner_source: "client_registry".into(),
            token_fingerprint: "ab".repeat(32),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn calls(d: &Daemon) -> CallsClient<tonic::transport::Channel> {
    CallsClient::new(
        credbroker::client::channel(&d.broker_socket)
            .await
            .expect("the broker socket should answer"),
    )
}

/// The audit chain is the daemon's: a process the configuration does not name as a gateway
/// cannot write call records into it, and a gateway's malformed reports change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_gateway_uid_may_report_calls_and_bad_reports_change_nothing() {
    let auth = AuthServer::start();
    // Without gateway_uids: refused, nothing recorded.
    let plain = Daemon::start(|d| base_config(d, &auth.issuer, "")).await;
    let id = uuid::Uuid::now_v7().to_string();
    let err = calls(&plain)
        .await
        .record_call(report(&id))
        .await
        .expect_err("not a gateway");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(crate::support::reason(&err), "peer_not_gateway");
    assert!(!plain.audit().iter().any(|r| r["event"] == "mcp_call"));

    // With this uid listed: the same report is recorded, once.
    let d = gateway_daemon(&auth.issuer).await;
    let mut c = calls(&d).await;
    c.record_call(report(&id))
        .await
        .expect("a gateway's report");
    let again = c.record_call(report(&id)).await.expect_err("a second time");
    assert_eq!(crate::support::reason(&again), "call_recorded");
    let bad: Vec<(&str, v1::RecordCallRequest)> = vec![
        (
            "call id",
            v1::RecordCallRequest {
                call_id: "x".into(),
                ..report(&id)
            },
        ),
        (
            "source",
            v1::RecordCallRequest {
                source: "somewhere".into(),
                ..report(&id)
            },
        ),
        (
            "reason",
            v1::RecordCallRequest {
                refused: "made_up".into(),
                http_status: 403,
                ..report(&id)
            },
        ),
        (
            "status",
            v1::RecordCallRequest {
                refused: "no_token".into(),
                http_status: 200,
                ..report(&id)
            },
        ),
        (
            "caller",
            v1::RecordCallRequest {
                caller: None,
                ..report(&id)
            },
        ),
        (
            "name",
            v1::RecordCallRequest {
                name: "q\u{1b}[2J".into(),
                ..report(&id)
            },
        ),
        (
            "digest",
            v1::RecordCallRequest {
                arguments_sha256: "zz".into(),
                ..report(&id)
            },
        ),
        (
            "argument",
            v1::RecordCallRequest {
                arguments: [("sql".to_string(), "not json".to_string())].into(),
                ..report(&id)
            },
        ),
    ];
    let before = d.audit().len();
    for (what, r) in bad {
        let fresh = v1::RecordCallRequest {
            call_id: if what == "call id" {
                r.call_id.clone()
            } else {
                uuid::Uuid::now_v7().to_string()
            },
            ..r
        };
        let e = c.record_call(fresh).await.expect_err(what);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
        assert_eq!(crate::support::reason(&e), "invalid_call_report", "{what}");
    }
    // A batch with one bad result is refused whole.
    let good = v1::CallResult {
        call_id: id.clone(),
        gateway: "orders".into(),
        http_status: 200,
        ..Default::default()
    };
    let bad = v1::CallResult {
        http_status: 0,
        ..good.clone()
    };
    let e = c
        .finish_calls(v1::FinishCallsRequest {
            results: vec![good, bad],
        })
        .await
        .expect_err("no status, no error");
    assert_eq!(crate::support::reason(&e), "invalid_call_report");
    assert_eq!(d.audit().len(), before, "a bad report changed the trail");
}
