//! `credbroker exec` with a real OpenBao database credential: the command gets a PostgreSQL user
//! that works while it runs and is gone once it exits — when it returns, when `exec` is told to
//! stop, when the command is killed — and bad input runs nothing and leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::eventually;
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::postgres::Postgres;
use crate::support::{get_task, live_tasks};
use crate::vault::{backends, token_file, vault_config};

const COUNT: &str = "SELECT count(*) FROM orders";

/// Writes what the command was given to $OUT (the test's own private directory), then waits
/// for $GO and exits 3.
const SCRIPT: &str = r#"
printf '%s\n%s\n%s\n%s\n%s\n' "$$" "$CREDBROKER_TASK_ID" "$USERNAME" "$PASSWORD" \
    "${CREDBROKER_TOKEN:-no token}" > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
while [ ! -e "$GO" ]; do sleep 0.05; done
exit 3
"#;

struct Run {
    child: Child,
    out: PathBuf,
    go: PathBuf,
    stderr: PathBuf,
}

/// What the command saw: its pid, the task id, the database user and password, the token.
struct Seen {
    pid: i32,
    task: String,
    user: String,
    password: String,
    token: String,
}

fn exec(d: &Daemon, token: &str, dir: &Path, name: &str, grants: &[&str], cmd: &[&str]) -> Run {
    let ttl = if name == "renewed" { "3s" } else { "2m" };
    let (out, go, stderr) = (
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.go")),
        dir.join(format!("{name}.stderr")),
    );
    let mut c = d.cli();
    c.arg("exec").args(["--tool", "report", "--ttl", ttl]);
    for g in grants {
        c.args(["--grant", g]);
    }
    let child = c
        .arg("--")
        .args(cmd)
        .env("CREDBROKER_TOKEN", token)
        .env("OUT", &out)
        .env("GO", &go)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("credbroker exec should start");
    Run {
        child,
        out,
        go,
        stderr,
    }
}

impl Run {
    async fn seen(&self) -> Seen {
        let out = self.out.clone();
        eventually(Duration::from_secs(15), "the command to start", || {
            let out = out.clone();
            async move { out.exists() }
        })
        .await;
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let l: Vec<&str> = text.lines().collect();
        assert_eq!(l.len(), 5, "{text}");
        Seen {
            pid: l[0].parse().expect("a pid"),
            task: l[1].into(),
            user: l[2].into(),
            password: l[3].into(),
            token: l[4].into(),
        }
    }

    fn wait(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().expect("exec should exit");
        (
            status.code(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        )
    }
}

/// While the command runs its user logs in and its task is live, owned by the token's human.
async fn works_while_running(d: &Daemon, pg: &Postgres, seen: &Seen) {
    assert_eq!(
        seen.token, "no token",
        "the caller's token reached the command"
    );
    assert!(seen.user.starts_with("v-"), "user {:?}", seen.user);
    assert_eq!(
        pg.query_as(&seen.user, &seen.password, COUNT).as_deref(),
        Ok("3")
    );
    let t = get_task(d, &seen.task).await;
    assert_eq!((t.state.as_str(), t.tool.as_str()), ("active", "report"));
    assert_eq!(
        t.principal.map(|p| p.owner).as_deref(),
        Some("alice@example.com")
    );
}

/// After the command is gone: the task ended, the user cannot log in, OpenBao holds no lease.
async fn gone_after(
    d: &Daemon,
    pg: &Postgres,
    bao: &crate::support::openbao::OpenBao,
    seen: &Seen,
) {
    assert_eq!(get_task(d, &seen.task).await.state, "ended");
    let login = pg.query_as(&seen.user, &seen.password, COUNT);
    assert!(login.is_err(), "{} still logs in: {login:?}", seen.user);
    assert!(!pg.dynamic_roles().contains(&seen.user));
    assert!(bao.leases().await.is_empty(), "{:?}", bao.leases().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_commands_credential_works_while_it_runs_and_dies_when_it_exits_or_is_killed() {
    let auth = AuthServer::start();
    let (pg, bao, secrets) = backends().await;
    let d = Daemon::start(|dir| vault_config(dir, &auth.issuer, &bao, &token_file(&secrets))).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let sh = ["sh", "-c", SCRIPT];

    // It returns: its exit status is exec's.
    let run = exec(&d, &token, dir.path(), "returns", &["orders-db"], &sh);
    let seen = run.seen().await;
    works_while_running(&d, &pg, &seen).await;
    std::fs::write(&run.go, "").expect("go");
    let (code, stderr) = run.wait();
    assert_eq!(code, Some(3), "{stderr}");
    gone_after(&d, &pg, &bao, &seen).await;

    // The command is killed (SIGKILL, by someone else): exec reports it as a shell would.
    let run = exec(&d, &token, dir.path(), "killed", &["orders-db"], &sh);
    let seen = run.seen().await;
    works_while_running(&d, &pg, &seen).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(seen.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the command");
    let (code, stderr) = run.wait();
    assert_eq!(code, Some(128 + 9), "{stderr}");
    gone_after(&d, &pg, &bao, &seen).await;

    // exec itself is told to stop (systemd, a supervisor): SIGTERM is passed on to the command.
    let run = exec(&d, &token, dir.path(), "stopped", &["orders-db"], &sh);
    let seen = run.seen().await;
    works_while_running(&d, &pg, &seen).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal exec");
    let (code, stderr) = run.wait();
    assert_eq!(code, Some(128 + 15), "{stderr}");
    gone_after(&d, &pg, &bao, &seen).await;
    assert!(!d.log_text().contains(&seen.password));

    // A short TTL is renewed while the command runs: at 4 s the 3 s task still lives.
    let mut run = exec(&d, &token, dir.path(), "renewed", &["orders-db"], &sh);
    let seen = run.seen().await;
    let first = get_task(&d, &seen.task).await.expires_at;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(run.child.try_wait().ok().flatten().is_none(), "exec exited");
    works_while_running(&d, &pg, &seen).await;
    let later = get_task(&d, &seen.task).await.expires_at;
    assert!(
        later.map(|t| t.seconds) > first.map(|t| t.seconds),
        "{first:?} → {later:?}"
    );
    // Renewed by --ttl, not to the policy's default: a SIGKILLed exec still leaves ≤ 3 s.
    let left = later.map_or(i64::MAX, |t| t.seconds) - crate::support::now();
    assert!(left <= 4, "renewed {left}s ahead: past --ttl 3s");
    let renewals = d
        .audit()
        .iter()
        .filter(|r| r["event"] == "task_renewed" && r["task_id"] == seen.task.as_str())
        .count();
    assert!(renewals >= 1, "no renewal audited");
    std::fs::write(&run.go, "").expect("go");
    assert_eq!(run.wait().0, Some(3));
    gone_after(&d, &pg, &bao, &seen).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_runs_nothing_and_leaves_no_task_or_lease() {
    let auth = AuthServer::start();
    let (_pg, bao, secrets) = backends().await;
    let d = Daemon::start(|dir| vault_config(dir, &auth.issuer, &bao, &token_file(&secrets))).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let weak = auth
        .token("agent-noscope", POSTGRES, "mcp.tool:s3.read")
        .await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let ran = dir.path().join("ran");
    let touch = ["sh", "-c", "touch \"$OUT\""];

    // Refused by the daemon: the reason code is on stderr and the command never runs.
    for (name, token, grant, reason) in [
        ("unknown", token.as_str(), "no-such-grant", "unknown_grant"),
        ("weak", weak.as_str(), "orders-db", "insufficient_scope"),
        ("forged", "not.a.token", "orders-db", "malformed"),
    ] {
        let mut run = exec(&d, token, dir.path(), name, &[grant], &touch);
        run.out = ran.clone();
        let out = run.out.clone();
        let (code, stderr) = run.wait();
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(stderr.contains(reason), "{name}: {stderr}");
        assert!(
            !stderr.contains(token) || token == "not.a.token",
            "{stderr}"
        );
        assert!(!out.exists() && !dir.path().join(format!("{name}.out")).exists());
    }
    // A command that cannot be run: the task it was begun for is ended at once.
    let run = exec(
        &d,
        &token,
        dir.path(),
        "missing",
        &["orders-db"],
        &["/nonexistent/cmd"],
    );
    let (code, stderr) = run.wait();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot run") && stderr.contains("ended ("),
        "{stderr}"
    );
    // No command, or a bad --ttl / --narrow: refused before anything is asked of the daemon.
    for args in [
        vec!["exec", "--grant", "orders-db"],
        vec![
            "exec",
            "--grant",
            "orders-db",
            "--ttl",
            "soon",
            "--",
            "true",
        ],
        vec![
            "exec",
            "--grant",
            "orders-db",
            "--narrow",
            "nonsense",
            "--",
            "true",
        ],
    ] {
        let out = d
            .cli()
            .args(&args)
            .env("CREDBROKER_TOKEN", &token)
            .output()
            .expect("exec should run");
        assert_eq!(
            out.status.code(),
            Some(if args.len() == 3 { 2 } else { 1 }),
            "{args:?}"
        );
    }
    assert!(live_tasks(&d).await.is_empty());
    assert!(bao.leases().await.is_empty());
    let begun = d
        .audit()
        .iter()
        .filter(|r| r["event"] == "task_begun")
        .count();
    assert_eq!(begun, 1, "only the missing command's task was begun");
}

/// exec as an unprivileged user (nobody), as a workload runs it: the command it runs, as the
/// same user, cannot read the caller's token out of exec (`/proc/$PPID/environ`), because
/// exec is not dumpable. On the old code the command printed the token from there.
#[tokio::test(flavor = "multi_thread")]
async fn the_command_cannot_read_the_callers_token_out_of_exec() {
    let auth = AuthServer::start();
    let nobody = r#"
[[workload]]
name = "nobody-job"
uid = 65534
audience = "https://mcp.example.test/s3"
grants = ["s3-read"]
"#;
    // nobody's group may use the broker socket, and reach it.
    let d = Daemon::start(|dir| {
        crate::support::daemon::base_config(dir, &auth.issuer, nobody)
            .replace("[server]\n", "[server]\nbroker_socket_group = \"65534\"\n")
    })
    .await;
    std::fs::set_permissions(
        d.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("the daemon dir should be opened to nobody");
    let token = auth
        .token("agent-1", crate::support::oidc::S3, "mcp.tool:s3.read")
        .await;
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("the dir should be writable by nobody");
    let out = dir.path().join("seen");
    let status = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(crate::support::daemon::testd())
        .args(["exec", "--grant", "s3-read", "--"])
        .args([
            "sh",
            "-c",
            r#"cat "/proc/$PPID/environ" > "$OUT" 2>&1; echo "exit $?" >> "$OUT""#,
        ])
        .env("CREDBROKER_SOCKET", &d.broker_socket)
        .env("CREDBROKER_TOKEN", &token)
        .env("OUT", &out)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .status()
        .expect("exec should run as nobody");
    let seen = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        status.success(),
        "exec as nobody failed: {status}\n{seen}\n{}",
        d.log_text()
    );
    assert!(
        !seen.contains(&token),
        "the command read the caller's token out of exec"
    );
    assert!(seen.contains("Permission denied"), "{seen}");
    // The task ran as nobody's workload and was ended.
    let audit = d.audit();
    let begun: Vec<_> = audit
        .iter()
        .filter(|r| r["event"] == "task_begun")
        .collect();
    assert_eq!(begun.len(), 1);
    assert!(live_tasks(&d).await.is_empty());
}

/// A stop (SIGTERM) that arrives while exec is still waiting for the daemon: once the task is
/// begun it is ended at once, the command never runs, and exec exits 128 + 15.
#[tokio::test(flavor = "multi_thread")]
async fn a_signal_while_the_task_is_being_begun_ends_it_and_runs_nothing() {
    let auth = AuthServer::start();
    let d = Daemon::start(|dir| crate::support::daemon::base_config(dir, &auth.issuer, "")).await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    // The socket appears only later, as when the daemon restarts: exec waits for it.
    let later = dir.path().join("later.sock");
    let ran = dir.path().join("ran");
    let exec = d
        .cli()
        .args(["exec", "--grant", "orders-db-read", "--", "touch"])
        .arg(&ran)
        .env("CREDBROKER_SOCKET", &later)
        .env("CREDBROKER_TOKEN", &token)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec should start");
    tokio::time::sleep(Duration::from_millis(400)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(exec.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal exec");
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::os::unix::fs::symlink(&d.broker_socket, &later).expect("the socket appears");
    let out = tokio::task::spawn_blocking(move || exec.wait_with_output())
        .await
        .expect("join")
        .expect("exec should exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{stderr}");
    assert!(
        stderr.contains("before the command started") && stderr.contains("ended ("),
        "{stderr}"
    );
    assert!(!ran.exists(), "the command ran");
    let audit = d.audit();
    let begun = audit.iter().filter(|r| r["event"] == "task_begun").count();
    assert_eq!(begun, 1, "the task was begun once");
    assert!(live_tasks(&d).await.is_empty(), "the task was left live");
}
