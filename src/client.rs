//! Connecting to the daemon's unix sockets (used by the CLI's admin commands, the load
//! generator and the tests). The workload side — BeginTask with its retries, EndTask, renewal —
//! is the `credbroker-client` crate; this module only lends its connector to the admin socket.

use std::path::Path;

use tonic::transport::Channel;

pub use credbroker_client::DEFAULT_SOCKET as DEFAULT_BROKER_SOCKET;
/// A refusal from the daemon, shown with its reason code (or a call it never answered).
pub use credbroker_client::Error as Refused;

pub const DEFAULT_ADMIN_SOCKET: &str = "/run/credbroker/admin.sock";

/// A gRPC channel to a unix socket. The first connection is made here, so a missing or
/// refusing daemon is reported with what to do about it, not as a transport error.
pub async fn channel(path: &Path) -> anyhow::Result<Channel> {
    Ok(credbroker_client::connect_unix(path).await?)
}
