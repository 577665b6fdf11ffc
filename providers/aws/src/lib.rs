//! The AWS STS provider: one role session per task credential, narrowed by a session policy
//! rendered from the caller's token, named after the lease, attributed to the human owner.
//!
//! Each credential is an `sts:AssumeRole` session, never shared between tasks, whose permissions
//! are the intersection of the role's policies and the grant's session policy (rendered per task
//! from claim templates). The request carries:
//! - the session policy, written in TOML as a table and sent as compact JSON. Its size is checked
//!   at load with every placeholder at its longest rendering (128 characters), against STS's
//!   2,048 characters. `PackedPolicyTooLarge` (which also counts tags and managed policies, and
//!   only STS can compute) is still a `Config` error if it happens.
//! - `DurationSeconds` = the time left in the task, raised to STS's 900-second floor, capped by
//!   the grant's `duration` and the role's MaxSessionDuration. The maximum is learnt from
//!   `iam:GetRole` the first time STS refuses a longer session, then cached.
//! - `SourceIdentity` = the owner (the subject when there is none), encoded injectively into
//!   STS's character set (`identity.rs`: `=XX` escapes, so `a"b` and `a b` stay two owners).
//!   CloudTrail records it on every call the session makes, and chained sessions cannot change
//!   it.
//! - session tags `credbroker:owner|task|client|grant`, transitive when the grant says so.
//! - `RoleSessionName` = `PREFIX.LEASE_ID`: unique, so a CloudTrail record leads to the lease,
//!   and computable again without STS's answer (see reconcile below).
//!
//! The revocation handle is the session's `aws:userid` (`ROLE_ID:SESSION_NAME`), not a secret.
//! The workload is told the *task's* end as the credential's expiry (`expires_at`,
//! `AWS_CREDENTIAL_EXPIRATION`, credential-process `Expiration`), so SDKs stop using cached
//! credentials when the task ends; the lease keeps STS's expiry, which the deny must cover.
//!
//! **Revocation.** STS sessions cannot be deleted. Per instance, `revocation` says what ending a
//! task does:
//! * `"expire"` (default): nothing is called (`Revoked::WillExpire`). The session works until it
//!   expires (at least 15 minutes after issue, STS's floor); the broker moves the lease to
//!   `expiring`, audits `lease_expired_unrevoked` with `residual_until`, and `tasks show`
//!   displays it.
//! * `"deny-session"`: the session is denied at once by an inline policy on the role (see
//!   [`deny`]), written with IAM `PutRolePolicy`. Needs `iam:GetRolePolicy` and
//!   `iam:PutRolePolicy` on the roles. The policy is `PREFIX.WRITER`, one document per writer
//!   (writer = a hash of the machine id and the instance name, or `deny_writer`): IAM has no
//!   conditional write, so two writers sharing one document lost entries. One `Deny *`
//!   statement per five-minute expiry bucket, with `StringLike aws:userid` listing the
//!   sessions; every write prunes whole statements whose sessions have expired. Writes to one
//!   role are batched (`denylist.rs`): revocations that arrive during a write join the next
//!   one, so there is one GetRolePolicy + PutRolePolicy per batch and no lost update between
//!   them. When the document would exceed `deny_policy_max_chars`, or IAM answers
//!   `LimitExceeded` (IAM counts all of a role's inline policies together), every credbroker
//!   statement is replaced by one `DateLessThan aws:TokenIssueTime` cut-off. That cuts off other
//!   tasks' sessions of the role too, so the provider returns `Revoked::CutOff` and the broker
//!   audits `fallback = "issued_before_cutoff"` with a plain note. Statements that are not
//!   credbroker's (no `Credbroker` Sid prefix) are never touched.
//!
//! **Reconcile** (an AssumeRole whose answer never arrived): STS cannot list sessions. `expire`
//! answers `WillExpire` at now + the grant's duration; `deny-session` denies
//! `*:SESSION_NAME`: the role id is not known, but the name is unique.
//!
//! **Errors** are mapped by AWS error code, not message text (`errors.rs`): `AccessDenied` →
//! `Denied`, which reaches the caller as PERMISSION_DENIED naming the grant and the role;
//! `Throttling` is retried first by the SDK's standard strategy (exponential backoff with
//! jitter, `max_attempts`), then → `RateLimited`; a refused connection → `Unavailable`; no
//! credentials of credbroker's own → `Unauthorized`; any other transport failure of AssumeRole
//! → `OutcomeUnknown`, so the broker reconciles.
//!
//! The SDK clients are built on first use (`clients.rs`), because loading aws-config is async
//! and a factory's `build` is not. credbroker's own identity comes from the standard chain, or
//! from a shared-credentials file in `$CREDENTIALS_DIRECTORY` (`credentials_credential`), which
//! then replaces the chain entirely. `check-config` prints the trust policy each role needs
//! (`Provider::explain`); `--online` runs GetCallerIdentity, a dry AssumeRole per grant (a
//! deny-all session policy, 900 s, with tags and SourceIdentity, which proves `sts:TagSession`
//! and `sts:SetSourceIdentity`), and for deny-session a GetRolePolicy.
//!
//! Configuration (`[[provider]] type = "aws"`; grant parameters are in [`grant`]):
//! ```toml
//! region = "eu-west-1"                  # else AWS_REGION / the profile's region
//! use_fips = false                      # FIPS endpoints
//! sts_endpoint_url = "https://sts.eu-west-1.amazonaws.com"   # optional override
//! iam_endpoint_url = "https://iam.amazonaws.com"             # optional override
//! endpoint_url = "http://127.0.0.1:5000"  # optional: one endpoint for both (tests)
//! # credbroker's own identity: the standard chain (environment, profile, web identity,
//! # container and instance metadata), or a credentials file from systemd's credential store:
//! profile = "credbroker"                # optional profile name
//! credentials_credential = "aws-credentials"   # $CREDENTIALS_DIRECTORY/aws-credentials (INI)
//! # credentials_file = "/etc/credbroker/aws-credentials"   # or a file (not both)
//! timeout = "5s"                        # per attempt
//! max_attempts = 4                      # the SDK's standard retry, with backoff, on throttling
//! revocation = "deny-session"           # or "expire"
//! deny_policy_name = "credbroker-revoked-sessions"   # a prefix: the policy is PREFIX.WRITER
//! deny_writer = "host-a"                # optional; default: derived from /etc/machine-id and
//!                                       # the instance name, so two daemons (or instances)
//!                                       # sharing a role never write the same document
//! deny_policy_max_chars = 10240         # IAM's limit for a role's inline policies together
//! ```

mod clients;
pub mod deny;
mod denylist;
mod errors;
pub mod grant;
mod identity;
mod provider;
mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use credbroker_provider_api::settings::{Fields, MAX_TIMEOUT, MIN_TIMEOUT};
use credbroker_provider_api::{Env, ParamError, Params, Provider, ProviderFactory};

use provider::AwsProvider;

pub struct AwsFactory;

/// What ending a task does to its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Revocation {
    Expire,
    DenySession,
}

/// An instance's settings, checked.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) region: Option<String>,
    pub(crate) use_fips: bool,
    pub(crate) sts_endpoint: Option<String>,
    pub(crate) iam_endpoint: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) credentials_file: Option<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) revocation: Revocation,
    /// The full inline policy name this instance writes: `PREFIX.WRITER`. IAM has no
    /// conditional write, so two writers doing GetRolePolicy-merge-PutRolePolicy on one
    /// document lose each other's entries; each writer owns its own document instead.
    pub(crate) deny_policy_name: String,
    pub(crate) deny_policy_max_chars: usize,
}

impl ProviderFactory for AwsFactory {
    fn kind(&self) -> &'static str {
        "aws"
    }

    fn build(
        &self,
        name: &str,
        config: &Params,
        env: &dyn Env,
    ) -> Result<Arc<dyn Provider>, Vec<ParamError>> {
        Ok(Arc::new(AwsProvider::new(
            name,
            settings(name, config, env)?,
        )))
    }
}

fn settings(instance: &str, config: &Params, env: &dyn Env) -> Result<Settings, Vec<ParamError>> {
    let mut f = Fields::new(config);
    let region = f.string("region");
    if region.as_deref().is_some_and(|r| {
        !r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }) {
        f.problem("region", "must be a region code such as eu-west-1");
    }
    let shared = f.endpoint("endpoint_url");
    let sts_endpoint = f.endpoint("sts_endpoint_url").or_else(|| shared.clone());
    let iam_endpoint = f.endpoint("iam_endpoint_url").or(shared);
    let use_fips = f.get("use_fips", "true or false").unwrap_or(false);
    let profile = f.string("profile");
    let credentials_file = f
        .secret("credentials_file", "credentials_credential", env)
        .map(|s| s.path().to_path_buf());
    let timeout = f
        .duration("timeout", MIN_TIMEOUT, MAX_TIMEOUT)
        .unwrap_or(Duration::from_secs(5));
    let max_attempts = f.int("max_attempts", 1..=10).unwrap_or(4) as u32;
    let revocation = match f.string("revocation").as_deref() {
        None | Some("expire") => Revocation::Expire,
        Some("deny-session") => Revocation::DenySession,
        Some(other) => {
            f.problem(
                "revocation",
                format!("{other:?}: expected \"expire\" or \"deny-session\""),
            );
            Revocation::Expire
        }
    };
    let prefix = f
        .string("deny_policy_name")
        .unwrap_or_else(|| "credbroker-revoked-sessions".into());
    if !prefix.chars().all(grant::session_char) {
        f.problem(
            "deny_policy_name",
            "must be 1–128 characters of letters, digits and _+=,.@-",
        );
    }
    if prefix.len() > 128 - 33 {
        f.problem(
            "deny_policy_name",
            "must leave room for '.' and the writer (at most 95 characters)",
        );
    }
    let writer = match f.string("deny_writer") {
        Some(w) if w.len() > 32 || !w.chars().all(grant::session_char) => {
            f.problem(
                "deny_writer",
                "must be 1–32 characters of letters, digits and _+=,.@-",
            );
            w
        }
        Some(w) => w,
        None => default_writer(instance),
    };
    let deny_policy_max_chars = f
        .int("deny_policy_max_chars", 500..=10_240)
        .unwrap_or(10_240) as usize;
    let errors = f.finish();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Settings {
        region,
        use_fips,
        sts_endpoint,
        iam_endpoint,
        profile,
        credentials_file,
        timeout,
        max_attempts,
        revocation,
        deny_policy_name: format!("{prefix}.{writer}"),
        deny_policy_max_chars,
    })
}

/// A writer id stable across restarts and distinct per host and instance: a hash of the
/// machine id (or, without one, the host name) and the instance's name.
fn default_writer(instance: &str) -> String {
    let machine = [
        "/etc/machine-id",
        "/var/lib/dbus/machine-id",
        "/proc/sys/kernel/hostname",
    ]
    .iter()
    .find_map(|p| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .unwrap_or_default();
    // FNV-1a: uniqueness is all that is wanted here, not secrecy.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in machine.bytes().chain([0]).chain(instance.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use credbroker_provider_api::EmptyEnv;
    use serde_json::Value;

    fn build(v: Value) -> Result<Settings, Vec<String>> {
        let Value::Object(p) = v else {
            return Err(vec![]);
        };
        settings("aws", &p, &EmptyEnv).map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    /// End-to-end finding 15: two writers on one role, each doing GetRolePolicy, merge,
    /// PutRolePolicy on the same document, lost each other's entries. Each writer now owns its
    /// document: instances and hosts get distinct names; an explicit writer is used as given.
    #[test]
    fn every_writer_owns_its_deny_document() {
        let name = |instance: &str, cfg: Value| -> String {
            let Value::Object(p) = cfg else {
                return String::new();
            };
            settings(instance, &p, &EmptyEnv)
                .unwrap_or_else(|e| panic!("{e:?}"))
                .deny_policy_name
        };
        let a = name("aws-a", serde_json::json!({"region": "eu-west-1"}));
        let b = name("aws-b", serde_json::json!({"region": "eu-west-1"}));
        assert_ne!(a, b);
        assert!(
            a.starts_with("credbroker-revoked-sessions.") && a.len() <= 128,
            "{a}"
        );
        assert_eq!(
            a,
            name("aws-a", serde_json::json!({"region": "eu-west-1"})),
            "stable"
        );
        assert_eq!(
            name(
                "aws-a",
                serde_json::json!({"region": "eu-west-1", "deny_writer": "host-2"})
            ),
            "credbroker-revoked-sessions.host-2"
        );
        assert!(build(serde_json::json!({"deny_writer": "a b"})).is_err());
    }

    #[test]
    fn settings_are_checked_and_every_problem_named() {
        let e = build(serde_json::json!({
            "region": "EU West",
            "endpoint_url": "http://example.com:5000",
            "revocation": "delete",
            "timeout": "soon",
            "max_attempts": 0,
            "credentials_credential": "aws",
            "deny_policy_max_chars": 20000,
            "deny_policy_name": "a b",
            "colour": 1
        }))
        .err()
        .unwrap_or_default();
        for needle in [
            "colour: unknown setting",
            "region: must be a region code",
            "endpoint_url: must be https",
            "revocation: \"delete\": expected",
            "timeout: \"soon\" is not a duration",
            "max_attempts: must be an integer from 1 to 10",
            "credentials_credential: credential \"aws\": $CREDENTIALS_DIRECTORY is not set",
            "deny_policy_max_chars: must be an integer from 500 to 10240",
            "deny_policy_name: must be",
        ] {
            assert!(
                e.iter().any(|x| x.contains(needle)),
                "{needle} not in {e:#?}"
            );
        }
        let ok = build(serde_json::json!({
            "endpoint_url": "http://127.0.0.1:5000",
            "iam_endpoint_url": "https://iam.amazonaws.com",
            "revocation": "deny-session"
        }))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.sts_endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(
            ok.iam_endpoint.as_deref(),
            Some("https://iam.amazonaws.com")
        );
        assert_eq!(ok.revocation, Revocation::DenySession);
    }
}
