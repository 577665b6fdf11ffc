//! The OAuth provider: an access token for a downstream API, obtained on behalf of the caller's
//! user and taken back when the task ends.
//!
//! The MCP specification forbids passing the caller's token through to another API. This
//! provider exchanges it instead, at the authorization server that issued it, for a token
//! meant for the downstream API alone, narrowed to the grant's scopes:
//!
//! * **`token-exchange`** (RFC 8693): `subject_token` is the caller's access token; the
//!   `actor_token` is a one-minute JWT credbroker signs naming the calling workload (the MCP
//!   server), so the issued token's `act` claim reads *the MCP server, acting for the agent,
//!   acting for the user*.
//! * **`id-jag`** (draft-ietf-oauth-identity-assertion-authz-grant): the same exchange at the
//!   IdP yields an ID-JAG for the resource's own authorization server (`resource_as`), which
//!   credbroker redeems there with the JWT bearer grant (RFC 7523).
//! * **`client-credentials`**: for APIs that only know service principals; the person is named
//!   in credbroker's audit log only.
//!
//! **The caller's token** reaches this provider only (the broker passes it to providers whose
//! `exchanges_caller_token` is true), is sent only to the IdP, and only when the token's issuer
//! is in `subject_issuers` (default: the IdP itself). It is never journaled.
//!
//! **What comes back is checked**: a scope beyond the grant's, a JWT `aud` beyond its
//! resource/audience, or a lifetime beyond `max_token_lifetime`, gets the token revoked at once
//! and the issue refused (`Denied`).
//! The scope list is the only parameter a request may narrow; the mode, audience and resource
//! are fixed, so a request that would widen the scope or move the audience is refused by the
//! broker before the AS is called.
//!
//! **Revocation** (`revoke.rs`) is RFC 7009 at task end, confirmed by RFC 7662 introspection;
//! without a revocation endpoint the residual life is audited. **An unknown outcome** (a timeout
//! after sending, a 502/504) cannot be looked up — no AS lists tokens by a client-chosen id —
//! so `reconcile` answers `WillExpire` at `max_token_lifetime` from now, audited as residual.
//! Errors map as `answer.rs` tabulates.
//!
//! **Not an OAuth client crate** (`oauth2`, `openidconnect`): both model the authorization
//! code flow for user agents; token exchange, actor tokens and ID-JAGs are outside them, and
//! their token types are plain strings. The three requests here are form POSTs over the
//! reqwest and jsonwebtoken already in the tree, with every secret in a zeroized buffer.
//!
//! Configuration (`[[provider]] type = "oauth"`; grant parameters are in `grant.rs`):
//! ```toml
//! issuer = "https://idp.example.com"        # RFC 8414 / OIDC discovery, unless discovery = false
//! # token_endpoint = "…"  revocation_endpoint = "…"  introspection_endpoint = "…"
//! client_id = "credbroker"
//! client_auth = "private_key_jwt"           # client_secret_basic (default) | client_secret_post
//! private_key_credential = "idp-client-key" # PEM; or private_key_file; private_key_id = "kid"
//! # client_secret_credential = "idp-secret" # or client_secret_file
//! # actor_key_credential = "actor-key"      # defaults to the private_key_jwt key; actor_key_id
//! actor_subject = "{workload}"              # the actor token's sub
//! max_token_lifetime = "1h"                 # the longest token the AS issues
//! # subject_issuers = ["https://idp.example.com"]
//! timeout = "10s"
//! [provider.resource_as]                    # id-jag only: the same keys, for the resource's AS
//! ```

mod answer;
mod client;
mod exchange;
mod grant;
mod key;
mod online;
mod provider;
mod revoke;
mod settings;

use std::sync::Arc;

use credbroker_provider_api::{Env, ParamError, Params, Provider, ProviderFactory};

use provider::OauthProvider;

pub struct OauthFactory;

impl ProviderFactory for OauthFactory {
    fn kind(&self) -> &'static str {
        "oauth"
    }

    fn build(
        &self,
        name: &str,
        config: &Params,
        env: &dyn Env,
    ) -> Result<Arc<dyn Provider>, Vec<ParamError>> {
        let s = settings::parse(config, env)?;
        let idp = client::Client::new(s.idp, s.timeout)
            .map_err(|e| vec![ParamError::new("issuer", e)])?;
        let resource_as = s
            .resource_as
            .map(|r| client::Client::new(r, s.timeout))
            .transpose()
            .map_err(|e| vec![ParamError::new("resource_as.issuer", e)])?;
        Ok(Arc::new(OauthProvider {
            name: name.to_string(),
            idp,
            resource_as,
            actor_key: s.actor_key,
            actor_subject: s.actor_subject,
            subject_issuers: s.subject_issuers,
        }))
    }
}

#[cfg(test)]
mod tests;
