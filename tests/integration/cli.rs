//! The CLI speaks one language: `--output` on every command that prints data, filter values
//! checked (exit 2 naming the valid ones), fingerprints accepted as printed (`sha256:…`), a hint
//! when no daemon answers, and a reason code when a request is too large.

use std::io::Write as _;
use std::process::{Output, Stdio};

use serde_json::Value;

use crate::support::daemon::{Daemon, base_config};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::reason;

fn run(d: &Daemon, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = d.cli();
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("the CLI should spawn");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .expect("the CLI should take its stdin");
    }
    child
        .wait_with_output()
        .expect("the CLI's output should be collected")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// `json` prints one JSON document (or JSON Lines); `table` prints something that is not JSON.
fn assert_shape(what: &str, o: &Output, json: bool) {
    assert!(o.status.success(), "{what}: {}", text(o));
    let out = String::from_utf8_lossy(&o.stdout);
    let parses = serde_json::from_str::<Value>(&out).is_ok()
        || (!out.trim().is_empty()
            && out
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok()));
    assert_eq!(parses, json, "{what}: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_data_command_takes_one_output_flag() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let journal = d.dir.path().join("journal.db");
    let journal = journal.to_str().unwrap_or_default();
    let begin_with = |flag: &str, output: &str| {
        let args = [
            "task",
            "begin",
            "--tool",
            "query",
            "--grant",
            "orders-db-read",
        ];
        run(&d, &[&args[..], &[flag, output]].concat(), Some(&token))
    };
    let begin = |output: &str| begin_with("--output", output);

    let begun = begin("json");
    assert_shape("task begin --output json", &begun, true);
    let task: Value = serde_json::from_slice(&begun.stdout).expect("task begin should print JSON");
    let id = task["task"]["id"].as_str().unwrap_or_default().to_string();
    let env = begin("env");
    assert!(
        env.status.success()
            && String::from_utf8_lossy(&env.stdout).contains("CREDBROKER_TASK_ID="),
        "task begin --output env: {}",
        text(&env)
    );
    // The old spelling still works, for scripts written before.
    let old = begin_with("--format", "json");
    assert_shape("task begin --format json", &old, true);

    for (args, json) in [
        (
            vec!["task", "renew", "--task", &id, "--output", "json"],
            true,
        ),
        (
            vec!["task", "renew", "--task", &id, "--output", "table"],
            false,
        ),
        (vec!["tasks", "list", "--output", "json"], true),
        (vec!["tasks", "list", "--output", "table"], false),
        (vec!["tasks", "show", &id, "--output", "json"], true),
        (vec!["tasks", "show", &id, "--output", "table"], false),
        (vec!["status", "--output", "json"], true),
        (vec!["status", "--output", "table"], false),
    ] {
        let stdin = args.contains(&"renew").then_some(token.as_str());
        assert_shape(&args.join(" "), &run(&d, &args, stdin), json);
    }
    let end_json = run(
        &d,
        &["task", "end", "--task", &id, "--output", "json"],
        None,
    );
    assert_shape("task end --output json", &end_json, true);
    let other: Value = serde_json::from_slice(&old.stdout).unwrap_or_default();
    let other = other["task"]["id"].as_str().unwrap_or_default().to_string();
    let end_table = run(
        &d,
        &["task", "end", "--task", &other, "--output", "table"],
        None,
    );
    assert_shape("task end --output table", &end_table, false);

    for (args, json) in [
        (
            vec![
                "audit",
                "query",
                "--journal",
                journal,
                "--group-by",
                "event",
                "--output",
                "json",
            ],
            true,
        ),
        (
            vec![
                "audit",
                "query",
                "--journal",
                journal,
                "--group-by",
                "event",
                "--output",
                "table",
            ],
            false,
        ),
        (
            vec!["audit", "verify", "--journal", journal, "--output", "json"],
            true,
        ),
        (
            vec!["audit", "verify", "--journal", journal, "--output", "table"],
            false,
        ),
        (
            vec!["audit", "export", "--journal", journal, "--output", "jsonl"],
            true,
        ),
        (
            vec!["audit", "export", "--journal", journal, "--output", "csv"],
            false,
        ),
        (
            vec!["lineage", "--journal", journal, "--output", "json"],
            true,
        ),
        (
            vec!["lineage", "--journal", journal, "--output", "table"],
            false,
        ),
    ] {
        assert_shape(&args.join(" "), &run(&d, &args, None), json);
    }
    // `audit verify` prints a report: CSV is not one of its shapes.
    let csv = run(
        &d,
        &["audit", "verify", "--journal", journal, "--output", "csv"],
        None,
    );
    assert_eq!(csv.status.code(), Some(2), "{}", text(&csv));

    let issuer = auth.issuer.clone();
    for (output, json) in [("json", true), ("table", false)] {
        let checked = run(
            &d,
            &[
                "token",
                "check",
                "--issuer",
                &issuer,
                "--audience",
                POSTGRES,
                "--output",
                output,
            ],
            Some(&token),
        );
        assert_shape(&format!("token check --output {output}"), &checked, json);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_fingerprints_missing_daemons_and_oversized_tokens_get_clear_answers() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d.begin(&token, &["orders-db-read"]).await;
    assert!(begun.is_ok(), "{begun:?}");
    let journal = d.dir.path().join("journal.db");
    let journal = journal.to_str().unwrap_or_default();

    // Unknown filter values: exit 2, naming the valid ones.
    for (flag, value, names) in [
        ("--event", "lease_isued", "lease_issued"),
        ("--outcome", "ok", "success"),
        ("--reason", "token_expird", "token_expired"),
    ] {
        let o = run(
            &d,
            &["audit", "query", "--journal", journal, flag, value],
            None,
        );
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", text(&o));
        assert!(text(&o).contains(names), "{flag} {value}: {}", text(&o));
    }

    // A fingerprint as `token check` prints it, with or without `sha256:`.
    let checked = run(
        &d,
        &[
            "token",
            "check",
            "--issuer",
            &auth.issuer,
            "--audience",
            POSTGRES,
        ],
        Some(&token),
    );
    let v: Value = serde_json::from_slice(&checked.stdout).unwrap_or_default();
    let fp = v["fingerprint"].as_str().unwrap_or_default().to_string();
    let bare = fp.strip_prefix("sha256:").unwrap_or(&fp).to_string();
    assert_eq!(bare.len(), 64, "{v}");
    let count = |fingerprint: &str| {
        let o = run(
            &d,
            &[
                "audit",
                "query",
                "--journal",
                journal,
                "--token",
                fingerprint,
                "--output",
                "json",
            ],
            None,
        );
        assert!(o.status.success(), "--token {fingerprint}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let with_prefix = count(&format!("sha256:{bare}"));
    assert_eq!(with_prefix, count(&bare));
    assert_eq!(
        with_prefix,
        count(&format!("sha256:{}", bare.to_uppercase()))
    );
    assert!(with_prefix.contains("\"count\""), "{with_prefix}");
    assert!(
        !with_prefix.contains("\"count\": 0"),
        "the token's records are found: {with_prefix}"
    );
    let bad = run(
        &d,
        &[
            "audit",
            "query",
            "--journal",
            journal,
            "--token",
            "sha256:xyz",
        ],
        None,
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

    // No daemon at the socket: say so, and where it was expected.
    let missing = d.dir.path().join("nobody-here.sock");
    let missing = missing.to_str().unwrap_or_default();
    let o = run(
        &d,
        &[
            "task", "begin", "--socket", missing, "--tool", "q", "--grant", "g",
        ],
        Some(&token),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("is the daemon running?") && said.contains(missing),
        "{said}"
    );
    assert!(
        !said.contains("os error 2): No such file"),
        "no raw transport error: {said}"
    );

    // A 10 MB token: refused with a reason code, by the daemon (not only the CLI).
    let huge = "a".repeat(10 * 1024 * 1024);
    let mut request = crate::support::begin_request(&huge, &["orders-db-read"]);
    request.tool = "query".into();
    let status = d
        .broker()
        .await
        .begin_task(request)
        .await
        .expect_err("a 10 MB request should be refused");
    assert_eq!(reason(&status), "request_too_large", "{status:?}");
    let o = run(
        &d,
        &[
            "task",
            "begin",
            "--tool",
            "query",
            "--grant",
            "orders-db-read",
        ],
        Some(&huge),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("request_too_large"), "{}", text(&o));
    // Empty stdin is "no token", not a JWS parse error.
    let empty = run(
        &d,
        &[
            "token",
            "check",
            "--issuer",
            &auth.issuer,
            "--audience",
            POSTGRES,
        ],
        Some(""),
    );
    assert!(text(&empty).contains("no token"), "{}", text(&empty));
}

/// `keygen --dir` makes what a fresh install needs, private, and never replaces a key: a
/// replaced journal key would orphan every revocation handle sealed under the old one. A host
/// missing only one key (a journal key but no audit head key) gets that one, the other kept.
#[test]
fn keygen_writes_the_install_keys_once_and_privately() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("a temp dir for the keys should be created");
    let keygen = || {
        std::process::Command::new(crate::support::daemon::testd())
            .args(["keygen", "--dir"])
            .arg(dir.path())
            .output()
            .expect("keygen --dir should run")
    };
    let read_key = |name: &str| {
        let path = dir.path().join(name);
        let meta = std::fs::metadata(&path).expect("keygen should have written the key");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        let key = std::fs::read_to_string(&path).expect("the key should be readable");
        assert!(
            credbroker::keys::key_bytes(key.as_bytes()).is_some(),
            "{name}: {key:?}"
        );
        key
    };
    let only_the_keys = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("the key dir should be listable")
            .map(|e| {
                e.expect("a key dir entry should be readable")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["audit-head-key", "journal-key"],
            "no temporary file left"
        );
    };
    let first = keygen();
    assert!(first.status.success(), "{}", text(&first));
    let keys = [read_key("journal-key"), read_key("audit-head-key")];
    assert_ne!(keys[0], keys[1], "two keys, not one written twice");
    only_the_keys();

    // Both there: both kept, nothing written, not an error.
    let again = keygen();
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let said = String::from_utf8_lossy(&again.stderr);
    assert_eq!(said.matches("exists: kept").count(), 2, "{said}");
    assert!(again.stdout.is_empty(), "{}", text(&again));
    assert_eq!(
        read_key("journal-key"),
        keys[0],
        "the existing key is untouched"
    );
    assert_eq!(
        read_key("audit-head-key"),
        keys[1],
        "the existing key is untouched"
    );

    // Only the audit head key missing: it is written, the journal key kept.
    std::fs::remove_file(dir.path().join("audit-head-key"))
        .expect("the audit head key should be removable");
    let third = keygen();
    assert_eq!(third.status.code(), Some(0), "{}", text(&third));
    let said = String::from_utf8_lossy(&third.stderr);
    assert!(
        said.contains(&format!(
            "{} exists: kept",
            dir.path().join("journal-key").display()
        )),
        "{said}"
    );
    let out = String::from_utf8_lossy(&third.stdout);
    assert!(
        out.contains(&format!(
            "wrote {} (0600)",
            dir.path().join("audit-head-key").display()
        )),
        "{out}"
    );
    assert!(!out.contains("journal-key"), "{out}");
    assert_eq!(
        read_key("journal-key"),
        keys[0],
        "the existing key is untouched"
    );
    let audit = read_key("audit-head-key");
    assert_ne!(audit, keys[1], "a fresh audit head key");
    assert_ne!(audit, keys[0], "not the journal key again");
    for key in keys.iter().chain([&audit]) {
        assert!(
            !text(&third).contains(key.trim()),
            "no key material printed: {}",
            text(&third)
        );
    }
    only_the_keys();
}
