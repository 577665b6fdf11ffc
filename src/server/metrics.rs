//! The Prometheus endpoint: `GET /metrics` over HTTP/1.1 (hyper), on loopback TCP or a unix
//! socket (mode 0660: the daemon's group, e.g. a node exporter's). Anything else is 404; no
//! request body is read. Off unless configured.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::config::MetricsListen;

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Binds now (so a bad address fails start-up), serves until `stop`.
pub(super) async fn start(
    listen: &MetricsListen,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = match listen {
        MetricsListen::Tcp(addr) => Listener::Tcp(tokio::net::TcpListener::bind(addr).await?),
        MetricsListen::Unix(path) => Listener::Unix(super::listener::bind(path, 0o660, None)?),
    };
    tracing::info!(listen = ?listen, "serving Prometheus metrics");
    Ok(tokio::spawn(serve(listener, broker, stop)))
}

async fn serve(listener: Listener, broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = accept(&listener) => a,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let broker = Arc::clone(&broker);
                async move { Ok::<_, Infallible>(answer(&req, &broker)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(16 * 1024)
                .serve_connection(io, service);
            // A scrape that stalls is cut off rather than held open forever.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

type Io = TokioIo<Box<dyn Stream>>;

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn accept(l: &Listener) -> std::io::Result<Io> {
    Ok(match l {
        Listener::Tcp(t) => TokioIo::new(Box::new(t.accept().await?.0)),
        Listener::Unix(u) => TokioIo::new(Box::new(u.accept().await?.0)),
    })
}

fn answer(req: &Request<Incoming>, broker: &Broker) -> Response<Full<Bytes>> {
    let (status, ctype, body) = if req.method() == Method::GET && req.uri().path() == "/metrics" {
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            broker.metrics_text(),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
