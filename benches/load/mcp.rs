//! The gateway's added latency: a minimal MCP upstream (fixed answers, so the gateway's own
//! cost is what differs) and a `tools/call` load, run against the upstream directly and through
//! `credbroker gateway`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::json;

use super::{Hist, merge, window};

/// Answers every POST with a `tools/call` result, over HTTP/1.1 keep-alive.
pub(crate) async fn upstream(listen: SocketAddr) -> serde_json::Value {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("the upstream should bind");
    eprintln!(
        "listening on {}",
        listener.local_addr().expect("a local address")
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let id = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("id").cloned())
                        .unwrap_or(json!(null));
                    let answer = json!({"jsonrpc": "2.0", "id": id,
                    "result": {"content": [{"type": "text", "text": "3 rows"}], "isError": false}});
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(answer.to_string())));
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Runs `op` in a loop on `concurrency` workers for `duration` (after `warmup`), timing each
/// success; `what` names the counts in the summary (`calls`, `calls_per_s`, `call_p50_ms`…).
async fn drive<F, Fut>(
    what: &str,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    op: F,
) -> serde_json::Value
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let op = op.clone();
        let (stop, measuring, errors) = (
            Arc::clone(&stop),
            Arc::clone(&measuring),
            Arc::clone(&errors),
        );
        workers.push(tokio::spawn(async move {
            let mut h = Hist::default();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if !op().await {
                    errors.fetch_add(1, Ordering::Relaxed);
                } else if measuring.load(Ordering::Relaxed) {
                    h.add(t0.elapsed());
                }
            }
            h
        }));
    }
    let (mut all, elapsed) = window(workers, &stop, &measuring, warmup, duration).await;
    let n = all.0.len();
    let mut out = json!({
        "concurrency": concurrency,
        format!("{what}s"): n,
        format!("{what}s_per_s"): (n as f64 / elapsed.as_secs_f64()).round(),
        "errors": errors.load(Ordering::Relaxed),
    });
    merge(&mut out, all.summary(what));
    out
}

/// `tools/call` requests from `concurrency` workers for `duration` (after `warmup`).
pub(crate) async fn load(
    url: String,
    token_file: Option<PathBuf>,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
) -> serde_json::Value {
    let token = token_file.map(|f| {
        std::fs::read_to_string(f)
            .expect("the token file should be readable")
            .trim()
            .to_string()
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .no_proxy()
        .build()
        .expect("the HTTP client should build");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "query", "arguments": {"sql": "select 1"}}})
    .to_string();
    drive("call", concurrency, duration, warmup, move || {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "query")
            .body(body.clone());
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await
}

/// `RecordCall` (an allowed call's record, committed before the gateway may forward it) from
/// `concurrency` workers straight to the daemon: the gateway's recording cost on its own.
pub(crate) async fn record(
    socket: PathBuf,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
) -> serde_json::Value {
    use credbroker::proto::v1;
    let channel = credbroker::client::channel(&socket)
        .await
        .expect("the broker socket should answer");
    let client = v1::calls_client::CallsClient::new(channel);
    drive("record", concurrency, duration, warmup, move || {
        let call = v1::RecordCallRequest {
            call_id: uuid::Uuid::now_v7().to_string(),
            gateway: "bench".into(),
            resource: "https://mcp.example.test/bench".into(),
            method: "tools/call".into(),
            name: "query".into(),
            arguments_sha256: "ab".repeat(32),
            source: "127.0.0.1:40000".into(),
            caller: Some(v1::CallCaller {
                issuer: "https://as.example.test".into(),
                subject: "bench-agent".into(),
                client_id: "bench-agent".into(),
                owner: "bench-owner@example.com".into(),
                owner_source: "client_registry".into(),
                token_fingerprint: "cd".repeat(32),
                jti: "j".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = client.clone();
        async move { client.record_call(call).await.is_ok() }
    })
    .await
}
