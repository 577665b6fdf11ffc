//! The gateway: an OAuth 2.1 resource server (RFC 9728, RFC 6750, RFC 8707, MCP authorization)
//! in front of an unmodified Streamable-HTTP MCP server. A process of its own
//! (`credbroker gateway`): it faces the network, so it holds no provider credential, journal or
//! key; it shares the daemon's token verifier and its reason codes.

mod challenge;
mod handler;
pub mod message;
mod proxy;
mod reply;
mod sessions;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::gateway::GatewayFile;
use crate::token::Verifier;
pub use handler::Gateway;

/// Serves every `[[gateway]]` of the file until SIGTERM or SIGINT.
pub async fn run(file: GatewayFile) -> anyhow::Result<()> {
    let verifier =
        Arc::new(Verifier::new(&file.issuers, &file.tokens).map_err(anyhow::Error::msg)?);
    for (url, why) in verifier.load_keys().await {
        // Not fatal: tokens of that issuer are refused (503) until its keys load.
        tracing::warn!(issuer = %url, error = %why, "issuer keys not loaded yet");
    }
    let _refresh = verifier.spawn_refresh();
    let upstream = proxy::client();
    let mut servers = tokio::task::JoinSet::new();
    for cfg in file.gateways {
        let listener = TcpListener::bind(cfg.listen).await.map_err(|e| {
            anyhow::anyhow!("gateway {}: cannot listen on {}: {e}", cfg.name, cfg.listen)
        })?;
        tracing::info!(gateway = %cfg.name, listen = %cfg.listen, resource = %cfg.resource, "gateway listening");
        let gw = Arc::new(Gateway {
            cfg,
            verifier: Arc::clone(&verifier),
            upstream: upstream.clone(),
            // A day idle, and at most 100,000 open: past that the least recently used goes.
            sessions: sessions::Sessions::new(100_000, Duration::from_secs(86_400)),
        });
        servers.spawn(serve(listener, gw));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        Some(_) = servers.join_next() => {}
    }
    tracing::info!("gateway stopping");
    Ok(())
}

async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "gateway: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gw = Arc::clone(&gw);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let gw = Arc::clone(&gw);
                async move { Ok::<_, Infallible>(gw.handle(req).await) }
            });
            // Headers are bounded by the read buffer (over it: 431); a client that sends
            // its headers slowly is cut off.
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(16 * 1024)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "gateway connection ended");
            }
        });
    }
}
