//! What `check-config --online` can tell about policies before the first task fails on them.
//!
//! Vault creates a child token only with policies its parent holds ("child policies must be
//! subset of parent"), unless the parent holds `root` or has `sudo` on the path it creates the
//! token through, or the child is made through a token role (`scope_role`) with policy lists
//! (`allowed_policies`, `disallowed_policies` or their `_glob` forms), which decide instead. A
//! role with none of those lists falls back to the subset rule. credbroker's chain is: its own
//! token → the per-task scope token → each `kind = "token"` grant's token. So unless sudo or a
//! role's lists decide, every `scope_policies` entry must be held by credbroker's token; and
//! every token grant's policies must be held by the scope token (which holds `scope_policies`,
//! or when that is empty the role's `allowed_policies`, or else all of its parent's).

use credbroker_provider_api::Params;
use serde_json::Value;

use crate::grants::{self, Grant};

/// What credbroker's own token holds and may do (`lookup-self`, `sys/capabilities-self`).
pub(crate) struct Parent<'a> {
    pub(crate) policies: &'a [String],
    /// `sudo` (or `root`) on the path scope tokens are created through (`auth/token/create`,
    /// or `auth/token/create/<scope_role>`): Vault lets such a parent give any policies.
    pub(crate) sudo_on_scope_create: bool,
    /// The same on `auth/token/create`, where a scope token creates the grants' tokens. It
    /// tells about a scope token only when that one holds credbroker's own policies.
    pub(crate) sudo_on_create: bool,
}

/// The policy lists of a token role, as `auth/token/roles/<name>` returns them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RoleLists {
    pub(crate) allowed: Vec<String>,
    pub(crate) allowed_glob: Vec<String>,
    pub(crate) disallowed: Vec<String>,
    pub(crate) disallowed_glob: Vec<String>,
}

impl RoleLists {
    /// From the `data` of a role read. A list that is missing or null is empty (older Vaults
    /// have no `_glob` lists).
    pub(crate) fn from_data(data: &Value) -> Self {
        let list = |key: &str| -> Vec<String> {
            data.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            allowed: list("allowed_policies"),
            allowed_glob: list("allowed_policies_glob"),
            disallowed: list("disallowed_policies"),
            disallowed_glob: list("disallowed_policies_glob"),
        }
    }

    /// Whether Vault lets the role, not the parent, decide a token's policies: any list will
    /// do, and with none the subset rule holds as without a role.
    fn decides(&self) -> bool {
        !(self.allowed.is_empty()
            && self.allowed_glob.is_empty()
            && self.disallowed.is_empty()
            && self.disallowed_glob.is_empty())
    }

    /// Whether a token asked for no policies gets the role's `allowed_policies` (otherwise it
    /// gets its parent's).
    fn gives_allowed(&self) -> bool {
        !(self.allowed.is_empty() && self.allowed_glob.is_empty())
    }
}

/// The token role scope tokens are created through.
pub(crate) enum ScopeRole<'a> {
    /// No `scope_role`.
    None,
    /// As `auth/token/roles/<name>` returned it.
    Read { name: &'a str, lists: RoleLists },
    /// credbroker's token may not read it (`read` on `auth/token/roles/<name>` is needed for
    /// nothing else). It is checked as if it had no lists, the case where Vault falls back to
    /// the subset rule, and every problem that its lists could lift says so.
    Unread { name: &'a str, why: String },
}

impl ScopeRole<'_> {
    /// The role's lists, when they decide a scope token's policies.
    fn deciding(&self) -> Option<&RoleLists> {
        match self {
            Self::Read { lists, .. } if lists.decides() => Some(lists),
            _ => None,
        }
    }

    /// What to add to a problem the role's lists, had they been read, might lift.
    fn caveat(&self) -> String {
        match self {
            Self::Unread { name, why } => format!(
                " (unless scope_role {name:?} has allowed_policies: it could not be read: {why})"
            ),
            _ => String::new(),
        }
    }
}

/// Where a scope token's policies come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    ScopePolicies,
    RoleAllowed,
    /// credbroker's own token: same policies (and `default`), so the same capabilities.
    Parent,
}

/// Vault adds `default` to every token it creates: never a reason to refuse.
fn held(have: &[String], policy: &str) -> bool {
    policy == "default" || have.iter().any(|h| h == policy || h == "root")
}

/// The policy problems of this configuration, given what credbroker's own token may do.
pub(crate) fn problems(
    parent: &Parent<'_>,
    scope_policies: &[String],
    role: &ScopeRole<'_>,
    grants: &[(&str, &Params)],
) -> Vec<String> {
    let deciding = role.deciding();
    let mut out = Vec::new();
    if deciding.is_none() && !parent.sudo_on_scope_create {
        out.extend(scope_problem(parent.policies, scope_policies, role));
    }
    let (scope, source) = match deciding {
        _ if !scope_policies.is_empty() => (scope_policies, Source::ScopePolicies),
        Some(lists) if lists.gives_allowed() => (lists.allowed.as_slice(), Source::RoleAllowed),
        _ => (parent.policies, Source::Parent),
    };
    // Only a scope token with credbroker's policies is known to have its sudo.
    if source == Source::Parent && parent.sudo_on_create {
        return out;
    }
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
        if missing.is_empty() {
            continue;
        }
        let (add_to, caveat) = match source {
            Source::ScopePolicies => ("scope_policies", String::new()),
            Source::RoleAllowed => (
                "scope_role's allowed_policies, or set scope_policies",
                String::new(),
            ),
            Source::Parent => ("credbroker's token, or set scope_policies", role.caveat()),
        };
        out.push(format!(
            "grant {name}: policies {missing:?} are not held by the per-task scope token \
             (it has {scope:?}): Vault refuses the grant's token (\"child policies must be \
             subset of parent\"); add them to {add_to}{caveat}"
        ));
    }
    out
}

/// The problem, if any, with creating scope tokens under the subset rule.
fn scope_problem(
    own: &[String],
    scope_policies: &[String],
    role: &ScopeRole<'_>,
) -> Option<String> {
    let missing: Vec<&str> = scope_policies
        .iter()
        .filter(|p| !held(own, p))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return None;
    }
    let fix = match role {
        ScopeRole::None => "add them to credbroker's token, or create scope tokens through a \
                            token role (scope_role) with allowed_policies"
            .to_string(),
        ScopeRole::Read { name, .. } => format!(
            "scope_role {name:?} has no allowed_policies or disallowed_policies, so the rule \
             holds for it too; add them to credbroker's token, or set allowed_policies on the \
             role"
        ),
        ScopeRole::Unread { .. } => format!("add them to credbroker's token{}", role.caveat()),
    };
    Some(format!(
        "scope_policies {missing:?} are not held by credbroker's token (it has {own:?}): \
         Vault refuses every per-task scope token (\"child policies must be subset of \
         parent\"); {fix}"
    ))
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

    /// credbroker's token, with no sudo anywhere.
    fn plain(own: &[String]) -> Parent<'_> {
        Parent {
            policies: own,
            sudo_on_scope_create: false,
            sudo_on_create: false,
        }
    }

    fn role<'a>(name: &'a str, allowed: &[&str]) -> ScopeRole<'a> {
        ScopeRole::Read {
            name,
            lists: RoleLists {
                allowed: names(allowed),
                ..RoleLists::default()
            },
        }
    }

    #[test]
    fn child_policies_must_be_held_by_the_parent_unless_a_role_decides() {
        let own = names(&["credbroker", "orders-read"]);
        let ok = grant(&["orders-read", "default", "team-{owner}"]);
        let wide = grant(&["orders-write"]);
        let grants = [("ok", &ok), ("wide", &wide)];
        let p = problems(&plain(&own), &[], &ScopeRole::None, &grants);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("grant wide: policies [\"orders-write\"]"),
            "{p:?}"
        );

        let p = problems(&plain(&own), &names(&["task"]), &ScopeRole::None, &grants);
        assert_eq!(
            p.len(),
            3,
            "scope_policies, and both grants against them: {p:?}"
        );
        assert!(p[0].starts_with("scope_policies [\"task\"]"), "{p:?}");

        let deciding = role("credbroker-scope", &["orders-read", "orders-write"]);
        assert!(problems(&plain(&own), &[], &deciding, &grants).is_empty());
        assert!(problems(&plain(&names(&["root"])), &[], &ScopeRole::None, &grants).is_empty());
    }

    #[test]
    fn sudo_on_auth_token_create_lifts_the_subset_rule() {
        let own = names(&["credbroker"]);
        let sudo = Parent {
            policies: &own,
            sudo_on_scope_create: true,
            sudo_on_create: true,
        };
        let wide = grant(&["orders-write"]);
        let grants = [("wide", &wide)];
        // Scope tokens hold credbroker's policies, and so its sudo for the grants' tokens.
        let p = problems(&sudo, &[], &ScopeRole::None, &grants);
        assert!(p.is_empty(), "{p:?}");
        // scope_policies credbroker does not hold are no problem either; but then the scope
        // token holds only those, and its grants are checked against them.
        let p = problems(&sudo, &names(&["task"]), &ScopeRole::None, &grants);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("grant wide: policies [\"orders-write\"]"),
            "{p:?}"
        );
        let p = problems(&plain(&own), &names(&["task"]), &ScopeRole::None, &grants);
        assert_eq!(p.len(), 2, "without sudo, scope_policies too: {p:?}");
    }

    #[test]
    fn a_role_with_empty_allowed_policies_falls_back_to_the_subset_rule() {
        let own = names(&["credbroker", "orders-read"]);
        let read = grant(&["orders-read"]);
        let grants = [("read", &read)];
        // As Vault returns such a role: empty or null lists, no _glob lists on older versions.
        let lists = RoleLists::from_data(&json!({
            "allowed_policies": [], "disallowed_policies": null, "orphan": true,
        }));
        assert_eq!(lists, RoleLists::default());
        let empty = ScopeRole::Read {
            name: "credbroker-scope",
            lists,
        };
        let p = problems(&plain(&own), &names(&["task"]), &empty, &grants);
        assert_eq!(
            p.len(),
            2,
            "scope_policies, and the grant against them: {p:?}"
        );
        assert!(p[0].starts_with("scope_policies [\"task\"]"), "{p:?}");
        assert!(
            p[0].contains("scope_role \"credbroker-scope\" has no allowed_policies"),
            "{p:?}"
        );

        // Sudo on the role's create path lifts the rule here too.
        let sudo = Parent {
            policies: &own,
            sudo_on_scope_create: true,
            sudo_on_create: false,
        };
        let p = problems(&sudo, &names(&["task"]), &empty, &grants);
        assert_eq!(p.len(), 1, "only the grant against scope_policies: {p:?}");

        // A role that cannot be read is checked the same way, and the problem says so.
        let unread = ScopeRole::Unread {
            name: "credbroker-scope",
            why: "HTTP 403: permission denied".into(),
        };
        let p = problems(&plain(&own), &names(&["task"]), &unread, &grants);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("unless scope_role \"credbroker-scope\" has allowed_policies"),
            "{p:?}"
        );
    }

    #[test]
    fn a_role_with_allowed_policies_decides() {
        let own = names(&["credbroker"]);
        let write = grant(&["orders-write"]);
        let admin = grant(&["admin"]);
        let grants = [("write", &write), ("admin", &admin)];
        let lists = RoleLists::from_data(&json!({
            "allowed_policies": ["task", "orders-write"], "disallowed_policies": [],
        }));
        let deciding = ScopeRole::Read {
            name: "credbroker-scope",
            lists,
        };
        // Asked for no policies, the scope token gets the role's allowed ones.
        let p = problems(&plain(&own), &[], &deciding, &grants);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("grant admin: policies [\"admin\"]"),
            "{p:?}"
        );
        assert!(p[0].contains("allowed_policies"), "{p:?}");
        // credbroker's token does not hold "task": the role decides, not the subset rule.
        let p = problems(&plain(&own), &names(&["task"]), &deciding, &grants);
        assert_eq!(p.len(), 2, "both grants against [\"task\"]: {p:?}");
        assert!(p.iter().all(|x| x.starts_with("grant ")), "{p:?}");
        // disallowed_policies alone decide too.
        let disallowing = ScopeRole::Read {
            name: "credbroker-scope",
            lists: RoleLists {
                disallowed: names(&["admin"]),
                ..RoleLists::default()
            },
        };
        let p = problems(&plain(&own), &names(&["task"]), &disallowing, &[]);
        assert!(p.is_empty(), "{p:?}");
    }
}
