//! `credbroker gateway`'s file: `[tokens]`, `[[issuer]]` as the daemon's, and `[[gateway]]`.

use std::net::SocketAddr;

use super::super::gateway::{
    DaemonLink, GUARDED_METHODS, GatewayConfig, GatewayFile, Rate, TlsFiles, Unnamed,
};
use super::super::raw::{RawGateway, RawGatewayFile};
use super::sections::check_path;
use super::*;

const DEFAULT_MAX_BODY: usize = 4 << 20;

pub(in crate::config) fn parse_gateway(text: &str) -> Result<GatewayFile, Vec<ConfigError>> {
    let (doc, mut p) = walk(text, schema::GATEWAY_ROOT).map_err(|e| vec![e])?;
    let raw: RawGatewayFile = match toml::Value::Table(doc).try_into() {
        Ok(raw) => raw,
        Err(e) => {
            p.at("", e.message().to_string());
            return Err(p.errors);
        }
    };
    check_path(&mut p, "daemon.socket", &raw.daemon.socket);
    let daemon = DaemonLink {
        timeout: p.duration(
            "daemon.timeout",
            raw.daemon.timeout.as_ref(),
            Duration::from_secs(2),
            bounds::TIMEOUT,
        ),
        socket: raw.daemon.socket,
    };
    let worker_threads = raw.worker_threads.unwrap_or(1);
    if !(1..=256).contains(&worker_threads) {
        p.at("worker_threads", "must be between 1 and 256");
    }
    let tokens = tokens(&mut p, raw.tokens);
    let (issuers, clients) = issuers(&mut p, raw.issuers);
    let urls: Vec<&str> = issuers.iter().map(|i| i.url.as_str()).collect();
    let mut gateways: Vec<GatewayConfig> = Vec::new();
    for raw in raw.gateways {
        let Some(g) = gateway(&mut p, raw, &urls) else {
            continue;
        };
        let path = format!("gateway.{}", g.name);
        if gateways.iter().any(|o| o.name == g.name) {
            p.at(&path, "is defined twice");
        }
        if gateways.iter().any(|o| o.listen == g.listen) {
            p.at(
                format!("{path}.listen"),
                "another [[gateway]] listens there",
            );
        }
        gateways.push(g);
    }
    if !p.errors.is_empty() {
        p.errors.sort_by_key(|e| e.line.unwrap_or(0));
        return Err(p.errors);
    }
    Ok(GatewayFile {
        daemon,
        worker_threads,
        tokens,
        issuers,
        attribution: Attribution {
            require_owner: false,
            clients,
        },
        gateways,
    })
}

fn gateway(p: &mut Problems, raw: RawGateway, issuers: &[&str]) -> Option<GatewayConfig> {
    let path = format!("gateway.{}", raw.name);
    let at = |key: &str| format!("{path}.{key}");
    if raw.name.is_empty()
        || !raw
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        p.at(at("name"), "must be letters, digits, - and _");
    }
    let tls = match (raw.tls_cert_file, raw.tls_key_file) {
        (Some(cert), Some(key)) => {
            check_path(p, &at("tls_cert_file"), &cert);
            check_path(p, &at("tls_key_file"), &key);
            Some(TlsFiles { cert, key })
        }
        (None, None) => None,
        _ => {
            p.at(&path, "tls_cert_file and tls_key_file go together");
            None
        }
    };
    let listen = match raw.listen.parse::<SocketAddr>() {
        Ok(a) if !a.ip().is_loopback() && !raw.allow_plain_http && tls.is_none() => {
            p.at(
                at("listen"),
                "plain HTTP off loopback sends tokens in clear: give tls_cert_file and \
                 tls_key_file, or listen on loopback behind a TLS-terminating proxy (or set \
                 allow_plain_http = true if that proxy is on another address)",
            );
            Some(a)
        }
        Ok(a) => Some(a),
        Err(_) => {
            p.at(
                at("listen"),
                "must be an IP address and port, e.g. 127.0.0.1:8080",
            );
            None
        }
    };
    let resource = url_at(p, &at("resource"), &raw.resource, true);
    let upstream = url_at(p, &at("upstream"), &raw.upstream, false);
    let scheme = upstream.as_ref().map(|u| u.scheme().to_owned());
    if let Some(s) = &raw.upstream_socket {
        check_path(p, &at("upstream_socket"), s);
        if scheme.as_deref() == Some("https") {
            p.at(
                at("upstream_socket"),
                "a unix socket upstream is spoken to in plain HTTP: write upstream as http://localhost/PATH",
            );
        }
    }
    if let Some(f) = &raw.upstream_ca_file {
        check_path(p, &at("upstream_ca_file"), f);
        if scheme.as_deref() != Some("https") {
            p.at(at("upstream_ca_file"), "is for an https upstream");
        }
    }
    let authorization_servers = match raw.authorization_servers {
        None => issuers.iter().map(|s| s.to_string()).collect(),
        Some(list) => {
            for a in list.iter().filter(|a| !issuers.contains(&a.as_str())) {
                p.at(
                    at("authorization_servers"),
                    format!("{a:?} is not a configured [[issuer]]"),
                );
            }
            list
        }
    };
    let named = raw.tools.iter().map(|t| ("tools", t));
    let named = named.chain(raw.methods.iter().map(|m| ("methods", m)));
    for (table, (key, scopes)) in named {
        for s in scopes {
            if s.is_empty() || s.contains(char::is_whitespace) || s.contains('"') {
                p.at(
                    format!("{path}.{table}.{key}"),
                    format!("{s:?} is not a scope token (RFC 6749 §3.3)"),
                );
            }
        }
    }
    for m in raw.methods.keys() {
        if !GUARDED_METHODS.contains(&m.as_str()) {
            p.at(
                format!("{path}.methods.{m}"),
                format!(
                    "unknown method; the methods table takes {}; tools go in `tools`",
                    GUARDED_METHODS.join(", ")
                ),
            );
        }
    }
    let default = match raw.default.as_deref() {
        None | Some("deny") => Unnamed::Deny,
        Some("allow") => Unnamed::Allow,
        Some(other) => {
            p.at(
                at("default"),
                format!("{other:?}: expected \"deny\" or \"allow\""),
            );
            Unnamed::Deny
        }
    };
    let scopes_supported = if raw.scopes_supported.is_empty() {
        let mut all: Vec<String> = raw
            .tools
            .values()
            .chain(raw.methods.values())
            .flatten()
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        all
    } else {
        raw.scopes_supported
    };
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if !(1024..=64 << 20).contains(&max_body_bytes) {
        p.at(at("max_body_bytes"), "must be between 1024 and 67108864");
    }
    let upstream_timeout = p.duration(
        &at("upstream_timeout"),
        raw.upstream_timeout.as_ref(),
        Duration::from_secs(30),
        bounds::TIMEOUT,
    );
    let mut rate = |key: &str, text: Option<&String>| {
        text.and_then(|t| Rate::parse(t).map_err(|e| p.at(at(key), e)).ok())
    };
    let rate_limit_client = rate("rate_limit_client", raw.rate_limit_client.as_ref());
    let rate_limit_owner = rate("rate_limit_owner", raw.rate_limit_owner.as_ref());
    if raw.record_arguments.len() > 32 {
        p.at(at("record_arguments"), "at most 32 argument keys");
    }
    for k in &raw.record_arguments {
        if k.is_empty() || k.len() > 64 || k.chars().any(char::is_control) {
            p.at(
                at("record_arguments"),
                format!("{k:?} is not an argument key (1-64 characters)"),
            );
        }
    }
    Some(GatewayConfig {
        name: raw.name,
        listen: listen?,
        resource: resource?,
        resource_name: raw.resource_name,
        upstream: upstream?,
        upstream_socket: raw.upstream_socket,
        upstream_ca_file: raw.upstream_ca_file,
        authorization_servers,
        scopes_supported,
        tools: raw.tools,
        methods: raw.methods,
        default,
        forward_token: raw.forward_token.unwrap_or(true),
        max_body_bytes,
        upstream_timeout,
        tls,
        rate_limit_client,
        rate_limit_owner,
        record_arguments: raw.record_arguments,
    })
}

/// An absolute http(s) URL without credentials, query or fragment; `https` required for a
/// resource off loopback (its URI is what clients and the authorization server see).
fn url_at(p: &mut Problems, path: &str, text: &str, resource: bool) -> Option<url::Url> {
    let u = match url::Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            p.at(path, format!("not a URL: {e}"));
            return None;
        }
    };
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    let problem = if !matches!(u.scheme(), "http" | "https") {
        Some("must be http or https")
    } else if resource && u.scheme() == "http" && !loopback {
        Some("must be https off loopback")
    } else if !u.username().is_empty() || u.password().is_some() {
        Some("must not carry credentials")
    } else if u.fragment().is_some() {
        Some("must not have a fragment (RFC 8707)")
    } else if resource && u.query().is_some() {
        Some("must not have a query")
    } else {
        None
    };
    match problem {
        Some(why) => {
            p.at(path, why);
            None
        }
        None => Some(u),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "[daemon]\nsocket = \"/run/credbroker/broker.sock\"\n\
        [[issuer]]\nurl = \"https://auth.example.com\"\n";

    /// The line of a `[[gateway]]` body's second key (`listen` below) in [`problems`]'s document.
    const FIRST: usize = 8;

    fn problems(gateway: &str) -> Vec<String> {
        match parse_gateway(&format!("{ISSUER}\n[[gateway]]\n{gateway}")) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .iter()
                .map(|e| format!("line {}: {}: {}", e.line.unwrap_or(0), e.path, e.message))
                .collect(),
        }
    }

    const GOOD: &str = "name = \"orders\"\nlisten = \"127.0.0.1:8080\"\n\
        resource = \"https://mcp.example.com/orders\"\nupstream = \"http://127.0.0.1:9000/mcp\"\n";

    #[test]
    fn a_good_gateway_gets_safe_defaults() {
        let file = parse_gateway(&format!(
            "{ISSUER}\n[[gateway]]\n{GOOD}[gateway.tools]\nquery = [\"mcp.tool:orders.read\"]\n"
        ))
        .expect("a good gateway file");
        let g = &file.gateways[0];
        assert_eq!(g.default, Unnamed::Deny);
        assert!(g.forward_token);
        assert_eq!(g.authorization_servers, vec!["https://auth.example.com"]);
        assert_eq!(g.scopes_supported, vec!["mcp.tool:orders.read"]);
        assert_eq!(g.max_body_bytes, 4 << 20);
    }

    #[test]
    fn every_gateway_problem_is_reported_with_its_key_and_line() {
        let p = problems(
            "name = \"orders\"\nlisten = \"0.0.0.0:8080\"\nresource = \"http://mcp.example.com/x#f\"\n\
             upstream = \"ftp://x\"\nauthorization_servers = [\"https://evil.example\"]\n\
             default = \"maybe\"\nmax_body_bytes = 10\nupstream_timeout = \"10M\"\nlisten_tls = 1\n\
             [gateway.methods]\n\"tools/call\" = [\"a\"]\n[gateway.tools]\nq = [\"two words\"]\n",
        );
        let expect = [
            format!(
                "line {}: gateway.orders.listen: plain HTTP off loopback",
                FIRST
            ),
            format!(
                "line {}: gateway.orders.resource: must be https off loopback",
                FIRST + 1
            ),
            format!(
                "line {}: gateway.orders.upstream: must be http or https",
                FIRST + 2
            ),
            format!(
                "line {}: gateway.orders.authorization_servers: \"https://evil.example\" is not a configured",
                FIRST + 3
            ),
            format!("line {}: gateway.orders.default:", FIRST + 4),
            format!("line {}: gateway.orders.max_body_bytes:", FIRST + 5),
            format!("line {}: gateway.orders.upstream_timeout:", FIRST + 6),
            format!("line {}: gateway.orders.listen_tls: unknown key", FIRST + 7),
            format!(
                "line {}: gateway.orders.methods.tools/call: unknown method",
                FIRST + 9
            ),
            format!(
                "line {}: gateway.orders.tools.q: \"two words\" is not a scope token",
                FIRST + 11
            ),
        ];
        for e in &expect {
            assert!(
                p.iter().any(|l| l.starts_with(e.as_str())),
                "missing {e:?} in {p:#?}"
            );
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn the_gateway_runs_on_one_thread_unless_told_otherwise() {
        let file =
            |threads: &str| parse_gateway(&format!("{threads}{ISSUER}\n[[gateway]]\n{GOOD}"));
        assert_eq!(file("").map(|f| f.worker_threads).ok(), Some(1));
        assert_eq!(
            file("worker_threads = 4\n").map(|f| f.worker_threads).ok(),
            Some(4)
        );
        let e = file("worker_threads = 0\n").err().unwrap_or_default();
        assert!(e.len() == 1 && e[0].path == "worker_threads", "{e:?}");
    }

    #[test]
    fn upstream_sockets_and_cas_fit_their_schemes() {
        let https = GOOD.replace("http://127.0.0.1:9000/mcp", "https://orders.internal/mcp");
        assert!(
            problems(&format!(
                "{https}upstream_ca_file = \"/etc/ssl/internal.pem\"\n"
            ))
            .is_empty()
        );
        assert!(
            problems(&format!(
                "{GOOD}upstream_socket = \"/run/orders/mcp.sock\"\n"
            ))
            .is_empty()
        );
        for (body, expect) in [
            (
                format!("{GOOD}upstream_ca_file = \"/etc/ssl/internal.pem\"\n"),
                "is for an https upstream",
            ),
            (
                format!("{https}upstream_socket = \"/run/orders/mcp.sock\"\n"),
                "plain HTTP",
            ),
            (
                format!("{GOOD}upstream_socket = \"mcp.sock\"\n"),
                "is relative",
            ),
        ] {
            let p = problems(&body);
            assert!(p.len() == 1 && p[0].contains(expect), "{p:?}");
        }
    }

    #[test]
    fn plain_http_off_loopback_needs_saying_so() {
        let open = GOOD.replace("127.0.0.1:8080", "10.0.0.5:8080");
        assert_eq!(problems(&open).len(), 1, "{:?}", problems(&open));
        assert!(problems(&format!("{open}allow_plain_http = true\n")).is_empty());
        // TLS in the gateway: both files, absolute.
        let tls = "tls_cert_file = \"/etc/credbroker/gw.pem\"\ntls_key_file = \"/etc/credbroker/gw.key\"\n";
        assert!(
            problems(&format!("{open}{tls}")).is_empty(),
            "{:?}",
            problems(&format!("{open}{tls}"))
        );
        let half = problems(&format!(
            "{open}tls_cert_file = \"/etc/credbroker/gw.pem\"\n"
        ));
        assert!(half.iter().any(|l| l.contains("go together")), "{half:?}");
        let relative = problems(&format!(
            "{GOOD}tls_cert_file = \"gw.pem\"\ntls_key_file = \"/k\"\n"
        ));
        assert!(
            relative
                .iter()
                .any(|l| l.contains("tls_cert_file") && l.contains("relative")),
            "{relative:?}"
        );
    }
}

#[cfg(test)]
mod example {
    #[test]
    fn the_example_gateway_file_is_valid() {
        let text = include_str!("../../../config/gateway.toml");
        let file = super::parse_gateway(text).expect("config/gateway.toml should be valid");
        assert_eq!(file.gateways.len(), 1);
        assert_eq!(file.gateways[0].tools.len(), 2);
    }
}
