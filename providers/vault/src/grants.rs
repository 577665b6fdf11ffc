//! Grant parameters for Vault, checked at config load and read at issue time.
//!
//! ```toml
//! # A dynamic secret: any lease-bearing read (database/creds/ROLE, aws/creds/ROLE, …)
//! params = { kind = "dynamic", path = "database/creds/orders-read" }
//! # optional: method = "POST", body = { ttl = "15m" }, public = ["username"]
//!
//! # A Vault token for the workload itself, a child of the task's scope token
//! params = { kind = "token", policies = ["orders-{owner}"], ttl = "10m", num_uses = 0 }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use credbroker_provider_api::settings::Fields;
use credbroker_provider_api::{ParamError, Params};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Grant {
    Dynamic {
        path: String,
        post: Option<Value>,
        public: Vec<String>,
    },
    Token {
        policies: Vec<String>,
        ttl: Option<Duration>,
        num_uses: u64,
        renewable: bool,
        meta: BTreeMap<String, String>,
    },
}

/// Parses a grant's parameters, every problem at once. Only the keys of the grant's `kind` are
/// read, so a key of the other kind is reported as unknown.
pub(crate) fn parse(params: &Params) -> Result<Grant, Vec<ParamError>> {
    let mut f = Fields::params(params);
    let grant = match f.required::<String>("kind", "\"dynamic\" or \"token\"") {
        Some(kind) if kind == "dynamic" => dynamic(&mut f),
        Some(kind) if kind == "token" => token(&mut f),
        Some(other) => {
            // The other keys mean nothing without a kind: report only this.
            return Err(vec![ParamError::new(
                "kind",
                format!("{other:?}: expected \"dynamic\" or \"token\""),
            )]);
        }
        // Without a kind no other key can be judged: report only the kind.
        None => {
            return Err(f
                .finish()
                .into_iter()
                .filter(|e| e.path == "kind")
                .collect());
        }
    };
    let errors = f.finish();
    if errors.is_empty() {
        Ok(grant)
    } else {
        Err(errors)
    }
}

fn dynamic(f: &mut Fields<'_>) -> Grant {
    let path = f
        .required::<String>("path", "a secrets engine path")
        .map(|p| p.trim_matches('/').to_string())
        .unwrap_or_default();
    if path.is_empty() && !f.has_problem_with("path") {
        f.problem("path", "must name a secrets engine path");
    }
    if path.contains("..") || path.contains("//") {
        f.problem("path", "must be a plain path without '..'");
    }
    // sys/ and auth/ are Vault's own machinery, not secrets engines: reading them through a
    // grant would hand a workload control over Vault. Tokens have their own kind.
    if path.starts_with("sys/") || path.starts_with("auth/") || path.starts_with("identity/") {
        f.problem(
            "path",
            "must name a secrets engine path, not sys/, auth/ or identity/",
        );
    }
    let body = f.table("body").cloned();
    let post = match f.get::<String>("method", "\"GET\" or \"POST\"").as_deref() {
        None | Some("GET") => {
            if body.is_some() {
                f.problem("body", "is sent only with method = \"POST\"");
            }
            None
        }
        Some("POST") => Some(Value::Object(body.unwrap_or_default())),
        Some(other) => {
            f.problem("method", format!("{other:?}: expected GET or POST"));
            None
        }
    };
    let public = f.strings("public").unwrap_or_default();
    Grant::Dynamic { path, post, public }
}

fn token(f: &mut Fields<'_>) -> Grant {
    let policies = f
        .required::<Vec<String>>("policies", "a list of policy names")
        .unwrap_or_default();
    if policies.is_empty() {
        // An empty list would give the workload every policy of its parent.
        f.problem("policies", "must name at least one policy");
    }
    if policies.iter().any(|p| p == "root") {
        f.problem("policies", "\"root\" is never granted");
    }
    // Vault clamps to the role's max TTL anyway; a day is beyond any task.
    let ttl = f.duration("ttl", Duration::from_secs(1), Duration::from_secs(86_400));
    let num_uses = f.int("num_uses", 0..=u64::from(u32::MAX)).unwrap_or(0);
    let renewable = f.boolean("renewable").unwrap_or(false);
    let meta = f.string_map("meta").unwrap_or_default();
    Grant::Token {
        policies,
        ttl,
        num_uses,
        renewable,
        meta,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn p(v: Value) -> Params {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn parses_both_kinds() {
        assert_eq!(
            parse(&p(json!({"kind": "dynamic", "path": "/database/creds/r/"}))),
            Ok(Grant::Dynamic {
                path: "database/creds/r".into(),
                post: None,
                public: vec![]
            })
        );
        let t = parse(&p(
            json!({"kind": "token", "policies": ["a-{owner}"], "ttl": "10m", "meta": {"team": "x"}}),
        ));
        assert!(
            matches!(t, Ok(Grant::Token { ttl: Some(d), .. }) if d == Duration::from_secs(600))
        );
    }

    #[test]
    fn refuses_what_would_widen_or_misfire() {
        let bad = |v: Value| {
            parse(&p(v))
                .err()
                .map(|e| e.into_iter().map(|e| e.path).collect::<Vec<_>>())
        };
        assert_eq!(
            bad(json!({"kind": "dynamic", "path": "sys/leases/lookup"})),
            Some(vec!["path".into()])
        );
        assert_eq!(
            bad(json!({"kind": "dynamic", "path": "db/../sys"})),
            Some(vec!["path".into()])
        );
        assert_eq!(
            bad(json!({"kind": "token", "policies": []})),
            Some(vec!["policies".into()])
        );
        assert_eq!(
            bad(json!({"kind": "token", "policies": ["root"]})),
            Some(vec!["policies".into()])
        );
        assert_eq!(
            bad(json!({"kind": "dynamic", "path": "x", "ttl": "1m"})),
            Some(vec!["ttl".into()])
        );
        assert_eq!(bad(json!({"kind": "kv"})), Some(vec!["kind".into()]));
        assert_eq!(bad(json!({"path": "x"})), Some(vec!["kind".into()]));
    }

    #[test]
    fn wrong_types_are_refused_all_at_once_not_read_as_defaults() {
        let e = parse(&p(json!({
            "kind": "token", "policies": ["a"], "renewable": "yes", "num_uses": -1,
            "ttl": 600, "meta": {"team": 7}, "colour": "blue"
        })))
        .err()
        .unwrap_or_default();
        let got: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "ttl: must be a duration such as \"10s\"",
                "num_uses: must be an integer from 0 to 4294967295",
                "renewable: must be true or false",
                "meta.team: must be a string",
                "colour: unknown parameter",
            ],
        );
        let e = parse(&p(json!({
            "kind": "dynamic", "path": 3, "method": "PUT", "body": "x", "public": "username"
        })))
        .err()
        .unwrap_or_default();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["path", "body", "method", "public"], "{e:?}");
    }
}
