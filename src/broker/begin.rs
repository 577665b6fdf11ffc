//! BeginTask: validate, decide, write the intent, issue, record, answer.

use std::time::{Duration, SystemTime};

use credbroker_provider_api::{Credential, SecretValue};

use super::live::TaskSummary;
use super::{Broker, BrokerError, ErrorKind, new_id};
use crate::policy::{Ask, GrantAsk};
use crate::record::{Outcome, event};
use crate::workload::PeerInfo;

const MAX_TOOL_LEN: usize = 128;
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct BeginRequest {
    pub token: SecretValue,
    pub tool: String,
    pub grants: Vec<GrantAsk>,
    pub ttl: Option<Duration>,
    /// See `broker::replay`.
    pub idempotency_key: Option<String>,
    /// The gateway's MCP call this task serves (see `broker::calls`).
    pub call_id: Option<String>,
}

/// One issued credential, secrets included: it goes to the workload and nowhere else.
pub struct IssuedCredential {
    pub lease_id: String,
    pub grant: String,
    pub provider: String,
    pub kind: String,
    pub expires_at: SystemTime,
    pub credential: Credential,
}

pub struct Begun {
    pub task: TaskSummary,
    pub credentials: Vec<IssuedCredential>,
}

/// Request checks that need nothing but the request. Bad input changes no state.
pub(crate) fn check_shape(
    tool: &str,
    grants: &[GrantAsk],
    ttl: Option<Duration>,
    max: usize,
) -> Result<(), BrokerError> {
    if tool.is_empty()
        || tool.len() > MAX_TOOL_LEN
        || !tool
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
    {
        return Err(BrokerError::invalid(
            "invalid_tool",
            "tool must be 1-128 characters of [A-Za-z0-9._:/-]",
        ));
    }
    if grants.is_empty() {
        return Err(BrokerError::invalid("no_grants", "name at least one grant"));
    }
    if grants.len() > max {
        return Err(BrokerError::invalid(
            "too_many_grants",
            format!("at most {max} grants per task"),
        ));
    }
    for (i, g) in grants.iter().enumerate() {
        if g.name.is_empty() || g.name.len() > 64 {
            return Err(BrokerError::invalid(
                "invalid_grant_name",
                "grant names are 1-64 characters",
            ));
        }
        if grants[..i].iter().any(|o| o.name == g.name) {
            return Err(BrokerError::invalid(
                "duplicate_grant",
                format!("grant {:?} is named twice", g.name),
            ));
        }
        for (key, values) in &g.narrow {
            if key.is_empty()
                || values.len() > 256
                || values.iter().any(|v| v.is_empty() || v.len() > 256)
            {
                return Err(BrokerError::invalid(
                    "invalid_narrowing",
                    format!("grant {:?}: narrowing of {key:?} is malformed", g.name),
                ));
            }
        }
    }
    if let Some(t) = ttl
        && (t.is_zero() || t > MAX_TTL)
    {
        return Err(BrokerError::invalid(
            "invalid_ttl",
            "ttl must be between 1 second and 24 hours",
        ));
    }
    Ok(())
}

impl Broker {
    pub async fn begin(&self, peer: &PeerInfo, req: BeginRequest) -> Result<Begun, BrokerError> {
        let now = self.clock.now();
        let rt = self.runtime();
        if req.token.expose().is_empty() {
            return Err(BrokerError::new(
                ErrorKind::Unauthenticated,
                "missing_token",
                "no access token was given",
            ));
        }
        check_shape(
            &req.tool,
            &req.grants,
            req.ttl,
            rt.config.broker.max_grants_per_task,
        )?;
        if let Some(k) = &req.idempotency_key {
            super::replay::check_key(k)?;
        }
        let workload = self.identify(&rt, peer, now).await?;
        let verified = self
            .authenticate(&rt, workload, peer, req.token.expose(), now)
            .await?;
        // Kept while issuing (a token-exchange provider sends it to its issuer), then only for
        // `recheck_active` (see `broker::recheck`), else dropped.
        let recheck = rt.verifier.recheck_period(&verified.claims.issuer);
        let token = req.token;
        let names: Vec<&str> = req.grants.iter().map(|g| g.name.as_str()).collect();
        self.check_client(&rt, &workload.name, peer, &verified, &names, now)
            .await?;
        let who = self
            .screen(&rt, workload, peer, &verified, true, now)
            .await?;
        let claims = &verified.claims;
        if let Some(call) = &req.call_id
            && let Err(e) = self.check_call(call, &verified.fingerprint.hex()).await
        {
            if e.code == crate::record::reason::CALL_UNKNOWN.as_str() {
                let mut rec =
                    crate::record::AuditRecord::new(event::REQUEST_DENIED, Outcome::Denied, now)
                        .reason(crate::record::reason::CALL_UNKNOWN)
                        .detail("call_id", call.clone());
                rec.peer = Some(peer.record());
                rec.workload = Some(workload.name.clone());
                rec.tool = Some(req.tool.clone());
                rec.client_id = Some(claims.client_id.clone());
                rec.subject = Some(claims.subject.clone());
                rec.token_fingerprint = Some(verified.fingerprint.hex());
                self.audit_only(vec![rec]).await;
            }
            return Err(e);
        }
        let task_id = new_id();

        let decision = match rt.policy.decide(&Ask {
            workload,
            claims,
            tool: &req.tool,
            grants: &req.grants,
            ttl: req.ttl,
            task_id: &task_id,
            now,
        }) {
            Ok(d) => d,
            Err(denial) => {
                let mut rec =
                    crate::record::AuditRecord::new(event::REQUEST_DENIED, Outcome::Denied, now)
                        .reason(denial.code)
                        .detail("message", denial.message.clone());
                rec.peer = Some(peer.record());
                rec.workload = Some(workload.name.clone());
                rec.tool = Some(req.tool.clone());
                rec.grant = denial.grant.clone();
                rec.client_id = Some(claims.client_id.clone());
                rec.subject = Some(claims.subject.clone());
                rec.token_fingerprint = Some(verified.fingerprint.hex());
                rec.jti = Some(claims.jti.clone());
                self.audit_only(vec![rec]).await;
                if let Some(who) = &who {
                    let ctx = super::respond::Context {
                        peer: Some(&peer.record()),
                        workload: Some(&workload.name),
                        call_id: req.call_id.as_deref(),
                    };
                    let signal = super::abuse::Signal::Refused(denial.code);
                    // The denial stands; a detector's `deny` adds nothing to it.
                    let _ = self.detect(&rt, who, signal, ctx).await;
                }
                return Err(denial.into());
            }
        };

        let key = req.idempotency_key.map(|key| super::replay::BeginKey {
            digest: super::replay::request_digest(
                &verified.fingerprint.hex(),
                &req.tool,
                &req.grants,
                req.ttl.map(|t| t.as_secs()),
            ),
            key,
        });
        let plan = self.plan(
            &rt,
            super::plan::Ask {
                peer,
                workload,
                verified: &verified,
                tool: &req.tool,
                call_id: req.call_id.as_deref(),
                task_id,
                decision,
                key: key.as_ref(),
                now,
            },
        )?;
        let begun = self.open_and_issue(&rt, plan, now, Some(&token)).await;
        let held = match recheck {
            Some(_) => Some(token),
            None => {
                drop(token);
                None
            }
        };
        let begun = match (begun, &who) {
            (Ok(b), Some(who)) => self.unless_blocked_meanwhile(b, who).await,
            (begun, _) => begun,
        };
        if let (Ok(b), Some(token), Some(period)) = (&begun, held, recheck) {
            self.held.hold(
                crate::journal::rows::Text::from(b.task.task.id.as_ref()),
                verified.claims.issuer.clone(),
                token,
                period,
            );
        }
        match (begun, &key) {
            (Err(e), Some(key)) if e.code == super::issue::KEY_SEEN => {
                Err(self.replay(&workload.name, key).await)
            }
            (begun, _) => begun,
        }
    }
}
