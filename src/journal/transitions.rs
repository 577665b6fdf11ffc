//! The state machines of tasks and leases, enforced where the state lives. Every state update
//! is `UPDATE … WHERE id = ? AND state IN (allowed predecessors)`; an update that finds its row
//! in any other state is refused with [`JournalError::Transition`] and its whole submission
//! rolls back. So a bug in the broker (or a replayed op) cannot bring a revoked lease back to
//! life, reopen an ended task, or issue a lease twice.
//!
//! ```text
//! task:   issuing ─→ active ─→ ending ─→ ended        (issuing and active may end at once)
//! lease:  pending ─→ active ─→ revoking ⇄ reconciling ─→ revoked | expired | expiring | failed
//!         (pending may go straight to reconciling or a terminal state; terminal is final)
//! ```

use std::sync::LazyLock;

use rusqlite::{Connection, OptionalExtension};

use super::JournalError;
use super::rows::{LeaseState, TaskState};

/// The states a task may be in when it is set to `to`.
pub fn task_predecessors(to: TaskState) -> &'static [TaskState] {
    use TaskState::*;
    match to {
        // Only ever inserted.
        Issuing => &[],
        Active => &[Issuing],
        // Ending again is how a retried end records its reason; it changes no state.
        Ending => &[Issuing, Active, Ending],
        Ended => &[Issuing, Active, Ending],
    }
}

/// The states a lease may be in when it is set to `to` (`active` is set by `LeaseIssued`).
pub fn lease_predecessors(to: LeaseState) -> &'static [LeaseState] {
    use LeaseState::*;
    const UNSETTLED: &[LeaseState] = &[Pending, Active, Revoking, Reconciling];
    match to {
        // Only ever inserted.
        Pending => &[],
        Active => &[Pending],
        Revoking | Reconciling | Revoked | Expired | Expiring | Failed => UNSETTLED,
    }
}

/// `state IN ('a','b')`, from the enums' own names (never input).
pub(super) fn state_in(names: impl Iterator<Item = &'static str>) -> String {
    let list: Vec<String> = names.map(|n| format!("'{n}'")).collect();
    if list.is_empty() {
        // Nothing may precede: the update can never apply.
        "0".to_string()
    } else {
        format!("state IN ({})", list.join(","))
    }
}

pub(super) fn task_guard(to: TaskState) -> String {
    state_in(task_predecessors(to).iter().map(|s| s.as_str()))
}

pub(super) fn lease_guard(to: LeaseState) -> String {
    state_in(lease_predecessors(to).iter().map(|s| s.as_str()))
}

const TASKS: [TaskState; 4] = [
    TaskState::Issuing,
    TaskState::Active,
    TaskState::Ending,
    TaskState::Ended,
];
const LEASES: [LeaseState; 8] = [
    LeaseState::Pending,
    LeaseState::Active,
    LeaseState::Revoking,
    LeaseState::Reconciling,
    LeaseState::Revoked,
    LeaseState::Expired,
    LeaseState::Expiring,
    LeaseState::Failed,
];

/// The guarded `UPDATE tasks` for each target state, built once (the hot path only looks up).
static TASK_UPDATES: LazyLock<Vec<(TaskState, String)>> = LazyLock::new(|| {
    TASKS
        .iter()
        .map(|&to| {
            let sql = format!(
                "UPDATE tasks SET state = ?2, ended_ms = COALESCE(?3, ended_ms),
                    end_reason = COALESCE(?4, end_reason) WHERE id = ?1 AND {}",
                task_guard(to)
            );
            (to, sql)
        })
        .collect()
});

static LEASE_UPDATES: LazyLock<Vec<(LeaseState, String)>> = LazyLock::new(|| {
    LEASES
        .iter()
        .map(|&to| {
            let sql = format!(
                "UPDATE leases SET state = ?2, revoked_ms = COALESCE(?3, revoked_ms), attempts = ?4,
                    next_attempt_ms = ?5, last_error = ?6,
                    sealed_handle = CASE WHEN ?7 THEN NULL ELSE sealed_handle END
                 WHERE id = ?1 AND {}",
                lease_guard(to)
            );
            (to, sql)
        })
        .collect()
});

/// `UPDATE tasks` to `to`, guarded by its predecessors.
pub(super) fn task_update(to: TaskState) -> &'static str {
    TASK_UPDATES
        .iter()
        .find(|(s, _)| *s == to)
        .map_or("SELECT 0", |(_, sql)| sql.as_str())
}

/// `UPDATE leases` (state, attempts, errors) to `to`, guarded by its predecessors.
pub(super) fn lease_update(to: LeaseState) -> &'static str {
    LEASE_UPDATES
        .iter()
        .find(|(s, _)| *s == to)
        .map_or("SELECT 0", |(_, sql)| sql.as_str())
}

/// Why a guarded update touched no row: the row is missing (a conflict), or its state does not
/// allow the transition.
pub(super) fn refused(
    conn: &Connection,
    table: &'static str,
    id: &str,
    to: &'static str,
) -> JournalError {
    let sql = if table == "tasks" {
        "SELECT state FROM tasks WHERE id = ?1"
    } else {
        "SELECT state FROM leases WHERE id = ?1"
    };
    let what = if table == "tasks" { "task" } else { "lease" };
    let found: Result<Option<String>, rusqlite::Error> = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional());
    match found {
        Ok(Some(from)) => JournalError::Transition {
            what,
            id: id.to_string(),
            from,
            to,
        },
        Ok(None) => JournalError::Conflict(format!("{what} {id} does not exist")),
        Err(e) => JournalError::Sqlite(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_final_and_nothing_returns_to_its_start() {
        for to in LEASES {
            let from = lease_predecessors(to);
            assert!(
                from.iter().all(|f| !f.is_terminal()),
                "{to:?} after a terminal state"
            );
            assert!(!from.contains(&LeaseState::Active) || to != LeaseState::Active);
        }
        for to in TASKS {
            assert!(
                !task_predecessors(to).contains(&TaskState::Ended),
                "{to:?} after ended"
            );
        }
        assert!(task_predecessors(TaskState::Issuing).is_empty());
        assert!(lease_predecessors(LeaseState::Pending).is_empty());
        assert_eq!(lease_guard(LeaseState::Pending), "0");
        assert_eq!(task_guard(TaskState::Active), "state IN ('issuing')");
        for to in TASKS {
            assert!(task_update(to).ends_with(&task_guard(to)), "{to:?}");
        }
        for to in LEASES {
            assert!(lease_update(to).ends_with(&lease_guard(to)), "{to:?}");
        }
    }
}
