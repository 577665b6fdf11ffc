//! The unix-socket connector: one gRPC channel per socket path, redialled on every reconnect.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Error;

/// The broker socket a packaged daemon listens on.
pub const DEFAULT_SOCKET: &str = "/run/credbroker/broker.sock";

/// A gRPC channel to a unix socket (the broker's or the admin's). The first connection is made
/// here, so a missing or refusing daemon is reported as [`Error::NotConnected`] with what to do
/// about it, not as a transport error. Later connections (after a daemon restart) are dialled
/// by the channel itself when a call needs one.
pub async fn connect_unix(path: &Path) -> Result<Channel, Error> {
    let first = UnixStream::connect(path)
        .await
        .map_err(|e| Error::NotConnected {
            path: path.to_path_buf(),
            kind: e.kind(),
            message: not_connected(path, &e),
        })?;
    let first = std::sync::Mutex::new(Some(first));
    let dial: PathBuf = path.to_path_buf();
    // The URI is required by the API but unused: the connector always dials the socket.
    Endpoint::from_static("http://credbroker.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dial = dial.clone();
            let ready = first.lock().ok().and_then(|mut f| f.take());
            async move {
                let stream = match ready {
                    Some(s) => s,
                    None => UnixStream::connect(dial).await?,
                };
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| Error::Transport {
            path: path.to_path_buf(),
            source,
        })
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
