//! RenewTask: extend a task within the same limits it was begun under.
//!
//! The renewing token must be valid for this workload and name the same issuer, subject and
//! client as the task's; every grant must still be allowed by it. The new expiry is the least of
//! the asked lifetime, each grant's max TTL counted from the task's start (a grant's max TTL is
//! a total, as Vault's `max_ttl` is), and the new token's expiry.

use std::sync::Arc;
use std::time::Duration;

use credbroker_provider_api::{ErrorKind as PKind, LeaseRef, SecretValue};
use futures_util::future::join_all;

use super::begin::call_provider;
use super::live::{TaskSummary, task_audit};
use super::{Broker, BrokerError, ErrorKind};
use crate::audit::{AuditRecord, Outcome, event};
use crate::journal::Op;
use crate::journal::rows::{LeaseState, TaskState};
use crate::policy::{Ask, GrantAsk};
use crate::time::{from_ms, rfc3339, to_ms};
use crate::workload::PeerInfo;

pub struct RenewRequest {
    pub task_id: String,
    pub token: SecretValue,
    pub ttl: Option<Duration>,
}

impl Broker {
    pub async fn renew(
        &self,
        peer: &PeerInfo,
        req: RenewRequest,
    ) -> Result<TaskSummary, BrokerError> {
        let now = self.clock.now();
        let rt = self.runtime();
        check_task_id(&req.task_id)?;
        if req.token.expose().is_empty() {
            return Err(BrokerError::new(
                ErrorKind::Unauthenticated,
                "missing_token",
                "no access token was given",
            ));
        }
        if req
            .ttl
            .is_some_and(|t| t.is_zero() || t > Duration::from_secs(24 * 3600))
        {
            return Err(BrokerError::invalid(
                "invalid_ttl",
                "ttl must be between 1 second and 24 hours",
            ));
        }
        let workload = self.identify(&rt, peer, now).await?;
        let verified = self
            .authenticate(&rt, workload, peer, req.token.expose(), now)
            .await?;
        drop(req.token);

        let op = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.tasks.get(&req.task_id).map(|t| Arc::clone(&t.op)));
        let Some(op) = op else {
            return Err(self.not_renewable(&req.task_id, &workload.name).await);
        };
        let _guard = op.lock_owned().await;
        let picked = self.state.lock().ok().and_then(|s| {
            s.tasks.get(&req.task_id).map(|t| {
                let leases: Vec<_> = t
                    .leases
                    .iter()
                    .map(|l| (l.row.clone(), l.handle.clone()))
                    .collect();
                (Arc::clone(&t.row), leases)
            })
        });
        let Some((task, leases)) = picked else {
            return Err(self.not_renewable(&req.task_id, &workload.name).await);
        };
        if task.workload != workload.name {
            return Err(BrokerError::new(
                ErrorKind::PermissionDenied,
                "task_not_owned",
                "this task belongs to another workload",
            ));
        }
        if task.state != TaskState::Active {
            return Err(BrokerError::new(
                ErrorKind::FailedPrecondition,
                "task_not_active",
                "the task is ending or ended",
            ));
        }
        let c = &verified.claims;
        if c.issuer != task.issuer || c.subject != task.subject || c.client_id != task.client_id {
            let mut rec = task_audit(&task, event::REQUEST_DENIED, Outcome::Denied, now)
                .reason("principal_mismatch");
            rec.token_fingerprint = Some(verified.fingerprint.hex());
            self.audit_only(vec![rec]).await;
            return Err(BrokerError::new(
                ErrorKind::PermissionDenied,
                "principal_mismatch",
                "the token is for another issuer, subject or client than the task",
            ));
        }

        let grants: Vec<GrantAsk> = leases
            .iter()
            .map(|(l, _)| GrantAsk {
                name: l.grant.clone(),
                ..Default::default()
            })
            .collect();
        let decision = rt
            .policy
            .decide(&Ask {
                workload,
                claims: c,
                tool: &task.tool,
                grants: &grants,
                ttl: req.ttl,
                task_id: &task.id,
                now,
            })
            .map_err(|d| {
                let rec =
                    task_audit(&task, event::REQUEST_DENIED, Outcome::Denied, now).reason(d.code);
                (d, rec)
            });
        let decision = match decision {
            Ok(d) => d,
            Err((denial, rec)) => {
                self.audit_only(vec![rec]).await;
                return Err(denial.into());
            }
        };
        let total_cap = decision
            .grants
            .iter()
            .map(|r| {
                task.created_ms
                    .saturating_add(r.grant.max_ttl.as_millis() as i64)
            })
            .min()
            .unwrap_or(task.expires_ms);
        let new_exp = to_ms(decision.expires_at)
            .min(total_cap)
            .max(task.expires_ms);
        let new_exp_at = from_ms(new_exp);

        let timeout = rt.config.broker.provider_timeout;
        let renewals = join_all(
            leases
                .iter()
                .filter(|(l, _)| l.state == LeaseState::Active && l.renewable)
                .map(|(lease, handle)| {
                    let rt = &rt;
                    async move {
                        let slot = rt.providers.get(&lease.provider)?;
                        let handle = handle.as_deref()?;
                        let lease_ref = LeaseRef {
                            lease_id: &lease.id,
                            grant: &lease.grant,
                            params: &lease.params,
                            handle,
                            expires_at: from_ms(lease.expires_ms.unwrap_or(lease.wanted_exp_ms)),
                        };
                        Some((
                            lease,
                            call_provider(
                                slot,
                                timeout,
                                slot.provider.renew(&lease_ref, new_exp_at, now),
                            )
                            .await,
                        ))
                    }
                }),
        )
        .await;

        let mut ops = vec![Op::TaskExpiry {
            id: task.id.clone(),
            expires_ms: new_exp,
            token_exp_ms: c.expires_at.saturating_mul(1000),
        }];
        let mut lease_exps = Vec::new();
        for (lease, result) in renewals.into_iter().flatten() {
            match result {
                Ok(r) => {
                    let exp = to_ms(r.expires_at);
                    ops.push(Op::LeaseExpiry {
                        id: lease.id.clone(),
                        expires_ms: exp,
                    });
                    ops.push(Op::Audit(Box::new(
                        task_audit(&task, event::LEASE_RENEWED, Outcome::Success, now)
                            .lease(&lease.id, &lease.grant, &lease.provider)
                            .detail("expires_at", rfc3339(r.expires_at)),
                    )));
                    lease_exps.push((lease.id.clone(), exp));
                }
                Err(e) if e.kind == PKind::Unsupported => {}
                Err(e) => {
                    let rec: AuditRecord =
                        task_audit(&task, event::LEASE_RENEWED, Outcome::Failure, now)
                            .lease(&lease.id, &lease.grant, &lease.provider)
                            .reason(e.kind.code())
                            .detail("error", e.message.clone());
                    self.audit_only(vec![rec]).await;
                    return Err(BrokerError::provider(&e, &lease.grant, &lease.provider));
                }
            }
        }
        let mut accepted = task_audit(&task, event::TOKEN_ACCEPTED, Outcome::Success, now)
            .detail("scopes", c.scopes.clone())
            .detail("token_expires_at", c.expires_at);
        accepted.token_fingerprint = Some(verified.fingerprint.hex());
        accepted.jti = Some(c.jti.clone());
        ops.insert(0, Op::Audit(Box::new(accepted)));
        ops.push(Op::Audit(Box::new(
            task_audit(&task, event::TASK_RENEWED, Outcome::Success, now)
                .detail("expires_at", rfc3339(new_exp_at))
                .detail("renewed_with_token", verified.fingerprint.hex()),
        )));
        self.journal
            .commit(ops)
            .await
            .map_err(|e| BrokerError::journal(&e))?;
        self.apply_renewal(
            &task.id,
            new_exp,
            c.expires_at.saturating_mul(1000),
            &lease_exps,
        )
        .ok_or_else(|| {
            BrokerError::new(
                ErrorKind::NotFound,
                "task_not_found",
                "the task ended during renewal",
            )
        })
    }

    fn apply_renewal(
        &self,
        task_id: &str,
        new_exp: i64,
        token_exp_ms: i64,
        leases: &[(String, i64)],
    ) -> Option<TaskSummary> {
        let Ok(mut state) = self.state.lock() else {
            return None;
        };
        let mut expiry_change = None;
        let summary = match state.tasks.get_mut(task_id) {
            Some(live) => {
                let mut row = (*live.row).clone();
                expiry_change = Some(((row.expires_ms, row.id.clone()), (new_exp, row.id.clone())));
                row.expires_ms = new_exp;
                row.token_exp_ms = token_exp_ms;
                live.row = Arc::new(row);
                for (id, exp) in leases {
                    if let Some(l) = live.lease_mut(id) {
                        l.row.expires_ms = Some(*exp);
                    }
                }
                Some(live.summary())
            }
            None => None,
        };
        if let Some((old, new)) = expiry_change {
            state.expiries.remove(&old);
            state.expiries.insert(new);
        }
        drop(state);
        self.wake_reaper.notify_one();
        summary
    }

    async fn not_renewable(&self, task_id: &str, workload: &str) -> BrokerError {
        match self
            .ended_view(
                task_id,
                &super::Ender::Workload {
                    workload: workload.into(),
                },
            )
            .await
        {
            Ok(_) => BrokerError::new(
                ErrorKind::FailedPrecondition,
                "task_not_active",
                "the task has ended",
            ),
            Err(e) => e,
        }
    }
}

pub fn check_task_id(id: &str) -> Result<(), BrokerError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(BrokerError::invalid(
            "invalid_task_id",
            "task ids are UUIDs",
        ));
    }
    Ok(())
}
