//! Taking a token back: RFC 7009 revocation, confirmed by RFC 7662 introspection.
//!
//! With an introspection endpoint: a token already inactive is `AlreadyGone` (nothing is sent
//! to the revocation endpoint); else it is revoked, then introspected again — inactive is
//! `Revoked`, still active is `WillExpire` at its `exp` (the AS accepted the revocation but the
//! token still works: the residual is audited, never called revoked). Without one, a 200 from
//! the revocation endpoint is `Revoked` (the AS's word). Without a revocation endpoint, or when
//! the AS cannot revoke this kind of token (`unsupported_token_type`), the token lives until it
//! expires: `WillExpire`, audited as residual, as AWS `expire` is.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credbroker_provider_api::{ErrorKind, ProviderError, Revoked, SecretValue};
use serde_json::Value;

use crate::answer::refusal;
use crate::client::Client;
use crate::exchange::Which;
use crate::provider::OauthProvider;

/// What an introspection said.
pub(crate) enum Seen {
    Active { exp: Option<SystemTime> },
    Inactive,
}

impl OauthProvider {
    pub(crate) fn client(&self, at: Which) -> &Client {
        match (at, &self.resource_as) {
            (Which::ResourceAs, Some(c)) => c,
            _ => &self.idp,
        }
    }

    /// Revokes `token` at the server that issued it. `expires_at` is the residual bound when
    /// the AS cannot take it back.
    pub(crate) async fn revoke_token(
        &self,
        at: Which,
        token: &SecretValue,
        now: SystemTime,
    ) -> Result<Revoked, ProviderError> {
        self.revoke_at(
            at,
            token,
            now,
            now + self.client(at).server.max_token_lifetime,
        )
        .await
    }

    pub(crate) async fn revoke_at(
        &self,
        at: Which,
        token: &SecretValue,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<Revoked, ProviderError> {
        let c = self.client(at);
        let ep = c.endpoints().await?;
        let introspect = ep.introspection.clone();
        if let Some(url) = &introspect
            && let Seen::Inactive = introspected(c, url, token, now).await?
        {
            return Ok(Revoked::AlreadyGone);
        }
        let Some(url) = ep.revocation.clone() else {
            return Ok(Revoked::WillExpire { at: expires_at });
        };
        let fields = [
            ("token", token.expose()),
            ("token_type_hint", "access_token"),
        ];
        let a = c.post(&url, &fields, false, now).await?;
        if a.error() == "unsupported_token_type" {
            return Ok(Revoked::WillExpire { at: expires_at });
        }
        if !a.status.is_success() {
            let mut e = refusal("revocation", &a, &[token.expose()]);
            if e.kind == ErrorKind::OutcomeUnknown {
                e.kind = ErrorKind::Unavailable;
            }
            return Err(e);
        }
        let Some(url) = introspect else {
            return Ok(Revoked::Revoked);
        };
        match introspected(c, &url, token, now).await? {
            Seen::Inactive => Ok(Revoked::Revoked),
            Seen::Active { exp } => {
                tracing::warn!(
                    provider = %self.name,
                    "the authorization server accepted the revocation but still calls the token active"
                );
                Ok(Revoked::WillExpire {
                    at: exp.unwrap_or(expires_at),
                })
            }
        }
    }
}

/// RFC 7662 §2: `active` and `exp` are all credbroker reads.
pub(crate) async fn introspected(
    c: &Client,
    url: &str,
    token: &SecretValue,
    now: SystemTime,
) -> Result<Seen, ProviderError> {
    let fields = [
        ("token", token.expose()),
        ("token_type_hint", "access_token"),
    ];
    let a = c.post(url, &fields, false, now).await?;
    if !a.status.is_success() {
        let mut e = refusal("introspection", &a, &[token.expose()]);
        if e.kind == ErrorKind::OutcomeUnknown {
            e.kind = ErrorKind::Unavailable;
        }
        return Err(e);
    }
    match a.body.get("active").and_then(Value::as_bool) {
        Some(true) => Ok(Seen::Active {
            exp: a
                .body
                .get("exp")
                .and_then(Value::as_u64)
                .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        }),
        Some(false) => Ok(Seen::Inactive),
        None => Err(ProviderError::new(
            ErrorKind::Unavailable,
            "introspection: the answer has no boolean active",
        )),
    }
}
