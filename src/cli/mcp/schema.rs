//! The tools' output schemas: what an AI client can rely on in `structuredContent`. Written by
//! hand because the shapes are the CLI's JSON (kept in one place there); a test checks each
//! tool's real output against its schema's required keys.

use std::sync::Arc;

use rmcp::model::JsonObject;
use serde_json::{Value, json};

fn object(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(JsonObject::new()),
    }
}

fn nullable(t: &str) -> Value {
    json!({ "type": [t, "null"] })
}

pub(super) fn lineage() -> Arc<JsonObject> {
    let lease = json!({
        "type": "object",
        "required": ["lease_id", "grant", "provider", "kind", "state"],
        "properties": {
            "lease_id": {"type": "string"}, "grant": {"type": "string"},
            "provider": {"type": "string"}, "kind": {"type": "string"},
            "role": {"type": "string"},
            "reference": nullable("string"),
            "state": {"type": "string", "description": "active, ending, revoked, expired, failed"},
            "issued": nullable("string"), "expires": nullable("string"), "revoked": nullable("string"),
        }
    });
    let call = json!({
        "type": ["object", "null"],
        "description": "The MCP call through `credbroker gateway` this task was begun for.",
        "properties": {
            "call_id": {"type": "string"}, "gateway": nullable("string"),
            "method": nullable("string"), "name": nullable("string"),
            "time": {"type": "string"}, "source": nullable("string"),
            "http_status": nullable("integer"), "duration_ms": nullable("integer"),
        }
    });
    let task = json!({
        "type": "object",
        "required": ["task_id", "tool", "workload", "state", "created", "leases"],
        "properties": {
            "task_id": {"type": "string"}, "tool": {"type": "string"},
            "workload": {"type": "string", "description": "The MCP server that began the task."},
            "peer_uid": {"type": "integer"}, "peer_pid": {"type": "integer"},
            "peer_exe": nullable("string"), "peer_unit": nullable("string"),
            "state": {"type": "string"}, "created": {"type": "string"},
            "ended": nullable("string"), "end_reason": nullable("string"),
            "call": call, "leases": {"type": "array", "items": lease},
        }
    });
    let token = json!({
        "type": "object",
        "required": ["fingerprint", "issuer", "subject", "tasks"],
        "properties": {
            "fingerprint": {"type": "string", "description": "sha256:… of the access token (never the token)."},
            "issuer": {"type": "string"}, "subject": {"type": "string"},
            "actors": {"type": "array", "items": {"type": "string"}},
            "jti": {"type": "string"}, "owner_source": {"type": "string"},
            "expires": {"type": "string"}, "tasks": {"type": "array", "items": task},
        }
    });
    object(json!({
        "type": "object",
        "description": "owner → agent (OAuth client) → token → MCP call → task → leases.",
        "required": ["owners", "truncated"],
        "properties": {
            "owners": {"type": "array", "items": {
                "type": "object",
                "required": ["owner", "clients"],
                "properties": {
                    "owner": nullable("string"),
                    "clients": {"type": "array", "items": {
                        "type": "object",
                        "required": ["client_id", "tokens"],
                        "properties": {
                            "client_id": {"type": "string"},
                            "tokens": {"type": "array", "items": token},
                        }
                    }}
                }
            }},
            "truncated": {"type": "boolean", "description": "More tasks matched than the limit."},
        }
    }))
}

pub(super) fn groups() -> Arc<JsonObject> {
    object(json!({
        "type": "object",
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "description": "One object per group: each group_by key (null when the record has none) and `count`.",
                "items": {
                    "type": "object",
                    "required": ["count"],
                    "properties": {"count": {"type": "integer"}},
                    "additionalProperties": nullable("string"),
                }
            }
        }
    }))
}

pub(super) fn tasks() -> Arc<JsonObject> {
    object(json!({
        "type": "object",
        "required": ["tasks"],
        "properties": {
            "tasks": {"type": "array", "items": {
                "type": "object",
                "required": ["id", "state", "workload", "tool", "principal", "leases"],
                "properties": {
                    "id": {"type": "string"}, "state": {"type": "string"},
                    "workload": {"type": "string"}, "tool": {"type": "string"},
                    "principal": {"type": "object", "properties": {
                        "issuer": {"type": "string"}, "subject": {"type": "string"},
                        "client_id": {"type": "string"}, "owner": nullable("string"),
                        "token_fingerprint": {"type": "string"}, "jti": {"type": "string"},
                        "scopes": {"type": "array", "items": {"type": "string"}},
                    }},
                    "created_at": nullable("string"), "expires_at": nullable("string"),
                    "ended_at": nullable("string"), "end_reason": nullable("string"),
                    "leases": {"type": "array", "items": {"type": "object"}},
                }
            }}
        }
    }))
}

pub(super) fn revoked() -> Arc<JsonObject> {
    object(json!({
        "type": "object",
        "required": ["revoked"],
        "properties": {
            "revoked": {"type": "array", "items": {"type": "string"},
                        "description": "The ids of the tasks ended; their leases are revoked at the providers."}
        }
    }))
}
