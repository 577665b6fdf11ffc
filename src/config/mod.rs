//! Configuration: TOML in, a validated [`Config`] out, or every problem at once.
//!
//! Raw serde structs (`raw`) reject unknown keys; `validate` turns them into the types below and
//! names each problem by its path (`grant.orders-db-read.max_ttl`) and, where it can, its line.

pub mod abuse;
pub mod clients;
pub mod gateway;
mod lines;
mod raw;
mod schema;
pub mod signals;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use credbroker_provider_api::Params;

use crate::jose::Alg;

pub use lines::KeyLines;
pub use validate::{check_issuer_url, parse_duration};

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub journal: JournalConfig,
    pub tokens: TokenSettings,
    pub broker: BrokerSettings,
    pub attribution: Attribution,
    pub audit: AuditConfig,
    pub metrics: Option<MetricsListen>,
    pub abuse: Option<abuse::AbuseConfig>,
    /// `[signals]` and `[[transmitter]]`: Shared Signals receivers.
    pub signals: Option<signals::SignalsConfig>,
    /// `[[client]]`: the registered OAuth clients.
    pub clients: Vec<clients::ClientEntry>,
    pub issuers: Vec<IssuerConfig>,
    pub workloads: Vec<WorkloadConfig>,
    pub grants: BTreeMap<String, GrantConfig>,
    pub providers: Vec<ProviderConfig>,
    /// Where provider settings and grant parameters are written, for providers' problems.
    pub key_lines: KeyLines,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub broker_socket: PathBuf,
    /// Group that owns the broker socket (mode 0660), so its members' MCP servers can connect.
    pub broker_socket_gid: Option<u32>,
    pub admin_socket: PathBuf,
    /// Peer uids allowed on the admin socket. Always includes the daemon's own uid.
    pub admin_uids: BTreeSet<u32>,
    /// Peer uids whose `credbroker gateway` may record MCP calls (the Calls service). None by
    /// default: the daemon's own uid is not implied, since the gateway should run as its own.
    pub gateway_uids: BTreeSet<u32>,
    /// Connections one uid may hold open on a socket; more are closed as they arrive.
    pub max_connections_per_uid: usize,
    /// A connection that sends no request within this is closed.
    pub connection_idle_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub path: PathBuf,
    pub key: KeySource,
    /// fsync intents too (two fsyncs per BeginTask instead of one). Without it an intent
    /// survives the daemon being killed but not the machine losing power: see ARCHITECTURE.md.
    pub fsync_intents: bool,
}

#[derive(Clone, Debug, Default)]
pub struct AuditConfig {
    /// Seals the audit chain's head (HMAC-SHA256) in every commit; see `audit::verify`.
    pub head_key: Option<KeySource>,
    /// Audit records older than this are pruned (hourly), leaving an anchor; none: kept forever.
    pub retention: Option<Duration>,
    /// Pruned records are first archived here as JSON Lines (and nothing is pruned if that fails).
    pub archive_dir: Option<PathBuf>,
}

/// Where the Prometheus endpoint listens: loopback TCP or a unix socket, never further.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// Where the journal's encryption key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY`.
    Credential(String),
}

impl KeySource {
    /// The 256-bit key (32 raw bytes, or 64 hex digits) from the file or the credential. The
    /// same shape for every key credbroker reads: journal, audit head, export.
    pub fn read(
        &self,
        env: &dyn credbroker_provider_api::Env,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        let bytes = match self {
            Self::File(path) => zeroize::Zeroizing::new(
                std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            Self::Credential(name) => {
                let secret = env.credential(name)?;
                zeroize::Zeroizing::new(secret.expose().as_bytes().to_vec())
            }
        };
        crate::keys::key_bytes(&bytes).ok_or_else(|| crate::keys::KEY_SHAPE.to_string())
    }

    /// An HMAC key of the audit trail (head seal, export pseudonyms) from this source.
    pub fn audit_key(
        &self,
        env: &dyn credbroker_provider_api::Env,
    ) -> Result<crate::keys::AuditKey, String> {
        Ok(crate::keys::AuditKey::from_key(&self.read(env)?))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSettings {
    pub max_token_bytes: usize,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Bounded at five minutes.
    pub leeway: Duration,
    pub cache_entries: usize,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            max_token_bytes: 8192,
            leeway: Duration::from_secs(30),
            cache_entries: 65_536,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BrokerSettings {
    pub max_grants_per_task: usize,
    /// Task lifetime when the request names none (still capped by grants and the token).
    pub default_ttl: Duration,
    /// Concurrent calls per provider instance.
    pub provider_concurrency: usize,
    /// How long one provider call may take before its outcome is treated as unknown.
    pub provider_timeout: Duration,
    /// How long EndTask waits for revocations before answering with what is still pending.
    pub end_task_wait: Duration,
    pub revoke_backoff_initial: Duration,
    pub revoke_backoff_max: Duration,
    /// Refusal records written per peer uid per `refusal_audit_window`; the rest are counted
    /// in one `refusals_suppressed` record.
    pub refusal_audit_limit: u32,
    pub refusal_audit_window: Duration,
    /// Refuse tokens of clients the registry does not hold (`client_unregistered`).
    pub require_registered_client: bool,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            max_grants_per_task: 16,
            default_ttl: Duration::from_secs(15 * 60),
            provider_concurrency: 64,
            provider_timeout: Duration::from_secs(10),
            end_task_wait: Duration::from_secs(5),
            revoke_backoff_initial: Duration::from_secs(1),
            revoke_backoff_max: Duration::from_secs(300),
            refusal_audit_limit: 100,
            refusal_audit_window: Duration::from_secs(60),
            require_registered_client: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Attribution {
    pub require_owner: bool,
    /// issuer → client_id → owner, for machine clients acting for a known human or team. A
    /// client id means something only at its issuer, so the registry is kept per issuer.
    pub clients: BTreeMap<String, BTreeMap<String, String>>,
}

impl Attribution {
    pub fn owner_of(&self, issuer: &str, client_id: &str) -> Option<&str> {
        self.clients.get(issuer)?.get(client_id).map(String::as_str)
    }
}

/// How an issuer's metadata is discovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataMode {
    /// RFC 8414 first, then OpenID Connect discovery.
    Auto,
    /// RFC 8414 `/.well-known/oauth-authorization-server` only.
    OAuth,
    /// OpenID Connect `/.well-known/openid-configuration` only.
    Oidc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The exact issuer identifier; the token's `iss` and the metadata's `issuer` must equal it.
    pub url: String,
    pub algorithms: Vec<Alg>,
    pub metadata: MetadataMode,
    /// A static JWKS for air-gapped hosts; no network is used for this issuer when set.
    pub jwks_file: Option<PathBuf>,
    pub refresh: Duration,
    /// At most one refresh triggered by an unknown `kid` per this interval.
    pub min_refresh_interval: Duration,
    pub http_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    /// RFC 7662 introspection at this issuer, when configured.
    pub introspection: Option<Introspection>,
}

/// Which tokens are introspected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntrospectMode {
    /// Opaque (non-JWT) tokens only: they cannot be checked any other way.
    Opaque,
    /// JWTs too, after their local checks: a token the AS revoked (RFC 7009) stops working
    /// within `cache`, not at its expiry.
    Always,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Introspection {
    pub mode: IntrospectMode,
    /// The introspection endpoint; `None`: from the issuer's metadata.
    pub endpoint: Option<String>,
    /// credbroker's client at the AS (client_secret_basic).
    pub client_id: String,
    pub secret: SecretSource,
    /// How long an answer is trusted.
    pub cache: Duration,
    /// Active tasks' tokens are introspected again this often; a revoked one ends its tasks.
    pub recheck_active: Option<Duration>,
}

/// Where a secret that is not a key (a client secret, a bearer token) is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY`.
    Credential(String),
}

impl SecretSource {
    /// The secret, without a trailing newline; an empty one is refused. The error names the
    /// file, never its content.
    pub fn read(&self) -> Result<credbroker_provider_api::SecretValue, String> {
        let path = match self {
            Self::File(p) => p.clone(),
            Self::Credential(name) => std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|d| PathBuf::from(d).join(name))
                .ok_or_else(|| format!("credential {name:?}: $CREDENTIALS_DIRECTORY is not set"))?,
        };
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?,
        );
        let secret = text.trim_end_matches(['\r', '\n']);
        if secret.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        Ok(credbroker_provider_api::SecretValue::new(secret))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadConfig {
    pub name: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub exe: Option<PathBuf>,
    pub systemd_unit: Option<String>,
    /// A user unit, under the user manager of the peer's own uid (`user@UID.service`).
    pub systemd_user_unit: Option<String>,
    /// The one issuer whose tokens this workload accepts.
    pub issuer: String,
    /// The workload's MCP resource URI: tokens must carry it in `aud` (RFC 8707).
    pub audience: String,
    pub grants: BTreeSet<String>,
}

#[derive(Clone, Debug)]
pub struct GrantConfig {
    pub name: String,
    pub provider: String,
    /// The one issuer whose tokens may use this grant: its templates render that issuer's
    /// claims, and the same `sub` at another issuer is another person.
    pub issuer: String,
    /// Every one of these must be in the token's `scope`.
    pub scopes: Vec<String>,
    /// claim path → allowed values; the claim must hold at least one of them.
    pub conditions: BTreeMap<String, Vec<String>>,
    pub max_ttl: Duration,
    pub default_ttl: Option<Duration>,
    /// When set, the task's tool must be one of these.
    pub tools: Option<BTreeSet<String>>,
    /// Provider parameters, with `{sub}`-style templates not yet rendered.
    pub params: Params,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: String,
    pub settings: Params,
}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} problem(s)", self.source, self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A configuration read as far as it could be, and every problem found so far. Later checks
/// (providers, files) add theirs, so one run reports everything.
#[derive(Debug)]
pub struct Checked {
    /// `None` only when the file could not be read as TOML at all. With problems, values that
    /// were missing or wrong hold stand-ins.
    pub config: Option<Config>,
    errors: Vec<ConfigError>,
    /// Keys that were missing (and are stood in for): their problem is already reported.
    stand_ins: BTreeSet<String>,
}

impl Checked {
    fn failed(error: ConfigError) -> Self {
        Self {
            config: None,
            errors: vec![error],
            stand_ins: BTreeSet::new(),
        }
    }

    /// Adds problems found by a later check, except those about stood-in values.
    pub fn add(&mut self, errors: impl IntoIterator<Item = ConfigError>) {
        let stand_ins = &self.stand_ins;
        self.errors.extend(
            errors
                .into_iter()
                .filter(|e| !stand_ins.iter().any(|s| e.path.starts_with(s.as_str()))),
        );
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty() && self.config.is_some()
    }

    /// The configuration, or every problem in file order (the order an operator fixes them).
    pub fn finish(mut self, source: &str) -> Result<Config, ConfigErrors> {
        match self.config {
            Some(config) if self.errors.is_empty() => Ok(config),
            _ => {
                self.errors.sort_by_key(|e| e.line.unwrap_or(0));
                Err(ConfigErrors {
                    source: source.to_string(),
                    errors: self.errors,
                })
            }
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::check_file(path).finish(&path.display().to_string())
    }

    /// Reads a configuration file as far as it can, collecting every problem.
    pub fn check_file(path: &Path) -> Checked {
        match std::fs::read_to_string(path) {
            Ok(text) => validate::parse(&text),
            Err(e) => Checked::failed(ConfigError {
                path: String::new(),
                line: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Validates configuration text. `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigErrors> {
        validate::parse(text).finish(source)
    }

    pub fn workload(&self, name: &str) -> Option<&WorkloadConfig> {
        self.workloads.iter().find(|w| w.name == name)
    }
}
