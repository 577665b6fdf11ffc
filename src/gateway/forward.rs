//! An admitted request to the upstream, and its answer back; the call's result is recorded
//! when the answer has been passed on in full (or the client went away).

use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::Value;

use super::finish::Watched;
use super::handler::{Gateway, SESSION};
use super::proxy;
use super::reply::{self, Body};
use super::sessions::Principal;
use crate::proto::v1;
use crate::record::{Reason, reason};

/// What is passed on, and for whom.
pub(super) struct Admitted<'a> {
    pub(super) call_id: String,
    pub(super) who: Principal,
    pub(super) method: Method,
    pub(super) headers: &'a hyper::HeaderMap,
    pub(super) body: Bytes,
    pub(super) id: Value,
    /// For a `tools/list`: which tools the caller may see.
    pub(super) keep: Option<&'a (dyn Fn(&str) -> bool + Sync)>,
    /// Whether the call was recorded (its result is then recorded too).
    pub(super) recorded: bool,
    /// The client's `clientInfo`, kept with a session it opens.
    pub(super) client: Option<(String, String)>,
}

impl Gateway {
    pub(super) async fn forward(&self, a: Admitted<'_>) -> Response<Body> {
        let started = Instant::now();
        let asked = a
            .headers
            .get(SESSION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ending = a.method == Method::DELETE;
        // What the upstream answered, for the record (sent in a batch; see report.rs).
        let result = {
            let (call_id, gateway) = (a.call_id.clone(), self.cfg.name.clone());
            move |status: u16, rpc: Option<i64>, error: Option<Reason>| v1::CallResult {
                call_id,
                gateway,
                http_status: status.into(),
                jsonrpc_error: rpc,
                duration_ms: started.elapsed().as_millis() as u64,
                error: error.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            }
        };
        let recorded = a.recorded;
        let finished = |status: u16, error: Option<Reason>| {
            if recorded {
                self.reporter.finish(result.clone()(status, None, error));
            }
        };
        let Some(req) = proxy::request(
            &self.cfg.upstream,
            a.method,
            a.headers,
            self.cfg.forward_token,
            &a.call_id,
            a.body,
        ) else {
            finished(400, None);
            return reply::error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32600,
                "bad_request",
                "the request could not be passed on",
            );
        };
        let sent =
            tokio::time::timeout(self.cfg.upstream_timeout, self.upstream.request(req)).await;
        match sent {
            Ok(Ok(resp)) => {
                let opened = resp.headers().get(SESSION).and_then(|v| v.to_str().ok());
                match (&asked, opened) {
                    (None, Some(new)) => {
                        self.sessions
                            .bind(new, &a.who, a.client.clone(), Instant::now())
                    }
                    (Some(old), _) if ending && resp.status().is_success() => {
                        self.sessions.end(old)
                    }
                    _ => {}
                }
                let answer = proxy::answer(resp, a.keep).await;
                if !recorded {
                    return answer;
                }
                let status = answer.status().as_u16();
                let (parts, body) = answer.into_parts();
                let reporter = self.reporter.clone();
                let result = result.clone();
                let watched =
                    Watched::new(body, move |rpc| reporter.finish(result(status, rpc, None)));
                Response::from_parts(parts, watched.boxed())
            }
            Ok(Err(e)) => {
                tracing::warn!(gateway = %self.cfg.name, error = %e, "upstream unreachable");
                finished(0, Some(reason::UPSTREAM_UNAVAILABLE));
                reply::error(
                    StatusCode::BAD_GATEWAY,
                    a.id,
                    -32603,
                    reason::UPSTREAM_UNAVAILABLE.as_str(),
                    "the MCP server behind this gateway is not answering",
                )
            }
            Err(_) => {
                finished(0, Some(reason::UPSTREAM_TIMEOUT));
                reply::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    a.id,
                    -32603,
                    reason::UPSTREAM_TIMEOUT.as_str(),
                    "the MCP server behind this gateway did not answer in time",
                )
            }
        }
    }
}
