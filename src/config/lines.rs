//! Where each key is written in the file, so every problem — the core's, and those providers
//! find (they see only the values) — is reported with its line.
//!
//! Keys are paths: `server.broker_socket`, and for the arrays of tables the entry's name
//! (`url` for issuers): `provider.NAME.KEY[.SUB…]`, `grant.NAME.params.KEY`,
//! `issuer.URL.refresh`; `[i]` for array elements and for entries without a name.

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Line (1-based) of every key in a configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyLines {
    lines: BTreeMap<String, usize>,
}

impl KeyLines {
    /// Indexes `text`; a file that does not parse indexes nothing (its errors come from the
    /// parser itself).
    pub(super) fn index(text: &str) -> Self {
        let mut lines = BTreeMap::new();
        let Ok(root) = DeTable::parse(text) else {
            return Self { lines };
        };
        let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
        for (k, v) in root.get_ref() {
            let key = k.get_ref().to_string();
            lines.insert(key.clone(), line(k.span().start));
            match v.get_ref() {
                DeValue::Array(entries) if entries.iter().all(|e| e.get_ref().is_table()) => {
                    for (i, entry) in entries.iter().enumerate() {
                        let DeValue::Table(table) = entry.get_ref() else {
                            continue;
                        };
                        let name = entry_name(table, i);
                        let path = if name.starts_with('[') {
                            format!("{key}{name}")
                        } else {
                            format!("{key}.{name}")
                        };
                        lines.insert(path.clone(), line(entry.span().start));
                        walk(table, &path, &line, &mut lines);
                    }
                }
                _ => value(v, &key, &line, &mut lines),
            }
        }
        Self { lines }
    }

    /// The line of `path`, or of its nearest enclosing key that has one.
    pub fn of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// How an array-of-tables entry is named in paths: `name`, or an issuer's `url`, or `[i]`.
pub(super) fn entry_name(table: &DeTable<'_>, i: usize) -> String {
    ["name", "url"]
        .iter()
        .find_map(|k| match table.get(*k).map(Spanned::get_ref) {
            Some(DeValue::String(s)) => Some(s.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| format!("[{i}]"))
}

fn walk(
    table: &DeTable<'_>,
    prefix: &str,
    line: &dyn Fn(usize) -> usize,
    out: &mut BTreeMap<String, usize>,
) {
    for (k, v) in table {
        let path = format!("{prefix}.{}", k.get_ref());
        out.insert(path.clone(), line(k.span().start));
        value(v, &path, line, out);
    }
}

fn value(
    v: &Spanned<DeValue<'_>>,
    path: &str,
    line: &dyn Fn(usize) -> usize,
    out: &mut BTreeMap<String, usize>,
) {
    match v.get_ref() {
        DeValue::Table(t) => walk(t, path, line, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.insert(p.clone(), line(item.span().start));
                value(item, &p, line, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_params_have_their_lines() {
        let text = r#"
[server]
broker_socket = "/run/b.sock"
admin_uids = [0,
  7]
[[provider]]
name = "aws"
type = "aws"
region = "eu-west-1"
timeout = 5

[[grant]]
name = "g"
provider = "aws"
params = { role_arn = "x", duration = "20m" }

[[grant]]
name = "h"
provider = "aws"
[grant.params]
role_arn = "y"
[grant.params.session_policy]
Statement = [
  { Effect = "Allow" },
  { Effect = "Deny" },
]
"#;
        let l = KeyLines::index(text);
        assert_eq!(l.of("server.broker_socket"), Some(3));
        assert_eq!(l.of("server.admin_uids[1]"), Some(5));
        assert_eq!(l.of("server.nonesuch"), Some(2), "the table's own line");
        assert_eq!(l.of("provider.aws"), Some(6));
        assert_eq!(l.of("provider.aws.region"), Some(9));
        assert_eq!(l.of("provider.aws.timeout"), Some(10));
        assert_eq!(l.of("provider.aws.nonesuch"), Some(6));
        assert_eq!(l.of("grant.g.params.duration"), Some(15));
        assert_eq!(l.of("grant.h.params.role_arn"), Some(21));
        assert_eq!(l.of("grant.h.params.session_policy.Statement[1]"), Some(25));
        assert_eq!(
            l.of("grant.h.params.session_policy.Statement[1].Effect"),
            Some(25)
        );
        assert_eq!(
            l.of("grant.nonesuch.params.x"),
            Some(12),
            "the section's line"
        );
        assert_eq!(
            KeyLines::index("[[grant]]\nprovider = 1\n").of("grant[0].provider"),
            Some(2)
        );
        assert_eq!(KeyLines::index("not [ toml").of("provider.aws"), None);
    }
}
