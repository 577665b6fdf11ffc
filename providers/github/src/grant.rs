//! Grant parameters for GitHub, checked at config load and read at issue time.
//!
//! ```toml
//! [grant.github-issues.params]
//! installation_id = 12345678                   # or: owner = "acme" (+ repository = "notes")
//! repositories = ["notes", "docs"]             # required; a request may narrow to a subset
//! permissions = { issues = "write", metadata = "read" }   # required
//! ```
//!
//! Both lists are required. Without `repositories` GitHub would give the token every repository
//! of the installation; without `permissions`, every permission the App has.

use std::collections::BTreeMap;

use credbroker_provider_api::{ParamError, Params, param_str_list};
use serde_json::Value;

const KEYS: [&str; 5] = [
    "installation_id",
    "owner",
    "repository",
    "repositories",
    "permissions",
];
/// GitHub accepts at most 500 repositories per installation token.
const MAX_REPOSITORIES: usize = 500;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Installation {
    Id(u64),
    /// Found through `/repos/{owner}/{repo}/installation`, or `/orgs/{owner}/installation`
    /// then `/users/{owner}/installation`.
    Owner {
        owner: String,
        repository: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) installation: Installation,
    pub(crate) repositories: Vec<String>,
    pub(crate) permissions: BTreeMap<String, String>,
}

pub(crate) fn parse(params: &Params) -> Result<Grant, Vec<ParamError>> {
    let mut errors: Vec<ParamError> = params
        .keys()
        .filter(|k| !KEYS.contains(&k.as_str()))
        .map(|k| ParamError::new(k.as_str(), "unknown parameter"))
        .collect();
    let name = |key: &str, v: Option<&Value>, errors: &mut Vec<ParamError>| match v {
        None => None,
        Some(Value::String(s)) if valid_name(s) => Some(s.clone()),
        Some(_) => {
            errors.push(ParamError::new(
                key,
                "must be a GitHub account or repository name (letters, digits, '.', '_', '-')",
            ));
            None
        }
    };
    let owner = name("owner", params.get("owner"), &mut errors);
    let repository = name("repository", params.get("repository"), &mut errors);
    let installation = match (params.get("installation_id"), owner) {
        (Some(v), None) if params.get("owner").is_none() => match v.as_u64() {
            Some(id) if id > 0 => Some(Installation::Id(id)),
            _ => {
                errors.push(ParamError::new(
                    "installation_id",
                    "must be a positive integer",
                ));
                None
            }
        },
        (None, Some(owner)) => Some(Installation::Owner { owner, repository }),
        (Some(_), _) => {
            errors.push(ParamError::new(
                "installation_id",
                "give installation_id or owner, not both",
            ));
            None
        }
        (None, None) => {
            if params.get("owner").is_none() {
                errors.push(ParamError::new(
                    "installation_id",
                    "is required (or owner, to find the installation)",
                ));
            }
            None
        }
    };
    if params.get("repository").is_some() && params.get("owner").is_none() {
        errors.push(ParamError::new("repository", "needs owner"));
    }
    let repositories = match param_str_list(params, "repositories") {
        Ok(list) if list.is_empty() => {
            errors.push(ParamError::new(
                "repositories",
                "must list the repositories (without it GitHub gives the token every repository \
                 of the installation)",
            ));
            list
        }
        Ok(list) => {
            for (i, r) in list.iter().enumerate() {
                if !valid_template_name(r) {
                    errors.push(ParamError::new(
                        format!("repositories[{i}]"),
                        format!("{r:?} is not a repository name"),
                    ));
                }
            }
            if list.len() > MAX_REPOSITORIES {
                errors.push(ParamError::new(
                    "repositories",
                    format!("GitHub accepts at most {MAX_REPOSITORIES}"),
                ));
            }
            list
        }
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    };
    let permissions = permissions(params.get("permissions"), &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    match installation {
        Some(installation) => Ok(Grant {
            installation,
            repositories,
            permissions,
        }),
        None => Err(vec![ParamError::new("installation_id", "is required")]),
    }
}

fn permissions(v: Option<&Value>, errors: &mut Vec<ParamError>) -> BTreeMap<String, String> {
    let Some(Value::Object(map)) = v else {
        errors.push(ParamError::new(
            "permissions",
            "must be a table such as { issues = \"write\" } (without it GitHub gives the token \
             every permission of the App)",
        ));
        return BTreeMap::new();
    };
    if map.is_empty() {
        errors.push(ParamError::new("permissions", "must name at least one"));
    }
    let mut out = BTreeMap::new();
    for (name, level) in map {
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        match level.as_str() {
            Some(l @ ("read" | "write" | "admin")) if name_ok => {
                out.insert(name.clone(), l.to_string());
            }
            _ => errors.push(ParamError::new(
                format!("permissions.{name}"),
                "must be a GitHub App permission set to \"read\", \"write\" or \"admin\"",
            )),
        }
    }
    out
}

/// A GitHub account or repository name.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A repository name, or one with claim placeholders still to render.
fn valid_template_name(s: &str) -> bool {
    let stripped: String = s
        .split(['{', '}'])
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, part)| part)
        .collect();
    s.contains('{') || valid_name(&stripped)
}

/// How a granted permission level compares: GitHub's levels are ordered.
pub(crate) fn level(l: &str) -> u8 {
    match l {
        "read" => 1,
        "write" => 2,
        "admin" => 3,
        _ => u8::MAX,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(v: Value) -> Vec<String> {
        let Value::Object(p) = v else { return vec![] };
        parse(&p)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn grants_name_repositories_and_permissions_explicitly() {
        let Value::Object(p) = json!({
            "installation_id": 77,
            "repositories": ["notes", "{sub}-scratch"],
            "permissions": {"issues": "write", "contents": "read"}
        }) else {
            return;
        };
        let g = parse(&p).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(g.installation, Installation::Id(77));
        assert_eq!(g.permissions["issues"], "write");
        let e = errors(json!({"installation_id": 77, "permissions": {"issues": "write"}}));
        assert!(e.iter().any(|x| x.contains("every repository")), "{e:?}");
        let e = errors(json!({"installation_id": 77, "repositories": []}));
        assert!(
            e.iter().any(|x| x.contains("repositories: must list")),
            "{e:?}"
        );
        assert!(e.iter().any(|x| x.contains("every permission")), "{e:?}");
        let e = errors(json!({
            "owner": "acme/evil", "installation_id": "x", "colour": 1,
            "repositories": ["../etc"], "permissions": {"issues": "delete", "Bad Name": "read"}
        }));
        for needle in [
            "colour: unknown parameter",
            "owner: must be a GitHub account",
            "repositories[0]: \"../etc\" is not a repository name",
            "permissions.issues: must be",
            "permissions.Bad Name: must be",
        ] {
            assert!(
                e.iter().any(|x| x.contains(needle)),
                "{needle} not in {e:#?}"
            );
        }
        let e = errors(json!({"owner": "acme", "installation_id": 3,
            "repositories": ["a"], "permissions": {"issues": "read"}}));
        assert!(e.iter().any(|x| x.contains("not both")), "{e:?}");
        let Value::Object(p) = json!({"owner": "acme", "repository": "notes",
            "repositories": ["notes"], "permissions": {"issues": "read"}})
        else {
            return;
        };
        assert_eq!(
            parse(&p).map(|g| g.installation).ok(),
            Some(Installation::Owner {
                owner: "acme".into(),
                repository: Some("notes".into())
            })
        );
    }
}
