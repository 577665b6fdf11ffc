//! How the gateway reaches the MCP server behind it: HTTP over TCP, HTTPS (rustls, aws-lc; the
//! platform's roots or `upstream_ca_file`), or HTTP over a unix socket (`upstream_socket`),
//! each connection kept alive by hyper's pool.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use hyper::Uri;
use hyper::body::{Bytes, Incoming};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpStream, UnixStream};

use crate::config::gateway::GatewayConfig;

#[derive(Clone)]
pub(super) struct Upstream {
    client: Client<Connector, http_body_util::Full<Bytes>>,
}

impl Upstream {
    pub(super) fn new(cfg: &GatewayConfig) -> Result<Self, String> {
        let tls = match cfg.upstream.scheme() {
            "https" => Some(Arc::new(client_config(cfg.upstream_ca_file.as_ref())?)),
            _ => None,
        };
        let connector = Connector {
            tls,
            socket: cfg.upstream_socket.clone().map(Arc::new),
        };
        Ok(Self {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
        })
    }

    pub(super) async fn request(
        &self,
        req: hyper::Request<http_body_util::Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }
}

/// TLS to the upstream: its certificate must chain to `ca_file` when given (an internal CA),
/// else to the platform's roots, and name the upstream's host.
fn client_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let Some(path) = ca_file else {
        use rustls_platform_verifier::BuilderVerifierExt as _;
        return builder
            .with_platform_verifier()
            .map(|b| b.with_no_client_auth())
            .map_err(|e| format!("the platform's certificate roots: {e}"));
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

#[derive(Clone)]
struct Connector {
    tls: Option<Arc<rustls::ClientConfig>>,
    /// When set, every connection goes to this socket; the URL gives only path and Host.
    socket: Option<Arc<PathBuf>>,
}

impl tower::Service<Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Conn>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if let Some(path) = &this.socket {
                return Ok(Conn::Unix(TokioIo::new(
                    UnixStream::connect(&**path).await?,
                )));
            }
            let host = uri
                .host()
                .ok_or_else(|| io::Error::other("the upstream URL has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let tls = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            match (&this.tls, tls) {
                (Some(config), true) => {
                    let name = ServerName::try_from(host).map_err(io::Error::other)?;
                    let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                        .connect(name, tcp)
                        .await?;
                    Ok(Conn::Tls(Box::new(TokioIo::new(stream))))
                }
                (None, true) => Err(io::Error::other(
                    "no TLS configuration for an https upstream",
                )),
                (_, false) => Ok(Conn::Tcp(TokioIo::new(tcp))),
            }
        })
    }
}

enum Conn {
    Tcp(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
    Unix(TokioIo<UnixStream>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
