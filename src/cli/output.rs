//! Rendering: JSON, tables, shell `export` lines, AWS `credential_process`.

use std::time::SystemTime;

use credbroker_client::{Credential, ExposeSecret as _};
use serde_json::{Value, json};

use crate::proto::v1;
use crate::time::rfc3339;

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub(super) enum Output {
    Table,
    Json,
}

fn time(t: &Option<prost_types::Timestamp>) -> Value {
    match t.as_ref().and_then(|t| SystemTime::try_from(*t).ok()) {
        Some(t) => Value::String(rfc3339(t)),
        None => Value::Null,
    }
}

fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.into())
    }
}

pub(super) fn task_json(t: &v1::Task) -> Value {
    let p = t.principal.clone().unwrap_or_default();
    let peer = t.peer.clone().unwrap_or_default();
    json!({
        "id": t.id,
        "state": t.state,
        "workload": t.workload,
        "tool": t.tool,
        "principal": {
            "issuer": p.issuer, "subject": p.subject, "client_id": p.client_id,
            "owner": opt(&p.owner), "owner_source": p.owner_source, "actors": p.actors,
            "token_fingerprint": p.token_fingerprint, "jti": p.jti, "scopes": p.scopes,
            "token_expires_at": time(&p.token_expires_at),
        },
        "peer": { "uid": peer.uid, "gid": peer.gid, "pid": peer.pid, "exe": opt(&peer.exe), "unit": opt(&peer.unit) },
        "created_at": time(&t.created_at),
        "expires_at": time(&t.expires_at),
        "ended_at": time(&t.ended_at),
        "end_reason": opt(&t.end_reason),
        "leases": t.leases.iter().map(|l| json!({
            "id": l.id, "grant": l.grant, "provider": l.provider, "kind": l.kind, "state": l.state,
            "issued_at": time(&l.issued_at), "expires_at": time(&l.expires_at), "revoked_at": time(&l.revoked_at),
            "reference": opt(&l.reference), "revoke_attempts": l.revoke_attempts, "last_error": opt(&l.last_error),
        })).collect::<Vec<_>>(),
    })
}

fn system_time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// The credentials with their secrets: printed only by `task begin`, for the workload itself
/// (one of the few places the CLI exposes a secret).
pub(super) fn credentials_json(creds: &[Credential]) -> Value {
    Value::Array(
        creds
            .iter()
            .map(|c| {
                let secret: serde_json::Map<String, Value> = c
                    .secret
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.expose_secret().into())))
                    .collect();
                json!({
                    "lease_id": c.lease_id, "grant": c.grant, "provider": c.provider, "kind": c.kind,
                    "expires_at": system_time(c.expires_at), "public": c.public, "secret": secret,
                })
            })
            .collect(),
    )
}

pub(super) fn tasks_table(tasks: &[v1::Task]) -> String {
    let mut rows = vec![
        [
            "TASK", "STATE", "WORKLOAD", "OWNER", "CLIENT", "GRANTS", "EXPIRES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for t in tasks {
        let p = t.principal.clone().unwrap_or_default();
        let grants: Vec<String> = t
            .leases
            .iter()
            .map(|l| format!("{}:{}", l.grant, l.state))
            .collect();
        rows.push(vec![
            t.id.clone(),
            t.state.clone(),
            t.workload.clone(),
            if p.owner.is_empty() {
                "-".into()
            } else {
                p.owner
            },
            p.client_id,
            grants.join(","),
            time(&t.expires_at).as_str().unwrap_or("-").to_string(),
        ]);
    }
    table(&rows)
}

pub(super) fn task_detail(t: &v1::Task) -> String {
    let p = t.principal.clone().unwrap_or_default();
    let peer = t.peer.clone().unwrap_or_default();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<18}{v}\n"));
    line("task", t.id.clone());
    line(
        "state",
        if t.end_reason.is_empty() {
            t.state.clone()
        } else {
            format!("{} ({})", t.state, t.end_reason)
        },
    );
    line("workload", format!("{} (tool {})", t.workload, t.tool));
    line(
        "peer",
        format!(
            "uid {} gid {} pid {} {} {}",
            peer.uid, peer.gid, peer.pid, peer.exe, peer.unit
        ),
    );
    line(
        "owner",
        format!(
            "{} (from {})",
            if p.owner.is_empty() { "-" } else { &p.owner },
            p.owner_source
        ),
    );
    line("client", p.client_id.clone());
    line("subject", p.subject.clone());
    if !p.actors.is_empty() {
        line("actors", p.actors.join(" ← "));
    }
    line(
        "token",
        format!("sha256:{} jti {}", p.token_fingerprint, p.jti),
    );
    line("scopes", p.scopes.join(" "));
    line(
        "created",
        time(&t.created_at).as_str().unwrap_or("-").into(),
    );
    line(
        "expires",
        time(&t.expires_at).as_str().unwrap_or("-").into(),
    );
    if t.ended_at.is_some() {
        line("ended", time(&t.ended_at).as_str().unwrap_or("-").into());
    }
    for l in &t.leases {
        let mut s = format!(
            "{} {} via {} [{}] ref {}",
            l.id, l.grant, l.provider, l.state, l.reference
        );
        if l.state == "expiring" {
            s.push_str(&format!(
                " — cannot be revoked; works until {}",
                time(&l.expires_at).as_str().unwrap_or("?")
            ));
        }
        if l.revoke_attempts > 0 {
            s.push_str(&format!(
                " ({} revocation attempts; last error: {})",
                l.revoke_attempts, l.last_error
            ));
        }
        line("lease", s);
    }
    out
}

pub(super) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Quotes a value for a POSIX shell.
pub(super) fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

pub(super) fn env_name(prefix: Option<&str>, key: &str) -> String {
    let raw = match prefix {
        Some(p) => format!("{p}_{key}"),
        None => key.to_string(),
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `export NAME='value'` lines. With one credential the field names are used as they are
/// (`AWS_ACCESS_KEY_ID`); with several, each is prefixed by its grant.
pub(super) fn env_lines(task_id: &str, creds: &[Credential]) -> String {
    let mut out = format!("export CREDBROKER_TASK_ID={}\n", shell_quote(task_id));
    for (name, value) in env_vars(creds) {
        out.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    out
}

/// Each credential field as an environment variable: `USERNAME`, `PASSWORD`, `AWS_…` for a
/// single credential; prefixed with the grant (`ORDERS_DB_PASSWORD`) when there are several —
/// except the one AWS credential of a task, whose `AWS_*` names the SDKs read as they are.
/// The values borrow the secrets: `task begin --output env` prints them, `exec` hands them to
/// the command's environment and nowhere else.
pub(super) fn env_vars(creds: &[Credential]) -> Vec<(String, &str)> {
    let prefixed = creds.len() > 1;
    let sole_aws = creds.iter().filter(|c| c.kind == "aws").count() == 1;
    let mut vars = Vec::new();
    for c in creds {
        let prefix = (prefixed && !(sole_aws && c.kind == "aws")).then_some(c.grant.as_str());
        let secret = c.secret.iter().map(|(k, v)| (k, v.expose_secret()));
        for (k, v) in c.public.iter().map(|(k, v)| (k, v.as_str())).chain(secret) {
            vars.push((env_name(prefix, k), v));
        }
    }
    vars
}

/// The AWS SDK `credential_process` document (Version 1) for the task's AWS credential.
pub(super) fn credential_process(creds: &[Credential]) -> anyhow::Result<Value> {
    let c = creds
        .iter()
        .find(|c| c.secret.contains_key("AWS_SECRET_ACCESS_KEY"))
        .ok_or_else(|| anyhow::anyhow!("the task holds no AWS credential"))?;
    let get = |k: &str| {
        c.secret
            .get(k)
            .map(|v| v.expose_secret().to_string())
            .or_else(|| c.public.get(k).cloned())
    };
    let mut doc = json!({
        "Version": 1,
        "AccessKeyId": get("AWS_ACCESS_KEY_ID").unwrap_or_default(),
        "SecretAccessKey": get("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
        "Expiration": system_time(c.expires_at),
    });
    if let Some(token) = get("AWS_SESSION_TOKEN") {
        doc["SessionToken"] = Value::String(token);
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(
        grant: &str,
        kind: &str,
        public: &[(&str, &str)],
        secret: &[(&str, &str)],
    ) -> Credential {
        Credential {
            lease_id: format!("l-{grant}"),
            grant: grant.into(),
            provider: kind.into(),
            kind: kind.into(),
            expires_at: None,
            public: public
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            secret: secret
                .iter()
                .map(|(k, v)| (k.to_string(), credbroker_client::SecretString::from(*v)))
                .collect(),
        }
    }

    fn names(creds: &[Credential]) -> Vec<String> {
        let mut n: Vec<String> = env_vars(creds).into_iter().map(|(k, _)| k).collect();
        n.sort();
        n
    }

    #[test]
    fn env_names_are_bare_for_one_credential_prefixed_for_several_but_aws_stays_readable() {
        let db = cred(
            "orders-db",
            "vault",
            &[("username", "u")],
            &[("password", "p")],
        );
        let s3 = cred(
            "reports-s3",
            "aws",
            &[("AWS_ACCESS_KEY_ID", "AKIA")],
            &[("AWS_SECRET_ACCESS_KEY", "s")],
        );
        assert_eq!(names(std::slice::from_ref(&db)), ["PASSWORD", "USERNAME"]);
        let both = [db, s3];
        assert_eq!(
            names(&both),
            [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "ORDERS_DB_PASSWORD",
                "ORDERS_DB_USERNAME"
            ]
        );
        // Two AWS credentials would collide: both are prefixed.
        let two = [
            cred("a", "aws", &[("AWS_ACCESS_KEY_ID", "1")], &[]),
            cred("b", "aws", &[("AWS_ACCESS_KEY_ID", "2")], &[]),
        ];
        assert_eq!(names(&two), ["A_AWS_ACCESS_KEY_ID", "B_AWS_ACCESS_KEY_ID"]);
    }

    #[test]
    fn shell_quoting_survives_hostile_values() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(
            env_name(Some("orders-db"), "password"),
            "ORDERS_DB_PASSWORD"
        );
    }
}
