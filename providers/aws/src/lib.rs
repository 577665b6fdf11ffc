//! The AWS STS provider: one role session per task credential, narrowed by a session policy
//! rendered from the caller's token, named after the lease, attributed to the human owner.
//!
//! Each credential is an `sts:AssumeRole` session whose permissions are the intersection of the
//! role's policies and the grant's session policy (rendered per task from claim templates),
//! whose `SourceIdentity` is the task's owner (CloudTrail records it on every call the session
//! makes, and it survives role chaining), whose session tags name the owner, task, client and
//! grant, and whose session name is `PREFIX.LEASE_ID`, so a CloudTrail record leads to the lease.
//!
//! **Revocation.** STS sessions cannot be deleted. Per instance, `revocation` says what ending a
//! task does:
//! * `"expire"` (default): nothing is called. The session works until it expires (at least
//!   15 minutes after issue, STS's floor); the broker records the residual lifetime in the audit
//!   log and `tasks show` displays it.
//! * `"deny-session"`: the session is denied at once by an inline policy on the role (see
//!   [`deny`]), written with IAM `PutRolePolicy`. Needs `iam:GetRolePolicy` and
//!   `iam:PutRolePolicy` on the roles.
//!
//! Configuration (`[[provider]] type = "aws"`):
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

use credbroker_provider_api::{Env, ParamError, Params, Provider, ProviderFactory};
use serde_json::Value;

use provider::AwsProvider;

pub struct AwsFactory;

const KEYS: [&str; 13] = [
    "region",
    "use_fips",
    "endpoint_url",
    "sts_endpoint_url",
    "iam_endpoint_url",
    "profile",
    "credentials_credential",
    "timeout",
    "max_attempts",
    "revocation",
    "deny_policy_name",
    "deny_policy_max_chars",
    "deny_writer",
];

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
        let mut settings = settings(config, env)?;
        let writer = match config.get("deny_writer").and_then(Value::as_str) {
            Some(w) => w.to_string(),
            None => default_writer(name),
        };
        settings.deny_policy_name = format!("{}.{writer}", settings.deny_policy_name);
        Ok(Arc::new(AwsProvider::new(name, settings)))
    }
}

fn settings(config: &Params, env: &dyn Env) -> Result<Settings, Vec<ParamError>> {
    let mut errors: Vec<ParamError> = config
        .keys()
        .filter(|k| !KEYS.contains(&k.as_str()))
        .map(|k| ParamError::new(k.as_str(), "unknown setting"))
        .collect();
    let string = |key: &str, errors: &mut Vec<ParamError>| match config.get(key) {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            errors.push(ParamError::new(key, "must be a non-empty string"));
            None
        }
    };
    let region = string("region", &mut errors);
    if region.as_deref().is_some_and(|r| {
        !r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }) {
        errors.push(ParamError::new(
            "region",
            "must be a region code such as eu-west-1",
        ));
    }
    let endpoint = |key: &str, errors: &mut Vec<ParamError>, v: Option<String>| {
        if let Some(url) = &v
            && !(url.starts_with("https://") || is_loopback_http(url))
        {
            errors.push(ParamError::new(
                key,
                "must be https (http only on loopback)",
            ));
        }
        v
    };
    let shared = string("endpoint_url", &mut errors);
    let shared = endpoint("endpoint_url", &mut errors, shared);
    let sts = string("sts_endpoint_url", &mut errors);
    let sts_endpoint = endpoint("sts_endpoint_url", &mut errors, sts).or_else(|| shared.clone());
    let iam = string("iam_endpoint_url", &mut errors);
    let iam_endpoint = endpoint("iam_endpoint_url", &mut errors, iam).or(shared);
    let use_fips = match config.get("use_fips") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(ParamError::new("use_fips", "must be true or false"));
            false
        }
    };
    let profile = string("profile", &mut errors);
    let credentials_file = string("credentials_credential", &mut errors).and_then(|c| {
        credential_path(env, &c)
            .map_err(|e| errors.push(ParamError::new("credentials_credential", e)))
            .ok()
    });
    let timeout = match string("timeout", &mut errors) {
        None => Duration::from_secs(5),
        Some(t) => humantime::parse_duration(&t)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or_else(|| {
                errors.push(ParamError::new(
                    "timeout",
                    format!("{t:?} is not a duration"),
                ));
                Duration::from_secs(5)
            }),
    };
    let max_attempts = match config.get("max_attempts") {
        None => 4,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=10) => n as u32,
            _ => {
                errors.push(ParamError::new("max_attempts", "must be 1 to 10"));
                4
            }
        },
    };
    let revocation = match string("revocation", &mut errors).as_deref() {
        None | Some("expire") => Revocation::Expire,
        Some("deny-session") => Revocation::DenySession,
        Some(other) => {
            errors.push(ParamError::new(
                "revocation",
                format!("{other:?}: expected \"expire\" or \"deny-session\""),
            ));
            Revocation::Expire
        }
    };
    let deny_policy_name = string("deny_policy_name", &mut errors)
        .unwrap_or_else(|| "credbroker-revoked-sessions".into());
    if deny_policy_name.is_empty() || !deny_policy_name.chars().all(grant::session_char) {
        errors.push(ParamError::new(
            "deny_policy_name",
            "must be 1–128 characters of letters, digits and _+=,.@-",
        ));
    }
    if let Some(w) = string("deny_writer", &mut errors)
        && (w.is_empty() || w.len() > 32 || !w.chars().all(grant::session_char))
    {
        errors.push(ParamError::new(
            "deny_writer",
            "must be 1–32 characters of letters, digits and _+=,.@-",
        ));
    }
    if deny_policy_name.len() > 128 - 33 {
        errors.push(ParamError::new(
            "deny_policy_name",
            "must leave room for '.' and the writer (at most 95 characters)",
        ));
    }
    let deny_policy_max_chars = match config.get("deny_policy_max_chars") {
        None => 10_240,
        Some(v) => match v.as_u64() {
            Some(n @ 500..=10_240) => n as usize,
            _ => {
                errors.push(ParamError::new(
                    "deny_policy_max_chars",
                    "must be 500 to 10240 (IAM's limit for a role's inline policies)",
                ));
                10_240
            }
        },
    };
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
        deny_policy_name,
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

fn is_loopback_http(address: &str) -> bool {
    address.strip_prefix("http://").is_some_and(|rest| {
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

fn credential_path(env: &dyn Env, name: &str) -> Result<PathBuf, String> {
    if name.contains('/') || name == "." || name == ".." {
        return Err(format!("invalid credential name {name:?}"));
    }
    let dir = env
        .var("CREDENTIALS_DIRECTORY")
        .ok_or("$CREDENTIALS_DIRECTORY is not set")?;
    let path = PathBuf::from(dir).join(name);
    if !path.is_file() {
        return Err(format!("{} does not exist", path.display()));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn build(v: Value) -> Result<Settings, Vec<String>> {
        let Value::Object(p) = v else {
            return Err(vec![]);
        };
        settings(&p, &NoEnv).map_err(|e| e.iter().map(ToString::to_string).collect())
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
            let mut s = settings(&p, &NoEnv).unwrap_or_else(|e| panic!("{e:?}"));
            let writer = p
                .get("deny_writer")
                .and_then(Value::as_str)
                .map_or_else(|| default_writer(instance), str::to_owned);
            s.deny_policy_name = format!("{}.{writer}", s.deny_policy_name);
            s.deny_policy_name
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
            "max_attempts: must be 1 to 10",
            "credentials_credential: $CREDENTIALS_DIRECTORY is not set",
            "deny_policy_max_chars: must be 500 to 10240",
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
        assert!(is_loopback_http("http://[::1]:80/x") && !is_loopback_http("http://10.0.0.1"));
    }
}
