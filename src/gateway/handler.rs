//! One HTTP request through the gateway: metadata, or token → limits → message → scopes →
//! session → record → upstream. Every refusal is answered (and recorded) here and nothing
//! refused reaches the upstream; nothing allowed reaches it before its record is committed.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::Value;

use super::challenge::{self, WELL_KNOWN};
use super::forward::Admitted;
use super::limits::Limiter;
use super::message;
use super::reply::{self, Body, Refusal};
use super::report::{self, Reporter};
use super::sessions::{Principal, Sessions};
use crate::config::Attribution;
use crate::config::gateway::GatewayConfig;
use crate::proto::v1;
use crate::record::reason;
use crate::token::{Verified, Verifier};

pub struct Gateway {
    pub cfg: GatewayConfig,
    pub verifier: Arc<Verifier>,
    pub(super) upstream: super::upstream::Upstream,
    pub(super) sessions: Sessions,
    pub(super) client_limit: Option<Limiter>,
    pub(super) owner_limit: Option<Limiter>,
    /// Client owners, for the per-owner limit and the records (the same rules as the broker's).
    pub(super) attribution: Attribution,
    pub(super) reporter: Reporter,
}

pub(super) const SESSION: &str = "mcp-session-id";

impl Gateway {
    pub async fn handle(&self, req: Request<Incoming>, source: SocketAddr) -> Response<Body> {
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
        let call_id = uuid::Uuid::now_v7().to_string();
        let call = report::start(&self.cfg, &call_id, source);
        match *req.method() {
            Method::POST => self.post(req, call).await,
            // The 2025-11-25 listening stream and session end carry no tool: a valid token
            // for this resource is enough. They are not calls: only their refusals are recorded.
            Method::GET | Method::DELETE => self.other(req, call).await,
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

    async fn post(
        &self,
        req: Request<Incoming>,
        mut call: v1::RecordCallRequest,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let (body, msg, verified) = match self.decide(&parts, body, &mut call).await {
            Ok(admitted) => admitted,
            Err((refusal, id)) => return self.refuse(call, &refusal, id).await,
        };
        let who = principal(&verified);
        if let Err(refusal) = self.check_session(&parts.headers, &who) {
            return self.refuse(call, &refusal, msg.id).await;
        }
        // A 2025-11-25 client names itself once, in the initialize that opened its session.
        if call.client_name.is_empty()
            && let Some((name, version)) = parts
                .headers
                .get(SESSION)
                .and_then(|v| v.to_str().ok())
                .and_then(|id| self.sessions.client(id))
        {
            (call.client_name, call.client_version) = (name, version);
        }
        // Fail closed: a call the journal does not hold is not made.
        let call_id = call.call_id.clone();
        if let Err(e) = self.reporter.record(call).await {
            if let report::NotRecorded::Refused { reason, message } = e {
                tracing::info!(gateway = %self.cfg.name, reason = %reason,
                    "the daemon refused the call");
                return reply::error(
                    StatusCode::FORBIDDEN,
                    msg.id,
                    -32001,
                    reason.as_str(),
                    &message,
                );
            }
            tracing::error!(gateway = %self.cfg.name, error = %e,
                "the call could not be recorded by the daemon; refused");
            return reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                msg.id,
                -32603,
                "audit_unavailable",
                "this call cannot be recorded right now, so it is not made; retry shortly",
            );
        }
        let keep =
            |name: &str| message::may_call(&self.cfg, name, |s| verified.claims.has_scope(s));
        let list = msg.method.as_deref() == Some("tools/list");
        self.forward(Admitted {
            call_id,
            who,
            method: parts.method.clone(),
            headers: &parts.headers,
            body,
            id: msg.id,
            keep: list.then_some(&keep as &(dyn Fn(&str) -> bool + Sync)),
            recorded: true,
            client: msg.client,
        })
        .await
    }

    /// The body, its message and the caller, or why not (with the message's id, when read).
    async fn decide(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        call: &mut v1::RecordCallRequest,
    ) -> Result<(Bytes, message::Message, Verified), (Refusal, Value)> {
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            let r = Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                -32600,
                reason::UNSUPPORTED_MEDIA_TYPE,
                "MCP messages are POSTed as application/json",
            );
            return Err((r, Value::Null));
        }
        let Some(body) = read_body(body, self.cfg.max_body_bytes).await else {
            let r = Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                reason::REQUEST_TOO_LARGE,
                format!("the body is over {} bytes", self.cfg.max_body_bytes),
            );
            return Err((r, Value::Null));
        };
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let read = message::read(&body, header("mcp-method"), header("mcp-name"));
        if let Ok(m) = &read {
            report::describe(call, &self.cfg, m);
        }
        if call.protocol_version.is_empty() {
            let given = header("mcp-protocol-version").unwrap_or_default();
            call.protocol_version = given.chars().filter(|c| !c.is_control()).take(32).collect();
        }
        let id = read.as_ref().map(|m| m.id.clone()).unwrap_or(Value::Null);
        let verified = self
            .authenticate(parts, read.as_ref().ok())
            .await
            .map_err(|r| (r, id.clone()))?;
        call.caller = Some(report::caller(&verified, &self.attribution));
        // Counted once the caller is known, whatever the request: refused ones cost too.
        self.rate_limit(&verified).map_err(|r| (r, id.clone()))?;
        let msg = read.map_err(|bad| {
            let r = Refusal::new(
                StatusCode::BAD_REQUEST,
                bad.code(),
                bad.reason(),
                bad.message(),
            );
            (r, bad.id())
        })?;
        self.authorize(&verified, &msg).map_err(|r| (r, id))?;
        Ok((body, msg, verified))
    }

    async fn other(
        &self,
        req: Request<Incoming>,
        mut call: v1::RecordCallRequest,
    ) -> Response<Body> {
        let (parts, _) = req.into_parts();
        let checked = match self.authenticate(&parts, None).await {
            Ok(v) => {
                call.caller = Some(report::caller(&v, &self.attribution));
                let who = principal(&v);
                self.rate_limit(&v)
                    .and_then(|()| self.check_session(&parts.headers, &who))
                    .map(|()| who)
            }
            Err(r) => Err(r),
        };
        let who = match checked {
            Ok(who) => who,
            Err(refusal) => return self.refuse(call, &refusal, Value::Null).await,
        };
        self.forward(Admitted {
            call_id: call.call_id,
            who,
            method: parts.method.clone(),
            headers: &parts.headers,
            body: Bytes::new(),
            id: Value::Null,
            keep: None,
            recorded: false,
            client: None,
        })
        .await
    }

    /// Records the refusal (best effort: it is refused either way) and answers it.
    async fn refuse(
        &self,
        mut call: v1::RecordCallRequest,
        r: &Refusal,
        id: Value,
    ) -> Response<Body> {
        call.refused = r.reason.as_str().into();
        call.http_status = r.status.as_u16().into();
        if let Err(e) = self.reporter.record(call).await {
            tracing::warn!(gateway = %self.cfg.name, reason = %r.reason, error = %e,
                "a refused call could not be recorded");
        }
        r.response(id)
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
