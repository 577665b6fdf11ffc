//! Time as the journal stores it (Unix milliseconds) and as people read it (RFC 3339).
//!
//! Code that decides expiry takes `now` as an argument; only the edges (request handlers, the
//! reaper's loop) read the clock, through [`Clock`]. The daemon uses [`SystemClock`]; the
//! broker's unit tests use [`ManualClock`] and move time by hand.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

pub fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Never panics: a time past year 9999 (a damaged journal, a backend's answer) is written as
/// the latest RFC 3339 can express (found by the `journal` fuzz target).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(credbroker_provider_api::clamp_rfc3339(t)).to_string()
}

pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339(from_ms(ms))
}

/// Parses `2026-11-22T10:00:00Z`, `2026-11-22 10:00:00`, or a relative `24h` (meaning ago).
pub fn parse_when(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    credbroker_provider_api::parse_duration(text)
        .map(|d| now.checked_sub(d).unwrap_or(UNIX_EPOCH))
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration like 24h"))
}

/// The source of `now` for the daemon's loops and handlers.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told: the broker's unit tests expire tasks, age revocations
/// and cross retention windows in microseconds (`broker::harness`).
pub struct ManualClock {
    now: std::sync::Mutex<SystemTime>,
}

impl ManualClock {
    pub fn at(t: SystemTime) -> Self {
        Self {
            now: std::sync::Mutex::new(t),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzzing regression (fuzz/regressions/journal/audit-time-past-year-9999): an audit row's
    /// time past year 9999 panicked while it was formatted.
    #[test]
    fn times_past_year_9999_are_written_not_a_panic() {
        assert_eq!(rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(253_402_300_800_000), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
