//! A bounded audit trail of refusals.
//!
//! Every refused request (a bad token, an unknown peer, a denied grant) is an audit record, and
//! so a row on disk: a peer sending bad requests in a loop could fill the disk. Per peer uid,
//! at most `refusal_audit_limit` refusal records are written per `refusal_audit_window`; the
//! rest are counted, and when the window closes one `refusals_suppressed` record says how many,
//! of which kinds, from whom. Nothing refused goes unaccounted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::record::{AuditRecord, Outcome, PeerRecord, event, reason};
use crate::time::rfc3339;

struct Window {
    start: SystemTime,
    written: u32,
    suppressed: u32,
    /// reason code → count, of the suppressed ones.
    reasons: BTreeMap<String, u32>,
    peer: Option<PeerRecord>,
}

/// The budget: `limit` records per `window` per peer uid (from the running configuration, so
/// a reload applies at once).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub(crate) limit: u32,
    pub(crate) window: Duration,
}

#[derive(Default)]
pub(crate) struct RefusalLimiter {
    windows: Mutex<HashMap<u32, Window>>,
}

impl RefusalLimiter {
    /// The records to write for these refusals: those within the peer's budget, and a summary
    /// of any window of that peer that has closed.
    pub(crate) fn admit(
        &self,
        records: Vec<AuditRecord>,
        budget: Budget,
        now: SystemTime,
    ) -> Vec<AuditRecord> {
        let Ok(mut windows) = self.windows.lock() else {
            return records;
        };
        let mut out = Vec::with_capacity(records.len());
        for rec in records {
            let Some(uid) = rec.peer.as_ref().map(|p| p.uid) else {
                out.push(rec);
                continue;
            };
            let w = windows.entry(uid).or_insert_with(|| Window {
                start: now,
                written: 0,
                suppressed: 0,
                reasons: BTreeMap::new(),
                peer: None,
            });
            if now.duration_since(w.start).unwrap_or_default() >= budget.window {
                out.extend(summary(uid, w, now));
                *w = Window {
                    start: now,
                    written: 0,
                    suppressed: 0,
                    reasons: BTreeMap::new(),
                    peer: None,
                };
            }
            if w.written < budget.limit {
                w.written += 1;
                out.push(rec);
            } else {
                w.suppressed += 1;
                let reason = rec.reason.clone().unwrap_or_else(|| rec.event.clone());
                *w.reasons.entry(reason).or_default() += 1;
                w.peer = rec.peer;
            }
        }
        out
    }

    /// Summaries of every window that has closed; forgets idle peers.
    pub(crate) fn flush(&self, budget: Budget, now: SystemTime) -> Vec<AuditRecord> {
        let Ok(mut windows) = self.windows.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        windows.retain(|uid, w| {
            if now.duration_since(w.start).unwrap_or_default() < budget.window {
                return true;
            }
            out.extend(summary(*uid, w, now));
            false
        });
        out
    }
}

fn summary(uid: u32, w: &Window, now: SystemTime) -> Option<AuditRecord> {
    if w.suppressed == 0 {
        return None;
    }
    let mut rec = AuditRecord::new(event::REFUSALS_SUPPRESSED, Outcome::Denied, now)
        .reason(reason::REFUSAL_AUDIT_LIMIT)
        .detail("count", w.suppressed)
        .detail("since", rfc3339(w.start))
        .detail("until", rfc3339(now))
        .detail(
            "reasons",
            serde_json::to_value(&w.reasons).unwrap_or_default(),
        );
    rec.peer = w.peer.clone().or(Some(PeerRecord {
        uid,
        ..PeerRecord::default()
    }));
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(uid: u32, reason: crate::record::Reason) -> AuditRecord {
        let mut r = AuditRecord::new(
            event::TOKEN_REJECTED,
            Outcome::Denied,
            SystemTime::UNIX_EPOCH,
        )
        .reason(reason);
        r.peer = Some(PeerRecord {
            uid,
            ..PeerRecord::default()
        });
        r
    }

    #[test]
    fn a_flood_is_bounded_and_every_refusal_counted() {
        let l = RefusalLimiter::default();
        let b = Budget {
            limit: 3,
            window: Duration::from_secs(10),
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut written = Vec::new();
        for i in 0..100 {
            let reason = if i % 2 == 0 {
                reason::MALFORMED
            } else {
                reason::EXPIRED
            };
            written.extend(l.admit(vec![refusal(7, reason)], b, t0));
        }
        // Another peer has its own budget.
        written.extend(l.admit(vec![refusal(8, reason::MALFORMED)], b, t0));
        assert_eq!(written.len(), 4);
        // The window closes: one summary for the 97 suppressed.
        let later = t0 + Duration::from_secs(11);
        let summaries = l.flush(b, later);
        assert_eq!(summaries.len(), 1);
        let s = &summaries[0];
        assert_eq!(s.event, event::REFUSALS_SUPPRESSED);
        assert_eq!(s.detail["count"], 97);
        assert_eq!(s.detail["reasons"]["malformed"], 48);
        assert_eq!(s.detail["reasons"]["expired"], 49);
        assert_eq!(s.peer.as_ref().map(|p| p.uid), Some(7));
        // A fresh window writes again.
        assert_eq!(
            l.admit(vec![refusal(7, reason::MALFORMED)], b, later).len(),
            1
        );
    }
}
