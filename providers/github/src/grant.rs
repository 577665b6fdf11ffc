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

use credbroker_provider_api::settings::Fields;
use credbroker_provider_api::{ParamError, Params};

/// GitHub accepts at most 500 repositories per installation token.
const MAX_REPOSITORIES: usize = 500;
const NAME_RULE: &str =
    "must be a GitHub account or repository name (letters, digits, '.', '_', '-')";

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

/// Parses a grant's parameters, every problem at once.
pub(crate) fn parse(params: &Params) -> Result<Grant, Vec<ParamError>> {
    let mut f = Fields::params(params);
    let installation = installation(&mut f);
    let repositories = repositories(&mut f);
    let permissions = permissions(&mut f);
    let errors = f.finish();
    match installation {
        Some(installation) if errors.is_empty() => Ok(Grant {
            installation,
            repositories,
            permissions,
        }),
        _ => Err(errors),
    }
}

fn installation(f: &mut Fields<'_>) -> Option<Installation> {
    let name = |f: &mut Fields<'_>, key: &str| {
        let given = f.raw(key).is_some();
        let value = f.get::<String>(key, "a string").filter(|s| valid_name(s));
        if given && value.is_none() && !f.has_problem_with(key) {
            f.problem(key, NAME_RULE);
        }
        (given, value)
    };
    let (owner_given, owner) = name(f, "owner");
    let (repository_given, repository) = name(f, "repository");
    let id_given = f.raw("installation_id").is_some();
    if repository_given && !owner_given {
        f.problem("repository", "needs owner");
    }
    match (id_given, owner_given) {
        (true, true) => {
            f.problem("installation_id", "give installation_id or owner, not both");
            None
        }
        (true, false) => {
            let id = f.get::<u64>("installation_id", "a positive integer")?;
            if id == 0 {
                f.problem("installation_id", "must be a positive integer");
                return None;
            }
            Some(Installation::Id(id))
        }
        (false, true) => Some(Installation::Owner {
            owner: owner?,
            repository,
        }),
        (false, false) => {
            f.problem(
                "installation_id",
                "is required (or owner, to find the installation)",
            );
            None
        }
    }
}

fn repositories(f: &mut Fields<'_>) -> Vec<String> {
    let given = f.raw("repositories").is_some();
    let list = f.strings("repositories").unwrap_or_default();
    if list.is_empty() && !f.has_problem_with("repositories") {
        f.problem(
            "repositories",
            if given {
                "must list the repositories (without it GitHub gives the token every repository \
                 of the installation)"
            } else {
                "is required: list the repositories (without it GitHub gives the token every \
                 repository of the installation)"
            },
        );
    }
    for (i, r) in list.iter().enumerate() {
        if !valid_template_name(r) {
            f.problem(
                &format!("repositories[{i}]"),
                format!("{r:?} is not a repository name"),
            );
        }
    }
    if list.len() > MAX_REPOSITORIES {
        f.problem(
            "repositories",
            format!("GitHub accepts at most {MAX_REPOSITORIES}"),
        );
    }
    list
}

fn permissions(f: &mut Fields<'_>) -> BTreeMap<String, String> {
    let given = f.raw("permissions").is_some();
    let Some(map) = f.table("permissions").filter(|_| given) else {
        if !f.has_problem_with("permissions") {
            f.problem(
                "permissions",
                "must be a table such as { issues = \"write\" } (without it GitHub gives the token \
                 every permission of the App)",
            );
        }
        return BTreeMap::new();
    };
    if map.is_empty() {
        f.problem("permissions", "must name at least one");
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
            _ => f.problem(
                &format!("permissions.{name}"),
                "must be a GitHub App permission set to \"read\", \"write\" or \"admin\"",
            ),
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
    use serde_json::{Value, json};

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
