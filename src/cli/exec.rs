//! `credbroker exec`: one task for the life of a command, the way `aws-vault exec` and `op run`
//! work. Begins the task, runs the command with the credentials in its environment, renews the
//! task while the command runs, forwards signals to it, and ends the task when it exits — on
//! success, on failure, when it is killed. Its exit status is the command's (1 instead of 0 if
//! the task could not be ended).
//!
//! `exec` makes itself non-dumpable first: the command runs as the same user and could
//! otherwise read the caller's token from `/proc/<exec>/environ` or `/proc/<exec>/mem`.
//!
//! What it cannot do: end the task if `exec` itself is killed with SIGKILL (the task then lives
//! to its expiry, so keep `--ttl` short: it is renewed while the command runs), or keep the
//! task alive past the token's own expiry (renewal needs a valid token).

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;
use credbroker_client::{BeginTask, Error, Task};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use super::output;
use super::task::{Conn, TokenSource, narrowings, read_token, ttl};

#[derive(Args)]
pub(super) struct ExecArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(flatten)]
    token: TokenSource,
    /// A grant to request (repeat for several). One credential's fields become `USERNAME`,
    /// `PASSWORD`, `AWS_ACCESS_KEY_ID`, …; several are prefixed with the grant
    /// (`ORDERS_DB_PASSWORD`), but a task's one AWS credential keeps its `AWS_*` names.
    #[arg(long = "grant", required = true)]
    grants: Vec<String>,
    /// The MCP tool (or job) the command runs, as the audit trail names it.
    #[arg(long, default_value = "exec")]
    tool: String,
    /// Narrow a list parameter: GRANT.PARAM=v1,v2 (repeatable).
    #[arg(long = "narrow")]
    narrow: Vec<String>,
    /// Wanted lifetime, e.g. 15m. The task is renewed while the command runs, so this bounds
    /// how long the credentials outlive an `exec` that is killed with SIGKILL.
    #[arg(long)]
    ttl: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Signals passed on to the command. SIGINT, SIGQUIT and SIGHUP sent by the terminal already
/// reached the command (it is in exec's process group): they are passed on only while exec is
/// not in the terminal's foreground group, i.e. when someone else sent them.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGINT,
];

pub(super) async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    // Before the token is read: /proc/self/{environ,mem} become root's, not the command's.
    nix::sys::prctl::set_dumpable(false).context("making exec non-dumpable")?;
    let token = read_token(&args.token)?;
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given after --")?;
    let mut signals = Signals::listen()?;
    let broker = args.conn.broker().await?;
    let wanted = ttl(&args.ttl)?;
    let begin = BeginTask {
        ttl: wanted,
        narrow: narrowings(&args.narrow)?,
        ..BeginTask::new(token.clone(), args.tool, args.grants)
    };
    let mut task = broker.begin(begin).await?;
    // Told to stop while the task was being begun (Ctrl-C while waiting for a restarting
    // daemon, a supervisor's SIGTERM): end it and run nothing.
    if let Some(sig) = signals.pending() {
        let ended = end(task).await;
        eprintln!("credbroker exec: {sig} before the command started; the task was {ended}");
        return Ok(ExitCode::from(128 + sig as u8));
    }

    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        // The caller's token is not the command's: no token passthrough.
        .env_remove("CREDBROKER_TOKEN")
        .env("CREDBROKER_TASK_ID", task.id())
        .envs(output::env_vars(task.credentials()));
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            let ended = end(task).await;
            bail!("cannot run {program:?}: {e}; {ended}");
        }
    };
    drop(command); // its copy of the credentials' environment

    let mut renewal = Renewal::new(task.expires_at(), wanted);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.next() => {
                if let (Some(sig), Some(pid)) = (forwarded(sig), child.id()) {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    let _gone = nix::sys::signal::kill(pid, sig);
                }
            }
            () = renewal.due() => renewal.renew(&mut task, &token).await,
        }
    };
    let ended = end(task).await;
    let status = status.context("waiting for the command")?;
    let code = exit_code(status);
    if !ended.starts_with("ended") {
        eprintln!("credbroker exec: the task was {ended}");
        return Ok(ExitCode::from(if code == 0 { 1 } else { code }));
    }
    Ok(ExitCode::from(code))
}

/// Ends the task and says how that went.
async fn end(task: Task) -> String {
    let id = task.id().to_string();
    match task.end().await {
        Ok(e) if e.state == "ended" => format!("ended ({id})"),
        Ok(e) => format!("{} ({id}): the daemon keeps revoking", e.state),
        Err(e) => format!("NOT ended ({e:#}): end it with `credbroker task end --task {id}`"),
    }
}

/// The command's exit code, or 128 + the signal that killed it (as a shell reports it).
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
        (None, None) => 1,
    }
}

/// When to renew: with a third of the task's remaining life left. A refusal (the token expired
/// or was revoked) stops renewal for good — the task then ends at its expiry; no answer is
/// tried again a little later.
struct Renewal {
    at: Option<tokio::time::Instant>,
    /// `--ttl`, asked again at every renewal: without it the daemon would extend the task to
    /// the policy's default, and a short `--ttl` would stop bounding a SIGKILLed `exec`.
    ttl: Option<Duration>,
}

impl Renewal {
    fn new(expires_at: Option<SystemTime>, ttl: Option<Duration>) -> Self {
        let mut r = Self { at: None, ttl };
        r.schedule(expires_at);
        r
    }

    fn schedule(&mut self, expires_at: Option<SystemTime>) {
        self.at = expires_at.map(|e| {
            let left = e.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + (left * 2 / 3).max(Duration::from_secs(1))
        });
    }

    async fn due(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    async fn renew(&mut self, task: &mut Task, token: &credbroker_client::SecretString) {
        match task.renew(token, self.ttl).await {
            Ok(expires_at) => self.schedule(expires_at),
            Err(e @ Error::Refused { .. }) => {
                eprintln!(
                    "credbroker exec: renewal refused ({e}); the credentials expire with the task"
                );
                self.at = None;
            }
            Err(e) => {
                eprintln!("credbroker exec: renewal failed ({e}); trying again in 10s");
                self.at = Some(tokio::time::Instant::now() + Duration::from_secs(10));
            }
        }
    }
}

/// The forwarded signals, merged into one stream.
struct Signals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Listening starts before the task is begun, so a signal in between is not lost (nor
    /// kills `exec` with the task live).
    fn listen() -> anyhow::Result<Self> {
        let streams = FORWARDED
            .iter()
            .map(|&s| Ok((s, signal(SignalKind::from_raw(s as i32))?)))
            .collect::<std::io::Result<_>>()
            .context("installing signal handlers")?;
        Ok(Self { streams })
    }

    /// The next signal received.
    async fn next(&mut self) -> Signal {
        let polls = self.streams.iter_mut().map(|(sig, stream)| {
            Box::pin(async move {
                stream.recv().await;
                *sig
            })
        });
        futures_util::future::select_all(polls).await.0
    }

    /// A signal received already, if any.
    fn pending(&mut self) -> Option<Signal> {
        use futures_util::FutureExt as _;
        self.next().now_or_never()
    }
}

/// The signal to pass on, or None when the terminal already delivered it to the command.
fn forwarded(sig: Signal) -> Option<Signal> {
    let from_terminal = matches!(sig, Signal::SIGINT | Signal::SIGQUIT | Signal::SIGHUP);
    (!(from_terminal && in_terminal_foreground())).then_some(sig)
}

/// Whether exec's process group is the foreground group of its controlling terminal.
fn in_terminal_foreground() -> bool {
    std::fs::File::open("/dev/tty")
        .ok()
        .and_then(|tty| nix::unistd::tcgetpgrp(&tty).ok())
        .is_some_and(|fg| fg == nix::unistd::getpgrp())
}
