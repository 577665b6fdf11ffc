//! `credbroker mcp --listen`: the same tools over Streamable HTTP, meant to sit behind
//! `credbroker gateway` (which speaks OAuth to the clients: metadata, challenges, step-up).
//!
//! It checks the bearer token itself as well (defence in depth: whoever reaches the port
//! without the gateway gets nothing): a token from a configured issuer, for `--resource`, with
//! `credbroker.audit` or `credbroker.admin`; `revoke` needs `credbroker.admin`. The caller's
//! subject and client are recorded with every revocation it makes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tower::Service as _;

use super::tools::Security;
use crate::config::Config;
use crate::token::Verifier;

pub(super) const AUDIT_SCOPE: &str = "credbroker.audit";
pub(super) const ADMIN_SCOPE: &str = "credbroker.admin";

/// Who called, as the verified token says; handed to the tools in the request's extensions.
#[derive(Clone, Debug)]
pub(super) struct Caller {
    pub(super) subject: String,
    pub(super) client_id: String,
    pub(super) admin: bool,
}

type Body = BoxBody<Bytes, Infallible>;

fn refuse(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    // The reason only: never the token.
    tracing::info!(%status, error, reason = description, "credbroker mcp refused a request");
    let www = format!("Bearer error=\"{error}\", error_description=\"{description}\"");
    let mut r = Response::new(Full::new(Bytes::from(description.to_string())).boxed());
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(&www) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

struct Gate {
    verifier: Verifier,
    resource: String,
    issuers: Vec<String>,
}

impl Gate {
    async fn check(&self, req: &Request<Incoming>) -> Result<Caller, Response<Body>> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request",
                    "a bearer token is required",
                )
            })?;
        let v = match self.verifier.verify(token, SystemTime::now()).await {
            Ok(v) => v,
            Err((r, _)) => {
                return Err(refuse(StatusCode::UNAUTHORIZED, "invalid_token", r.code()));
            }
        };
        if v.check_audience(&self.resource).is_err() {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "audience_mismatch",
            ));
        }
        if !self.issuers.contains(&v.claims.issuer) {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "issuer_not_accepted",
            ));
        }
        let admin = v.claims.has_scope(ADMIN_SCOPE);
        if !admin && !v.claims.has_scope(AUDIT_SCOPE) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "credbroker.audit or credbroker.admin is required",
            ));
        }
        Ok(Caller {
            subject: v.claims.subject.clone(),
            client_id: v.claims.client_id.clone(),
            admin,
        })
    }
}

pub(super) async fn serve(
    listen: SocketAddr,
    resource: String,
    config: &Config,
    server: Security,
) -> anyhow::Result<()> {
    let verifier = Verifier::new(&config.issuers, &config.tokens).map_err(anyhow::Error::msg)?;
    for (url, e) in verifier.load_keys().await {
        tracing::warn!(issuer = %url, error = %e, "issuer keys not loaded yet; retrying in the background");
    }
    let _refresh = verifier.spawn_refresh();
    let gate = Arc::new(Gate {
        verifier,
        resource,
        issuers: config.issuers.iter().map(|i| i.url.clone()).collect(),
    });
    let mut http_config = StreamableHttpServerConfig::default();
    // Behind the gateway the Host is whatever the gateway dials; the token is the gate.
    http_config.allowed_hosts = vec![
        listen.ip().to_string(),
        listen.to_string(),
        "localhost".into(),
    ];
    let mcp = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        http_config,
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "credbroker mcp listening (Streamable HTTP)");
    loop {
        let (stream, _) = listener.accept().await.context("accepting a connection")?;
        let gate = gate.clone();
        let mcp = mcp.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let gate = gate.clone();
                let mut mcp = mcp.clone();
                async move {
                    let caller = match gate.check(&req).await {
                        Ok(c) => c,
                        Err(r) => return Ok::<_, Infallible>(r),
                    };
                    req.extensions_mut().insert(caller);
                    match mcp.call(req).await {
                        Ok(r) => Ok(r),
                        Err(e) => match e {},
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
