//! Planning a BeginTask: from a decision to the task row, one lease row per credential (and per
//! scoped provider instance, its scope), and the ops of the intent commit. Nothing here writes
//! or calls out; `issue` carries the plan out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use credbroker_provider_api::{Params, Role};

use super::intern::Interner;
use super::live::task_audit_full;
use super::replay::BeginKey;
use super::{Broker, BrokerError, ErrorKind, Runtime, new_id};
use crate::config::WorkloadConfig;
use crate::journal::Op;
use crate::journal::rows::{LeaseRow, LeaseState, TaskRow, TaskState, Text};
use crate::policy::Decision;
use crate::providers::Instance;
use crate::record::{Outcome, event};
use crate::time::{rfc3339, to_ms};
use crate::token::Verified;
use crate::workload::PeerInfo;

/// What a BeginTask asks for, once the caller is identified and the policy has decided.
pub(super) struct Ask<'a> {
    pub peer: &'a PeerInfo,
    pub workload: &'a WorkloadConfig,
    pub verified: &'a Verified,
    pub tool: &'a str,
    pub call_id: Option<&'a str>,
    pub task_id: String,
    pub decision: Decision,
    pub key: Option<&'a BeginKey>,
    pub now: SystemTime,
}

/// A task about to be opened: its rows, the instances they issue from, and the intent.
pub(super) struct Plan {
    pub task: Arc<TaskRow>,
    /// Scopes and credentials, pending; a credential's `parent` names its scope.
    pub rows: Vec<LeaseRow>,
    pub instances: HashMap<String, Arc<Instance>>,
    /// Commit 1: the task, its leases, `token_accepted`, `task_opened`, the idempotency key.
    pub intent: Vec<Op>,
    /// The idempotency key the intent carries (a duplicate then means "seen before").
    pub key: Option<String>,
}

impl Broker {
    pub(super) fn plan(&self, rt: &Runtime, ask: Ask<'_>) -> Result<Plan, BrokerError> {
        let claims = &ask.verified.claims;
        let i = &self.intern;
        let now = ask.now;
        let task = Arc::new(TaskRow {
            id: ask.task_id.as_str().into(),
            state: TaskState::Issuing,
            workload: i.get(&ask.workload.name),
            tool: i.get(ask.tool),
            issuer: i.get(&claims.issuer),
            subject: i.get(&claims.subject),
            client_id: i.get(&claims.client_id),
            owner: i.opt(ask.decision.owner.id.as_deref()),
            owner_source: i.get(ask.decision.owner.source.code()),
            actors: claims.actors.clone(),
            token_fp: i.get(&ask.verified.fingerprint.hex()),
            jti: i.get(&claims.jti),
            scopes: i.get(&claims.scopes.join(" ")),
            token_exp_ms: claims.expires_at.saturating_mul(1000),
            peer: ask.peer.shared_record(),
            created_ms: to_ms(now),
            expires_ms: to_ms(ask.decision.expires_at),
            ended_ms: None,
            end_reason: None,
            call_id: ask.call_id.map(Text::from),
        });

        // One scope per scoped provider instance, one credential per grant.
        let mut rows: Vec<LeaseRow> = Vec::new();
        let mut instances: HashMap<String, Arc<Instance>> = HashMap::new();
        let mut scope_of: HashMap<String, Text> = HashMap::new();
        for r in &ask.decision.grants {
            let instance = rt
                .providers
                .get(&r.grant.provider)
                .cloned()
                .ok_or_else(|| {
                    BrokerError::new(
                        ErrorKind::Internal,
                        "provider_missing",
                        format!("provider {:?} is not loaded", r.grant.provider),
                    )
                })?;
            let parent = if instance.provider.scoped() {
                let name = instance.config.name.clone();
                let id = scope_of.entry(name).or_insert_with(|| {
                    let scope = pending(i, &task, Role::Scope, None, "", &instance, Arc::default());
                    let id = scope.id.clone();
                    rows.push(scope);
                    id
                });
                Some(id.clone())
            } else {
                None
            };
            rows.push(pending(
                i,
                &task,
                Role::Credential,
                parent,
                &r.grant.name,
                &instance,
                Arc::clone(&r.params),
            ));
            instances.insert(instance.config.name.clone(), instance);
        }

        let intent = intent_ops(&task, &rows, &ask, claims);
        Ok(Plan {
            task,
            rows,
            instances,
            intent,
            key: ask.key.map(|k| k.key.clone()),
        })
    }
}

fn intent_ops(
    task: &Arc<TaskRow>,
    rows: &[LeaseRow],
    ask: &Ask<'_>,
    claims: &crate::token::Claims,
) -> Vec<Op> {
    let now = ask.now;
    let mut ops = vec![Op::InsertTask(Box::new((**task).clone()))];
    ops.extend(rows.iter().map(|l| Op::InsertLease(Box::new(l.clone()))));
    let accepted = task_audit_full(task, event::TOKEN_ACCEPTED, Outcome::Success, now)
        .detail("scopes", claims.scopes.clone())
        .detail("audiences", claims.audiences.clone())
        .detail("token_expires_at", claims.expires_at)
        .detail("token_issued_at", claims.issued_at);
    let credentials: Vec<&LeaseRow> = rows.iter().filter(|l| l.role == Role::Credential).collect();
    let listed = |f: fn(&LeaseRow) -> String| credentials.iter().map(|l| f(l)).collect::<Vec<_>>();
    let opened = task_audit_full(task, event::TASK_OPENED, Outcome::Success, now)
        .detail("grants", listed(|l| l.grant.to_string()))
        .detail("lease_ids", listed(|l| l.id.to_string()))
        .detail("expires_at", rfc3339(ask.decision.expires_at));
    ops.push(Op::Audit(Box::new(accepted)));
    ops.push(Op::Audit(Box::new(opened)));
    if let Some(k) = ask.key {
        ops.push(Op::BeginKey {
            workload: Arc::clone(&task.workload),
            key: k.key.clone(),
            task_id: Arc::clone(&task.id),
            digest: k.digest,
            created_ms: task.created_ms,
        });
    }
    ops
}

/// A lease row that has not been issued yet.
fn pending(
    intern: &Interner,
    task: &TaskRow,
    role: Role,
    parent: Option<Text>,
    grant: &str,
    instance: &Instance,
    params: Arc<Params>,
) -> LeaseRow {
    LeaseRow {
        id: new_id().into(),
        task_id: Arc::clone(&task.id),
        role,
        parent,
        grant: intern.get(grant),
        provider: intern.get(&instance.config.name),
        kind: intern.get(&instance.config.kind),
        state: LeaseState::Pending,
        params,
        wanted_exp_ms: task.expires_ms,
        issued_ms: None,
        expires_ms: None,
        revoked_ms: None,
        reference: None,
        sealed_handle: None,
        renewable: false,
        attempts: 0,
        next_attempt_ms: None,
        last_error: None,
    }
}
