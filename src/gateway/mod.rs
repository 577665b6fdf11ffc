//! The gateway: an OAuth 2.1 resource server (RFC 9728, RFC 6750, RFC 8707, MCP authorization)
//! in front of an unmodified Streamable-HTTP MCP server. A process of its own
//! (`credbroker gateway`): it faces the network, so it holds no provider credential, journal or
//! key; it shares the daemon's token verifier and its reason codes.

mod challenge;
mod checks;
mod finish;
mod forward;
mod handler;
mod limits;
pub mod message;
mod proxy;
mod reply;
mod report;
mod sessions;
mod tls;
mod upstream;

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
    let reporter = report::Reporter::new(&file.daemon);
    let mut servers = tokio::task::JoinSet::new();
    let mut certificates = Vec::new();
    for cfg in file.gateways {
        let tls = match cfg.tls.clone() {
            Some(files) => {
                Some(Arc::new(tls::Tls::load(files).map_err(|e| {
                    anyhow::anyhow!("gateway {}: TLS: {e}", cfg.name)
                })?))
            }
            None => None,
        };
        if let Some(t) = &tls {
            certificates.push((cfg.name.clone(), Arc::clone(t)));
        }
        let listener = TcpListener::bind(cfg.listen).await.map_err(|e| {
            anyhow::anyhow!("gateway {}: cannot listen on {}: {e}", cfg.name, cfg.listen)
        })?;
        tracing::info!(gateway = %cfg.name, listen = %cfg.listen, resource = %cfg.resource, "gateway listening");
        let gw = Arc::new(Gateway {
            verifier: Arc::clone(&verifier),
            upstream: upstream::Upstream::new(&cfg)
                .map_err(|e| anyhow::anyhow!("gateway {}: upstream: {e}", cfg.name))?,
            // A day idle, and at most 100,000 open: past that the least recently used goes.
            sessions: sessions::Sessions::new(100_000, Duration::from_secs(86_400)),
            client_limit: cfg
                .rate_limit_client
                .map(|r| limits::Limiter::new(r, 100_000)),
            owner_limit: cfg
                .rate_limit_owner
                .map(|r| limits::Limiter::new(r, 100_000)),
            attribution: file.attribution.clone(),
            reporter: reporter.clone(),
            cfg,
        });
        servers.spawn(serve(listener, gw, tls));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            Some(_) = servers.join_next() => break,
            _ = hup.recv() => {
                for (name, t) in &certificates {
                    match t.reload() {
                        Ok(()) => tracing::info!(gateway = %name, cert = %t.files.cert.display(), "TLS certificate reloaded"),
                        Err(e) => tracing::error!(gateway = %name, error = %e, "TLS reload failed; the current certificate stays"),
                    }
                }
            }
        }
    }
    tracing::info!("gateway stopping");
    reporter.flush().await;
    Ok(())
}

async fn serve(listener: TcpListener, gw: Arc<Gateway>, tls: Option<Arc<tls::Tls>>) {
    loop {
        let (stream, source) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "gateway: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gw = Arc::clone(&gw);
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let gw = Arc::clone(&gw);
                async move { Ok::<_, Infallible>(gw.handle(req, source).await) }
            });
            // Headers are bounded by the read buffer (over it: 431); a client that sends
            // its headers slowly is cut off.
            let mut http = hyper::server::conn::http1::Builder::new();
            http.max_buf_size(16 * 1024)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let served = match acceptor {
                None => http.serve_connection(TokioIo::new(stream), service).await,
                // A handshake that does not finish in 10 s is dropped, like slow headers.
                Some(a) => {
                    match tokio::time::timeout(Duration::from_secs(10), a.accept(stream)).await {
                        Ok(Ok(tls)) => http.serve_connection(TokioIo::new(tls), service).await,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "gateway connection ended");
            }
        });
    }
}
