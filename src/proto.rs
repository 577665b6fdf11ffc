//! Generated gRPC types (from `proto/credbroker/v1`), and conversions from the broker's types.

#![allow(unreachable_pub, clippy::all, missing_docs, unused_qualifications)]

pub mod v1 {
    tonic::include_proto!("credbroker.v1");
    // The messages build.rs maps to the client crate (its own `broker_client` is shadowed by
    // the one generated above, which is the same code).
    pub use credbroker_client::proto::v1::*;
}

/// The encoded descriptor set, for the reflection service.
pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("credbroker_descriptor");

use std::time::SystemTime;

use crate::journal::read::TaskView;
use crate::journal::rows::{LeaseRow, TaskRow};
use crate::time::from_ms;

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn ts_ms(ms: i64) -> Option<prost_types::Timestamp> {
    Some(timestamp(from_ms(ms)))
}

pub fn task(v: &TaskView) -> v1::Task {
    let t: &TaskRow = &v.task;
    let text = |s: &crate::journal::rows::Text| s.to_string();
    v1::Task {
        id: text(&t.id),
        state: t.state.as_str().into(),
        workload: text(&t.workload),
        tool: text(&t.tool),
        principal: Some(v1::Principal {
            issuer: text(&t.issuer),
            subject: text(&t.subject),
            client_id: text(&t.client_id),
            owner: t.owner.as_deref().unwrap_or_default().to_string(),
            owner_source: text(&t.owner_source),
            actors: t.actors.clone(),
            token_fingerprint: text(&t.token_fp),
            jti: text(&t.jti),
            scopes: t.scope_list(),
            token_expires_at: ts_ms(t.token_exp_ms),
        }),
        peer: Some(v1::Peer {
            uid: t.peer.uid,
            gid: t.peer.gid,
            pid: t.peer.pid,
            exe: t.peer.exe.clone().unwrap_or_default(),
            unit: t.peer.unit.clone().unwrap_or_default(),
        }),
        created_at: ts_ms(t.created_ms),
        expires_at: ts_ms(t.expires_ms),
        ended_at: t.ended_ms.and_then(ts_ms),
        end_reason: t.end_reason.as_deref().unwrap_or_default().to_string(),
        leases: v.leases.iter().map(lease).collect(),
    }
}

pub fn lease(l: &LeaseRow) -> v1::Lease {
    v1::Lease {
        id: l.id.to_string(),
        grant: l.grant.to_string(),
        provider: l.provider.to_string(),
        kind: l.kind.to_string(),
        state: l.state.as_str().into(),
        issued_at: l.issued_ms.and_then(ts_ms),
        expires_at: l.expires_ms.or(Some(l.wanted_exp_ms)).and_then(ts_ms),
        revoked_at: l.revoked_ms.and_then(ts_ms),
        reference: l.reference.as_deref().unwrap_or_default().to_string(),
        revoke_attempts: l.attempts,
        last_error: l.last_error.clone().unwrap_or_default(),
    }
}

pub fn block(b: &crate::journal::blocks::BlockRow) -> v1::Block {
    use crate::time::rfc3339_ms;
    v1::Block {
        id: b.id.clone(),
        kind: b.kind.as_str().into(),
        issuer: b.issuer.clone().unwrap_or_default(),
        value: b.value.clone(),
        created_at: rfc3339_ms(b.created_ms),
        until: rfc3339_ms(b.until_ms),
        reason: b.reason.clone(),
        source: b.source.clone(),
        lifted_at: b.lifted_ms.map(rfc3339_ms).unwrap_or_default(),
        lifted_by: b.lifted_by.clone().unwrap_or_default(),
    }
}

pub fn client(e: &crate::config::clients::ClientEntry, source: &str) -> v1::Client {
    v1::Client {
        issuer: e.issuer.clone(),
        client_id: e.client_id.clone(),
        owner: e.owner.clone().unwrap_or_default(),
        expires: e.expires.map(crate::time::rfc3339).unwrap_or_default(),
        grants: e.grants.clone(),
        status: e.status.as_str().into(),
        source: source.into(),
    }
}
