//! Claim templates in grant parameters: `{sub}`, `{client_id}`, `{owner}`, `{task_id}`,
//! `{workload}`, `{tool}`, `{grant}`; `{{` and `}}` are literal braces.
//!
//! Values come from tokens, so they are checked before they are put into a provider parameter:
//! only `[A-Za-z0-9@._+:=,|-]`, at most 128 characters, and never `..`. That rules out breaking
//! out of a JSON string, a path segment or a policy document, whatever the template is used in.

use credbroker_provider_api::Params;
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

pub fn render_str(template: &str, vars: &Vars<'_>) -> Result<String, RenderError> {
    // Templates were checked at load, so a parse error here cannot happen; treat it as unsafe.
    let parts = pieces(template).map_err(RenderError::Unsafe)?;
    let mut out = String::with_capacity(template.len());
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
                out.push_str(value);
            }
        }
    }
    Ok(out)
}

/// Renders every string (keys of nested tables stay as written).
pub fn render(params: &Params, vars: &Vars<'_>) -> Result<Params, RenderError> {
    params
        .iter()
        .map(|(k, v)| Ok((k.clone(), render_value(v, vars)?)))
        .collect()
}

fn render_value(value: &Value, vars: &Vars<'_>) -> Result<Value, RenderError> {
    Ok(match value {
        Value::String(s) => Value::String(render_str(s, vars)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(render(map, vars)?),
        other => other.clone(),
    })
}

fn is_safe(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && !value.contains("..")
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '@' | '.' | '_' | '+' | ':' | '=' | ',' | '|' | '-')
        })
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
