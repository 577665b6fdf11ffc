use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::{Params, SecretValue};

/// Who and what a task is for. Identifiers only; providers copy them into session tags, token
/// metadata and session names so the downstream system's own audit log names the human.
#[derive(Clone, Debug, Default)]
pub struct TaskContext {
    pub task_id: String,
    pub workload: String,
    pub tool: String,
    pub issuer: String,
    pub subject: String,
    pub client_id: String,
    /// The accountable human, when known.
    pub owner: Option<String>,
    /// SHA-256 of the access token, hex.
    pub token_fingerprint: String,
}

/// What a lease is to its provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A credential handed to the workload.
    Credential,
    /// The per-task scope of a [`Provider::scoped`](crate::Provider::scoped) provider: a
    /// credential of the provider's own (a Vault child token) under which the task's
    /// credentials are issued. Never handed out. Revoking it takes every credential issued
    /// under it back, including any whose issue outcome never reached the journal.
    Scope,
}

/// One credential to issue.
#[derive(Debug)]
pub struct IssueRequest<'a> {
    /// Fresh, time-ordered, unique. Already journaled as an intent when `issue` is called.
    pub lease_id: &'a str,
    pub role: Role,
    pub task: &'a TaskContext,
    /// The task's scope, for a credential of a scoped provider (already journaled).
    pub scope: Option<&'a RevocationHandle>,
    /// Empty for a scope.
    pub grant: &'a str,
    /// The grant's parameters, templates rendered, narrowed by the request.
    pub params: &'a Params,
    /// When the credential should stop working. Providers with a floor (STS: 15 minutes) may
    /// issue for longer and must say so in [`Issued::expires_at`].
    pub expires_at: SystemTime,
    pub now: SystemTime,
    /// The caller's access token, for a provider that exchanges it at its issuer
    /// ([`Provider::exchanges_caller_token`](crate::Provider::exchanges_caller_token)); `None`
    /// for every other provider, for a scope, and in `reconcile` (the token is never journaled).
    pub subject_token: Option<&'a SecretValue>,
}

/// What `issue` returns.
#[derive(Debug)]
pub struct Issued {
    pub credential: Credential,
    pub handle: RevocationHandle,
    /// When the credential stops working on its own, as the backend reports it.
    pub expires_at: SystemTime,
    pub renewable: bool,
}

/// The credential as handed to the workload.
#[derive(Debug, Default)]
pub struct Credential {
    /// Values that may be shown and logged (a username, an expiry, a session ARN).
    pub public: BTreeMap<String, String>,
    /// Values that must never be logged or stored (a password, a secret key, a token).
    pub secret: BTreeMap<String, SecretValue>,
}

/// Whatever the provider needs to renew or revoke the credential later.
#[derive(Debug)]
pub struct RevocationHandle {
    /// A public reference: a Vault lease id, an STS session name. Shown to operators.
    pub reference: String,
    /// A secret needed to revoke (a GitHub token revokes itself). Journaled encrypted.
    pub secret: Option<SecretValue>,
}

/// A lease as the broker knows it, for renew and revoke.
#[derive(Debug)]
pub struct LeaseRef<'a> {
    pub lease_id: &'a str,
    pub role: Role,
    /// The task's scope, for a credential of a scoped provider.
    pub scope: Option<&'a RevocationHandle>,
    pub grant: &'a str,
    pub params: &'a Params,
    pub handle: &'a RevocationHandle,
    /// When the credential stops working on its own.
    pub expires_at: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewed {
    pub expires_at: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// The backend confirmed the credential no longer works.
    Revoked,
    /// The credential was already gone (revoked, expired, never existed).
    AlreadyGone,
    /// The backend cannot revoke it; it stops working at `at` (residual exposure).
    WillExpire { at: SystemTime },
    /// The backend could not take back this credential alone, so the provider took back every
    /// credential of the same kind issued before `issued_before` (an AWS `aws:TokenIssueTime`
    /// cut-off when the role's deny list is full). Other tasks' credentials may have stopped
    /// working too: the broker says so in the audit log.
    CutOff { issued_before: SystemTime },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// Nothing was issued under that lease id.
    NothingIssued,
    /// Something was issued and is now revoked.
    Revoked,
    /// The provider cannot tell or cannot revoke; whatever was issued stops working at `at`.
    WillExpire { at: SystemTime },
    /// As [`Revoked::CutOff`]: whatever was issued is taken back with every credential of the
    /// same kind issued before `issued_before`.
    CutOff { issued_before: SystemTime },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderHealth {
    pub healthy: bool,
    pub detail: String,
}

/// An environment with no variables (so no `$CREDENTIALS_DIRECTORY`): for tests, and for
/// building providers whose settings name no credential.
pub struct EmptyEnv;

impl Env for EmptyEnv {
    fn var(&self, _key: &str) -> Option<String> {
        None
    }
}

/// The process environment, behind a trait so tests never call `set_var`.
pub trait Env: Send + Sync {
    fn var(&self, key: &str) -> Option<String>;

    /// Reads the systemd credential `name` from `$CREDENTIALS_DIRECTORY`.
    fn credential(&self, name: &str) -> Result<SecretValue, String> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!("invalid credential name {name:?}"));
        }
        let dir = self
            .var("CREDENTIALS_DIRECTORY")
            .ok_or_else(|| format!("credential {name:?}: $CREDENTIALS_DIRECTORY is not set"))?;
        let path = std::path::Path::new(&dir).join(name);
        // Zeroizing: the buffer held the secret too, and must not outlive this call readable.
        let bytes =
            zeroize::Zeroizing::new(std::fs::read(&path).map_err(|e| {
                format!("credential {name:?}: cannot read {}: {e}", path.display())
            })?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| format!("credential {name:?}: not valid UTF-8"))?;
        Ok(SecretValue::new(text.trim_end_matches(['\n', '\r'])))
    }
}
