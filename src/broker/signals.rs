//! The Shared Signals receiver (SSF 1.0): Security Event Tokens from the configured
//! transmitters, pushed (RFC 8935, `server/signals.rs`) or polled (RFC 8936, here). CAEP
//! `session-revoked`, `credential-change`, `token-claims-change` and RISC `account-disabled`,
//! `account-purged`, `credential-compromise` revoke and block the subject they name.
//!
//! A SET is verified (signature against the transmitter's JWKS, `iss`, `aud`), then its `iat`
//! (not older than `max_age`) and its `jti` (never seen from this transmitter: the journal
//! refuses a second one). Taking it is one fsync'd commit: the jti, `signal_received`, the blocks
//! with their `block_added`. A refused SET changes nothing and is audited (`signal_rejected`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use credbroker_provider_api::SecretValue;
use serde_json::{Map, Value, json};

use super::{Broker, Runtime};
use crate::config::signals::{SignalsConfig, Transmitter};
use crate::journal::Op;
use crate::journal::blocks::{BlockKind, BlockRow};
use crate::record::{AuditRecord, Outcome, event};
use crate::time::to_ms;
use crate::token::KeySet;
use crate::token::set::{self, SetError};

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";
/// The events that revoke and block their subject.
const REVOKING: [&str; 6] = [
    "caep:session-revoked",
    "caep:credential-change",
    "caep:token-claims-change",
    "risc:account-disabled",
    "risc:account-purged",
    "risc:credential-compromise",
];
/// A SET issued this far in the future is refused (clock skew allowance).
const SKEW_S: i64 = 60;

fn short(event_type: &str) -> Option<String> {
    let (family, name) = if let Some(n) = event_type.strip_prefix(CAEP) {
        ("caep", n)
    } else if let Some(n) = event_type.strip_prefix(RISC) {
        ("risc", n)
    } else {
        return None;
    };
    let s = format!("{family}:{name}");
    REVOKING.contains(&s.as_str()).then_some(s)
}

/// One transmitter, ready: its keys and bearer tokens.
pub struct Receiver {
    pub cfg: Transmitter,
    keys: ArcSwapOption<KeySet>,
    pub(crate) push_bearer: Option<SecretValue>,
    poll_bearer: Option<SecretValue>,
    http: reqwest::Client,
    fetched: Mutex<Option<Instant>>,
}

pub(super) type Receivers = HashMap<String, Arc<Receiver>>;

pub(super) fn receivers(cfg: Option<&SignalsConfig>) -> Result<Receivers, String> {
    let mut out = Receivers::new();
    for t in cfg.map(|c| c.transmitters.as_slice()).unwrap_or_default() {
        let at = |e: String| format!("transmitter {}: {e}", t.name);
        let keys = match &t.jwks_file {
            Some(f) => {
                let bytes = std::fs::read(f).map_err(|e| at(format!("{}: {e}", f.display())))?;
                Some(Arc::new(
                    KeySet::parse(&bytes, &t.algorithms).map_err(at)?.0,
                ))
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("credbroker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| at(e.to_string()))?;
        out.insert(
            t.name.clone(),
            Arc::new(Receiver {
                keys: ArcSwapOption::new(keys),
                push_bearer: t
                    .push_bearer
                    .as_ref()
                    .map(|s| s.read())
                    .transpose()
                    .map_err(at)?,
                poll_bearer: t
                    .poll
                    .as_ref()
                    .map(|p| p.bearer.read())
                    .transpose()
                    .map_err(at)?,
                cfg: t.clone(),
                http,
                fetched: Mutex::new(None),
            }),
        );
    }
    Ok(out)
}

impl Receiver {
    /// The keys; from `jwks_uri` when there are none yet or `refetch` (at most every 30 s).
    async fn keys(&self, refetch: bool) -> Option<Arc<KeySet>> {
        let have = self.keys.load_full();
        let Some(uri) = &self.cfg.jwks_uri else {
            return have;
        };
        if have.is_some() && !refetch {
            return have;
        }
        let recent = self
            .fetched
            .lock()
            .ok()
            .and_then(|f| *f)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(30));
        if recent {
            return have;
        }
        if let Ok(mut f) = self.fetched.lock() {
            *f = Some(Instant::now());
        }
        let fetched = async {
            let r = self
                .http
                .get(uri)
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            if !r.status().is_success() {
                return Err(format!("HTTP {}", r.status()));
            }
            let b = r.bytes().await.map_err(|e| e.to_string())?;
            KeySet::parse(&b, &self.cfg.algorithms).map(|k| k.0)
        }
        .await;
        match fetched {
            Ok(k) => {
                self.keys.store(Some(Arc::new(k)));
                self.keys.load_full()
            }
            Err(e) => {
                tracing::warn!(transmitter = %self.cfg.name, error = %e, "cannot fetch the transmitter's JWKS");
                have
            }
        }
    }

    /// Whether `presented` is this transmitter's push bearer (constant time).
    pub fn push_allowed(&self, presented: &str) -> bool {
        self.push_bearer.as_ref().is_some_and(|b| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                b.expose().as_bytes(),
                presented.as_bytes(),
            )
            .is_ok()
        })
    }
}

/// The subject a SET names: `sub_id` (SSF 1.0), else the first event's `subject`.
fn subject(claims: &Map<String, Value>, events: &Map<String, Value>) -> Option<Map<String, Value>> {
    claims
        .get("sub_id")
        .or_else(|| events.values().find_map(|e| e.get("subject")))
        .and_then(Value::as_object)
        .cloned()
}

/// What to block for a subject identifier (RFC 9493): an `iss_sub` or `opaque` is a subject
/// of the token issuer, an `email` an owner.
fn block_target(
    rt: &Runtime,
    t: &Transmitter,
    s: &Map<String, Value>,
) -> Result<(BlockKind, Option<String>, String), SetError> {
    let field = |k: &str| s.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let bad = |m: &str| SetError::InvalidRequest(m.to_owned());
    match s.get("format").and_then(Value::as_str) {
        Some("iss_sub") => {
            let sub = field("sub").ok_or_else(|| bad("an iss_sub subject needs sub"))?;
            let iss = field("iss").ok_or_else(|| bad("an iss_sub subject needs iss"))?;
            let issuer = if rt.config.issuers.iter().any(|i| i.url == iss) {
                iss.to_owned()
            } else {
                t.subject_issuer.clone()
            };
            Ok((BlockKind::Subject, Some(issuer), sub.to_owned()))
        }
        Some("opaque") => {
            let id = field("id").ok_or_else(|| bad("an opaque subject needs id"))?;
            Ok((
                BlockKind::Subject,
                Some(t.subject_issuer.clone()),
                id.to_owned(),
            ))
        }
        Some("email") => {
            let email = field("email").ok_or_else(|| bad("an email subject needs email"))?;
            Ok((BlockKind::Owner, None, email.to_owned()))
        }
        Some(f) => Err(SetError::InvalidRequest(format!(
            "subject format {f:?} is not one credbroker can act on (iss_sub, opaque, email)"
        ))),
        None => Err(bad("the subject has no format")),
    }
}

impl Broker {
    pub fn receiver(&self, name: &str) -> Option<Arc<Receiver>> {
        self.runtime().receivers.get(name).cloned()
    }

    /// Takes one SET from `transmitter` (`via` push or poll). `Err`: refused, nothing changed.
    pub async fn receive_set(
        &self,
        transmitter: &str,
        set_text: &str,
        via: &str,
    ) -> Result<(), SetError> {
        let result = self.take_set(transmitter, set_text, via).await;
        if let Err(e) = &result {
            self.reject_set(transmitter, via, e).await;
        }
        result
    }

    /// Audits a refused SET (`signal_rejected`, within the refusal budget).
    pub async fn reject_set(&self, transmitter: &str, via: &str, e: &SetError) {
        let rec = AuditRecord::new(event::SIGNAL_REJECTED, Outcome::Denied, self.clock.now())
            .detail("transmitter", transmitter.to_owned())
            .detail("via", via.to_owned())
            .detail("err", e.code())
            .detail("description", e.description());
        self.audit_only(vec![rec]).await;
    }

    async fn take_set(&self, name: &str, set_text: &str, via: &str) -> Result<(), SetError> {
        let rt = self.runtime();
        let r = rt
            .receivers
            .get(name)
            .cloned()
            .ok_or_else(|| SetError::InvalidRequest(format!("no transmitter {name:?}")))?;
        let t = &r.cfg;
        let keys = r
            .keys(false)
            .await
            .ok_or_else(|| SetError::InvalidKey("the transmitter's keys are not loaded".into()))?;
        let claims = match set::verify(set_text, &keys, &t.algorithms, &t.issuer, &t.audience) {
            Err(SetError::InvalidKey(_)) if t.jwks_uri.is_some() => {
                // Its keys may have rotated: fetch them again (rate-limited), then decide.
                let keys = r.keys(true).await.unwrap_or(keys);
                set::verify(set_text, &keys, &t.algorithms, &t.issuer, &t.audience)?
            }
            other => other?,
        };
        let now = self.clock.now();
        let now_s = to_ms(now) / 1000;
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| SetError::InvalidRequest("the SET has no usable jti".into()))?
            .to_owned();
        let iat = claims
            .get("iat")
            .and_then(Value::as_i64)
            .ok_or_else(|| SetError::InvalidRequest("the SET has no iat".into()))?;
        let max_age = i64::try_from(t.max_age.as_secs()).unwrap_or(i64::MAX);
        if iat < now_s - max_age {
            return Err(SetError::InvalidRequest(format!(
                "the SET was issued {}s ago; at most {max_age}s are accepted",
                now_s - iat
            )));
        }
        if iat > now_s + SKEW_S {
            return Err(SetError::InvalidRequest(
                "the SET was issued in the future".into(),
            ));
        }
        let events = claims
            .get("events")
            .and_then(Value::as_object)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| SetError::InvalidRequest("the SET has no events".into()))?;
        let known: Vec<String> = events.keys().filter_map(|k| short(k)).collect();
        let mut blocks = Vec::new();
        let mut rec = AuditRecord::new(event::SIGNAL_RECEIVED, Outcome::Success, now)
            .detail("transmitter", name.to_owned())
            .detail("via", via.to_owned())
            .detail("set_jti", jti.clone())
            .detail("events", events.keys().cloned().collect::<Vec<_>>());
        if known.is_empty() {
            rec = rec.detail("action", "none: no event credbroker acts on");
        } else {
            let s = subject(&claims, events)
                .ok_or_else(|| SetError::InvalidRequest("the SET names no subject".into()))?;
            let (kind, issuer, value) = block_target(&rt, t, &s)?;
            let now_ms = to_ms(now);
            let b = BlockRow {
                id: super::new_id(),
                kind,
                issuer,
                value,
                created_ms: now_ms,
                until_ms: now_ms + i64::try_from(t.block_for.as_millis()).unwrap_or(i64::MAX),
                reason: format!("{} from {name}", known.join(", ")),
                source: format!("signal:{name}"),
                lifted_ms: None,
                lifted_by: None,
            };
            rec = rec
                .detail("action", "revoke and block")
                .detail("subject", Value::Object(s))
                .detail("block_id", b.id.clone());
            rec.issuer.clone_from(&b.issuer);
            match kind {
                BlockKind::Owner => rec.owner = Some(b.value.clone()),
                _ => rec.subject = Some(b.value.clone()),
            }
            blocks.push(b);
        }
        let seen = Op::SignalSeen {
            transmitter: name.to_owned(),
            jti: jti.clone(),
            at_ms: to_ms(now),
        };
        let ops = vec![seen, Op::Audit(Box::new(rec))];
        let placed = if blocks.is_empty() {
            self.journal
                .commit_with(ops, crate::journal::Durability::Fsync)
                .await
                .map(|()| Vec::new())
                .map_err(|e| (e.is_duplicate(), e.to_string()))
        } else {
            self.place_blocks_checked(blocks, ops).await
        };
        match placed {
            Ok(tasks) => {
                if !tasks.is_empty() {
                    tracing::info!(
                        transmitter = name,
                        tasks = tasks.len(),
                        "a signal ends live tasks"
                    );
                }
                Ok(())
            }
            Err((true, _)) => Err(SetError::InvalidRequest(format!(
                "jti {jti:?} was already received from this transmitter"
            ))),
            Err((false, e)) => {
                tracing::error!(error = %e, "cannot record a signal");
                Err(SetError::InvalidRequest(
                    "the receiver cannot record it now; retry".into(),
                ))
            }
        }
    }

    /// Polls every transmitter that has a `poll_url` (RFC 8936), acknowledging what it took
    /// and reporting what it refused in the next request.
    pub(super) async fn poll_loop(self: Arc<Self>) {
        let mut next: HashMap<String, Instant> = HashMap::new();
        let mut acks: HashMap<String, Vec<String>> = HashMap::new();
        let mut errs: HashMap<String, Map<String, Value>> = HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let rt = self.runtime();
            for (name, r) in &rt.receivers {
                let (Some(poll), Some(bearer)) = (&r.cfg.poll, &r.poll_bearer) else {
                    continue;
                };
                if next.get(name).is_some_and(|t| *t > Instant::now()) {
                    continue;
                }
                let body = json!({
                    "ack": acks.get(name).cloned().unwrap_or_default(),
                    "setErrs": errs.get(name).cloned().unwrap_or_default(),
                    "returnImmediately": true,
                    "maxEvents": 100,
                });
                let answer = async {
                    let resp = r
                        .http
                        .post(&poll.url)
                        .bearer_auth(bearer.expose())
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .map_err(|e| e.without_url().to_string())?;
                    if !resp.status().is_success() {
                        return Err(format!("HTTP {}", resp.status()));
                    }
                    let b = resp.bytes().await.map_err(|e| e.to_string())?;
                    if b.len() > 4 * 1024 * 1024 {
                        return Err("the poll answer is over 4 MiB".into());
                    }
                    serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string())
                }
                .await;
                let v = match answer {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(transmitter = %name, error = %e, "polling for signals failed");
                        next.insert(name.clone(), Instant::now() + poll.interval);
                        continue;
                    }
                };
                // The acks and errors just sent are delivered.
                acks.remove(name);
                errs.remove(name);
                let sets = v
                    .get("sets")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                for (jti, set_text) in &sets {
                    let Some(text) = set_text.as_str() else {
                        continue;
                    };
                    match self.receive_set(name, text, "poll").await {
                        Ok(()) => acks.entry(name.clone()).or_default().push(jti.clone()),
                        Err(e) => {
                            errs.entry(name.clone()).or_default().insert(
                                jti.clone(),
                                json!({"err": e.code(), "description": e.description()}),
                            );
                        }
                    }
                }
                let more = v.get("moreAvailable") == Some(&Value::Bool(true));
                let pending = acks.contains_key(name) || errs.contains_key(name);
                let wait = if more || pending {
                    Duration::ZERO
                } else {
                    poll.interval
                };
                next.insert(name.clone(), Instant::now() + wait);
            }
        }
    }
}
