//! Claim templates in grant parameters: `{sub}`, `{client_id}`, `{owner}`, `{task_id}`,
//! `{workload}`, `{tool}`, `{grant}`; `{{` and `}}` are literal braces.
//!
//! Values come from tokens, so they are checked before they are put into a provider parameter:
//! only `[A-Za-z0-9@._+:|-]`, at most 128 characters, never `.`, never containing `..`. That
//! rules out breaking out of a JSON string, a path segment or a policy document, and adding an
//! entry to a comma-separated backend list (`alt_names`), whatever the template is used in.
//! After rendering, no `/`-separated segment of a rendered string may be `.` or `..`, even
//! percent-encoded: a path is never shortened by what a token says.
//!
//! For parameters the provider declares case-insensitive ([`ParamRule::case_insensitive`]), a
//! value with upper-case letters is refused: `ALICE` would otherwise name alice's Vault policy.

use credbroker_provider_api::{ParamRule, Params};
use serde_json::Value;

pub const PLACEHOLDERS: [&str; 7] = [
    "sub",
    "client_id",
    "owner",
    "task_id",
    "workload",
    "tool",
    "grant",
];
const MAX_VALUE_LEN: usize = credbroker_provider_api::MAX_TEMPLATE_VALUE_LEN;

/// The values placeholders are replaced with. `None` means unknown (an unattributed owner).
pub struct Vars<'a> {
    pub sub: &'a str,
    pub client_id: &'a str,
    pub owner: Option<&'a str>,
    pub task_id: &'a str,
    pub workload: &'a str,
    pub tool: &'a str,
    pub grant: &'a str,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<Option<&str>> {
        Some(match name {
            "sub" => Some(self.sub),
            "client_id" => Some(self.client_id),
            "owner" => self.owner,
            "task_id" => Some(self.task_id),
            "workload" => Some(self.workload),
            "tool" => Some(self.tool),
            "grant" => Some(self.grant),
            _ => return None,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RenderError {
    /// `{owner}` used but the task has no owner.
    Missing(String),
    /// A value holds characters that are not allowed in a template.
    Unsafe(String),
    /// A value with upper-case letters, for a parameter the backend compares without case.
    CaseFolded { placeholder: String, param: String },
    /// The rendered string has a `.` or `..` path segment.
    DotSegment { param: String },
}

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        let (before, after) = rest.split_at(i);
        if !before.is_empty() {
            out.push(Piece::Text(before));
        }
        if let Some(tail) = after.strip_prefix("{{") {
            out.push(Piece::Text("{"));
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("}}") {
            out.push(Piece::Text("}"));
            rest = tail;
        } else if after.starts_with('}') {
            return Err("unmatched '}' (write '}}' for a literal brace)".into());
        } else {
            let end = after
                .find('}')
                .ok_or("unclosed '{' (write '{{' for a literal brace)")?;
            let name = &after[1..end];
            if !PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{name}}}; known: {}",
                    PLACEHOLDERS.join(", ")
                ));
            }
            out.push(Piece::Var(name));
            rest = &after[end + 1..];
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Whether any string in `params` holds a placeholder (then it must be rendered per task).
pub fn has_placeholders(params: &Params) -> bool {
    let mut found = false;
    for value in params.values() {
        walk(value, &mut |s| {
            found |= pieces(s)
                .map(|p| p.iter().any(|x| matches!(x, Piece::Var(_))))
                .unwrap_or(true);
        });
    }
    found
}

/// Checks every string in `params` at load time; `on_error(key, message)` for each problem.
pub fn check_params(params: &Params, on_error: &mut dyn FnMut(&str, String)) {
    for (key, value) in params {
        walk(value, &mut |s| {
            if let Err(e) = pieces(s) {
                on_error(key, e);
            }
        });
    }
}

fn walk(value: &Value, f: &mut dyn FnMut(&str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| walk(v, f)),
        Value::Object(map) => map.values().for_each(|v| walk(v, f)),
        _ => {}
    }
}

/// Renders one string; `case_insensitive` refuses values that depend on case.
pub fn render_str(template: &str, vars: &Vars<'_>) -> Result<String, RenderError> {
    render_one(template, vars, false, "")
}

fn render_one(
    template: &str,
    vars: &Vars<'_>,
    case_insensitive: bool,
    param: &str,
) -> Result<String, RenderError> {
    // Templates were checked at load, so a parse error here cannot happen; treat it as unsafe.
    let parts = pieces(template).map_err(RenderError::Unsafe)?;
    let mut out = String::with_capacity(template.len());
    let mut substituted = false;
    for p in parts {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => {
                let value = vars
                    .get(name)
                    .flatten()
                    .ok_or_else(|| RenderError::Missing(name.to_string()))?;
                if !is_safe(value) {
                    return Err(RenderError::Unsafe(name.to_string()));
                }
                if case_insensitive && value.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(RenderError::CaseFolded {
                        placeholder: name.to_string(),
                        param: param.to_string(),
                    });
                }
                out.push_str(value);
                substituted = true;
            }
        }
    }
    if substituted && has_dot_segment(&out) {
        return Err(RenderError::DotSegment {
            param: param.to_string(),
        });
    }
    Ok(out)
}

/// Renders every string (keys of nested tables stay as written) under the provider's rules.
pub fn render(
    params: &Params,
    vars: &Vars<'_>,
    rules: &[ParamRule],
) -> Result<Params, RenderError> {
    params
        .iter()
        .map(|(k, v)| {
            let ci = rules.iter().any(|r| r.key == k && r.case_insensitive);
            Ok((k.clone(), render_value(v, vars, ci, k)?))
        })
        .collect()
}

fn render_value(
    value: &Value,
    vars: &Vars<'_>,
    ci: bool,
    param: &str,
) -> Result<Value, RenderError> {
    Ok(match value {
        Value::String(s) => Value::String(render_one(s, vars, ci, param)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, vars, ci, param))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, vars, ci, param)?)))
                .collect::<Result<_, RenderError>>()?,
        ),
        other => other.clone(),
    })
}

/// Whether a placeholder value is allowed at all.
pub fn is_safe(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value != "."
        && !value.contains("..")
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | '+' | ':' | '|' | '-')
        })
}

/// A `.` or `..` segment, also as `%2e`, and a `%2f` inside a segment: what a URL resolver
/// (`Url::join`, Vault's router) would turn into a shorter path.
fn has_dot_segment(s: &str) -> bool {
    s.split('/').any(|seg| {
        let decoded = percent_decode(seg);
        decoded == b"." || decoded == b".." || decoded.contains(&b'/') || decoded.contains(&b'\\')
    })
}

fn percent_decode(seg: &str) -> Vec<u8> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(sub: &'a str, owner: Option<&'a str>) -> Vars<'a> {
        Vars {
            sub,
            client_id: "agent-1",
            owner,
            task_id: "t1",
            workload: "pg",
            tool: "query",
            grant: "g",
        }
    }

    #[test]
    fn renders_and_escapes_braces() {
        let v = vars("alice@example.com", Some("alice@example.com"));
        assert_eq!(
            render_str("db/{sub}/{task_id}", &v),
            Ok("db/alice@example.com/t1".into())
        );
        assert_eq!(
            render_str(r#"{{"Owner":"{owner}"}}"#, &v),
            Ok(r#"{"Owner":"alice@example.com"}"#.into())
        );
    }

    #[test]
    fn refuses_unsafe_values_and_missing_owner() {
        assert_eq!(
            render_str("{sub}", &vars("a\"b", None)),
            Err(RenderError::Unsafe("sub".into()))
        );
        assert_eq!(
            render_str("{sub}", &vars("../sys", None)),
            Err(RenderError::Unsafe("sub".into()))
        );
        assert_eq!(
            render_str("{sub}", &vars("a/b", None)),
            Err(RenderError::Unsafe("sub".into()))
        );
        assert_eq!(
            render_str("{sub}", &vars("", None)),
            Err(RenderError::Unsafe("sub".into()))
        );
        assert_eq!(
            render_str("{owner}", &vars("a", None)),
            Err(RenderError::Missing("owner".into()))
        );
    }

    /// The review's path attack: `sub = "."` turned `team-kv/users/{sub}/creds` into
    /// `team-kv/users/creds` at OpenBao (`Url::join` drops dot segments). `{tool}` is chosen by
    /// the workload and could be `.` too.
    #[test]
    fn a_value_is_one_path_segment_or_refused() {
        for bad in [
            ".", "..", "a/b", "%2f", "a%2Fb", "", "a\u{0}b", "a\nb", "a b", "a\\b",
        ] {
            assert_eq!(
                render_str("team-kv/users/{sub}/creds", &vars(bad, None)),
                Err(RenderError::Unsafe("sub".into())),
                "{bad:?}"
            );
        }
        let mut v = vars("alice", None);
        v.tool = ".";
        assert_eq!(
            render_str("kv/{tool}/x", &v),
            Err(RenderError::Unsafe("tool".into()))
        );
        // Checked after rendering too: a value completing a dot segment the template began.
        assert_eq!(
            render_str("kv/%2{sub}/x", &vars("e", None)),
            Err(RenderError::DotSegment {
                param: String::new()
            })
        );
        assert_eq!(
            render_str("kv/%2e{sub}/x", &vars("-", None)),
            Ok("kv/%2e-/x".into())
        );
        assert_eq!(
            render_str("kv/%2e%2{sub}/x", &vars("e", None)),
            Err(RenderError::DotSegment {
                param: String::new()
            })
        );
        assert_eq!(
            render_str("kv/{sub}", &vars("a.b", None)),
            Ok("kv/a.b".into())
        );
    }

    /// Commas and `=` would add entries to comma-separated Vault parameters (PKI `alt_names`,
    /// `ip_sans`) or key=value lists.
    #[test]
    fn no_list_separators_in_values() {
        for bad in ["a,b", "a=b", "a;b"] {
            assert_eq!(
                render_str("{sub}.example.com", &vars(bad, None)),
                Err(RenderError::Unsafe("sub".into())),
                "{bad:?}"
            );
        }
    }

    /// The review's case attack: `sub = ALICE` rendered `user-ALICE`, which Vault folded to
    /// `user-alice`: alice's policy.
    #[test]
    fn case_insensitive_parameters_refuse_upper_case_values() {
        let rules = [ParamRule::fixed("policies").case_insensitive()];
        let params: Params = serde_json::from_value(
            serde_json::json!({"policies": ["user-{sub}"], "path": "kv/{sub}"}),
        )
        .unwrap_or_default();
        assert_eq!(
            render(&params, &vars("ALICE", None), &rules),
            Err(RenderError::CaseFolded {
                placeholder: "sub".into(),
                param: "policies".into()
            })
        );
        let ok = render(&params, &vars("alice", None), &rules).unwrap_or_default();
        assert_eq!(ok["policies"], serde_json::json!(["user-alice"]));
        // Case-sensitive parameters keep the value as it is.
        let path_only: Params =
            serde_json::from_value(serde_json::json!({"path": "kv/{sub}"})).unwrap_or_default();
        let ok = render(&path_only, &vars("ALICE", None), &rules).unwrap_or_default();
        assert_eq!(ok["path"], "kv/ALICE");
    }

    #[test]
    fn load_time_check_names_the_problem() {
        let mut errors = Vec::new();
        let params: Params =
            serde_json::from_str(r#"{"a":"{nope}","b":["{sub"],"c":{"d":"x}"},"e":"{{ok}}"}"#)
                .unwrap_or_default();
        check_params(&params, &mut |k, e| errors.push(format!("{k}: {e}")));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("a: unknown placeholder {nope}"));
        assert!(errors[1].starts_with("b: unclosed"));
        assert!(errors[2].starts_with("c: unmatched"));
    }
}
