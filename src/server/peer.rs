//! Who is on the other end of a unix socket connection.
//!
//! `SO_PEERCRED` gives the uid, gid and pid the peer had when it called `connect()`. The pid is
//! only a number: the process may have exited and the number been reused by the time we read
//! `/proc/PID/exe` or `/proc/PID/cgroup`. Two defences, strongest first:
//!
//! 1. `SO_PEERPIDFD` (Linux ≥ 6.5) gives a pidfd for the very process that connected. Its
//!    `fdinfo` names the pid it refers to, or `-1` once that process is gone. We read `/proc`,
//!    then check the pidfd still names the same pid: then what we read belonged to the peer.
//! 2. Without it, the process's start time must be no later than when we accepted the
//!    connection (a process started after cannot have connected) and must not change while we
//!    read (as SPIRE's peertracker does).
//!
//! Either way the effective uid and gid in `/proc/PID/status` must equal `SO_PEERCRED`'s. A peer
//! that cannot be attested is refused, never guessed at.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};

use tokio::net::UnixStream;

use crate::workload::PeerInfo;

/// Attests the peer of an accepted connection. `read_exe` only when a workload selects on it:
/// reading another user's `/proc/PID/exe` needs `CAP_SYS_PTRACE`.
pub fn attest(stream: &UnixStream, read_exe: bool) -> Result<PeerInfo, String> {
    let accepted_ticks = uptime_ticks();
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let pid = cred
        .pid()
        .filter(|p| *p > 0)
        .ok_or("the peer has no pid (another pid namespace?)")?;
    let pidfd =
        nix::sys::socket::getsockopt(&stream.as_fd(), nix::sys::socket::sockopt::PeerPidfd).ok();

    let before = match &pidfd {
        Some(fd) => Identity::Pidfd(pidfd_pid(fd.as_raw_fd())?),
        None => {
            let start = start_ticks(pid)?;
            if accepted_ticks.is_some_and(|acc| start > acc) {
                return Err(format!(
                    "pid {pid} belongs to a process started after the connection"
                ));
            }
            Identity::Start(start)
        }
    };
    if before == Identity::Pidfd(-1) || before == Identity::Pidfd(0) {
        return Err("the peer process has exited".into());
    }
    if let Identity::Pidfd(p) = before
        && p != pid
    {
        return Err(format!(
            "SO_PEERCRED names pid {pid} but the peer's pidfd names {p}"
        ));
    }

    let (euid, egid) = status_ids(pid)?;
    if euid != cred.uid() || egid != cred.gid() {
        return Err(format!(
            "pid {pid} now runs as {euid}:{egid}, not {}:{} as when it connected",
            cred.uid(),
            cred.gid()
        ));
    }
    // A replaced binary reads as "/usr/bin/x (deleted)" and so never matches the configured
    // path: the code running is not what is on disk.
    let exe = if read_exe {
        fs::read_link(format!("/proc/{pid}/exe")).ok()
    } else {
        None
    };
    let unit = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|c| unit_of(&c));

    let after = match &pidfd {
        Some(fd) => Identity::Pidfd(pidfd_pid(fd.as_raw_fd())?),
        None => Identity::Start(start_ticks(pid)?),
    };
    if after != before {
        return Err(format!(
            "pid {pid} changed hands while it was being identified"
        ));
    }
    Ok(PeerInfo::new(cred.uid(), cred.gid(), pid, exe, unit))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Identity {
    Pidfd(i32),
    Start(u64),
}

fn pidfd_pid(raw: i32) -> Result<i32, String> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))
        .map_err(|e| format!("pidfd fdinfo: {e}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "pidfd fdinfo has no Pid line".to_string())
}

/// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted from the last `)`.
fn start_ticks(pid: i32) -> Result<u64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed stat")?;
    rest.split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/stat has no start time"))
}

fn uptime_ticks() -> Option<u64> {
    let up = fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = up.split_whitespace().next()?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    // Rounded up: uptime is printed to 1/100 s, and a start tick equal to it is still earlier.
    Some((secs * hz).ceil() as u64 + 1)
}

/// Effective uid and gid from `/proc/PID/status` (`Uid:` real effective saved fs).
fn status_ids(pid: i32) -> Result<(u32, u32), String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
    };
    Ok((
        field("Uid:").ok_or("no Uid in status")?,
        field("Gid:").ok_or("no Gid in status")?,
    ))
}

/// The systemd unit a process runs in, from its cgroup v2 path: the deepest `.service` or
/// `.scope` component (`/system.slice/pg-mcp.service` → `pg-mcp.service`).
pub(crate) fn unit_of(cgroup: &str) -> Option<String> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_from_cgroup_paths() {
        assert_eq!(
            unit_of("0::/system.slice/pg-mcp.service\n"),
            Some("pg-mcp.service".into())
        );
        assert_eq!(
            unit_of("0::/user.slice/user-1000.slice/user@1000.service/app.slice/gh-mcp.service"),
            Some("gh-mcp.service".into())
        );
        assert_eq!(
            unit_of("0::/system.slice/x.service/worker\n"),
            Some("x.service".into())
        );
        assert_eq!(unit_of("0::/\n"), None);
        assert_eq!(unit_of("1:name=systemd:/foo.service\n"), None);
    }

    #[tokio::test]
    async fn attests_a_live_peer_as_this_process() {
        let (a, _b) = UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        let peer = attest(&a, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(peer.pid as u32, std::process::id());
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(peer.exe, std::env::current_exe().ok());
    }
}
