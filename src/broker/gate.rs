//! The checks every workload request passes before it may touch state: who is calling, and is
//! their token good for them. Each refusal is audited (without the token: its fingerprint).

use std::time::SystemTime;

use super::abuse::{Origin, Signal};
use super::blocks::Who;
use super::respond::Context;
use super::{Broker, BrokerError, ErrorKind, Runtime};
use crate::config::WorkloadConfig;
use crate::record::{AuditRecord, Outcome, event, reason};
use crate::token::{Rejection, Verified};
use crate::workload::{self, MatchError, PeerInfo};

impl Broker {
    /// The workload the peer is. Unknown and ambiguous peers are refused.
    pub(super) async fn identify<'r>(
        &self,
        rt: &'r Runtime,
        peer: &PeerInfo,
        now: SystemTime,
    ) -> Result<&'r WorkloadConfig, BrokerError> {
        match workload::find(&rt.config.workloads, peer) {
            Ok(w) => Ok(w),
            Err(e) => {
                let (code, msg) = match e {
                    MatchError::Unknown => (
                        reason::UNKNOWN_PEER,
                        "this process is not a registered workload".to_string(),
                    ),
                    MatchError::Ambiguous(names) => (
                        reason::AMBIGUOUS_PEER,
                        format!("this process matches several workloads equally: {names:?}"),
                    ),
                };
                let mut rec =
                    AuditRecord::new(event::PEER_REJECTED, Outcome::Denied, now).reason(code);
                rec.peer = Some(peer.record());
                self.audit_only(vec![rec]).await;
                Err(BrokerError::new(
                    ErrorKind::PermissionDenied,
                    code.as_str(),
                    msg,
                ))
            }
        }
    }

    /// Validates the token for this workload: every check, including the audience.
    pub(super) async fn authenticate(
        &self,
        rt: &Runtime,
        workload: &WorkloadConfig,
        peer: &PeerInfo,
        token: &str,
        now: SystemTime,
    ) -> Result<Verified, BrokerError> {
        let rejected = |reason: &Rejection, fp: Option<String>| {
            let mut rec = AuditRecord::new(event::TOKEN_REJECTED, Outcome::Denied, now)
                .reason(reason.reason());
            rec.peer = Some(peer.record());
            rec.workload = Some(workload.name.clone());
            rec.token_fingerprint = fp;
            rec
        };
        let verified = match rt.verifier.verify(token, now).await {
            Ok(v) => v,
            Err((reason, fp)) => {
                self.audit_only(vec![rejected(&reason, fp.map(|f| f.hex()))])
                    .await;
                return Err(reason.into());
            }
        };
        if let Err(reason) = verified
            .check_audience(&workload.audience)
            .and_then(|()| verified.check_issuer(&workload.issuer))
        {
            let c = &verified.claims;
            // A token meant for another registered workload, presented by this one, is worth
            // its own event: it is how a compromised MCP server replaying tokens shows up.
            let intended = rt
                .config
                .workloads
                .iter()
                .find(|w| w.name != workload.name && c.audiences.contains(&w.audience));
            let mut rec = rejected(&reason, Some(verified.fingerprint.hex()));
            if let Some(other) = intended {
                rec.event = event::TOKEN_WRONG_WORKLOAD.into();
                rec = rec.detail("intended_workload", other.name.clone());
            }
            rec.client_id = Some(c.client_id.clone());
            rec.subject = Some(c.subject.clone());
            rec.issuer = Some(c.issuer.clone());
            rec.jti = Some(c.jti.clone());
            self.audit_only(vec![rec]).await;
            if rt.config.abuse.is_some() {
                let who = Who::of(rt, &verified);
                let signal = Signal::WrongAudience {
                    workload: &workload.name,
                    intended: intended.map(|w| w.name.as_str()),
                };
                let ctx = Context {
                    peer: Some(&peer.record()),
                    workload: Some(&workload.name),
                    call_id: None,
                };
                // Refused either way; the finding's responses (blocks, alert) are what it adds.
                let _ = self.detect(rt, &who, signal, ctx).await;
            }
            return Err(reason.into());
        }
        Ok(verified)
    }

    /// The checks after a token is accepted: blocks, and the detectors that watch accepted
    /// tokens. `None` when there is nothing to check (no block in force, no detector): the
    /// usual case costs two loads.
    pub(super) async fn screen(
        &self,
        rt: &Runtime,
        workload: &WorkloadConfig,
        peer: &PeerInfo,
        verified: &Verified,
        counted: bool,
        now: SystemTime,
    ) -> Result<Option<Who>, BrokerError> {
        if rt.config.abuse.is_none() && !self.blocks.any() {
            return Ok(None);
        }
        let who = Who::of(rt, verified);
        let peer_rec = peer.record();
        let ctx = Context {
            peer: Some(&peer_rec),
            workload: Some(&workload.name),
            call_id: None,
        };
        if let Some((block, e)) = self.blocked(&who, now) {
            let mut rec = AuditRecord::new(event::REQUEST_DENIED, Outcome::Denied, now)
                .reason(super::blocks::refusal(block.kind))
                .detail("block_id", block.id.clone());
            who.stamp(&mut rec);
            rec.peer = Some(peer_rec.clone());
            rec.workload = Some(workload.name.clone());
            self.audit_only(vec![rec]).await;
            let _ = self.detect(rt, &who, Signal::Blocked(&block), ctx).await;
            return Err(e);
        }
        let origin = Origin::peer(peer);
        self.detect(rt, &who, Signal::Presented { origin, counted }, ctx)
            .await?;
        Ok(Some(who))
    }
}
