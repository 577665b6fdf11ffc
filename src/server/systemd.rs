//! systemd integration: sd_notify, the watchdog, socket activation. Each is used only when
//! systemd (or `systemd-socket-activate`, or a test) set the variables it documents, so the
//! daemon runs the same outside systemd.
//!
//! - `NOTIFY_SOCKET`: a datagram socket (a path, or `@name` in the abstract namespace) to which
//!   `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=…` and `WATCHDOG=1` are sent.
//! - `WATCHDOG_USEC` (+ `WATCHDOG_PID`): ping at half that interval, from the main loop.
//! - `LISTEN_FDS` (+ `LISTEN_PID`, `LISTEN_FDNAMES`): sockets passed from fd 3 on, matched to
//!   `broker` and `admin` by name (`FileDescriptorName=` in the .socket unit).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::time::Duration;

use credbroker_provider_api::Env;

/// Where sd_notify messages go, if anywhere.
pub struct Notifier {
    target: Option<SocketAddr>,
    socket: Option<UnixDatagram>,
}

impl Notifier {
    pub fn from_env(env: &dyn Env) -> Self {
        let target = env.var("NOTIFY_SOCKET").and_then(|s| address(&s));
        let socket = target.as_ref().and_then(|_| UnixDatagram::unbound().ok());
        Self { target, socket }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` lines). Failures are logged, never fatal:
    /// a daemon must not stop serving because its supervisor's socket is gone.
    pub fn notify(&self, state: &str) {
        let (Some(target), Some(socket)) = (&self.target, &self.socket) else {
            return;
        };
        if let Err(e) = socket.send_to_addr(state.as_bytes(), target) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

fn address(s: &str) -> Option<SocketAddr> {
    if let Some(name) = s.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes()).ok();
    }
    if s.starts_with('/') {
        return SocketAddr::from_pathname(s).ok();
    }
    None
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, if it is meant for this process.
pub fn watchdog_interval(env: &dyn Env) -> Option<Duration> {
    if let Some(pid) = env.var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = env.var("WATCHDOG_USEC")?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// The sockets systemd passed, by `FileDescriptorName=`.
pub struct Activated {
    pub broker: Option<UnixListener>,
    pub admin: Option<UnixListener>,
    /// Whether any socket was passed.
    pub passed: bool,
}

/// Takes the sockets systemd passed. None were passed: both `None` (the daemon binds its own).
/// Sockets were passed but cannot be matched to `broker` and `admin` by name: an error, since
/// guessing would put the admin API on the workload socket.
pub fn activated_sockets(env: &dyn Env) -> io::Result<Activated> {
    let none = Activated {
        broker: None,
        admin: None,
        passed: false,
    };
    let Some(count) = env.var("LISTEN_FDS") else {
        return Ok(none);
    };
    if env
        .var("LISTEN_PID")
        .is_some_and(|p| p.trim().parse::<u32>().ok() != Some(std::process::id()))
    {
        // Meant for another process (inherited through an exec): not ours to take.
        return Ok(none);
    }
    let count: usize = count
        .trim()
        .parse()
        .map_err(|_| invalid("LISTEN_FDS is not a number"))?;
    let names: Vec<String> = env
        .var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    if names.len() != count {
        return Err(invalid(
            "LISTEN_FDNAMES must name every passed socket (FileDescriptorName=broker / admin)",
        ));
    }
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Activated {
        passed: true,
        ..none
    };
    for (index, name) in names.iter().enumerate() {
        let listener = fds.take_unix_listener(index)?.ok_or_else(|| {
            invalid(&format!(
                "passed socket {index} ({name}) is not a unix stream socket"
            ))
        })?;
        let slot = match name.as_str() {
            "broker" => &mut out.broker,
            "admin" => &mut out.admin,
            other => {
                return Err(invalid(&format!(
                    "passed socket {other:?}: expected the names broker and admin"
                )));
            }
        };
        if slot.replace(listener).is_some() {
            return Err(invalid(&format!("two passed sockets are named {name:?}")));
        }
    }
    Ok(out)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("socket activation: {msg}"),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Vars(HashMap<&'static str, String>);
    impl Env for Vars {
        fn var(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
    }

    #[test]
    fn watchdog_pings_at_half_the_interval_and_only_for_its_pid() {
        let me = std::process::id().to_string();
        let env = Vars(HashMap::from([
            ("WATCHDOG_USEC", "3000000".into()),
            ("WATCHDOG_PID", me),
        ]));
        assert_eq!(watchdog_interval(&env), Some(Duration::from_millis(1500)));
        let other = Vars(HashMap::from([
            ("WATCHDOG_USEC", "3000000".into()),
            ("WATCHDOG_PID", "1".into()),
        ]));
        assert_eq!(watchdog_interval(&other), None);
        assert_eq!(watchdog_interval(&Vars(HashMap::new())), None);
    }

    #[test]
    fn notify_reaches_a_path_socket() {
        let dir = tempfile::tempdir().expect("a temp dir for the notify socket should be created");
        let path = dir.path().join("notify");
        let server =
            UnixDatagram::bind(&path).expect("the fake notify socket should bind in the temp dir");
        let env = Vars(HashMap::from([(
            "NOTIFY_SOCKET",
            path.display().to_string(),
        )]));
        let n = Notifier::from_env(&env);
        assert!(n.enabled());
        n.notify("READY=1\nSTATUS=ok");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap_or(0);
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");
        assert!(!Notifier::from_env(&Vars(HashMap::new())).enabled());
        assert!(address("relative/path").is_none());
    }

    #[test]
    fn passed_sockets_must_be_named() {
        let me = std::process::id().to_string();
        let env = Vars(HashMap::from([
            ("LISTEN_FDS", "2".into()),
            ("LISTEN_PID", me.clone()),
        ]));
        assert!(activated_sockets(&env).is_err());
        let other = Vars(HashMap::from([
            ("LISTEN_FDS", "2".into()),
            ("LISTEN_PID", "1".into()),
        ]));
        assert!(activated_sockets(&other).is_ok_and(|a| a.broker.is_none() && a.admin.is_none()));
    }
}
