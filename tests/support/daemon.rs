//! The daemon under test: `credbroker-testd serve` in its own temporary directory, with the
//! test provider's state beside it so tests can see what was issued and revoked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use credbroker::proto::v1;
use credbroker::proto::v1::admin_client::AdminClient;
use credbroker::proto::v1::broker_client::BrokerClient;
use serde_json::Value;
use tonic::transport::Channel;

pub fn testd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_credbroker-testd"))
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub broker_socket: PathBuf,
    pub admin_socket: PathBuf,
    pub journal: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    log_level: String,
    env: Vec<(String, String)>,
    /// A command the daemon runs under (`systemd-socket-activate -l …`, a sandbox), with
    /// `{dir}` replaced by the daemon's directory.
    wrapper: Vec<String>,
}

/// A configuration for the daemon under test. `issuer` is the authorization server's URL;
/// `extra` is appended (more grants, workloads, settings).
pub fn base_config(dir: &Path, issuer: &str, extra: &str) -> String {
    let uid = nix::unistd::geteuid().as_raw();
    format!(
        r#"
[server]
broker_socket = "{d}/broker.sock"
admin_socket = "{d}/admin.sock"

[journal]
path = "{d}/journal.db"
key_file = "{d}/journal.key"

[tokens]
leeway = "5s"

[broker]
revoke_backoff_initial = "200ms"
revoke_backoff_max = "1s"
provider_timeout = "3s"
end_task_wait = "2s"

[[issuer]]
url = "{issuer}"
min_refresh_interval = "1s"

[attribution]
require_owner = true
clients = {{ "agent-1" = "alice@example.com", "agent-noscope" = "bob@example.com" }}

[[provider]]
name = "pg"
type = "test"
state_dir = "{d}/provider"

[[grant]]
name = "orders-db-read"
provider = "pg"
scopes = ["mcp.tool:postgres.read"]
max_ttl = "10m"
params = {{ label = "orders-{{owner}}", items = ["orders", "customers"] }}

[[grant]]
name = "s3-read"
provider = "pg"
scopes = ["mcp.tool:s3.read"]
max_ttl = "10m"

[[workload]]
name = "postgres-mcp"
uid = {uid}
audience = "https://mcp.example.test/postgres"
grants = ["orders-db-read"]
{extra}
"#,
        d = dir.display()
    )
}

impl Daemon {
    /// Writes `config` (with `{dir}` replaced by the daemon's directory) and starts the daemon.
    pub async fn start(config: impl FnOnce(&Path) -> String) -> Self {
        Self::start_logging(config, "info").await
    }

    pub async fn start_logging(config: impl FnOnce(&Path) -> String, log_level: &str) -> Self {
        Self::start_opts(config, log_level, Vec::new()).await
    }

    /// With extra environment for the daemon (e.g. `CREDENTIALS_DIRECTORY`).
    pub async fn start_opts(
        config: impl FnOnce(&Path) -> String,
        log_level: &str,
        env: Vec<(String, String)>,
    ) -> Self {
        Self::start_wrapped(config, log_level, env, Vec::new()).await
    }

    /// Under a wrapper command (see [`Daemon::wrapper`]).
    pub async fn start_wrapped(
        config: impl FnOnce(&Path) -> String,
        log_level: &str,
        env: Vec<(String, String)>,
        wrapper: Vec<String>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for the daemon should be created");
        let d = dir.path().to_path_buf();
        let key = Command::new(testd())
            .arg("keygen")
            .output()
            .expect("credbroker keygen should run");
        super::write_secret(d.join("journal.key"), &key.stdout)
            .expect("the journal key should be written");
        let cfg = d.join("credbroker.toml");
        std::fs::write(&cfg, config(&d)).expect("the daemon config should be written");
        let mut daemon = Self {
            config: cfg,
            broker_socket: d.join("broker.sock"),
            admin_socket: d.join("admin.sock"),
            journal: d.join("journal.db"),
            state: d.join("provider"),
            log: d.join("daemon.log"),
            dir,
            child: None,
            log_level: log_level.into(),
            env,
            wrapper: wrapper
                .iter()
                .map(|w| w.replace("{dir}", &d.display().to_string()))
                .collect(),
        };
        daemon.spawn().await;
        daemon
    }

    /// Starts the process and waits until the admin socket answers Status.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the daemon log should open for appending");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(testd());
                c
            }
            None => Command::new(testd()),
        };
        let child = command
            .args(["--log-level", &self.log_level, "serve", "--config"])
            .arg(&self.config)
            .stdout(
                log.try_clone()
                    .expect("the daemon log handle should be cloned for stdout"),
            )
            .stderr(log)
            .stdin(Stdio::null())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .spawn()
            .unwrap_or_else(|e| panic!("starting the daemon: {e}"));
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("daemon exited with {status}:\n{}", self.log_text());
            }
            if let Ok(mut admin) = self.try_admin().await
                && admin.status(v1::StatusRequest {}).await.is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "daemon did not become ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// Waits for the process to exit; returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(Ok(Some(s))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    async fn try_admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(
            credbroker::client::channel(&self.admin_socket).await?,
        ))
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        self.try_admin()
            .await
            .unwrap_or_else(|e| panic!("admin socket: {e}"))
    }

    pub async fn broker(&self) -> BrokerClient<Channel> {
        BrokerClient::new(
            credbroker::client::channel(&self.broker_socket)
                .await
                .unwrap_or_else(|e| panic!("broker socket: {e}")),
        )
    }

    /// BeginTask for `grants` with `token`, on a fresh connection.
    pub async fn begin(
        &self,
        token: &str,
        grants: &[&str],
    ) -> Result<tonic::Response<v1::BeginTaskResponse>, tonic::Status> {
        self.broker()
            .await
            .begin_task(super::begin_request(token, grants))
            .await
    }

    /// EndTask for `task_id`, on a fresh connection.
    pub async fn end(
        &self,
        task_id: &str,
    ) -> Result<tonic::Response<v1::EndTaskResponse>, tonic::Status> {
        self.broker()
            .await
            .end_task(v1::EndTaskRequest {
                task_id: task_id.to_string(),
            })
            .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn files(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state.join(sub))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Lease ids the test provider holds as issued and not yet revoked.
    pub fn outstanding(&self) -> Vec<String> {
        self.files("issued")
    }

    pub fn revoked(&self) -> Vec<String> {
        self.files("revoked")
    }

    /// Steers the test provider (see tests/testd/provider.rs).
    pub fn provider_flag(&self, name: &str, on: bool) {
        let p = self.state.join(name);
        if on {
            std::fs::write(p, b"1").expect("the provider flag file should be written");
        } else {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The audit log, through `credbroker audit export`.
    pub fn audit(&self) -> Vec<Value> {
        let out = self
            .cli()
            .args(["audit", "export", "--journal"])
            .arg(&self.journal)
            .output()
            .expect("audit export should run");
        assert!(
            out.status.success(),
            "audit export failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_default())
            .collect()
    }

    /// The CLI, pointed at this daemon's sockets.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(testd());
        c.env("CREDBROKER_SOCKET", &self.broker_socket)
            .env("CREDBROKER_ADMIN_SOCKET", &self.admin_socket);
        c.env_remove("CREDBROKER_TOKEN").env_remove("RUST_LOG");
        c
    }

    /// Rewrites the configuration file (for reload tests).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("the rewritten config should be written");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
