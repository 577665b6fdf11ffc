//! Audit records as OCSF 1.5.0 events (the Open Cybersecurity Schema Framework), for SIEMs that
//! ingest OCSF (Security Lake, Splunk, Sentinel…). The mapping is documented in docs/operations.md
//! ("Audit trail"); in short:
//!
//! | credbroker event                              | OCSF class (uid)          | activity        |
//! |-----------------------------------------------|---------------------------|-----------------|
//! | token_accepted, token_rejected, peer_rejected, token_presented_by_wrong_workload | Authentication (3002) | Logon (1) |
//! | lease_issued, lease_issue_failed              | Account Change (3001)     | Create (1)      |
//! | lease_revoked, lease_revocation_failed, lease_reconciled | Account Change (3001) | Delete (6) |
//! | lease_expired_unrevoked                       | Account Change (3001)     | Disable (5)     |
//! | lease_renewed                                 | Account Change (3001)     | Other (99)      |
//! | task_*, request_denied, operator_revoke, daemon_started, audit_pruned | API Activity (6003) | Create/Update/Delete/Other |
//!
//! A credential is an account in OCSF's sense (Account Change's `user`): its `uid` is the lease
//! id. The human owner and the agent are the `actor` (`actor.user`, `actor.app_name` = OAuth
//! client), the MCP server's process is `actor.process`, and the workload is `src_endpoint`.
//! What OCSF has no place for (task, grant, provider, token fingerprint, detail) is under
//! `unmapped.credbroker`. Like every export, it carries identifiers and fingerprints only.

use serde_json::{Map, Value, json};

use super::AuditRecord;

pub const VERSION: &str = "1.5.0";

struct Class {
    category_uid: u32,
    class_uid: u32,
    activity_id: u32,
    activity_name: &'static str,
}

const fn class(
    category_uid: u32,
    class_uid: u32,
    activity_id: u32,
    activity_name: &'static str,
) -> Class {
    Class {
        category_uid,
        class_uid,
        activity_id,
        activity_name,
    }
}

fn classify(event: &str) -> Class {
    use super::event::*;
    match event {
        TOKEN_ACCEPTED | TOKEN_REJECTED | TOKEN_WRONG_WORKLOAD | PEER_REJECTED => {
            class(3, 3002, 1, "Logon")
        }
        LEASE_ISSUED | LEASE_ISSUE_FAILED => class(3, 3001, 1, "Create"),
        LEASE_REVOKED | LEASE_REVOCATION_FAILED | LEASE_RECONCILED => class(3, 3001, 6, "Delete"),
        LEASE_EXPIRED_UNREVOKED => class(3, 3001, 5, "Disable"),
        LEASE_RENEWED => class(3, 3001, 99, "Other"),
        TASK_OPENED | TASK_BEGUN | REQUEST_DENIED => class(6, 6003, 1, "Create"),
        TASK_RENEWED => class(6, 6003, 3, "Update"),
        TASK_ENDING | TASK_ENDED | OPERATOR_REVOKE | AUDIT_PRUNED => class(6, 6003, 4, "Delete"),
        _ => class(6, 6003, 99, "Other"),
    }
}

fn severity(outcome: &str) -> (u32, &'static str) {
    match outcome {
        "success" => (1, "Informational"),
        "denied" => (3, "Medium"),
        _ => (4, "High"),
    }
}

fn put(m: &mut Map<String, Value>, key: &str, v: Option<&String>) {
    if let Some(v) = v {
        m.insert(key.into(), Value::String(v.clone()));
    }
}

/// The human (or service) on whose behalf, and the agent, as OCSF's actor.
fn actor(r: &AuditRecord) -> Value {
    let mut actor = Map::new();
    let mut user = Map::new();
    put(&mut user, "uid", r.subject.as_ref());
    put(&mut user, "name", r.owner.as_ref().or(r.subject.as_ref()));
    if !user.is_empty() {
        actor.insert("user".into(), Value::Object(user));
    }
    put(&mut actor, "app_name", r.client_id.as_ref());
    if let Some(p) = &r.peer {
        let mut process = json!({ "pid": p.pid, "user": { "uid": p.uid.to_string() } });
        if let Some(exe) = &p.exe {
            process["path"] = json!(exe);
        }
        actor.insert("process".into(), process);
    }
    if actor.is_empty() {
        actor.insert("app_name".into(), json!("credbroker"));
    }
    Value::Object(actor)
}

/// The record as one OCSF event.
pub fn event(r: &AuditRecord) -> Value {
    let c = classify(&r.event);
    let (severity_id, severity_name) = severity(&r.outcome);
    let (status_id, status) = if r.outcome == "success" {
        (1, "Success")
    } else {
        (2, "Failure")
    };
    let mut metadata = json!({
        "version": VERSION,
        "product": {
            "name": "credbroker",
            "vendor_name": "credbroker",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "uid": r.seq.to_string(),
        "sequence": r.seq,
        "log_name": "audit",
        "event_code": r.event,
    });
    if let Some(t) = &r.task_id {
        metadata["correlation_uid"] = json!(t);
    }
    let mut e = json!({
        "category_uid": c.category_uid,
        "class_uid": c.class_uid,
        "activity_id": c.activity_id,
        "activity_name": c.activity_name,
        "type_uid": c.class_uid * 100 + c.activity_id,
        "time": r.at_ms,
        "severity_id": severity_id,
        "severity": severity_name,
        "status_id": status_id,
        "status": status,
        "message": r.event,
        "metadata": metadata,
        "actor": actor(r),
    });
    if let Some(reason) = &r.reason {
        e["status_detail"] = json!(reason);
    }
    let mut src = Map::new();
    src.insert("svc_name".into(), json!("credbroker"));
    put(&mut src, "name", r.workload.as_ref());
    e["src_endpoint"] = Value::Object(src);
    match c.class_uid {
        3002 => {
            // Who authenticated: the token's subject, or only the peer when no token got that far.
            let user = match (&r.subject, &r.peer) {
                (Some(sub), _) => json!({ "uid": sub, "name": r.owner.as_ref().unwrap_or(sub) }),
                (None, Some(p)) => {
                    json!({ "uid": p.uid.to_string(), "type_id": 99, "type": "unix peer" })
                }
                (None, None) => json!({ "name": "unknown" }),
            };
            e["user"] = user;
            e["auth_protocol_id"] = json!(6);
            e["auth_protocol"] = json!("OAUTH 2.0");
            if let Some(w) = &r.workload {
                e["service"] = json!({ "name": w });
            }
        }
        3001 => {
            let mut user = json!({
                "uid": r.lease_id.clone().unwrap_or_default(),
                "type_id": 99,
                "type": "credbroker lease",
            });
            if let Some(g) = &r.grant {
                user["name"] = json!(g);
            }
            e["user"] = user;
        }
        _ => {
            e["api"] = json!({
                "operation": r.event,
                "service": { "name": "credbroker" },
            });
        }
    }
    let mut unmapped = Map::new();
    put(&mut unmapped, "task_id", r.task_id.as_ref());
    put(&mut unmapped, "lease_id", r.lease_id.as_ref());
    put(&mut unmapped, "grant", r.grant.as_ref());
    put(&mut unmapped, "provider", r.provider.as_ref());
    put(&mut unmapped, "tool", r.tool.as_ref());
    put(&mut unmapped, "issuer", r.issuer.as_ref());
    put(&mut unmapped, "owner_source", r.owner_source.as_ref());
    put(
        &mut unmapped,
        "token_fingerprint",
        r.token_fingerprint.as_ref(),
    );
    put(&mut unmapped, "jti", r.jti.as_ref());
    if !r.actors.is_empty() {
        unmapped.insert("actors".into(), json!(r.actors));
    }
    if let Some(unit) = r.peer.as_ref().and_then(|p| p.unit.as_ref()) {
        unmapped.insert("peer_unit".into(), json!(unit));
    }
    if !r.detail.is_empty() {
        unmapped.insert("detail".into(), Value::Object(r.detail.clone()));
    }
    e["unmapped"] = json!({ "credbroker": unmapped });
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Outcome, PeerRecord, event};

    #[test]
    fn classes_ids_and_the_owner_as_actor() {
        let mut r = AuditRecord::new(event::LEASE_ISSUED, Outcome::Success, std::time::UNIX_EPOCH)
            .lease("L1", "orders-db-read", "vault");
        r.seq = 7;
        r.owner = Some("alice@example.com".into());
        r.subject = Some("alice".into());
        r.client_id = Some("agent-1".into());
        r.peer = Some(PeerRecord {
            uid: 1000,
            gid: 1000,
            pid: 42,
            exe: Some("/usr/bin/mcp".into()),
            unit: None,
        });
        let e = event(&r);
        assert_eq!(e["class_uid"], 3001);
        assert_eq!(e["type_uid"], 300101);
        assert_eq!(e["user"]["uid"], "L1");
        assert_eq!(e["actor"]["user"]["name"], "alice@example.com");
        assert_eq!(e["actor"]["app_name"], "agent-1");
        assert_eq!(e["actor"]["process"]["pid"], 42);
        assert_eq!(e["unmapped"]["credbroker"]["grant"], "orders-db-read");
        assert_eq!(e["metadata"]["uid"], "7");

        let denied = AuditRecord::new(
            event::TOKEN_REJECTED,
            Outcome::Denied,
            std::time::UNIX_EPOCH,
        )
        .reason(crate::record::reason::EXPIRED);
        let e = event(&denied);
        assert_eq!(
            (e["class_uid"].clone(), e["status_id"].clone()),
            (json!(3002), json!(2))
        );
        assert_eq!(e["status_detail"], "expired");
        assert_eq!(e["severity_id"], 3);

        let e = event(&AuditRecord::new(
            event::TASK_ENDED,
            Outcome::Success,
            std::time::UNIX_EPOCH,
        ));
        assert_eq!(
            (e["class_uid"].clone(), e["activity_id"].clone()),
            (json!(6003), json!(4))
        );
        assert_eq!(e["api"]["operation"], "task_ended");
    }
}
