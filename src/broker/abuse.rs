//! Abuse detectors: conclusions drawn from requests the broker sees (on its socket and, through
//! the gateway's reports, at the network edge). Each is off unless `[abuse]` configures it; the
//! state they keep is in memory, bounded, and pruned by the reaper's loop. A restart forgets
//! counts (a burst straddling a restart is counted from zero) but never a block: those are
//! journaled (`broker::blocks`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use super::blocks::Who;
use crate::config::abuse::{AbuseConfig, Counting, Per, Response};
use crate::journal::blocks::BlockRow;
use crate::record::{Reason, reason};

/// Tokens whose first origin is remembered; past this, new tokens go unwatched (and a warning
/// says so) rather than memory growing without bound.
const MAX_TOKENS: usize = 1_000_000;
/// Keys counted by one counting detector.
const MAX_KEYS: usize = 100_000;
/// Networks remembered per client; a client seen from more is not watched for new ones.
const MAX_NETWORKS: usize = 64;
/// After firing for a key, a detector stays quiet for this long (or its window): one finding
/// per burst, while `deny` still refuses every request of it.
const QUIET_MS: i64 = 60_000;

/// What a detector sees.
pub(super) enum Signal<'a> {
    /// A token presented by a workload that is not its audience.
    WrongAudience {
        workload: &'a str,
        intended: Option<&'a str>,
    },
    /// A request made with an accepted token, from this origin; `counted` by the rate detector
    /// (BeginTask and MCP calls are; renewals are not).
    Presented { origin: Origin, counted: bool },
    /// A request refused with this code (counted by scope probing when it is one of its codes).
    Refused(Reason),
    /// A request covered by a block.
    Blocked(&'a BlockRow),
}

/// Where a request came from: a local peer (uid, executable, unit) or, at the gateway, a
/// network. The two are never compared with each other.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Origin {
    Peer(String),
    Network(String),
}

impl Origin {
    pub(super) fn peer(p: &crate::workload::PeerInfo) -> Self {
        let exe = p.exe.as_deref().map(|e| e.display().to_string());
        let unit = p.user_unit.as_deref().or(p.unit.as_deref());
        Self::Peer(format!(
            "uid={} exe={} unit={}",
            p.uid,
            exe.as_deref().unwrap_or("-"),
            unit.unwrap_or("-")
        ))
    }

    fn text(&self) -> &str {
        match self {
            Self::Peer(s) | Self::Network(s) => s,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Peer(_) => "peer",
            Self::Network(_) => "network",
        }
    }
}

/// A detector fired.
#[derive(Debug)]
pub(super) struct Finding {
    pub(super) detector: &'static str,
    pub(super) responses: Vec<Response>,
    pub(super) evidence: Map<String, Value>,
    /// Fired for the same key within its quiet period: only `deny` (and the log) apply again.
    pub(super) repeat: bool,
}

/// The refusals scope probing counts: asking for what the token does not allow.
const PROBING: [Reason; 6] = [
    reason::INSUFFICIENT_SCOPE,
    reason::GRANT_NOT_ALLOWED,
    reason::TOOL_NOT_ALLOWED,
    reason::NARROWING_NOT_ALLOWED,
    reason::NARROWING_EXCEEDS_GRANT,
    reason::UNKNOWN_GRANT,
];

#[derive(Default)]
struct Counters {
    /// (issuer, jti, origin kind) → (first origin, token expiry ms).
    seen: HashMap<(String, String, &'static str), (String, i64)>,
    probing: HashMap<String, VecDeque<i64>>,
    rate: HashMap<String, VecDeque<i64>>,
    /// (issuer client) → the networks its gateway calls came from (at most `MAX_NETWORKS`).
    networks: HashMap<String, Vec<String>>,
    /// (detector, key) → quiet until (ms).
    quiet: HashMap<(&'static str, String), i64>,
    warned_full: bool,
}

#[derive(Default)]
pub(super) struct Detectors {
    counters: Mutex<Counters>,
}

fn key(per: Per, who: &Who) -> String {
    match (per, who.owner.as_deref()) {
        (Per::Token, _) => format!("token {}", who.token_fp),
        (Per::Owner, Some(o)) => format!("owner {o}"),
        // A token without an owner is counted with its client: unattributed is not a pass.
        (Per::Client | Per::Owner, _) => format!("client {} {}", who.issuer, who.client_id),
    }
}

/// Counts one event; the number in the window when it is at or over the threshold. Only the
/// last `threshold` times are kept: every event while the rate stays over it fires (repeats
/// are quiet), so `deny` refuses the whole burst, not one request of it.
fn count(
    map: &mut HashMap<String, VecDeque<i64>>,
    c: &Counting,
    k: &str,
    now_ms: i64,
) -> Option<usize> {
    if map.len() >= MAX_KEYS && !map.contains_key(k) {
        return None;
    }
    let window = i64::try_from(c.window.as_millis()).unwrap_or(i64::MAX);
    let q = map.entry(k.to_owned()).or_default();
    while q.front().is_some_and(|&t| t <= now_ms - window) {
        q.pop_front();
    }
    q.push_back(now_ms);
    while q.len() > c.threshold as usize {
        q.pop_front();
    }
    let n = q.len();
    (n >= c.threshold as usize).then_some(n)
}

/// Records `net` for the client; the networks it was seen from before, when `net` is new to a
/// client already seen from others.
fn new_network(
    map: &mut HashMap<String, Vec<String>>,
    who: &Who,
    net: &str,
) -> Option<Vec<String>> {
    let k = format!("{} {}", who.issuer, who.client_id);
    if map.len() >= MAX_KEYS && !map.contains_key(&k) {
        return None;
    }
    let known = map.entry(k).or_default();
    if known.iter().any(|n| n == net) {
        return None;
    }
    let before = known.clone();
    if known.len() < MAX_NETWORKS {
        known.push(net.to_owned());
    }
    (!before.is_empty() && before.len() < MAX_NETWORKS).then_some(before)
}

impl Counters {
    fn quiet(&mut self, detector: &'static str, k: String, now_ms: i64, span_ms: i64) -> bool {
        match self.quiet.get(&(detector, k.clone())) {
            Some(&until) if until > now_ms => true,
            _ => {
                self.quiet
                    .insert((detector, k), now_ms + span_ms.max(QUIET_MS));
                false
            }
        }
    }
}

impl Detectors {
    /// What the signal makes of `who`, under `cfg`: at most one finding per signal.
    pub(super) fn observe(
        &self,
        cfg: &AbuseConfig,
        who: &Who,
        signal: &Signal<'_>,
        now_ms: i64,
    ) -> Vec<Finding> {
        let Ok(mut c) = self.counters.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut fire = |c: &mut Counters,
                        detector: &'static str,
                        responses: &[Response],
                        k: String,
                        span_ms: i64,
                        evidence: Value| {
            let repeat = c.quiet(detector, k, now_ms, span_ms);
            let Value::Object(evidence) = evidence else {
                return;
            };
            out.push(Finding {
                detector,
                responses: responses.to_vec(),
                evidence,
                repeat,
            });
        };
        match signal {
            Signal::WrongAudience { workload, intended } => {
                if let Some(d) = &cfg.wrong_audience {
                    fire(
                        &mut c,
                        "wrong_audience",
                        &d.responses,
                        format!("{} {}", who.token_fp, workload),
                        0,
                        json!({"presented_by": workload, "intended_workload": intended}),
                    );
                }
            }
            Signal::Presented { origin, counted } => {
                if let Some(d) = &cfg.token_reuse
                    && !who.jti.is_empty()
                {
                    let k = (who.issuer.clone(), who.jti.clone(), origin.kind());
                    match c.seen.get(&k) {
                        Some((first, _)) if first != origin.text() => {
                            let first = first.clone();
                            let span = who.token_exp_ms - now_ms;
                            fire(
                                &mut c,
                                "token_reuse",
                                &d.responses,
                                format!("{} {}", who.issuer, who.jti),
                                span,
                                json!({
                                    "origin": origin.kind(),
                                    "first_seen_from": first,
                                    "now_seen_from": origin.text(),
                                }),
                            );
                        }
                        Some(_) => {}
                        None if c.seen.len() >= MAX_TOKENS => {
                            if !c.warned_full {
                                c.warned_full = true;
                                tracing::warn!(
                                    "token reuse detection is watching {MAX_TOKENS} tokens; new \
                                     tokens go unwatched until older ones expire"
                                );
                            }
                        }
                        None => {
                            c.seen
                                .insert(k, (origin.text().to_owned(), who.token_exp_ms));
                        }
                    }
                }
                if let (Some(d), Origin::Network(net)) = (&cfg.token_reuse, origin)
                    && d.new_network
                    && let Some(known) = new_network(&mut c.networks, who, net)
                {
                    fire(
                        &mut c,
                        "token_reuse",
                        &d.responses,
                        format!("network {} {} {net}", who.issuer, who.client_id),
                        0,
                        json!({
                            "origin": "network",
                            "client_networks": known,
                            "now_seen_from": net,
                            "why": "the client was never seen from this network",
                        }),
                    );
                }
                if let Some(d) = cfg.rate.as_ref().filter(|_| *counted) {
                    let k = key(d.per, who);
                    if let Some(n) = count(&mut c.rate, d, &k, now_ms) {
                        let span = i64::try_from(d.window.as_millis()).unwrap_or(i64::MAX);
                        fire(
                            &mut c,
                            "rate",
                            &d.responses,
                            k.clone(),
                            span,
                            json!({
                                "per": d.per.as_str(), "key": k, "requests": n,
                                "window_seconds": d.window.as_secs(),
                                "threshold": d.threshold,
                            }),
                        );
                    }
                }
            }
            Signal::Refused(code) => {
                if let Some(d) = &cfg.scope_probing
                    && PROBING.contains(code)
                {
                    let k = key(d.per, who);
                    if let Some(n) = count(&mut c.probing, d, &k, now_ms) {
                        let span = i64::try_from(d.window.as_millis()).unwrap_or(i64::MAX);
                        fire(
                            &mut c,
                            "scope_probing",
                            &d.responses,
                            k.clone(),
                            span,
                            json!({
                                "per": d.per.as_str(), "key": k, "refusals": n,
                                "last_refusal": code.as_str(),
                                "window_seconds": d.window.as_secs(),
                                "threshold": d.threshold,
                            }),
                        );
                    }
                }
            }
            Signal::Blocked(b) => {
                if let Some(d) = &cfg.blocked_reuse {
                    fire(
                        &mut c,
                        "blocked_reuse",
                        &d.responses,
                        format!("{} {}", who.token_fp, b.id),
                        0,
                        json!({
                            "block_id": b.id, "block_kind": b.kind.as_str(),
                            "block_source": b.source,
                        }),
                    );
                }
            }
        }
        out
    }

    /// Forgets what no longer matters: expired tokens, counts older than any window, quiet
    /// periods over.
    pub(super) fn prune(&self, now_ms: i64) {
        let Ok(mut c) = self.counters.lock() else {
            return;
        };
        c.seen.retain(|_, (_, exp)| *exp > now_ms);
        c.quiet.retain(|_, until| *until > now_ms);
        // A day bounds every window (`bounds::WINDOW`).
        let day = 86_400_000;
        c.probing
            .retain(|_, q| q.back().is_some_and(|&t| t > now_ms - day));
        c.rate
            .retain(|_, q| q.back().is_some_and(|&t| t > now_ms - day));
        c.warned_full = false;
    }
}
