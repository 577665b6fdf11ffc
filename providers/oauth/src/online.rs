//! `check-config`: what each grant needs from its authorization server (offline), and whether
//! the server has it (`--online`): its metadata, credbroker's client authentication there, and
//! the grant type, proved by a request that cannot issue anything.
//!
//! The probe for an exchange or an ID-JAG redemption sends a made-up subject token or
//! assertion. An AS checks the client before the grant (RFC 6749 §5.2 orders it so), so
//! `invalid_client` means the authentication failed, `unauthorized_client` or
//! `unsupported_grant_type` that this client may not use the grant, and `invalid_grant` or
//! `invalid_request` that both passed and only the made-up token was refused. A
//! `client-credentials` grant is asked for for real and the token revoked at once.

use std::time::SystemTime;

use credbroker_provider_api::Params;

use crate::client::Client;
use crate::exchange::{ACCESS_TOKEN, ID_JAG, JWT_BEARER, TOKEN_EXCHANGE, Which};
use crate::grant::Mode;
use crate::provider::OauthProvider;

fn grant_type(mode: Mode, at: Which) -> &'static str {
    match (mode, at) {
        (Mode::ClientCredentials, _) => "client_credentials",
        (Mode::IdJag, Which::ResourceAs) => JWT_BEARER,
        _ => TOKEN_EXCHANGE,
    }
}

pub(crate) fn explain(p: &OauthProvider, grants: &[(&str, &Params)]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, params) in grants {
        let Ok(g) = p.grant(params) else { continue };
        let idp = &p.idp.server;
        let target = [g.resource.as_deref(), g.audience.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" / ");
        let text = match g.mode {
            Mode::TokenExchange => format!(
                "grant {name}: at {}, client {} must be allowed RFC 8693 token exchange of access tokens for {target} with scope {:?}{}; the tokens it issues should be revocable (RFC 7009) and introspectable (RFC 7662), or their whole life is residual.",
                idp.issuer,
                idp.client.client_id,
                g.scope(),
                if p.wants_actor(&g) {
                    ", accepting actor tokens (JWT) signed by credbroker's key"
                } else {
                    ""
                }
            ),
            Mode::IdJag => format!(
                "grant {name}: at {}, client {} must be allowed to exchange access tokens for ID-JAGs for {}; there, client {} must be allowed the JWT bearer grant (RFC 7523) with ID-JAGs from {} for {target} with scope {:?}.",
                idp.issuer,
                idp.client.client_id,
                p.resource_as
                    .as_ref()
                    .map(|r| r.server.issuer.as_str())
                    .unwrap_or("?"),
                p.resource_as
                    .as_ref()
                    .map(|r| r.server.client.client_id.as_str())
                    .unwrap_or("?"),
                idp.issuer,
                g.scope()
            ),
            Mode::ClientCredentials => format!(
                "grant {name}: at {}, client {} must be allowed client credentials for {target} with scope {:?}; the downstream API sees credbroker's client, not the person (credbroker's audit log names them).",
                idp.issuer,
                idp.client.client_id,
                g.scope()
            ),
        };
        out.push(text);
    }
    out
}

pub(crate) async fn check(p: &OauthProvider, grants: &[(&str, &Params)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, params) in grants {
        let g = match p.grant(params) {
            Ok(g) => g,
            Err(e) => {
                problems.extend(e.iter().map(|e| format!("grant {name}: {e}")));
                continue;
            }
        };
        let mut servers = vec![Which::Idp];
        if g.mode == Mode::IdJag {
            servers.push(Which::ResourceAs);
        }
        for at in servers {
            let gt = grant_type(g.mode, at);
            let c = p.client(at);
            if let Err(e) = one(p, c, at, &g, gt).await {
                problems.push(format!("grant {name}: {}: {e}", c.server.issuer));
            }
        }
    }
    problems
}

async fn one(
    p: &OauthProvider,
    c: &Client,
    at: Which,
    g: &crate::grant::Grant,
    gt: &str,
) -> Result<(), String> {
    let ep = c.discover().await.map_err(|e| e.to_string())?;
    let method = c.server.client.method.name();
    if let Some(m) = &ep.auth_methods
        && !m.iter().any(|x| x == method)
    {
        return Err(format!(
            "the metadata does not list {method} among token_endpoint_auth_methods_supported"
        ));
    }
    if let Some(t) = &ep.grant_types
        && !t.iter().any(|x| x == gt)
    {
        return Err(format!(
            "the metadata does not list {gt} among grant_types_supported"
        ));
    }
    let now = SystemTime::now();
    let made_up = "credbroker-check-config-not-a-token";
    let scope = g.scope();
    let mut fields: Vec<(&str, &str)> = vec![("grant_type", gt), ("scope", &scope)];
    if let Some(r) = &g.resource {
        fields.push(("resource", r));
    }
    match (g.mode, at) {
        (Mode::ClientCredentials, _) => {
            if let Some(a) = &g.audience {
                fields.push(("audience", a));
            }
        }
        (Mode::IdJag, Which::ResourceAs) => {
            fields = vec![("grant_type", gt), ("assertion", made_up)]
        }
        (mode, _) => {
            fields.push(("subject_token", made_up));
            fields.push(("subject_token_type", ACCESS_TOKEN));
            fields.push((
                "requested_token_type",
                if mode == Mode::IdJag {
                    ID_JAG
                } else {
                    ACCESS_TOKEN
                },
            ));
        }
    }
    let a = c
        .post(&ep.token, &fields, true, now)
        .await
        .map_err(|e| e.to_string())?;
    let code = a.error().to_string();
    let client = &c.server.client.client_id;
    if a.status.is_success() {
        let token = a
            .body
            .get("access_token")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let token = credbroker_provider_api::SecretValue::new(token);
        let _ = p.revoke_token(at, &token, now).await;
        if g.mode == Mode::ClientCredentials {
            return Ok(());
        }
        return Err(
            "the authorization server issued a token for a made-up subject token (revoked)".into(),
        );
    }
    match code.as_str() {
        "invalid_grant" | "invalid_request" if g.mode != Mode::ClientCredentials => Ok(()),
        "invalid_client" => Err(format!(
            "client {client} failed to authenticate with {method}"
        )),
        "unauthorized_client" => Err(format!("client {client} may not use {gt}")),
        "unsupported_grant_type" => Err(format!("the server does not support {gt}")),
        "invalid_target" => Err("the server does not know the grant's resource or audience".into()),
        _ => Err(crate::answer::refusal("probe", &a, &[]).to_string()),
    }
}
