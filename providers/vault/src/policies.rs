//! What `check-config --online` can tell about policies before the first task fails on them.
//!
//! Vault creates a child token only with policies its parent holds ("child policies must be
//! subset of parent"), unless the parent holds `root`, or the child is made through a token role
//! (`scope_role`), whose `allowed_policies` decide instead. credbroker's chain is: its own token
//! → the per-task scope token → each `kind = "token"` grant's token. So without a role, every
//! `scope_policies` entry must be held by credbroker's token, and every token grant's policies
//! by the scope token (which holds `scope_policies`, or all of its parent's when that is empty).

use credbroker_provider_api::Params;

use crate::grants::{self, Grant};

/// Vault adds `default` to every token it creates: never a reason to refuse.
fn held(have: &[String], policy: &str) -> bool {
    policy == "default" || have.iter().any(|h| h == policy || h == "root")
}

/// The policy problems of this configuration, given the policies of credbroker's own token.
pub(crate) fn problems(
    own: &[String],
    scope_policies: &[String],
    scope_role: Option<&str>,
    grants: &[(&str, &Params)],
) -> Vec<String> {
    let mut out = Vec::new();
    if scope_role.is_none() {
        let missing: Vec<&str> = scope_policies
            .iter()
            .filter(|p| !held(own, p))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "scope_policies {missing:?} are not held by credbroker's token (it has {own:?}): \
                 Vault refuses every per-task scope token (\"child policies must be subset of \
                 parent\"); add them to credbroker's token, or create scope tokens through a \
                 token role (scope_role)"
            ));
        }
    }
    // The scope token's policies, when they can be known from here (a role decides its own).
    let scope: Option<&[String]> = match (scope_role, scope_policies.is_empty()) {
        (Some(_), _) => (!scope_policies.is_empty()).then_some(scope_policies),
        (None, true) => Some(own),
        (None, false) => Some(scope_policies),
    };
    let Some(scope) = scope else { return out };
    for (name, params) in grants {
        let Ok(Grant::Token { policies, .. }) = grants::parse(params) else {
            continue;
        };
        // A templated policy ("orders-{owner}") names a policy only at issue time.
        let missing: Vec<&str> = policies
            .iter()
            .filter(|p| !p.contains('{') && !held(scope, p))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "grant {name}: policies {missing:?} are not held by the per-task scope token \
                 (it has {scope:?}): Vault refuses the grant's token (\"child policies must be \
                 subset of parent\"); add them to {}, or use scope_role",
                if scope_policies.is_empty() {
                    "credbroker's token"
                } else {
                    "scope_policies"
                }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn grant(policies: &[&str]) -> Params {
        json!({ "kind": "token", "policies": policies })
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn child_policies_must_be_held_by_the_parent_unless_a_role_decides() {
        let own = names(&["credbroker", "orders-read"]);
        let ok = grant(&["orders-read", "default", "team-{owner}"]);
        let wide = grant(&["orders-write"]);
        let grants = [("ok", &ok), ("wide", &wide)];
        let p = problems(&own, &[], None, &grants);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("grant wide: policies [\"orders-write\"]"),
            "{p:?}"
        );

        let p = problems(&own, &names(&["task"]), None, &grants);
        assert_eq!(
            p.len(),
            3,
            "scope_policies, and both grants against them: {p:?}"
        );
        assert!(p[0].starts_with("scope_policies [\"task\"]"), "{p:?}");

        assert!(problems(&own, &[], Some("credbroker-scope"), &grants).is_empty());
        assert!(problems(&names(&["root"]), &[], None, &grants).is_empty());
    }
}
