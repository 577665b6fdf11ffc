use super::*;

/// The whole check, as `Config::parse` runs it.
fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    super::parse(text).finish("test").map_err(|e| e.errors)
}

const BASE: &str = r#"
[server]
broker_socket = "/run/credbroker/broker.sock"
admin_socket = "/run/credbroker/admin.sock"

[journal]
path = "/var/lib/credbroker/journal.db"
key_file = "/etc/credbroker/journal.key"

[[issuer]]
url = "https://auth.example.com"

[[provider]]
name = "vault-main"
type = "vault"
address = "https://vault.example.com"

[[grant]]
name = "orders-db-read"
provider = "vault-main"
scopes = ["mcp.tool:postgres.read"]
max_ttl = "15m"
params = { path = "database/creds/{sub}" }

[[workload]]
name = "postgres-mcp"
uid = 1001
audience = "https://mcp.example.com/postgres"
grants = ["orders-db-read"]
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    parse(text).err().unwrap_or_default()
}

#[test]
fn a_good_configuration_parses() {
    let c = parse(BASE).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.grants["orders-db-read"].max_ttl, Duration::from_secs(900));
    assert_eq!(
        c.issuers[0].algorithms,
        vec![Alg::RS256, Alg::ES256, Alg::EdDSA]
    );
    assert_eq!(c.workloads[0].uid, Some(1001));
    assert_eq!(
        c.providers[0]
            .settings
            .get("address")
            .and_then(|v| v.as_str()),
        Some("https://vault.example.com")
    );
    assert!(
        c.server
            .admin_uids
            .contains(&nix::unistd::geteuid().as_raw())
    );
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = BASE.replace("max_ttl = \"15m\"", "max_ttl = \"15m\"\nmax_tll = \"1h\"");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].path.ends_with(".max_tll"), "{e:?}");
    assert!(e[0].message.contains("did you mean \"max_ttl\""), "{e:?}");
    let line = text
        .lines()
        .position(|l| l.starts_with("max_tll"))
        .map(|i| i + 1);
    assert_eq!(e[0].line, line);
}

#[test]
fn every_problem_is_reported_at_once_with_its_path() {
    let text = BASE
        .replace("https://auth.example.com", "http://auth.example.com")
        .replace("max_ttl = \"15m\"", "max_ttl = \"soon\"")
        .replace(
            "grants = [\"orders-db-read\"]",
            "grants = [\"orders-db-raed\"]",
        )
        .replace("provider = \"vault-main\"", "provider = \"vault\"")
        .replace("database/creds/{sub}", "database/creds/{subject}");
    let e = errors(&text);
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "issuer.http://auth.example.com.url",
        "grant.orders-db-read.max_ttl",
        "grant.orders-db-read.provider",
        "grant.orders-db-read.params.path",
        "workload.postgres-mcp.grants",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
    assert!(e.iter().all(|e| e.line.is_some()), "{e:?}");
}

#[test]
fn refuses_insecure_and_ambiguous_shapes() {
    let hmac = BASE.replace(
        "url = \"https://auth.example.com\"",
        "url = \"https://auth.example.com\"\nalgorithms = [\"HS256\"]",
    );
    assert!(errors(&hmac).iter().any(|e| e.message.contains("HMAC")));
    let anyone = BASE.replace("uid = 1001\n", "");
    assert!(
        errors(&anyone)
            .iter()
            .any(|e| e.message.contains("must match on uid, user or gid"))
    );
    let twice = format!(
        "{BASE}\n[[workload]]\nname = \"copy\"\nuid = 1001\naudience = \"https://x.example\"\ngrants = [\"orders-db-read\"]\n"
    );
    assert!(
        errors(&twice)
            .iter()
            .any(|e| e.message.contains("same peers"))
    );
    let no_scope = BASE.replace("scopes = [\"mcp.tool:postgres.read\"]", "scopes = []");
    assert!(
        errors(&no_scope)
            .iter()
            .any(|e| e.path == "grant.orders-db-read.scopes")
    );
    let leeway = format!("{BASE}\n[tokens]\nleeway = \"10m\"\n");
    assert!(errors(&leeway).iter().any(|e| e.path == "tokens.leeway"));
    let no_key = BASE.replace("key_file = \"/etc/credbroker/journal.key\"\n", "");
    assert!(errors(&no_key).iter().any(|e| e.path == "journal"));
    let loopback_http = BASE.replace("https://auth.example.com", "http://127.0.0.1:8080");
    assert!(parse(&loopback_http).is_ok());
}

#[test]
fn issuer_urls() {
    assert!(check_issuer_url("https://a.example/tenant").is_ok());
    assert!(check_issuer_url("http://localhost:9000").is_ok());
    assert!(check_issuer_url("http://[::1]:9000").is_ok());
    assert!(check_issuer_url("http://a.example").is_err());
    assert!(check_issuer_url("https://a.example/?x=1").is_err());
    assert!(check_issuer_url("https://u:p@a.example").is_err());
    assert!(check_issuer_url("not a url").is_err());
}

#[test]
fn audit_and_metrics_settings() {
    let good = format!(
        "{BASE}\n[audit]\nhead_key_credential = \"audit-head\"\nretention = \"400d\"\n[metrics]\nlisten = \"unix:/run/credbroker/metrics.sock\"\n"
    );
    let c = parse(&good).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        c.audit.head_key,
        Some(KeySource::Credential("audit-head".into()))
    );
    assert_eq!(c.audit.retention, Some(Duration::from_secs(400 * 86_400)));
    assert_eq!(
        c.metrics,
        Some(MetricsListen::Unix("/run/credbroker/metrics.sock".into()))
    );
    let tcp = format!("{BASE}\n[metrics]\nlisten = \"[::1]:9464\"\n");
    assert!(matches!(
        parse(&tcp).map(|c| c.metrics),
        Ok(Some(MetricsListen::Tcp(_)))
    ));
    for (extra, path, says) in [
        (
            "[metrics]\nlisten = \"0.0.0.0:9464\"",
            "metrics.listen",
            "loopback or a unix socket only",
        ),
        (
            "[metrics]\nlisten = \"unix:metrics.sock\"",
            "metrics.listen",
            "must be absolute",
        ),
        (
            "[metrics]\nlisten = \"localhost\"",
            "metrics.listen",
            "neither host:port",
        ),
        (
            "[audit]\nretention = \"2h\"",
            "audit.retention",
            "at least 1 day",
        ),
        (
            "[audit]\nretention = \"forever\"",
            "audit.retention",
            "is not a duration",
        ),
        (
            "[audit]\nhead_key_file = \"/k\"\nhead_key_credential = \"k\"",
            "audit",
            "mutually exclusive",
        ),
        (
            "[audit]\nhead_key = \"/k\"",
            "audit.head_key",
            "unknown key",
        ),
    ] {
        let e = errors(&format!("{BASE}\n{extra}\n"));
        assert!(
            e.iter()
                .any(|e| e.path.starts_with(path) && e.to_string().contains(says)),
            "{extra}: {e:?}"
        );
    }
}

#[test]
fn registry_entries_are_checked() {
    let text = format!(
        "{BASE}\n[[client]]\nid = \"a\"\nstatus = \"paused\"\ngrants = [\"nope\"]\nexpires = \"soon\"\n"
    );
    let e = errors(&text);
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    for p in ["client.a.status", "client.a.grants", "client.a.expires"] {
        assert!(paths.contains(&p), "{p}: {e:?}");
    }
    let good = format!("{BASE}\n[[client]]\nid = \"a\"\nowner = \"x@example.com\"\n");
    let c = parse(&good).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.clients.len(), 1);
    assert_eq!(c.clients[0].status, clients::ClientStatus::Active);
}

#[test]
fn abuse_settings_are_checked_each_with_its_path() {
    let text = format!(
        "{BASE}\n[abuse]\nblock_for = \"10s\"\nwebhook_url = \"http://siem.example.com/hook\"\n\
         webhook_secret_file = \"/etc/credbroker/hook.key\"\n\
         [abuse.wrong_audience]\nresponse = [\"log\", \"log\", \"shout\"]\n\
         [abuse.token_reuse]\nresponse = []\nthreshold = 3\n\
         [abuse.scope_probing]\nresponse = [\"deny\"]\nper = \"tenant\"\n\
         [abuse.rate]\nthreshold = 10\nwindow = \"0s\"\nnew_network = true\nresponse = [\"alert\"]\n"
    );
    let e = errors(&text);
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    for p in [
        "abuse.block_for",
        "abuse.webhook_url",
        "abuse.wrong_audience.response",
        "abuse.token_reuse.response",
        "abuse.token_reuse.threshold",
        "abuse.scope_probing.per",
        "abuse.scope_probing.threshold",
        "abuse.rate.window",
        "abuse.rate.new_network",
    ] {
        assert!(paths.contains(&p), "{p}: {e:?}");
    }
    // An alert needs a webhook, and a webhook a secret.
    let e = errors(&format!(
        "{BASE}\n[abuse]\n[abuse.blocked_reuse]\nresponse = [\"alert\"]\n"
    ));
    assert!(e.iter().any(|e| e.path == "abuse.webhook_url"), "{e:?}");
    let e = errors(&format!(
        "{BASE}\n[abuse]\nwebhook_url = \"https://siem.example.com/hook\"\n"
    ));
    assert!(e.iter().any(|e| e.message.contains("signed")), "{e:?}");
    let good = format!(
        "{BASE}\n[abuse]\nwebhook_url = \"https://siem.example.com/hook\"\n\
         webhook_secret_credential = \"hook\"\n[abuse.token_reuse]\nnew_network = true\n\
         response = [\"revoke-token\", \"alert\"]\n"
    );
    let c = parse(&good).unwrap_or_else(|e| panic!("{e:?}"));
    let a = c.abuse.unwrap_or_else(|| panic!("[abuse] is parsed"));
    assert!(a.token_reuse.is_some_and(|t| t.new_network));
}

#[test]
fn at_most_one_issuer_introspects_and_its_settings_are_checked() {
    let two = format!(
        "{BASE}\n[[issuer]]\nurl = \"https://other.example.com\"\nintrospect = \"opaque\"\n\
         introspection_client_id = \"cb\"\nintrospection_secret_credential = \"s\"\n"
    )
    .replacen(
        "url = \"https://auth.example.com\"\n",
        "url = \"https://auth.example.com\"\nintrospect = \"always\"\n\
         introspection_client_id = \"cb\"\nintrospection_secret_credential = \"s\"\n",
        1,
    );
    let e = errors(&two);
    assert!(e.iter().any(|e| e.message.contains("at most one")), "{e:?}");
    let bad = BASE.replacen(
        "url = \"https://auth.example.com\"\n",
        "url = \"https://auth.example.com\"\nintrospect = \"sometimes\"\nrecheck_active = \"1m\"\n",
        1,
    );
    let e = errors(&bad);
    assert!(e.iter().any(|e| e.path.ends_with(".introspect")), "{e:?}");
    assert!(
        e.iter().any(|e| e.path.ends_with(".recheck_active")),
        "{e:?}"
    );
}

#[test]
fn signals_settings_are_checked() {
    let text = format!(
        "{BASE}\n[signals]\nlisten = \"0.0.0.0:8471\"\n[[transmitter]]\nname = \"idp\"\n\
         issuer = \"https://ssf.example.com\"\naudience = \"https://cb.example.com\"\n\
         push_bearer_credential = \"p\"\npoll_url = \"https://ssf.example.com/poll\"\n\
         block_for = \"90d\"\n"
    );
    let e = errors(&text);
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    for p in [
        "signals.listen",
        "transmitter.idp",
        "transmitter.idp.block_for",
    ] {
        assert!(paths.contains(&p), "{p}: {e:?}");
    }
    assert!(
        e.iter()
            .any(|e| e.message.contains("jwks_file or jwks_uri")),
        "{e:?}"
    );
    assert!(e.iter().any(|e| e.message.contains("go together")), "{e:?}");
    let good = format!(
        "{BASE}\n[signals]\nlisten = \"127.0.0.1:8471\"\n[[transmitter]]\nname = \"idp\"\n\
         issuer = \"https://ssf.example.com\"\naudience = \"https://cb.example.com\"\n\
         jwks_uri = \"https://ssf.example.com/jwks\"\npush_bearer_credential = \"p\"\n"
    );
    let c = parse(&good).unwrap_or_else(|e| panic!("{e:?}"));
    let s = c.signals.unwrap_or_else(|| panic!("[signals] is parsed"));
    assert_eq!(s.transmitters[0].subject_issuer, "https://auth.example.com");
}
