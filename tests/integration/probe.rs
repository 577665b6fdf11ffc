//! `credbroker probe` against a naked MCP server, the gateway in front of one, and a server that
//! takes any token: critical (exit 2), clean (exit 0), critical.

use std::process::Command;

use serde_json::Value;

use crate::support::daemon::testd;
use crate::support::free_port;
use crate::support::mcp::{AnyAudience, GatewayProc, NakedMcp};
use crate::support::oidc::{AuthServer, Options, PG_READ, S3};

/// (exit code, findings) of `probe URL [--token T] --output json`.
fn probe(url: &str, token: Option<&str>) -> (Option<i32>, Vec<Value>) {
    let mut c = Command::new(testd());
    c.args(["probe", url, "--output", "json"]);
    if let Some(t) = token {
        c.args(["--token", t]);
    }
    let out = c.output().expect("probe should run");
    let findings: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe's JSON: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), findings)
}

fn severity<'a>(findings: &'a [Value], check: &str) -> Vec<&'a str> {
    findings
        .iter()
        .filter(|f| f["check"] == check)
        .filter_map(|f| f["severity"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_finds_the_naked_server_and_the_confused_deputy_and_passes_the_gateway() {
    let port = free_port();
    let resource = format!("http://127.0.0.1:{port}/mcp");
    let auth = AuthServer::start_with(Options {
        resources: vec![resource.clone()],
        ..Options::default()
    });
    let naked = NakedMcp::start().await;
    // A real token, for another resource: what a confused deputy would accept.
    let foreign = auth.token("agent-1", S3, PG_READ).await;

    let (code, findings) = probe(&naked.url, Some(&foreign));
    assert_eq!(code, Some(2), "{findings:#?}");
    assert_eq!(
        severity(&findings, "no_token_tools_list"),
        ["critical"],
        "{findings:#?}"
    );
    assert_eq!(
        severity(&findings, "no_token_initialize"),
        ["critical"],
        "{findings:#?}"
    );

    let gateway = GatewayProc::start_on(
        port,
        &auth.issuer,
        &format!(
            "name = \"orders\"\nresource = \"{resource}\"\nupstream = \"{}\"\n[gateway.tools]\nquery = [\"{PG_READ}\"]\n",
            naked.url
        ),
    )
    .await;
    let (code, findings) = probe(&format!("{}/mcp", gateway.base), Some(&foreign));
    assert_eq!(code, Some(0), "{findings:#?}");
    for check in [
        "no_token_tools_list",
        "no_token_initialize",
        "challenge",
        "resource_metadata",
        "audience",
        "token_in_query",
    ] {
        assert_eq!(severity(&findings, check), ["ok"], "{check}: {findings:#?}");
    }
    assert!(
        findings
            .iter()
            .all(|f| f["severity"] != "critical" && f["severity"] != "high"),
        "{findings:#?}"
    );

    let deputy = AnyAudience::start(&auth.issuer).await;
    let (code, findings) = probe(&deputy.url, Some(&foreign));
    assert_eq!(code, Some(2), "{findings:#?}");
    assert_eq!(
        severity(&findings, "audience"),
        ["critical"],
        "{findings:#?}"
    );
    assert_eq!(
        severity(&findings, "no_token_tools_list"),
        ["ok"],
        "{findings:#?}"
    );
}
