//! The MCP server behind the gateway over a unix socket, and over HTTPS with the operator's CA:
//! a certificate from another CA is refused, and nothing is sent to it.

use serde_json::{Value, json};

use crate::support::mcp::{GatewayProc, NakedMcp};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::{eventually, repo};

async fn query(auth: &AuthServer, gateway: &GatewayProc) -> (u16, Value) {
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("the http client should build")
        .post(format!("{}/postgres", gateway.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "query", "arguments": {"sql": "select 1"}}})
            .to_string(),
        )
        .send()
        .await
        .expect("the gateway should answer");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    // An SSE answer's one message, or a JSON body.
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .map_or_else(
            || serde_json::from_str(&text),
            |d| serde_json::from_str(d.trim()),
        )
        .unwrap_or_default();
    (status, v)
}

async fn gateway(auth: &AuthServer, upstream: &NakedMcp, extra: &str) -> GatewayProc {
    GatewayProc::start(
        &auth.issuer,
        &format!(
            "name = \"orders\"\nresource = \"{POSTGRES}\"\nupstream = \"{}\"\n{extra}\n\
             [gateway.tools]\nquery = [\"{PG_READ}\"]\n",
            upstream.url
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_on_a_unix_socket_is_reached_through_it() {
    let auth = AuthServer::start();
    let upstream = NakedMcp::start_unix().await;
    let gw = gateway(
        &auth,
        &upstream,
        &format!("upstream_socket = \"{}\"", upstream.socket.display()),
    )
    .await;
    let (status, answer) = query(&auth, &gw).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "3 rows for select 1"
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_must_chain_to_the_configured_ca() {
    let auth = AuthServer::start();
    let upstream = NakedMcp::start_tls().await;
    let ca = |n: u8| repo().join(format!("tests/fixtures/tls/ca{n}.pem"));
    let good = gateway(
        &auth,
        &upstream,
        &format!("upstream_ca_file = \"{}\"", ca(1).display()),
    )
    .await;
    let (status, answer) = query(&auth, &good).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "3 rows for select 1"
    );
    assert_eq!(upstream.requests().len(), 1);

    // Another CA: the handshake fails, the call is answered 502 and recorded as such, and the
    // server never sees a request (no token was sent to an impostor).
    let wrong = gateway(
        &auth,
        &upstream,
        &format!("upstream_ca_file = \"{}\"", ca(2).display()),
    )
    .await;
    let (status, answer) = query(&auth, &wrong).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["data"]["reason"], "upstream_unavailable");
    assert_eq!(upstream.requests().len(), 1);
    eventually(
        std::time::Duration::from_secs(10),
        "the failed call's result",
        || async {
            wrong
                .daemon
                .audit()
                .iter()
                .any(|r| r["event"] == "mcp_call_finished" && r["reason"] == "upstream_unavailable")
        },
    )
    .await;
}
