//! The gateway's own answers: JSON-RPC error bodies with the HTTP status and challenge that
//! go with them.

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Bytes;
use hyper::{Response, StatusCode, header};
use serde_json::{Value, json};

use crate::record::Reason;

pub(super) type Body = BoxBody<Bytes, hyper::Error>;

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(super) fn json(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON-RPC error, with `data.reason` the same stable code the audit trail carries.
pub(super) fn error(
    status: StatusCode,
    id: Value,
    code: i64,
    reason: &str,
    message: &str,
) -> Response<Body> {
    json(
        status,
        &json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": { "code": code, "message": message, "data": { "reason": reason } },
        }),
    )
}

/// A refusal with a `WWW-Authenticate` challenge (401 or 403).
pub(super) fn challenge(
    status: StatusCode,
    id: Value,
    reason: &str,
    message: &str,
    www: &str,
) -> Response<Body> {
    let mut r = error(status, id, -32001, reason, message);
    if let Ok(v) = header::HeaderValue::from_str(www) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Why a request is not passed on, as the client is told it and the audit trail records it.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) reason: Reason,
    /// The JSON-RPC error code of the answer.
    pub(super) rpc_code: i64,
    pub(super) message: String,
    /// `WWW-Authenticate`, for 401 and 403.
    pub(super) www: Option<String>,
    /// Seconds, for 429.
    pub(super) retry_after: Option<u64>,
}

impl Refusal {
    pub(super) fn new(
        status: StatusCode,
        rpc_code: i64,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            reason,
            rpc_code,
            message: message.into(),
            www: None,
            retry_after: None,
        }
    }

    pub(super) fn challenge(
        status: StatusCode,
        reason: Reason,
        message: impl Into<String>,
        www: String,
    ) -> Self {
        Self {
            www: Some(www),
            ..Self::new(status, -32001, reason, message)
        }
    }

    pub(super) fn response(&self, id: Value) -> Response<Body> {
        let mut r = match &self.www {
            Some(www) => challenge(self.status, id, self.reason.as_str(), &self.message, www),
            None => error(
                self.status,
                id,
                self.rpc_code,
                self.reason.as_str(),
                &self.message,
            ),
        };
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
        }
        r
    }
}
