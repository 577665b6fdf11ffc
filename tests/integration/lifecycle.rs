//! A task's whole life against the real authorization server: begin, renew, end, expiry,
//! crash and restart, provider failures, operator revocation.

use std::time::Duration;

use credbroker::proto::v1;
use credbroker::token::Fingerprint;
use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::{begin_request, eventually, get_task, live_tasks, reason};

fn events<'a>(audit: &'a [Value], task: &str) -> Vec<&'a Value> {
    audit.iter().filter(|r| r["task_id"] == task).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_token_becomes_a_task_whose_leases_end_revoked_with_the_whole_chain_audited() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;

    let begun = d.begin(&token, &["orders-db-read"]).await;
    let begun = begun
        .unwrap_or_else(|e| panic!("begin: {e:?}"))
        .into_inner();
    let task = begun.task.unwrap_or_default();
    assert_eq!(task.state, "active");
    let p = task.principal.clone().unwrap_or_default();
    assert_eq!(
        (
            p.client_id.as_str(),
            p.owner.as_str(),
            p.owner_source.as_str()
        ),
        ("agent-1", "alice@example.com", "client_registry")
    );
    assert_eq!(p.token_fingerprint, Fingerprint::of(&token).hex());
    assert_eq!(begun.credentials.len(), 1);
    let cred = &begun.credentials[0];
    assert!(
        cred.secret
            .get("password")
            .is_some_and(|p| p.starts_with("tp_"))
    );
    assert_eq!(d.outstanding(), vec![cred.lease_id.clone()]);
    // The template was rendered with the owner.
    let issued: Value = serde_json::from_str(
        &std::fs::read_to_string(
            d.state
                .join("issued")
                .join(format!("{}.json", cred.lease_id)),
        )
        .unwrap_or_default(),
    )
    .unwrap_or_default();
    assert_eq!(issued["params"]["label"], "orders-alice@example.com");

    let ended = d.end(&task.id).await;
    let ended = ended
        .unwrap_or_else(|e| panic!("end: {e:?}"))
        .into_inner()
        .task
        .unwrap_or_default();
    assert_eq!(
        (ended.state.as_str(), ended.end_reason.as_str()),
        ("ended", "ended_by_workload")
    );
    assert!(ended.leases.iter().all(|l| l.state == "revoked"));
    assert!(d.outstanding().is_empty());
    assert_eq!(d.revoked(), vec![cred.lease_id.clone()]);
    // Ending again is idempotent.
    let again = d.end(&task.id).await;
    assert_eq!(
        again
            .map(|r| r.into_inner().task.unwrap_or_default().state)
            .ok(),
        Some("ended".to_string())
    );

    // audit export: peer → client → owner → token fingerprint → task → lease.
    let audit = d.audit();
    let chain = events(&audit, &task.id);
    let names: Vec<&str> = chain.iter().filter_map(|r| r["event"].as_str()).collect();
    assert_eq!(
        names,
        [
            "token_accepted",
            "task_opened",
            "lease_issued",
            "task_begun",
            "lease_revoked",
            "task_ended"
        ]
    );
    assert_eq!(chain[0]["detail"]["scopes"][0], PG_READ);
    let chain = &chain[1..];
    let opened = chain[0];
    assert_eq!(opened["peer"]["uid"], nix::unistd::geteuid().as_raw());
    assert_eq!(opened["peer"]["pid"], std::process::id());
    assert_eq!(opened["client_id"], "agent-1");
    assert_eq!(opened["owner"], "alice@example.com");
    assert_eq!(opened["token_fingerprint"], Fingerprint::of(&token).hex());
    assert_eq!(opened["workload"], "postgres-mcp");
    let issued = chain[1];
    assert_eq!(
        (issued["lease_id"].as_str(), issued["grant"].as_str()),
        (Some(cred.lease_id.as_str()), Some("orders-db-read"))
    );
    assert_eq!(chain[3]["lease_id"], cred.lease_id);
    // Ended in the same commit it began ending: one record, with the reason.
    assert_eq!(chain[4]["reason"], "ended_by_workload");
    // Records are numbered without gaps.
    let seqs: Vec<u64> = audit.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_survives_sigkill_and_is_reaped_and_revoked_at_expiry() {
    let auth = AuthServer::start();
    let mut d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let mut req = begin_request(&token, &["orders-db-read"]);
    req.ttl_seconds = Some(4);
    let begun = d
        .broker()
        .await
        .begin_task(req)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let id = begun.task.unwrap_or_default().id;

    d.kill9();
    d.spawn().await;
    let live = live_tasks(&d).await;
    assert_eq!(
        live.iter()
            .map(|t| (t.id.as_str(), t.state.as_str()))
            .collect::<Vec<_>>(),
        vec![(id.as_str(), "active")]
    );
    assert_eq!(d.outstanding().len(), 1);

    eventually(
        Duration::from_secs(20),
        "the reaper ends the task",
        || async { live_tasks(&d).await.is_empty() },
    )
    .await;
    let t = get_task(&d, &id).await;
    assert_eq!(
        (t.state.as_str(), t.end_reason.as_str()),
        ("ended", "expired")
    );
    assert!(
        t.leases.iter().all(|l| l.state == "revoked"),
        "{:?}",
        t.leases
    );
    assert!(d.outstanding().is_empty());
    // The sealed handle survived the restart: the provider checks it on revoke.
    assert!(!d.log_text().contains("does not match"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_issue_leaves_nothing_outstanding() {
    let auth = AuthServer::start();
    let mut d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    std::fs::write(d.state.join("slow-answer-ms"), "5000").unwrap_or_default();
    let mut client = d.broker().await;
    let pending = tokio::spawn(async move {
        client
            .begin_task(begin_request(&token, &["orders-db-read"]))
            .await
    });
    // The provider has created the credential; its answer has not reached the journal.
    eventually(Duration::from_secs(5), "the credential exists", || async {
        d.outstanding().len() == 1
    })
    .await;
    d.kill9();
    assert!(pending.await.is_ok_and(|r| r.is_err()));
    d.provider_flag("slow-answer-ms", false);
    // The restarted daemon finds it by its lease id (the intent) and revokes it.
    d.spawn().await;
    eventually(
        Duration::from_secs(15),
        "the interrupted task is settled",
        || async { live_tasks(&d).await.is_empty() && d.outstanding().is_empty() },
    )
    .await;
    let audit = d.audit();
    let ended: Vec<&Value> = audit
        .iter()
        .filter(|r| r["event"] == "task_ended")
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(d.revoked().len(), 1);
    assert!(
        audit
            .iter()
            .any(|r| r["event"] == "lease_reconciled" && r["reason"] == "revoked")
    );
    assert!(
        audit
            .iter()
            .any(|r| r["event"] == "task_ending" && r["reason"] == "interrupted")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issue_whose_outcome_is_unknown_is_reconciled() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    d.provider_flag("hang-issue", true);
    let err = d.begin(&token, &["orders-db-read"]).await.err();
    let err = err.unwrap_or_else(|| panic!("a hung provider must fail the task"));
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&err), "provider_outcome_unknown");
    // The provider did create it before hanging; reconciliation finds and revokes it.
    eventually(Duration::from_secs(15), "reconciliation", || async {
        d.outstanding().is_empty() && live_tasks(&d).await.is_empty()
    })
    .await;
    assert_eq!(d.revoked().len(), 1);
    assert!(
        d.audit()
            .iter()
            .any(|r| r["event"] == "lease_reconciled" && r["reason"] == "revoked")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_failing_grant_fails_the_task_whole() {
    let auth = AuthServer::start();
    let extra = r#"
[[provider]]
name = "pg2"
type = "test"
state_dir = "{d}/provider2"

[[grant]]
name = "customers-db-read"
provider = "pg2"
scopes = ["mcp.tool:postgres.read"]
max_ttl = "10m"

[[workload]]
name = "multi"
uid = {uid}
gid = {gid}
audience = "https://mcp.example.test/postgres"
grants = ["orders-db-read", "customers-db-read"]
"#;
    let extra = extra
        .replace("{uid}", &nix::unistd::geteuid().to_string())
        .replace("{gid}", &nix::unistd::getegid().to_string());
    let d = Daemon::start(|dir| {
        base_config(
            dir,
            &auth.issuer,
            &extra.replace("{d}", &dir.display().to_string()),
        )
    })
    .await;
    std::fs::write(d.dir.path().join("provider2/deny-issue"), "1").unwrap_or_default();
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let err = d
        .begin(&token, &["orders-db-read", "customers-db-read"])
        .await
        .err();
    let err = err.unwrap_or_else(|| panic!("must fail"));
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&err), "provider_denied");
    assert!(
        err.message().contains("customers-db-read"),
        "{}",
        err.message()
    );
    eventually(
        Duration::from_secs(10),
        "the issued half is revoked",
        || async { d.outstanding().is_empty() },
    )
    .await;
    assert_eq!(d.revoked().len(), 1);
    // The provider's revocation happens before its commit: wait for the record, not just the
    // provider's side (reading the audit log at once raced that commit under load).
    eventually(
        Duration::from_secs(10),
        "task_ended issue_failed is recorded",
        || async {
            d.audit()
                .iter()
                .any(|r| r["event"] == "task_ended" && r["reason"] == "issue_failed")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_revocations_are_retried_until_they_succeed() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let t = d.begin(&token, &["orders-db-read"]).await;
        ids.push(
            t.unwrap_or_else(|e| panic!("{e:?}"))
                .into_inner()
                .task
                .unwrap_or_default()
                .id,
        );
    }
    d.provider_flag("fail-revoke", true);
    for id in &ids {
        let t = d.end(id).await;
        let t = t
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_inner()
            .task
            .unwrap_or_default();
        assert_eq!(t.state, "ending");
        assert_eq!(t.leases[0].state, "revoking");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(d.outstanding().len(), 5);
    d.provider_flag("fail-revoke", false);
    eventually(Duration::from_secs(15), "retries succeed", || async {
        d.outstanding().is_empty() && live_tasks(&d).await.is_empty()
    })
    .await;
    let audit = d.audit();
    for id in &ids {
        let ev = events(&audit, id);
        assert!(
            ev.iter()
                .filter(|r| r["event"] == "lease_revocation_failed")
                .count()
                >= 2,
            "{id}: several failed attempts"
        );
        assert!(ev.iter().any(|r| r["event"] == "lease_revoked"));
        assert_eq!(
            ev.last().map(|r| r["event"].clone()),
            Some(Value::from("task_ended"))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_extends_within_the_same_limits() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let mut req = begin_request(&token, &["orders-db-read"]);
    req.ttl_seconds = Some(30);
    let t = d
        .broker()
        .await
        .begin_task(req)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .task
        .unwrap_or_default();
    let before = t.expires_at.map(|t| t.seconds).unwrap_or_default();

    let fresh = auth.token("agent-1", POSTGRES, PG_READ).await;
    let renew = |tok: String, ttl: u32| v1::RenewTaskRequest {
        task_id: t.id.clone(),
        token: tok,
        ttl_seconds: Some(ttl),
    };
    let r = d
        .broker()
        .await
        .renew_task(renew(fresh.clone(), 200))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let after = r.into_inner().task.unwrap_or_default();
    let after_exp = after.expires_at.map(|t| t.seconds).unwrap_or_default();
    assert!(after_exp > before + 100, "{before} → {after_exp}");
    // Never beyond the token's own expiry (300 s from issue).
    let token_exp = after
        .principal
        .clone()
        .unwrap_or_default()
        .token_expires_at
        .map(|t| t.seconds)
        .unwrap_or_default();
    assert!(after_exp <= token_exp);

    // Another client's token cannot renew it.
    let other = auth
        .token("agent-noscope", POSTGRES, "mcp.tool:s3.read")
        .await;
    let err = d
        .broker()
        .await
        .renew_task(renew(other, 60))
        .await
        .err()
        .map(|e| reason(&e));
    assert_eq!(err.as_deref(), Some("principal_mismatch"));
    assert!(
        d.audit()
            .iter()
            .any(|r| r["event"] == "task_renewed" && r["task_id"] == t.id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_revoke_by_id_and_by_selector() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let t = d.begin(&token, &["orders-db-read"]).await;
        ids.push(
            t.unwrap_or_else(|e| panic!("{e:?}"))
                .into_inner()
                .task
                .unwrap_or_default()
                .id,
        );
    }
    let out = d
        .cli()
        .args(["tasks", "revoke", &ids[0], "--reason", "suspicious"])
        .output()
        .expect("tasks revoke by id should run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = get_task(&d, &ids[0]).await;
    assert_eq!(t.end_reason, "revoked_by_operator");

    let empty = d
        .admin()
        .await
        .revoke(v1::RevokeRequest {
            selector: Some(Default::default()),
            reason: String::new(),
        })
        .await;
    assert_eq!(
        empty.err().map(|e| reason(&e)).as_deref(),
        Some("empty_selector")
    );

    let out = d
        .cli()
        .args([
            "tasks",
            "revoke",
            "--owner",
            "alice@example.com",
            "--output",
            "json",
        ])
        .output()
        .expect("tasks revoke by owner should run");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut revoked: Vec<String> = v["revoked"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    revoked.sort();
    let mut rest = ids[1..].to_vec();
    rest.sort();
    assert_eq!(revoked, rest);
    assert!(d.outstanding().is_empty());
    let audit = d.audit();
    let ending: Vec<&Value> = audit
        .iter()
        .filter(|r| r["event"] == "task_ended")
        .collect();
    assert_eq!(ending.len(), 3);
    assert!(
        ending.iter().all(
            |r| r["reason"] == "revoked_by_operator" && r["detail"]["operator"]["uid"].is_u64()
        )
    );
    assert_eq!(ending[0]["detail"]["operator_reason"], "suspicious");
}

/// An incident responder revoking many tasks waits for the slowest revocation, not their sum.
#[tokio::test(flavor = "multi_thread")]
async fn selector_revocation_ends_tasks_concurrently() {
    const TASKS: usize = 12;
    const REVOKE_MS: u64 = 800;
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let mut client = d.broker().await;
    for _ in 0..TASKS {
        client
            .begin_task(begin_request(&token, &["orders-db-read"]))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    std::fs::write(d.state.join("slow-revoke-ms"), REVOKE_MS.to_string())
        .expect("the slow-revoke-ms flag should be written");
    let started = std::time::Instant::now();
    let out = d
        .admin()
        .await
        .revoke(v1::RevokeRequest {
            selector: Some(v1::Selector {
                owner: "alice@example.com".into(),
                ..Default::default()
            }),
            reason: "incident".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let took = started.elapsed();
    assert_eq!(out.task_ids.len(), TASKS);
    assert!(d.outstanding().is_empty(), "every credential is revoked");
    // One after another this takes TASKS × REVOKE_MS (9.6 s); concurrently about one REVOKE_MS.
    assert!(
        took < Duration::from_millis(REVOKE_MS * TASKS as u64 / 2),
        "selector revocation took {took:?}: tasks were ended one after another"
    );
}
