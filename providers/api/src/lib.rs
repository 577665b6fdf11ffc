//! The provider contract of credbroker.
//!
//! A provider mints one kind of downstream credential (a Vault lease, an STS session, a GitHub
//! installation token) and can take it back. The broker owns everything else: policy, the
//! journal, retries, the audit log. This crate is the only thing the broker and a provider share,
//! so a provider crate never sees the broker and the broker never sees a provider's SDK.
//!
//! # The contract
//!
//! * **Revoke is required, renew is optional** (as in Vault's `sdk/framework/secret.go`). Whatever
//!   is needed to revoke later is returned beside the credential, in a [`RevocationHandle`]; the
//!   broker journals it (its secret part encrypted) before it hands the credential out.
//! * **The lease id is the idempotency key.** The broker writes its intent to issue, under a fresh
//!   lease id, *before* it calls [`Provider::issue`]. A provider should mark what it creates with
//!   that id (a session name, token metadata) so that [`Provider::reconcile`] can find it after a
//!   crash or a timeout whose outcome is unknown.
//! * **Errors say what the broker must do**, not what went wrong inside the SDK: see
//!   [`ErrorKind`]. A provider never blames the caller for a backend condition.
//! * **`now` is passed in.** Providers do not read the clock for anything that decides expiry.
//! * **No secret value ever leaves a provider except inside [`SecretValue`]**, which zeroizes on
//!   drop and prints as `[redacted]`.
//!
//! ## Each method
//!
//! | method | must | answers |
//! |---|---|---|
//! | `check_grant` | refuse, at load, every parameter the provider would refuse at issue | every problem at once, each naming its parameter |
//! | `issue` | create one credential marked with the lease id, living no longer than `expires_at` unless the backend has a floor (then say so in [`Issued::expires_at`]); refuse what `check_grant` refuses | [`Issued`], or an error by [`ErrorKind`] |
//! | `revoke` | ask the backend, **even when `now` is past the credential's expiry**: the backend's clock decides when a credential stops working, not credbroker's | `Revoked`; `AlreadyGone` when the backend says it no longer exists; `WillExpire`/`CutOff` when it cannot take back this one alone |
//! | `reconcile` | find what a request whose answer was lost created under `lease_id` and take it back | `Revoked`/`CutOff`; `NothingIssued` only when the backend proves nothing was; `WillExpire { at }`, no earlier than anything issued could live, when it cannot look |
//! | `renew` | extend to `expires_at` or as close as the backend allows | [`Renewed`], or `Unsupported` |
//! | `health` | report the provider's own credentials | healthy, with a detail naming them |
//!
//! ## What errors mean to the broker
//!
//! * **Retry later** ([`ErrorKind::retryable`]): `Unavailable`, `RateLimited` (after
//!   `retry_after`), `OutcomeUnknown`. Revocations are retried until confirmed or expired.
//! * **Outcome unknown**: `OutcomeUnknown` means the request was sent and may have taken
//!   effect. After an issue the broker reconciles, never forgets.
//! * **Gone**: `NotFound` on a revoke is success. Return `Ok(Revoked::AlreadyGone)` instead where
//!   the backend's answer is unambiguous.
//! * **An operator must act**: `Unauthorized` (credbroker's own credentials), `Config`, `Denied`
//!   (a grant the backend's policy does not allow), `Unsupported`.
//! * **The caller's fault**: `Invalid` only.
//! * Messages never contain a secret: they are built from status codes and the backend's error
//!   strings, never from request or response bodies that carry credentials.
//!
//! ## Proving it
//!
//! `testkit` (feature `testkit`) is the conformance suite: every provider mounts it against its
//! real backend (credbroker's `tests/integration/conformance.rs`).

mod duration;
mod error;
mod params;
mod secret;
mod secret_file;
pub mod settings;
#[cfg(feature = "testkit")]
pub mod testkit;
mod types;

pub use duration::{format_duration, parse_duration, parse_duration_within};
pub use error::{ErrorKind, ProviderError};
pub use params::{Narrowing, ParamError, ParamRule, Params};
pub use secret::SecretValue;
pub use types::{
    Credential, EmptyEnv, Env, IssueRequest, Issued, LeaseRef, ProviderHealth, Reconciled, Renewed,
    RevocationHandle, Revoked, Role, TaskContext,
};

use std::sync::Arc;

/// The longest value a claim template placeholder (`{owner}`, `{task_id}`…) renders to; longer
/// values are refused at request time. Providers use it to bound the size of a rendered
/// parameter at configuration load (an STS session policy must fit STS's limit).
pub const MAX_TEMPLATE_VALUE_LEN: usize = 128;
use std::time::SystemTime;

/// The latest instant RFC 3339 can write (9999-12-31T23:59:59.999Z). Times from backends or a
/// damaged journal can lie beyond it, and `humantime` panics formatting those: clamp first.
pub fn clamp_rfc3339(t: SystemTime) -> SystemTime {
    let latest = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(253_402_300_799_999);
    t.min(latest)
}

/// One configured provider instance (for example the Vault cluster named `vault-main`).
///
/// Implementations must be cheap to call concurrently: the broker calls them from many tasks at
/// once (bounded by its own concurrency limit per instance).
#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider kind, as written in the configuration (`vault`, `aws`, `github`).
    fn kind(&self) -> &'static str;

    /// Checks a grant's parameters when the configuration is loaded, so that a bad grant is a
    /// configuration error and never a request-time surprise. Templates (`{sub}`…) are not yet
    /// rendered here; a provider checks what it can of their shape.
    fn check_grant(&self, params: &Params) -> Result<(), Vec<ParamError>>;

    /// Starts the instance's background work (keeping credbroker's own backend credential
    /// alive, say). The daemon calls it once the instance is in service, after every (re)load;
    /// `check-config` never does, so checking a file makes no login. Must be idempotent.
    fn start(&self) {}

    /// Whether this provider issues a task's credentials under a per-task scope
    /// ([`Role::Scope`]). If so, the broker issues (and journals) the scope first, passes it in
    /// every credential's [`IssueRequest::scope`], revokes the scope after the credentials,
    /// renews it before them, and lets the scope take back any credential whose issue outcome
    /// is unknown.
    fn scoped(&self) -> bool {
        false
    }

    /// Whether this provider's scopes can be revoked. If so (the default), the broker journals
    /// a scope's handle before issuing anything under it, so that recovery can revoke the scope
    /// and with it whatever a crash left unrecorded. A scope that cannot be revoked (a Vault
    /// batch token) gains nothing from that commit: its handle is journaled with the task's
    /// credentials, in the answering commit.
    fn scopes_revocable(&self) -> bool {
        true
    }

    /// Whether this provider needs the caller's access token to issue (an OAuth token exchange
    /// sends it to the authorization server that issued it). The broker hands the token only
    /// to providers that say so, in [`IssueRequest::subject_token`]; no other provider ever
    /// sees it, so a Vault or AWS provider cannot pass it on.
    fn exchanges_caller_token(&self) -> bool {
        false
    }

    /// What the broker must know about grant parameters: which a request may narrow and how
    /// ([`Narrowing`]), and which the backend compares without case. A parameter not listed
    /// cannot be narrowed and is case-sensitive.
    fn param_rules(&self) -> &'static [ParamRule] {
        &[]
    }

    /// Issues one credential. Called only after the intent is durable in the journal.
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, ProviderError>;

    /// Extends a lease to `expires_at` (or as close to it as the backend allows).
    async fn renew(
        &self,
        lease: &LeaseRef<'_>,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Renewed, ProviderError> {
        let _ = (lease, expires_at, now);
        Err(ProviderError::new(
            ErrorKind::Unsupported,
            "this provider cannot renew",
        ))
    }

    /// Revokes one credential. Must be idempotent: revoking what is already gone is success
    /// ([`Revoked::AlreadyGone`]), never an error.
    async fn revoke(&self, lease: &LeaseRef<'_>, now: SystemTime)
    -> Result<Revoked, ProviderError>;

    /// Settles a lease whose intent was journaled but whose outcome never was: the daemon
    /// crashed while issuing, or the provider timed out after sending. Find whatever was issued
    /// under `req.lease_id`, revoke it, and say what happened. Providers that cannot look
    /// anything up answer with [`Reconciled::WillExpire`], the latest instant a credential
    /// issued by that request could still be valid.
    async fn reconcile(
        &self,
        req: &IssueRequest<'_>,
        now: SystemTime,
    ) -> Result<Reconciled, ProviderError>;

    /// `credbroker check-config`: what an operator must set up outside credbroker for these
    /// grants `(name, params)` to work (a role's trust policy, an App's permissions), one
    /// paragraph per entry. Shown offline, without reaching the backend.
    fn explain(&self, grants: &[(&str, &Params)]) -> Vec<String> {
        let _ = grants;
        Vec::new()
    }

    /// `credbroker check-config --online`: can this instance reach its backend and do what the
    /// grants `(name, params)` need? Returns one line per problem; empty means ready.
    async fn check_online(&self, grants: &[(&str, &Params)]) -> Vec<String> {
        let _ = grants;
        Vec::new()
    }

    /// Health and identity of the provider's own credentials, for `Status`.
    async fn health(&self) -> ProviderHealth {
        ProviderHealth {
            healthy: true,
            detail: String::new(),
        }
    }
}

/// Builds provider instances of one kind from their configuration table.
pub trait ProviderFactory: Send + Sync + 'static {
    /// The kind this factory builds (`vault`, `aws`, `github`…).
    fn kind(&self) -> &'static str;

    /// Builds the instance `name` from its configuration (the `[[provider]]` table minus `name`
    /// and `type`). Every problem is reported, each naming its parameter.
    fn build(
        &self,
        name: &str,
        config: &Params,
        env: &dyn Env,
    ) -> Result<Arc<dyn Provider>, Vec<ParamError>>;
}
