//! `credbroker gateway` in front of a naked MCP server (official Python SDK): the MCP
//! authorization spec's resource-server behaviour, per-tool scopes, filtered tool lists,
//! streaming, and bad input, with the upstream's own request log showing what reached it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::forge::{Signer, claims};
use crate::support::mcp::{GatewayProc, NakedMcp};
use crate::support::now;
use crate::support::oidc::{AuthServer, PG_READ, PG_WRITE, POSTGRES, S3};

struct Setup {
    auth: AuthServer,
    upstream: NakedMcp,
    gateway: GatewayProc,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    setup_with(NakedMcp::start().await).await
}

async fn setup_with(upstream: NakedMcp) -> Setup {
    let auth = AuthServer::start();
    let gateway = GatewayProc::start(
        &auth.issuer,
        &format!(
            r#"name = "orders"
resource = "{POSTGRES}"
resource_name = "Orders database"
upstream = "{}"
[gateway.tools]
query = ["{PG_READ}"]
stream = ["{PG_READ}"]
write = ["{PG_READ}", "{PG_WRITE}"]
"#,
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
    fn mcp(&self) -> String {
        format!("{}/postgres", self.gateway.base)
    }

    fn post(&self, token: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(self.mcp())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }
}

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

/// (status, WWW-Authenticate, data.reason, body text) of a refusal.
async fn refusal(r: reqwest::RequestBuilder) -> (u16, String, String, String) {
    let resp = r.send().await.expect("the gateway should answer");
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    let reason = v["error"]["data"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, www, reason, text)
}

/// The reason codes of the gateway's `mcp_call` records, sorted; every one must be a refusal.
fn refused_reasons(audit: &[Value]) -> Vec<&str> {
    let mut reasons: Vec<&str> = audit
        .iter()
        .filter(|r| r["event"] == "mcp_call")
        .map(|r| {
            assert_eq!(r["outcome"], "denied", "{r:#}");
            r["reason"].as_str().unwrap_or_default()
        })
        .collect();
    reasons.sort_unstable();
    reasons
}

/// The JSON-RPC messages of an answer, whether JSON or an event stream.
fn messages(content_type: &str, text: &str) -> Vec<Value> {
    if content_type.starts_with("text/event-stream") {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    } else {
        serde_json::from_str(text).into_iter().collect()
    }
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, Vec<Value>) {
    let resp = r.send().await.expect("the gateway should answer");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    (status, messages(&ctype, &text))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_refuses_bad_tokens_with_their_challenges_and_forwards_nothing() {
    let s = setup().await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let wrong_audience = s.auth.token("agent-1", S3, PG_READ).await;
    let expired = {
        let mut c = claims(&s.auth.issuer, POSTGRES, PG_READ, now() - 3600);
        c["exp"] = json!(now() - 600);
        Signer::fixture("keys", "es256-1").token(&c)
    };
    let metadata = "resource_metadata=\"https://mcp.example.test/.well-known/oauth-protected-resource/postgres\"";

    // No token: 401, a challenge naming the metadata and no error (RFC 6750 §3.1).
    let (status, www, reason, _) = refusal(s.post(None, &list)).await;
    assert_eq!((status, reason.as_str()), (401, "no_token"), "{www}");
    assert!(
        www.starts_with("Bearer ") && www.contains(metadata),
        "{www}"
    );
    assert!(!www.contains("error="), "{www}");
    // No token for a tool: the challenge names the scopes it needs.
    let (_, www, _, _) = refusal(s.post(None, &call(2, "query", json!({"sql": "x"})))).await;
    assert!(www.contains(&format!("scope=\"{PG_READ}\"")), "{www}");

    for (what, token, code) in [
        ("garbage", "not-a-token".to_string(), "malformed"),
        ("wrong audience", wrong_audience, "audience_mismatch"),
        ("expired", expired, "expired"),
    ] {
        let (status, www, reason, body) = refusal(s.post(Some(&token), &list)).await;
        assert_eq!((status, reason.as_str()), (401, code), "{what}: {body}");
        assert!(
            www.contains("error=\"invalid_token\"") && www.contains(metadata),
            "{what}: {www}"
        );
        assert!(
            !body.contains(&token),
            "{what}: the answer echoes the token"
        );
    }

    // A token in the query string is refused even when it is good.
    let good = s.auth.token("agent-1", POSTGRES, PG_READ).await;
    let (status, _, reason, _) = refusal(
        s.http
            .post(format!("{}?access_token={good}", s.mcp()))
            .header("content-type", "application/json")
            .body(list.to_string()),
    )
    .await;
    assert_eq!((status, reason.as_str()), (400, "token_in_query"));

    assert!(
        s.upstream.requests().is_empty(),
        "refused requests reached the upstream: {:?}",
        s.upstream.requests()
    );
    // Each refusal is audited with its reason code, and no token is in the trail.
    let audit = s.gateway.daemon.audit();
    assert_eq!(
        refused_reasons(&audit),
        [
            "audience_mismatch",
            "expired",
            "malformed",
            "no_token",
            "no_token",
            "token_in_query"
        ]
    );
    let trail: String = audit.iter().map(Value::to_string).collect();
    assert!(!trail.contains(&good), "a token is in the audit trail");
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_are_listed_and_called_by_scope_and_a_missing_scope_is_a_step_up_challenge() {
    let s = setup().await;
    let read = s.auth.token("agent-1", POSTGRES, PG_READ).await;

    // The metadata document, at the RFC 9728 path and the bare one.
    for path in [
        "/.well-known/oauth-protected-resource/postgres",
        "/.well-known/oauth-protected-resource",
    ] {
        let doc: Value = s
            .http
            .get(format!("{}{path}", s.gateway.base))
            .send()
            .await
            .expect("metadata should answer")
            .json()
            .await
            .unwrap_or_default();
        assert_eq!(doc["resource"], POSTGRES, "{path}: {doc}");
        assert_eq!(
            doc["authorization_servers"],
            json!([s.auth.issuer]),
            "{doc}"
        );
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]), "{doc}");
        assert_eq!(doc["resource_name"], "Orders database", "{doc}");
    }

    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (status, msgs) = answer(s.post(Some(&read), &list)).await;
    let names: Vec<&str> = msgs
        .iter()
        .flat_map(|m| m["result"]["tools"].as_array().into_iter().flatten())
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!((status, names), (200, vec!["query", "stream"]), "{msgs:?}");

    let (status, msgs) = answer(
        s.post(Some(&read), &call(2, "query", json!({"sql": "select 1"})))
            .header("mcp-method", "tools/call")
            .header("mcp-name", "query"),
    )
    .await;
    assert_eq!(status, 200, "{msgs:?}");
    assert_eq!(
        msgs.last()
            .map(|m| m["result"]["content"][0]["text"].clone()),
        Some(json!("3 rows for select 1"))
    );

    // The write tool needs the write scope: 403 and a challenge with what the token holds plus
    // what it lacks, so either SDK's step-up asks for the whole set.
    let before = s.upstream.requests().len();
    let (status, www, reason, _) =
        refusal(s.post(Some(&read), &call(3, "write", json!({"row": "r"})))).await;
    assert_eq!(
        (status, reason.as_str()),
        (403, "insufficient_scope"),
        "{www}"
    );
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    assert!(
        www.contains(&format!("scope=\"{PG_READ} {PG_WRITE}\"")),
        "{www}"
    );
    // A tool nobody named is denied.
    let (status, _, reason, _) =
        refusal(s.post(Some(&read), &call(4, "drop_table", json!({})))).await;
    assert_eq!((status, reason.as_str()), (403, "tool_not_allowed"));
    assert_eq!(
        s.upstream.requests().len(),
        before,
        "a refused call reached the upstream"
    );

    // Stepped up, the same call goes through.
    let both = s
        .auth
        .token("agent-1", POSTGRES, &format!("{PG_READ} {PG_WRITE}"))
        .await;
    let (status, msgs) = answer(s.post(Some(&both), &call(5, "write", json!({"row": "r"})))).await;
    assert_eq!(status, 200, "{msgs:?}");
    assert_eq!(
        msgs.last()
            .map(|m| m["result"]["content"][0]["text"].clone()),
        Some(json!("wrote r"))
    );

    // What the upstream got: the token (its audience is the upstream), a call id, a trace.
    let last = s.upstream.requests().pop().unwrap_or_default();
    let h = &last["headers"];
    assert_eq!(h["authorization"], format!("Bearer {both}"));
    assert_eq!(h["credbroker-call"].as_str().map(str::len), Some(36), "{h}");
    assert_eq!(h["traceparent"].as_str().map(str::len), Some(55), "{h}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_tool_s_events_arrive_as_they_are_produced() {
    let s = setup().await;
    let read = s.auth.token("agent-1", POSTGRES, PG_READ).await;
    let resp = s
        .post(Some(&read), &call(1, "stream", json!({"ticks": 4})))
        .send()
        .await
        .expect("the stream should start");
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let mut resp = resp;
    let mut buf = String::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("the stream should not break") {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n").or_else(|| buf.find("\r\n\r\n")) {
            let event: String = buf.drain(..end + 2).collect();
            if event.contains("notifications/message") {
                arrivals.push(started.elapsed());
            }
        }
    }
    let total = started.elapsed();
    assert_eq!(arrivals.len(), 4, "{buf}");
    // The server sleeps 300 ms between ticks: buffered, they would all arrive at the end.
    let spread = arrivals[3].saturating_sub(arrivals[0]);
    assert!(
        spread >= Duration::from_millis(700),
        "ticks arrived together: {arrivals:?}"
    );
    assert!(
        total.saturating_sub(arrivals[0]) >= Duration::from_millis(900),
        "{arrivals:?} of {total:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_clear_error_and_nothing_is_forwarded() {
    let s = setup().await;
    let read = s.auth.token("agent-1", POSTGRES, PG_READ).await;
    let raw = |body: String, ctype: &str| {
        s.http
            .post(s.mcp())
            .bearer_auth(&read)
            .header("content-type", ctype)
            .body(body)
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed JSON",
            raw("{\"jsonrpc\":".into(), "application/json"),
            400,
            "malformed_json",
        ),
        (
            "wrong content type",
            raw(call(1, "query", json!({})).to_string(), "text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            "oversized body",
            raw(format!("\"{}\"", "x".repeat(5 << 20)), "application/json"),
            413,
            "request_too_large",
        ),
        (
            "no method",
            raw(
                json!({"jsonrpc": "2.0", "id": 1}).to_string(),
                "application/json",
            ),
            400,
            "invalid_jsonrpc",
        ),
        (
            "a batch",
            raw(
                json!([call(1, "query", json!({}))]).to_string(),
                "application/json",
            ),
            400,
            "invalid_jsonrpc",
        ),
        (
            "Mcp-Name contradicting the body",
            s.post(Some(&read), &call(1, "query", json!({"sql": "x"})))
                .header("mcp-name", "write"),
            400,
            "header_mismatch",
        ),
    ];
    for (what, request, status, reason) in cases {
        let (got, _, got_reason, body) = refusal(request).await;
        assert_eq!(
            (got, got_reason.as_str()),
            (status, reason),
            "{what}: {body}"
        );
    }
    // A header over the limit is refused by the HTTP layer itself.
    let huge = s
        .post(Some(&read), &call(1, "query", json!({})))
        .header("x-padding", "y".repeat(32 * 1024))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(matches!(huge, Ok(431) | Err(_)), "{huge:?}");
    assert!(
        s.upstream.requests().is_empty(),
        "bad input reached the upstream: {:?}",
        s.upstream.requests()
    );
    // Nothing recorded as allowed: each refusal is an mcp_call `denied` with its reason (the
    // header over the limit never became a request).
    let audit = s.gateway.daemon.audit();
    assert_eq!(
        refused_reasons(&audit),
        [
            "header_mismatch",
            "invalid_jsonrpc",
            "invalid_jsonrpc",
            "malformed_json",
            "request_too_large",
            "unsupported_media_type"
        ],
        "{audit:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2025_11_25_session_belongs_to_whoever_opened_it() {
    let s = setup_with(NakedMcp::start_stateful().await).await;
    let alice = s.auth.token("agent-1", POSTGRES, PG_READ).await;
    let mallory = s.auth.token("agent-7", POSTGRES, PG_READ).await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "gateway-test", "version": "1"}}});
    let resp = s
        .post(Some(&alice), &init)
        .send()
        .await
        .expect("initialize should answer");
    assert_eq!(resp.status(), 200);
    let session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("the upstream should open a session")
        .to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = s
        .post(Some(&alice), &initialized)
        .header("mcp-session-id", &session)
        .send()
        .await;
    assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(202));
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, msgs) = answer(
        s.post(Some(&alice), &list)
            .header("mcp-session-id", &session),
    )
    .await;
    assert_eq!(status, 200, "{msgs:?}");
    // The session's calls are recorded with the client initialize named, and its revision.
    let listed: Vec<Value> = s
        .gateway
        .daemon
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "mcp_call" && r["detail"]["method"] == "tools/list")
        .collect();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(
        listed[0]["detail"]["client"],
        json!({"name": "gateway-test", "version": "1"})
    );
    assert_eq!(listed[0]["detail"]["protocol_version"], "2025-11-25");

    // Another principal with the same session id: refused as if it did not exist, and the
    // upstream never sees it.
    let before = s.upstream.requests().len();
    let (status, _, reason, _) = refusal(
        s.post(Some(&mallory), &list)
            .header("mcp-session-id", &session),
    )
    .await;
    assert_eq!((status, reason.as_str()), (404, "session_unknown"));
    let (status, _, reason, _) = refusal(
        s.post(Some(&alice), &list)
            .header("mcp-session-id", "made-up"),
    )
    .await;
    assert_eq!((status, reason.as_str()), (404, "session_unknown"));
    let r = s
        .http
        .delete(s.mcp())
        .bearer_auth(&mallory)
        .header("mcp-session-id", &session)
        .send()
        .await;
    assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(404));
    assert_eq!(
        s.upstream.requests().len(),
        before,
        "{:?}",
        s.upstream.requests()
    );

    // Its opener ends it; then it is gone for everyone.
    let r = s
        .http
        .delete(s.mcp())
        .bearer_auth(&alice)
        .header("mcp-session-id", &session)
        .send()
        .await;
    assert!(r.is_ok_and(|r| r.status().is_success()));
    let (status, _, _, _) = refusal(
        s.post(Some(&alice), &list)
            .header("mcp-session-id", &session),
    )
    .await;
    assert_eq!(status, 404);
}

fn tls_client(ca: &str) -> reqwest::Client {
    let pem = std::fs::read(crate::support::repo().join("tests/fixtures/tls").join(ca))
        .expect("the test CA should be readable");
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("a PEM CA")])
        .build()
        .expect("the TLS client should build")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_serves_tls_and_a_renewed_certificate_after_sighup() {
    let auth = AuthServer::start();
    let upstream = NakedMcp::start().await;
    let dir = tempfile::tempdir().expect("a temp dir for the certificate should be created");
    let fixture = |f: &str| {
        std::fs::read(crate::support::repo().join("tests/fixtures/tls").join(f))
            .expect("a TLS fixture should be readable")
    };
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let install = |n: u8| {
        std::fs::write(&cert, fixture(&format!("server{n}.pem")))
            .expect("the cert should be written");
        crate::support::write_secret(&key, fixture(&format!("server{n}.key")))
            .expect("the key should be written");
    };
    install(1);
    let gateway = GatewayProc::start(
        &auth.issuer,
        &format!(
            "name = \"orders\"\nresource = \"{POSTGRES}\"\nupstream = \"{}\"\n\
             tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            upstream.url,
            cert.display(),
            key.display()
        ),
    )
    .await;
    let https = gateway.base.replace("http://", "https://");
    let metadata = format!("{https}/.well-known/oauth-protected-resource");
    let fetch = |ca: &'static str| {
        let url = metadata.clone();
        async move {
            // A new client each time: a new connection, so the current certificate.
            tls_client(ca)
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(fetch("ca1.pem").await.ok(), Some(200));
    assert!(
        fetch("ca2.pem").await.is_err(),
        "a certificate from the other CA was accepted"
    );
    let plain = reqwest::Client::new()
        .get(format!(
            "{}/.well-known/oauth-protected-resource",
            gateway.base
        ))
        .send()
        .await;
    assert!(
        !plain.is_ok_and(|r| r.status().is_success()),
        "plain HTTP was served on the TLS port"
    );

    // Renewed on disk, then SIGHUP: new connections get the new certificate.
    install(2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gateway.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP should be sent");
    crate::support::eventually(
        Duration::from_secs(10),
        "the renewed certificate is served",
        || async { fetch("ca2.pem").await.ok() == Some(200) },
    )
    .await;
    assert!(
        fetch("ca1.pem").await.is_err(),
        "the old certificate is still served"
    );

    // A broken key on disk: the reload fails and the current certificate stays.
    std::fs::write(&key, "not a key").expect("the key should be overwritten");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gateway.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP should be sent");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fetch("ca2.pem").await.ok(), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_hold_per_client_and_per_owner_with_retry_after() {
    let auth = AuthServer::start();
    let upstream = NakedMcp::start().await;
    let gateway = GatewayProc::start_full(
        crate::support::free_port(),
        &auth.issuer,
        // Two agents of one owner.
        r#"clients = { "agent-1" = "alice@example.com", "agent-7" = "alice@example.com" }"#,
        &format!(
            "name = \"orders\"\nresource = \"{POSTGRES}\"\nupstream = \"{}\"\n\
             rate_limit_client = \"3/m\"\nrate_limit_owner = \"5/m\"\n[gateway.tools]\nquery = [\"{PG_READ}\"]\n",
            upstream.url
        ),
    )
    .await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client");
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    let send = |token: String| {
        let r = http
            .post(format!("{}/postgres", gateway.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(list.clone());
        async move {
            let resp = r.send().await.expect("the gateway should answer");
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (resp.status().as_u16(), retry)
        }
    };
    let one = auth.token("agent-1", POSTGRES, PG_READ).await;
    let seven = auth.token("agent-7", POSTGRES, PG_READ).await;
    for _ in 0..3 {
        assert_eq!(send(one.clone()).await.0, 200);
    }
    // agent-1's own budget is spent: 429, and Retry-After says when the next one passes.
    let (status, retry) = send(one.clone()).await;
    assert_eq!(status, 429);
    assert!(retry.is_some_and(|s| (1..=20).contains(&s)), "{retry:?}");
    // agent-7 has its own client budget, but shares alice's owner budget: 5 - 3 = 2 left.
    assert_eq!(send(seven.clone()).await.0, 200);
    assert_eq!(send(seven.clone()).await.0, 200);
    assert_eq!(
        send(seven.clone()).await.0,
        429,
        "the owner's limit holds across her agents"
    );
    assert_eq!(
        upstream.requests().len(),
        5,
        "a limited request reached the upstream"
    );
}

/// Runs an official SDK's client (`client` is its command, given URL and token) first with a
/// read token, then with read and write: the listing is filtered to the token's scopes, the read
/// tool answers, the write tool is refused (its error naming one of `refused_with`) until the
/// token holds the write scope.
async fn an_sdk_client_keeps_to_its_scopes(
    s: &Setup,
    client: impl Fn() -> std::process::Command,
    refused_with: &[&str],
) {
    let run = |token: String| {
        let out = client()
            .arg(s.mcp())
            .arg(token)
            .output()
            .expect("the SDK client should run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("the SDK client prints JSON")
    };
    let read = run(s.auth.token("agent-1", POSTGRES, PG_READ).await);
    assert_eq!(read["tools"], json!(["query", "stream"]), "{read}");
    assert_eq!(read["query"], "3 rows for select 1", "{read}");
    let refused = read["write"].as_str().unwrap_or_default();
    assert!(refused_with.iter().any(|m| refused.contains(m)), "{read}");
    let both = run(s
        .auth
        .token("agent-1", POSTGRES, &format!("{PG_READ} {PG_WRITE}"))
        .await);
    assert_eq!(both["tools"], json!(["query", "write", "stream"]), "{both}");
    assert_eq!(both["write"], "wrote r", "{both}");
}

/// The official Python SDK client (`mcp` 2.x, 2026-07-28: `server/discover`, no session) through
/// the gateway with a token it was given.
#[tokio::test(flavor = "multi_thread")]
async fn the_official_python_sdk_client_works_through_the_gateway_within_its_scopes() {
    let s = setup().await;
    let client = || {
        let mut c = std::process::Command::new(crate::support::venv::dir().join("bin/python"));
        c.arg(crate::support::repo().join("tests/support/mcp/sdk_client.py"));
        c
    };
    an_sdk_client_keeps_to_its_scopes(&s, client, &["403", "insufficient_scope", "needs scope"])
        .await;
    // Each stateless request names the client and its revision in `_meta`: recorded.
    let calls: Vec<Value> = s
        .gateway
        .daemon
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "mcp_call" && r["outcome"] == "success")
        .collect();
    assert!(!calls.is_empty());
    for c in &calls {
        assert_eq!(c["detail"]["protocol_version"], "2026-07-28", "{c:#}");
        assert!(c["detail"]["client"]["name"].is_string(), "{c:#}");
    }
}

/// The official TypeScript SDK client (1.32, 2025-11-25: `initialize` first) through the
/// gateway with a given token: the same answers as the Python one.
#[tokio::test(flavor = "multi_thread")]
async fn the_official_typescript_sdk_client_works_through_the_gateway_within_its_scopes() {
    let dir = crate::support::repo().join("tests/support/mcp-ts");
    crate::support::npm::ensure(&dir, "@modelcontextprotocol/sdk");
    let s = setup().await;
    let client = || {
        let mut c = std::process::Command::new("node");
        c.arg(dir.join("client.mjs"));
        c
    };
    an_sdk_client_keeps_to_its_scopes(&s, client, &["403", "insufficient_scope"]).await;
    // It spoke 2025-11-25, with initialize: the upstream saw one.
    assert!(
        s.upstream.requests().iter().any(|r| r["body"]
            .as_str()
            .is_some_and(|b| b.contains("\"initialize\""))),
        "no initialize reached the upstream"
    );
}
