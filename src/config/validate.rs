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
use crate::jose::Alg;
use crate::template;

mod entries;
mod issuers;
mod sections;

use entries::{grant, providers, workload};
pub use issuers::check_issuer_url;
use issuers::{Binding, check_clients, issuer};
use sections::{audit, broker, journal, metrics_listen, server, tokens};

/// The longest clock-skew allowance accepted: more would let stale tokens through.
pub(super) const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Parses a human duration such as `90s`, `15m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"90s\" or \"15m\" ({e})"))
}

/// Collects problems with their location.
pub(super) struct Problems<'a> {
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
            key_lines: KeyLines::index(text),
        })
    } else {
        Err(p.errors)
    }
}

/// Names appear in audit records, metrics and CLI arguments: keep them plain.
pub(super) fn check_name(p: &mut Problems<'_>, span: &Range<usize>, what: &str, name: &str) {
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
