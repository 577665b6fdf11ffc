//! Abuse detection at the gateway: the daemon draws its conclusions from the gateway's call
//! reports, and a block it places refuses the caller at the network edge (403, with the code).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::{Daemon, base_config};
use crate::support::mcp::{GatewayProc, NakedMcp};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::webhook::{Webhook, signature_valid};
use crate::support::{eventually, free_port, write_secret};

const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

struct Edge {
    auth: AuthServer,
    hook: Webhook,
    gateway: GatewayProc,
    _upstream: NakedMcp,
}

async fn edge(detectors: &str) -> Edge {
    let auth = AuthServer::start();
    let hook = Webhook::start(0).await;
    let uid = nix::unistd::geteuid().as_raw();
    let daemon = Daemon::start(|d| {
        write_secret(d.join("hook.key"), KEY_HEX.as_bytes()).expect("the key is written");
        let abuse = format!(
            "[abuse]\nblock_for = \"10m\"\nwebhook_url = \"{}\"\nwebhook_secret_file = \"{}/hook.key\"\n{detectors}",
            hook.url,
            d.display()
        );
        base_config(d, &auth.issuer, &abuse).replacen(
            "[server]\n",
            &format!("[server]\ngateway_uids = [{uid}]\n"),
            1,
        )
    })
    .await;
    let upstream = NakedMcp::start_with_broker(&daemon.broker_socket).await;
    let gateway = GatewayProc::start_reporting(
        daemon,
        free_port(),
        &auth.issuer,
        r#"clients = { "agent-1" = "alice@example.com" }"#,
        &format!(
            "name = \"orders\"\nresource = \"{POSTGRES}\"\nupstream = \"{}\"\n\
             [gateway.tools]\nquery = [\"{PG_READ}\"]\nwrite = [\"{PG_READ}\", \"mcp.tool:postgres.write\"]\n",
            upstream.url
        ),
    )
    .await;
    Edge {
        auth,
        hook,
        gateway,
        _upstream: upstream,
    }
}

impl Edge {
    /// A tools/call from `from` (a loopback address: 127.0.0.1 and 127.0.1.1 are two /24s).
    async fn call(&self, from: Ipv4Addr, token: &str, tool: &str) -> (u16, Value) {
        let http = reqwest::Client::builder()
            .no_proxy()
            .local_address(IpAddr::V4(from))
            .build()
            .expect("the http client should build");
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": {"sql": "select 1"}}});
        let resp = http
            .post(format!("{}/postgres", self.gateway.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .body(body.to_string())
            .send()
            .await
            .expect("the gateway should answer");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
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

const HOME: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);

#[tokio::test(flavor = "multi_thread")]
async fn a_token_used_from_a_second_network_is_revoked_and_refused_at_the_gateway() {
    let e = edge("[abuse.token_reuse]\nresponse = [\"revoke-token\", \"alert\"]\n").await;
    let token = e.auth.token("agent-1", POSTGRES, PG_READ).await;
    assert_eq!(e.call(HOME, &token, "query").await.0, 200);
    assert_eq!(
        e.call(HOME, &token, "query").await.0,
        200,
        "the same network is no finding"
    );

    let (status, body) = e.call(ELSEWHERE, &token, "query").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["data"]["reason"], "token_blocked");
    // Refused from its first network too now, and recorded as refused.
    let (status, body) = e.call(HOME, &token, "query").await;
    assert_eq!(
        (status, &body["error"]["data"]["reason"]),
        (403, &json!("token_blocked"))
    );
    // Another token of the same client is not the stolen one.
    let fresh = e.auth.token("agent-1", POSTGRES, PG_READ).await;
    assert_eq!(e.call(HOME, &fresh, "query").await.0, 200);

    let first = e.records("client_first_seen");
    assert_eq!(
        first.len(),
        1,
        "one client, seen once, whatever its tokens and networks"
    );
    assert_eq!(first[0]["client_id"], "agent-1");
    assert_eq!(
        first[0]["detail"]["source"]
            .as_str()
            .map(|s| s.starts_with("127.0.0.1:")),
        Some(true)
    );
    let found = e.records("abuse_detected");
    assert_eq!(found.len(), 1, "{found:?}");
    let ev = &found[0]["detail"]["evidence"];
    assert_eq!(ev["origin"], "network");
    assert_eq!(ev["first_seen_from"], "127.0.0.0/24");
    assert_eq!(ev["now_seen_from"], "127.0.1.0/24");
    assert_eq!(found[0]["owner"], "alice@example.com");
    let refused: Vec<_> = e
        .records("mcp_call")
        .into_iter()
        .filter(|r| r["reason"] == "token_blocked")
        .collect();
    assert_eq!(
        refused.len(),
        2,
        "both refused calls are recorded with the block's code"
    );

    eventually(Duration::from_secs(10), "the alert delivered", || async {
        !e.hook.delivered().is_empty()
    })
    .await;
    let got = e.hook.received();
    assert!(signature_valid(&got[0], &hex(KEY_HEX)));
    let alert = &e.hook.delivered()[0];
    assert_eq!(alert["detector"], "token_reuse");
    assert_eq!(alert["owner"], "alice@example.com");
    assert_eq!(alert["client_id"], "agent-1");
    assert_eq!(alert["blocks"][0]["kind"], "jti");
}

#[tokio::test(flavor = "multi_thread")]
async fn probing_tools_beyond_the_tokens_scopes_blocks_the_client_at_the_gateway() {
    let e = edge(
        "[abuse.scope_probing]\nthreshold = 2\nwindow = \"1m\"\nper = \"client\"\n\
         response = [\"revoke-client\"]\n",
    )
    .await;
    let token = e.auth.token("agent-1", POSTGRES, PG_READ).await;
    assert_eq!(e.call(HOME, &token, "query").await.0, 200);
    for _ in 0..2 {
        let (status, body) = e.call(HOME, &token, "write").await;
        assert_eq!(
            (status, &body["error"]["data"]["reason"]),
            (403, &json!("insufficient_scope"))
        );
    }
    // The client is blocked: even what its token may do is refused now.
    let (status, body) = e.call(HOME, &token, "query").await;
    assert_eq!(
        (status, &body["error"]["data"]["reason"]),
        (403, &json!("client_blocked"))
    );
    let found = e.records("abuse_detected");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["detail"]["detector"], "scope_probing");
    assert_eq!(
        found[0]["detail"]["evidence"]["last_refusal"],
        "insufficient_scope"
    );
    let blocks = e.records("block_added");
    assert_eq!(blocks[0]["detail"]["kind"], "client");
    assert_eq!(blocks[0]["client_id"], "agent-1");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_calling_from_a_network_it_was_never_seen_from_is_a_finding() {
    let e = edge("[abuse.token_reuse]\nnew_network = true\nresponse = [\"revoke-token\"]\n").await;
    let home = e.auth.token("agent-1", POSTGRES, PG_READ).await;
    assert_eq!(e.call(HOME, &home, "query").await.0, 200);
    // Another token of the same client, from elsewhere: no jti was reused, but the client was
    // never seen from that network.
    let roaming = e.auth.token("agent-1", POSTGRES, PG_READ).await;
    let (status, body) = e.call(ELSEWHERE, &roaming, "query").await;
    assert_eq!(
        (status, &body["error"]["data"]["reason"]),
        (403, &json!("token_blocked"))
    );
    // The token that stayed home is not affected.
    assert_eq!(e.call(HOME, &home, "query").await.0, 200);
    let found = e.records("abuse_detected");
    assert_eq!(found.len(), 1, "{found:?}");
    let ev = &found[0]["detail"]["evidence"];
    assert_eq!(ev["client_networks"], json!(["127.0.0.0/24"]));
    assert_eq!(ev["now_seen_from"], "127.0.1.0/24");
}
