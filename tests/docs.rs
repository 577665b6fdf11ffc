//! The documentation's shape: every relative link reaches a file (and its `#anchor` a heading),
//! every table row has its header's cells, and code fences close. An edit that cuts a table in
//! half or leaves a link dangling fails here, not in front of a reader.

#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};

fn docs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    let mut more: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ should exist")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    more.sort();
    out.extend(more);
    out
}

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Lines outside code fences, with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

fn anchors(text: &str) -> Vec<String> {
    prose(text)
        .into_iter()
        .filter_map(|(_, l)| l.strip_prefix('#'))
        .map(|h| slug(h.trim_start_matches('#')))
        .collect()
}

/// `](target)` link targets on a line.
fn links(line: &str) -> Vec<&str> {
    line.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &line[i + 2..];
            rest.find(')').map(|end| &rest[..end])
        })
        .collect()
}

/// The cells of a table row: `|` outside code spans separates them.
fn cells(row: &str) -> usize {
    let mut code = false;
    let mut n = 0;
    for c in row.trim().trim_matches('|').chars() {
        match c {
            '`' => code = !code,
            '|' if !code => n += 1,
            _ => {}
        }
    }
    n + 1
}

#[test]
fn relative_links_reach_their_files_and_headings() {
    let mut problems = Vec::new();
    for doc in docs() {
        let text = std::fs::read_to_string(&doc).expect("a doc should be readable");
        let dir = doc.parent().expect("a doc is in a folder");
        for (n, line) in prose(&text) {
            for target in links(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let path = if file.is_empty() {
                    doc.clone()
                } else {
                    dir.join(file)
                };
                if !path.exists() {
                    problems.push(format!("{}:{n}: {target} does not exist", doc.display()));
                    continue;
                }
                if !anchor.is_empty() {
                    let target_text = std::fs::read_to_string(&path).unwrap_or_default();
                    if !anchors(&target_text).iter().any(|a| a == anchor) {
                        problems.push(format!("{}:{n}: no heading #{anchor}", doc.display()));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn tables_are_whole_and_code_fences_close() {
    let mut problems = Vec::new();
    for doc in docs() {
        let text = std::fs::read_to_string(&doc).expect("a doc should be readable");
        let fences = text
            .lines()
            .filter(|l| l.trim_start().starts_with("```"))
            .count();
        if fences % 2 != 0 {
            problems.push(format!("{}: a code fence is not closed", doc.display()));
        }
        let lines = prose(&text);
        let mut i = 0;
        while i < lines.len() {
            let (n, header) = lines[i];
            if !header.trim_start().starts_with('|') {
                i += 1;
                continue;
            }
            let width = cells(header);
            let separator = lines.get(i + 1).map(|(_, l)| *l).unwrap_or_default();
            if !separator.trim_start().starts_with("|-")
                && !separator.trim_start().starts_with("|:")
            {
                problems.push(format!(
                    "{}:{n}: a table row without a header separator under it",
                    doc.display()
                ));
            }
            i += 1;
            while let Some((n, row)) = lines
                .get(i)
                .filter(|(_, l)| l.trim_start().starts_with('|'))
            {
                if cells(row) != width {
                    problems.push(format!(
                        "{}:{n}: {} cells, the header has {width}",
                        doc.display(),
                        cells(row)
                    ));
                }
                i += 1;
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
