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

use credbroker_provider_api::{ParamError, Params, param_str, param_str_list};
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

const DYNAMIC_KEYS: [&str; 5] = ["kind", "path", "method", "body", "public"];
const TOKEN_KEYS: [&str; 6] = ["kind", "policies", "ttl", "num_uses", "renewable", "meta"];

pub(crate) fn parse(params: &Params) -> Result<Grant, Vec<ParamError>> {
    let mut errors = Vec::new();
    let kind = param_str(params, "kind").map_err(|e| vec![e])?;
    let allowed: &[&str] = match kind {
        "dynamic" => &DYNAMIC_KEYS,
        "token" => &TOKEN_KEYS,
        other => {
            return Err(vec![ParamError::new(
                "kind",
                format!("{other:?}: expected \"dynamic\" or \"token\""),
            )]);
        }
    };
    for k in params.keys().filter(|k| !allowed.contains(&k.as_str())) {
        errors.push(ParamError::new(
            k.as_str(),
            format!("unknown parameter for kind {kind:?}"),
        ));
    }
    let grant = if kind == "dynamic" {
        dynamic(params, &mut errors)
    } else {
        token(params, &mut errors)
    };
    if errors.is_empty() {
        Ok(grant)
    } else {
        Err(errors)
    }
}

fn dynamic(params: &Params, errors: &mut Vec<ParamError>) -> Grant {
    let path = match param_str(params, "path") {
        Ok(p) => p.trim_matches('/').to_string(),
        Err(e) => {
            errors.push(e);
            String::new()
        }
    };
    if path.contains("..") || path.contains("//") {
        errors.push(ParamError::new("path", "must be a plain path without '..'"));
    }
    // sys/ and auth/ are Vault's own machinery, not secrets engines: reading them through a
    // grant would hand a workload control over Vault. Tokens have their own kind.
    if path.starts_with("sys/") || path.starts_with("auth/") || path.starts_with("identity/") {
        errors.push(ParamError::new(
            "path",
            "must name a secrets engine path, not sys/, auth/ or identity/",
        ));
    }
    let post = match params.get("method").and_then(Value::as_str) {
        None | Some("GET") => None,
        Some("POST") => Some(
            params
                .get("body")
                .cloned()
                .unwrap_or(Value::Object(Default::default())),
        ),
        Some(other) => {
            errors.push(ParamError::new(
                "method",
                format!("{other:?}: expected GET or POST"),
            ));
            None
        }
    };
    if params.get("body").is_some_and(|b| !b.is_object()) {
        errors.push(ParamError::new("body", "must be a table"));
    }
    let public = param_str_list(params, "public").unwrap_or_else(|e| {
        errors.push(e);
        Vec::new()
    });
    Grant::Dynamic { path, post, public }
}

fn token(params: &Params, errors: &mut Vec<ParamError>) -> Grant {
    let policies = param_str_list(params, "policies").unwrap_or_else(|e| {
        errors.push(e);
        Vec::new()
    });
    if policies.is_empty() {
        // An empty list would give the workload every policy of its parent.
        errors.push(ParamError::new("policies", "must name at least one policy"));
    }
    if policies.iter().any(|p| p == "root") {
        errors.push(ParamError::new("policies", "\"root\" is never granted"));
    }
    let ttl = match params.get("ttl") {
        None => None,
        Some(Value::String(s)) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                errors.push(ParamError::new(
                    "ttl",
                    format!("{s:?} is not a duration like \"10m\""),
                ));
                None
            }
        },
        Some(_) => {
            errors.push(ParamError::new("ttl", "must be a duration string"));
            None
        }
    };
    let num_uses = match params.get("num_uses") {
        None => 0,
        Some(v) => v.as_u64().unwrap_or_else(|| {
            errors.push(ParamError::new(
                "num_uses",
                "must be a non-negative integer",
            ));
            0
        }),
    };
    let renewable = params
        .get("renewable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let meta = match params.get("meta") {
        None => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .filter_map(|(k, v)| match v.as_str() {
                Some(s) => Some((k.clone(), s.to_string())),
                None => {
                    errors.push(ParamError::new(format!("meta.{k}"), "must be a string"));
                    None
                }
            })
            .collect(),
        Some(_) => {
            errors.push(ParamError::new("meta", "must be a table of strings"));
            BTreeMap::new()
        }
    };
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
    }
}
