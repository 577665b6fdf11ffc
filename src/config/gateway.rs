//! The gateway's configuration: an OAuth 2.1 resource server in front of an MCP server.
//!
//! A file of its own, because the gateway faces the network: it holds the issuers it verifies
//! tokens with and its routes, never a provider credential, a journal or a key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Attribution, ConfigError, ConfigErrors, IssuerConfig, TokenSettings, validate};

#[derive(Clone, Debug)]
pub struct GatewayFile {
    /// The daemon every call is reported to (fail closed: no report, no call).
    pub daemon: DaemonLink,
    /// Threads the gateway's runtime runs on. One by default: on a small machine shared with
    /// the daemon and the MCP server, one thread avoids waking another core for every hop, and
    /// it carries far more calls than agents make (see BENCHMARKS.md).
    pub worker_threads: usize,
    pub tokens: TokenSettings,
    pub issuers: Vec<IssuerConfig>,
    /// Client owners, from each `[[issuer]]`'s `clients`.
    pub attribution: Attribution,
    pub gateways: Vec<GatewayConfig>,
}

#[derive(Clone, Debug)]
pub struct DaemonLink {
    /// The daemon's broker socket, which serves the Calls service to `server.gateway_uids`.
    pub socket: PathBuf,
    /// How long a call waits for its record to be committed before it is refused (503).
    pub timeout: Duration,
}

/// What a tool (or method) that the policy does not name gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unnamed {
    /// Refused: a new tool on the upstream is not callable until someone says who may.
    Deny,
    /// Any token for this resource may call it.
    Allow,
}

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// The MCP server's canonical URI (RFC 8707): tokens must carry it in `aud`, and it is the
    /// `resource` of the protected-resource metadata.
    pub resource: url::Url,
    pub resource_name: Option<String>,
    /// The MCP endpoint of the server behind the gateway.
    pub upstream: url::Url,
    /// Reach the upstream over this unix socket (the URL then gives only path and Host).
    pub upstream_socket: Option<PathBuf>,
    /// The CA an https upstream's certificate must chain to, instead of the platform's roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Issuer URLs, each a configured `[[issuer]]`.
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
    /// Tool name → every scope its `tools/call` needs.
    pub tools: BTreeMap<String, Vec<String>>,
    /// `resources/read`, `prompts/get` → every scope they need.
    pub methods: BTreeMap<String, Vec<String>>,
    pub default: Unnamed,
    /// Whether the upstream gets the caller's token (its audience is the upstream, so the
    /// upstream can exchange it at the broker). `false` strips it.
    pub forward_token: bool,
    pub max_body_bytes: usize,
    pub upstream_timeout: Duration,
    /// Served over TLS with these PEM files (re-read on SIGHUP); plain HTTP otherwise.
    pub tls: Option<TlsFiles>,
    /// Requests per client (per issuer), and per owner (the human a token is attributed to).
    pub rate_limit_client: Option<Rate>,
    pub rate_limit_owner: Option<Rate>,
    /// Argument keys whose values are recorded in clear in `mcp_call` records (every other
    /// argument is only in the digest). Values can be sensitive: name only what must be seen.
    pub record_arguments: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `n` requests per `per`, at most `n` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub n: u32,
    pub per: Duration,
}

impl Rate {
    /// `"20/s"`, `"600/m"`, `"10000/h"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?}: expected N/s, N/m or N/h, e.g. \"600/m\"");
        let (n, unit) = text.split_once('/').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if n == 0 {
            return Err(format!("{text:?}: a limit of 0 refuses everything"));
        }
        Ok(Self { n, per })
    }
}

/// Methods whose decision is the `methods` table's; every other method needs only a valid
/// token for this resource (listing, `initialize`, `ping`, notifications).
pub const GUARDED_METHODS: [&str; 2] = ["resources/read", "prompts/get"];

impl GatewayFile {
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: source.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                line: None,
                message: format!("cannot read: {e}"),
            }],
        })?;
        Self::parse(&text, &source)
    }

    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigErrors> {
        validate::parse_gateway(text).map_err(|errors| ConfigErrors {
            source: source.to_string(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            Rate::parse("600/m"),
            Ok(Rate {
                n: 600,
                per: Duration::from_secs(60)
            })
        );
        for bad in ["600", "x/m", "10/d", "0/s", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }
}
