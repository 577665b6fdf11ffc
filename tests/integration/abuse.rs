//! Abuse detection and blocks: each detector fired through the broker socket, each response
//! doing what it says (leases revoked at the provider, blocks refusing the next request and
//! surviving SIGKILL, alerts received with a valid signature naming the owner).

use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES, S3};
use crate::support::webhook::{Webhook, signature_valid};
use crate::support::{eventually, reason, write_secret};

const OWNER: &str = "alice@example.com";
/// The webhook's signing key, as 64 hex digits in its file.
const HOOK_KEY_HEX: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

fn hook_key() -> Vec<u8> {
    (0..32)
        .map(|i| u8::from_str_radix(&HOOK_KEY_HEX[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// `[abuse]` with the webhook, plus `detectors` (TOML tables under `[abuse.*]`).
fn abuse_config(dir: &std::path::Path, hook: &Webhook, detectors: &str) -> String {
    write_secret(dir.join("webhook.key"), HOOK_KEY_HEX.as_bytes())
        .expect("the webhook key is written");
    format!(
        "[abuse]\nblock_for = \"10m\"\nwebhook_url = \"{}\"\nwebhook_secret_file = \"{}/webhook.key\"\n{detectors}",
        hook.url,
        dir.display()
    )
}

fn events<'a>(audit: &'a [Value], event: &str) -> Vec<&'a Value> {
    audit.iter().filter(|r| r["event"] == event).collect()
}

async fn lease_of(d: &Daemon, token: &str) -> (String, String) {
    let begun = d
        .begin(token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("begin: {e:?}"))
        .into_inner();
    let task = begun.task.unwrap_or_default();
    (task.id, begun.credentials[0].lease_id.clone())
}

fn cli_json(d: &Daemon, args: &[&str]) -> Value {
    let out = d
        .cli()
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("the CLI should run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the CLI should print JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_block_ends_the_clients_tasks_refuses_it_across_sigkill_and_lifts() {
    let auth = AuthServer::start();
    let mut d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let (task, lease) = lease_of(&d, &token).await;

    let added = cli_json(
        &d,
        &[
            "blocks",
            "add",
            "--client",
            "agent-1",
            "--issuer",
            &auth.issuer,
            "--for",
            "1h",
            "--reason",
            "laptop reported stolen",
        ],
    );
    let block = added["block"]["id"].as_str().expect("a string").to_owned();
    assert_eq!(added["block"]["kind"], "client");
    assert_eq!(added["ending_tasks"], serde_json::json!([task]));
    eventually(
        Duration::from_secs(10),
        "the blocked client's lease revoked",
        || async { d.outstanding().is_empty() && d.revoked().contains(&lease) },
    )
    .await;
    let refused = d.begin(&token, &["orders-db-read"]).await.unwrap_err();
    assert_eq!(reason(&refused), "client_blocked");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // SIGKILL: the block is in the journal, so the restarted daemon still refuses.
    d.kill9();
    d.spawn().await;
    let refused = d.begin(&token, &["orders-db-read"]).await.unwrap_err();
    assert_eq!(reason(&refused), "client_blocked");
    let listed = cli_json(&d, &["blocks", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], block.as_str());
    assert!(
        listed[0]["source"]
            .as_str()
            .expect("as this test set it up")
            .starts_with("operator:")
    );

    let lifted = cli_json(&d, &["blocks", "lift", &block, "--reason", "laptop found"]);
    assert_eq!(lifted["id"], block.as_str());
    assert!(!lifted["lifted_at"].as_str().unwrap_or_default().is_empty());
    lease_of(&d, &token).await;
    assert!(
        cli_json(&d, &["blocks", "list"])
            .as_array()
            .expect("as this test set it up")
            .is_empty()
    );
    assert_eq!(
        cli_json(&d, &["blocks", "list", "--all"])
            .as_array()
            .expect("as this test set it up")
            .len(),
        1
    );

    let audit = d.audit();
    let added = events(&audit, "block_added");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["detail"]["block_reason"], "laptop reported stolen");
    assert_eq!(added[0]["client_id"], "agent-1");
    let lifted = events(&audit, "block_lifted");
    assert_eq!(lifted.len(), 1);
    assert!(
        lifted[0]["detail"]["lifted_by"]
            .as_str()
            .expect("as this test set it up")
            .contains("laptop found")
    );
    let ending = audit
        .iter()
        .find(|r| r["event"] == "task_ended" && r["task_id"] == task.as_str())
        .expect("the blocked task's ending is audited");
    assert_eq!(ending["reason"], "revoked_by_block");
    assert_eq!(ending["detail"]["block_id"], block.as_str());
    let denied: Vec<_> = events(&audit, "request_denied")
        .into_iter()
        .filter(|r| r["reason"] == "client_blocked")
        .collect();
    assert_eq!(denied.len(), 2, "both refusals are audited with the block");
    assert_eq!(denied[0]["detail"]["block_id"], block.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_block_requests_are_refused_with_their_reason_and_change_nothing() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let run = |args: &[&str]| d.cli().args(args).output().expect("the CLI should run");
    for (args, code) in [
        (
            vec!["blocks", "add", "--client", "agent-1", "--for", "1h"],
            "invalid_block",
        ),
        (
            vec![
                "blocks",
                "add",
                "--jti",
                "",
                "--issuer",
                &auth.issuer,
                "--for",
                "1h",
            ],
            "invalid_block",
        ),
        (
            vec!["blocks", "add", "--owner", OWNER, "--for", "90d"],
            "invalid_block",
        ),
        (
            vec!["blocks", "add", "--owner", "bad\u{7}owner", "--for", "1h"],
            "invalid_block",
        ),
        (
            vec!["blocks", "lift", "0190c0de-0000-7000-8000-000000000000"],
            "block_not_found",
        ),
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} should be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(code), "{args:?}: {err}");
    }
    // Two targets, or none: refused by the CLI before anything is sent.
    let out = run(&[
        "blocks", "add", "--client", "a", "--owner", "b", "--issuer", "x",
    ]);
    assert!(!out.status.success());
    let all = cli_json(&d, &["blocks", "list", "--all"]);
    assert_eq!(all, serde_json::json!([]), "nothing was placed");
    assert!(events(&d.audit(), "block_added").is_empty());

    // Lifting twice: the second is refused and records nothing.
    let added = cli_json(&d, &["blocks", "add", "--owner", OWNER, "--for", "1h"]);
    let id = added["block"]["id"].as_str().expect("a string").to_owned();
    cli_json(&d, &["blocks", "lift", &id]);
    let out = run(&["blocks", "lift", &id]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("block_not_in_force"));
    assert_eq!(events(&d.audit(), "block_lifted").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_another_audience_revokes_the_client_and_alerts_naming_the_owner() {
    let auth = AuthServer::start();
    let hook = Webhook::start(1).await;
    let d = Daemon::start(|dir| {
        let abuse = abuse_config(
            dir,
            &hook,
            "[abuse.wrong_audience]\nresponse = [\"revoke-client\", \"alert\"]\n",
        );
        base_config(dir, &auth.issuer, &abuse)
    })
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let (task, lease) = lease_of(&d, &token).await;

    // The same client's token for the S3 MCP server, presented by the postgres one.
    let stray = auth.token("agent-1", S3, PG_READ).await;
    let refused = d.begin(&stray, &["orders-db-read"]).await.unwrap_err();
    assert_eq!(
        reason(&refused),
        "audience_mismatch",
        "refused for what it is"
    );
    eventually(
        Duration::from_secs(10),
        "the client's live lease revoked",
        || async { d.revoked().contains(&lease) && d.outstanding().is_empty() },
    )
    .await;
    assert_eq!(
        reason(&d.begin(&token, &["orders-db-read"]).await.unwrap_err()),
        "client_blocked"
    );

    // The webhook answered 500 once: the alert is retried until it is taken.
    eventually(Duration::from_secs(15), "the alert delivered", || async {
        !hook.delivered().is_empty()
    })
    .await;
    let received = hook.received();
    assert!(received.len() >= 2, "a failed delivery is retried");
    for r in &received {
        assert!(signature_valid(r, &hook_key()), "every delivery is signed");
        let mut tampered = r.clone();
        tampered.body.push(' ');
        assert!(
            !signature_valid(&tampered, &hook_key()),
            "the signature covers the body"
        );
    }
    let alert = &hook.delivered()[0];
    assert_eq!(alert["detector"], "wrong_audience");
    assert_eq!(alert["owner"], OWNER);
    assert_eq!(alert["client_id"], "agent-1");
    assert_eq!(alert["evidence"]["presented_by"], "postgres-mcp");
    assert_eq!(alert["blocks"][0]["kind"], "client");
    assert_eq!(alert["revoked"][0]["task_id"], task.as_str());
    assert_eq!(alert["revoked"][0]["leases"][0]["lease_id"], lease.as_str());

    let audit = d.audit();
    let found = events(&audit, "abuse_detected");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["detail"]["detector"], "wrong_audience");
    assert_eq!(found[0]["owner"], OWNER);
    assert_eq!(events(&audit, "alert_delivered").len(), 1);
    assert!(
        !d.log_text().contains(HOOK_KEY_HEX),
        "the webhook key is never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_probing_revokes_the_token_until_it_expires_and_reuse_is_a_finding_too() {
    let auth = AuthServer::start();
    let hook = Webhook::start(0).await;
    let d = Daemon::start(|dir| {
        let abuse = abuse_config(
            dir,
            &hook,
            "[abuse.scope_probing]\nthreshold = 3\nwindow = \"1m\"\nper = \"token\"\n\
             response = [\"deny\", \"revoke-token\"]\n\
             [abuse.blocked_reuse]\nresponse = [\"alert\"]\n",
        );
        base_config(dir, &auth.issuer, &abuse)
    })
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let (_, lease) = lease_of(&d, &token).await;
    // Two probes are refused for what they ask; the third is the finding.
    for _ in 0..2 {
        let e = d.begin(&token, &["s3-read"]).await.unwrap_err();
        assert_eq!(reason(&e), "grant_not_allowed");
    }
    assert!(
        d.outstanding().contains(&lease),
        "below the threshold nothing is revoked"
    );
    let e = d.begin(&token, &["s3-read"]).await.unwrap_err();
    assert_eq!(
        reason(&e),
        "grant_not_allowed",
        "a probe is still refused for what it asks"
    );
    eventually(
        Duration::from_secs(10),
        "the probing token's lease revoked",
        || async { d.revoked().contains(&lease) },
    )
    .await;
    // The token is refused from now on, even for what it may have...
    let e = d.begin(&token, &["orders-db-read"]).await.unwrap_err();
    assert_eq!(reason(&e), "token_blocked");
    // ...and presenting it again is itself a finding, alerted.
    eventually(
        Duration::from_secs(10),
        "the blocked-reuse alert",
        || async {
            hook.delivered()
                .iter()
                .any(|a| a["detector"] == "blocked_reuse")
        },
    )
    .await;
    // Another token of the same client is not affected.
    let fresh = auth.token("agent-1", POSTGRES, PG_READ).await;
    lease_of(&d, &fresh).await;

    let audit = d.audit();
    let probing: Vec<_> = events(&audit, "abuse_detected")
        .into_iter()
        .filter(|r| r["detail"]["detector"] == "scope_probing")
        .collect();
    assert_eq!(probing.len(), 1);
    assert_eq!(probing[0]["detail"]["evidence"]["refusals"], 3);
    assert_eq!(
        probing[0]["detail"]["evidence"]["last_refusal"],
        "grant_not_allowed"
    );
    let block = &events(&audit, "block_added")[0];
    assert_eq!(block["detail"]["kind"], "jti");
    assert_eq!(block["detail"]["source"], "abuse:scope_probing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_over_the_threshold_is_denied_while_it_lasts() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| {
        base_config(
            dir,
            &auth.issuer,
            "[abuse]\n[abuse.rate]\nthreshold = 4\nwindow = \"1m\"\nper = \"owner\"\nresponse = [\"log\", \"deny\"]\n",
        )
    })
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    for _ in 0..3 {
        lease_of(&d, &token).await;
    }
    for _ in 0..3 {
        let e = d.begin(&token, &["orders-db-read"]).await.unwrap_err();
        assert_eq!(reason(&e), "abuse_detected");
    }
    assert_eq!(d.outstanding().len(), 3, "denied requests issued nothing");
    let audit = d.audit();
    let found = events(&audit, "abuse_detected");
    assert_eq!(found.len(), 3, "each denied request is recorded");
    assert_eq!(found[0]["detail"]["evidence"]["per"], "owner");
    assert_eq!(
        found[0]["detail"]["evidence"]["key"],
        format!("owner {OWNER}")
    );
    assert_eq!(found[0]["outcome"], "denied");
    assert!(found[1]["detail"]["repeat"] == true);
    assert!(
        events(&audit, "block_added").is_empty(),
        "deny places no block"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_token_from_two_executables_is_a_finding() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| {
        base_config(
            dir,
            &auth.issuer,
            "[abuse]\n[abuse.token_reuse]\nresponse = [\"revoke-token\"]\n",
        )
    })
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    // This test binary presents it first...
    let (_, lease) = lease_of(&d, &token).await;
    // ...then another program (the CLI) presents the same token.
    let out = d
        .cli()
        .args([
            "task",
            "begin",
            "--grant",
            "orders-db-read",
            "--tool",
            "query",
        ])
        .env("CREDBROKER_TOKEN", &token)
        .output()
        .expect("the CLI should run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token_blocked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(10),
        "the reused token's lease revoked",
        || async { d.revoked().contains(&lease) },
    )
    .await;
    let audit = d.audit();
    let found = events(&audit, "abuse_detected");
    assert_eq!(found.len(), 1);
    let ev = &found[0]["detail"]["evidence"];
    assert_eq!(ev["origin"], "peer");
    assert_ne!(ev["first_seen_from"], ev["now_seen_from"]);
    assert!(
        ev["now_seen_from"]
            .as_str()
            .expect("as this test set it up")
            .contains("credbroker-testd"),
        "{ev}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probing_counted_per_owner_revokes_every_client_of_that_owner() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| {
        base_config(
            dir,
            &auth.issuer,
            "[abuse]\n[abuse.scope_probing]\nthreshold = 2\nwindow = \"1m\"\nper = \"owner\"\n\
             response = [\"revoke-owner\"]\n",
        )
        .replace(
            "\"agent-noscope\" = \"bob@example.com\"",
            "\"agent-noscope\" = \"bob@example.com\", \"agent-7\" = \"alice@example.com\"",
        )
    })
    .await;
    // Alice's other agent holds a credential.
    let other = auth.token("agent-7", POSTGRES, PG_READ).await;
    let (_, lease) = lease_of(&d, &other).await;
    // Alice's first agent probes.
    let prober = auth.token("agent-1", POSTGRES, PG_READ).await;
    for _ in 0..2 {
        let e = d.begin(&prober, &["s3-read"]).await.unwrap_err();
        assert_eq!(reason(&e), "grant_not_allowed");
    }
    eventually(
        Duration::from_secs(10),
        "the owner's other lease revoked",
        || async { d.revoked().contains(&lease) },
    )
    .await;
    for t in [&other, &prober] {
        let e = d.begin(t, &["orders-db-read"]).await.unwrap_err();
        assert_eq!(
            reason(&e),
            "owner_blocked",
            "every client of the owner is refused"
        );
    }
    let audit = d.audit();
    let block = &events(&audit, "block_added")[0];
    assert_eq!(block["detail"]["kind"], "owner");
    assert_eq!(block["owner"], OWNER);
    assert!(
        block["issuer"].is_null(),
        "an owner is blocked at every issuer"
    );
}
