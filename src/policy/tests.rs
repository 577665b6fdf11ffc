use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::*;
use crate::config::Config;

const CONFIG: &str = r#"
[server]
broker_socket = "/run/b.sock"
admin_socket = "/run/a.sock"
[journal]
path = "/tmp/j.db"
key_file = "/tmp/k"
[[issuer]]
url = "https://as.example"
[attribution]
clients = { "ci-bot" = "team-ci@example.com" }
[[provider]]
name = "p"
type = "test"
[[grant]]
name = "read"
provider = "p"
scopes = ["mcp.tool:db.read"]
max_ttl = "10m"
default_ttl = "5m"
tools = ["query"]
params = { label = "db-{owner}-{task_id}", items = ["a", "b", "c"] }
[grant.conditions]
"groups" = ["dba", "sre"]
[[grant]]
name = "write"
provider = "p"
scopes = ["mcp.tool:db.write"]
max_ttl = "1h"
[[workload]]
name = "db-mcp"
uid = 1000
audience = "https://mcp.example/db"
grants = ["read"]
"#;

fn policy(require_owner: bool) -> (Config, Policy) {
    let text = CONFIG.replace(
        "[attribution]",
        &format!("[attribution]\nrequire_owner = {require_owner}"),
    );
    let config = Config::parse(&text, "test").expect("the policy test config should parse");
    const RULES: [ParamRule; 2] = [ParamRule::subset("items"), ParamRule::fixed("label")];
    let p = Policy::new(
        &config,
        [("p".to_string(), &RULES[..])].into_iter().collect(),
    );
    (config, p)
}

const NOW: u64 = 1_800_000_000;

fn claims(sub: &str, client: &str, scope: &str, extra: Value) -> Claims {
    let mut all = json!({"groups": ["sre"]});
    if let (Some(a), Some(e)) = (all.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    Claims {
        issuer: "https://as.example".into(),
        subject: sub.into(),
        client_id: client.into(),
        jti: "j".into(),
        audiences: vec!["https://mcp.example/db".into()],
        expires_at: NOW as i64 + 3600,
        issued_at: NOW as i64,
        not_before: None,
        scopes: scope.split(' ').map(str::to_owned).collect(),
        actors: extra
            .get("act")
            .and_then(|a| a.get("sub"))
            .and_then(|s| s.as_str())
            .map(|s| vec![s.to_string()])
            .unwrap_or_default(),
        all: all.as_object().cloned().unwrap_or_default(),
    }
}

fn ask<'a>(
    w: &'a WorkloadConfig,
    c: &'a Claims,
    grants: &'a [GrantAsk],
    tool: &'a str,
    ttl: Option<Duration>,
) -> Ask<'a> {
    Ask {
        workload: w,
        claims: c,
        tool,
        grants,
        ttl,
        task_id: "t-1",
        now: UNIX_EPOCH + Duration::from_secs(NOW),
    }
}

fn grant(name: &str) -> GrantAsk {
    GrantAsk {
        name: name.into(),
        ..Default::default()
    }
}

fn code(r: Result<Decision, Denial>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(d) => d.code.as_str(),
    }
}

#[test]
fn allows_and_renders_templates() {
    let (cfg, p) = policy(false);
    let c = claims(
        "alice@example.com",
        "agent-1",
        "mcp.tool:db.read",
        json!({}),
    );
    let d = p
        .decide(&ask(&cfg.workloads[0], &c, &[grant("read")], "query", None))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        d.owner,
        Owner {
            id: Some("alice@example.com".into()),
            source: OwnerSource::ResourceOwner
        }
    );
    assert_eq!(
        d.grants[0].params["label"],
        json!("db-alice@example.com-t-1")
    );
    // default_ttl, not max_ttl, when the request names none.
    assert_eq!(d.expires_at, UNIX_EPOCH + Duration::from_secs(NOW + 300));
}

#[test]
fn ttl_is_the_least_of_request_grant_and_token() {
    let (cfg, p) = policy(false);
    let w = &cfg.workloads[0];
    let mut c = claims("alice", "agent", "mcp.tool:db.read", json!({}));
    let at = |d: Decision| {
        d.expires_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let g = [grant("read")];
    assert_eq!(
        p.decide(&ask(w, &c, &g, "query", Some(Duration::from_secs(60))))
            .map(at),
        Ok(NOW + 60)
    );
    assert_eq!(
        p.decide(&ask(w, &c, &g, "query", Some(Duration::from_secs(7200))))
            .map(at),
        Ok(NOW + 600)
    );
    c.expires_at = NOW as i64 + 30;
    assert_eq!(
        p.decide(&ask(w, &c, &g, "query", Some(Duration::from_secs(7200))))
            .map(at),
        Ok(NOW + 30)
    );
    c.expires_at = NOW as i64;
    assert_eq!(code(p.decide(&ask(w, &c, &g, "query", None))), "expired");
}

#[test]
fn denies_by_default_with_reason_codes() {
    let (cfg, p) = policy(false);
    let w = &cfg.workloads[0];
    let good = claims("alice", "agent", "mcp.tool:db.read", json!({}));
    assert_eq!(
        code(p.decide(&ask(w, &good, &[grant("nope")], "query", None))),
        "unknown_grant"
    );
    assert_eq!(
        code(p.decide(&ask(w, &good, &[grant("write")], "query", None))),
        "grant_not_allowed"
    );
    let no_scope = claims("alice", "agent", "mcp.tool:db.other", json!({}));
    assert_eq!(
        code(p.decide(&ask(w, &no_scope, &[grant("read")], "query", None))),
        "insufficient_scope"
    );
    let wrong_group = claims(
        "alice",
        "agent",
        "mcp.tool:db.read",
        json!({"groups": ["dev"]}),
    );
    assert_eq!(
        code(p.decide(&ask(w, &wrong_group, &[grant("read")], "query", None))),
        "condition_not_met"
    );
    assert_eq!(
        code(p.decide(&ask(w, &good, &[grant("read")], "drop_table", None))),
        "tool_not_allowed"
    );
    let hostile = claims("alice\"}", "agent", "mcp.tool:db.read", json!({}));
    assert_eq!(
        code(p.decide(&ask(w, &hostile, &[grant("read")], "query", None))),
        "template_value_rejected"
    );
}

#[test]
fn narrowing_only_narrows() {
    let (cfg, p) = policy(false);
    let w = &cfg.workloads[0];
    let c = claims("alice", "agent", "mcp.tool:db.read", json!({}));
    let narrow = |k: &str, v: &[&str]| {
        vec![GrantAsk {
            name: "read".into(),
            narrow: [(k.to_string(), v.iter().map(|s| s.to_string()).collect())].into(),
        }]
    };
    let ok = p
        .decide(&ask(w, &c, &narrow("items", &["b"]), "query", None))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(ok.grants[0].params["items"], json!(["b"]));
    assert_eq!(
        code(p.decide(&ask(w, &c, &narrow("items", &["b", "z"]), "query", None))),
        "narrowing_exceeds_grant"
    );
    assert_eq!(
        code(p.decide(&ask(w, &c, &narrow("items", &[]), "query", None))),
        "narrowing_exceeds_grant"
    );
    assert_eq!(
        code(p.decide(&ask(w, &c, &narrow("label", &["x"]), "query", None))),
        "narrowing_not_allowed"
    );
}

#[test]
fn attribution_order() {
    let (cfg, p) = policy(true);
    let a = Attribution {
        require_owner: true,
        clients: cfg.attribution.clients.clone(),
    };
    let delegated = claims("alice", "agent-7", "s", json!({"act": {"sub": "agent-7"}}));
    assert_eq!(attribute(&delegated, &a).source, OwnerSource::ActSubject);
    let machine = claims("ci-bot", "ci-bot", "s", json!({}));
    assert_eq!(
        attribute(&machine, &a),
        Owner {
            id: Some("team-ci@example.com".into()),
            source: OwnerSource::ClientRegistry
        }
    );
    let orphan = claims("rogue", "rogue", "mcp.tool:db.read", json!({}));
    assert_eq!(
        attribute(&orphan, &a),
        Owner {
            id: None,
            source: OwnerSource::None
        }
    );
    assert_eq!(
        code(p.decide(&ask(
            &cfg.workloads[0],
            &orphan,
            &[grant("read")],
            "query",
            None
        ))),
        "owner_required"
    );
    let _ = SystemTime::now();
}

/// Two issuers: grants, workloads and the client registry are each bound to one.
const TWO_ISSUERS: &str = r#"
[server]
broker_socket = "/run/b.sock"
admin_socket = "/run/a.sock"
[journal]
path = "/tmp/j.db"
key_file = "/tmp/k"
[[issuer]]
url = "https://as.example"
clients = { "ci-agent" = "team-ci@example.com" }
[[issuer]]
url = "https://partner.example"
clients = { "ci-agent" = "partner-ci@partner.example" }
[[provider]]
name = "p"
type = "test"
[[grant]]
name = "read"
provider = "p"
issuer = "https://as.example"
scopes = ["mcp.tool:db.read"]
max_ttl = "10m"
params = { label = "db-{sub}" }
[[workload]]
name = "db-mcp"
uid = 1000
issuer = "https://as.example"
audience = "https://mcp.example/db"
grants = ["read"]
"#;

/// The review's issuer attack: with two issuers configured, the partner's `sub = alice`
/// rendered the same `db-alice` as ours, and the partner's `ci-agent` was attributed to our
/// team's owner.
#[test]
fn issuers_are_kept_apart() {
    let config = Config::parse(TWO_ISSUERS, "test").expect("the two-issuer config should parse");
    let p = Policy::new(&config, HashMap::new());
    let w = &config.workloads[0];
    let ours = claims("alice", "agent", "mcp.tool:db.read", json!({}));
    let mut theirs = ours.clone();
    theirs.issuer = "https://partner.example".into();
    assert!(
        p.decide(&ask(w, &ours, &[grant("read")], "query", None))
            .is_ok()
    );
    assert_eq!(
        code(p.decide(&ask(w, &theirs, &[grant("read")], "query", None))),
        "issuer_not_allowed"
    );
    let mut machine = claims("ci-agent", "ci-agent", "s", json!({}));
    assert_eq!(
        attribute(&machine, &config.attribution).id.as_deref(),
        Some("team-ci@example.com")
    );
    machine.issuer = "https://partner.example".into();
    assert_eq!(
        attribute(&machine, &config.attribution).id.as_deref(),
        Some("partner-ci@partner.example")
    );
    machine.issuer = "https://unknown.example".into();
    assert_eq!(attribute(&machine, &config.attribution).id, None);
}

#[test]
fn with_two_issuers_every_binding_is_explicit() {
    let loose = TWO_ISSUERS
        .replace("issuer = \"https://as.example\"\nscopes", "scopes")
        .replace("issuer = \"https://as.example\"\naudience", "audience")
        .replace(
            "[[provider]]",
            "[attribution]\nclients = { \"x\" = \"y\" }\n[[provider]]",
        );
    let errors = Config::parse(&loose, "test")
        .err()
        .map(|e| e.errors.into_iter().map(|e| e.path).collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(
        errors,
        [
            "attribution.clients",
            "grant.read.issuer",
            "workload.db-mcp.issuer"
        ],
        "{errors:?}"
    );
    // A workload and its grant bound to different issuers can never work: refused at load.
    let crossed = TWO_ISSUERS.replacen(
        "issuer = \"https://as.example\"\naudience",
        "issuer = \"https://partner.example\"\naudience",
        1,
    );
    let errors = Config::parse(&crossed, "test")
        .err()
        .map(|e| e.errors.into_iter().map(|e| e.path).collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(errors, ["workload.db-mcp.grants"]);
}

/// A parameter whose entries can deny (Vault policies) is never narrowed: dropping
/// `deny-payroll` from `["kv-read", "deny-payroll"]` is a subset and yet widens access.
#[test]
fn only_subset_parameters_narrow() {
    let (cfg, p) = policy(false);
    let w = &cfg.workloads[0];
    let c = claims("alice", "agent", "mcp.tool:db.read", json!({}));
    let ask_narrow = vec![GrantAsk {
        name: "read".into(),
        narrow: [("label".to_string(), vec!["x".to_string()])].into(),
    }];
    assert_eq!(
        code(p.decide(&ask(w, &c, &ask_narrow, "query", None))),
        "narrowing_not_allowed"
    );
}
