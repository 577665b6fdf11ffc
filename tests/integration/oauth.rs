//! The `oauth` provider through the socket, against two real authorization servers
//! (oidc-provider): RFC 8693 token exchange with the `act` chain, ID-JAG across two ASes,
//! client credentials, revocation at task end, narrowing refused before the AS is called, AS
//! errors mapped, an unknown outcome audited as residual, and nothing secret in the log.

use std::collections::HashMap;

use credbroker::proto::v1;
use serde_json::{Value, json};

use super::oauth_setup::{AT_CRM, CRM, EXCHANGE, JWT_BEARER, Servers, daemon};
use crate::support::daemon::Daemon;
use crate::support::{begin_request, live_tasks, reason};

async fn begin(
    d: &Daemon,
    token: &str,
    grant: &str,
    narrow: &[(&str, &[&str])],
) -> Result<v1::BeginTaskResponse, tonic::Status> {
    let mut req = begin_request(token, &[grant]);
    req.grants[0].narrow = narrow
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_string(),
                v1::StringList {
                    values: v.iter().map(|s| (*s).to_string()).collect(),
                },
            )
        })
        .collect::<HashMap<_, _>>();
    d.broker()
        .await
        .begin_task(req)
        .await
        .map(tonic::Response::into_inner)
}

fn access_token(b: &v1::BeginTaskResponse) -> (String, String) {
    let c = &b.credentials[0];
    (
        c.secret.get("access_token").cloned().unwrap_or_default(),
        b.task.clone().unwrap_or_default().id,
    )
}

fn aud(v: &Value) -> Vec<String> {
    match &v["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_narrows_names_the_actors_and_is_revoked_at_task_end() {
    let s = Servers::start();
    let d = daemon(&s, "info").await;
    let carol = s.carol().await;
    let begun = begin(&d, &carol, "crm", &[("scope", &["crm.read"])])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let (token, task) = access_token(&begun);
    assert!(token.len() > 20, "{begun:?}");
    assert_ne!(token, carol, "never the caller's token passed through");
    let public = &begun.credentials[0].public;
    assert_eq!(public.get("scope").map(String::as_str), Some("crm.read"));
    assert_eq!(public.get("resource").map(String::as_str), Some(CRM));

    // The AS's own view, as the downstream API would ask it (RFC 7662).
    let seen = s.idp.introspect("agent-1", &token).await;
    assert_eq!(seen["active"], true, "{seen:#}");
    assert_eq!(aud(&seen), [CRM], "{seen:#}");
    assert_eq!(
        seen["scope"], "crm.read",
        "narrowed by the request: {seen:#}"
    );
    assert_eq!(seen["sub"], "carol@example.com", "{seen:#}");
    assert_eq!(seen["client_id"], "credbroker");
    // The MCP server (credbroker's actor token) acting for the agent acting for carol.
    assert_eq!(
        seen["act"],
        json!({"sub": "workload:postgres-mcp", "act": {"sub": "agent-7"}}),
        "{seen:#}"
    );
    let sent = Servers::exchanges(&s.idp, EXCHANGE).await;
    let ours: Vec<&Value> = sent
        .iter()
        .filter(|e| e["client_id"] == "credbroker")
        .collect();
    assert_eq!(ours.len(), 1, "{sent:#?}");
    assert_eq!(ours[0]["actor"], true);

    d.end(&task).await.unwrap_or_else(|e| panic!("{e:?}"));
    let seen = s.idp.introspect("agent-1", &token).await;
    assert_eq!(seen["active"], false, "revoked at task end: {seen:#}");
    let audit = d.audit();
    let revoked: Vec<&Value> = audit
        .iter()
        .filter(|r| r["event"] == "lease_revoked" && r["task_id"] == task.as_str())
        .collect();
    assert_eq!(revoked.len(), 1, "{audit:#?}");
    assert_eq!(revoked[0]["detail"]["confirmed"], true, "{:#}", revoked[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_jag_from_the_idp_is_redeemed_at_the_resources_authorization_server() {
    let s = Servers::start();
    let d = daemon(&s, "info").await;
    let carol = s.carol().await;
    let begun = begin(&d, &carol, "crm-jag", &[])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let (token, task) = access_token(&begun);
    // The ID-JAG itself went to the resource's AS only: the IdP never issued an API token.
    let jags = Servers::exchanges(&s.idp, EXCHANGE).await;
    assert!(
        jags.iter().any(|e| e["client_id"] == "credbroker"
            && e["requested_token_type"] == "urn:ietf:params:oauth:token-type:id-jag"),
        "{jags:#?}"
    );
    let redeemed = Servers::exchanges(&s.crm, JWT_BEARER).await;
    assert_eq!(redeemed.len(), 1, "{redeemed:#?}");
    assert_eq!(redeemed[0]["client_id"], AT_CRM);
    let seen = s.crm.introspect("agent-1", &token).await;
    assert_eq!(seen["active"], true, "{seen:#}");
    assert_eq!(seen["sub"], "carol@example.com");
    assert_eq!(aud(&seen), [CRM]);
    assert_eq!(seen["scope"], "crm.read crm.write");
    assert_eq!(seen["act"]["sub"], "workload:postgres-mcp", "{seen:#}");
    let at_idp = s.idp.introspect("agent-1", &token).await;
    assert_eq!(
        at_idp["active"], false,
        "the token is the resource AS's, not the IdP's"
    );
    assert_eq!(
        begun.credentials[0].public.get("issuer"),
        Some(&s.crm.issuer)
    );

    d.end(&task).await.unwrap_or_else(|e| panic!("{e:?}"));
    let seen = s.crm.introspect("agent-1", &token).await;
    assert_eq!(
        seen["active"], false,
        "revoked at the resource's AS: {seen:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_name_nobody_downstream_and_the_person_in_the_audit_log() {
    let s = Servers::start();
    let d = daemon(&s, "info").await;
    let carol = s.carol().await;
    let begun = begin(&d, &carol, "crm-service", &[])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let (token, task) = access_token(&begun);
    let seen = s.idp.introspect("agent-1", &token).await;
    assert_eq!(seen["active"], true, "{seen:#}");
    assert_eq!(seen["client_id"], "credbroker");
    assert!(seen["act"].is_null(), "{seen:#}");
    let cc = Servers::exchanges(&s.idp, "client_credentials").await;
    assert!(cc.iter().any(|e| e["client_id"] == "credbroker"), "{cc:#?}");
    assert!(
        Servers::exchanges(&s.idp, EXCHANGE)
            .await
            .iter()
            .all(|e| e["client_id"] != "credbroker"),
        "the caller's token is not sent for client credentials"
    );
    let audit = d.audit();
    assert!(
        audit.iter().any(|r| r["event"] == "lease_issued"
            && r["task_id"] == task.as_str()
            && r["owner"] == "carol@example.com"),
        "{audit:#?}"
    );
    d.end(&task).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(s.idp.introspect("agent-1", &token).await["active"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn widening_the_scope_or_moving_the_audience_is_refused_before_the_as_is_called() {
    let s = Servers::start();
    let d = daemon(&s, "info").await;
    let carol = s.carol().await;
    let before = s.idp.log().await.len();
    for (narrow, code, want) in [
        (
            ("scope", &["crm.admin"][..]),
            tonic::Code::PermissionDenied,
            "narrowing_exceeds_grant",
        ),
        (
            ("scope", &["crm.read", "crm.admin"][..]),
            tonic::Code::PermissionDenied,
            "narrowing_exceeds_grant",
        ),
        (
            ("resource", &["https://evil.example.test/"][..]),
            tonic::Code::InvalidArgument,
            "narrowing_not_allowed",
        ),
        (
            ("audience", &["evil"][..]),
            tonic::Code::InvalidArgument,
            "narrowing_not_allowed",
        ),
        (
            ("mode", &["client-credentials"][..]),
            tonic::Code::InvalidArgument,
            "narrowing_not_allowed",
        ),
    ] {
        let err = begin(&d, &carol, "crm", &[narrow])
            .await
            .err()
            .unwrap_or_else(|| panic!("{narrow:?} was accepted"));
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (code, want),
            "{narrow:?}: {err:?}"
        );
    }
    assert_eq!(s.idp.log().await.len(), before, "the AS was called");
    assert!(
        live_tasks(&d).await.is_empty(),
        "a refused request left a task"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_server_errors_map_to_status_and_reason_and_change_nothing() {
    let s = Servers::start();
    let d = daemon(&s, "info").await;
    let carol = s.carol().await;
    for (grant, code, want, says) in [
        (
            "crm-unknown",
            tonic::Code::FailedPrecondition,
            "provider_config",
            "invalid_target",
        ),
        (
            "crm-post",
            tonic::Code::PermissionDenied,
            "provider_denied",
            "invalid_grant",
        ),
        (
            "crm-cc",
            tonic::Code::PermissionDenied,
            "provider_denied",
            "unauthorized_client",
        ),
    ] {
        let err = begin(&d, &carol, grant, &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("{grant} was issued"));
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (code, want),
            "{grant}: {err:?}"
        );
        assert!(err.message().contains(says), "{grant}: {}", err.message());
        assert!(
            !err.message().contains(&carol),
            "the caller's token is echoed"
        );
    }
    for (mode, code, want) in [
        ("fail-500", tonic::Code::Unavailable, "provider_unavailable"),
        ("fail-503", tonic::Code::Unavailable, "provider_unavailable"),
    ] {
        s.idp.token_mode(mode).await;
        let err = begin(&d, &carol, "crm", &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("{mode}"));
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (code, want),
            "{mode}: {err:?}"
        );
    }
    s.idp.token_mode("ok").await;
    assert!(live_tasks(&d).await.is_empty());
    // Every refusal failed its task whole; nothing is outstanding at the AS or in the journal.
    let audit = d.audit();
    assert!(
        !audit.iter().any(|r| r["event"] == "lease_issued"),
        "{audit:#?}"
    );
    // And the instance works again once the AS does.
    let ok = begin(&d, &carol, "crm", &[]).await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exchange_whose_answer_never_came_is_audited_as_residual() {
    let s = Servers::start();
    let d = daemon(&s, "info").await;
    let carol = s.carol().await;
    s.idp.token_mode("hang").await;
    let err = begin(&d, &carol, "crm", &[])
        .await
        .err()
        .unwrap_or_else(|| panic!("an unanswered exchange must fail the task"));
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err), "provider_outcome_unknown");
    s.idp.token_mode("ok").await;
    let r = super::oauth_setup::residual(&d).await;
    let until = humantime::parse_rfc3339(r["detail"]["residual_until"].as_str().unwrap_or(""))
        .unwrap_or(std::time::UNIX_EPOCH);
    let left = until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    // max_token_lifetime = 10m from the attempt: no token the AS issued can outlive it.
    assert!((540..=600).contains(&left), "residual {left}s: {r:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_actor_token_or_client_secret_reaches_the_log_at_trace_level() {
    let s = Servers::start();
    let d = daemon(&s, "trace").await;
    let carol = s.carol().await;
    let mut issued = Vec::new();
    for grant in ["crm", "crm-jag", "crm-service"] {
        let begun = begin(&d, &carol, grant, &[])
            .await
            .unwrap_or_else(|e| panic!("{grant}: {e:?}"));
        let (token, task) = access_token(&begun);
        d.end(&task).await.unwrap_or_else(|e| panic!("{e:?}"));
        issued.push(token);
    }
    let _ = begin(&d, &carol, "crm-post", &[]).await;
    let log = d.log_text();
    assert!(
        log.contains("TRACE") && log.lines().count() > 100,
        "trace logging is not on"
    );
    // The provider's own HTTP client was traced too (its requests carry every secret).
    assert!(
        log.contains("hyper_util::client"),
        "the HTTP client is not traced"
    );
    let secrets = [
        ("the caller's token", carol.clone()),
        (
            "the caller's token's signature",
            carol.rsplit('.').next().unwrap_or_default().to_string(),
        ),
        ("a client secret", crate::support::oidc::secret(AT_CRM)),
        (
            "a client secret",
            crate::support::oidc::secret("credbroker-post"),
        ),
    ];
    for (what, secret) in secrets.iter().chain(
        issued
            .iter()
            .map(|t| ("an issued token", t.clone()))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(
            secret.len() > 8 && !log.contains(secret.as_str()),
            "{what} appears in the log"
        );
    }
    // Actor tokens, client assertions and ID-JAGs are JWTs credbroker made or received: no
    // JWT of any kind is in the log.
    assert!(!log.contains("eyJ"), "a JWT appears in the log");
}
