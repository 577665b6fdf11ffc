//! A client library's own test suite (pytest, `node --test`) run as one child process: what it
//! printed (searched for secrets by the caller) and the JSON lines it reported (task ids, what
//! it was handed), for the caller to check against the daemon.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `cmd` with `report` as the file the suite appends its JSON lines to (the caller passes
/// its path in the suite's own variable). Returns (success, stdout + stderr, the report).
pub fn run(mut cmd: Command, report: &Path) -> (bool, String, Vec<Value>) {
    let out = cmd.output().expect("the client's test suite should run");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(report)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.success(), text, report)
}
