//! Raw configuration → validated [`Config`], collecting every problem rather than stopping at
//! the first one (as SPIRE's `pluginconf.Build` does).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use credbroker_provider_api::Params;
use toml::Spanned;

use super::raw::{
    RawAudit, RawBroker, RawConfig, RawGrant, RawIssuer, RawJournal, RawProvider, RawServer,
    RawTokens, RawWorkload,
};
use super::*;
use crate::policy::template;
use crate::token::Alg;

/// The longest clock-skew allowance accepted: more would let stale tokens through.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Parses a human duration such as `90s`, `15m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"90s\" or \"15m\" ({e})"))
}

/// Collects problems with their location.
struct Problems<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Problems<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn at(&mut self, span: Option<&Range<usize>>, path: impl Into<String>, msg: impl Into<String>) {
        let line = span.map(|s| self.line_of(s));
        self.errors.push(ConfigError {
            path: path.into(),
            line,
            message: msg.into(),
        });
    }

    fn duration(
        &mut self,
        span: Option<&Range<usize>>,
        path: &str,
        value: Option<&String>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(v) => match parse_duration(v) {
                Ok(d) if d.is_zero() => {
                    self.at(span, path, "must be longer than zero");
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.at(span, path, e);
                    default
                }
            },
        }
    }
}

pub(super) fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        vec![ConfigError {
            path: String::new(),
            line,
            message: e.message().to_string(),
        }]
    })?;
    let mut p = Problems {
        text,
        errors: Vec::new(),
    };

    let server = server(&mut p, raw.server);
    let journal = journal(&mut p, raw.journal);
    let tokens = tokens(&mut p, raw.tokens);
    let broker = broker(&mut p, raw.broker);
    let audit = audit(&mut p, raw.audit);
    let metrics = raw.metrics.listen.and_then(|l| match metrics_listen(&l) {
        Ok(m) => Some(m),
        Err(e) => {
            p.at(None, "metrics.listen", e);
            None
        }
    });
    let mut issuers = Vec::new();
    let mut registry: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for raw in raw.issuers {
        let span = raw.span();
        let mut raw = raw.into_inner();
        let clients = std::mem::take(&mut raw.clients);
        if let Some(i) = issuer(&mut p, &span, raw) {
            if issuers.iter().any(|o: &IssuerConfig| o.url == i.url) {
                p.at(
                    Some(&span),
                    format!("issuer.{}", i.url),
                    "is configured twice",
                );
            }
            check_clients(
                &mut p,
                Some(&span),
                &format!("issuer.{}.clients", i.url),
                &clients,
            );
            registry.entry(i.url.clone()).or_default().extend(clients);
            issuers.push(i);
        }
    }
    if issuers.is_empty() {
        p.at(None, "issuer", "at least one [[issuer]] is required");
    }
    let bind = Binding::new(&issuers);
    if !raw.attribution.clients.is_empty() {
        check_clients(
            &mut p,
            None,
            "attribution.clients",
            &raw.attribution.clients,
        );
        match bind.only() {
            Some(only) => registry
                .entry(only.to_owned())
                .or_default()
                .extend(raw.attribution.clients),
            None => p.at(
                None,
                "attribution.clients",
                "a client id means something only at its issuer: with more than one [[issuer]], \
                 list client owners under each [[issuer]] as `clients = { … }`",
            ),
        }
    }
    let attribution = Attribution {
        require_owner: raw.attribution.require_owner,
        clients: registry,
    };

    let providers = providers(&mut p, raw.providers);
    let provider_names: BTreeSet<&str> = providers.iter().map(|p| p.name.as_str()).collect();

    let mut grants = BTreeMap::new();
    for raw in raw.grants {
        let span = raw.span();
        let mut raw = raw.into_inner();
        let issuer = raw.issuer.take();
        let mut g = grant(&mut p, &span, raw, &provider_names, &broker);
        g.issuer = bind.resolve(&mut p, &span, &format!("grant.{}", g.name), issuer);
        if grants.contains_key(&g.name) {
            p.at(Some(&span), format!("grant.{}", g.name), "is defined twice");
        }
        grants.insert(g.name.clone(), g);
    }

    let mut workloads: Vec<WorkloadConfig> = Vec::new();
    for raw in raw.workloads {
        let span = raw.span();
        let mut raw = raw.into_inner();
        let issuer = raw.issuer.take();
        let mut w = workload(&mut p, &span, raw, &grants);
        w.issuer = bind.resolve(&mut p, &span, &format!("workload.{}", w.name), issuer);
        for g in w.grants.iter().filter_map(|g| grants.get(g)) {
            if !w.issuer.is_empty() && !g.issuer.is_empty() && g.issuer != w.issuer {
                p.at(
                    Some(&span),
                    format!("workload.{}.grants", w.name),
                    format!(
                        "grant {:?} is for tokens of {:?}, but this workload accepts tokens of {:?} only",
                        g.name, g.issuer, w.issuer
                    ),
                );
            }
        }
        if workloads.iter().any(|o| o.name == w.name) {
            p.at(
                Some(&span),
                format!("workload.{}", w.name),
                "is defined twice",
            );
        }
        if let Some(o) = workloads.iter().find(|o| {
            o.uid == w.uid
                && o.gid == w.gid
                && o.exe == w.exe
                && o.systemd_unit == w.systemd_unit
                && o.systemd_user_unit == w.systemd_user_unit
        }) {
            p.at(
                Some(&span),
                format!("workload.{}", w.name),
                format!("matches exactly the same peers as workload {:?}", o.name),
            );
        }
        workloads.push(w);
    }

    if p.errors.is_empty() {
        Ok(Config {
            server,
            journal,
            tokens,
            broker,
            attribution,
            audit,
            metrics,
            issuers,
            workloads,
            grants,
            providers,
        })
    } else {
        Err(p.errors)
    }
}

fn server(p: &mut Problems<'_>, raw: RawServer) -> ServerConfig {
    let broker_socket_gid =
        raw.broker_socket_group
            .as_deref()
            .and_then(|name| match name.parse::<u32>() {
                Ok(gid) => Some(gid),
                Err(_) => match nix::unistd::Group::from_name(name) {
                    Ok(Some(g)) => Some(g.gid.as_raw()),
                    Ok(None) => {
                        p.at(
                            None,
                            "server.broker_socket_group",
                            format!("no group named {name:?}"),
                        );
                        None
                    }
                    Err(e) => {
                        p.at(
                            None,
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
        if !path.is_absolute() {
            p.at(None, format!("server.{key}"), "must be an absolute path");
        }
    }
    if raw.broker_socket == raw.admin_socket {
        p.at(
            None,
            "server.admin_socket",
            "must differ from server.broker_socket",
        );
    }
    let mut admin_uids: BTreeSet<u32> = raw.admin_uids.unwrap_or_default().into_iter().collect();
    admin_uids.insert(nix::unistd::geteuid().as_raw());
    let max_connections_per_uid = raw.max_connections_per_uid.unwrap_or(256);
    if !(1..=4096).contains(&max_connections_per_uid) {
        p.at(
            None,
            "server.max_connections_per_uid",
            "must be between 1 and 4096",
        );
    }
    let connection_idle_timeout = p.duration(
        None,
        "server.connection_idle_timeout",
        raw.connection_idle_timeout.as_ref(),
        Duration::from_secs(30),
    );
    if connection_idle_timeout > Duration::from_secs(300) {
        p.at(
            None,
            "server.connection_idle_timeout",
            "must be at most 5m: an idle connection holds a file descriptor",
        );
    }
    ServerConfig {
        broker_socket: raw.broker_socket,
        broker_socket_gid,
        admin_socket: raw.admin_socket,
        admin_uids,
        max_connections_per_uid,
        connection_idle_timeout,
    }
}

fn journal(p: &mut Problems<'_>, raw: RawJournal) -> JournalConfig {
    let key = match (raw.key_file, raw.key_credential) {
        (Some(f), None) => KeySource::File(f),
        (None, Some(c)) => KeySource::Credential(c),
        (None, None) => {
            p.at(
                None,
                "journal",
                "one of key_file or key_credential is required",
            );
            KeySource::Credential(String::new())
        }
        (Some(_), Some(_)) => {
            p.at(
                None,
                "journal",
                "key_file and key_credential are mutually exclusive",
            );
            KeySource::Credential(String::new())
        }
    };
    JournalConfig {
        path: raw.path,
        key,
        fsync_intents: raw.fsync_intents,
    }
}

fn audit(p: &mut Problems<'_>, raw: RawAudit) -> AuditConfig {
    let head_key = match (raw.head_key_file, raw.head_key_credential) {
        (Some(f), None) => Some(KeySource::File(f)),
        (None, Some(c)) => Some(KeySource::Credential(c)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            p.at(
                None,
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
                p.at(None, "audit.retention", "must be at least 1 day");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                p.at(None, "audit.retention", e);
                None
            }
        });
    if let Some(dir) = raw.archive_dir.as_ref().filter(|d| !d.is_absolute()) {
        p.at(
            None,
            "audit.archive_dir",
            format!("{} must be absolute", dir.display()),
        );
    }
    if raw.archive_dir.is_some() && retention.is_none() {
        p.at(
            None,
            "audit.archive_dir",
            "only makes sense with audit.retention",
        );
    }
    AuditConfig {
        head_key,
        retention,
        archive_dir: raw.archive_dir,
    }
}

/// `127.0.0.1:9464`, `[::1]:9464` or `unix:/run/credbroker/metrics.sock`.
fn metrics_listen(text: &str) -> Result<MetricsListen, String> {
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

fn tokens(p: &mut Problems<'_>, raw: RawTokens) -> TokenSettings {
    let d = TokenSettings::default();
    let leeway = match raw.leeway.as_deref().map(parse_duration) {
        None => d.leeway,
        Some(Ok(l)) if l <= MAX_LEEWAY => l,
        Some(Ok(_)) => {
            p.at(None, "tokens.leeway", "must be at most 5m");
            d.leeway
        }
        Some(Err(e)) => {
            p.at(None, "tokens.leeway", e);
            d.leeway
        }
    };
    let max_token_bytes = raw.max_token_bytes.unwrap_or(d.max_token_bytes);
    if !(512..=65_536).contains(&max_token_bytes) {
        p.at(
            None,
            "tokens.max_token_bytes",
            "must be between 512 and 65536",
        );
    }
    TokenSettings {
        max_token_bytes,
        leeway,
        cache_entries: raw.cache_entries.unwrap_or(d.cache_entries),
    }
}

fn broker(p: &mut Problems<'_>, raw: RawBroker) -> BrokerSettings {
    let d = BrokerSettings::default();
    let s = BrokerSettings {
        max_grants_per_task: raw.max_grants_per_task.unwrap_or(d.max_grants_per_task),
        default_ttl: p.duration(
            None,
            "broker.default_ttl",
            raw.default_ttl.as_ref(),
            d.default_ttl,
        ),
        provider_concurrency: raw.provider_concurrency.unwrap_or(d.provider_concurrency),
        provider_timeout: p.duration(
            None,
            "broker.provider_timeout",
            raw.provider_timeout.as_ref(),
            d.provider_timeout,
        ),
        end_task_wait: p.duration(
            None,
            "broker.end_task_wait",
            raw.end_task_wait.as_ref(),
            d.end_task_wait,
        ),
        revoke_backoff_initial: p.duration(
            None,
            "broker.revoke_backoff_initial",
            raw.revoke_backoff_initial.as_ref(),
            d.revoke_backoff_initial,
        ),
        revoke_backoff_max: p.duration(
            None,
            "broker.revoke_backoff_max",
            raw.revoke_backoff_max.as_ref(),
            d.revoke_backoff_max,
        ),
        refusal_audit_limit: raw.refusal_audit_limit.unwrap_or(d.refusal_audit_limit),
        refusal_audit_window: p.duration(
            None,
            "broker.refusal_audit_window",
            raw.refusal_audit_window.as_ref(),
            d.refusal_audit_window,
        ),
    };
    if s.refusal_audit_limit == 0 {
        p.at(
            None,
            "broker.refusal_audit_limit",
            "must be at least 1: every kind of refusal must leave a trace",
        );
    }
    if s.max_grants_per_task == 0 || s.max_grants_per_task > 64 {
        p.at(
            None,
            "broker.max_grants_per_task",
            "must be between 1 and 64",
        );
    }
    if s.provider_concurrency == 0 {
        p.at(None, "broker.provider_concurrency", "must be at least 1");
    }
    if s.revoke_backoff_initial > s.revoke_backoff_max {
        p.at(
            None,
            "broker.revoke_backoff_initial",
            "must not exceed broker.revoke_backoff_max",
        );
    }
    s
}

/// Issuer URLs must be https, except on loopback (local test servers). Anything that can
/// change what the URL names (query, fragment, credentials) is refused.
pub fn check_issuer_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment (RFC 8414)".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain credentials".into());
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        _ => Err("must be https (http is allowed only for loopback hosts)".into()),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

fn issuer(p: &mut Problems<'_>, span: &Range<usize>, raw: RawIssuer) -> Option<IssuerConfig> {
    let path = format!("issuer.{}", raw.url);
    if let Err(e) = check_issuer_url(&raw.url) {
        p.at(Some(span), format!("{path}.url"), e);
    }
    let algorithms = match raw.algorithms {
        None => vec![Alg::RS256, Alg::ES256, Alg::EdDSA],
        Some(names) => {
            let mut algs = Vec::new();
            for name in names {
                match Alg::from_config(&name) {
                    Ok(a) => algs.push(a),
                    Err(e) => p.at(Some(span), format!("{path}.algorithms"), e),
                }
            }
            if algs.is_empty() {
                p.at(
                    Some(span),
                    format!("{path}.algorithms"),
                    "must name at least one algorithm",
                );
            }
            algs
        }
    };
    let metadata = match raw.metadata.as_deref() {
        None | Some("auto") => MetadataMode::Auto,
        Some("oauth") => MetadataMode::OAuth,
        Some("oidc") => MetadataMode::Oidc,
        Some(other) => {
            p.at(
                Some(span),
                format!("{path}.metadata"),
                format!("{other:?}: expected auto, oauth or oidc"),
            );
            MetadataMode::Auto
        }
    };
    let refresh = p.duration(
        Some(span),
        &format!("{path}.refresh"),
        raw.refresh.as_ref(),
        Duration::from_secs(900),
    );
    let min_refresh_interval = p.duration(
        Some(span),
        &format!("{path}.min_refresh_interval"),
        raw.min_refresh_interval.as_ref(),
        Duration::from_secs(30),
    );
    let http_timeout = p.duration(
        Some(span),
        &format!("{path}.http_timeout"),
        raw.http_timeout.as_ref(),
        Duration::from_secs(5),
    );
    Some(IssuerConfig {
        url: raw.url,
        algorithms,
        metadata,
        jwks_file: raw.jwks_file,
        refresh,
        min_refresh_interval,
        http_timeout,
        ca_file: raw.ca_file,
    })
}

fn providers(p: &mut Problems<'_>, raws: Vec<Spanned<RawProvider>>) -> Vec<ProviderConfig> {
    let mut out: Vec<ProviderConfig> = Vec::new();
    for raw in raws {
        let span = raw.span();
        let raw = raw.into_inner();
        check_name(p, &span, "provider", &raw.name);
        if out.iter().any(|o| o.name == raw.name) {
            p.at(
                Some(&span),
                format!("provider.{}", raw.name),
                "is defined twice",
            );
        }
        out.push(ProviderConfig {
            name: raw.name,
            kind: raw.kind,
            settings: to_params(raw.settings),
        });
    }
    out
}

/// Binds grants and workloads to the issuer whose tokens they accept. With one issuer that is
/// the default; with several each must say, because the same `sub` or `client_id` at two
/// issuers names two different principals.
struct Binding<'a> {
    urls: Vec<&'a str>,
}

impl<'a> Binding<'a> {
    fn new(issuers: &'a [IssuerConfig]) -> Self {
        Self {
            urls: issuers.iter().map(|i| i.url.as_str()).collect(),
        }
    }

    fn only(&self) -> Option<&'a str> {
        match self.urls.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    fn resolve(
        &self,
        p: &mut Problems<'_>,
        span: &Range<usize>,
        path: &str,
        named: Option<String>,
    ) -> String {
        match named {
            Some(url) if self.urls.contains(&url.as_str()) => url,
            Some(url) => {
                p.at(
                    Some(span),
                    format!("{path}.issuer"),
                    format!("no [[issuer]] with url {url:?}"),
                );
                String::new()
            }
            None => match self.only() {
                Some(only) => only.to_owned(),
                None if self.urls.is_empty() => String::new(),
                None => {
                    p.at(
                        Some(span),
                        format!("{path}.issuer"),
                        "is required when more than one [[issuer]] is configured: the same \
                         subject or client id at two issuers is two different principals",
                    );
                    String::new()
                }
            },
        }
    }
}

fn check_clients(
    p: &mut Problems<'_>,
    span: Option<&Range<usize>>,
    path: &str,
    clients: &BTreeMap<String, String>,
) {
    for (client, owner) in clients {
        if client.is_empty() || owner.is_empty() {
            p.at(
                span,
                format!("{path}.{client}"),
                "client and owner must not be empty",
            );
        }
    }
}

fn grant(
    p: &mut Problems<'_>,
    span: &Range<usize>,
    raw: RawGrant,
    providers: &BTreeSet<&str>,
    broker: &BrokerSettings,
) -> GrantConfig {
    let path = format!("grant.{}", raw.name);
    check_name(p, span, "grant", &raw.name);
    if !providers.contains(raw.provider.as_str()) {
        p.at(
            Some(span),
            format!("{path}.provider"),
            format!("no [[provider]] named {:?}", raw.provider),
        );
    }
    if raw.scopes.is_empty() {
        // Deny by default: a grant must be tied to something the authorization server decided.
        p.at(
            Some(span),
            format!("{path}.scopes"),
            "must name at least one scope",
        );
    }
    for s in &raw.scopes {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            p.at(
                Some(span),
                format!("{path}.scopes"),
                format!("{s:?} is not a valid scope token"),
            );
        }
    }
    for (claim, values) in &raw.conditions {
        if values.is_empty() {
            p.at(
                Some(span),
                format!("{path}.conditions.{claim}"),
                "must list at least one value",
            );
        }
    }
    let max_ttl = p.duration(
        Some(span),
        &format!("{path}.max_ttl"),
        Some(&raw.max_ttl),
        broker.default_ttl,
    );
    let default_ttl = raw
        .default_ttl
        .as_ref()
        .map(|d| p.duration(Some(span), &format!("{path}.default_ttl"), Some(d), max_ttl));
    if default_ttl.is_some_and(|d| d > max_ttl) {
        p.at(
            Some(span),
            format!("{path}.default_ttl"),
            "must not exceed max_ttl",
        );
    }
    let params = to_params(raw.params);
    template::check_params(&params, &mut |key, e| {
        p.at(Some(span), format!("{path}.params.{key}"), e);
    });
    GrantConfig {
        name: raw.name,
        provider: raw.provider,
        issuer: String::new(),
        scopes: raw.scopes,
        conditions: raw.conditions,
        max_ttl,
        default_ttl,
        tools: raw.tools.map(|t| t.into_iter().collect()),
        params,
    }
}

fn workload(
    p: &mut Problems<'_>,
    span: &Range<usize>,
    raw: RawWorkload,
    grants: &BTreeMap<String, GrantConfig>,
) -> WorkloadConfig {
    let path = format!("workload.{}", raw.name);
    check_name(p, span, "workload", &raw.name);
    let uid = match (raw.uid, raw.user.as_deref()) {
        (Some(uid), None) => Some(uid),
        (None, Some(user)) => match nix::unistd::User::from_name(user) {
            Ok(Some(u)) => Some(u.uid.as_raw()),
            Ok(None) => {
                p.at(
                    Some(span),
                    format!("{path}.user"),
                    format!("no user named {user:?}"),
                );
                None
            }
            Err(e) => {
                p.at(
                    Some(span),
                    format!("{path}.user"),
                    format!("cannot look up {user:?}: {e}"),
                );
                None
            }
        },
        (Some(_), Some(_)) => {
            p.at(
                Some(span),
                format!("{path}.user"),
                "uid and user are mutually exclusive",
            );
            None
        }
        (None, None) => None,
    };
    if raw.uid.is_none() && raw.user.is_none() && raw.gid.is_none() {
        // A workload that any local process could claim would defeat peer identification.
        p.at(Some(span), &path, "must match on uid, user or gid");
    }
    if raw.exe.as_ref().is_some_and(|e| !e.is_absolute()) {
        p.at(
            Some(span),
            format!("{path}.exe"),
            "must be an absolute path",
        );
    }
    for (key, unit) in [
        ("systemd_unit", &raw.systemd_unit),
        ("systemd_user_unit", &raw.systemd_user_unit),
    ] {
        if let Some(unit) = unit
            && (!(unit.ends_with(".service") || unit.ends_with(".scope"))
                || unit.contains('/')
                || unit.len() <= ".scope".len())
        {
            p.at(
                Some(span),
                format!("{path}.{key}"),
                "must be a unit name like foo.service",
            );
        }
    }
    if raw.systemd_user_unit.is_some() && raw.uid.is_none() && raw.user.is_none() {
        p.at(
            Some(span),
            format!("{path}.systemd_user_unit"),
            "a user unit belongs to one user's manager: name that user with uid or user",
        );
    }
    if reqwest::Url::parse(&raw.audience).is_err() {
        p.at(
            Some(span),
            format!("{path}.audience"),
            "must be an absolute URI (the MCP server's resource)",
        );
    }
    if raw.grants.is_empty() {
        p.at(
            Some(span),
            format!("{path}.grants"),
            "must name at least one grant",
        );
    }
    for g in &raw.grants {
        if !grants.contains_key(g) {
            p.at(
                Some(span),
                format!("{path}.grants"),
                format!("no [[grant]] named {g:?}"),
            );
        }
    }
    WorkloadConfig {
        name: raw.name,
        uid,
        gid: raw.gid,
        exe: raw.exe,
        systemd_unit: raw.systemd_unit,
        systemd_user_unit: raw.systemd_user_unit,
        issuer: String::new(),
        audience: raw.audience,
        grants: raw.grants.into_iter().collect(),
    }
}

/// Names appear in audit records, metrics and CLI arguments: keep them plain.
fn check_name(p: &mut Problems<'_>, span: &Range<usize>, what: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        p.at(
            Some(span),
            format!("{what}.{name}"),
            "names must be 1-64 characters of [A-Za-z0-9._-]",
        );
    }
}

fn to_params(table: toml::Table) -> Params {
    match serde_json::to_value(table) {
        Ok(serde_json::Value::Object(map)) => map,
        // A TOML table always converts to a JSON object (datetimes become strings).
        _ => Params::new(),
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
