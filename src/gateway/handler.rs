//! One HTTP request through the gateway: metadata, or token → message → decision → upstream.
//! Every refusal is answered here and nothing refused reaches the upstream.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::Value;

use super::challenge::{self, WELL_KNOWN};
use super::limits::Limiter;
use super::message::{self, Need};
use super::proxy;
use super::reply::{self, Body};
use super::sessions::{Principal, Refusal, Sessions};
use crate::config::Attribution;
use crate::config::gateway::GatewayConfig;
use crate::token::{Rejection, Verified, Verifier};

/// A refusal, answered as it is (boxed: responses are large).
type Refused = Box<Response<Body>>;

pub struct Gateway {
    pub cfg: GatewayConfig,
    pub verifier: Arc<Verifier>,
    pub upstream: proxy::Upstream,
    pub(super) sessions: Sessions,
    pub(super) client_limit: Option<Limiter>,
    pub(super) owner_limit: Option<Limiter>,
    /// Client owners, for the per-owner limit (the same rules as the broker's).
    pub(super) attribution: Attribution,
}

impl Gateway {
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path == WELL_KNOWN || path == challenge::metadata_path(&self.cfg) {
            return match *req.method() {
                Method::GET | Method::HEAD => {
                    reply::json(StatusCode::OK, &challenge::metadata(&self.cfg))
                }
                _ => status(StatusCode::METHOD_NOT_ALLOWED, "metadata is read with GET"),
            };
        }
        if path != self.mcp_path() {
            return status(StatusCode::NOT_FOUND, "not an MCP endpoint of this gateway");
        }
        match *req.method() {
            Method::POST => self.post(req).await,
            // The 2025-11-25 listening stream and session end carry no tool: a valid token
            // for this resource is enough.
            Method::GET | Method::DELETE => self.other(req).await,
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MCP takes POST, GET and DELETE",
            ),
        }
    }

    fn mcp_path(&self) -> &str {
        match self.cfg.resource.path() {
            "" => "/",
            p => p,
        }
    }

    async fn post(&self, req: Request<Incoming>) -> Response<Body> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return reply::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Value::Null,
                -32600,
                "unsupported_media_type",
                "MCP messages are POSTed as application/json",
            );
        }
        let (parts, body) = req.into_parts();
        let body = match read_body(body, self.cfg.max_body_bytes).await {
            Some(b) => b,
            None => {
                return reply::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Value::Null,
                    -32600,
                    "request_too_large",
                    &format!("the body is over {} bytes", self.cfg.max_body_bytes),
                );
            }
        };
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let read = message::read(&body, header("mcp-method"), header("mcp-name"));
        let verified = match self.authenticate(&parts, read.as_ref().ok()).await {
            Ok(v) => v,
            Err(refused) => return *refused,
        };
        // Counted once the caller is known, whatever the request: refused ones cost too.
        let id = read.as_ref().map(|m| m.id.clone()).unwrap_or(Value::Null);
        if let Err(refused) = self.rate_limit(&verified, &id) {
            return *refused;
        }
        let msg = match read {
            Ok(m) => m,
            Err(bad) => {
                return reply::error(
                    StatusCode::BAD_REQUEST,
                    bad.id(),
                    bad.code(),
                    bad.reason(),
                    bad.message(),
                );
            }
        };
        if let Err(refused) = self.authorize(&verified, &msg) {
            return *refused;
        }
        let who = principal(&verified);
        if let Err(refused) = self.check_session(&parts.headers, &who, &msg.id) {
            return *refused;
        }
        let keep =
            |name: &str| message::may_call(&self.cfg, name, |s| verified.claims.has_scope(s));
        let list = msg.method.as_deref() == Some("tools/list");
        self.forward(
            &who,
            parts.method,
            &parts.headers,
            body,
            msg.id,
            list.then_some(&keep as &(dyn Fn(&str) -> bool + Sync)),
        )
        .await
    }

    async fn other(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, _) = req.into_parts();
        let who = match self.authenticate(&parts, None).await {
            Ok(v) => match self.rate_limit(&v, &Value::Null) {
                Ok(()) => principal(&v),
                Err(refused) => return *refused,
            },
            Err(refused) => return *refused,
        };
        if let Err(refused) = self.check_session(&parts.headers, &who, &Value::Null) {
            return *refused;
        }
        self.forward(
            &who,
            parts.method,
            &parts.headers,
            Bytes::new(),
            Value::Null,
            None,
        )
        .await
    }

    /// The bearer token, verified, for this resource and one of its authorization servers.
    async fn authenticate(
        &self,
        parts: &http::request::Parts,
        msg: Option<&message::Message>,
    ) -> Result<Verified, Refused> {
        let id = msg.map(|m| m.id.clone()).unwrap_or(Value::Null);
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
            return Err(Box::new(reply::challenge(
                StatusCode::BAD_REQUEST,
                id,
                "token_in_query",
                "an access token in the URI is refused",
                &www,
            )));
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
            return Err(Box::new(reply::challenge(
                StatusCode::UNAUTHORIZED,
                id,
                "no_token",
                "this MCP server requires an OAuth 2.1 access token",
                &www,
            )));
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
            Box::new(reply::challenge(status, id, r.code(), &r.to_string(), &www))
        })
    }

    fn check_issuer(&self, v: &Verified) -> Result<(), Rejection> {
        if self.cfg.authorization_servers.contains(&v.claims.issuer) {
            Ok(())
        } else {
            Err(Rejection::IssuerNotAccepted)
        }
    }

    fn authorize(&self, v: &Verified, msg: &message::Message) -> Result<(), Refused> {
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
                Err(Box::new(reply::challenge(
                    StatusCode::FORBIDDEN,
                    msg.id.clone(),
                    "tool_not_allowed",
                    &format!("{} is not allowed through this gateway", what()),
                    &www,
                )))
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
                Err(Box::new(reply::challenge(
                    StatusCode::FORBIDDEN,
                    msg.id.clone(),
                    "insufficient_scope",
                    &format!("{} needs scope {}", what(), missing.join(" ")),
                    &www,
                )))
            }
        }
    }

    /// One request off the caller's client and owner budgets; over either, 429 with how long
    /// until the next request would pass.
    fn rate_limit(&self, v: &Verified, id: &Value) -> Result<(), Refused> {
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
        let mut r = reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            id.clone(),
            -32001,
            "rate_limited",
            &format!("over this gateway's per-{which} rate limit; retry in {secs}s"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
        Err(Box::new(r))
    }

    /// A request in a session must come from whoever opened it.
    fn check_session(
        &self,
        headers: &hyper::HeaderMap,
        who: &Principal,
        id: &Value,
    ) -> Result<(), Refused> {
        let Some(session) = headers.get(SESSION).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        match self.sessions.check(session, who, Instant::now()) {
            Ok(()) => Ok(()),
            Err(why) => {
                if why == Refusal::NotYours {
                    // Not the id itself: whoever holds it may use it.
                    tracing::warn!(gateway = %self.cfg.name, subject = %who.subject,
                        client_id = %who.client_id, "a session opened by another principal was presented");
                }
                // The same answer either way: whether a session exists is not for others to learn.
                Err(Box::new(reply::error(
                    StatusCode::NOT_FOUND,
                    id.clone(),
                    -32001,
                    "session_unknown",
                    "no such session: start a new one with initialize",
                )))
            }
        }
    }

    async fn forward(
        &self,
        who: &Principal,
        method: Method,
        headers: &hyper::HeaderMap,
        body: Bytes,
        id: Value,
        keep: Option<&(dyn Fn(&str) -> bool + Sync)>,
    ) -> Response<Body> {
        let call_id = uuid::Uuid::now_v7().to_string();
        let asked = headers
            .get(SESSION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ending = method == Method::DELETE;
        let Some(req) = proxy::request(
            &self.cfg.upstream,
            method,
            headers,
            self.cfg.forward_token,
            &call_id,
            body,
        ) else {
            return status(
                StatusCode::BAD_REQUEST,
                "the request could not be passed on",
            );
        };
        let sent =
            tokio::time::timeout(self.cfg.upstream_timeout, self.upstream.request(req)).await;
        match sent {
            Ok(Ok(resp)) => {
                let opened = resp.headers().get(SESSION).and_then(|v| v.to_str().ok());
                match (&asked, opened) {
                    (None, Some(new)) => self.sessions.bind(new, who, Instant::now()),
                    (Some(old), _) if ending && resp.status().is_success() => {
                        self.sessions.end(old)
                    }
                    _ => {}
                }
                proxy::answer(resp, keep).await
            }
            Ok(Err(e)) => {
                tracing::warn!(gateway = %self.cfg.name, error = %e, "upstream unreachable");
                reply::error(
                    StatusCode::BAD_GATEWAY,
                    id,
                    -32603,
                    "upstream_unavailable",
                    "the MCP server behind this gateway is not answering",
                )
            }
            Err(_) => reply::error(
                StatusCode::GATEWAY_TIMEOUT,
                id,
                -32603,
                "upstream_timeout",
                "the MCP server behind this gateway did not answer in time",
            ),
        }
    }
}

/// The body, or `None` when it is over `max` (or broken). An oversized body is read on, and
/// dropped, up to four times the limit before the refusal: a client still sending when the
/// answer comes would see a reset connection instead of the 413.
async fn read_body(mut body: Incoming, max: usize) -> Option<Bytes> {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= max {
            kept.extend_from_slice(&data);
        } else if seen > max.saturating_mul(4) {
            return None;
        }
    }
    (seen <= max).then(|| Bytes::from(kept))
}

const SESSION: &str = "mcp-session-id";

fn principal(v: &Verified) -> Principal {
    Principal {
        issuer: v.claims.issuer.clone(),
        subject: v.claims.subject.clone(),
        client_id: v.claims.client_id.clone(),
    }
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    reply::error(code, Value::Null, -32600, "bad_request", message)
}
