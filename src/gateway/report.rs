//! Reporting every MCP call to the daemon (its Calls service, on the broker socket), so calls
//! land in the one journal and audit chain beside the tasks they begin. An allowed call is
//! forwarded only once its record is committed: if the daemon cannot be reached the gateway
//! fails closed (503 `audit_unavailable`).

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::message::{self, Message};
use crate::config::Attribution;
use crate::config::gateway::{DaemonLink, GatewayConfig};
use crate::proto::v1::{self, calls_client::CallsClient};
use crate::token::Verified;

#[derive(Clone)]
pub(super) struct Reporter {
    client: CallsClient<Channel>,
    timeout: Duration,
}

impl Reporter {
    /// Connects lazily, and again after the daemon restarts: the gateway may start first.
    pub(super) fn new(link: &DaemonLink) -> Self {
        let path: PathBuf = link.socket.clone();
        let channel = Endpoint::from_static("http://credbroker.invalid")
            .connect_timeout(link.timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        Self {
            client: CallsClient::new(channel),
            timeout: link.timeout,
        }
    }

    /// Records a call (allowed or refused) and waits until the daemon has.
    pub(super) async fn record(&self, call: v1::RecordCallRequest) -> Result<(), String> {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.record_call(call)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Records what the upstream answered; in the background, since the answer is already on
    /// its way to the client. A failure is logged: the call's record says it was allowed.
    pub(super) fn finish(&self, result: v1::FinishCallRequest) {
        let mut client = self.client.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let call = result.call_id.clone();
            match tokio::time::timeout(timeout, client.finish_call(result)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    tracing::error!(call_id = %call, error = %status.message(), "the call's result could not be recorded")
                }
                Err(_) => {
                    tracing::error!(call_id = %call, "the call's result could not be recorded in time")
                }
            }
        });
    }
}

/// The start of a call's report: which gateway, from where.
pub(super) fn start(
    cfg: &GatewayConfig,
    call_id: &str,
    source: std::net::SocketAddr,
) -> v1::RecordCallRequest {
    v1::RecordCallRequest {
        call_id: call_id.to_owned(),
        gateway: cfg.name.clone(),
        resource: cfg.resource.to_string(),
        source: source.to_string(),
        ..Default::default()
    }
}

/// What the message says: method, name, a digest of its arguments (and the ones `cfg` records
/// in clear), and what the client says about itself.
pub(super) fn describe(call: &mut v1::RecordCallRequest, cfg: &GatewayConfig, msg: &Message) {
    call.method = msg.method.clone().unwrap_or_default();
    call.name = msg.name.clone().unwrap_or_default();
    if let Some(args) = &msg.arguments {
        call.arguments_sha256 = message::digest(args);
        for key in &cfg.record_arguments {
            if let Some(v) = args.get(key) {
                let text = v.to_string();
                // Over the daemon's limit: recorded as cut, never dropped silently.
                let text = if text.len() > 1024 {
                    serde_json::Value::String("(over 1024 bytes: see the digest)".into())
                        .to_string()
                } else {
                    text
                };
                call.arguments.insert(key.clone(), text);
            }
        }
    }
    if let Some((name, version)) = &msg.client {
        call.client_name = name.clone();
        call.client_version = version.clone();
    }
    if let Some(p) = &msg.protocol {
        call.protocol_version = p.clone();
    }
}

/// The caller, with its owner by the same rules as the broker's tasks.
pub(super) fn caller(v: &Verified, attribution: &Attribution) -> v1::CallCaller {
    let c = &v.claims;
    let owner = crate::policy::attribute(c, attribution);
    v1::CallCaller {
        issuer: c.issuer.clone(),
        subject: c.subject.clone(),
        client_id: c.client_id.clone(),
        actors: c.actors.clone(),
        owner: owner.id.unwrap_or_default(),
        owner_source: owner.source.code().into(),
        token_fingerprint: v.fingerprint.hex(),
        jti: c.jti.clone(),
    }
}
