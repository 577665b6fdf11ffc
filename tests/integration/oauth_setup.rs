//! Two real authorization servers for the `oauth` provider's tests: the IdP (oidc-provider,
//! which issued the caller's token and exchanges it) and the downstream API's own AS (a second
//! oidc-provider, which redeems ID-JAGs). Both issue opaque tokens for the downstream API, so
//! both introspect and revoke them.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{
    ACTOR_KEY_KID, AuthServer, CLIENT_KEY_KID, Options, PG_READ, POSTGRES, actor_key_pem,
    client_key_pem, client_public_jwks, secret,
};
use crate::support::{free_port, write_secret};

pub const CRM: &str = "https://crm.example.test/api";
pub const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// credbroker's client at the resource's AS.
pub const AT_CRM: &str = "credbroker-at-crm";

pub struct Servers {
    pub idp: AuthServer,
    pub crm: AuthServer,
}

fn crm_resource() -> (String, Value) {
    (
        CRM.to_string(),
        json!({"alg": "ES256", "ttl": 300, "scope": "crm.read crm.write crm.admin", "format": "opaque"}),
    )
}

impl Servers {
    pub fn start() -> Self {
        let idp_port = free_port();
        let crm_port = free_port();
        let idp_issuer = format!("http://127.0.0.1:{idp_port}");
        let crm_issuer = format!("http://127.0.0.1:{crm_port}");
        let idp = AuthServer::start_with(Options {
            port: Some(idp_port),
            resource_specs: vec![crm_resource()],
            extra_clients: vec![
                // credbroker: private_key_jwt, may exchange, signs actor tokens with its keys.
                json!({"client_id": "credbroker", "token_endpoint_auth_method": "private_key_jwt",
                       "jwks": client_public_jwks(), "exchange": true,
                       "scope": "crm.read crm.write crm.admin",
                       "grant_types": ["client_credentials", EXCHANGE]}),
                // A client the IdP does not let exchange (invalid_grant)…
                json!({"client_id": "credbroker-post", "client_secret": secret("credbroker-post"),
                       "token_endpoint_auth_method": "client_secret_post",
                       "scope": "crm.read crm.write", "grant_types": ["client_credentials", EXCHANGE]}),
                // …and one without the grant type at all (unauthorized_client).
                json!({"client_id": "credbroker-cc", "client_secret": secret("credbroker-cc"),
                       "scope": "crm.read crm.write", "exchange": true,
                       "grant_types": ["client_credentials"]}),
            ],
            id_jag: json!({ crm_issuer.clone(): { "credbroker": AT_CRM } }),
            ..Default::default()
        });
        let crm = AuthServer::start_with(Options {
            port: Some(crm_port),
            resource_specs: vec![crm_resource()],
            extra_clients: vec![json!({"client_id": AT_CRM, "client_secret": secret(AT_CRM),
                                       "scope": "crm.read crm.write",
                                       "grant_types": [JWT_BEARER]})],
            trusted_idps: vec![idp_issuer],
            ..Default::default()
        });
        Self { idp, crm }
    }

    /// carol's token, as agent-7 holds it: `sub` = carol, `act` = agent-7, for the MCP server.
    pub async fn carol(&self) -> String {
        self.idp
            .delegated_token("agent-7", "carol@example.com", POSTGRES, PG_READ)
            .await
    }

    /// Token events at `server` for `grant_type`.
    pub async fn exchanges(server: &AuthServer, grant_type: &str) -> Vec<Value> {
        server
            .log()
            .await
            .into_iter()
            .filter(|e| e["event"] == "token" && e["grant_type"] == grant_type)
            .collect()
    }
}

/// The daemon's configuration: the `oauth` instances and grants, added to the workload.
pub fn config(dir: &Path, s: &Servers, provider_extra: &str) -> String {
    let d = dir.display();
    std::fs::copy(client_key_pem(), dir.join("client-key.pem")).expect("the client key copies");
    std::fs::copy(actor_key_pem(), dir.join("actor-key.pem")).expect("the actor key copies");
    for f in ["client-key.pem", "actor-key.pem"] {
        let pem = std::fs::read(dir.join(f)).expect("the key reads back");
        write_secret(dir.join(f), pem).expect("the key is made private");
    }
    for c in [AT_CRM, "credbroker-post", "credbroker-cc"] {
        write_secret(dir.join(format!("{c}.secret")), secret(c)).expect("a secret is written");
    }
    let grant = |name: &str, provider: &str, params: &str| {
        format!(
            "\n[[grant]]\nname = \"{name}\"\nprovider = \"{provider}\"\nscopes = [\"mcp.tool:postgres.read\"]\nmax_ttl = \"10m\"\nparams = {{ {params} }}\n"
        )
    };
    let crm = format!("resource = \"{CRM}\", scope = [\"crm.read\", \"crm.write\"]");
    let grants = [
        grant("crm", "idp", &format!("mode = \"token-exchange\", {crm}")),
        grant("crm-jag", "idp", &format!("mode = \"id-jag\", {crm}")),
        grant("crm-service", "idp", &format!("mode = \"client-credentials\", {crm}")),
        grant(
            "crm-unknown",
            "idp",
            "mode = \"token-exchange\", resource = \"https://unknown.example.test/\", scope = [\"crm.read\"]",
        ),
        grant("crm-post", "idp-post", &format!("mode = \"token-exchange\", {crm}")),
        grant("crm-cc", "idp-cc", &format!("mode = \"token-exchange\", {crm}")),
    ]
    .concat();
    let extra = format!(
        r#"
[[provider]]
name = "idp"
type = "oauth"
issuer = "{idp}"
client_id = "credbroker"
client_auth = "private_key_jwt"
private_key_file = "{d}/client-key.pem"
private_key_id = "{CLIENT_KEY_KID}"
actor_key_file = "{d}/actor-key.pem"
actor_key_id = "{ACTOR_KEY_KID}"
actor_subject = "workload:{{workload}}"
max_token_lifetime = "10m"
timeout = "1s"
{provider_extra}
[provider.resource_as]
issuer = "{ras}"
client_id = "{AT_CRM}"
client_secret_file = "{d}/{AT_CRM}.secret"
max_token_lifetime = "10m"

[[provider]]
name = "idp-post"
type = "oauth"
issuer = "{idp}"
client_id = "credbroker-post"
client_auth = "client_secret_post"
client_secret_file = "{d}/credbroker-post.secret"

[[provider]]
name = "idp-cc"
type = "oauth"
issuer = "{idp}"
client_id = "credbroker-cc"
client_secret_file = "{d}/credbroker-cc.secret"
{grants}"#,
        idp = s.idp.issuer,
        ras = s.crm.issuer,
    );
    base_config(dir, &s.idp.issuer, &extra).replace(
        r#"grants = ["orders-db-read"]"#,
        r#"grants = ["orders-db-read", "crm", "crm-jag", "crm-service", "crm-unknown", "crm-post", "crm-cc"]"#,
    )
}

pub async fn daemon(s: &Servers, log_level: &str) -> Daemon {
    Daemon::start_logging(|dir| config(dir, s, ""), log_level).await
}

/// The audit record of a lease whose outcome was unknown, once it is settled as residual (no
/// AS can look a token up by a client-chosen id).
pub async fn residual(d: &Daemon) -> Value {
    let settled = |a: &[Value]| {
        a.iter()
            .find(|r| {
                r["event"] == "lease_expired_unrevoked"
                    && r["reason"] == "provider_cannot_revoke"
                    && r["detail"]["residual_until"].is_string()
            })
            .cloned()
    };
    crate::support::eventually(
        std::time::Duration::from_secs(15),
        "the unknown exchange settled as residual",
        || async { settled(&d.audit()).is_some() },
    )
    .await;
    settled(&d.audit()).unwrap_or_default()
}
