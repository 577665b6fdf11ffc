//! The deny list of `revocation = "deny-session"`: an inline policy on the role that denies
//! everything to the sessions of ended tasks.
//!
//! An STS session cannot be deleted. What IAM can do is deny it: a role's inline policy applies
//! to every session of the role, including those already issued, so a `Deny *` conditioned on
//! `aws:userid` = `ROLE_ID:SESSION_NAME` ends one session within IAM's propagation delay
//! (seconds). This module is the pure part: it merges new entries into the policy document,
//! prunes entries whose sessions have expired anyway, and falls back to a cut-off when the
//! document would not fit.
//!
//! The document credbroker writes looks like this (one statement per five-minute expiry
//! bucket, so pruning is dropping whole statements):
//!
//! ```json
//! {"Version":"2012-10-17","Statement":[
//!   {"Sid":"CredbrokerDenyUntil202611221415","Effect":"Deny","Action":"*","Resource":"*",
//!    "Condition":{"StringLike":{"aws:userid":["AROA…:alice.019a…","*:bob.019b…"]}}},
//!   {"Sid":"CredbrokerCutoffUntil202611230210","Effect":"Deny","Action":"*","Resource":"*",
//!    "Condition":{"DateLessThan":{"aws:TokenIssueTime":"2026-11-22T14:10:03Z"}}}]}
//! ```
//!
//! Statements whose `Sid` does not start with `Credbroker` are someone else's and are kept
//! as they are.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::grant::MAX_DURATION;

const DENY_PREFIX: &str = "CredbrokerDenyUntil";
const CUTOFF_PREFIX: &str = "CredbrokerCutoffUntil";
const BUCKET: u64 = 300;

/// One session to deny.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// `AROA…:SESSION_NAME`, or `*:SESSION_NAME` when the role id is not known (reconcile).
    pub(crate) userid: String,
    /// When the session expires on its own; the entry is pruned after that.
    pub(crate) until: SystemTime,
}

/// What writing the document achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Each entry's session is denied by name.
    Denied,
    /// The document was full: every session of the role issued before `issued_before` is
    /// denied, the entries' sessions among them.
    CutOff { issued_before: SystemTime },
}

/// The merged document, ready to write.
#[derive(Debug, PartialEq)]
pub(crate) struct Merged {
    pub(crate) document: String,
    pub(crate) outcome: Outcome,
    /// Statements pruned because their sessions had expired.
    pub(crate) pruned: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MergeError {
    /// The existing document is not JSON credbroker can read; it is left untouched.
    Unreadable(String),
    /// Even a single cut-off statement does not fit beside the statements that are not
    /// credbroker's.
    Full { chars: usize, max: usize },
}

/// Merges `entries` into `existing` (the role's current inline policy, if any), pruning
/// expired statements. `force_cutoff` is set after IAM refused a write as too large (the role's
/// inline policies together are over IAM's limit, which counts policies this module cannot see).
pub(crate) fn merge(
    existing: Option<&str>,
    entries: &[Entry],
    now: SystemTime,
    max_chars: usize,
    force_cutoff: bool,
) -> Result<Merged, MergeError> {
    let mut statements = match existing {
        None => Vec::new(),
        Some(text) => statements_of(text)?,
    };
    let before = statements.len();
    statements.retain(|s| until_of(s).is_none_or(|until| until > now));
    let pruned = before - statements.len();
    if !force_cutoff {
        let mut denied = statements.clone();
        for e in entries {
            add(&mut denied, e);
        }
        let document = render(&denied);
        if policy_chars(&document) <= max_chars {
            return Ok(Merged {
                document,
                outcome: Outcome::Denied,
                pruned,
            });
        }
    }
    // Every session credbroker denied, and every session being denied now, was issued before
    // this instant, so one cut-off replaces them all. Rounded up past the current second:
    // `aws:TokenIssueTime` has whole seconds.
    let issued_before = UNIX_EPOCH + Duration::from_secs(secs(now) + 2);
    statements.retain(|s| !is_ours(s));
    statements.push(json!({
        "Sid": format!("{CUTOFF_PREFIX}{}", stamp(issued_before + MAX_DURATION)),
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": {"DateLessThan": {"aws:TokenIssueTime": rfc3339(issued_before)}},
    }));
    let document = render(&statements);
    let chars = policy_chars(&document);
    if chars > max_chars {
        return Err(MergeError::Full {
            chars,
            max: max_chars,
        });
    }
    Ok(Merged {
        document,
        outcome: Outcome::CutOff { issued_before },
        pruned,
    })
}

/// IAM counts a policy's size without whitespace.
pub(crate) fn policy_chars(document: &str) -> usize {
    document.chars().filter(|c| !c.is_whitespace()).count()
}

fn statements_of(text: &str) -> Result<Vec<Value>, MergeError> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| MergeError::Unreadable(e.to_string()))?;
    match doc.get("Statement") {
        Some(Value::Array(s)) => Ok(s.clone()),
        Some(s @ Value::Object(_)) => Ok(vec![s.clone()]),
        None => Ok(Vec::new()),
        Some(_) => Err(MergeError::Unreadable("Statement is not a list".into())),
    }
}

fn render(statements: &[Value]) -> String {
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

fn sid(statement: &Value) -> &str {
    statement
        .get("Sid")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn is_ours(statement: &Value) -> bool {
    sid(statement).starts_with("Credbroker")
}

/// The instant after which one of credbroker's statements denies nothing that still works.
/// `None` for anyone else's statements and for ours whose Sid does not parse (kept, not
/// guessed at).
fn until_of(statement: &Value) -> Option<SystemTime> {
    let s = sid(statement);
    let stamp = s
        .strip_prefix(DENY_PREFIX)
        .or_else(|| s.strip_prefix(CUTOFF_PREFIX))?;
    parse_stamp(stamp)
}

fn add(statements: &mut Vec<Value>, entry: &Entry) {
    let bucket = UNIX_EPOCH + Duration::from_secs(secs(entry.until).div_ceil(BUCKET) * BUCKET);
    let sid = format!("{DENY_PREFIX}{}", stamp(bucket));
    let index = match statements.iter().position(|s| self::sid(s) == sid) {
        Some(i) => i,
        None => {
            statements.push(json!({
                "Sid": sid,
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"StringLike": {"aws:userid": []}},
            }));
            statements.len() - 1
        }
    };
    let Some(list) = statements[index]
        .pointer_mut("/Condition/StringLike/aws:userid")
        .and_then(|v| {
            if let Value::String(one) = v {
                *v = Value::Array(vec![Value::String(std::mem::take(one))]);
            }
            v.as_array_mut()
        })
    else {
        return;
    };
    if !list.iter().any(|v| v.as_str() == Some(&entry.userid)) {
        list.push(Value::String(entry.userid.clone()));
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYYMMDDHHMM` (UTC): IAM allows only letters and digits in a Sid.
fn stamp(t: SystemTime) -> String {
    rfc3339(t)
        .chars()
        .filter(char::is_ascii_digit)
        .take(12)
        .collect()
}

fn parse_stamp(s: &str) -> Option<SystemTime> {
    if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let text = format!(
        "{}-{}-{}T{}:{}:00Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[8..10],
        &s[10..12]
    );
    humantime::parse_rfc3339(&text).ok()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(credbroker_provider_api::clamp_rfc3339(t)).to_string()
}

/// The policy document IAM returns is URL-encoded (RFC 3986); some IAM-compatible servers
/// return it plain.
pub(crate) fn decode_document(text: &str) -> String {
    if text.trim_start().starts_with('{') {
        return text.to_string();
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap_or(UNIX_EPOCH)
    }

    fn entry(userid: &str, until: &str) -> Entry {
        Entry {
            userid: userid.into(),
            until: at(until),
        }
    }

    fn doc(m: &Merged) -> Value {
        serde_json::from_str(&m.document).unwrap_or(Value::Null)
    }

    const NOW: &str = "2026-11-22T10:00:00Z";

    #[test]
    fn entries_are_bucketed_by_expiry_and_merged_into_an_existing_document() {
        let first = merge(
            None,
            &[
                entry("AROA1:a.1", "2026-11-22T10:31:10Z"),
                entry("AROA1:b.2", "2026-11-22T10:33:00Z"),
                entry("*:c.3", "2026-11-22T11:00:00Z"),
            ],
            at(NOW),
            10_240,
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(first.outcome, Outcome::Denied);
        let d = doc(&first);
        assert_eq!(d["Statement"].as_array().map(Vec::len), Some(2));
        assert_eq!(d["Statement"][0]["Sid"], "CredbrokerDenyUntil202611221035");
        assert_eq!(
            d["Statement"][0]["Condition"]["StringLike"]["aws:userid"],
            json!(["AROA1:a.1", "AROA1:b.2"])
        );
        assert_eq!(d["Statement"][0]["Effect"], "Deny");
        assert_eq!(d["Statement"][1]["Sid"], "CredbrokerDenyUntil202611221100");
        // Merging again: same bucket grows, duplicates are not repeated.
        let second = merge(
            Some(&first.document),
            &[
                entry("AROA1:a.1", "2026-11-22T10:31:10Z"),
                entry("AROA1:d.4", "2026-11-22T10:34:59Z"),
            ],
            at(NOW),
            10_240,
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            doc(&second)["Statement"][0]["Condition"]["StringLike"]["aws:userid"],
            json!(["AROA1:a.1", "AROA1:b.2", "AROA1:d.4"])
        );
    }

    #[test]
    fn expired_statements_are_pruned_and_foreign_ones_kept() {
        let existing = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "CredbrokerDenyUntil202611220955", "Effect": "Deny", "Action": "*", "Resource": "*",
             "Condition": {"StringLike": {"aws:userid": "AROA1:old.1"}}},
            {"Sid": "CredbrokerCutoffUntil202611220900", "Effect": "Deny", "Action": "*", "Resource": "*",
             "Condition": {"DateLessThan": {"aws:TokenIssueTime": "2026-11-21T21:00:00Z"}}},
            {"Sid": "CredbrokerDenyUntil202611221005", "Effect": "Deny", "Action": "*", "Resource": "*",
             "Condition": {"StringLike": {"aws:userid": "AROA1:live.2"}}},
            {"Sid": "OperatorsOwn", "Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": "*"},
            {"Effect": "Deny", "Action": "iam:*", "Resource": "*"}
        ]})
        .to_string();
        let m = merge(
            Some(&existing),
            &[entry("AROA1:new.3", "2026-11-22T10:04:00Z")],
            at(NOW),
            10_240,
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(m.pruned, 2);
        let sids: Vec<String> = doc(&m)["Statement"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| sid(s).to_string())
            .collect();
        assert_eq!(
            sids,
            ["CredbrokerDenyUntil202611221005", "OperatorsOwn", ""]
        );
        // The single-string condition became a list holding both sessions.
        assert_eq!(
            doc(&m)["Statement"][0]["Condition"]["StringLike"]["aws:userid"],
            json!(["AROA1:live.2", "AROA1:new.3"])
        );
        // URL-encoded, as IAM returns it.
        let encoded = "%7B%22Statement%22%3A%5B%5D%7D";
        assert_eq!(decode_document(encoded), r#"{"Statement":[]}"#);
        assert_eq!(decode_document("{\"a\":1}"), "{\"a\":1}");
    }

    #[test]
    fn a_full_document_falls_back_to_a_token_issue_time_cutoff() {
        let many: Vec<Entry> = (0..200)
            .map(|i| {
                entry(
                    &format!("AROAEXAMPLEROLEID:owner{i}.019a8f3e-5c1b-7d2e-8f00-123456789abc"),
                    "2026-11-22T10:30:00Z",
                )
            })
            .collect();
        let existing = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "OperatorsOwn", "Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": "*"}]})
        .to_string();
        let m = merge(Some(&existing), &many, at(NOW), 10_240, false)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let issued_before = at("2026-11-22T10:00:02Z");
        assert_eq!(m.outcome, Outcome::CutOff { issued_before });
        let d = doc(&m);
        assert_eq!(d["Statement"][0]["Sid"], "OperatorsOwn");
        assert_eq!(
            d["Statement"][1]["Sid"],
            "CredbrokerCutoffUntil202611222200"
        );
        assert_eq!(
            d["Statement"][1]["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
            "2026-11-22T10:00:02Z"
        );
        assert!(policy_chars(&m.document) < 400);
        // IAM said the role's policies are too large: cut off without trying.
        let forced =
            merge(None, &many[..1], at(NOW), 10_240, true).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(matches!(forced.outcome, Outcome::CutOff { .. }));
        // A later cut-off replaces the earlier one (and every deny entry).
        let again = merge(
            Some(&m.document),
            &many[..1],
            at("2026-11-22T10:10:00Z"),
            300,
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(doc(&again)["Statement"].as_array().map(Vec::len), Some(2));
        // Nothing fits beside a large foreign statement: an error, and nothing is written.
        assert!(matches!(
            merge(Some(&existing), &many, at(NOW), 100, false),
            Err(MergeError::Full { max: 100, .. })
        ));
        assert!(matches!(
            merge(Some("not json"), &many, at(NOW), 10_240, false),
            Err(MergeError::Unreadable(_))
        ));
    }
}
