//! The conformance suite: one set of checks every provider must pass against its real backend
//! (feature `testkit`). Mount it once per provider, the way rustls runs one suite per crypto
//! provider: implement [`Backend`] with the backend's *own* view of a credential (a login, a
//! lookup, the deny list read back) and call [`run`].
//!
//! What it checks, in order (each a [`Check`]):
//! 1. `issue`: a credential is issued, the backend honours it, and its expiry is in the future.
//! 2. `revoke_twice`: revoking it answers `Revoked`, the backend stops honouring it, and
//!    revoking it again answers [`Backend::second_revoke`] (never an error).
//! 3. `revoke_after_expiry`: a revoke whose `now` is past the credential's expiry (by
//!    credbroker's clock) still asks the backend, which then stops honouring it: the backend's
//!    clock, not ours, decides when a credential stops working.
//! 4. `reconcile_lost_answer`: a credential whose issue answer was lost is found and revoked
//!    (the backend stops honouring it), or its residual is reported truthfully
//!    (`WillExpire { at }` no earlier than its real expiry). `NothingIssued` fails.
//! 5. `no_secret_in_errors`: parameters of the wrong shape are refused, and neither that error
//!    nor the one from revoking an unknown handle carrying a canary secret contains the canary
//!    or any issued secret; nor does the `Debug` form of what `issue` returned.
//! 6. `health`: a working instance reports healthy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::{
    Credential, IssueRequest, Issued, LeaseRef, Params, Provider, Reconciled, RevocationHandle,
    Revoked, Role, SecretValue, TaskContext,
};

/// A provider under test and its backend's own view.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    fn provider(&self) -> Arc<dyn Provider>;

    /// A grant to issue from: its name and parameters as the broker passes them (rendered).
    fn grant(&self) -> (String, Params);

    /// Whether the backend honours this credential now, by its own check. `Err` when the
    /// check itself could not be made.
    async fn honoured(&self, issued: &Issued) -> Result<bool, String>;

    /// The answer to revoking an already revoked credential on this backend: `AlreadyGone`
    /// where the backend can tell, `Revoked` where revoking is idempotent and it cannot (an
    /// OpenBao lease: 204 for any id; an AWS deny entry already written).
    fn second_revoke(&self) -> Revoked;

    /// The caller's access token, for a provider that exchanges it
    /// ([`Provider::exchanges_caller_token`]).
    fn subject_token(&self) -> Option<SecretValue> {
        None
    }

    /// How long to ask credentials to live.
    fn ttl(&self) -> Duration {
        Duration::from_secs(600)
    }
}

/// One check of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Issue,
    RevokeTwice,
    RevokeAfterExpiry,
    ReconcileLostAnswer,
    NoSecretInErrors,
    Health,
}

/// A check that failed, and why.
#[derive(Debug)]
pub struct Failure {
    pub check: Check,
    pub message: String,
}

/// Runs every check; returns the failures (empty: the provider conforms).
pub async fn run(backend: &dyn Backend) -> Vec<Failure> {
    let mut s = Suite {
        backend,
        provider: backend.provider(),
        failures: Vec::new(),
        seq: 0,
    };
    s.issue_and_revoke_twice().await;
    s.revoke_after_expiry().await;
    s.reconcile_lost_answer().await;
    s.no_secret_in_errors().await;
    s.health().await;
    s.failures
}

/// Formats failures for an assertion message.
pub fn report(failures: &[Failure]) -> String {
    failures
        .iter()
        .map(|f| format!("{:?}: {}", f.check, f.message))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Suite<'a> {
    backend: &'a dyn Backend,
    provider: Arc<dyn Provider>,
    failures: Vec<Failure>,
    seq: u32,
}

/// A credential with what revoking it needs: its own issue and, for a scoped provider, the
/// task's scope.
struct Held {
    lease_id: String,
    issued: Issued,
    scope: Option<(String, Issued)>,
    params: Params,
    grant: String,
}

impl Suite<'_> {
    fn fail(&mut self, check: Check, message: impl Into<String>) {
        self.failures.push(Failure {
            check,
            message: message.into(),
        });
    }

    fn task(&mut self) -> TaskContext {
        self.seq += 1;
        TaskContext {
            task_id: format!("conformance-{}-{}", std::process::id(), self.seq),
            workload: "conformance".into(),
            tool: "conformance.check".into(),
            issuer: "https://as.conformance.test".into(),
            subject: "conformance-subject".into(),
            client_id: "conformance-client".into(),
            owner: Some("alice@example.com".into()),
            token_fingerprint: "00".repeat(32),
        }
    }

    fn lease_id(&mut self, what: &str) -> String {
        self.seq += 1;
        format!("cb-{what}-{}-{}", std::process::id(), self.seq)
    }

    /// Issues one credential (under a fresh scope for a scoped provider).
    async fn issue(&mut self, check: Check) -> Option<Held> {
        let task = self.task();
        let (grant, params) = self.backend.grant();
        let now = SystemTime::now();
        let expires_at = now + self.backend.ttl();
        let empty = Params::default();
        let scope = if self.provider.scoped() {
            let id = self.lease_id("scope");
            let req = IssueRequest {
                lease_id: &id,
                role: Role::Scope,
                task: &task,
                scope: None,
                grant: "",
                params: &empty,
                expires_at,
                now,
                subject_token: None,
            };
            match self.provider.issue(&req).await {
                Ok(i) => Some((id, i)),
                Err(e) => {
                    self.fail(check, format!("issuing the task scope: {e}"));
                    return None;
                }
            }
        } else {
            None
        };
        let lease_id = self.lease_id("cred");
        let subject = self.backend.subject_token();
        let req = IssueRequest {
            lease_id: &lease_id,
            role: Role::Credential,
            task: &task,
            scope: scope.as_ref().map(|(_, s)| &s.handle),
            grant: &grant,
            params: &params,
            expires_at,
            now,
            subject_token: subject.as_ref(),
        };
        match self.provider.issue(&req).await {
            Ok(issued) => Some(Held {
                lease_id,
                issued,
                scope,
                params,
                grant,
            }),
            Err(e) => {
                self.fail(check, format!("issue: {e}"));
                None
            }
        }
    }

    async fn revoke(&self, held: &Held, now: SystemTime) -> Result<Revoked, String> {
        let lease = LeaseRef {
            lease_id: &held.lease_id,
            role: Role::Credential,
            scope: held.scope.as_ref().map(|(_, s)| &s.handle),
            grant: &held.grant,
            params: &held.params,
            handle: &held.issued.handle,
            expires_at: held.issued.expires_at,
        };
        self.provider
            .revoke(&lease, now)
            .await
            .map_err(|e| e.to_string())
    }

    /// Revokes the scope (if any): the end of a task, so nothing the suite issued outlives it.
    async fn close(&mut self, held: Held, check: Check) {
        let Some((id, scope)) = held.scope else {
            return;
        };
        let empty = Params::default();
        let lease = LeaseRef {
            lease_id: &id,
            role: Role::Scope,
            scope: None,
            grant: "",
            params: &empty,
            handle: &scope.handle,
            expires_at: scope.expires_at,
        };
        if let Err(e) = self.provider.revoke(&lease, SystemTime::now()).await {
            self.fail(check, format!("revoking the task scope: {e}"));
        }
    }

    async fn honoured(&mut self, check: Check, issued: &Issued, want: bool, when: &str) {
        match self.backend.honoured(issued).await {
            Ok(h) if h == want => {}
            Ok(h) => self.fail(
                check,
                format!("{when}: the backend honours the credential: {h}, expected {want}"),
            ),
            Err(e) => self.fail(check, format!("{when}: the backend's check failed: {e}")),
        }
    }

    async fn issue_and_revoke_twice(&mut self) {
        let Some(held) = self.issue(Check::Issue).await else {
            return;
        };
        let now = SystemTime::now();
        if held.issued.expires_at <= now {
            self.fail(Check::Issue, "the credential is issued already expired");
        }
        if held.issued.handle.reference.is_empty() {
            self.fail(Check::Issue, "the revocation handle has no reference");
        }
        self.honoured(Check::Issue, &held.issued, true, "after issue")
            .await;
        match self.revoke(&held, SystemTime::now()).await {
            Ok(Revoked::Revoked) => {}
            other => self.fail(
                Check::RevokeTwice,
                format!("first revoke: {other:?}, expected Revoked"),
            ),
        }
        self.honoured(Check::RevokeTwice, &held.issued, false, "after revoke")
            .await;
        let want = self.backend.second_revoke();
        match self.revoke(&held, SystemTime::now()).await {
            Ok(r) if r == want => {}
            other => self.fail(
                Check::RevokeTwice,
                format!("second revoke: {other:?}, expected {want:?}"),
            ),
        }
        self.close(held, Check::RevokeTwice).await;
    }

    async fn revoke_after_expiry(&mut self) {
        let Some(held) = self.issue(Check::RevokeAfterExpiry).await else {
            return;
        };
        // credbroker's clock says the credential expired an hour ago; the backend's does not.
        let late = held.issued.expires_at + Duration::from_secs(3600);
        match self.revoke(&held, late).await {
            Ok(Revoked::Revoked | Revoked::AlreadyGone) => {}
            other => self.fail(
                Check::RevokeAfterExpiry,
                format!("revoke after expiry: {other:?}"),
            ),
        }
        self.honoured(
            Check::RevokeAfterExpiry,
            &held.issued,
            false,
            "after a revoke past the credential's expiry (was the backend asked?)",
        )
        .await;
        self.close(held, Check::RevokeAfterExpiry).await;
    }

    async fn reconcile_lost_answer(&mut self) {
        let check = Check::ReconcileLostAnswer;
        let Some(held) = self.issue(check).await else {
            return;
        };
        // The answer is lost: the broker only knows the intent (lease id, grant, expiry).
        let task = self.task();
        let now = SystemTime::now();
        let req = IssueRequest {
            lease_id: &held.lease_id,
            role: Role::Credential,
            task: &task,
            scope: held.scope.as_ref().map(|(_, s)| &s.handle),
            grant: &held.grant,
            params: &held.params,
            expires_at: now + self.backend.ttl(),
            now,
            subject_token: None,
        };
        match self.provider.reconcile(&req, now).await {
            Ok(Reconciled::Revoked | Reconciled::CutOff { .. }) => {
                self.honoured(check, &held.issued, false, "after reconcile")
                    .await;
            }
            Ok(Reconciled::WillExpire { at }) if at >= held.issued.expires_at => {}
            Ok(Reconciled::WillExpire { at }) => self.fail(
                check,
                format!(
                    "reconcile says it expires at {at:?}, but the credential lives until {:?}",
                    held.issued.expires_at
                ),
            ),
            Ok(Reconciled::NothingIssued) => {
                self.fail(check, "reconcile says nothing was issued, but it was")
            }
            Err(e) => self.fail(check, format!("reconcile: {e}")),
        }
        // Clean up whatever reconcile left (its residual), then the scope.
        let _ = self.revoke(&held, SystemTime::now()).await;
        self.close(held, check).await;
    }

    async fn no_secret_in_errors(&mut self) {
        let check = Check::NoSecretInErrors;
        let Some(held) = self.issue(check).await else {
            return;
        };
        let mut secrets: Vec<String> = secrets_of(&held.issued.credential);
        if let Some(s) = &held.issued.handle.secret {
            secrets.push(s.expose().to_string());
        }
        let debug = format!("{:?}", held.issued);
        for s in &secrets {
            if s.len() >= 8 && debug.contains(s.as_str()) {
                self.fail(
                    check,
                    "the Debug form of an issued credential shows a secret",
                );
            }
        }
        let canary = "cb-canary-0123456789abcdef-secret";
        let mut errors = Vec::new();
        // Bad parameters.
        let mut bad = held.params.clone();
        for v in bad.values_mut() {
            *v = serde_json::json!({ "not": ["what", "it", "expects"] });
        }
        let task = self.task();
        let now = SystemTime::now();
        let req = IssueRequest {
            lease_id: "cb-bad-params",
            role: Role::Credential,
            task: &task,
            scope: held.scope.as_ref().map(|(_, s)| &s.handle),
            grant: &held.grant,
            params: &bad,
            expires_at: now + self.backend.ttl(),
            now,
            subject_token: None,
        };
        match self.provider.issue(&req).await {
            Ok(_) => self.fail(check, "issue accepted parameters of the wrong shape"),
            Err(e) => errors.push(e.to_string()),
        }
        // An unknown handle carrying a secret.
        let unknown = RevocationHandle {
            reference: "cb-unknown-reference".into(),
            secret: Some(SecretValue::new(canary)),
        };
        let lease = LeaseRef {
            lease_id: "cb-unknown",
            role: Role::Credential,
            scope: held.scope.as_ref().map(|(_, s)| &s.handle),
            grant: &held.grant,
            params: &held.params,
            handle: &unknown,
            expires_at: now + self.backend.ttl(),
        };
        if let Err(e) = self.provider.revoke(&lease, now).await {
            errors.push(e.to_string());
        }
        for e in &errors {
            if e.contains(canary)
                || secrets
                    .iter()
                    .any(|s| s.len() >= 8 && e.contains(s.as_str()))
            {
                self.fail(check, format!("an error shows a secret: {e}"));
            }
        }
        let _ = self.revoke(&held, SystemTime::now()).await;
        self.close(held, check).await;
    }

    async fn health(&mut self) {
        let h = self.provider.health().await;
        if !h.healthy {
            self.fail(
                Check::Health,
                format!("a working instance reports unhealthy: {}", h.detail),
            );
        }
    }
}

fn secrets_of(c: &Credential) -> Vec<String> {
    let m: &BTreeMap<String, SecretValue> = &c.secret;
    m.values().map(|v| v.expose().to_string()).collect()
}
