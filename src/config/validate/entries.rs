//! [[provider]], [[grant]] and [[workload]] entries.

#[allow(unused_imports)]
use super::*;

pub(super) fn providers(p: &mut Problems, raws: Vec<RawProvider>) -> Vec<ProviderConfig> {
    let mut out: Vec<ProviderConfig> = Vec::new();
    for raw in raws {
        check_name(p, "provider", &raw.name);
        if out.iter().any(|o| o.name == raw.name) {
            p.at(format!("provider.{}", raw.name), "is defined twice");
        }
        out.push(ProviderConfig {
            name: raw.name,
            kind: raw.kind,
            settings: to_params(raw.settings),
        });
    }
    out
}

pub(super) fn grant(
    p: &mut Problems,
    raw: RawGrant,
    providers: &BTreeSet<&str>,
    broker: &BrokerSettings,
) -> GrantConfig {
    let path = format!("grant.{}", raw.name);
    check_name(p, "grant", &raw.name);
    if !providers.contains(raw.provider.as_str()) {
        p.at(
            format!("{path}.provider"),
            format!("no [[provider]] named {:?}", raw.provider),
        );
    }
    if raw.scopes.is_empty() {
        // Deny by default: a grant must be tied to something the authorization server decided.
        p.at(format!("{path}.scopes"), "must name at least one scope");
    }
    for s in &raw.scopes {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            p.at(
                format!("{path}.scopes"),
                format!("{s:?} is not a valid scope token"),
            );
        }
    }
    for (claim, values) in &raw.conditions {
        if values.is_empty() {
            p.at(
                format!("{path}.conditions.{claim}"),
                "must list at least one value",
            );
        }
    }
    let max_ttl = p.duration(
        &format!("{path}.max_ttl"),
        Some(&raw.max_ttl),
        broker.default_ttl,
        bounds::TTL,
    );
    let default_ttl = raw.default_ttl.as_ref().map(|d| {
        p.duration(
            &format!("{path}.default_ttl"),
            Some(d),
            max_ttl,
            bounds::TTL,
        )
    });
    if default_ttl.is_some_and(|d| d > max_ttl) {
        p.at(format!("{path}.default_ttl"), "must not exceed max_ttl");
    }
    let params = to_params(raw.params);
    template::check_params(&params, &mut |key, e| {
        p.at(format!("{path}.params.{key}"), e);
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

pub(super) fn workload(
    p: &mut Problems,
    raw: RawWorkload,
    grants: &BTreeMap<String, GrantConfig>,
) -> WorkloadConfig {
    let path = format!("workload.{}", raw.name);
    check_name(p, "workload", &raw.name);
    let uid = match (raw.uid, raw.user.as_deref()) {
        (Some(uid), None) => Some(uid),
        (None, Some(user)) => match nix::unistd::User::from_name(user) {
            Ok(Some(u)) => Some(u.uid.as_raw()),
            Ok(None) => {
                p.at(format!("{path}.user"), format!("no user named {user:?}"));
                None
            }
            Err(e) => {
                p.at(
                    format!("{path}.user"),
                    format!("cannot look up {user:?}: {e}"),
                );
                None
            }
        },
        (Some(_), Some(_)) => {
            p.at(
                format!("{path}.user"),
                "uid and user are mutually exclusive",
            );
            None
        }
        (None, None) => None,
    };
    if raw.uid.is_none() && raw.user.is_none() && raw.gid.is_none() {
        // A workload that any local process could claim would defeat peer identification.
        p.at(&path, "must match on uid, user or gid");
    }
    if let Some(exe) = &raw.exe {
        sections::check_path(p, &format!("{path}.exe"), exe);
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
                format!("{path}.{key}"),
                "must be a unit name like foo.service",
            );
        }
    }
    if raw.systemd_user_unit.is_some() && raw.uid.is_none() && raw.user.is_none() {
        p.at(
            format!("{path}.systemd_user_unit"),
            "a user unit belongs to one user's manager: name that user with uid or user",
        );
    }
    if reqwest::Url::parse(&raw.audience).is_err() {
        p.at(
            format!("{path}.audience"),
            "must be an absolute URI (the MCP server's resource)",
        );
    }
    if raw.grants.is_empty() {
        p.at(format!("{path}.grants"), "must name at least one grant");
    }
    for g in &raw.grants {
        if !grants.contains_key(g) {
            p.at(
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
