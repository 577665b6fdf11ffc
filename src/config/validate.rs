//! Raw configuration → validated [`Config`], collecting every problem rather than stopping at
//! the first one (as SPIRE's `pluginconf.Build` does).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use credbroker_provider_api::Params;

use super::raw::{
    RawAudit, RawBroker, RawClient, RawConfig, RawGrant, RawIssuer, RawJournal, RawProvider,
    RawServer, RawTokens, RawWorkload,
};
use super::*;
use crate::jose::Alg;
use crate::template;

mod abuse;
mod entries;
mod gateway;
mod issuers;
mod sections;
mod signals;

use entries::{grant, providers, workload};
pub(super) use gateway::parse_gateway;
pub use issuers::check_issuer_url;
use issuers::{Binding, check_clients, issuers};
use sections::{audit, broker, journal, metrics_listen, server, tokens};

/// The longest clock-skew allowance accepted: more would let stale tokens through.
pub(super) const MAX_LEEWAY: Duration = Duration::from_secs(300);

pub use credbroker_provider_api::parse_duration;

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The range each duration setting must be in. Short-lived credentials are the point: no
/// lifetime beyond a day; below these floors a value is a unit mistake (`500ms` for `5m`).
pub(super) mod bounds {
    use super::{Duration, millis, secs};
    pub(in crate::config) const TTL: (Duration, Duration) = (secs(10), secs(86_400));
    pub(in crate::config) const TIMEOUT: (Duration, Duration) = (millis(100), secs(300));
    pub(in crate::config) const END_WAIT: (Duration, Duration) = (millis(100), secs(300));
    pub(in crate::config) const BACKOFF: (Duration, Duration) = (millis(100), secs(86_400));
    pub(in crate::config) const WINDOW: (Duration, Duration) = (secs(1), secs(86_400));
    pub(in crate::config) const REFRESH: (Duration, Duration) = (secs(60), secs(86_400));
    pub(in crate::config) const REFRESH_FLOOR: (Duration, Duration) = (secs(1), secs(3_600));
    pub(in crate::config) const IDLE: (Duration, Duration) = (secs(1), secs(300));
}

/// Collects problems with their location.
pub(super) struct Problems {
    lines: KeyLines,
    /// Keys the schema stood in for: it has reported them already.
    stand_ins: BTreeSet<String>,
    errors: Vec<ConfigError>,
}

impl Problems {
    fn at(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        let path = path.into();
        if self.stand_ins.contains(&path) {
            return;
        }
        self.errors.push(ConfigError {
            line: self.lines.of(&path),
            path,
            message: msg.into(),
        });
    }

    /// The duration at `path` (`default` when absent or wrong), within `(min, max)`.
    fn duration(
        &mut self,
        path: &str,
        value: Option<&String>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Duration {
        match value.map(|v| credbroker_provider_api::parse_duration_within(v, min, max)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.at(path, e);
                default
            }
        }
    }
}

/// TOML text walked against a schema: the document in serde's shape and its problems so far.
pub(super) fn walk(
    text: &str,
    root: &[schema::Field],
) -> Result<(toml::Table, Problems), ConfigError> {
    // Syntax errors stop here, one at a time: past one, the parser cannot tell what is meant.
    let doc: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        ConfigError {
            path: String::new(),
            line,
            message: e.message().to_string(),
        }
    })?;
    let checked = schema::check(doc, root);
    let mut p = Problems {
        lines: KeyLines::index(text),
        stand_ins: BTreeSet::new(),
        errors: Vec::new(),
    };
    for (path, message) in checked.problems {
        p.at(path, message);
    }
    p.stand_ins = checked.stand_ins;
    Ok((checked.doc, p))
}

pub(super) fn parse(text: &str) -> Checked {
    let (doc, mut p) = match walk(text, schema::ROOT) {
        Ok(walked) => walked,
        Err(e) => return Checked::failed(e),
    };
    // The schema has made the document serde's shape; a failure here is a schema gap.
    let raw: RawConfig = match toml::Value::Table(doc).try_into() {
        Ok(raw) => raw,
        Err(e) => {
            p.at("", e.message().to_string());
            return Checked {
                config: None,
                errors: p.errors,
                stand_ins: p.stand_ins,
            };
        }
    };

    let server = server(&mut p, raw.server);
    let journal = journal(&mut p, raw.journal);
    let tokens = tokens(&mut p, raw.tokens);
    let broker = broker(&mut p, raw.broker);
    let audit = audit(&mut p, raw.audit);
    let abuse = abuse::abuse(&mut p, raw.abuse);
    let metrics = raw.metrics.listen.and_then(|l| match metrics_listen(&l) {
        Ok(m) => Some(m),
        Err(e) => {
            p.at("metrics.listen", e);
            None
        }
    });
    let (issuers, mut registry) = issuers(&mut p, raw.issuers);
    let introspecting: Vec<&str> = issuers
        .iter()
        .filter(|i| i.introspection.is_some())
        .map(|i| i.url.as_str())
        .collect();
    if introspecting.len() > 1 {
        // An opaque token names no issuer; sent to the wrong AS it would be a token leak.
        p.at(
            format!("issuer.{}.introspect", introspecting[1]),
            "at most one [[issuer]] may introspect: an opaque token names no issuer, and is \
             never sent to more than one",
        );
    }
    let bind = Binding::new(&issuers);
    if !raw.attribution.clients.is_empty() {
        check_clients(&mut p, "attribution.clients", &raw.attribution.clients);
        match bind.only() {
            Some(only) => registry
                .entry(only.to_owned())
                .or_default()
                .extend(raw.attribution.clients),
            None => p.at(
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
    for mut raw in raw.grants {
        let issuer = raw.issuer.take();
        let mut g = grant(&mut p, raw, &provider_names, &broker);
        g.issuer = bind.resolve(&mut p, &format!("grant.{}", g.name), issuer);
        if grants.contains_key(&g.name) {
            p.at(format!("grant.{}", g.name), "is defined twice");
        }
        grants.insert(g.name.clone(), g);
    }

    let mut workloads: Vec<WorkloadConfig> = Vec::new();
    for mut raw in raw.workloads {
        let issuer = raw.issuer.take();
        let mut w = workload(&mut p, raw, &grants);
        w.issuer = bind.resolve(&mut p, &format!("workload.{}", w.name), issuer);
        for g in w.grants.iter().filter_map(|g| grants.get(g)) {
            if !w.issuer.is_empty() && !g.issuer.is_empty() && g.issuer != w.issuer {
                p.at(
                    format!("workload.{}.grants", w.name),
                    format!(
                        "grant {:?} is for tokens of {:?}, but this workload accepts tokens of {:?} only",
                        g.name, g.issuer, w.issuer
                    ),
                );
            }
        }
        if workloads.iter().any(|o| o.name == w.name) {
            p.at(format!("workload.{}", w.name), "is defined twice");
        }
        if let Some(o) = workloads.iter().find(|o| {
            o.uid == w.uid
                && o.gid == w.gid
                && o.exe == w.exe
                && o.systemd_unit == w.systemd_unit
                && o.systemd_user_unit == w.systemd_user_unit
        }) {
            p.at(
                format!("workload.{}", w.name),
                format!("matches exactly the same peers as workload {:?}", o.name),
            );
        }
        workloads.push(w);
    }

    let signals = signals::signals(&mut p, raw.signals, raw.transmitters, &issuers);
    let mut clients = Vec::new();
    for raw in raw.clients {
        let path = format!("client.{}", raw.id);
        let issuer = bind.resolve(&mut p, &path, raw.issuer.clone());
        if let Some(c) = client(&mut p, &path, raw, issuer, &grants) {
            if clients
                .iter()
                .any(|o: &clients::ClientEntry| o.issuer == c.issuer && o.client_id == c.client_id)
            {
                p.at(&path, "is registered twice");
            }
            clients.push(c);
        }
    }

    Checked {
        config: Some(Config {
            server,
            journal,
            tokens,
            broker,
            attribution,
            audit,
            metrics,
            abuse,
            signals,
            clients,
            issuers,
            workloads,
            grants,
            providers,
            key_lines: p.lines,
        }),
        errors: p.errors,
        stand_ins: p.stand_ins,
    }
}

fn client(
    p: &mut Problems,
    path: &str,
    raw: RawClient,
    issuer: String,
    grants: &BTreeMap<String, GrantConfig>,
) -> Option<clients::ClientEntry> {
    if raw.id.is_empty() || raw.id.len() > 1024 || raw.id.chars().any(char::is_control) {
        p.at(path, "id must be 1-1024 printable characters");
        return None;
    }
    let status = match raw.status.as_deref() {
        None => clients::ClientStatus::Active,
        Some(s) => clients::ClientStatus::parse(s).unwrap_or_else(|| {
            p.at(
                format!("{path}.status"),
                "must be active, suspended or retired",
            );
            clients::ClientStatus::Active
        }),
    };
    let expires = raw.expires.as_deref().and_then(|e| {
        humantime::parse_rfc3339_weak(e)
            .map_err(|err| {
                p.at(
                    format!("{path}.expires"),
                    format!("is not an RFC 3339 time: {err}"),
                )
            })
            .ok()
    });
    for g in &raw.grants {
        if !grants.contains_key(g) {
            p.at(
                format!("{path}.grants"),
                format!("no [[grant]] named {g:?}"),
            );
        }
    }
    Some(clients::ClientEntry {
        issuer,
        client_id: raw.id,
        owner: raw.owner,
        expires,
        grants: raw.grants,
        status,
    })
}

/// Names appear in audit records, metrics and CLI arguments: keep them plain.
pub(super) fn check_name(p: &mut Problems, what: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        p.at(
            format!("{what}.{name}"),
            "names must be 1-64 characters of [A-Za-z0-9._-]",
        );
    }
}

pub(super) fn to_params(table: toml::Table) -> Params {
    match serde_json::to_value(table) {
        Ok(serde_json::Value::Object(map)) => map,
        // A TOML table always converts to a JSON object (datetimes become strings).
        _ => Params::new(),
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
