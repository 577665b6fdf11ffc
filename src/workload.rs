//! Which registered MCP server is calling: the peer's credentials (from `SO_PEERCRED`, checked
//! against `/proc` in `server::peer`) matched against the `[[workload]]` entries.
//!
//! Every selector a workload names must match. When several workloads match, the one naming
//! the most selectors wins; a tie between different workloads is refused as ambiguous rather
//! than resolved by file order, because the choice decides which audience tokens must carry.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::WorkloadConfig;

/// The systemd units a process runs in (`server::peer::units_of` reads them from its cgroup).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Units {
    /// The system unit: the first component after the leading slices
    /// (`/system.slice/pg-mcp.service/worker` → `pg-mcp.service`).
    pub system: Option<String>,
    /// Under a user manager (`user@UID.service`), the user unit: the first component after the
    /// slices inside it (`…/user@1000.service/app.slice/gh-mcp.service` → `gh-mcp.service`).
    pub user: Option<String>,
}

/// What is known about the process on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// `/proc/PID/exe`, when readable.
    pub exe: Option<PathBuf>,
    /// The systemd (system) unit from `/proc/PID/cgroup`, when the process runs in one.
    pub unit: Option<String>,
    /// The user unit, when the process runs under a user manager (`unit` is then
    /// `user@UID.service`).
    pub user_unit: Option<String>,
    /// The same, as recorded in tasks and audit records: built once per connection and shared
    /// by every task begun on it.
    record: Arc<crate::record::PeerRecord>,
}

impl PeerInfo {
    pub fn new(uid: u32, gid: u32, pid: i32, exe: Option<PathBuf>, units: Units) -> Self {
        // A user unit is recorded with its manager (`user@1000.service/gh-mcp.service`), so the
        // audit log never shows it as the system unit of the same name.
        let recorded = match (&units.system, &units.user) {
            (Some(s), Some(u)) => Some(format!("{s}/{u}")),
            (s, _) => s.clone(),
        };
        let record = Arc::new(crate::record::PeerRecord {
            uid,
            gid,
            pid,
            exe: exe.as_ref().map(|p| p.display().to_string()),
            unit: recorded,
        });
        Self {
            uid,
            gid,
            pid,
            exe,
            unit: units.system,
            user_unit: units.user,
            record,
        }
    }

    pub fn record(&self) -> crate::record::PeerRecord {
        (*self.record).clone()
    }

    pub fn shared_record(&self) -> Arc<crate::record::PeerRecord> {
        Arc::clone(&self.record)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum MatchError {
    Unknown,
    Ambiguous(Vec<String>),
}

fn specificity(w: &WorkloadConfig) -> usize {
    [
        w.uid.is_some(),
        w.gid.is_some(),
        w.exe.is_some(),
        w.systemd_unit.is_some(),
        w.systemd_user_unit.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count()
}

fn matches(w: &WorkloadConfig, peer: &PeerInfo) -> bool {
    w.uid.is_none_or(|u| u == peer.uid)
        && w.gid.is_none_or(|g| g == peer.gid)
        // An unreadable exe or a process outside any unit never matches a selector on it.
        && w.exe.as_ref().is_none_or(|e| peer.exe.as_ref() == Some(e))
        && w.systemd_unit.as_ref().is_none_or(|u| peer.unit.as_ref() == Some(u))
        // A user unit counts only under the manager of the peer's own uid.
        && w.systemd_user_unit.as_ref().is_none_or(|u| {
            peer.user_unit.as_ref() == Some(u)
                && peer.unit.as_deref() == Some(&format!("user@{}.service", peer.uid))
        })
}

pub fn find<'a>(
    workloads: &'a [WorkloadConfig],
    peer: &PeerInfo,
) -> Result<&'a WorkloadConfig, MatchError> {
    let candidates: Vec<&WorkloadConfig> = workloads.iter().filter(|w| matches(w, peer)).collect();
    let best = candidates
        .iter()
        .map(|w| specificity(w))
        .max()
        .ok_or(MatchError::Unknown)?;
    let top: Vec<&WorkloadConfig> = candidates
        .into_iter()
        .filter(|w| specificity(w) == best)
        .collect();
    match top.as_slice() {
        [one] => Ok(one),
        many => Err(MatchError::Ambiguous(
            many.iter().map(|w| w.name.clone()).collect(),
        )),
    }
}

/// Whether any configured workload expects the peer to read `/proc/PID/exe`.
pub fn needs_exe(workloads: &[WorkloadConfig]) -> bool {
    workloads.iter().any(|w| w.exe.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, uid: Option<u32>, exe: Option<&str>, unit: Option<&str>) -> WorkloadConfig {
        WorkloadConfig {
            name: name.into(),
            uid,
            gid: None,
            exe: exe.map(PathBuf::from),
            systemd_unit: unit.map(str::to_owned),
            systemd_user_unit: None,
            issuer: "https://as.test".into(),
            audience: format!("https://mcp.test/{name}"),
            grants: Default::default(),
        }
    }

    fn peer(uid: u32, exe: Option<&str>, unit: Option<&str>) -> PeerInfo {
        let units = Units {
            system: unit.map(str::to_owned),
            user: None,
        };
        PeerInfo::new(uid, 100, 42, exe.map(PathBuf::from), units)
    }

    #[test]
    fn a_user_unit_matches_only_a_user_unit_selector_of_its_own_uid() {
        let mut user = w("gh", Some(1000), None, None);
        user.systemd_user_unit = Some("gh-mcp.service".into());
        let system = w("gh-system", Some(1000), None, Some("gh-mcp.service"));
        let ws = [user, system];
        let in_manager = |uid: u32, manager: &str| {
            let units = Units {
                system: Some(manager.into()),
                user: Some("gh-mcp.service".into()),
            };
            PeerInfo::new(uid, 100, 42, None, units)
        };
        let p = in_manager(1000, "user@1000.service");
        assert_eq!(find(&ws, &p).map(|w| w.name.as_str()), Ok("gh"));
        assert_eq!(
            p.record().unit.as_deref(),
            Some("user@1000.service/gh-mcp.service")
        );
        // Another user's manager is not this user's.
        assert_eq!(
            find(&ws, &in_manager(1000, "user@1001.service")).map(|w| w.name.as_str()),
            Err(MatchError::Unknown)
        );
        // The system unit of that name is only the system unit.
        assert_eq!(
            find(&ws, &peer(1000, None, Some("gh-mcp.service"))).map(|w| w.name.as_str()),
            Ok("gh-system")
        );
    }

    #[test]
    fn most_specific_match_wins() {
        let ws = [
            w("any", Some(1000), None, None),
            w("pg", Some(1000), Some("/usr/bin/pg-mcp"), None),
        ];
        assert_eq!(
            find(&ws, &peer(1000, Some("/usr/bin/pg-mcp"), None)).map(|w| w.name.as_str()),
            Ok("pg")
        );
        assert_eq!(
            find(&ws, &peer(1000, Some("/usr/bin/other"), None)).map(|w| w.name.as_str()),
            Ok("any")
        );
        assert_eq!(
            find(&ws, &peer(1001, None, None)).map(|w| w.name.as_str()),
            Err(MatchError::Unknown)
        );
    }

    #[test]
    fn unreadable_attributes_never_match_and_ties_are_refused() {
        let ws = [
            w("pg", Some(1000), Some("/usr/bin/pg-mcp"), None),
            w("gh", Some(1000), None, Some("gh.service")),
        ];
        assert_eq!(
            find(&ws, &peer(1000, None, None)).map(|w| w.name.as_str()),
            Err(MatchError::Unknown)
        );
        assert_eq!(
            find(
                &ws,
                &peer(1000, Some("/usr/bin/pg-mcp"), Some("gh.service"))
            )
            .map(|w| w.name.as_str()),
            Err(MatchError::Ambiguous(vec!["pg".into(), "gh".into()]))
        );
    }
}
