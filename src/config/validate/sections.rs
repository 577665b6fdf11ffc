//! The sections that are one table each: [server], [journal], [audit], [metrics], [tokens],
//! [broker].

#[allow(unused_imports)]
use super::*;

pub(super) fn server(p: &mut Problems, raw: RawServer) -> ServerConfig {
    let broker_socket_gid =
        raw.broker_socket_group
            .as_deref()
            .and_then(|name| match name.parse::<u32>() {
                Ok(gid) => Some(gid),
                Err(_) => match nix::unistd::Group::from_name(name) {
                    Ok(Some(g)) => Some(g.gid.as_raw()),
                    Ok(None) => {
                        p.at(
                            "server.broker_socket_group",
                            format!("no group named {name:?}"),
                        );
                        None
                    }
                    Err(e) => {
                        p.at(
                            "server.broker_socket_group",
                            format!("cannot look up {name:?}: {e}"),
                        );
                        None
                    }
                },
            });
    for (key, path) in [
        ("broker_socket", &raw.broker_socket),
        ("admin_socket", &raw.admin_socket),
    ] {
        check_path(p, &format!("server.{key}"), path);
        // sun_path holds 108 bytes with its terminating NUL; a longer path fails only at bind.
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            p.at(
                format!("server.{key}"),
                format!("is {len} bytes; a unix socket path is at most {MAX_SOCKET_PATH}"),
            );
        }
    }
    if raw.broker_socket == raw.admin_socket {
        p.at(
            "server.admin_socket",
            "must differ from server.broker_socket",
        );
    }
    let mut admin_uids: BTreeSet<u32> = raw.admin_uids.unwrap_or_default().into_iter().collect();
    admin_uids.insert(nix::unistd::geteuid().as_raw());
    let max_connections_per_uid = raw.max_connections_per_uid.unwrap_or(256);
    if !(1..=4096).contains(&max_connections_per_uid) {
        p.at(
            "server.max_connections_per_uid",
            "must be between 1 and 4096",
        );
    }
    let connection_idle_timeout = p.duration(
        "server.connection_idle_timeout",
        raw.connection_idle_timeout.as_ref(),
        Duration::from_secs(30),
        bounds::IDLE,
    );
    ServerConfig {
        broker_socket: raw.broker_socket,
        broker_socket_gid,
        admin_socket: raw.admin_socket,
        admin_uids,
        gateway_uids: raw.gateway_uids.unwrap_or_default().into_iter().collect(),
        max_connections_per_uid,
        connection_idle_timeout,
    }
}

pub(super) fn journal(p: &mut Problems, raw: RawJournal) -> JournalConfig {
    let key = match (raw.key_file, raw.key_credential) {
        (Some(f), None) => KeySource::File(f),
        (None, Some(c)) => KeySource::Credential(c),
        (None, None) => {
            p.at("journal", "one of key_file or key_credential is required");
            KeySource::Credential(String::new())
        }
        (Some(_), Some(_)) => {
            p.at(
                "journal",
                "key_file and key_credential are mutually exclusive",
            );
            KeySource::Credential(String::new())
        }
    };
    check_path(p, "journal.path", &raw.path);
    if let KeySource::File(f) = &key {
        check_path(p, "journal.key_file", f);
    }
    JournalConfig {
        path: raw.path,
        key,
        fsync_intents: raw.fsync_intents,
    }
}

pub(super) fn audit(p: &mut Problems, raw: RawAudit) -> AuditConfig {
    if let Some(f) = &raw.head_key_file {
        check_path(p, "audit.head_key_file", f);
    }
    let head_key = match (raw.head_key_file, raw.head_key_credential) {
        (Some(f), None) => Some(KeySource::File(f)),
        (None, Some(c)) => Some(KeySource::Credential(c)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            p.at(
                "audit",
                "head_key_file and head_key_credential are mutually exclusive",
            );
            None
        }
    };
    let retention = raw
        .retention
        .as_ref()
        .and_then(|r| match parse_duration(r) {
            // Shorter than a day is almost certainly a unit mistake, and would prune records that
            // `audit export` has not had a chance to ship.
            Ok(d) if d < Duration::from_secs(86_400) => {
                p.at("audit.retention", "must be at least 1 day");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                p.at("audit.retention", e);
                None
            }
        });
    if let Some(dir) = &raw.archive_dir {
        check_path(p, "audit.archive_dir", dir);
    }
    if raw.archive_dir.is_some() && retention.is_none() {
        p.at("audit.archive_dir", "only makes sense with audit.retention");
    }
    AuditConfig {
        head_key,
        retention,
        archive_dir: raw.archive_dir,
    }
}

/// `127.0.0.1:9464`, `[::1]:9464` or `unix:/run/credbroker/metrics.sock`.
pub(super) fn metrics_listen(text: &str) -> Result<MetricsListen, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!("{text:?}: the socket path must be absolute"));
        }
        return Ok(MetricsListen::Unix(path));
    }
    let addr: std::net::SocketAddr = text.parse().map_err(|_| {
        format!("{text:?} is neither host:port nor unix:/path (e.g. \"127.0.0.1:9464\")")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{text:?}: metrics are served on loopback or a unix socket only (put a proxy in \
             front to expose them further)"
        ));
    }
    Ok(MetricsListen::Tcp(addr))
}

pub(super) fn tokens(p: &mut Problems, raw: RawTokens) -> TokenSettings {
    let d = TokenSettings::default();
    let leeway = match raw.leeway.as_deref().map(parse_duration) {
        None => d.leeway,
        Some(Ok(l)) if l <= MAX_LEEWAY => l,
        Some(Ok(_)) => {
            p.at("tokens.leeway", "must be at most 5m");
            d.leeway
        }
        Some(Err(e)) => {
            p.at("tokens.leeway", e);
            d.leeway
        }
    };
    let max_token_bytes = raw.max_token_bytes.unwrap_or(d.max_token_bytes);
    if !(512..=65_536).contains(&max_token_bytes) {
        p.at("tokens.max_token_bytes", "must be between 512 and 65536");
    }
    TokenSettings {
        max_token_bytes,
        leeway,
        cache_entries: raw.cache_entries.unwrap_or(d.cache_entries),
    }
}

pub(super) fn broker(p: &mut Problems, raw: RawBroker) -> BrokerSettings {
    let d = BrokerSettings::default();
    let s = BrokerSettings {
        max_grants_per_task: raw.max_grants_per_task.unwrap_or(d.max_grants_per_task),
        default_ttl: p.duration(
            "broker.default_ttl",
            raw.default_ttl.as_ref(),
            d.default_ttl,
            bounds::TTL,
        ),
        provider_concurrency: raw.provider_concurrency.unwrap_or(d.provider_concurrency),
        provider_timeout: p.duration(
            "broker.provider_timeout",
            raw.provider_timeout.as_ref(),
            d.provider_timeout,
            bounds::TIMEOUT,
        ),
        end_task_wait: p.duration(
            "broker.end_task_wait",
            raw.end_task_wait.as_ref(),
            d.end_task_wait,
            bounds::END_WAIT,
        ),
        revoke_backoff_initial: p.duration(
            "broker.revoke_backoff_initial",
            raw.revoke_backoff_initial.as_ref(),
            d.revoke_backoff_initial,
            bounds::BACKOFF,
        ),
        revoke_backoff_max: p.duration(
            "broker.revoke_backoff_max",
            raw.revoke_backoff_max.as_ref(),
            d.revoke_backoff_max,
            bounds::BACKOFF,
        ),
        require_registered_client: raw.require_registered_client,
        refusal_audit_limit: raw.refusal_audit_limit.unwrap_or(d.refusal_audit_limit),
        refusal_audit_window: p.duration(
            "broker.refusal_audit_window",
            raw.refusal_audit_window.as_ref(),
            d.refusal_audit_window,
            bounds::WINDOW,
        ),
    };
    if s.refusal_audit_limit == 0 {
        p.at(
            "broker.refusal_audit_limit",
            "must be at least 1: every kind of refusal must leave a trace",
        );
    }
    if s.max_grants_per_task == 0 || s.max_grants_per_task > 64 {
        p.at("broker.max_grants_per_task", "must be between 1 and 64");
    }
    if s.provider_concurrency == 0 {
        p.at("broker.provider_concurrency", "must be at least 1");
    }
    if s.revoke_backoff_initial > s.revoke_backoff_max {
        p.at(
            "broker.revoke_backoff_initial",
            "must not exceed broker.revoke_backoff_max",
        );
    }
    s
}

/// The longest unix socket path: `sun_path` is 108 bytes, one of them the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Every path in the file is absolute. Relative paths are refused, not resolved: against the
/// daemon's working directory they would change meaning between `check-config` in a shell and
/// `serve` under systemd (whose working directory is `/`).
pub(super) fn check_path(p: &mut Problems, key: &str, path: &Path) {
    if !path.is_absolute() {
        p.at(
            key,
            format!(
                "{:?} is relative; write an absolute path (relative paths are not resolved)",
                path.display().to_string()
            ),
        );
    }
}
