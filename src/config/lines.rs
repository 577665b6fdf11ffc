//! Where each provider setting and grant parameter is written in the file, so problems that
//! providers find (they see only the values) are reported with a line like the core's own.
//!
//! Keys are paths as providers name them: `provider.NAME.KEY[.SUB…]` and
//! `grant.NAME.params.KEY[.SUB…]`, with `[i]` for array elements.

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Line (1-based) of every key under `[[provider]]` settings and `[[grant]]` params.
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
        for (section, inner) in [("provider", None), ("grant", Some("params"))] {
            let Some(entries) = root.get_ref().get(section).map(Spanned::get_ref) else {
                continue;
            };
            let DeValue::Array(entries) = entries else {
                continue;
            };
            for entry in entries {
                let DeValue::Table(table) = entry.get_ref() else {
                    continue;
                };
                let Some(DeValue::String(name)) = table.get("name").map(Spanned::get_ref) else {
                    continue;
                };
                let prefix = format!("{section}.{name}");
                lines.insert(prefix.clone(), line(entry.span().start));
                match inner {
                    None => walk(table, &prefix, &line, &mut lines),
                    Some(key) => {
                        if let Some((k, v)) = table.get_key_value(key) {
                            let path = format!("{prefix}.{key}");
                            lines.insert(path.clone(), line(k.span().start));
                            if let DeValue::Table(t) = v.get_ref() {
                                walk(t, &path, &line, &mut lines);
                            }
                        }
                    }
                }
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
        assert_eq!(l.of("provider.aws"), Some(2));
        assert_eq!(l.of("provider.aws.region"), Some(5));
        assert_eq!(l.of("provider.aws.timeout"), Some(6));
        assert_eq!(
            l.of("provider.aws.nonesuch"),
            Some(2),
            "the table's own line"
        );
        assert_eq!(l.of("grant.g.params.duration"), Some(11));
        assert_eq!(l.of("grant.h.params.role_arn"), Some(17));
        assert_eq!(l.of("grant.h.params.session_policy.Statement[1]"), Some(21));
        assert_eq!(
            l.of("grant.h.params.session_policy.Statement[1].Effect"),
            Some(21)
        );
        assert_eq!(l.of("grant.nonesuch.params.x"), None);
        assert_eq!(KeyLines::index("not [ toml").of("provider.aws"), None);
    }
}
