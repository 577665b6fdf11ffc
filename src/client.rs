//! Connecting to the daemon's unix sockets (used by the CLI, the load generator and the tests).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::server::status::reason_of;

pub const DEFAULT_BROKER_SOCKET: &str = "/run/credbroker/broker.sock";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/credbroker/admin.sock";

/// A gRPC channel to a unix socket.
pub async fn channel(path: &Path) -> anyhow::Result<Channel> {
    let path: PathBuf = path.to_path_buf();
    let shown = path.display().to_string();
    // The URI is required by the API but unused: the connector always dials the socket.
    Endpoint::try_from("http://credbroker.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("cannot connect to {shown}"))
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
