//! Grant parameters for AWS, checked at config load and read at issue time.
//!
//! ```toml
//! [grant.s3-read]
//! provider = "aws-main"
//! [grant.s3-read.params]
//! role_arn = "arn:aws:iam::123456789012:role/mcp-s3-read"
//! external_id = "credbroker-prod"            # optional; if the trust policy asks for one
//! duration = "1h"                            # clamped to [15m, 12h] and the role's maximum
//! role_session_name = "{owner}"              # a prefix; credbroker appends ".<lease id>"
//! transitive_tags = false                    # pass the session tags on through role chaining
//! policy_arns = ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]   # optional, ≤ 10
//! [grant.s3-read.params.session_policy]      # written as a table, sent as compact JSON
//! Version = "2012-10-17"
//! Statement = [{ Effect = "Allow", Action = ["s3:GetObject"], Resource = ["arn:aws:s3:::reports/{owner}/*"] }]
//! ```

use std::time::Duration;

use credbroker_provider_api::settings::Fields;
use credbroker_provider_api::{MAX_TEMPLATE_VALUE_LEN, ParamError, Params};
use serde_json::Value;

/// STS's limit on the plaintext of a session policy (inline and managed together count against
/// the packed size, which only STS can compute; it answers PackedPolicyTooLarge).
pub(crate) const SESSION_POLICY_MAX_CHARS: usize = 2048;
/// STS's floor and ceiling for DurationSeconds.
pub(crate) const MIN_DURATION: Duration = Duration::from_secs(900);
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(12 * 3600);
const DEFAULT_DURATION: Duration = Duration::from_secs(3600);
const MAX_POLICY_ARNS: usize = 10;
/// A session name is 2–64 characters of `[\w+=,.@-]`; credbroker appends `.` and the lease id.
const SESSION_NAME_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Grant {
    pub(crate) role_arn: String,
    pub(crate) external_id: Option<String>,
    /// Compact JSON, templates rendered.
    pub(crate) session_policy: Option<String>,
    pub(crate) policy_arns: Vec<String>,
    pub(crate) duration: Duration,
    pub(crate) session_name_prefix: String,
    pub(crate) transitive_tags: bool,
}

impl Grant {
    /// The role's name: the last segment of its ARN's resource (`role/path/NAME`).
    pub(crate) fn role_name(&self) -> &str {
        self.role_arn.rsplit('/').next().unwrap_or_default()
    }
}

/// Parses (and at load time checks) a grant's parameters, every problem at once. At load the
/// strings still hold placeholders: sizes are checked with every placeholder at its longest
/// rendering.
pub(crate) fn parse(params: &Params) -> Result<Grant, Vec<ParamError>> {
    let mut f = Fields::params(params);
    let role_arn = f
        .required::<String>("role_arn", "a role ARN")
        .unwrap_or_default();
    if !role_arn.is_empty() {
        if role_arn.contains('{') {
            // A claim must never choose the role: the role is the grant's whole authority.
            f.problem("role_arn", "must not hold placeholders");
        } else if let Err(e) = check_arn(&role_arn, "role", false) {
            f.problem("role_arn", e);
        }
    }
    const EXTERNAL_ID: &str = "2–1224 characters of letters, digits and +=,.@:/-";
    let external_id = f.get::<String>("external_id", EXTERNAL_ID);
    if let Some(id) = &external_id
        && !((2..=1224).contains(&id.len()) && id.chars().all(external_char))
    {
        f.problem("external_id", format!("must be {EXTERNAL_ID}"));
    }
    let session_policy = session_policy(&mut f);
    let policy_arns = policy_arns(&mut f);
    let duration = duration(&mut f);
    let session_name_prefix = match f.raw("role_session_name") {
        None => "credbroker".to_string(),
        Some(_) => f.string("role_session_name").unwrap_or_default(),
    };
    let transitive_tags = f.boolean("transitive_tags").unwrap_or(false);
    let errors = f.finish();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Grant {
        role_arn,
        external_id,
        session_policy,
        policy_arns,
        duration,
        session_name_prefix,
        transitive_tags,
    })
}

fn session_policy(f: &mut Fields<'_>) -> Option<String> {
    if let Some(Value::String(_)) = f.raw("session_policy") {
        f.problem(
            "session_policy",
            "write the policy as a TOML table (it is sent as JSON), not as a JSON string",
        );
        return None;
    }
    let policy = f.table("session_policy")?;
    check_policy(policy, f);
    serde_json::to_string(policy).ok()
}

fn external_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@:/-_".contains(c)
}

/// `arn:PARTITION:iam::ACCOUNT:KIND/[path/]NAME`. AWS-managed policies have the account `aws`.
fn check_arn(arn: &str, kind: &str, aws_account_ok: bool) -> Result<(), String> {
    let expected = format!("expected arn:aws:iam::123456789012:{kind}/NAME");
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(format!("{arn:?}: {expected}"));
    };
    let partition_ok = matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
        || partition.starts_with("aws-iso")
        || partition.starts_with("aws-eusc");
    let account_ok = (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()))
        || (aws_account_ok && account == "aws");
    let name = resource
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or_default();
    let name_ok = !name.is_empty()
        && name.len() <= if kind == "role" { 64 } else { 128 }
        && name.chars().all(session_char);
    if prefix == "arn"
        && partition_ok
        && service == "iam"
        && region.is_empty()
        && account_ok
        && name_ok
    {
        Ok(())
    } else {
        Err(format!("{arn:?}: {expected}"))
    }
}

fn policy_arns(f: &mut Fields<'_>) -> Vec<String> {
    let Some(arns) = f.get::<Vec<String>>("policy_arns", "a list of ARNs") else {
        return Vec::new();
    };
    if arns.len() > MAX_POLICY_ARNS {
        f.problem(
            "policy_arns",
            format!("STS accepts at most {MAX_POLICY_ARNS} managed session policies"),
        );
    }
    for (i, arn) in arns.iter().enumerate() {
        let key = format!("policy_arns[{i}]");
        if arn.contains('{') {
            f.problem(&key, "must not hold placeholders");
        } else if let Err(e) = check_arn(arn, "policy", true) {
            f.problem(&key, e);
        }
    }
    arns
}

/// `"1h"`, `"30m"` or a number of seconds, within STS's range.
fn duration(f: &mut Fields<'_>) -> Duration {
    let d = match f.raw("duration") {
        None => return DEFAULT_DURATION,
        Some(Value::String(s)) => credbroker_provider_api::parse_duration(s),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{n} is not a duration")),
        Some(other) => Err(format!("{other} is not a duration")),
    };
    match d {
        Ok(d) if (MIN_DURATION..=MAX_DURATION).contains(&d) => d,
        Ok(d) => {
            f.problem(
                "duration",
                format!(
                    "{}s is outside STS's range of 900s (15 minutes) to 43200s (12 hours)",
                    d.as_secs()
                ),
            );
            DEFAULT_DURATION
        }
        Err(v) => {
            f.problem("duration", format!("{v} (or a whole number of seconds)"));
            DEFAULT_DURATION
        }
    }
}

/// A session policy's shape, and its size with every placeholder at its longest rendering.
fn check_policy(policy: &Params, f: &mut Fields<'_>) {
    match policy.get("Statement") {
        Some(Value::Array(s)) if !s.is_empty() => {}
        Some(Value::Object(_)) => {}
        _ => f.problem(
            "session_policy.Statement",
            "is required (a policy without statements allows nothing)",
        ),
    }
    if let Some(v) = policy.get("Version")
        && v != "2012-10-17"
    {
        f.problem(
            "session_policy.Version",
            "must be \"2012-10-17\" (the older version has no policy variables)",
        );
    }
    let worst = worst_case_len(&Value::Object(policy.clone()));
    if worst > SESSION_POLICY_MAX_CHARS {
        f.problem(
            "session_policy",
            format!(
                "is {worst} characters as JSON with every placeholder at its longest \
                 ({MAX_TEMPLATE_VALUE_LEN} characters); STS accepts at most \
                 {SESSION_POLICY_MAX_CHARS}: shorten it, or move statements into a managed \
                 policy listed in policy_arns"
            ),
        );
    }
}

/// The compact JSON length of `value` once every placeholder is rendered at its longest.
pub(crate) fn worst_case_len(value: &Value) -> usize {
    let base = serde_json::to_string(value).map_or(usize::MAX, |s| s.len());
    let mut growth = 0usize;
    walk_strings(value, &mut |s| {
        for placeholder in placeholders(s) {
            growth += MAX_TEMPLATE_VALUE_LEN.saturating_sub(placeholder.len());
        }
    });
    base.saturating_add(growth)
}

fn walk_strings(value: &Value, f: &mut dyn FnMut(&str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| walk_strings(v, f)),
        Value::Object(map) => map.values().for_each(|v| walk_strings(v, f)),
        _ => {}
    }
}

/// The `{name}` placeholders of a template string, braces included (`{{` is a literal brace).
fn placeholders(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("{{") {
            rest = tail;
            continue;
        }
        match after.find('}') {
            Some(end) => {
                out.push(&after[..=end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// STS's session-name and source-identity character set: `[\w+=,.@-]`.
pub(crate) fn session_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// Replaces what STS would refuse with `_` and drops what is left over `max` characters.
pub(crate) fn sanitise(value: &str, max: usize) -> String {
    value
        .chars()
        .map(|c| if session_char(c) { c } else { '_' })
        .take(max)
        .collect()
}

/// `PREFIX.LEASE_ID`, within STS's 64 characters. The lease id is kept whole: it makes the
/// session name unique, lets `reconcile` deny a session whose answer never arrived, and lets an
/// operator find the lease from a CloudTrail record.
pub(crate) fn session_name(prefix: &str, lease_id: &str) -> String {
    let id = sanitise(lease_id, SESSION_NAME_MAX - 2);
    let room = SESSION_NAME_MAX - id.len() - 1;
    let prefix = sanitise(prefix, room);
    if prefix.is_empty() {
        format!("cb.{id}")
    } else {
        format!("{prefix}.{id}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(v: Value) -> Params {
        match v {
            Value::Object(m) => m,
            _ => Params::new(),
        }
    }

    fn errors(v: Value) -> Vec<String> {
        parse(&params(v))
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const ROLE: &str = "arn:aws:iam::123456789012:role/mcp/s3-read";

    #[test]
    fn a_full_grant_parses() {
        let g = parse(&params(json!({
            "role_arn": ROLE,
            "external_id": "prod-1",
            "duration": "30m",
            "role_session_name": "{owner}",
            "transitive_tags": true,
            "policy_arns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
            "session_policy": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/{owner}/*"}]}
        })))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(g.role_name(), "s3-read");
        assert_eq!(g.duration, Duration::from_secs(1800));
        assert!(g.transitive_tags);
        assert_eq!(
            g.session_policy.as_deref(),
            Some(
                r#"{"Statement":[{"Action":"s3:GetObject","Effect":"Allow","Resource":"arn:aws:s3:::b/{owner}/*"}],"Version":"2012-10-17"}"#
            )
        );
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let e = errors(json!({
            "role_arn": "arn:aws:s3:::bucket",
            "external_id": "x",
            "duration": "5m",
            "policy_arns": ["arn:aws:iam::aws:policy/A", 7],
            "session_policy": "{\"Statement\": []}",
            "transitive_tags": "yes",
            "role_session_name": "",
            "colour": "blue"
        }));
        for needle in [
            "colour: unknown parameter",
            "role_arn: \"arn:aws:s3:::bucket\": expected",
            "external_id: must be",
            "duration: 300s is outside",
            "policy_arns: must be a list",
            "session_policy: write the policy as a TOML table",
            "transitive_tags: must be true or false",
            "role_session_name: must be a non-empty string",
        ] {
            assert!(
                e.iter().any(|x| x.contains(needle)),
                "{needle} not in {e:#?}"
            );
        }
        assert!(
            errors(json!({}))
                .iter()
                .any(|x| x.starts_with("role_arn: is required"))
        );
        assert!(
            errors(json!({"role_arn": "arn:aws:iam::123456789012:role/{sub}"}))
                .iter()
                .any(|x| x.contains("must not hold placeholders"))
        );
        assert!(
            errors(json!({"role_arn": ROLE, "duration": "13h"}))
                .iter()
                .any(|x| x.contains("outside STS's range"))
        );
        assert!(
            errors(json!({"role_arn": ROLE, "session_policy": {"Version": "2012-10-17"}}))
                .iter()
                .any(|x| x.contains("Statement: is required"))
        );
        let many: Vec<String> = (0..11)
            .map(|i| format!("arn:aws:iam::aws:policy/P{i}"))
            .collect();
        assert!(
            errors(json!({"role_arn": ROLE, "policy_arns": many}))
                .iter()
                .any(|x| x.contains("at most 10"))
        );
    }

    #[test]
    fn the_policy_size_counts_placeholders_at_their_longest() {
        // 14 resources, each with {owner}: small as written, too large once rendered.
        let resources: Vec<String> = (0..14)
            .map(|i| format!("arn:aws:s3:::b{i}/{{owner}}/*"))
            .collect();
        let policy = json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": resources}]});
        assert!(serde_json::to_string(&policy).map_or(0, |s| s.len()) < SESSION_POLICY_MAX_CHARS);
        let e = errors(json!({"role_arn": ROLE, "session_policy": policy}));
        assert!(
            e.iter()
                .any(|x| x.contains("with every placeholder at its longest")),
            "{e:?}"
        );
        // `{{` is a literal brace, not a placeholder.
        assert_eq!(
            placeholders("a{{b}}{owner}c{task_id}"),
            ["{owner}", "{task_id}"]
        );
    }

    #[test]
    fn session_names_fit_sts_and_keep_the_lease_id() {
        let lease = "019a8f3e-5c1b-7d2e-8f00-123456789abc";
        let n = session_name("alice@example.com", lease);
        assert_eq!(n, format!("alice@example.com.{lease}"));
        let n = session_name(&"x y/z".repeat(40), lease);
        assert_eq!(n.len(), 64);
        assert!(n.ends_with(lease) && n.starts_with("x_y_zx_y_z"));
        assert!(n.chars().all(session_char));
        assert_eq!(session_name("", lease), format!("cb.{lease}"));
    }
}
