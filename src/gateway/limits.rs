//! Rate limits per client and per owner: token buckets, so a burst up to the limit passes and
//! the rate is held over time. Keys are per issuer (the same client id at two issuers is two
//! clients). The map is bounded: full buckets (idle clients) are the first to go.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::gateway::Rate;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub(super) struct Limiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
    cap: usize,
}

impl Limiter {
    pub(super) fn new(rate: Rate, cap: usize) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// Takes one request from `key`'s bucket, or says how long until one is there.
    pub(super) fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let per_token = self.rate.per.as_secs_f64() / f64::from(self.rate.n);
        let full = f64::from(self.rate.n);
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= self.cap && !buckets.contains_key(key) {
            // A full bucket is the same as no bucket: dropping those loses nothing.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() / per_token < full
            });
            if buckets.len() >= self.cap {
                // Still full of active clients: the one refilled longest ago goes.
                if let Some(k) = buckets
                    .iter()
                    .min_by_key(|(_, b)| b.at)
                    .map(|(k, _)| k.clone())
                {
                    buckets.remove(&k);
                }
            }
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: full,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() / per_token).min(full);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) * per_token))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_key() {
        let l = Limiter::new(
            Rate {
                n: 3,
                per: Duration::from_secs(60),
            },
            100,
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take("a", t0), Ok(()));
        }
        let wait = l.take("a", t0).expect_err("the fourth is over the limit");
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(l.take("b", t0), Ok(()), "another key has its own bucket");
        assert_eq!(l.take("a", t0 + Duration::from_secs(20)), Ok(()));
        assert!(l.take("a", t0 + Duration::from_secs(20)).is_err());
    }

    #[test]
    fn the_map_stays_bounded() {
        let l = Limiter::new(
            Rate {
                n: 1,
                per: Duration::from_secs(3600),
            },
            2,
        );
        let t0 = Instant::now();
        for k in ["a", "b", "c", "d"] {
            assert_eq!(l.take(k, t0), Ok(()));
        }
        assert!(l.buckets.lock().map(|b| b.len()).unwrap_or(0) <= 2);
    }
}
