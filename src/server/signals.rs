//! The Shared Signals push endpoint (RFC 8935): `POST /ssf/<transmitter>` with
//! `Content-Type: application/secevent+jwt` and the transmitter's bearer token, over HTTP/1.1
//! on loopback (TLS is a proxy's job, as for metrics). 202 when the SET is taken; 400 with
//! `{"err", "description"}` (401 for `authentication_failed`) when it is refused.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::token::set::SetError;

const MAX_BODY: usize = 64 * 1024;

pub(super) async fn start(
    listen: SocketAddr,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "receiving Shared Signals pushes");
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.changed() => return,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let broker = Arc::clone(&broker);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let broker = Arc::clone(&broker);
                    async move { Ok::<_, Infallible>(answer(req, &broker).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
            });
        }
    }))
}

fn reply(status: StatusCode, body: Option<serde_json::Value>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        body.map(|b| b.to_string()).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    if status != StatusCode::ACCEPTED {
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    r
}

fn refused(e: &SetError) -> Response<Full<Bytes>> {
    let status = match e {
        SetError::AuthenticationFailed => StatusCode::UNAUTHORIZED,
        _ => StatusCode::BAD_REQUEST,
    };
    reply(
        status,
        Some(serde_json::json!({"err": e.code(), "description": e.description()})),
    )
}

async fn answer(req: Request<Incoming>, broker: &Broker) -> Response<Full<Bytes>> {
    let name = req
        .uri()
        .path()
        .strip_prefix("/ssf/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .map(str::to_owned);
    let (Some(name), true) = (name, req.method() == Method::POST) else {
        return reply(StatusCode::NOT_FOUND, None);
    };
    let Some(receiver) = broker.receiver(&name) else {
        return reply(StatusCode::NOT_FOUND, None);
    };
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|b| receiver.push_allowed(b)) {
        let e = SetError::AuthenticationFailed;
        // Audited like every refused SET, without reading what was sent.
        let _ = broker.reject_set(&name, "push", &e).await;
        return refused(&e);
    }
    let ctype_ok = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/secevent+jwt"));
    if !ctype_ok {
        let e = SetError::InvalidRequest("Content-Type must be application/secevent+jwt".into());
        let _ = broker.reject_set(&name, "push", &e).await;
        return refused(&e);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let e = SetError::InvalidRequest(format!("the body is over {MAX_BODY} bytes"));
            let _ = broker.reject_set(&name, "push", &e).await;
            return refused(&e);
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        let e = SetError::InvalidRequest("the body is not UTF-8".into());
        let _ = broker.reject_set(&name, "push", &e).await;
        return refused(&e);
    };
    match broker.receive_set(&name, text.trim(), "push").await {
        Ok(()) => reply(StatusCode::ACCEPTED, None),
        Err(e) => refused(&e),
    }
}
