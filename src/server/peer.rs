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

use crate::workload::{PeerInfo, Units};

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
        None => Identity::Start(started_before(pid, start_ticks(pid)?, accepted_ticks)?),
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
    let units = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|c| units_of(&c))
        .unwrap_or_default();

    let after = match &pidfd {
        Some(fd) => Identity::Pidfd(pidfd_pid(fd.as_raw_fd())?),
        None => Identity::Start(start_ticks(pid)?),
    };
    if after != before {
        return Err(format!(
            "pid {pid} changed hands while it was being identified"
        ));
    }
    Ok(PeerInfo::new(cred.uid(), cred.gid(), pid, exe, units))
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

/// Without a pidfd, the only defence against a reused pid: the process must have started no
/// later than the connection was accepted. If the accept time is unknown the check cannot be
/// made, and the peer is refused rather than waved through.
fn started_before(pid: i32, start: u64, accepted: Option<u64>) -> Result<u64, String> {
    match accepted {
        Some(acc) if start > acc => Err(format!(
            "pid {pid} belongs to a process started after the connection"
        )),
        Some(_) => Ok(start),
        None => Err(format!(
            "cannot tell whether pid {pid} is the process that connected (no pidfd, no clock)"
        )),
    }
}

/// Now, in the clock ticks `/proc/PID/stat` counts process start times in (since boot). From
/// `CLOCK_BOOTTIME`, not `/proc/uptime`: the shipped unit's `ProcSubset=pid` hides the latter,
/// and on kernels without `SO_PEERPIDFD` (before 6.5: Debian 12, RHEL 9) the pid-reuse check
/// was then silently skipped.
fn uptime_ticks() -> Option<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let secs = u64::try_from(now.tv_sec()).ok()?;
    let nanos = u64::try_from(now.tv_nsec()).ok()?;
    // Rounded up: a start tick equal to now is still not later than now.
    Some(secs * hz + (nanos * hz).div_ceil(1_000_000_000) + 1)
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

/// The units a process runs in, read from its cgroup v2 path as systemd itself reads it
/// (`cg_path_get_unit`, `cg_path_get_user_unit`).
///
/// Never the *deepest* unit-like name: a unit with `Delegate=yes`, and any user inside their
/// own `user@UID.service`, can create child cgroups with any name, such as
/// `attacker.service/postgres-mcp.service`. Only the first unit after the slices is the one
/// systemd started the process in.
pub fn units_of(cgroup: &str) -> Units {
    let Some(path) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Units::default();
    };
    let mut parts = path.split('/').filter(|c| !c.is_empty());
    let system = first_unit(&mut parts);
    let user = match &system {
        Some(s) if is_user_manager(s) => first_unit(&mut parts),
        _ => None,
    };
    Units { system, user }
}

/// Skips slices, then takes the next component if it is a unit that holds processes.
fn first_unit<'a>(parts: &mut impl Iterator<Item = &'a str>) -> Option<String> {
    let c = parts.find(|c| !c.ends_with(".slice"))?;
    (is_unit_name(c)).then(|| c.to_owned())
}

fn is_unit_name(c: &str) -> bool {
    let stem = c
        .strip_suffix(".service")
        .or_else(|| c.strip_suffix(".scope"));
    stem.is_some_and(|s| !s.is_empty())
}

/// `user@1000.service`: a user's service manager, under which units are user units.
fn is_user_manager(unit: &str) -> bool {
    unit.strip_prefix("user@")
        .and_then(|r| r.strip_suffix(".service"))
        .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(cgroup: &str) -> (Option<String>, Option<String>) {
        let u = units_of(cgroup);
        (u.system, u.user)
    }

    fn pair(system: Option<&str>, user: Option<&str>) -> (Option<String>, Option<String>) {
        (system.map(str::to_owned), user.map(str::to_owned))
    }

    #[test]
    fn units_from_cgroup_paths() {
        assert_eq!(
            units("0::/system.slice/pg-mcp.service\n"),
            pair(Some("pg-mcp.service"), None)
        );
        assert_eq!(
            units("0::/system.slice/x.service/worker\n"),
            pair(Some("x.service"), None)
        );
        assert_eq!(
            units("0::/user.slice/user-1000.slice/session-3.scope\n"),
            pair(Some("session-3.scope"), None)
        );
        assert_eq!(units("0::/\n"), pair(None, None));
        assert_eq!(units("1:name=systemd:/foo.service\n"), pair(None, None));
        // A cgroup systemd did not create is not a unit.
        assert_eq!(units("0::/mine/pg-mcp.service\n"), pair(None, None));
        assert_eq!(units("0::/system.slice/.service\n"), pair(None, None));
    }

    /// The review's attack: a unit with `Delegate=yes` (or a user in their own manager) creates
    /// a child cgroup named like the victim's unit. The deepest name is the attacker's choice;
    /// the first unit after the slices is not.
    #[test]
    fn a_nested_cgroup_cannot_claim_another_unit() {
        assert_eq!(
            units("0::/system.slice/attacker.service/postgres-mcp.service\n"),
            pair(Some("attacker.service"), None)
        );
        assert_eq!(
            units("0::/system.slice/attacker.service/sub.slice/postgres-mcp.service\n"),
            pair(Some("attacker.service"), None)
        );
    }

    /// `systemd-run --user --unit=postgres-mcp.service` runs in the user's manager: a user unit,
    /// never the system unit of that name.
    #[test]
    fn user_units_are_not_system_units() {
        assert_eq!(
            units(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/postgres-mcp.service"
            ),
            pair(Some("user@1000.service"), Some("postgres-mcp.service"))
        );
        assert_eq!(
            units("0::/user.slice/user-1000.slice/user@1000.service/init.scope"),
            pair(Some("user@1000.service"), Some("init.scope"))
        );
        // Nested under a user unit: still that user unit.
        assert_eq!(
            units("0::/user.slice/user-1000.slice/user@1000.service/app.slice/a.service/b.service"),
            pair(Some("user@1000.service"), Some("a.service"))
        );
    }

    /// Suspected: with `/proc/uptime` hidden (`ProcSubset=pid`) and no pidfd, the pid-reuse check
    /// was skipped. The clock now comes from `CLOCK_BOOTTIME`, and an unknown accept time
    /// refuses the peer.
    #[test]
    fn the_pid_reuse_check_fails_closed() {
        let now = uptime_ticks().unwrap_or_else(|| panic!("CLOCK_BOOTTIME unreadable"));
        let mine = start_ticks(std::process::id() as i32)
            .expect("this process's start time should be readable");
        assert!(mine <= now, "this process started at {mine}, now is {now}");
        assert_eq!(started_before(1, mine, Some(now)), Ok(mine));
        assert!(
            started_before(1, now + 10, Some(now)).is_err(),
            "started after the accept"
        );
        assert!(started_before(1, mine, None).is_err(), "no clock: refused");
    }

    #[tokio::test]
    async fn attests_a_live_peer_as_this_process() {
        let (a, _b) = UnixStream::pair().expect("a connected unix socket pair should be created");
        let peer = attest(&a, true).expect("attesting our own end of the pair should work");
        assert_eq!(peer.pid as u32, std::process::id());
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(peer.exe, std::env::current_exe().ok());
    }
}
