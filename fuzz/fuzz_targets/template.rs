//! Grant-parameter templates (`credbroker::policy::template`): `check_params`,
//! `has_placeholders`, `is_safe`, `render_str` and `render` (with fuzzed provider `ParamRule`s),
//! with fuzzed templates, fuzzed parameter trees and fuzzed placeholder values.
//!
//! Beyond "no panic", every answer is checked against a reference reading of the template
//! syntax written here (`{name}` for the seven known names, `{{` and `}}` for braces, anything
//! else an error) and against the rules in [`value_violation`] and [`output_violation`]:
//! whatever is rendered, every value put in obeys them, and so does the rendered string.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use credbroker::policy::template::{
    PLACEHOLDERS, RenderError, Vars, check_params, has_placeholders, is_safe, render, render_str,
};
use credbroker_provider_api::{ParamRule, Params};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// Why `value` must never be put into a rendered parameter, or `None` if it may be.
///
/// These are the rules a value must obey for `render_str` to succeed with it (necessary, not
/// sufficient: the implementation's allowlist is stricter still). Tightening the rules in
/// src/policy/template.rs means adding them here.
fn value_violation(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return Some("is empty");
    }
    if value.len() > credbroker_provider_api::MAX_TEMPLATE_VALUE_LEN || value.len() > 128 {
        return Some("is longer than 128 bytes");
    }
    if value.contains('/') {
        return Some("contains '/'");
    }
    if value.contains('%') {
        return Some("contains '%'");
    }
    if value.chars().any(char::is_control) {
        return Some("contains a control character");
    }
    if value.chars().any(char::is_whitespace) {
        return Some("contains whitespace");
    }
    if value.contains("..") {
        return Some("contains \"..\"");
    }
    if value == "." {
        return Some("is \".\"");
    }
    if value.contains(',') {
        return Some("contains ','");
    }
    if value.contains('=') {
        return Some("contains '='");
    }
    None
}

/// Why a rendered string in which at least one placeholder was substituted must not be
/// produced: a `/`-separated segment that is `.` or `..`, or that holds `/` or `\`, once
/// percent-decoded (a path must never be shortened by what a token says).
fn output_violation(rendered: &str) -> Option<String> {
    for segment in rendered.split('/') {
        let mut decoded = Vec::new();
        let mut rest = segment.as_bytes();
        while let Some((&c, tail)) = rest.split_first() {
            let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
            match (c, hex(tail.first()), hex(tail.get(1))) {
                (b'%', Some(h), Some(l)) => {
                    decoded.push((h * 16 + l) as u8);
                    rest = &tail[2..];
                }
                _ => {
                    decoded.push(c);
                    rest = tail;
                }
            }
        }
        if decoded == b"." || decoded == b".." {
            return Some(format!("has the dot segment {segment:?}"));
        }
        if decoded.contains(&b'/') || decoded.contains(&b'\\') {
            return Some(format!("has the segment {segment:?}, a separator once decoded"));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The reference reading of a template.

#[derive(Debug, PartialEq)]
enum Part {
    Text(String),
    Var(&'static str),
}

/// Splits a template into literal text (braces unescaped) and placeholders, or says why not.
fn reference_parts(template: &str) -> Result<Vec<Part>, ()> {
    let mut out = Vec::new();
    let mut text = String::new();
    let b = template.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' if b.get(i + 1) == Some(&b'{') => {
                text.push('{');
                i += 2;
            }
            b'}' if b.get(i + 1) == Some(&b'}') => {
                text.push('}');
                i += 2;
            }
            b'}' => return Err(()),
            b'{' => {
                let close = b[i + 1..].iter().position(|&c| c == b'}').ok_or(())? + i + 1;
                let name = &template[i + 1..close];
                let known = PLACEHOLDERS.iter().find(|p| **p == name).ok_or(())?;
                if !text.is_empty() {
                    out.push(Part::Text(std::mem::take(&mut text)));
                }
                out.push(Part::Var(known));
                i = close + 1;
            }
            _ => {
                // Copy the whole UTF-8 character.
                let len = template[i..].chars().next().map_or(1, char::len_utf8);
                text.push_str(&template[i..i + len]);
                i += len;
            }
        }
    }
    if !text.is_empty() {
        out.push(Part::Text(text));
    }
    Ok(out)
}

struct Values {
    sub: String,
    client_id: String,
    owner: Option<String>,
    task_id: String,
    workload: String,
    tool: String,
    grant: String,
}

impl Values {
    fn vars(&self) -> Vars<'_> {
        Vars {
            sub: &self.sub,
            client_id: &self.client_id,
            owner: self.owner.as_deref(),
            task_id: &self.task_id,
            workload: &self.workload,
            tool: &self.tool,
            grant: &self.grant,
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "sub" => Some(&self.sub),
            "client_id" => Some(&self.client_id),
            "owner" => self.owner.as_deref(),
            "task_id" => Some(&self.task_id),
            "workload" => Some(&self.workload),
            "tool" => Some(&self.tool),
            "grant" => Some(&self.grant),
            other => panic!("the reference parser produced an unknown placeholder {other:?}"),
        }
    }
}

/// Every invariant of one `render_str` answer.
fn check_render_str(template: &str, values: &Values, got: &Result<String, RenderError>) {
    let parts = reference_parts(template);
    match (&parts, got) {
        (Err(()), Ok(out)) => {
            panic!("rendered the malformed template {template:?} to {out:?}")
        }
        (Err(()), Err(RenderError::Unsafe(_))) => {}
        (Err(()), Err(e)) => panic!("malformed template {template:?}: expected Unsafe, got {e:?}"),
        (Ok(parts), Ok(out)) => {
            let mut expected = String::new();
            for p in parts {
                match p {
                    Part::Text(t) => expected.push_str(t),
                    Part::Var(name) => {
                        let Some(v) = values.get(name) else {
                            panic!("rendered {template:?} without a value for {{{name}}}")
                        };
                        if let Some(why) = value_violation(v) {
                            panic!(
                                "rendered {template:?} with {{{name}}} = {v:?}, which {why}: {out:?}"
                            );
                        }
                        expected.push_str(v);
                    }
                }
            }
            assert_eq!(out, &expected, "rendering {template:?}");
            if parts.iter().any(|p| matches!(p, Part::Var(_))) {
                if let Some(why) = output_violation(out) {
                    panic!("rendered {template:?} to {out:?}, which {why}");
                }
            }
            if !parts.iter().any(|p| matches!(p, Part::Var(_))) {
                // No placeholder: the template itself, with `{{` and `}}` unescaped.
                let unescaped = template.replace("{{", "{").replace("}}", "}");
                assert_eq!(out, &unescaped, "rendering {template:?}");
            }
        }
        (Ok(parts), Err(e)) => {
            // Only a placeholder can fail a well-formed template, and only for its value.
            assert!(
                parts.iter().any(|p| matches!(p, Part::Var(_))),
                "{template:?} has no placeholder, yet rendering it failed: {e:?}"
            );
            match e {
                RenderError::Missing(name) => {
                    assert_eq!(name, "owner", "only the owner can be unknown");
                    assert!(values.owner.is_none());
                    assert!(parts.contains(&Part::Var("owner")));
                }
                RenderError::Unsafe(name) => {
                    let used = parts.iter().any(|p| matches!(p, Part::Var(n) if n == name));
                    assert!(used, "Unsafe({name:?}) for {template:?}, which does not use it");
                    assert!(values.get(name).is_some());
                }
                RenderError::CaseFolded { placeholder, .. } => {
                    let used = parts.iter().any(|p| matches!(p, Part::Var(n) if n == placeholder));
                    assert!(used, "CaseFolded({placeholder:?}) for {template:?}, not using it");
                    let v = values.get(placeholder).unwrap_or_default();
                    assert!(v.bytes().any(|b| b.is_ascii_uppercase()), "CaseFolded for {v:?}");
                }
                RenderError::DotSegment { .. } => {
                    // Every value was fine; the whole rendered string is what is refused.
                    let rendered: String = parts
                        .iter()
                        .map(|p| match p {
                            Part::Text(t) => t.as_str(),
                            Part::Var(name) => values.get(name).unwrap_or_default(),
                        })
                        .collect();
                    assert!(
                        output_violation(&rendered).is_some(),
                        "DotSegment for {template:?}, rendered {rendered:?}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs.

/// A placeholder value: fuzzed text, or one near the rules' edges.
#[derive(Arbitrary, Debug)]
enum ArbValue {
    Text(String),
    /// `len` copies of one character (lengths around 128 bytes).
    Repeat(char, u8),
    Edge(u8),
}

impl ArbValue {
    fn value(&self) -> String {
        const EDGES: &[&str] = &[
            "alice@example.com", ".", "..", "a..b", "a.b", "a/b", "a%2fb", "a b", "a\tb", "a\nb",
            "a\u{0}b", "a\u{85}b", "a\u{a0}b", "a\u{2028}b", "a,b", "a=b", "a|b", "-", "+", ":",
            "\"", "'", "\\", "{", "}", "{sub}", "é", "a\u{7f}", "",
        ];
        match self {
            Self::Text(s) => s.clone(),
            Self::Repeat(c, n) => std::iter::repeat_n(*c, usize::from(*n)).collect(),
            Self::Edge(i) => EDGES[usize::from(*i) % EDGES.len()].to_string(),
        }
    }
}

/// A template built from pieces, so that well-formed ones are common.
#[derive(Arbitrary, Debug)]
enum Piece {
    Text(String),
    Var(u8),
    /// A name that is not a placeholder, in braces.
    Unknown(String),
    OpenOpen,
    CloseClose,
    Open,
    Close,
}

#[derive(Arbitrary, Debug)]
enum ArbTemplate {
    Raw(String),
    Pieces(Vec<Piece>),
}

impl ArbTemplate {
    fn text(&self) -> String {
        match self {
            Self::Raw(s) => s.clone(),
            Self::Pieces(ps) => {
                let mut s = String::new();
                for p in ps.iter().take(32) {
                    match p {
                        Piece::Text(t) => s.push_str(t),
                        Piece::Var(i) => {
                            s.push('{');
                            s.push_str(PLACEHOLDERS[usize::from(*i) % PLACEHOLDERS.len()]);
                            s.push('}');
                        }
                        Piece::Unknown(n) => {
                            s.push('{');
                            s.push_str(n);
                            s.push('}');
                        }
                        Piece::OpenOpen => s.push_str("{{"),
                        Piece::CloseClose => s.push_str("}}"),
                        Piece::Open => s.push('{'),
                        Piece::Close => s.push('}'),
                    }
                }
                s
            }
        }
    }
}

/// Parameter names the fuzzed provider rules can name (`ParamRule::key` is `&'static str`).
const KEYS: [&str; 6] = ["path", "policies", "owner", "repositories", "role_session_name", "x"];

#[derive(Arbitrary, Debug)]
enum ArbKey {
    Known(u8),
    Other(String),
}

impl ArbKey {
    fn key(&self) -> String {
        match self {
            Self::Known(i) => KEYS[usize::from(*i) % KEYS.len()].to_string(),
            Self::Other(s) => s.clone(),
        }
    }
}

/// A parameter tree whose strings are templates.
#[derive(Arbitrary, Debug)]
enum ArbParam {
    Template(ArbTemplate),
    Number(i64),
    Bool(bool),
    Null,
    List(Vec<ArbParam>),
    Table(Vec<(String, ArbParam)>),
}

impl ArbParam {
    fn value(&self, depth: u32) -> Value {
        match self {
            Self::Template(t) => Value::String(t.text()),
            Self::Number(n) => Value::from(*n),
            Self::Bool(b) => Value::Bool(*b),
            Self::Null => Value::Null,
            Self::List(items) if depth < 4 => {
                Value::Array(items.iter().take(8).map(|i| i.value(depth + 1)).collect())
            }
            Self::Table(entries) if depth < 4 => Value::Object(
                entries
                    .iter()
                    .take(8)
                    .map(|(k, v)| (k.clone(), v.value(depth + 1)))
                    .collect(),
            ),
            _ => Value::Null,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    templates: Vec<ArbTemplate>,
    params: Vec<(ArbKey, ArbParam)>,
    /// (index into KEYS, case-insensitive, narrowable as a subset)
    rules: Vec<(u8, bool, bool)>,
    sub: ArbValue,
    client_id: ArbValue,
    owner: Option<ArbValue>,
    task_id: ArbValue,
    workload: ArbValue,
    tool: ArbValue,
    grant: ArbValue,
}

fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(m) => m.values().for_each(|i| strings(i, out)),
        _ => {}
    }
}

/// `rendered` has the shape of `original`, with each string rendered as `render_str` does (a
/// case-insensitive rule only adds refusals), and no value with upper case where case folds.
fn check_rendered(original: &Value, rendered: &Value, values: &Values, ci: bool) {
    let vars = values.vars();
    match (original, rendered) {
        (Value::String(t), Value::String(r)) => {
            assert_eq!(render_str(t, &vars).as_ref(), Ok(r), "render and render_str differ");
            if ci {
                for p in reference_parts(t).unwrap_or_default() {
                    if let Part::Var(name) = p {
                        let v = values.get(name).unwrap_or_default();
                        assert!(
                            !v.bytes().any(|b| b.is_ascii_uppercase()),
                            "rendered {{{name}}} = {v:?} into a case-insensitive parameter"
                        );
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len());
            a.iter().zip(b).for_each(|(x, y)| check_rendered(x, y, values, ci));
        }
        (Value::Object(a), Value::Object(b)) => {
            assert!(a.keys().eq(b.keys()), "render changed the keys");
            a.values().zip(b.values()).for_each(|(x, y)| check_rendered(x, y, values, ci));
        }
        (a, b) => assert_eq!(a, b, "render changed a non-string"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else { return };
    let values = Values {
        sub: input.sub.value(),
        client_id: input.client_id.value(),
        owner: input.owner.as_ref().map(ArbValue::value),
        task_id: input.task_id.value(),
        workload: input.workload.value(),
        tool: input.tool.value(),
        grant: input.grant.value(),
    };
    let vars = values.vars();
    for v in [&values.sub, &values.client_id, &values.task_id, &values.tool, &values.grant] {
        if is_safe(v) {
            if let Some(why) = value_violation(v) {
                panic!("is_safe accepts {v:?}, which {why}");
            }
        }
    }

    for t in input.templates.iter().take(16) {
        let template = t.text();
        let got = render_str(&template, &vars);
        check_render_str(&template, &values, &got);
    }

    let params: Params = input
        .params
        .iter()
        .take(16)
        .map(|(k, v)| (k.key(), v.value(0)))
        .collect::<Map<String, Value>>();

    // check_params: one error per malformed string, named by its top-level key.
    let mut reported: Vec<String> = Vec::new();
    check_params(&params, &mut |key, message| {
        assert!(params.contains_key(key), "check_params named {key:?}, not a parameter");
        assert!(!message.is_empty());
        reported.push(key.to_string());
    });
    let mut expected = Vec::new();
    let mut any_placeholder = false;
    for (k, v) in &params {
        let mut s = Vec::new();
        strings(v, &mut s);
        for t in s {
            match reference_parts(t) {
                Err(()) => {
                    expected.push(k.clone());
                    any_placeholder = true;
                }
                Ok(parts) => any_placeholder |= parts.iter().any(|p| matches!(p, Part::Var(_))),
            }
            check_render_str(t, &values, &render_str(t, &vars));
        }
    }
    assert_eq!(reported, expected, "check_params reported other problems than expected");
    // A malformed string counts as needing per-task rendering (it never renders).
    assert_eq!(has_placeholders(&params), any_placeholder);

    let rules: Vec<ParamRule> = input
        .rules
        .iter()
        .take(8)
        .map(|&(i, ci, subset)| {
            let key = KEYS[usize::from(i) % KEYS.len()];
            let rule = if subset { ParamRule::subset(key) } else { ParamRule::fixed(key) };
            if ci { rule.case_insensitive() } else { rule }
        })
        .collect();
    let ci = |k: &str| rules.iter().any(|r| r.key == k && r.case_insensitive);
    match render(&params, &vars, &rules) {
        Ok(rendered) => {
            assert_eq!(rendered.len(), params.len());
            for (k, v) in &params {
                let r = rendered.get(k).unwrap_or_else(|| panic!("render dropped {k:?}"));
                check_rendered(v, r, &values, ci(k));
            }
        }
        Err(e) => {
            // Some string of the tree must fail on its own, or use an upper-case value where
            // case folds.
            let fails = params.iter().any(|(k, v)| {
                let mut s = Vec::new();
                strings(v, &mut s);
                s.iter().any(|t| {
                    render_str(t, &vars).is_err()
                        || (ci(k)
                            && reference_parts(t).unwrap_or_default().iter().any(|p| {
                                matches!(p, Part::Var(n) if values.get(n).unwrap_or_default()
                                    .bytes().any(|b| b.is_ascii_uppercase()))
                            }))
                })
            });
            assert!(fails, "render failed ({e:?}) though every string renders");
        }
    }
});
