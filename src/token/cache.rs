//! Successful validations, keyed by the token's SHA-256, kept until the token expires.
//!
//! A hit skips parsing and the signature check, but never the checks that can change with time
//! or place: expiry is re-checked against `now`, the key must still be in the issuer's JWKS, and
//! the audience is checked per call by the verifier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Alg, Claims};

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) claims: Arc<Claims>,
    pub(crate) kid: Option<String>,
    pub(crate) alg: Alg,
}

pub(crate) struct Cache {
    max: usize,
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Cache {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, fingerprint: &[u8; 32]) -> Option<Entry> {
        self.map.lock().ok()?.get(fingerprint).cloned()
    }

    pub(crate) fn insert(&self, fingerprint: [u8; 32], entry: Entry, now: i64) {
        if self.max == 0 {
            return;
        }
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= self.max {
            map.retain(|_, e| e.claims.expires_at > now);
            if map.len() >= self.max {
                // Still full of live tokens: drop an arbitrary half rather than grow without
                // bound. Evicted tokens are simply verified again on their next use.
                let keep = self.max / 2;
                let mut n = 0;
                map.retain(|_, _| {
                    n += 1;
                    n <= keep
                });
            }
        }
        map.insert(fingerprint, entry);
    }

    pub(crate) fn remove(&self, fingerprint: &[u8; 32]) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(fingerprint);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}
