//! The provider: one downstream access token per task credential, revoked when the task ends.

use std::collections::BTreeMap;
use std::time::SystemTime;

use credbroker_provider_api::{
    Credential, ErrorKind, IssueRequest, Issued, LeaseRef, ParamError, ParamRule, Params, Provider,
    ProviderError, ProviderHealth, Reconciled, RevocationHandle, Revoked, Role, SecretValue,
    clamp_rfc3339,
};

use crate::client::Client;
use crate::exchange::Which;
use crate::grant::{self, Grant, Mode};
use crate::key::SigningKey;

pub(crate) struct OauthProvider {
    pub(crate) name: String,
    pub(crate) idp: Client,
    pub(crate) resource_as: Option<Client>,
    pub(crate) actor_key: Option<SigningKey>,
    pub(crate) actor_subject: String,
    pub(crate) subject_issuers: Vec<String>,
}

/// `sha256:` and the first 12 hex digits of the token's digest: names it without showing it.
pub(crate) fn fingerprint(token: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    format!("sha256:{}", &hex::encode(d.as_ref())[..12])
}

impl OauthProvider {
    /// The grant, checked against this instance too (what `check_grant` refuses, `issue` does).
    pub(crate) fn grant(&self, params: &Params) -> Result<Grant, Vec<ParamError>> {
        let g = grant::parse(params)?;
        let mut problems = Vec::new();
        if g.mode == Mode::IdJag {
            match &self.resource_as {
                None => problems.push(ParamError::new(
                    "mode",
                    "id-jag needs the provider's resource_as (the resource's authorization server)",
                )),
                Some(r) if g.audience.as_deref().is_some_and(|a| a != r.server.issuer) => {
                    problems.push(ParamError::new(
                        "audience",
                        format!(
                            "an ID-JAG's audience is the resource's authorization server, {}",
                            r.server.issuer
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if g.actor_token == Some(true)
            && self.actor_key.is_none()
            && self.idp.server.client.key.is_none()
        {
            problems.push(ParamError::new(
                "actor_token",
                "the provider has no key to sign actor tokens (actor_key_file, actor_key_credential, or a private_key_jwt key)",
            ));
        }
        if problems.is_empty() {
            Ok(g)
        } else {
            Err(problems)
        }
    }

    fn config_error(problems: &[ParamError]) -> ProviderError {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        ProviderError::new(ErrorKind::Config, list.join("; "))
    }
}

#[async_trait::async_trait]
impl Provider for OauthProvider {
    fn kind(&self) -> &'static str {
        "oauth"
    }

    fn check_grant(&self, params: &Params) -> Result<(), Vec<ParamError>> {
        self.grant(params).map(|_| ())
    }

    fn exchanges_caller_token(&self) -> bool {
        true
    }

    fn param_rules(&self) -> &'static [ParamRule] {
        grant::RULES
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, ProviderError> {
        if req.role != Role::Credential {
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                "oauth issues no task scope",
            ));
        }
        let g = self.grant(req.params).map_err(|p| Self::config_error(&p))?;
        let got = self.obtain(req, &g).await?;
        let t = got.token;
        let issuer = &self.client(got.at).server.issuer;
        let mut public = BTreeMap::from([
            ("token_type".to_string(), t.token_type.clone()),
            ("scope".to_string(), t.scope.join(" ")),
            ("issuer".to_string(), issuer.clone()),
            ("mode".to_string(), g.mode.name().to_string()),
            (
                "expires_at".to_string(),
                humantime::format_rfc3339_seconds(clamp_rfc3339(t.expires_at)).to_string(),
            ),
        ]);
        if let Some(r) = &g.resource {
            public.insert("resource".into(), r.clone());
        }
        if let Some(a) = &g.audience {
            public.insert("audience".into(), a.clone());
        }
        let reference = format!(
            "{issuer} token {} scope {}",
            fingerprint(t.value.expose()),
            t.scope.join(" ")
        );
        Ok(Issued {
            handle: RevocationHandle {
                reference,
                secret: Some(t.value.duplicate()),
            },
            credential: Credential {
                public,
                secret: BTreeMap::from([("access_token".to_string(), t.value)]),
            },
            expires_at: t.expires_at,
            renewable: false,
        })
    }

    async fn revoke(
        &self,
        lease: &LeaseRef<'_>,
        now: SystemTime,
    ) -> Result<Revoked, ProviderError> {
        let at = match grant::parse(lease.params) {
            Ok(g) if g.mode == Mode::IdJag => Which::ResourceAs,
            _ => Which::Idp,
        };
        let token: &SecretValue = lease.handle.secret.as_ref().ok_or_else(|| {
            ProviderError::new(ErrorKind::Config, "the revocation handle carries no token")
        })?;
        self.revoke_at(at, token, now, lease.expires_at).await
    }

    /// No authorization server can list the tokens it issued by a client-chosen id, so the
    /// answer is the latest instant anything issued could still work.
    async fn reconcile(
        &self,
        req: &IssueRequest<'_>,
        now: SystemTime,
    ) -> Result<Reconciled, ProviderError> {
        let mut longest = self.idp.server.max_token_lifetime;
        if let Some(r) = &self.resource_as {
            longest = longest.max(r.server.max_token_lifetime);
        }
        Ok(Reconciled::WillExpire {
            at: req.expires_at.max(now + longest),
        })
    }

    fn explain(&self, grants: &[(&str, &Params)]) -> Vec<String> {
        crate::online::explain(self, grants)
    }

    async fn check_online(&self, grants: &[(&str, &Params)]) -> Vec<String> {
        crate::online::check(self, grants).await
    }

    async fn health(&self) -> ProviderHealth {
        let mut detail = format!(
            "client {} at {}",
            self.idp.server.client.client_id, self.idp.server.issuer
        );
        let mut healthy = true;
        // Read afresh: the cached endpoints say nothing of whether the server answers now.
        if let Err(e) = self.idp.discover().await {
            healthy = false;
            detail = format!("{detail}: {e}");
        }
        if let Some(r) = &self.resource_as {
            detail = format!(
                "{detail}; client {} at {}",
                r.server.client.client_id, r.server.issuer
            );
            if let Err(e) = r.discover().await {
                healthy = false;
                detail = format!("{detail}: {e}");
            }
        }
        ProviderHealth { healthy, detail }
    }
}
