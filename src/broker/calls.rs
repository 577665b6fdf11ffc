//! MCP calls reported by `credbroker gateway`: checked, and recorded in the one audit chain.
//!
//! The gateway is a separate, network-facing process holding no journal key, so the daemon
//! trusts its reports only from the uids `server.gateway_uids` names, and checks every field as
//! it would any request: a report that is malformed changes nothing. An allowed call's record
//! is committed before the gateway forwards the call (the gateway waits for this answer), so no
//! call reaches an upstream unrecorded. A BeginTask that names a call (`call_id`) must name one
//! recorded as allowed for the same token.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Value, json};

use super::call_checks::{check_call_id, code, gateway_name, invalid};
use super::{Broker, BrokerError, ErrorKind};
use crate::journal::{Durability, Op};
use crate::record::{AuditRecord, Outcome, Reason, event, reason};
use crate::workload::PeerInfo;

/// Who made a call, as the gateway verified it from the token.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub issuer: String,
    pub subject: String,
    pub client_id: String,
    pub actors: Vec<String>,
    pub owner: Option<String>,
    pub owner_source: String,
    pub token_fingerprint: String,
    pub jti: String,
}

/// One MCP call and the gateway's decision on it.
#[derive(Clone, Debug, Default)]
pub struct CallReport {
    pub call_id: String,
    pub gateway: String,
    pub resource: String,
    pub method: String,
    pub name: String,
    pub arguments_sha256: String,
    /// Argument values recorded in clear (a gateway's `record_arguments`), as JSON text.
    pub arguments: BTreeMap<String, String>,
    pub caller: Option<Caller>,
    pub source: String,
    pub client_name: String,
    pub client_version: String,
    pub protocol_version: String,
    /// The reason code it was refused with; empty when allowed.
    pub refused: String,
    pub http_status: u32,
}

/// What the upstream answered an allowed call.
#[derive(Clone, Debug, Default)]
pub struct CallResult {
    pub call_id: String,
    pub gateway: String,
    pub http_status: u32,
    pub jsonrpc_error: Option<i64>,
    pub duration_ms: u64,
    /// A reason code when the upstream was not reached or did not answer in time.
    pub error: String,
}

/// The network an address is in, as abuse detection compares them: IPv4 /24, IPv6 /48.
fn network(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// `client_first_seen`: a client never seen before made a request (for review of new
/// registrations). Written in the same commit as the `clients_seen` row, and only with it.
pub(super) fn first_seen_record(r: &AuditRecord) -> AuditRecord {
    let mut first = AuditRecord::new(
        event::CLIENT_FIRST_SEEN,
        Outcome::Success,
        std::time::UNIX_EPOCH,
    );
    first.at_ms = r.at_ms;
    first.issuer.clone_from(&r.issuer);
    first.client_id.clone_from(&r.client_id);
    first.subject.clone_from(&r.subject);
    first.owner.clone_from(&r.owner);
    first.owner_source.clone_from(&r.owner_source);
    first.call_id.clone_from(&r.call_id);
    first.workload.clone_from(&r.workload);
    first.peer.clone_from(&r.peer);
    for key in ["source", "client", "gateway"] {
        if let Some(v) = r.detail.get(key) {
            first.detail.insert(key.into(), v.clone());
        }
    }
    first
}

/// The caller of a gateway call as blocks and detectors see it. The gateway does not report the
/// token's expiry, so a token block placed from a call lasts `abuse.block_for`.
fn caller_who(rt: &super::Runtime, c: &Caller, now: std::time::SystemTime) -> super::Who {
    let block_for = rt
        .config
        .abuse
        .as_ref()
        .map_or(std::time::Duration::from_secs(3600), |a| a.block_for);
    super::Who {
        issuer: c.issuer.clone(),
        subject: c.subject.clone(),
        client_id: c.client_id.clone(),
        owner: c.owner.clone(),
        jti: c.jti.clone(),
        token_fp: c.token_fingerprint.clone(),
        token_exp_ms: crate::time::to_ms(now + block_for),
    }
}

/// The most results one FinishCalls carries (the gateway sends at most 512).
const MAX_RESULTS: usize = 4096;

impl CallResult {
    fn record(
        self,
        peer: &PeerInfo,
        now: std::time::SystemTime,
    ) -> Result<AuditRecord, BrokerError> {
        check_call_id(&self.call_id)?;
        gateway_name(&self.gateway)?;
        let error = code(&self.error, "error")?;
        if self.http_status > 599 || (self.http_status == 0) != error.is_some() {
            return Err(invalid(
                "http_status must be an HTTP status, or 0 with an error code",
            ));
        }
        let failed = error.is_some() || self.http_status >= 400 || self.jsonrpc_error.is_some();
        let outcome = if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let mut r = AuditRecord::new(event::MCP_CALL_FINISHED, outcome, now)
            .detail("gateway", self.gateway)
            .detail("duration_ms", self.duration_ms);
        if let Some(code) = error {
            r = r.reason(code);
        } else {
            r = r.detail("http_status", self.http_status);
        }
        if let Some(e) = self.jsonrpc_error {
            r = r.detail("jsonrpc_error", e);
        }
        r.call_id = Some(self.call_id);
        r.peer = Some(peer.record());
        Ok(r)
    }
}

impl CallReport {
    fn record(
        self,
        peer: &PeerInfo,
        refused: Option<Reason>,
        now: std::time::SystemTime,
    ) -> AuditRecord {
        let outcome = if refused.is_some() {
            Outcome::Denied
        } else {
            Outcome::Success
        };
        let mut r = AuditRecord::new(event::MCP_CALL, outcome, now)
            .detail("gateway", self.gateway)
            .detail("resource", self.resource)
            .detail("source", self.source);
        if let Some(code) = refused {
            r = r.reason(code).detail("http_status", self.http_status);
        }
        if !self.method.is_empty() {
            r = r.detail("method", self.method);
        }
        if !self.arguments_sha256.is_empty() {
            r = r.detail("arguments_sha256", self.arguments_sha256);
        }
        if !self.arguments.is_empty() {
            let clear: serde_json::Map<String, Value> = self
                .arguments
                .into_iter()
                .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::Null)))
                .collect();
            r = r.detail("arguments", clear);
        }
        if !self.client_name.is_empty() || !self.client_version.is_empty() {
            r = r.detail(
                "client",
                json!({"name": self.client_name, "version": self.client_version}),
            );
        }
        if !self.protocol_version.is_empty() {
            r = r.detail("protocol_version", self.protocol_version);
        }
        r.call_id = Some(self.call_id);
        r.tool = (!self.name.is_empty()).then_some(self.name);
        r.peer = Some(peer.record());
        if let Some(c) = self.caller {
            r.issuer = Some(c.issuer);
            r.subject = Some(c.subject);
            r.client_id = Some(c.client_id);
            r.actors = c.actors;
            r.owner = c.owner;
            r.owner_source = Some(c.owner_source);
            r.token_fingerprint = Some(c.token_fingerprint);
            r.jti = (!c.jti.is_empty()).then_some(c.jti);
        }
        r
    }
}

impl Broker {
    /// Only a gateway's uid may report calls.
    pub fn check_gateway(&self, peer: &PeerInfo) -> Result<(), BrokerError> {
        if self
            .runtime()
            .config
            .server
            .gateway_uids
            .contains(&peer.uid)
        {
            Ok(())
        } else {
            Err(BrokerError::new(
                ErrorKind::PermissionDenied,
                "peer_not_gateway",
                format!(
                    "uid {} may not report MCP calls (see server.gateway_uids)",
                    peer.uid
                ),
            ))
        }
    }

    /// Records a call's decision. An allowed call is committed before this returns; a refusal
    /// counts against the gateway's refusal audit budget, like every refusal.
    pub async fn record_call(
        &self,
        peer: &PeerInfo,
        report: CallReport,
    ) -> Result<(), BrokerError> {
        self.check_gateway(peer)?;
        let refused = report.check()?;
        let now = self.clock.now();
        let rt = self.runtime();
        let watched = rt.config.abuse.is_some() || self.blocks.any();
        let who = report
            .caller
            .as_ref()
            .filter(|_| watched)
            .map(|c| caller_who(&rt, c, now));
        let source = report.source.clone();
        let call_id = report.call_id.clone();
        let report_caller = report.caller.clone().filter(|_| refused.is_none());
        let mut record = report.record(peer, refused, now);
        let peer_rec = peer.record();
        let ctx = super::respond::Context {
            peer: Some(&peer_rec),
            workload: None,
            call_id: Some(&call_id),
        };
        if let Some(code) = refused {
            self.audit_only(vec![record]).await;
            if let Some(who) = &who {
                let _ = self
                    .detect(&rt, who, super::abuse::Signal::Refused(code), ctx)
                    .await;
            }
            return Ok(());
        }
        if let Some(c) = &report_caller
            && let Some((code, e)) = self.client_refusal(&rt, &c.issuer, &c.client_id, &[], now)
        {
            record.outcome = Outcome::Denied.as_str().into();
            record = record.reason(code).detail("http_status", 403);
            self.audit_only(vec![record]).await;
            return Err(e);
        }
        if let Some(who) = &who {
            // A blocked caller's call is recorded as refused, with the block's code.
            if let Some((block, e)) = self.blocked(who, now) {
                record.outcome = Outcome::Denied.as_str().into();
                record = record
                    .reason(super::blocks::refusal(block.kind))
                    .detail("block_id", block.id.clone())
                    .detail("http_status", 403);
                self.audit_only(vec![record]).await;
                let _ = self
                    .detect(&rt, who, super::abuse::Signal::Blocked(&block), ctx)
                    .await;
                return Err(e);
            }
            let origin = source
                .parse::<SocketAddr>()
                .map(|a| super::abuse::Origin::Network(network(a.ip())));
            if let Ok(origin) = origin {
                let signal = super::abuse::Signal::Presented {
                    origin,
                    counted: true,
                };
                if let Err(e) = self.detect(&rt, who, signal, ctx).await {
                    record.outcome = Outcome::Denied.as_str().into();
                    record = record
                        .reason(reason::find(&e.code).unwrap_or(reason::ABUSE_DETECTED))
                        .detail("http_status", 403);
                    self.audit_only(vec![record]).await;
                    return Err(e);
                }
            }
        }
        let mut ops = Vec::with_capacity(2);
        let first = self.first_seen(&record).await?;
        if let Some(op) = first.clone() {
            if let Op::ClientSeen { network, .. } = &op {
                record = record.detail("first_seen_network", network.clone());
            }
            ops.push(op);
        }
        ops.push(Op::Audit(Box::new(record)));
        let committed = self.journal.commit_with(ops, Durability::Process).await;
        if committed.is_ok()
            && let Some(Op::ClientSeen {
                issuer, client_id, ..
            }) = first
        {
            self.registry.mark_seen(&issuer, &client_id);
        }
        committed.map_err(|e| {
            if e.is_duplicate() {
                BrokerError::new(
                    ErrorKind::FailedPrecondition,
                    "call_recorded",
                    "this call id is already recorded",
                )
            } else {
                BrokerError::journal(&e)
            }
        })
    }

    /// The client's first network, to record with this call, when none is recorded yet.
    async fn first_seen(&self, r: &AuditRecord) -> Result<Option<Op>, BrokerError> {
        let (Some(issuer), Some(client)) = (r.issuer.clone(), r.client_id.clone()) else {
            return Ok(None);
        };
        if self.registry.was_seen(&issuer, &client) {
            return Ok(None);
        }
        let (i, c) = (issuer.clone(), client.clone());
        let known = self
            .journal
            .read(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT 1 FROM clients_seen WHERE issuer = ?1 AND client_id = ?2",
                    )?
                    .exists([&i, &c])?)
            })
            .await
            .map_err(|e| BrokerError::journal(&e))?;
        if known {
            self.registry.mark_seen(&issuer, &client);
            return Ok(None);
        }
        let source = r
            .detail
            .get("source")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Ok(addr) = source.parse::<SocketAddr>() else {
            return Ok(None);
        };
        Ok(Some(Op::ClientSeen {
            issuer,
            client_id: client,
            network: network(addr.ip()),
            first_ms: r.at_ms,
            call_id: r.call_id.clone().unwrap_or_default(),
            first: Some(Box::new(first_seen_record(r))),
        }))
    }

    /// Records what the upstream answered allowed calls, in one commit. A batch with one
    /// malformed result is refused whole.
    pub async fn finish_calls(
        &self,
        peer: &PeerInfo,
        results: Vec<CallResult>,
    ) -> Result<(), BrokerError> {
        self.check_gateway(peer)?;
        if results.len() > MAX_RESULTS {
            return Err(invalid(&format!("batch holds over {MAX_RESULTS} results")));
        }
        let now = self.clock.now();
        let ops = results
            .into_iter()
            .map(|r| Ok(Op::Audit(Box::new(r.record(peer, now)?))))
            .collect::<Result<Vec<_>, BrokerError>>()?;
        if ops.is_empty() {
            return Ok(());
        }
        self.journal
            .commit_with(ops, Durability::Process)
            .await
            .map_err(|e| BrokerError::journal(&e))
    }

    /// A BeginTask's `call_id` must name a call recorded as allowed, made with this token: a
    /// workload cannot file its task under someone else's call.
    pub(super) async fn check_call(
        &self,
        call_id: &str,
        token_fp: &str,
    ) -> Result<(), BrokerError> {
        check_call_id(call_id).map_err(|_| {
            BrokerError::invalid(
                "invalid_call_id",
                "call_id is not a lowercase hyphenated UUID",
            )
        })?;
        let id = call_id.to_owned();
        let found: Option<(String, Option<String>)> = self
            .journal
            .read(move |conn| {
                use rusqlite::OptionalExtension;
                Ok(conn
                    .query_row(
                        "SELECT outcome, token_fp FROM audit WHERE call_id = ?1 AND event = 'mcp_call'",
                        [&id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?)
            })
            .await
            .map_err(|e| BrokerError::journal(&e))?;
        match found {
            Some((outcome, Some(fp))) if outcome == Outcome::Success.as_str() && fp == token_fp => {
                Ok(())
            }
            _ => Err(BrokerError::new(
                ErrorKind::PermissionDenied,
                reason::CALL_UNKNOWN.as_str(),
                "call_id names no MCP call the gateway allowed with this token",
            )),
        }
    }
}
