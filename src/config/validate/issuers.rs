//! [[issuer]] entries, and binding grants, workloads and client owners to issuers.

#[allow(unused_imports)]
use super::*;

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

pub(super) fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// Every `[[issuer]]`, and each one's client owners (client id → owner).
pub(super) fn issuers(
    p: &mut Problems,
    raws: Vec<RawIssuer>,
) -> (
    Vec<IssuerConfig>,
    BTreeMap<String, BTreeMap<String, String>>,
) {
    let mut issuers: Vec<IssuerConfig> = Vec::new();
    let mut registry: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for mut raw in raws {
        let clients = std::mem::take(&mut raw.clients);
        if let Some(i) = issuer(p, raw) {
            if issuers.iter().any(|o| o.url == i.url) {
                p.at(format!("issuer.{}", i.url), "is configured twice");
            }
            check_clients(p, &format!("issuer.{}.clients", i.url), &clients);
            registry.entry(i.url.clone()).or_default().extend(clients);
            issuers.push(i);
        }
    }
    if issuers.is_empty() {
        p.at("issuer", "at least one [[issuer]] is required");
    }
    (issuers, registry)
}

fn introspection(p: &mut Problems, path: &str, raw: &RawIssuer) -> Option<Introspection> {
    let mode = match raw.introspect.as_deref() {
        None | Some("never") => None,
        Some("opaque") => Some(IntrospectMode::Opaque),
        Some("always") => Some(IntrospectMode::Always),
        Some(other) => {
            p.at(
                format!("{path}.introspect"),
                format!("{other:?}: expected never, opaque or always"),
            );
            None
        }
    };
    let Some(mode) = mode else {
        for (key, set) in [
            (
                "introspection_endpoint",
                raw.introspection_endpoint.is_some(),
            ),
            (
                "introspection_client_id",
                raw.introspection_client_id.is_some(),
            ),
            ("recheck_active", raw.recheck_active.is_some()),
        ] {
            if set {
                p.at(
                    format!("{path}.{key}"),
                    "only makes sense with introspect = \"opaque\" or \"always\"",
                );
            }
        }
        return None;
    };
    if let Some(e) = &raw.introspection_endpoint
        && let Err(err) = check_issuer_url(e)
    {
        p.at(format!("{path}.introspection_endpoint"), err);
    }
    let Some(client_id) = raw.introspection_client_id.clone() else {
        p.at(
            format!("{path}.introspection_client_id"),
            "is required: the AS authenticates who introspects",
        );
        return None;
    };
    let secret = match (
        &raw.introspection_secret_file,
        &raw.introspection_secret_credential,
    ) {
        (Some(f), None) => {
            sections::check_path(p, &format!("{path}.introspection_secret_file"), f);
            SecretSource::File(f.clone())
        }
        (None, Some(c)) => SecretSource::Credential(c.clone()),
        _ => {
            p.at(
                path,
                "one of introspection_secret_file or introspection_secret_credential is required",
            );
            return None;
        }
    };
    let cache = p.duration(
        &format!("{path}.introspection_cache"),
        raw.introspection_cache.as_ref(),
        Duration::from_secs(30),
        (Duration::from_secs(1), Duration::from_secs(300)),
    );
    let recheck_active = raw.recheck_active.as_ref().map(|r| {
        p.duration(
            &format!("{path}.recheck_active"),
            Some(r),
            Duration::from_secs(60),
            (Duration::from_secs(1), Duration::from_secs(3600)),
        )
    });
    Some(Introspection {
        mode,
        endpoint: raw.introspection_endpoint.clone(),
        client_id,
        secret,
        cache,
        recheck_active,
    })
}

fn issuer(p: &mut Problems, raw: RawIssuer) -> Option<IssuerConfig> {
    let path = format!("issuer.{}", raw.url);
    let introspection = introspection(p, &path, &raw);
    if let Err(e) = check_issuer_url(&raw.url) {
        p.at(format!("{path}.url"), e);
    }
    let algorithms = match raw.algorithms {
        None => vec![Alg::RS256, Alg::ES256, Alg::EdDSA],
        Some(names) => {
            let mut algs = Vec::new();
            for name in names {
                match Alg::from_config(&name) {
                    Ok(a) => algs.push(a),
                    Err(e) => p.at(format!("{path}.algorithms"), e),
                }
            }
            if algs.is_empty() {
                p.at(
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
                format!("{path}.metadata"),
                format!("{other:?}: expected auto, oauth or oidc"),
            );
            MetadataMode::Auto
        }
    };
    let refresh = p.duration(
        &format!("{path}.refresh"),
        raw.refresh.as_ref(),
        Duration::from_secs(900),
        bounds::REFRESH,
    );
    let min_refresh_interval = p.duration(
        &format!("{path}.min_refresh_interval"),
        raw.min_refresh_interval.as_ref(),
        Duration::from_secs(30),
        bounds::REFRESH_FLOOR,
    );
    let http_timeout = p.duration(
        &format!("{path}.http_timeout"),
        raw.http_timeout.as_ref(),
        Duration::from_secs(5),
        bounds::TIMEOUT,
    );
    for (key, file) in [("jwks_file", &raw.jwks_file), ("ca_file", &raw.ca_file)] {
        if let Some(f) = file {
            sections::check_path(p, &format!("{path}.{key}"), f);
        }
    }
    Some(IssuerConfig {
        introspection,
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

/// Binds grants and workloads to the issuer whose tokens they accept. With one issuer that is
/// the default; with several each must say, because the same `sub` or `client_id` at two
/// issuers names two different principals.
pub(super) struct Binding<'a> {
    urls: Vec<&'a str>,
}

impl<'a> Binding<'a> {
    pub(super) fn new(issuers: &'a [IssuerConfig]) -> Self {
        Self {
            urls: issuers.iter().map(|i| i.url.as_str()).collect(),
        }
    }

    pub(super) fn only(&self) -> Option<&'a str> {
        match self.urls.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    pub(super) fn resolve(&self, p: &mut Problems, path: &str, named: Option<String>) -> String {
        match named {
            Some(url) if self.urls.contains(&url.as_str()) => url,
            Some(url) => {
                p.at(
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

pub(super) fn check_clients(p: &mut Problems, path: &str, clients: &BTreeMap<String, String>) {
    for (client, owner) in clients {
        if client.is_empty() || owner.is_empty() {
            p.at(
                format!("{path}.{client}"),
                "client and owner must not be empty",
            );
        }
    }
}
