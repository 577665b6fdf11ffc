//! Generated gRPC types (from `proto/credbroker/v1`), and conversions from the broker's types.

#![allow(unreachable_pub, clippy::all, missing_docs, unused_qualifications)]

pub mod v1 {
    tonic::include_proto!("credbroker.v1");
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
    v1::Task {
        id: t.id.clone(),
        state: t.state.as_str().into(),
        workload: t.workload.clone(),
        tool: t.tool.clone(),
        principal: Some(v1::Principal {
            issuer: t.issuer.clone(),
            subject: t.subject.clone(),
            client_id: t.client_id.clone(),
            owner: t.owner.clone().unwrap_or_default(),
            owner_source: t.owner_source.clone(),
            actors: t.actors.clone(),
            token_fingerprint: t.token_fp.clone(),
            jti: t.jti.clone(),
            scopes: t.scopes.clone(),
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
        end_reason: t.end_reason.clone().unwrap_or_default(),
        leases: v.leases.iter().map(lease).collect(),
    }
}

pub fn lease(l: &LeaseRow) -> v1::Lease {
    v1::Lease {
        id: l.id.clone(),
        grant: l.grant.clone(),
        provider: l.provider.clone(),
        kind: l.kind.clone(),
        state: l.state.as_str().into(),
        issued_at: l.issued_ms.and_then(ts_ms),
        expires_at: l.expires_ms.or(Some(l.wanted_exp_ms)).and_then(ts_ms),
        revoked_at: l.revoked_ms.and_then(ts_ms),
        reference: l.reference.clone().unwrap_or_default(),
        revoke_attempts: l.attempts,
        last_error: l.last_error.clone().unwrap_or_default(),
    }
}
