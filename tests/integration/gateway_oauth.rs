//! The official MCP SDK clients (Python `mcp` 2.x, TypeScript 1.32) find their own way through
//! `credbroker gateway`, from nothing but its URL: the 401's RFC 9728 metadata, the
//! authorization server's RFC 8414 metadata, client registration (pre-registered, RFC 7591
//! dynamic registration, or a Client ID Metadata Document), the authorization-code flow with
//! PKCE and resource indicators (a headless login at the test authorization server), and a
//! step-up when `write` answers 403 insufficient_scope.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::support::mcp::{GatewayProc, NakedMcp};
use crate::support::oidc::{
    AuthServer, AuthorizationCode, Options, PG_READ, PG_WRITE, PublicClient,
};
use crate::support::{free_port, repo};

const USER: &str = "alice@example.com";
const PUBLIC_CLIENT: &str = "mcp-desktop";
const REDIRECT_URI: &str = "http://127.0.0.1/callback";

struct Stack {
    auth: AuthServer,
    upstream: NakedMcp,
    gateway: GatewayProc,
    /// The gateway's MCP endpoint, which is also its resource identifier.
    url: String,
}

/// The authorization server (every way of registering on), the naked upstream, and the gateway
/// on a loopback port whose URL is its resource. It advertises only the read scope
/// (scopes_supported), so a client asks for that first and must step up to write.
async fn stack() -> Stack {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/postgres");
    let auth = AuthServer::start_with(Options {
        resources: vec![url.clone()],
        authorization_code: Some(AuthorizationCode {
            user: USER,
            registration: true,
            client_id_metadata_documents: true,
            public_clients: vec![PublicClient {
                id: PUBLIC_CLIENT,
                redirect_uri: REDIRECT_URI.into(),
                scope: "mcp.tool:postgres.read mcp.tool:postgres.write",
            }],
        }),
        ..Options::default()
    });
    let upstream = NakedMcp::start().await;
    let gateway = GatewayProc::start_on(
        port,
        &auth.issuer,
        &format!(
            r#"name = "orders"
resource = "{url}"
upstream = "{}"
scopes_supported = ["{PG_READ}"]
[gateway.tools]
query = ["{PG_READ}"]
stream = ["{PG_READ}"]
write = ["{PG_READ}", "{PG_WRITE}"]
"#,
            upstream.url
        ),
    )
    .await;
    Stack {
        auth,
        upstream,
        gateway,
        url,
    }
}

fn python() -> Command {
    let mut c = Command::new(crate::support::venv::dir().join("bin/python"));
    c.arg(repo().join("tests/support/mcp/oauth_client.py"));
    c
}

fn typescript() -> Command {
    let dir = repo().join("tests/support/mcp-ts");
    crate::support::npm::ensure(&dir, "@modelcontextprotocol/sdk");
    let mut c = Command::new("node");
    c.arg(dir.join("oauth_client.mjs"));
    c
}

/// Runs a client with nothing but the gateway URL and how to get a client_id; its JSON report.
fn run(s: &Stack, mut c: Command, mode: &str) -> Value {
    c.arg(&s.url)
        .arg(mode)
        .args(["--redirect-uri", REDIRECT_URI]);
    match mode {
        "preregistered" => {
            c.args(["--client-id", PUBLIC_CLIENT]);
        }
        "cimd" => {
            let tls = repo().join("tests/fixtures/tls");
            c.arg("--tls-cert").arg(tls.join("server1.pem"));
            c.arg("--tls-key").arg(tls.join("server1.key"));
        }
        _ => {}
    }
    let out = c.output().expect("the SDK client should run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the SDK client prints JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn claims(jwt: &str) -> Value {
    jwt.split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn scopes(s: &Value) -> Vec<&str> {
    let mut v: Vec<&str> = s.as_str().unwrap_or_default().split(' ').collect();
    v.sort_unstable();
    v
}

/// What every mode must show: the tools filtered to the read token, a 403 insufficient_scope
/// naming the write scope before a second authorization with it, write answered after it, and
/// only tokens for the gateway's resource, from this authorization server, ever reaching the
/// upstream.
async fn assert_flow(s: &Stack, out: &Value, registration: &str) {
    assert_eq!(out["tools"], json!(["query", "stream"]), "{out}");
    assert_eq!(out["query"], "3 rows for select 1", "{out}");
    assert_eq!(out["write"], "wrote r", "{out}");
    assert_eq!(
        out["tools_after"],
        json!(["query", "write", "stream"]),
        "{out}"
    );

    // The gateway's answers, in order: a bare 401 pointing at its metadata first, then one 403
    // insufficient_scope for write that asks for the write scope.
    let answers = out["mcp_responses"].as_array().cloned().unwrap_or_default();
    let www = |a: &Value| {
        a["www_authenticate"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        answers.first().map(|a| a["status"].clone()),
        Some(json!(401)),
        "{out}"
    );
    let metadata = s.url.replacen(
        "/postgres",
        "/.well-known/oauth-protected-resource/postgres",
        1,
    );
    assert!(
        answers.first().is_some_and(|a| www(a).contains(&metadata)),
        "{out}"
    );
    let refused: Vec<usize> = (0..answers.len())
        .filter(|&i| answers[i]["status"] == 403)
        .collect();
    assert_eq!(refused.len(), 1, "{out}");
    let step_up = www(&answers[refused[0]]);
    assert!(
        step_up.contains("error=\"insufficient_scope\""),
        "{step_up}"
    );
    assert!(
        step_up.contains(&format!("scope=\"{PG_READ} {PG_WRITE}\"")),
        "{step_up}"
    );
    assert!(
        answers[refused[0] + 1..]
            .iter()
            .all(|a| a["status"].as_u64().is_some_and(|c| c < 300)),
        "{out}"
    );

    // Two authorizations, for the gateway's resource: read, then read and write.
    let asked: Vec<Vec<&str>> = out["authorizations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| scopes(&a["scope"]))
        .collect();
    assert_eq!(asked, [vec![PG_READ], vec![PG_READ, PG_WRITE]], "{out}");
    assert!(
        out["authorizations"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|a| a["resource"] == *s.url),
        "{out}"
    );

    // The authorization server's own record: how the client got its id, and two
    // authorization-code tokens for the user with the gateway as their audience.
    let client_id = out["registration"]["client_id"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(out["registration"]["mode"], registration, "{out}");
    let log = s.auth.log().await;
    let events =
        |kind: &str| -> Vec<&Value> { log.iter().filter(|e| e["event"] == kind).collect() };
    let registered: Vec<&Value> = events("registration")
        .into_iter()
        .map(|e| &e["client_id"])
        .collect();
    let fetched: Vec<&Value> = events("client_id_metadata_document")
        .into_iter()
        .map(|e| &e["client_id"])
        .collect();
    match registration {
        "dcr" => assert_eq!(registered, [client_id], "{log:?}"),
        "cimd" => {
            assert!(client_id.starts_with("https://127.0.0.1:"), "{client_id}");
            assert!(
                !fetched.is_empty() && fetched.iter().all(|c| *c == client_id),
                "{log:?}"
            );
        }
        _ => assert_eq!(client_id, PUBLIC_CLIENT),
    }
    if registration != "dcr" {
        assert!(registered.is_empty(), "{log:?}");
    }
    if registration != "cimd" {
        assert!(fetched.is_empty(), "{log:?}");
    }
    let tokens = events("token");
    assert_eq!(tokens.len(), 2, "{log:?}");
    for (t, want) in tokens.iter().zip([vec![PG_READ], vec![PG_READ, PG_WRITE]]) {
        assert_eq!(t["grant_type"], "authorization_code", "{t}");
        assert_eq!(
            (&t["client_id"], &t["sub"], &t["aud"]),
            (&json!(client_id), &json!(USER), &json!(s.url)),
            "{t}"
        );
        assert_eq!(scopes(&t["scope"]), want, "{t}");
    }

    // Only tokens for the gateway's resource reached the upstream, and write only with one
    // holding the write scope (the refused call never got there).
    let seen = s.upstream.requests();
    assert!(!seen.is_empty());
    for r in &seen {
        let bearer = r["headers"]["authorization"].as_str().unwrap_or_default();
        let c = claims(bearer.strip_prefix("Bearer ").unwrap_or_default());
        assert_eq!(
            (&c["aud"], &c["iss"], &c["sub"]),
            (&json!(s.url), &json!(s.auth.issuer), &json!(USER)),
            "{r}"
        );
    }
    let writes: Vec<Value> = seen
        .iter()
        .filter(|r| {
            serde_json::from_str::<Value>(r["body"].as_str().unwrap_or_default())
                .is_ok_and(|b| b["method"] == "tools/call" && b["params"]["name"] == "write")
        })
        .map(|r| {
            claims(
                r["headers"]["authorization"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("Bearer "),
            )
        })
        .collect();
    assert_eq!(writes.len(), 1, "{seen:?}");
    assert_eq!(scopes(&writes[0]["scope"]), [PG_READ, PG_WRITE], "{seen:?}");

    // The daemon's record of it: alice's calls (the resource owner: sub is not the client),
    // the refused write with its reason, then the allowed one.
    let calls: Vec<Value> = s
        .gateway
        .daemon
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "mcp_call" && r["subject"] == USER)
        .collect();
    assert!(
        calls
            .iter()
            .all(|r| r["owner"] == USER && r["owner_source"] == "resource_owner")
    );
    let writes: Vec<(&Value, &Value)> = calls
        .iter()
        .filter(|r| r["tool"] == "write")
        .map(|r| (&r["outcome"], &r["reason"]))
        .collect();
    assert_eq!(
        writes,
        [
            (&json!("denied"), &json!("insufficient_scope")),
            (&json!("success"), &Value::Null)
        ],
        "{calls:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_authorizes_itself_with_a_client_id_metadata_document_and_steps_up() {
    let s = stack().await;
    let out = run(&s, python(), "cimd");
    assert_flow(&s, &out, "cimd").await;
    assert!(
        out["document_fetches"].as_u64().is_some_and(|n| n > 0),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_registers_itself_dynamically_and_steps_up() {
    let s = stack().await;
    let out = run(&s, python(), "dcr");
    assert_flow(&s, &out, "dcr").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_sdk_registers_itself_dynamically_and_steps_up() {
    let s = stack().await;
    let out = run(&s, typescript(), "dcr");
    assert_flow(&s, &out, "dcr").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_sdk_authorizes_as_a_pre_registered_client_and_steps_up() {
    let s = stack().await;
    let out = run(&s, typescript(), "preregistered");
    assert_flow(&s, &out, "preregistered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_sdk_authorizes_itself_with_a_client_id_metadata_document_and_steps_up() {
    let s = stack().await;
    let out = run(&s, typescript(), "cimd");
    assert_flow(&s, &out, "cimd").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_authorizes_as_a_pre_registered_client_and_steps_up() {
    let s = stack().await;
    let out = run(&s, python(), "preregistered");
    assert_flow(&s, &out, "preregistered").await;
}
