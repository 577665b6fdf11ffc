//! Accepting connections without letting anyone exhaust the daemon.
//!
//! A review held 400 idle connections open (no token, no registered workload needed): the
//! daemon ran out of file descriptors, its accept loop spun at ~0.9 core, and EndTask and the
//! admin `status` hung until the flood ended, so operators could not revoke. Now:
//!
//! * every socket has a connection budget taken from `RLIMIT_NOFILE` (raised to its hard
//!   limit at start), with a reserve the budgets never touch: the journal, provider HTTPS
//!   connections and the admin socket keep their descriptors during a flood;
//! * one uid holds at most `max_connections_per_uid` connections per socket (and never more
//!   than half its budget); more are closed
//!   as they arrive, so one flooding workload cannot crowd out another;
//! * a connection that fails attestation is closed at once instead of being served refusals;
//! * a connection that sends no request within `connection_idle_timeout` is closed
//!   (`listener::PeerStream`);
//! * accept errors (EMFILE, ENFILE) back off instead of spinning.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::listener::PeerStream;

/// Descriptors no connection budget may use: the journal, provider connections, logging,
/// metrics, reloads.
const RESERVE: u64 = 96;
/// The admin socket's share: enough for operators and their scripts, never the whole budget.
const ADMIN_SHARE: usize = 32;

/// Connection limits of one socket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) per_uid: usize,
    pub(crate) total: usize,
    pub(crate) idle: Duration,
}

/// Raises the soft descriptor limit to the hard one and splits what is left after the reserve
/// between the two sockets: `(broker, admin)` connection budgets.
pub(crate) fn budgets() -> (usize, usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    };
    split(soft)
}

fn split(limit: u64) -> (usize, usize) {
    let usable = usize::try_from(limit.saturating_sub(RESERVE)).unwrap_or(usize::MAX);
    let admin = ADMIN_SHARE.min(usable / 4).max(4);
    (usable.saturating_sub(admin).max(8), admin)
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// One open connection's place in the budget; given back when the connection is dropped.
pub(crate) struct ConnGuard {
    counts: Arc<Mutex<Counts>>,
    uid: u32,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.per_uid.get_mut(&self.uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_uid.remove(&self.uid);
                }
            }
        }
    }
}

/// Logs a repeated condition at most once a second, with how often it happened meanwhile.
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    fn hit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Accepted, attested, admitted connections as a stream for tonic.
pub(crate) fn incoming(
    listener: UnixListener,
    read_exe: Arc<AtomicBool>,
    limits: Limits,
    socket: &'static str,
) -> ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tx, read_exe, limits, socket));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: UnixListener,
    tx: mpsc::Sender<io::Result<PeerStream>>,
    read_exe: Arc<AtomicBool>,
    limits: Limits,
    socket: &'static str,
) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let mut backoff = Duration::from_millis(5);
    let (mut errors, mut refused, mut unverified) =
        (Throttle::new(), Throttle::new(), Throttle::new());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = tx.closed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                stream
            }
            Err(e) => {
                if let Some(n) = errors.hit() {
                    tracing::warn!(socket, error = %e, repeated = n, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let full = counts.lock().map_or(true, |c| c.total >= limits.total);
        if full {
            if let Some(n) = refused.hit() {
                tracing::warn!(
                    socket,
                    limit = limits.total,
                    repeated = n,
                    "connection budget spent; closing new connections"
                );
            }
            continue;
        }
        let peer = super::peer::attest(&stream, read_exe.load(Ordering::Relaxed));
        let uid = match &peer {
            Ok(p) => p.uid,
            Err(e) => {
                if let Some(n) = unverified.hit() {
                    tracing::warn!(socket, error = %e, repeated = n, "could not identify a connecting peer; connection closed");
                }
                continue;
            }
        };
        let admitted = counts.lock().is_ok_and(|mut c| {
            let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
            if mine >= limits.per_uid || c.total >= limits.total {
                return false;
            }
            c.total += 1;
            c.per_uid.insert(uid, mine + 1);
            true
        });
        if !admitted {
            if let Some(n) = refused.hit() {
                tracing::warn!(
                    socket,
                    peer_uid = uid,
                    limit = limits.per_uid,
                    repeated = n,
                    "too many connections from one uid; closing new ones"
                );
            }
            continue;
        }
        let guard = ConnGuard {
            counts: Arc::clone(&counts),
            uid,
        };
        let stream = PeerStream::new(stream, Arc::new(peer), guard, limits.idle);
        if tx.send(Ok(stream)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_keep_a_reserve_and_give_the_admin_socket_its_share() {
        assert_eq!(split(256), (128, 32));
        assert_eq!(split(1024), (896, 32));
        // Even a tiny limit leaves both sockets something.
        let (b, a) = split(64);
        assert!(b >= 8 && a >= 4);
    }

    #[test]
    fn a_throttle_reports_what_it_swallowed() {
        let mut t = Throttle::new();
        assert_eq!(t.hit(), Some(0));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        t.last = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(t.hit(), Some(2));
    }
}
