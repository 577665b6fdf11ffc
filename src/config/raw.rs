//! The configuration file as written: serde structs that reject unknown keys. Nothing here is
//! trusted; `super::validate` turns it into a [`super::Config`] or a list of every problem.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) journal: RawJournal,
    #[serde(default)]
    pub(super) tokens: RawTokens,
    #[serde(default)]
    pub(super) broker: RawBroker,
    #[serde(default)]
    pub(super) attribution: RawAttribution,
    #[serde(default)]
    pub(super) audit: RawAudit,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    pub(super) abuse: Option<RawAbuse>,
    #[serde(default, rename = "issuer")]
    pub(super) issuers: Vec<RawIssuer>,
    #[serde(default, rename = "workload")]
    pub(super) workloads: Vec<RawWorkload>,
    #[serde(default, rename = "grant")]
    pub(super) grants: Vec<RawGrant>,
    #[serde(default, rename = "provider")]
    pub(super) providers: Vec<RawProvider>,
    #[serde(default, rename = "client")]
    pub(super) clients: Vec<RawClient>,
    pub(super) signals: Option<RawSignals>,
    #[serde(default, rename = "transmitter")]
    pub(super) transmitters: Vec<RawTransmitter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignals {
    pub(super) listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransmitter {
    pub(super) name: String,
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) jwks_file: Option<PathBuf>,
    pub(super) jwks_uri: Option<String>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) push_bearer_file: Option<PathBuf>,
    pub(super) push_bearer_credential: Option<String>,
    pub(super) poll_url: Option<String>,
    pub(super) poll_bearer_file: Option<PathBuf>,
    pub(super) poll_bearer_credential: Option<String>,
    pub(super) poll_interval: Option<String>,
    pub(super) max_age: Option<String>,
    pub(super) block_for: Option<String>,
    pub(super) subject_issuer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) id: String,
    pub(super) issuer: Option<String>,
    pub(super) owner: Option<String>,
    pub(super) expires: Option<String>,
    #[serde(default)]
    pub(super) grants: Vec<String>,
    pub(super) status: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) broker_socket: PathBuf,
    pub(super) broker_socket_group: Option<String>,
    pub(super) admin_socket: PathBuf,
    pub(super) admin_uids: Option<Vec<u32>>,
    pub(super) gateway_uids: Option<Vec<u32>>,
    pub(super) max_connections_per_uid: Option<usize>,
    pub(super) connection_idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJournal {
    pub(super) path: PathBuf,
    #[serde(default)]
    pub(super) fsync_intents: bool,
    pub(super) key_file: Option<PathBuf>,
    pub(super) key_credential: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    pub(super) max_token_bytes: Option<usize>,
    pub(super) leeway: Option<String>,
    pub(super) cache_entries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBroker {
    pub(super) max_grants_per_task: Option<usize>,
    pub(super) default_ttl: Option<String>,
    pub(super) provider_concurrency: Option<usize>,
    pub(super) provider_timeout: Option<String>,
    pub(super) end_task_wait: Option<String>,
    pub(super) revoke_backoff_initial: Option<String>,
    pub(super) revoke_backoff_max: Option<String>,
    pub(super) refusal_audit_limit: Option<u32>,
    pub(super) refusal_audit_window: Option<String>,
    #[serde(default)]
    pub(super) require_registered_client: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) head_key_file: Option<PathBuf>,
    pub(super) head_key_credential: Option<String>,
    pub(super) retention: Option<String>,
    pub(super) archive_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAttribution {
    #[serde(default)]
    pub(super) require_owner: bool,
    #[serde(default)]
    pub(super) clients: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    pub(super) url: String,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) metadata: Option<String>,
    pub(super) jwks_file: Option<PathBuf>,
    pub(super) refresh: Option<String>,
    pub(super) min_refresh_interval: Option<String>,
    pub(super) http_timeout: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    /// client_id → owner for this issuer's machine clients (client ids are the issuer's own:
    /// two issuers' `ci-agent` are two different clients).
    #[serde(default)]
    pub(super) clients: BTreeMap<String, String>,
    pub(super) introspect: Option<String>,
    pub(super) introspection_endpoint: Option<String>,
    pub(super) introspection_client_id: Option<String>,
    pub(super) introspection_secret_file: Option<PathBuf>,
    pub(super) introspection_secret_credential: Option<String>,
    pub(super) introspection_cache: Option<String>,
    pub(super) recheck_active: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkload {
    pub(super) name: String,
    pub(super) uid: Option<u32>,
    pub(super) user: Option<String>,
    pub(super) gid: Option<u32>,
    pub(super) exe: Option<PathBuf>,
    pub(super) systemd_unit: Option<String>,
    pub(super) systemd_user_unit: Option<String>,
    /// The issuer whose tokens this workload accepts; required when several are configured.
    pub(super) issuer: Option<String>,
    pub(super) audience: String,
    #[serde(default)]
    pub(super) grants: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    pub(super) name: String,
    pub(super) provider: String,
    /// The issuer whose tokens may use this grant; required when several are configured.
    pub(super) issuer: Option<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) conditions: BTreeMap<String, Vec<String>>,
    pub(super) max_ttl: String,
    pub(super) default_ttl: Option<String>,
    pub(super) tools: Option<Vec<String>>,
    #[serde(default)]
    pub(super) params: toml::Table,
}

/// A provider instance. Everything but `name` and `type` belongs to the provider kind, which
/// checks it itself (with its own unknown-key rejection).
#[derive(Debug, Deserialize)]
pub(super) struct RawProvider {
    pub(super) name: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(flatten)]
    pub(super) settings: toml::Table,
}

/// The gateway's file (`credbroker gateway --config`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGatewayFile {
    pub(super) daemon: RawDaemon,
    pub(super) worker_threads: Option<usize>,
    #[serde(default)]
    pub(super) tokens: RawTokens,
    #[serde(default, rename = "issuer")]
    pub(super) issuers: Vec<RawIssuer>,
    #[serde(default, rename = "gateway")]
    pub(super) gateways: Vec<RawGateway>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) name: String,
    pub(super) listen: String,
    pub(super) resource: String,
    pub(super) upstream: String,
    pub(super) resource_name: Option<String>,
    pub(super) authorization_servers: Option<Vec<String>>,
    #[serde(default)]
    pub(super) scopes_supported: Vec<String>,
    #[serde(default)]
    pub(super) tools: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(super) methods: BTreeMap<String, Vec<String>>,
    pub(super) default: Option<String>,
    pub(super) forward_token: Option<bool>,
    #[serde(default)]
    pub(super) allow_plain_http: bool,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
    pub(super) rate_limit_client: Option<String>,
    pub(super) rate_limit_owner: Option<String>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) upstream_timeout: Option<String>,
    #[serde(default)]
    pub(super) record_arguments: Vec<String>,
    pub(super) upstream_socket: Option<PathBuf>,
    pub(super) upstream_ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) socket: PathBuf,
    pub(super) timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAbuse {
    pub(super) block_for: Option<String>,
    pub(super) webhook_url: Option<String>,
    pub(super) webhook_secret_file: Option<PathBuf>,
    pub(super) webhook_secret_credential: Option<String>,
    pub(super) webhook_timeout: Option<String>,
    pub(super) wrong_audience: Option<RawDetector>,
    pub(super) token_reuse: Option<RawDetector>,
    pub(super) scope_probing: Option<RawDetector>,
    pub(super) rate: Option<RawDetector>,
    pub(super) blocked_reuse: Option<RawDetector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetector {
    #[serde(default)]
    pub(super) response: Vec<String>,
    pub(super) threshold: Option<u32>,
    pub(super) window: Option<String>,
    pub(super) per: Option<String>,
    pub(super) new_network: Option<bool>,
}
