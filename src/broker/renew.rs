//! RenewTask: extend a task within the same limits it was begun under.
//!
//! The renewing token must be valid for this workload and name the same issuer, subject and
//! client as the task's; every grant must still be allowed by it. The new expiry is the least of
//! the asked lifetime, each grant's max TTL counted from the task's start (a grant's max TTL is
//! a total, as Vault's `max_ttl` is), and the new token's expiry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker_provider_api::{
    ErrorKind as PKind, LeaseRef, ProviderError, Renewed, Role, SecretValue,
};
use futures_util::future::join_all;

use super::live::{TaskSummary, task_audit, task_audit_full};
use super::revoke::Target;
use super::settle::scope_handle;
use super::{Broker, BrokerError, ErrorKind, Runtime};
use crate::journal::Op;
use crate::journal::rows::{LeaseRow, LeaseState, TaskState};
use crate::policy::{Ask, GrantAsk};
use crate::record::{AuditRecord, Outcome, event, reason};
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
        self.check_client(&rt, &workload.name, peer, &verified, &[], now)
            .await?;
        self.screen(&rt, workload, peer, &verified, false, now)
            .await?;

        let op = self
            .live_state()?
            .tasks
            .get(req.task_id.as_str())
            .map(|t| Arc::clone(&t.op));
        let Some(op) = op else {
            return Err(self.not_renewable(&req.task_id, &workload.name).await);
        };
        let _guard = op.lock_owned().await;
        let picked = {
            let s = self.live_state()?;
            s.tasks.get(req.task_id.as_str()).map(|t| {
                let leases: Vec<Target> = t
                    .leases
                    .iter()
                    .map(|l| Target {
                        lease: l.row.clone(),
                        handle: l.handle.clone(),
                        scope: scope_handle(t, &l.row),
                    })
                    .collect();
                (Arc::clone(&t.row), leases)
            })
        };
        let Some((task, leases)) = picked else {
            return Err(self.not_renewable(&req.task_id, &workload.name).await);
        };
        if *task.workload != *workload.name {
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
        if *c.issuer != *task.issuer
            || *c.subject != *task.subject
            || *c.client_id != *task.client_id
        {
            let mut rec = task_audit(&task, event::REQUEST_DENIED, Outcome::Denied, now)
                .reason(reason::PRINCIPAL_MISMATCH);
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
            .filter(|t| t.lease.role == Role::Credential)
            .map(|t| GrantAsk {
                name: t.lease.grant.to_string(),
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

        // A scope first (a Vault child token must outlive what is renewed under it), then the
        // credentials.
        let renewable = |role: Role| {
            leases.iter().filter(move |t| {
                t.lease.role == role && t.lease.state == LeaseState::Active && t.lease.renewable
            })
        };
        let mut renewals = self
            .renew_each(&rt, renewable(Role::Scope), new_exp_at, now)
            .await;
        renewals.extend(
            self.renew_each(&rt, renewable(Role::Credential), new_exp_at, now)
                .await,
        );

        let mut ops = vec![Op::TaskExpiry {
            id: task.id.clone(),
            expires_ms: new_exp,
            token_exp_ms: c.expires_at.saturating_mul(1000),
        }];
        let mut lease_exps = Vec::new();
        for (lease, result) in renewals {
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
                            .reason(reason::provider(e.kind))
                            .detail("error", e.message.clone());
                    self.audit_only(vec![rec]).await;
                    return Err(BrokerError::provider(&e, &lease.grant, &lease.provider));
                }
            }
        }
        let mut accepted = task_audit_full(&task, event::TOKEN_ACCEPTED, Outcome::Success, now)
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

    async fn renew_each<'t>(
        &self,
        rt: &Runtime,
        targets: impl Iterator<Item = &'t Target>,
        until: SystemTime,
        now: SystemTime,
    ) -> Vec<(&'t LeaseRow, Result<Renewed, ProviderError>)> {
        let timeout = rt.config.broker.provider_timeout;
        join_all(targets.map(|t| async move {
            let result = match (rt.providers.get(&t.lease.provider), t.handle.as_deref()) {
                (Some(instance), Some(handle)) => {
                    let lease_ref = LeaseRef {
                        lease_id: &t.lease.id,
                        role: t.lease.role,
                        scope: t.scope.as_deref(),
                        grant: &t.lease.grant,
                        params: &t.lease.params,
                        handle,
                        expires_at: from_ms(t.lease.expires_ms.unwrap_or(t.lease.wanted_exp_ms)),
                    };
                    instance
                        .call(timeout, instance.provider.renew(&lease_ref, until, now))
                        .await
                }
                _ => Err(ProviderError::new(
                    PKind::Unsupported,
                    "no provider or handle",
                )),
            };
            (&t.lease, result)
        }))
        .await
    }

    fn apply_renewal(
        &self,
        task_id: &str,
        new_exp: i64,
        token_exp_ms: i64,
        leases: &[(crate::journal::rows::Text, i64)],
    ) -> Option<TaskSummary> {
        let Ok(mut state) = self.live_state() else {
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
