//! A grant's parameters: the mode, the downstream API (`audience` and/or `resource`), the
//! scopes, and whether an actor token names the workload.
//!
//! ```toml
//! [grant.tickets-read.params]
//! mode = "token-exchange"            # or "id-jag", "client-credentials"
//! resource = "https://tickets.example.com/api"   # RFC 8707
//! audience = "tickets"               # RFC 8693 logical name, where the AS wants one
//! scope = ["tickets:read"]           # a request may narrow it to a subset, never widen it
//! actor_token = true                 # default: true when the instance has a key to sign it
//! ```

use credbroker_provider_api::settings::Fields;
use credbroker_provider_api::{ParamError, ParamRule, Params};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    TokenExchange,
    IdJag,
    ClientCredentials,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::TokenExchange => "token-exchange",
            Self::IdJag => "id-jag",
            Self::ClientCredentials => "client-credentials",
        }
    }

    /// Whether the caller's token is sent to the IdP.
    pub(crate) fn uses_subject(self) -> bool {
        self != Self::ClientCredentials
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) mode: Mode,
    pub(crate) audience: Option<String>,
    pub(crate) resource: Option<String>,
    pub(crate) scope: Vec<String>,
    /// `None`: the instance's default (an actor token when it has a key to sign one).
    pub(crate) actor_token: Option<bool>,
}

impl Grant {
    pub(crate) fn scope(&self) -> String {
        self.scope.join(" ")
    }
}

/// Only the scope list may be narrowed: every scope adds access and none takes any away. The
/// mode, the audience and the resource name *where* the token works; a request may not move it.
pub(crate) const RULES: &[ParamRule] = &[
    ParamRule::subset("scope"),
    ParamRule::fixed("mode"),
    ParamRule::fixed("audience"),
    ParamRule::fixed("resource"),
    ParamRule::fixed("actor_token"),
];

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

pub(crate) fn parse(params: &Params) -> Result<Grant, Vec<ParamError>> {
    let mut f = Fields::params(params);
    let mode = match f.string("mode").as_deref() {
        Some("token-exchange") => Some(Mode::TokenExchange),
        Some("id-jag") => Some(Mode::IdJag),
        Some("client-credentials") => Some(Mode::ClientCredentials),
        Some(_) => {
            f.problem(
                "mode",
                "must be token-exchange, id-jag or client-credentials",
            );
            None
        }
        None => {
            if !f.has_problem_with("mode") {
                f.problem(
                    "mode",
                    "is required (token-exchange, id-jag or client-credentials)",
                );
            }
            None
        }
    };
    let audience = f.string("audience");
    let resource = f.string("resource");
    if let Some(r) = &resource {
        // RFC 8707 §2: an absolute URI without a fragment.
        match url::Url::parse(r) {
            Ok(u) if u.fragment().is_none() => {}
            _ => f.problem("resource", "must be an absolute URI without a fragment"),
        }
    }
    let scope = f.strings("scope").unwrap_or_default();
    if !f.has_problem_with("scope") {
        if scope.is_empty() {
            f.problem(
                "scope",
                "is required: a non-empty list (without it the authorization server picks, and picks wide)",
            );
        } else if let Some(bad) = scope.iter().find(|s| !scope_token(s)) {
            f.problem("scope", format!("{bad:?} is not an OAuth scope token"));
        }
    }
    let actor_token = f.boolean("actor_token");
    if mode == Some(Mode::ClientCredentials) && actor_token == Some(true) {
        f.problem(
            "actor_token",
            "client-credentials acts for nobody: no actor token",
        );
    }
    if mode.is_some_and(|m| m != Mode::IdJag)
        && audience.is_none()
        && resource.is_none()
        && !f.has_problem_with("audience")
        && !f.has_problem_with("resource")
    {
        f.problem(
            "resource",
            "resource or audience is required: the downstream API the token is for",
        );
    }
    let errors = f.finish();
    match mode {
        Some(mode) if errors.is_empty() => Ok(Grant {
            mode,
            audience,
            resource,
            scope,
            actor_token,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(v: serde_json::Value) -> Vec<String> {
        let serde_json::Value::Object(p) = v else {
            return vec![];
        };
        parse(&p)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn good_grants_parse() {
        let serde_json::Value::Object(p) = serde_json::json!({
            "mode": "token-exchange", "resource": "https://api.example.com/",
            "scope": ["tickets:read", "tickets:{owner}"]
        }) else {
            return;
        };
        let g = parse(&p).expect("a good grant parses");
        assert_eq!(g.mode, Mode::TokenExchange);
        assert_eq!(g.scope(), "tickets:read tickets:{owner}");
        assert!(problems(serde_json::json!({"mode": "id-jag", "scope": ["a"]})).is_empty());
    }

    #[test]
    fn every_problem_is_named() {
        let e = problems(serde_json::json!({
            "mode": "magic", "resource": "not a uri", "scope": ["a b"], "colour": 1
        }));
        for needle in [
            "mode: must be token-exchange",
            "resource: must be an absolute URI",
            "scope: \"a b\" is not an OAuth scope token",
            "colour: unknown parameter",
        ] {
            assert!(
                e.iter().any(|x| x.contains(needle)),
                "{needle} not in {e:#?}"
            );
        }
        let e = problems(serde_json::json!({"mode": "client-credentials", "actor_token": true}));
        for needle in [
            "scope: is required",
            "actor_token: client-credentials acts for nobody",
            "resource: resource or audience is required",
        ] {
            assert!(
                e.iter().any(|x| x.contains(needle)),
                "{needle} not in {e:#?}"
            );
        }
        let e = problems(serde_json::json!({"resource": "https://x.example/#frag", "scope": []}));
        assert!(e.iter().any(|x| x.contains("mode: is required")), "{e:#?}");
        assert!(
            e.iter()
                .any(|x| x.contains("resource: must be an absolute URI without a fragment"))
        );
        assert!(e.iter().any(|x| x.contains("scope: is required")));
    }
}
