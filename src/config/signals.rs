//! Shared Signals (SSF 1.0) transmitters: whose Security Event Tokens the daemon takes, by push
//! (RFC 8935, on `[signals] listen`) or by poll (RFC 8936), and what it does with them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::SecretSource;
use crate::jose::Alg;

#[derive(Clone, Debug, PartialEq)]
pub struct SignalsConfig {
    /// The push endpoint (`POST /ssf/<transmitter>`), loopback: put TLS in front of it.
    pub listen: Option<SocketAddr>,
    pub transmitters: Vec<Transmitter>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Transmitter {
    pub name: String,
    /// The SETs' `iss`.
    pub issuer: String,
    /// What the SETs' `aud` must hold: this receiver.
    pub audience: String,
    pub jwks_file: Option<PathBuf>,
    pub jwks_uri: Option<String>,
    pub algorithms: Vec<Alg>,
    /// The bearer token the transmitter pushes with; `None`: no push from it.
    pub push_bearer: Option<SecretSource>,
    pub poll: Option<Poll>,
    /// A SET issued longer ago than this is refused.
    pub max_age: Duration,
    /// How long a subject it names is blocked.
    pub block_for: Duration,
    /// The token issuer its subjects belong to (an `iss_sub` naming a configured issuer wins).
    pub subject_issuer: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Poll {
    pub url: String,
    pub bearer: SecretSource,
    pub interval: Duration,
}
