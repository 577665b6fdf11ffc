//! 2025-11-25 sessions, bound to who opened them. An `Mcp-Session-Id` is not a credential: the
//! MCP security guidance says a server must not take it as one, and an upstream that keeps
//! per-session state would otherwise serve one caller's session to any other caller who learns
//! its id. The gateway binds each id the upstream hands out to the token's principal and refuses
//! it from anyone else. (2026-07-28 requests are stateless and carry no session.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Who a token speaks for: the same `sub` at another issuer, or through another client, is
/// someone else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Principal {
    pub(super) issuer: String,
    pub(super) subject: String,
    pub(super) client_id: String,
}

/// A client's own name and version, from the `initialize` that opened the session.
pub(super) type ClientInfo = (String, String);

/// Who opened a session, when it was last used, and what its client said it was.
type Entry = (Principal, Instant, Option<ClientInfo>);

pub(super) struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
    cap: usize,
    idle: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Not a session this gateway saw opened (or it was idle too long): the client opens a new
    /// one, as the transport says to on 404.
    Unknown,
    /// Opened by another principal.
    NotYours,
}

impl Sessions {
    pub(super) fn new(cap: usize, idle: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            cap,
            idle,
        }
    }

    /// Whether `principal` may use session `id`, and marks it used.
    pub(super) fn check(
        &self,
        id: &str,
        principal: &Principal,
        now: Instant,
    ) -> Result<(), Refusal> {
        let Ok(mut map) = self.map.lock() else {
            return Err(Refusal::Unknown);
        };
        match map.get_mut(id) {
            Some((p, _, _)) if p != principal => Err(Refusal::NotYours),
            Some((_, seen, _)) if now.duration_since(*seen) > self.idle => {
                map.remove(id);
                Err(Refusal::Unknown)
            }
            Some((_, seen, _)) => {
                *seen = now;
                Ok(())
            }
            None => Err(Refusal::Unknown),
        }
    }

    /// What the session's client said about itself when it opened the session.
    pub(super) fn client(&self, id: &str) -> Option<ClientInfo> {
        self.map
            .lock()
            .ok()?
            .get(id)
            .and_then(|(_, _, c)| c.clone())
    }

    /// Records the session the upstream opened for `principal`. An id already bound stays
    /// with its first principal.
    pub(super) fn bind(
        &self,
        id: &str,
        principal: &Principal,
        client: Option<ClientInfo>,
        now: Instant,
    ) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.contains_key(id) {
            return;
        }
        if map.len() >= self.cap {
            let idle = self.idle;
            map.retain(|_, (_, seen, _)| now.duration_since(*seen) <= idle);
        }
        if map.len() >= self.cap {
            // Still full: the least recently used session goes (its client re-opens on 404).
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, seen, _))| *seen)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.to_string(), (principal.clone(), now, client));
    }

    pub(super) fn end(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(sub: &str) -> Principal {
        Principal {
            issuer: "https://as".into(),
            subject: sub.into(),
            client_id: "c".into(),
        }
    }

    #[test]
    fn a_session_is_its_openers_only_and_lapses_when_idle() {
        let s = Sessions::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        s.bind("s1", &who("alice"), None, t0);
        assert_eq!(s.check("s1", &who("alice"), t0), Ok(()));
        assert_eq!(s.check("s1", &who("mallory"), t0), Err(Refusal::NotYours));
        assert_eq!(s.check("nope", &who("alice"), t0), Err(Refusal::Unknown));
        // Binding again does not move a session to someone else.
        s.bind("s1", &who("mallory"), None, t0);
        assert_eq!(s.check("s1", &who("mallory"), t0), Err(Refusal::NotYours));
        assert_eq!(
            s.check("s1", &who("alice"), t0 + Duration::from_secs(61)),
            Err(Refusal::Unknown)
        );
        s.bind("s2", &who("alice"), Some(("agent".into(), "1".into())), t0);
        assert_eq!(s.client("s2"), Some(("agent".into(), "1".into())));
        assert_eq!(s.client("s1"), None);
        s.end("s1");
        assert_eq!(s.check("s1", &who("alice"), t0), Err(Refusal::Unknown));
    }

    #[test]
    fn when_full_the_least_recently_used_session_goes() {
        let s = Sessions::new(2, Duration::from_secs(600));
        let t0 = Instant::now();
        s.bind("a", &who("x"), None, t0);
        s.bind("b", &who("x"), None, t0 + Duration::from_secs(1));
        assert_eq!(s.check("a", &who("x"), t0 + Duration::from_secs(2)), Ok(()));
        s.bind("c", &who("x"), None, t0 + Duration::from_secs(3));
        assert_eq!(
            s.check("b", &who("x"), t0 + Duration::from_secs(4)),
            Err(Refusal::Unknown)
        );
        assert_eq!(s.check("a", &who("x"), t0 + Duration::from_secs(4)), Ok(()));
        assert_eq!(s.check("c", &who("x"), t0 + Duration::from_secs(4)), Ok(()));
    }
}
