//! Connecting to the daemon's unix sockets (used by the CLI, the load generator and the tests).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::server::status::reason_of;

pub const DEFAULT_BROKER_SOCKET: &str = "/run/credbroker/broker.sock";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/credbroker/admin.sock";

/// A gRPC channel to a unix socket. The first connection is made here, so a missing or
/// refusing daemon is reported with what to do about it, not as a transport error.
pub async fn channel(path: &Path) -> anyhow::Result<Channel> {
    let first = UnixStream::connect(path)
        .await
        .map_err(|e| anyhow::anyhow!(not_connected(path, &e)))?;
    let first = std::sync::Mutex::new(Some(first));
    let path: PathBuf = path.to_path_buf();
    let shown = path.display().to_string();
    // The URI is required by the API but unused: the connector always dials the socket.
    Endpoint::try_from("http://credbroker.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            let ready = first.lock().ok().and_then(|mut f| f.take());
            async move {
                let stream = match ready {
                    Some(s) => s,
                    None => UnixStream::connect(path).await?,
                };
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("cannot connect to {shown}"))
}

/// Why a socket could not be reached, and the likely fix.
fn not_connected(path: &Path, e: &std::io::Error) -> String {
    let at = path.display();
    match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no credbroker socket at {at}: is the daemon running? (`systemctl status credbroker`; \
             or give the socket's path with --socket / --admin-socket)"
        ),
        std::io::ErrorKind::ConnectionRefused => format!(
            "nothing is listening on {at}: the daemon is not running (a stale socket file is left)"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied on {at}: the broker socket (mode 0660) is for members of \
             server.broker_socket_group; the admin socket (mode 0600) for the daemon's own \
             user, e.g. `sudo -u credbroker credbroker tasks list` (the daemon then also checks \
             server.admin_uids)"
        ),
        _ => format!("cannot connect to {at}: {e}"),
    }
}

/// A refusal from the daemon, shown with its reason code.
#[derive(Debug)]
pub struct Refused {
    pub code: tonic::Code,
    pub reason: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The message starts with the reason code already.
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Refused {}

impl From<tonic::Status> for Refused {
    fn from(s: tonic::Status) -> Self {
        Self {
            code: s.code(),
            reason: reason_of(&s),
            message: s.message().to_string(),
        }
    }
}

/// How long [`begin_task`] keeps retrying a BeginTask whose answer was lost to the transport.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a failed call never got an answer from credbroker (a reset, a restart, no daemon):
/// then its outcome is unknown and only an idempotent retry is safe.
pub fn is_transport(s: &tonic::Status) -> bool {
    reason_of(s).is_none()
        && matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        )
}

/// BeginTask, safe to retry: every attempt carries an idempotency key, an answer lost to the
/// transport is retried with the same key for up to ten seconds, and when the daemon says the
/// key already began a task (`begin_replayed`: it ended that task, whose answer was lost) the
/// request is made once more with a new key. So a reset never leaves a live credential the
/// caller does not know about.
pub async fn begin_task(
    socket: &Path,
    mut request: crate::proto::v1::BeginTaskRequest,
) -> anyhow::Result<crate::proto::v1::BeginTaskResponse> {
    use crate::proto::v1::broker_client::BrokerClient;
    for _fresh in 0..2 {
        request.idempotency_key = Some(uuid::Uuid::now_v7().to_string());
        let deadline = std::time::Instant::now() + RETRY_FOR;
        let mut delay = std::time::Duration::from_millis(50);
        let mut told = false;
        let replayed = loop {
            let outcome = match channel(socket).await {
                Ok(ch) => BrokerClient::new(ch)
                    .begin_task(request.clone())
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(Some),
                // No connection: nothing was sent, a retry is safe whatever the key.
                Err(e) if std::time::Instant::now() + delay >= deadline => return Err(e),
                Err(e) => {
                    waiting(&mut told, &e);
                    Err(None)
                }
            };
            match outcome {
                Ok(resp) => return Ok(resp),
                Err(Some(s)) if reason_of(&s).as_deref() == Some("begin_replayed") => break s,
                Err(Some(s))
                    if !is_transport(&s) || std::time::Instant::now() + delay >= deadline =>
                {
                    return Err(Refused::from(s).into());
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(1));
                }
            }
        };
        tracing::info!(message = %replayed.message(), "an earlier attempt's task was ended; beginning afresh");
    }
    anyhow::bail!("BeginTask was replayed twice; giving up")
}

/// Tells a person at a terminal, once, why the command is waiting (a daemon restarting is
/// waited for; a script sees only the outcome).
fn waiting(told: &mut bool, e: &anyhow::Error) {
    use std::io::IsTerminal as _;
    if !*told && std::io::stderr().is_terminal() {
        eprintln!("{e:#}; retrying for up to {}s…", RETRY_FOR.as_secs());
    }
    *told = true;
}

/// EndTask, retried on transport errors for up to ten seconds (ending is idempotent).
pub async fn end_task(socket: &Path, task_id: &str) -> anyhow::Result<crate::proto::v1::Task> {
    use crate::proto::v1::broker_client::BrokerClient;
    let deadline = std::time::Instant::now() + RETRY_FOR;
    let mut delay = std::time::Duration::from_millis(50);
    let mut told = false;
    loop {
        let outcome = match channel(socket).await {
            Ok(ch) => BrokerClient::new(ch)
                .end_task(crate::proto::v1::EndTaskRequest {
                    task_id: task_id.to_string(),
                })
                .await
                .map(|r| r.into_inner().task.unwrap_or_default())
                .map_err(Some),
            Err(e) if std::time::Instant::now() + delay >= deadline => return Err(e),
            Err(e) => {
                waiting(&mut told, &e);
                Err(None)
            }
        };
        match outcome {
            Ok(task) => return Ok(task),
            Err(Some(s)) if !is_transport(&s) || std::time::Instant::now() + delay >= deadline => {
                return Err(Refused::from(s).into());
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(1));
            }
        }
    }
}
