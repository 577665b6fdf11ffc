//! Reproductions of the defects an adversarial review, independent end-to-end runs and a new
//! operator found (issue 13), each refused or fixed now. Those that need a real OpenBao or moto
//! are beside their provider's tests (`vault.rs`, `aws.rs`); unit-level ones are beside the
//! code they test.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use credbroker::proto::v1;

use crate::support::daemon::{Daemon, base_config, testd};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::{begin_request, eventually, get_task, live_tasks, reason};

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on a systemd host; beside v1 controllers on
/// hybrid hosts such as this CI's).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .unwrap_or_else(|| panic!("this test needs a writable cgroup v2 hierarchy"))
}

/// Runs `credbroker task begin` from inside the cgroup `rel` (created under the v2 root).
fn begin_from_cgroup(d: &Daemon, root: &Path, rel: &str, token: &str) -> (bool, String) {
    let cg = root.join(rel);
    std::fs::create_dir_all(&cg).unwrap_or_else(|e| panic!("{}: {e}", cg.display()));
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" task begin --tool query --grant orders-db-read --format json",
        cg.display()
    );
    // The shell moves itself into the cgroup, then becomes the CLI ($0).
    let out = Command::new("sh")
        .args(["-c", &script])
        .arg(testd())
        .env("CREDBROKER_SOCKET", &d.broker_socket)
        .env("CREDBROKER_TOKEN", token)
        .output()
        .expect("the cli should run from inside the test cgroup");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Review finding 1: a process in `attacker.service` created a child cgroup named
/// `postgres-mcp.service` and was identified as that unit (the deepest unit-like name won).
/// Now the first unit after the slices decides, as systemd's own `cg_path_get_unit` does.
#[tokio::test(flavor = "multi_thread")]
async fn a_nested_cgroup_named_like_a_workloads_unit_is_not_that_unit() {
    let root = cgroup2_root();
    let base = format!("credbroker-test-{}.slice", std::process::id());
    let uid = nix::unistd::geteuid().as_raw();
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| {
        base_config(dir, &auth.issuer, "").replace(
            &format!("name = \"postgres-mcp\"\nuid = {uid}\n"),
            &format!(
                "name = \"postgres-mcp\"\nuid = {uid}\nsystemd_unit = \"postgres-mcp.service\"\n"
            ),
        )
    })
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;

    let (ok, out) = begin_from_cgroup(
        &d,
        &root,
        &format!("{base}/attacker.service/postgres-mcp.service"),
        &token,
    );
    assert!(
        !ok && out.contains("unknown_peer"),
        "the nested cgroup was accepted: {out}"
    );
    let (ok, out) = begin_from_cgroup(
        &d,
        &root,
        &format!("{base}/user@{uid}.service/app.slice/postgres-mcp.service"),
        &token,
    );
    assert!(
        !ok && out.contains("unknown_peer"),
        "a user unit passed for the system unit: {out}"
    );
    // The control: the real unit, in its slice, is served.
    let (ok, out) = begin_from_cgroup(&d, &root, &format!("{base}/postgres-mcp.service"), &token);
    assert!(ok, "the workload's own unit was refused: {out}");
    let task: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let id = task["task"]["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        get_task(&d, &id).await.peer.unwrap_or_default().unit,
        "postgres-mcp.service"
    );

    // The refusals are audited with the unit the process really runs in.
    let refused: Vec<String> = d
        .audit()
        .iter()
        .filter(|r| r["event"] == "peer_rejected")
        .filter_map(|r| r["peer"]["unit"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        refused,
        [
            "attacker.service".to_string(),
            format!("user@{uid}.service/postgres-mcp.service")
        ]
    );
    // Tidy up: move ourselves nowhere, remove the (now empty) test cgroups deepest first.
    let mut dirs: Vec<PathBuf> = walk(&root.join(&base));
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

/// Operator finding 11: a second `serve` on the same configuration opened the journal, ran
/// recovery and wrote `daemon_started`, then failed on the socket, and from then on the first
/// daemon failed every commit (`UNIQUE constraint failed: audit.seq`).
#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_one_config_refuses_before_touching_the_journal() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let records_before = d.audit().len();
    let journal_before = std::fs::read(&d.journal).unwrap_or_default();

    let second = Command::new(testd())
        .args(["serve", "--config"])
        .arg(&d.config)
        .stdin(Stdio::null())
        .output()
        .expect("the second serve on one config should exit");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "the second daemon started: {stderr}"
    );
    let pid = d.pid().unwrap_or_default();
    assert!(
        stderr.contains(&format!("another credbroker (pid {pid})")) && stderr.contains("refusing"),
        "{stderr}"
    );
    assert_eq!(
        d.audit().len(),
        records_before,
        "no record from the refused start"
    );
    assert_eq!(
        std::fs::read(&d.journal).unwrap_or_default(),
        journal_before
    );

    // The first daemon keeps serving and writing.
    let t = d
        .begin(&token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("the first daemon stopped serving: {e:?}"))
        .into_inner();
    let id = t.task.unwrap_or_default().id;
    let ended = d.end(&id).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(ended.into_inner().task.unwrap_or_default().state, "ended");
    let verify = d
        .cli()
        .args(["audit", "verify", "--journal"])
        .arg(&d.journal)
        .output()
        .expect("the cli audit verify should run");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// Operator finding 13: after a new `keygen` the daemon started, recorded `daemon_started`
/// and could open no revocation handle; a SIGHUP that changed or lost `key_file` reloaded
/// without a word.
#[tokio::test(flavor = "multi_thread")]
async fn a_journal_key_that_is_not_the_journals_is_refused_at_start_and_on_reload() {
    let auth = AuthServer::start();
    let mut d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let key_path = d.dir.path().join("journal.key");
    let right_key = std::fs::read(&key_path).unwrap_or_default();
    let new_key = Command::new(testd())
        .arg("keygen")
        .output()
        .expect("keygen should print a new journal key");

    // Reload with a lost key file, then with another key: both refused, the daemon serves on.
    std::fs::remove_file(&key_path).expect("the journal key file should be removed");
    d.signal(nix::sys::signal::Signal::SIGHUP);
    crate::support::write_secret(d.dir.path().join("other.key"), &new_key.stdout)
        .expect("the other journal key should be written");
    eventually(Duration::from_secs(5), "the lost key refused", || async {
        d.log_text().contains("reload failed") && d.log_text().contains("journal.key_file")
    })
    .await;
    let cfg = std::fs::read_to_string(&d.config).unwrap_or_default();
    d.rewrite_config(&cfg.replace("journal.key", "other.key"));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(5), "the other key refused", || async {
        d.log_text()
            .contains("is not the key this journal was written with")
    })
    .await;
    assert!(d.admin().await.status(v1::StatusRequest {}).await.is_ok());

    // Restart with the other key: refused, nothing recorded.
    let records = d.audit().len();
    d.kill9();
    let out = Command::new(testd())
        .args(["serve", "--config"])
        .arg(&d.config)
        .stdin(Stdio::null())
        .output()
        .expect("the restart with the other key should run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the journal key does not open this journal"),
        "{stderr}"
    );
    assert_eq!(
        d.audit().len(),
        records,
        "no daemon_started for a refused start"
    );

    // The right key again: it starts.
    crate::support::write_secret(&key_path, right_key)
        .expect("the right journal key should be restored");
    d.rewrite_config(&cfg);
    d.spawn().await;
}

/// A pipe whose reading end is already closed: a write to it fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let (read, write) = nix::unistd::pipe().expect("a pipe should be created to close");
    drop(read);
    write
}

/// Operator finding 14: `status | true`, `tasks list | head`, `keygen | true` exited 101 with
/// "failed printing to stdout: Broken pipe".
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_ends_commands_quietly() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["tasks", "list", "--all"],
        vec!["keygen"],
        vec![
            "token",
            "check",
            "--config",
            d.config.to_str().unwrap_or_default(),
            "--workload",
            "postgres-mcp",
        ],
    ];
    for args in commands {
        let out = d
            .cli()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(closed_pipe()))
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                if let Some(mut stdin) = c.stdin.take() {
                    use std::io::Write as _;
                    let _ = stdin.write_all(token.as_bytes());
                }
                c.wait_with_output()
            })
            .expect("the cli should run with a closed stdout");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
}

/// Operator finding 12: `task begin --format credential-process` on a non-AWS grant exited 1
/// after the task began, and the caller never learned the task id. The same for credentials
/// that cannot be written (a closed stdout): nobody received them, so the task is ended.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_that_cannot_be_delivered_are_ended_at_once() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let out = d
        .cli()
        .args([
            "task",
            "begin",
            "--tool",
            "query",
            "--grant",
            "orders-db-read",
        ])
        .args(["--format", "credential-process"])
        .env("CREDBROKER_TOKEN", &token)
        .output()
        .expect("task begin with credential-process should run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no AWS credential") && stderr.contains("was ended"),
        "{stderr}"
    );
    let out = d
        .cli()
        .args([
            "task",
            "begin",
            "--tool",
            "query",
            "--grant",
            "orders-db-read",
        ])
        .env("CREDBROKER_TOKEN", &token)
        .stdout(Stdio::from(closed_pipe()))
        .output()
        .expect("task begin into a closed stdout should run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was ended"), "{stderr}");
    assert!(live_tasks(&d).await.is_empty());
    assert!(
        d.outstanding().is_empty(),
        "an undelivered credential is still alive"
    );
    assert_eq!(d.revoked().len(), 2);
}

/// End-to-end finding 9: a BeginTask whose answer was lost left a live credential nobody could
/// end. The retry with the same idempotency key finds the first attempt's task and ends it.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_begin_ends_the_task_its_first_attempt_began() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let mut req = begin_request(&token, &["orders-db-read"]);
    req.idempotency_key = Some("0197a0c2-1b2c-7d3e-8f40-123456789abc".into());
    let first = d
        .broker()
        .await
        .begin_task(req.clone())
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let first_id = first.task.unwrap_or_default().id;
    // "The answer was lost": the same request again.
    let replay = d.broker().await.begin_task(req.clone()).await.err();
    let replay = replay.unwrap_or_else(|| panic!("a replay was issued again"));
    assert_eq!(replay.code(), tonic::Code::Aborted);
    assert_eq!(reason(&replay), "begin_replayed");
    use tonic_types::StatusExt as _;
    let meta = replay
        .get_details_error_info()
        .map(|i| i.metadata)
        .unwrap_or_default();
    assert_eq!(meta.get("task_id"), Some(&first_id));
    let t = get_task(&d, &first_id).await;
    assert_eq!(
        (t.state.as_str(), t.end_reason.as_str()),
        ("ended", "begin_replayed")
    );
    assert!(d.outstanding().is_empty());
    assert_eq!(d.revoked().len(), 1, "issued once, revoked once");

    // The same key for another request is refused and changes nothing.
    let mut other = req.clone();
    other.tool = "other".into();
    let err = d.broker().await.begin_task(other).await.err();
    assert_eq!(
        err.as_ref().map(reason).as_deref(),
        Some("idempotency_key_reused")
    );
    assert_eq!(err.map(|e| e.code()), Some(tonic::Code::FailedPrecondition));
    // A malformed key is bad input.
    let mut bad = req.clone();
    bad.idempotency_key = Some("not a key".into());
    let err = d.broker().await.begin_task(bad).await.err();
    assert_eq!(
        err.as_ref().map(reason).as_deref(),
        Some("invalid_idempotency_key")
    );
    assert!(live_tasks(&d).await.is_empty());
    assert_eq!(d.revoked().len(), 1);
    // The refused replays added no task.
    let opened = d
        .audit()
        .iter()
        .filter(|r| r["event"] == "task_opened")
        .count();
    assert_eq!(opened, 1);
}

type BeginCall =
    tokio::task::JoinHandle<Result<tonic::Response<v1::BeginTaskResponse>, tonic::Status>>;

/// `req` sent on a connection of its own, and held inside its provider call once its credential
/// exists (the test provider's `slow-answer-ms`).
async fn a_begin_held_mid_issue(d: &Daemon, req: &v1::BeginTaskRequest) -> BeginCall {
    std::fs::write(d.state.join("slow-answer-ms"), "1500").unwrap_or_default();
    let mut client = d.broker().await;
    let r = req.clone();
    let call = tokio::spawn(async move { client.begin_task(r).await });
    eventually(
        Duration::from_secs(5),
        "the first credential exists",
        || async { d.outstanding().len() == 1 },
    )
    .await;
    call
}

/// With intents in the intent log, no SQLite row says a key is taken until the task's rows are
/// committed. Two BeginTasks with one key at once: the second must wait for the first and
/// replay it, never issue a second credential under the same key.
#[tokio::test(flavor = "multi_thread")]
async fn two_begins_with_one_key_at_once_issue_once() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let mut req = begin_request(&token, &["orders-db-read"]);
    req.idempotency_key = Some("0197a0c2-1b2c-7d3e-8f40-000000000002".into());
    let first = a_begin_held_mid_issue(&d, &req).await;
    let second = d.broker().await.begin_task(req.clone()).await;
    let first = first
        .await
        .expect("the first BeginTask should not panic")
        .unwrap_or_else(|e| panic!("the first BeginTask failed: {e:?}"))
        .into_inner();
    let first_id = first.task.unwrap_or_default().id;
    let second = second.expect_err("the second must not issue again");
    assert_eq!(reason(&second), "begin_replayed", "{second:?}");
    let t = get_task(&d, &first_id).await;
    assert_eq!(
        (t.state.as_str(), t.end_reason.as_str()),
        ("ended", "begin_replayed")
    );
    let issued = d
        .audit()
        .iter()
        .filter(|r| r["event"] == "lease_issued")
        .count();
    assert_eq!(issued, 1, "one credential under one key");
    assert!(d.outstanding().is_empty());
    assert_eq!(d.revoked().len(), 1);
}

/// Review finding (intent log): tonic drops a BeginTask's future when its client goes away.
/// Dropped between the intent and the answering commit, the key's claim was released while the
/// task existed only in the intent log: a retry with the same key issued a second credential,
/// and the next start failed on the key's second row. The BeginTask must run to its end: the
/// retry replays the first attempt, and the daemon restarts cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn a_begin_whose_client_goes_away_keeps_its_key_and_its_record() {
    let auth = AuthServer::start();
    let mut d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let mut req = begin_request(&token, &["orders-db-read"]);
    req.idempotency_key = Some("0197a0c2-1b2c-7d3e-8f40-000000000003".into());
    let first = a_begin_held_mid_issue(&d, &req).await;
    // The client goes away while its credential is being issued: its connection closes.
    first.abort();
    assert!(first.await.is_err_and(|e| e.is_cancelled()));
    let retry = d
        .broker()
        .await
        .begin_task(req.clone())
        .await
        .expect_err("a retry with the key must not issue again");
    assert_eq!(reason(&retry), "begin_replayed", "{retry:?}");
    let issued = d
        .audit()
        .iter()
        .filter(|r| r["event"] == "lease_issued")
        .count();
    assert_eq!(issued, 1, "one credential under one key");
    eventually(
        Duration::from_secs(5),
        "the first credential revoked",
        || async { d.outstanding().is_empty() },
    )
    .await;
    // Nothing left for the next start to trip on.
    d.kill9();
    d.spawn().await;
    assert!(live_tasks(&d).await.is_empty());
    assert!(d.outstanding().is_empty());
    assert_eq!(d.revoked().len(), 1);
}

/// The same for EndTask: a client that goes away while its task's credentials are being
/// revoked left the task `ending` in memory only, its credential alive until the task's expiry.
#[tokio::test(flavor = "multi_thread")]
async fn an_end_whose_client_goes_away_still_ends_the_task() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d
        .begin(&token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let id = begun.task.unwrap_or_default().id;
    std::fs::write(d.state.join("slow-revoke-ms"), "1000").unwrap_or_default();
    let mut c1 = d.broker().await;
    let task_id = id.clone();
    let end = tokio::spawn(async move { c1.end_task(v1::EndTaskRequest { task_id }).await });
    eventually(
        Duration::from_secs(5),
        "the EndTask is revoking",
        || async { d.state.join("slow-revoke-ms.waiting").exists() },
    )
    .await;
    end.abort();
    assert!(end.await.is_err_and(|e| e.is_cancelled()));
    eventually(
        Duration::from_secs(5),
        "the task ended all the same",
        || async { get_task(&d, &id).await.state == "ended" },
    )
    .await;
    assert!(d.outstanding().is_empty());
    assert_eq!(d.revoked().len(), 1);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Review finding 5: with 400 idle connections (no token, no registered workload needed) the
/// daemon ran out of descriptors, its accept loop spun, and EndTask and `status` hung until the
/// flood ended. Here: 1,000 idle connections from another uid, a descriptor limit of 256.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_leaves_end_task_and_status_answering() {
    let auth = AuthServer::start();
    let wrapper = ["sh", "-c", "ulimit -n 256 && exec \"$@\"", "sh"]
        .map(str::to_owned)
        .to_vec();
    let d = Daemon::start_wrapped(
        |dir| {
            base_config(dir, &auth.issuer, "").replace(
                "[server]\n",
                // The default idle timeout (30 s) outlasts the test: the connections stay held.
                "[server]\nbroker_socket_group = \"65534\"\n",
            )
        },
        "info",
        Vec::new(),
        wrapper,
    )
    .await;
    std::fs::set_permissions(
        d.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("the daemon dir should be opened to the flooding uid");
    let pid = d.pid().unwrap_or_default();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 256 ")),
        "{limits}"
    );
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d
        .begin(&token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let id = begun.task.unwrap_or_default().id;

    // The system's Python: a user's (pyenv under /root) is not readable by nobody.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3");
    let mut flood = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", python])
        .arg(crate::support::repo().join("tests/support/flood/hold.py"))
        .arg(&d.broker_socket)
        .arg("1000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the flood helper should start as nobody");
    let mut line = String::new();
    {
        use std::io::BufRead as _;
        let stdout = flood.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the flood helper should report its connections");
    }
    assert!(line.starts_with("connected "), "{line}");
    // The daemon holds one uid's share, not the flood, and stays under its limit.
    let fds = open_fds(pid);
    assert!(
        fds < 200,
        "the daemon holds {fds} descriptors during the flood"
    );

    let timed = |args: &[&str]| {
        let started = std::time::Instant::now();
        let out = d
            .cli()
            .args(args)
            .output()
            .expect("the cli should run during the flood");
        (started.elapsed(), out)
    };
    let (took, out) = timed(&["task", "end", "--task", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(1),
        "EndTask took {took:?} during the flood"
    );
    let end_took = took;
    let (took, out) = timed(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(1),
        "status took {took:?} during the flood"
    );
    eprintln!(
        "flood: {} ; daemon fds {fds}; EndTask {end_took:?}, status {took:?}",
        line.trim()
    );
    assert!(d.outstanding().is_empty());
    assert!(
        d.log_text().contains("too many connections from one uid"),
        "the refusals are logged"
    );
    drop(flood.stdin.take());
    let _ = flood.wait();
}

/// A connection that never sends a request is closed after `connection_idle_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed() {
    use tokio::io::AsyncReadExt as _;
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| {
        base_config(dir, &auth.issuer, "")
            .replace("[server]\n", "[server]\nconnection_idle_timeout = \"1s\"\n")
    })
    .await;
    let mut s = tokio::net::UnixStream::connect(&d.broker_socket)
        .await
        .expect("the broker socket should accept an idle connection");
    let started = std::time::Instant::now();
    // The daemon's own SETTINGS arrive first; then, with no request from us, the end.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(closed.is_ok(), "the idle connection stayed open");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // A connection in use is not: the CLI's own request is served.
    assert!(d.admin().await.status(v1::StatusRequest {}).await.is_ok());
}

/// Suspected: every refused request wrote an audit record, without bound: a cheap way to fill
/// the disk. A peer's refusals beyond its budget are counted in one record per window instead,
/// and none goes unaccounted.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_beyond_a_peers_audit_budget_are_counted_not_written() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| {
        base_config(dir, &auth.issuer, "").replace(
            "[broker]\n",
            "[broker]\nrefusal_audit_limit = 5\nrefusal_audit_window = \"1s\"\n",
        )
    })
    .await;
    let mut c = d.broker().await;
    let sent = 300;
    for _ in 0..sent {
        let err = c
            .begin_task(begin_request("not.a.token", &["orders-db-read"]))
            .await
            .err();
        assert_eq!(err.as_ref().map(reason).as_deref(), Some("malformed"));
    }
    // The last window closes and its summary is written.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let audit = d.audit();
    let written = audit
        .iter()
        .filter(|r| r["event"] == "token_rejected")
        .count();
    let summaries: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|r| r["event"] == "refusals_suppressed")
        .collect();
    let suppressed: u64 = summaries
        .iter()
        .filter_map(|r| r["detail"]["count"].as_u64())
        .sum();
    assert!(
        written < 60,
        "{written} refusal records for {sent} refusals"
    );
    assert_eq!(
        written as u64 + suppressed,
        sent,
        "every refusal accounted for"
    );
    assert!(
        summaries
            .iter()
            .all(|r| r["detail"]["reasons"]["malformed"].as_u64() == r["detail"]["count"].as_u64())
    );
    assert!(summaries.iter().all(|r| r["peer"]["uid"].is_number()));
}

/// Suspected: EndTask carries no proof, so any connection could end another caller's task.
/// Settled: a task can only be ended by the workload that began it (`task_not_owned`, nothing
/// changes). Within one workload there is nothing to prove: processes that match the same
/// selectors run as the same uid (and unit or executable), so each can read the other's memory
/// (ptrace, /proc/PID/mem), including any proof a task could carry.
#[tokio::test(flavor = "multi_thread")]
async fn another_workload_cannot_end_a_task() {
    let auth = AuthServer::start();
    let other = "\n[[workload]]\nname = \"other-mcp\"\nuid = 65534\naudience = \"https://mcp.example.test/s3\"\ngrants = [\"s3-read\"]\n";
    let d = Daemon::start(|dir| {
        base_config(dir, &auth.issuer, other)
            .replace("[server]\n", "[server]\nbroker_socket_group = \"65534\"\n")
    })
    .await;
    std::fs::set_permissions(
        d.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("the daemon dir should be opened to the other workload");
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let t = d
        .begin(&token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .task
        .unwrap_or_default();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(testd())
        .args(["task", "end", "--task", &t.id])
        .env("CREDBROKER_SOCKET", &d.broker_socket)
        .output()
        .expect("task end as the other workload should run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("task_not_owned"), "{stderr}");
    assert_eq!(get_task(&d, &t.id).await.state, "active");
    assert_eq!(d.outstanding().len(), 1);
}

/// A journal that fails between the credential and its record (a disk error, here a trigger
/// that refuses every new task row): the caller hears UNAVAILABLE and no credential; the one
/// issued is revoked from memory at once; a retry with the same idempotency key issues nothing
/// while the journal cannot say what the key began. Once the journal takes commits again, the
/// kept intent is committed without a restart: the task is recorded and ended, and the key
/// replays it. A restart afterwards finds nothing to do twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_journal_failure_mid_begin_issues_nothing_twice_and_heals() {
    let auth = AuthServer::start();
    let mut d = Daemon::start(|dir| base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let mut req = begin_request(&token, &["orders-db-read"]);
    req.idempotency_key = Some("0197a0c2-1b2c-7d3e-8f40-000000000005".into());
    let fail = |on: bool| {
        let c = rusqlite::Connection::open(&d.journal).expect("the journal should open");
        c.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        let sql = if on {
            "CREATE TRIGGER fail_tasks BEFORE INSERT ON tasks
             BEGIN SELECT RAISE(ABORT, 'injected journal failure'); END;"
        } else {
            "DROP TRIGGER fail_tasks;"
        };
        c.execute_batch(sql).expect("the trigger should change");
    };
    fail(true);
    let first = d
        .broker()
        .await
        .begin_task(req.clone())
        .await
        .expect_err("nothing may be handed out that is not recorded");
    assert_eq!(first.code(), tonic::Code::Unavailable, "{first:?}");
    assert_eq!(reason(&first), "journal_unavailable");
    eventually(
        Duration::from_secs(5),
        "the unrecorded credential revoked",
        || async { d.outstanding().is_empty() },
    )
    .await;
    assert_eq!(d.revoked().len(), 1);

    // The key's row is not in SQLite: a retry must not issue under it again.
    let retry = d
        .broker()
        .await
        .begin_task(req.clone())
        .await
        .expect_err("a retry while the key's task is unrecorded must not issue");
    assert_eq!(retry.code(), tonic::Code::Unavailable, "{retry:?}");
    assert_eq!(reason(&retry), "idempotency_key_lost");
    let opened = |d: &Daemon| {
        d.audit()
            .iter()
            .filter(|r| r["event"] == "task_opened")
            .count()
    };
    assert_eq!(opened(&d), 0, "nothing reached the journal");

    // The journal is back: the kept intent is committed and its task ended, no restart.
    fail(false);
    eventually(
        Duration::from_secs(15),
        "the kept intent's task recorded and ended",
        || async { opened(&d) == 1 && live_tasks(&d).await.is_empty() },
    )
    .await;
    let replay = d
        .broker()
        .await
        .begin_task(req.clone())
        .await
        .expect_err("the key began a task already");
    assert_eq!(reason(&replay), "begin_replayed", "{replay:?}");
    assert_eq!(d.revoked().len(), 1, "issued once in all");
    assert!(d.outstanding().is_empty());

    // Nothing is done twice at the next start.
    d.kill9();
    d.spawn().await;
    assert!(live_tasks(&d).await.is_empty());
    let again = d.broker().await.begin_task(req.clone()).await.err();
    assert_eq!(
        again.as_ref().map(reason).as_deref(),
        Some("begin_replayed")
    );
    assert_eq!(opened(&d), 1);
    assert!(d.outstanding().is_empty());
    assert_eq!(d.revoked().len(), 1);
}
