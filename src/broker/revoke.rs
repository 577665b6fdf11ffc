//! Taking credentials back: one revocation (or reconciliation) attempt, recording its outcome,
//! and the durable retry queue.
//!
//! A failed revocation stays `revoking` in the journal with its attempt count and next attempt
//! time, and is retried with exponential backoff and jitter until the provider confirms, or the
//! credential has expired on its own; the audit log records every failed attempt and which of
//! the two ended it (invariant 4).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker_provider_api::{
    ErrorKind as PKind, IssueRequest, LeaseRef, ProviderError, Reconciled, RevocationHandle,
    Revoked,
};

use super::live::{context, task_audit};
use super::{Broker, Runtime};
use crate::journal::rows::{LeaseRow, LeaseState, TaskRow, Text, role_str};
use crate::record::{AuditRecord, Outcome, Reason, event, reason};
use crate::time::{from_ms, rfc3339, to_ms};

/// How long after its wanted expiry a lease of unknown outcome is still chased. Covers provider
/// floors (STS issues at least 15 minutes) with a wide margin.
const RECONCILE_GRACE: Duration = Duration::from_secs(3600);
/// How far the provider's clock may be ahead of ours.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The result of one attempt on one lease.
pub(super) struct Attempt {
    pub(super) lease_id: Text,
    pub(super) state: LeaseState,
    pub(super) revoked_ms: Option<i64>,
    pub(super) expires_ms: Option<i64>,
    pub(super) attempts: u32,
    pub(super) next_attempt_ms: Option<i64>,
    pub(super) last_error: Option<String>,
    /// None for "not yet": a scope waiting for its credentials.
    pub(super) audit: Option<AuditRecord>,
}

/// A lease to revoke or reconcile, with what that needs.
pub(super) struct Target {
    pub(super) lease: LeaseRow,
    pub(super) handle: Option<Arc<RevocationHandle>>,
    /// The task's scope, for a credential of a scoped provider.
    pub(super) scope: Option<Arc<RevocationHandle>>,
}

impl Broker {
    /// One attempt to revoke (`revoking`) or reconcile (`reconciling`) a lease.
    pub(super) async fn attempt(
        &self,
        rt: &Runtime,
        task: &TaskRow,
        target: &Target,
        timeout: Duration,
        now: SystemTime,
    ) -> Attempt {
        let lease = &target.lease;
        let handle = target.handle.as_deref();
        let scope = target.scope.as_deref();
        let base = |state, ev: &str, outcome| Attempt {
            lease_id: lease.id.clone(),
            state,
            revoked_ms: None,
            expires_ms: None,
            attempts: lease.attempts,
            next_attempt_ms: None,
            last_error: None,
            audit: Some(
                task_audit(task, ev, outcome, now)
                    .lease(&lease.id, &lease.grant, &lease.provider)
                    .detail("role", role_str(lease.role)),
            ),
        };
        let now_ms = to_ms(now);
        let reconciling = lease.state == LeaseState::Reconciling || handle.is_none();
        let deadline = if reconciling {
            lease
                .wanted_exp_ms
                .saturating_add(RECONCILE_GRACE.as_millis() as i64)
        } else {
            lease
                .expires_ms
                .unwrap_or(lease.wanted_exp_ms)
                .saturating_add(CLOCK_SKEW.as_millis() as i64)
        };
        // The provider is always asked at least once, even at or after expiry: its clock, not
        // ours, decides when the credential stops working. Retries stop once it has surely
        // stopped working on its own, and the audit log says that is how it ended.
        if lease.attempts > 0 && now_ms >= deadline {
            let mut a = base(
                LeaseState::Expired,
                event::LEASE_EXPIRED_UNREVOKED,
                Outcome::Failure,
            );
            a = a.note(|r| {
                r.reason(reason::REVOCATION_ABANDONED)
                    .detail("attempts", lease.attempts)
            });
            if reconciling {
                a = a.note(|r| r.detail("outcome_unknown", true));
            }
            return a;
        }
        let Some(instance) = rt.providers.get(&lease.provider) else {
            return self.failed(
                base,
                lease,
                reason::PROVIDER_MISSING,
                "the provider instance is not loaded",
                None,
                now,
            );
        };
        let rt_timeout = timeout.min(rt.config.broker.provider_timeout);
        if reconciling {
            let ctx = context(task);
            let req = IssueRequest {
                lease_id: &lease.id,
                role: lease.role,
                task: &ctx,
                scope,
                grant: &lease.grant,
                params: &lease.params,
                expires_at: from_ms(lease.wanted_exp_ms),
                now,
                subject_token: None,
            };
            return match instance
                .call(rt_timeout, instance.provider.reconcile(&req, now))
                .await
            {
                Ok(Reconciled::NothingIssued) => {
                    let a = base(
                        LeaseState::Failed,
                        event::LEASE_RECONCILED,
                        Outcome::Success,
                    );
                    a.note(|r| r.reason(reason::NOTHING_ISSUED))
                }
                Ok(Reconciled::Revoked) => {
                    let a = base(
                        LeaseState::Revoked,
                        event::LEASE_RECONCILED,
                        Outcome::Success,
                    );
                    Attempt {
                        revoked_ms: Some(now_ms),
                        ..a.note(|r| r.reason(reason::REVOKED))
                    }
                }
                Ok(Reconciled::WillExpire { at }) => self.lapsing(base, at),
                Ok(Reconciled::CutOff { issued_before }) => {
                    let a = base(
                        LeaseState::Revoked,
                        event::LEASE_RECONCILED,
                        Outcome::Success,
                    );
                    Attempt {
                        revoked_ms: Some(now_ms),
                        ..a.note(|r| cut_off(r.reason(reason::REVOKED), issued_before))
                    }
                }
                Err(e) => self.provider_failed(base, lease, &e, now),
            };
        }
        let params = &lease.params;
        let Some(handle) = handle else {
            return self.failed(
                base,
                lease,
                reason::HANDLE_MISSING,
                "no revocation handle",
                None,
                now,
            );
        };
        let lease_ref = LeaseRef {
            lease_id: &lease.id,
            role: lease.role,
            scope,
            grant: &lease.grant,
            params,
            handle,
            expires_at: from_ms(lease.expires_ms.unwrap_or(lease.wanted_exp_ms)),
        };
        match instance
            .call(rt_timeout, instance.provider.revoke(&lease_ref, now))
            .await
        {
            Ok(Revoked::Revoked) => {
                let a = base(LeaseState::Revoked, event::LEASE_REVOKED, Outcome::Success);
                Attempt {
                    revoked_ms: Some(now_ms),
                    ..a.note(|r| r.detail("confirmed", true))
                }
            }
            Ok(Revoked::AlreadyGone) => {
                let a = base(LeaseState::Revoked, event::LEASE_REVOKED, Outcome::Success);
                Attempt {
                    revoked_ms: Some(now_ms),
                    ..a.note(|r| r.detail("already_gone", true))
                }
            }
            Err(e) if e.kind == PKind::NotFound => {
                let a = base(LeaseState::Revoked, event::LEASE_REVOKED, Outcome::Success);
                Attempt {
                    revoked_ms: Some(now_ms),
                    ..a.note(|r| r.detail("already_gone", true))
                }
            }
            Ok(Revoked::WillExpire { at }) => self.lapsing(base, at),
            Ok(Revoked::CutOff { issued_before }) => {
                let a = base(LeaseState::Revoked, event::LEASE_REVOKED, Outcome::Success);
                Attempt {
                    revoked_ms: Some(now_ms),
                    ..a.note(|r| cut_off(r.detail("confirmed", true), issued_before))
                }
            }
            Err(e) => self.provider_failed(base, lease, &e, now),
        }
    }

    fn lapsing(
        &self,
        base: impl Fn(LeaseState, &str, Outcome) -> Attempt,
        at: SystemTime,
    ) -> Attempt {
        let a = base(
            LeaseState::Expiring,
            event::LEASE_EXPIRED_UNREVOKED,
            Outcome::Success,
        );
        Attempt {
            expires_ms: Some(to_ms(at)),
            ..a.note(|r| {
                r.reason(reason::PROVIDER_CANNOT_REVOKE)
                    .detail("residual_until", rfc3339(at))
            })
        }
    }

    fn provider_failed(
        &self,
        base: impl Fn(LeaseState, &str, Outcome) -> Attempt,
        lease: &LeaseRow,
        e: &ProviderError,
        now: SystemTime,
    ) -> Attempt {
        let code = reason::provider(e.kind);
        self.failed(base, lease, code, &e.message, e.retry_after, now)
    }

    fn failed(
        &self,
        base: impl Fn(LeaseState, &str, Outcome) -> Attempt,
        lease: &LeaseRow,
        code: Reason,
        message: &str,
        retry_after: Option<Duration>,
        now: SystemTime,
    ) -> Attempt {
        let attempts = lease.attempts.saturating_add(1);
        let next = to_ms(now + self.backoff(attempts).max(retry_after.unwrap_or_default()));
        let state = match lease.state {
            LeaseState::Reconciling | LeaseState::Pending => LeaseState::Reconciling,
            _ => LeaseState::Revoking,
        };
        let a = base(state, event::LEASE_REVOCATION_FAILED, Outcome::Failure);
        Attempt {
            attempts,
            next_attempt_ms: Some(next),
            last_error: Some(format!("{code}: {message}")),
            ..a.note(|r| {
                r.reason(code)
                    .detail("error", message.to_string())
                    .detail("attempt", attempts)
                    .detail("next_attempt_at", rfc3339(from_ms(next)))
            })
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let settings = &self.runtime().config.broker;
        backoff(
            attempt,
            settings.revoke_backoff_initial,
            settings.revoke_backoff_max,
        )
    }

    /// A scope not yet revocable (some credential under it is still being revoked): look again
    /// shortly, without calling the provider or writing an audit record.
    pub(super) fn scope_waits(&self, lease: &LeaseRow, now: SystemTime) -> Attempt {
        Attempt {
            lease_id: lease.id.clone(),
            state: LeaseState::Revoking,
            revoked_ms: None,
            expires_ms: None,
            attempts: lease.attempts,
            next_attempt_ms: Some(to_ms(now + self.backoff(1))),
            last_error: lease.last_error.clone(),
            audit: None,
        }
    }
}

impl Attempt {
    fn note(mut self, f: impl FnOnce(AuditRecord) -> AuditRecord) -> Self {
        self.audit = self.audit.map(f);
        self
    }
}

/// Exponential backoff with jitter: attempt n waits a random time in [d/2, d], where
/// d = initial · 2^(n-1), capped at `max`. Jitter keeps a fleet of retries from marching in step
/// against a provider that is just coming back.
pub(super) fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    exp.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// The audit details of a [`Revoked::CutOff`]: the provider could not take back this credential
/// alone and took back every credential of its kind issued before `issued_before`, which may
/// include other tasks' credentials. Said plainly, so nobody mistakes it for a precise revoke.
fn cut_off(record: AuditRecord, issued_before: SystemTime) -> AuditRecord {
    record
        .detail("fallback", "issued_before_cutoff")
        .detail("issued_before", rfc3339(issued_before))
        .detail(
            "note",
            "the provider could not deny this credential alone; every credential it issued \
             for the same target before this instant was cut off, including other tasks'",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..100 {
            let b1 = backoff(1, i, m);
            assert!(b1 >= Duration::from_millis(500) && b1 <= i);
            let b4 = backoff(4, i, m);
            assert!(b4 >= Duration::from_secs(4) && b4 <= Duration::from_secs(8));
            let b30 = backoff(30, i, m);
            assert!(b30 >= Duration::from_secs(30) && b30 <= m);
        }
    }
}
