//! The direction of dependency in `src/`: every module belongs to a layer, and no module may
//! name a module of a higher layer (`use crate::x`, or a `crate::x::…` path). The table below is
//! the architecture; ARCHITECTURE.md explains it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module may use modules of its own layer or below.
const LAYERS: &[(&str, &[&str])] = &[
    ("leaf", &["time", "jose", "record", "keys", "template"]),
    ("config", &["config"]),
    ("journal", &["journal"]),
    ("identity and policy", &["token", "policy", "workload"]),
    ("providers", &["providers"]),
    ("broker", &["broker", "metrics"]),
    (
        "faces",
        &["server", "cli", "client", "audit", "proto", "gateway"],
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/broker/issue.rs` → `broker`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every `crate::name` a line refers to, with the line (comments and strings aside).
fn references(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups: every name inside the braces.
            if let Some(group) = after.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or_default();
                for part in inner.split(',') {
                    let n: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !n.is_empty() {
                        out.push((i + 1, n, line.trim().to_string()));
                    }
                }
            } else if !name.is_empty() {
                out.push((i + 1, name, line.trim().to_string()));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_module_uses_a_higher_layer_and_there_is_no_cycle() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(mine) = layer_of(&module) else {
            problems.push(format!(
                "{}: module `{module}` is in no layer of tests/architecture.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (line, target, code) in references(&text) {
            if target == module || target == "ProcessEnv" {
                continue;
            }
            let Some(theirs) = layer_of(&target) else {
                continue;
            };
            edges
                .entry(module.clone())
                .or_default()
                .insert(target.clone());
            if theirs > mine {
                problems.push(format!(
                    "{}:{line}: `{module}` ({}) uses `{target}` ({}): {code}",
                    file.strip_prefix(src.parent().unwrap_or(&src))
                        .unwrap_or(file)
                        .display(),
                    LAYERS[mine].0,
                    LAYERS[theirs].0
                ));
            }
        }
    }
    // Within a layer too: no module reaches itself again through others.
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((m, path)) = stack.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if next == start {
                    let cycle = format!("{} -> {start}", path.join(" -> "));
                    if !problems.contains(&cycle) {
                        problems.push(format!("import cycle: {cycle}"));
                    }
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    problems.dedup();
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
