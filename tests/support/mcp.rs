//! A naked MCP server (official Python SDK, `tests/support/mcp/naked_server.py`) that logs
//! every request it gets, and `credbroker gateway` in front of it, reporting to a daemon.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::daemon::{Daemon, base_config, testd};
use super::{free_port, repo, venv};

const REQUIREMENT: &str = "mcp==2.3.0";

fn python() -> PathBuf {
    venv::ensure(REQUIREMENT, |venv| {
        let ok = Command::new(venv.join("bin/python"))
            .args(["-c", "import mcp.server"])
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| venv.join("bin/python"))
    })
}

pub async fn wait_for_port(port: u16, what: &str) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

enum Listen {
    Tcp,
    Tls,
    Unix,
}

pub struct NakedMcp {
    /// Its MCP endpoint.
    pub url: String,
    /// Its unix socket, when started with [`NakedMcp::start_unix`].
    pub socket: PathBuf,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl NakedMcp {
    /// Stateless (2026-07-28).
    pub async fn start() -> Self {
        Self::start_mode(&[], None).await
    }

    /// With 2025-11-25 sessions.
    pub async fn start_stateful() -> Self {
        Self::start_mode(&["stateful"], None).await
    }

    /// Whose `report` tool begins a task at this broker socket for the call it serves.
    pub async fn start_with_broker(socket: &Path) -> Self {
        Self::start_mode(&[], Some(socket)).await
    }

    async fn start_mode(mode: &[&str], broker: Option<&Path>) -> Self {
        Self::spawn(mode, broker, Listen::Tcp).await
    }

    /// Over HTTPS, with the fixture certificate for 127.0.0.1 (`tests/fixtures/tls`, CA 1).
    pub async fn start_tls() -> Self {
        Self::spawn(&[], None, Listen::Tls).await
    }

    /// On a unix socket, `socket` in its directory; `url` is then `http://127.0.0.1:8000/mcp`.
    pub async fn start_unix() -> Self {
        Self::spawn(&[], None, Listen::Unix).await
    }

    async fn spawn(mode: &[&str], broker: Option<&Path>, listen: Listen) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for the MCP server should be created");
        let log = dir.path().join("requests.jsonl");
        let port = free_port();
        let socket = dir.path().join("mcp.sock");
        let tls = repo().join("tests/fixtures/tls");
        let mut cmd = Command::new(python());
        cmd.arg(repo().join("tests/support/mcp/naked_server.py"));
        match listen {
            Listen::Unix => cmd.arg(format!("unix:{}", socket.display())),
            _ => cmd.arg(port.to_string()),
        };
        if let Listen::Tls = listen {
            cmd.env("NAKED_TLS_CERT", tls.join("server1.pem"))
                .env("NAKED_TLS_KEY", tls.join("server1.key"));
        }
        let child = cmd
            .arg(&log)
            .args(mode)
            .env("CREDBROKER_BIN", testd())
            .envs(broker.map(|b| ("CREDBROKER_SOCKET", b)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the naked MCP server should start");
        let url = match listen {
            Listen::Unix => {
                let started = Instant::now();
                while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "no unix socket"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Any host and port: the socket is dialled. The SDK checks Host (DNS rebinding).
                "http://127.0.0.1:8000/mcp".to_string()
            }
            Listen::Tls => {
                wait_for_port(port, "the naked MCP server").await;
                format!("https://127.0.0.1:{port}/mcp")
            }
            Listen::Tcp => {
                wait_for_port(port, "the naked MCP server").await;
                format!("http://127.0.0.1:{port}/mcp")
            }
        };
        Self {
            url,
            socket,
            log,
            child,
            _dir: dir,
        }
    }

    /// Every request it has received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for NakedMcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct GatewayProc {
    /// Where clients send MCP requests: the gateway's address and the resource's path.
    pub base: String,
    /// The daemon it reports every call to (`server.gateway_uids` names the test's uid).
    pub daemon: Daemon,
    child: Child,
    _dir: tempfile::TempDir,
}

/// A daemon that takes the gateway's reports: the usual test daemon, with this uid allowed.
pub async fn gateway_daemon(issuer: &str) -> Daemon {
    let uid = nix::unistd::geteuid().as_raw();
    Daemon::start(|d| {
        base_config(d, issuer, "").replacen(
            "[server]\n",
            &format!("[server]\ngateway_uids = [{uid}]\n"),
            1,
        )
    })
    .await
}

impl GatewayProc {
    /// `credbroker gateway` with this `[[gateway]]` body (listen is added).
    pub async fn start(issuer: &str, gateway: &str) -> Self {
        Self::start_on(free_port(), issuer, gateway).await
    }

    pub async fn start_on(port: u16, issuer: &str, gateway: &str) -> Self {
        Self::start_full(port, issuer, "", gateway).await
    }

    /// `issuer_extra` goes into the `[[issuer]]` table (client owners, say).
    pub async fn start_full(port: u16, issuer: &str, issuer_extra: &str, gateway: &str) -> Self {
        let daemon = gateway_daemon(issuer).await;
        Self::start_reporting(daemon, port, issuer, issuer_extra, gateway).await
    }

    /// Reporting to this daemon (started with [`gateway_daemon`]).
    pub async fn start_reporting(
        daemon: Daemon,
        port: u16,
        issuer: &str,
        issuer_extra: &str,
        gateway: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for the gateway should be created");
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nsocket = \"{}\"\n\n[[issuer]]\nurl = \"{issuer}\"\n{issuer_extra}\n\n[[gateway]]\nlisten = \"127.0.0.1:{port}\"\n{gateway}\n",
                daemon.broker_socket.display()
            ),
        )
        .expect("the gateway config should be written");
        let child = Command::new(testd())
            .arg("gateway")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gateway should start");
        wait_for_port(port, "the gateway").await;
        Self {
            base: format!("http://127.0.0.1:{port}"),
            daemon,
            child,
            _dir: dir,
        }
    }
}

impl GatewayProc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that checks that a bearer token is present and nothing else about it (not even its
/// audience): the confused deputy `credbroker probe` must find.
pub struct AnyAudience {
    pub url: String,
    child: Child,
}

impl AnyAudience {
    pub async fn start(issuer: &str) -> Self {
        let port = free_port();
        let child = Command::new(python())
            .arg(repo().join("tests/support/mcp/any_audience.py"))
            .arg(port.to_string())
            .arg(issuer)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the any-audience server should start");
        wait_for_port(port, "the any-audience server").await;
        Self {
            url: format!("http://127.0.0.1:{port}/mcp"),
            child,
        }
    }
}

impl Drop for AnyAudience {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
