//! Getting the downstream token, per mode.
//!
//! * `token-exchange` (RFC 8693 §2.1): `subject_token` = the caller's access token, an optional
//!   `actor_token` naming the workload, `requested_token_type` = access token.
//! * `id-jag` (draft-ietf-oauth-identity-assertion-authz-grant): the same exchange at the IdP
//!   with `requested_token_type` = ID-JAG and `audience` = the resource's AS, then the ID-JAG
//!   redeemed there with the JWT bearer grant (RFC 7523 §2.1).
//! * `client-credentials` (RFC 6749 §4.4): credbroker's own client; the person is named only in
//!   credbroker's audit log.

use std::time::{Duration, SystemTime};

use credbroker_provider_api::{ErrorKind, IssueRequest, ProviderError, SecretValue};
use serde_json::json;

use crate::answer::{Excess, Expect, Token, refusal, token};
use crate::client::Client;
use crate::grant::{Grant, Mode};
use crate::key::secs;
use crate::provider::OauthProvider;

pub(crate) const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub(crate) const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub(crate) const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// An actor token lives a minute: long enough for one exchange, useless if it leaks.
const ACTOR_LIFETIME: u64 = 60;

/// The token issued, and the server that issued it (the one to revoke it at).
pub(crate) struct Obtained {
    pub(crate) token: Token,
    pub(crate) at: Which,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Idp,
    ResourceAs,
}

impl OauthProvider {
    /// The server a grant's tokens come from (and are revoked at).
    pub(crate) fn server_for(&self, mode: Mode) -> Result<(&Client, Which), ProviderError> {
        match (mode, &self.resource_as) {
            (Mode::IdJag, Some(c)) => Ok((c, Which::ResourceAs)),
            (Mode::IdJag, None) => Err(ProviderError::new(
                ErrorKind::Config,
                "mode id-jag needs the instance's resource_as",
            )),
            _ => Ok((&self.idp, Which::Idp)),
        }
    }

    pub(crate) async fn obtain(
        &self,
        req: &IssueRequest<'_>,
        g: &Grant,
    ) -> Result<Obtained, ProviderError> {
        let scope = g.scope();
        let subject = if g.mode.uses_subject() {
            Some(self.subject(req)?)
        } else {
            None
        };
        let actor = match (g.mode.uses_subject(), self.wants_actor(g)) {
            (true, true) => Some(self.actor_token(req)?),
            _ => None,
        };
        let sent: Vec<&str> = [subject, actor.as_ref()]
            .into_iter()
            .flatten()
            .map(SecretValue::expose)
            .collect();
        let idp = self.idp.endpoints().await?.token.clone();
        let mut fields: Vec<(&str, &str)> = Vec::new();
        match g.mode {
            Mode::ClientCredentials => fields.push(("grant_type", "client_credentials")),
            Mode::TokenExchange | Mode::IdJag => {
                fields.push(("grant_type", TOKEN_EXCHANGE));
                fields.push(("subject_token", sent[0]));
                fields.push(("subject_token_type", ACCESS_TOKEN));
                let wanted = if g.mode == Mode::IdJag {
                    ID_JAG
                } else {
                    ACCESS_TOKEN
                };
                fields.push(("requested_token_type", wanted));
                if let Some(a) = &actor {
                    fields.push(("actor_token", a.expose()));
                    fields.push(("actor_token_type", JWT));
                }
            }
        }
        let jag_audience = self.resource_as.as_ref().map(|c| c.server.issuer.as_str());
        match (g.mode, &g.audience) {
            (Mode::IdJag, _) => fields.extend(jag_audience.map(|a| ("audience", a))),
            (_, Some(a)) => fields.push(("audience", a)),
            _ => {}
        }
        if let Some(r) = &g.resource {
            fields.push(("resource", r));
        }
        fields.push(("scope", &scope));
        let what = match g.mode {
            Mode::IdJag => "ID-JAG request",
            Mode::TokenExchange => "token exchange",
            Mode::ClientCredentials => "client credentials",
        };
        let audiences: Vec<&str> = [g.resource.as_deref(), g.audience.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let answer = self.idp.post(&idp, &fields, true, req.now).await?;
        if !answer.status.is_success() {
            return Err(refusal(what, &answer, &sent));
        }
        let expect = Expect {
            what,
            issued_token_type: (g.mode != Mode::ClientCredentials).then_some(
                if g.mode == Mode::IdJag {
                    ID_JAG
                } else {
                    ACCESS_TOKEN
                },
            ),
            requires_issued_type: g.mode != Mode::ClientCredentials,
            scope: &g.scope,
            audiences: &audiences,
            max_lifetime: self.idp.server.max_token_lifetime,
            now: req.now,
        };
        if g.mode != Mode::IdJag {
            return self
                .checked(token(&answer, &expect), Which::Idp, req.now)
                .await;
        }
        // The ID-JAG is an assertion, not a token for the API: its scope is what was asked
        // (the resource AS decides), and it is single-use, so it is never revoked.
        let jag = match token(
            &answer,
            &Expect {
                max_lifetime: Duration::from_secs(3600),
                audiences: &[],
                ..expect
            },
        ) {
            Ok(t) => t.value,
            Err(Ok(e)) => return Err(e),
            Err(Err((Excess(m), _))) => {
                return Err(ProviderError::new(
                    ErrorKind::Denied,
                    format!("{what}: {m}"),
                ));
            }
        };
        let (ras, _) = self.server_for(Mode::IdJag)?;
        let url = ras.endpoints().await?.token.clone();
        let fields = [("grant_type", JWT_BEARER), ("assertion", jag.expose())];
        let answer = ras.post(&url, &fields, true, req.now).await?;
        let mut sent = sent;
        sent.push(jag.expose());
        if !answer.status.is_success() {
            return Err(refusal("ID-JAG redemption", &answer, &sent));
        }
        let expect = Expect {
            what: "ID-JAG redemption",
            issued_token_type: None,
            requires_issued_type: false,
            scope: &g.scope,
            audiences: &audiences,
            max_lifetime: ras.server.max_token_lifetime,
            now: req.now,
        };
        self.checked(token(&answer, &expect), Which::ResourceAs, req.now)
            .await
    }

    /// A token that exceeds the request is taken back before it is refused.
    async fn checked(
        &self,
        t: Result<Token, Result<ProviderError, (Excess, Token)>>,
        at: Which,
        now: SystemTime,
    ) -> Result<Obtained, ProviderError> {
        match t {
            Ok(token) => Ok(Obtained { token, at }),
            Err(Ok(e)) => Err(e),
            Err(Err((Excess(m), t))) => {
                let taken_back = match self.revoke_token(at, &t.value, now).await {
                    Ok(_) => "it was revoked",
                    Err(_) => "revoking it failed: it lives until it expires",
                };
                tracing::warn!(provider = %self.name, "{m}; {taken_back}");
                Err(ProviderError::new(
                    ErrorKind::Denied,
                    format!("{m}; {taken_back}"),
                ))
            }
        }
    }

    fn subject<'r>(&self, req: &IssueRequest<'r>) -> Result<&'r SecretValue, ProviderError> {
        let token = req.subject_token.ok_or_else(|| {
            ProviderError::new(ErrorKind::Config, "no caller token was passed to exchange")
        })?;
        // The caller's token goes only to a server that is meant to see it: its issuer, or one
        // the operator listed as accepting that issuer's tokens.
        let issuer = req.task.issuer.trim_end_matches('/');
        if !self.subject_issuers.iter().any(|i| i == issuer) {
            return Err(ProviderError::new(
                ErrorKind::Denied,
                format!(
                    "tokens from {issuer} are not sent to {} (subject_issuers)",
                    self.idp.server.issuer
                ),
            ));
        }
        Ok(token)
    }

    pub(crate) fn wants_actor(&self, g: &Grant) -> bool {
        g.actor_token
            .unwrap_or(self.actor_key.is_some() || self.idp.server.client.key.is_some())
    }

    /// A short JWT naming the calling workload (RFC 8693 §2.1 `actor_token`), signed by
    /// credbroker for the IdP: `iss` = credbroker's client id there, `aud` = the IdP, `jti` =
    /// the lease id, so the IdP's log and credbroker's name the same issue.
    fn actor_token(&self, req: &IssueRequest<'_>) -> Result<SecretValue, ProviderError> {
        let key = self
            .actor_key
            .as_ref()
            .or(self.idp.server.client.key.as_ref())
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Config,
                    "actor_token needs actor_key_file or a private_key_jwt key",
                )
            })?;
        let t = secs(req.now);
        let claims = json!({
            "iss": self.idp.server.client.client_id,
            "sub": self.actor_subject.replace("{workload}", &req.task.workload),
            "aud": self.idp.server.issuer,
            "iat": t, "exp": t + ACTOR_LIFETIME, "jti": req.lease_id,
            "task_id": req.task.task_id, "tool": req.task.tool,
        });
        key.sign("JWT", &claims)
            .map_err(|e| ProviderError::new(ErrorKind::Config, format!("actor token: {e}")))
    }
}
