//! What the authorization server revoked stops working here: opaque tokens introspected
//! (RFC 7662) at the test AS's real endpoint, a token revoked there (RFC 7009) refused at the
//! next BeginTask, and with `recheck_active` its active task ended within the period.

use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{
    AuthServer, ClientSpec, Options, PG_READ, POSTGRES, default_clients, secret,
};
use crate::support::{eventually, reason, write_secret};

const OPAQUE: &str = "https://mcp.example.test/opaque";
const RECHECK: Duration = Duration::from_secs(2);

fn auth() -> AuthServer {
    let mut clients = default_clients();
    clients.push(ClientSpec {
        id: "credbroker-rs",
        scope: "",
        extra: serde_json::json!({}),
        may_act_for: vec![],
    });
    AuthServer::start_with(Options {
        clients,
        opaque_resources: vec![OPAQUE.into()],
        ..Default::default()
    })
}

/// The daemon, its workload's audience the opaque resource, introspecting at the AS.
async fn daemon(auth: &AuthServer, mode: &str, audience: &str, client_secret: &str) -> Daemon {
    Daemon::start(|d| {
        write_secret(d.join("introspect.secret"), client_secret.as_bytes())
            .expect("the secret is written");
        base_config(d, &auth.issuer, "")
            .replacen(
                "min_refresh_interval = \"1s\"\n",
                &format!(
                    "min_refresh_interval = \"1s\"\nintrospect = \"{mode}\"\n\
                     introspection_client_id = \"credbroker-rs\"\n\
                     introspection_secret_file = \"{}/introspect.secret\"\n\
                     introspection_cache = \"1s\"\nrecheck_active = \"{}s\"\n",
                    d.display(),
                    RECHECK.as_secs()
                ),
                1,
            )
            .replace(
                &format!("audience = \"{POSTGRES}\""),
                &format!("audience = \"{audience}\""),
            )
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_revoked_at_the_as_is_refused_and_its_active_task_ends_within_the_recheck_period() {
    let auth = auth();
    let d = daemon(&auth, "opaque", OPAQUE, &secret("credbroker-rs")).await;
    let token = auth.token("agent-1", OPAQUE, PG_READ).await;
    assert!(
        !token.contains('.'),
        "the resource's tokens are opaque: {token}"
    );

    let begun = d
        .begin(&token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("an active opaque token is accepted: {e:?}"))
        .into_inner();
    let task = begun.task.unwrap_or_default();
    let p = task.principal.clone().unwrap_or_default();
    assert_eq!(
        (p.client_id.as_str(), p.owner.as_str()),
        ("agent-1", "alice@example.com")
    );
    assert_eq!(p.scopes, [PG_READ]);
    let lease = begun.credentials[0].lease_id.clone();

    auth.revoke("agent-1", &token).await;
    let revoked_at = Instant::now();
    eventually(RECHECK * 3, "the revoked token's task ended", || async {
        d.revoked().contains(&lease)
    })
    .await;
    let took = revoked_at.elapsed();
    eprintln!("revoked at the AS → lease revoked here: {took:?} (recheck_active = {RECHECK:?})");
    assert!(
        took <= RECHECK + Duration::from_millis(1500),
        "ended within the period (plus one tick and the revocation): {took:?}"
    );
    let e = d.begin(&token, &["orders-db-read"]).await.unwrap_err();
    assert_eq!(reason(&e), "token_inactive");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    let audit = d.audit();
    let ended = audit
        .iter()
        .find(|r| r["event"] == "task_ended" && r["task_id"] == task.id.as_str())
        .expect("the task's end is audited");
    assert_eq!(ended["reason"], "token_inactive");
    assert!(
        audit
            .iter()
            .any(|r| r["event"] == "token_rejected" && r["reason"] == "token_inactive"),
        "the refusal is audited"
    );
    let log = d.log_text();
    assert!(!log.contains(&token), "the token is never logged");
    assert!(
        !log.contains(&secret("credbroker-rs")),
        "nor the introspection secret"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_as_cannot_be_asked_the_token_is_refused_as_unavailable_and_nothing_is_issued() {
    let auth = auth();
    let d = daemon(&auth, "opaque", OPAQUE, "not-the-secret").await;
    let token = auth.token("agent-1", OPAQUE, PG_READ).await;
    let e = d.begin(&token, &["orders-db-read"]).await.unwrap_err();
    assert_eq!(reason(&e), "introspection_unavailable");
    assert_eq!(
        e.code(),
        tonic::Code::Unavailable,
        "the backend's fault, not the caller's"
    );
    assert!(d.outstanding().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_introspect_always_a_jwt_the_as_will_not_vouch_for_is_refused_fail_closed() {
    let auth = auth();
    // oidc-provider refuses to introspect the JWTs it signs (400 unsupported_token_type): under
    // `always` the AS's word is required on top of the signature, so without it: no.
    let d = daemon(&auth, "always", POSTGRES, &secret("credbroker-rs")).await;
    let jwt = auth.token("agent-1", POSTGRES, PG_READ).await;
    let e = d.begin(&jwt, &["orders-db-read"]).await.unwrap_err();
    assert_eq!(reason(&e), "introspection_unavailable");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(d.outstanding().is_empty());
    let d2 = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    d2.begin(&jwt, &["orders-db-read"])
        .await
        .expect("without introspection the same JWT is accepted on its signature");
}
