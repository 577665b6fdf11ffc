//! The in-memory mirror of live tasks: what the request path and the loops work from.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use credbroker_provider_api::{RevocationHandle, TaskContext};

use crate::journal::read::TaskView;
use crate::journal::rows::{LeaseRow, TaskRow, Text};

/// What callers get back about a task: the journal's rows (sealed handles never included).
pub type TaskSummary = TaskView;
pub type LeaseSummary = LeaseRow;

pub(crate) struct LiveLease {
    /// `sealed_handle` is always `None` in memory; the opened handle is in `handle`.
    pub(crate) row: LeaseRow,
    pub(crate) handle: Option<Arc<RevocationHandle>>,
}

pub(crate) struct LiveTask {
    pub(crate) row: Arc<TaskRow>,
    pub(crate) leases: Vec<LiveLease>,
    /// Serialises operations on this task (begin, renew, end, retry).
    pub(crate) op: Arc<tokio::sync::Mutex<()>>,
    /// Whether the journal already says `ending`. EndTask marks memory `ending` before it
    /// revokes and commits the transition afterwards, so the row in memory cannot tell.
    pub(crate) ending_journaled: bool,
}

impl LiveTask {
    pub(crate) fn summary(&self) -> TaskSummary {
        TaskView {
            task: (*self.row).clone(),
            leases: self.leases.iter().map(|l| l.row.clone()).collect(),
        }
    }

    pub(crate) fn lease_mut(&mut self, id: &str) -> Option<&mut LiveLease> {
        self.leases.iter_mut().find(|l| *l.row.id == *id)
    }
}

pub(crate) fn context(t: &TaskRow) -> TaskContext {
    TaskContext {
        task_id: t.id.to_string(),
        workload: t.workload.to_string(),
        tool: t.tool.to_string(),
        issuer: t.issuer.to_string(),
        subject: t.subject.to_string(),
        client_id: t.client_id.to_string(),
        owner: t.owner.as_deref().map(str::to_owned),
        token_fingerprint: t.token_fp.to_string(),
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) tasks: HashMap<Text, LiveTask>,
    /// Active tasks by expiry: what the reaper walks.
    pub(crate) expiries: BTreeSet<(i64, Text)>,
    /// Leases waiting for a revocation or reconciliation attempt: (when, task, lease).
    pub(crate) retries: BTreeSet<(i64, Text, Text)>,
}

/// An audit record for a task: the attribution every record carries (peer, workload, client,
/// subject, owner, token fingerprint, task). The rest of the principal (issuer, actors, jti,
/// tool, how the owner was found) is in the task's opening records, [`task_audit_full`]; every
/// later record joins to them by task id.
pub(crate) fn task_audit(
    t: &TaskRow,
    event: &str,
    outcome: crate::record::Outcome,
    now: std::time::SystemTime,
) -> crate::record::AuditRecord {
    let mut r = crate::record::AuditRecord::new(event, outcome, now);
    r.task_id = Some(t.id.to_string());
    r.workload = Some(t.workload.to_string());
    r.peer = Some((*t.peer).clone());
    r.client_id = Some(t.client_id.to_string());
    r.subject = Some(t.subject.to_string());
    r.owner = t.owner.as_deref().map(str::to_owned);
    r.token_fingerprint = Some(t.token_fp.to_string());
    r.call_id = t.call_id.as_deref().map(str::to_owned);
    r
}

/// [`task_audit`] plus the whole principal: for the records that open a task or accept a token.
pub(crate) fn task_audit_full(
    t: &TaskRow,
    event: &str,
    outcome: crate::record::Outcome,
    now: std::time::SystemTime,
) -> crate::record::AuditRecord {
    let mut r = task_audit(t, event, outcome, now);
    r.tool = Some(t.tool.to_string());
    r.issuer = Some(t.issuer.to_string());
    r.actors = t.actors.clone();
    r.owner_source = Some(t.owner_source.to_string());
    r.jti = Some(t.jti.to_string());
    r
}
