//! The credbroker workload API over its unix socket.
//!
//! ```no_run
//! # async fn run(token: secrecy::SecretString) -> Result<(), credbroker_client::Error> {
//! use credbroker_client::{BeginTask, Broker};
//! let broker = Broker::connect(credbroker_client::DEFAULT_SOCKET).await?;
//! let task = broker.begin(BeginTask::new(token, "query", ["orders-db-read"])).await?;
//! let db = task.credential("orders-db-read");
//! // … use `db` …
//! task.end().await?;
//! # Ok(()) }
//! ```
//!
//! Refusals come back as [`Error::Refused`] with the stable reason code in [`Error::reason`]
//! (`insufficient_scope`, `audience_mismatch`, `unknown_grant`, …). No `Debug` or `Display` of
//! any type here prints the token or a secret.

mod broker;
mod connect;
mod error;
pub mod proto;
mod task;

pub use broker::{ATTEMPT_TIMEOUT, BeginTask, Broker, Ended, Narrow, RETRY_FOR};
pub use connect::{DEFAULT_SOCKET, connect_unix};
pub use error::{ERROR_DOMAIN, Error, is_transport, reason_of};
pub use secrecy::{ExposeSecret, SecretString};
pub use task::{Credential, Task};
