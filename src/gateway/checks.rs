//! The checks an MCP request passes, in order: its token (for this resource, from one of its
//! authorization servers), the caller's rate limits, the scopes its tool needs, its session.
//! Each failure is a [`Refusal`] with its reason code.

use std::time::{Instant, SystemTime};

use hyper::{StatusCode, header};

use super::challenge;
use super::handler::{Gateway, SESSION};
use super::message::{self, Need};
use super::reply::Refusal;
use super::sessions::{self, Principal};
use crate::record::reason;
use crate::token::{Rejection, Verified};

impl Gateway {
    /// The bearer token, verified, for this resource and one of its authorization servers.
    pub(super) async fn authenticate(
        &self,
        parts: &http::request::Parts,
        msg: Option<&message::Message>,
    ) -> Result<Verified, Refusal> {
        // RFC 9700 and the MCP authorization spec: never in the URI, where logs keep it.
        let in_query = parts.uri.query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv.split('=').next() == Some("access_token"))
        });
        if in_query {
            let www = challenge::bearer(
                &self.cfg,
                Some((
                    "invalid_request",
                    "tokens in the URI are refused; send Authorization: Bearer",
                )),
                &[],
            );
            return Err(Refusal::challenge(
                StatusCode::BAD_REQUEST,
                reason::TOKEN_IN_QUERY,
                "an access token in the URI is refused",
                www,
            ));
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            let scopes = match msg.map(|m| message::need(&self.cfg, m)) {
                Some(Need::Scopes(s)) => s,
                _ => Vec::new(),
            };
            let www = challenge::bearer(&self.cfg, None, &scopes);
            return Err(Refusal::challenge(
                StatusCode::UNAUTHORIZED,
                reason::NO_TOKEN,
                "this MCP server requires an OAuth 2.1 access token",
                www,
            ));
        };
        let checked = match self.verifier.verify(token, SystemTime::now()).await {
            Ok(v) => v
                .check_audience(self.cfg.resource.as_str())
                .and_then(|()| self.check_issuer(&v))
                .map(|()| v),
            Err((r, _)) => Err(r),
        };
        checked.map_err(|r| {
            let status = if r.is_unavailable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNAUTHORIZED
            };
            let www = challenge::bearer(&self.cfg, Some(("invalid_token", &r.describe())), &[]);
            Refusal::challenge(status, r.reason(), r.to_string(), www)
        })
    }

    fn check_issuer(&self, v: &Verified) -> Result<(), Rejection> {
        if self.cfg.authorization_servers.contains(&v.claims.issuer) {
            Ok(())
        } else {
            Err(Rejection::IssuerNotAccepted)
        }
    }

    /// The scopes the message's tool (resource, prompt) needs, all held.
    pub(super) fn authorize(&self, v: &Verified, msg: &message::Message) -> Result<(), Refusal> {
        let what = || {
            format!(
                "{} {}",
                msg.method.as_deref().unwrap_or_default(),
                msg.name.as_deref().unwrap_or_default()
            )
        };
        match message::need(&self.cfg, msg) {
            Need::Token => Ok(()),
            Need::Denied => {
                let www = challenge::bearer(
                    &self.cfg,
                    Some((
                        "insufficient_scope",
                        "no scope allows this through the gateway",
                    )),
                    &[],
                );
                Err(Refusal::challenge(
                    StatusCode::FORBIDDEN,
                    reason::TOOL_NOT_ALLOWED,
                    format!("{} is not allowed through this gateway", what()),
                    www,
                ))
            }
            Need::Scopes(needed) => {
                let missing: Vec<String> = needed
                    .iter()
                    .filter(|s| !v.claims.has_scope(s))
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    return Ok(());
                }
                let ask = challenge::step_up(&self.cfg, &v.claims.scopes, &missing);
                let www = challenge::bearer(
                    &self.cfg,
                    Some((
                        "insufficient_scope",
                        &format!("needs {}", missing.join(" ")),
                    )),
                    &ask,
                );
                Err(Refusal::challenge(
                    StatusCode::FORBIDDEN,
                    reason::INSUFFICIENT_SCOPE,
                    format!("{} needs scope {}", what(), missing.join(" ")),
                    www,
                ))
            }
        }
    }

    /// One request off the caller's client and owner budgets; over either, 429 with how long
    /// until the next request would pass.
    pub(super) fn rate_limit(&self, v: &Verified) -> Result<(), Refusal> {
        let now = Instant::now();
        let c = &v.claims;
        // The client's budget first: a request it refuses does not spend the owner's.
        let client = self.client_limit.as_ref().map_or(Ok(()), |l| {
            l.take(&format!("{}\n{}", c.issuer, c.client_id), now)
        });
        let owner = || match (
            &self.owner_limit,
            crate::policy::attribute(c, &self.attribution).id,
        ) {
            (Some(l), Some(owner)) => l.take(&format!("{}\n{owner}", c.issuer), now),
            _ => Ok(()),
        };
        let (which, wait) = match client.map(|()| owner()) {
            Err(w) => ("client", w),
            Ok(Err(w)) => ("owner", w),
            Ok(Ok(())) => return Ok(()),
        };
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Err(Refusal {
            retry_after: Some(secs),
            ..Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                -32001,
                reason::RATE_LIMITED,
                format!("over this gateway's per-{which} rate limit; retry in {secs}s"),
            )
        })
    }

    /// A request in a session must come from whoever opened it.
    pub(super) fn check_session(
        &self,
        headers: &hyper::HeaderMap,
        who: &Principal,
    ) -> Result<(), Refusal> {
        let Some(session) = headers.get(SESSION).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        match self.sessions.check(session, who, Instant::now()) {
            Ok(()) => Ok(()),
            Err(why) => {
                if why == sessions::Refusal::NotYours {
                    // Not the id itself: whoever holds it may use it.
                    tracing::warn!(gateway = %self.cfg.name, subject = %who.subject,
                        client_id = %who.client_id, "a session opened by another principal was presented");
                }
                // The same answer either way: whether a session exists is not for others to learn.
                Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    -32001,
                    reason::SESSION_UNKNOWN,
                    "no such session: start a new one with initialize",
                ))
            }
        }
    }
}
