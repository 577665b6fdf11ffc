//! Reading GitHub's answers: refusals mapped to what the broker must do, and what a token was
//! granted beyond what was asked.

use std::collections::BTreeMap;

use credbroker_provider_api::{ErrorKind, ProviderError};

use crate::client::Answer;
use crate::grant::level;

/// An unsuccessful answer, mapped to what the broker must do.
pub(crate) fn refusal(what: &str, answer: &Answer) -> ProviderError {
    let status = answer.status.as_u16();
    let text = format!("{what}: GitHub answered {status}: {}", answer.message());
    let kind = match status {
        401 => ErrorKind::Unauthorized,
        // The App is not allowed this: a permission it lacks, a repository outside the
        // installation, an installation it cannot see.
        403 | 404 | 422 => ErrorKind::Denied,
        400 => ErrorKind::Config,
        _ => ErrorKind::Unavailable,
    };
    ProviderError::new(kind, text)
}

/// What GitHub granted beyond what was asked. GitHub adds `metadata: read` to every token.
pub(crate) fn excess(
    asked_repos: &[String],
    asked: &BTreeMap<String, String>,
    granted_repos: &[String],
    granted: &BTreeMap<String, String>,
    selection: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    if selection != "selected" {
        out.push(format!("repository_selection {selection:?}"));
    }
    for r in granted_repos {
        if !asked_repos.contains(r) {
            out.push(format!("repository {r}"));
        }
    }
    for (name, l) in granted {
        let allowed = asked
            .get(name)
            .map_or(if name == "metadata" { level("read") } else { 0 }, |a| {
                level(a)
            });
        if level(l) > allowed {
            out.push(format!("{name}: {l}"));
        }
    }
    out
}

pub(crate) fn fingerprint(token: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    hex::encode(&d.as_ref()[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn more_than_asked_is_caught_but_metadata_read_is_githubs_default() {
        let repos = vec!["notes".to_string()];
        let asked = perms(&[("issues", "write")]);
        let ok = perms(&[("issues", "write"), ("metadata", "read")]);
        assert!(excess(&repos, &asked, &repos, &ok, "selected").is_empty());
        let less = perms(&[("issues", "read")]);
        assert!(excess(&repos, &asked, &repos, &less, "selected").is_empty());
        let more = perms(&[
            ("issues", "admin"),
            ("contents", "read"),
            ("metadata", "write"),
        ]);
        assert_eq!(
            excess(
                &repos,
                &asked,
                &["notes".into(), "secrets".into()],
                &more,
                "all"
            ),
            [
                "repository_selection \"all\"",
                "repository secrets",
                "contents: read",
                "issues: admin",
                "metadata: write"
            ]
        );
    }
}
