//! Reporting every MCP call to the daemon (its Calls service, on the broker socket), so calls
//! land in the one journal and audit chain beside the tasks they begin. An allowed call is
//! forwarded only once its record is committed: if the daemon cannot be reached the gateway
//! fails closed (503 `audit_unavailable`).

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint, Uri};

use super::message::{self, Message};
use crate::config::Attribution;
use crate::config::gateway::{DaemonLink, GatewayConfig};
use crate::proto::v1::{self, calls_client::CallsClient};
use crate::token::Verified;

/// Why a call's record was not committed.
#[derive(Debug)]
pub(super) enum NotRecorded {
    /// The daemon refused the call (its caller is blocked, or a detector denied it).
    Refused {
        reason: crate::record::Reason,
        message: String,
    },
    /// The daemon could not be reached or could not commit.
    Unavailable(String),
}

impl std::fmt::Display for NotRecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused { reason, message } => {
                write!(f, "refused by the daemon ({reason}): {message}")
            }
            Self::Unavailable(e) => f.write_str(e),
        }
    }
}

#[derive(Clone)]
pub(super) struct Reporter {
    client: CallsClient<Channel>,
    timeout: Duration,
    /// To the task that sends results in batches.
    results: mpsc::Sender<Shipment>,
}

enum Shipment {
    Result(v1::CallResult),
    /// Send what is gathered now, and say when it is done (at shutdown).
    Flush(oneshot::Sender<()>),
}

/// Results are gathered for up to this long, or this many, and sent in one FinishCalls: one
/// commit for many calls instead of one each.
const BATCH_WAIT: Duration = Duration::from_millis(20);
const BATCH_MAX: usize = 512;
/// Results waiting to be sent; past this (the daemon gone for a long while) new ones are
/// dropped, and logged: their calls' records are already in the journal.
const QUEUE: usize = 65_536;

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
        let client = CallsClient::new(channel);
        let (results, rx) = mpsc::channel(QUEUE);
        tokio::spawn(ship(client.clone(), rx, link.timeout));
        Self {
            client,
            timeout: link.timeout,
            results,
        }
    }

    /// Records a call (allowed or refused) and waits until the daemon has.
    pub(super) async fn record(&self, call: v1::RecordCallRequest) -> Result<(), NotRecorded> {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.record_call(call)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => {
                // The daemon refusing the call itself (a block, an abuse detector's `deny`) is
                // an answer, not an outage: the client is told why, with 403.
                let code = (status.code() == tonic::Code::PermissionDenied)
                    .then(|| credbroker_client::reason_of(&status))
                    .flatten()
                    .and_then(|c| crate::record::reason::find(&c));
                match code {
                    Some(reason) => Err(NotRecorded::Refused {
                        reason,
                        message: status.message().to_owned(),
                    }),
                    None => Err(NotRecorded::Unavailable(format!(
                        "{:?}: {}",
                        status.code(),
                        status.message()
                    ))),
                }
            }
            Err(_) => Err(NotRecorded::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Queues what the upstream answered, to be recorded with others: the answer is already on
    /// its way to the client, and the call's own record says it was allowed.
    pub(super) fn finish(&self, result: v1::CallResult) {
        if let Err(e) = self.results.try_send(Shipment::Result(result)) {
            tracing::error!(error = %e, "a call's result could not be queued for the daemon");
        }
    }

    /// Sends the results gathered so far (at shutdown).
    pub(super) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.results.send(Shipment::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(self.timeout * 2, rx).await;
        }
    }
}

async fn ship(client: CallsClient<Channel>, mut rx: mpsc::Receiver<Shipment>, timeout: Duration) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = rx.recv().await {
        let mut flushed = Vec::new();
        let mut take = |s: Shipment, batch: &mut Vec<v1::CallResult>| match s {
            Shipment::Result(r) => {
                batch.push(r);
                false
            }
            Shipment::Flush(done) => {
                flushed.push(done);
                true
            }
        };
        let mut now = take(first, &mut batch);
        let deadline = tokio::time::sleep(BATCH_WAIT);
        tokio::pin!(deadline);
        while !now && batch.len() < BATCH_MAX {
            tokio::select! {
                () = &mut deadline => break,
                next = rx.recv() => match next {
                    Some(s) => now = take(s, &mut batch),
                    None => break,
                },
            }
        }
        send(&client, std::mem::take(&mut batch), timeout).await;
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// One batch, tried three times (the daemon restarting), then given up on, loudly.
async fn send(client: &CallsClient<Channel>, results: Vec<v1::CallResult>, timeout: Duration) {
    if results.is_empty() {
        return;
    }
    let n = results.len();
    let req = v1::FinishCallsRequest { results };
    let mut last = String::new();
    for wait in [0, 200, 1000] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let mut c = client.clone();
        match tokio::time::timeout(timeout, c.finish_calls(req.clone())).await {
            Ok(Ok(_)) => return,
            Ok(Err(status)) => last = status.message().to_owned(),
            Err(_) => last = format!("no answer within {timeout:?}"),
        }
    }
    tracing::error!(results = n, error = %last, "calls' results could not be recorded");
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
