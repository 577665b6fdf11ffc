//! gRPC clients over the daemon's unix sockets.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::server::status::reason_of;

pub(super) const DEFAULT_BROKER_SOCKET: &str = "/run/credbroker/broker.sock";
pub(super) const DEFAULT_ADMIN_SOCKET: &str = "/run/credbroker/admin.sock";

pub(super) async fn channel(path: &Path) -> anyhow::Result<Channel> {
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
pub(super) struct Refused {
    pub(super) code: tonic::Code,
    pub(super) reason: Option<String>,
    pub(super) message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Some(r) => write!(f, "{:?} ({r}): {}", self.code, self.message),
            None => write!(f, "{:?}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for Refused {}

impl From<tonic::Status> for Refused {
    fn from(s: tonic::Status) -> Self {
        Self { code: s.code(), reason: reason_of(&s), message: s.message().to_string() }
    }
}
