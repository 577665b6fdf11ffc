//! [`Task`]: a begun task and its credentials, ended on `end()` or, failing that, on drop.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;

use crate::proto::v1;
use crate::{Broker, Ended, Error};

/// One credential of a task, as the provider issued it for one grant. `public` values may be
/// shown (a user name, a key id); `secret` values are [`SecretString`]s, printed by `Debug` as
/// `[REDACTED]`: read them with `secrecy::ExposeSecret` where the credential is used.
#[derive(Debug)]
pub struct Credential {
    pub lease_id: String,
    pub grant: String,
    pub provider: String,
    /// The provider kind (`vault`, `aws`, `github`, …): how to read the fields.
    pub kind: String,
    pub expires_at: Option<SystemTime>,
    pub public: HashMap<String, String>,
    pub secret: HashMap<String, SecretString>,
}

impl From<v1::Credential> for Credential {
    fn from(c: v1::Credential) -> Self {
        Self {
            lease_id: c.lease_id,
            grant: c.grant,
            provider: c.provider,
            kind: c.kind,
            expires_at: c.expires_at.and_then(|t| SystemTime::try_from(t).ok()),
            public: c.public,
            // Moved, not copied: the wire message is consumed here.
            secret: c
                .secret
                .into_iter()
                .map(|(k, v)| (k, SecretString::from(v)))
                .collect(),
        }
    }
}

/// A task begun by [`Broker::begin`].
///
/// End it with [`Task::end`]. A `Task` dropped without being ended is ended in the background:
/// - inside a tokio runtime, by a task spawned on that runtime (so it runs only while the
///   runtime does: one dropped as `main` returns, or while the runtime shuts down, may never be
///   ended);
/// - outside any runtime, by a new thread with its own runtime and connection (which dies with
///   the process if the process exits first).
///
/// Whatever is not ended — those cases, a killed process — is revoked by the daemon's reaper
/// when the task expires. So call `end().await` where it matters; drop is the safety net.
pub struct Task {
    broker: Broker,
    record: v1::Task,
    credentials: Vec<Credential>,
    expires_at: Option<SystemTime>,
    armed: bool,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.record.id)
            .field("expires_at", &self.expires_at)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Task {
    pub(crate) fn new(broker: Broker, resp: v1::BeginTaskResponse) -> Self {
        let record = resp.task.unwrap_or_default();
        Self {
            broker,
            expires_at: expiry(&record),
            credentials: resp.credentials.into_iter().map(Into::into).collect(),
            record,
            armed: true,
        }
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// When the task, and every credential in it, expires.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    pub fn credentials(&self) -> &[Credential] {
        &self.credentials
    }

    /// The credential issued for `grant`.
    pub fn credential(&self, grant: &str) -> Option<&Credential> {
        self.credentials.iter().find(|c| c.grant == grant)
    }

    /// The daemon's record of the task (principal, peer, leases), as `task show` has it.
    pub fn record(&self) -> &v1::Task {
        &self.record
    }

    /// Extends the task (see [`Broker::renew`]); returns the new expiry.
    pub async fn renew(
        &mut self,
        token: &SecretString,
        ttl: Option<Duration>,
    ) -> Result<Option<SystemTime>, Error> {
        self.record = self.broker.renew(&self.record.id, token, ttl).await?;
        self.expires_at = expiry(&self.record);
        Ok(self.expires_at)
    }

    /// Ends the task and revokes its credentials. On an error the task is left to the daemon's
    /// expiry reaper (drop does not try again: EndTask was already retried for ten seconds).
    /// Cancelling the returned future (a timeout, a `select!`) drops the task un-ended, which
    /// ends it in the background as any dropped task.
    pub async fn end(mut self) -> Result<Ended, Error> {
        let ended = self.broker.end(&self.record.id).await;
        self.armed = false;
        ended
    }

    /// Gives up ownership: the task is neither ended here nor on drop, and lives until someone
    /// ends it by id or it expires (`credbroker task begin` hands tasks to scripts this way).
    pub fn detach(mut self) -> String {
        self.armed = false;
        std::mem::take(&mut self.record.id)
    }
}

fn expiry(t: &v1::Task) -> Option<SystemTime> {
    t.expires_at.and_then(|t| SystemTime::try_from(t).ok())
}

impl Drop for Task {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let id = std::mem::take(&mut self.record.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let broker = self.broker.clone();
            rt.spawn(async move { broker.end(&id).await });
            return;
        }
        // No runtime here, and the connection may belong to one that is gone: dial afresh.
        let path = self.broker.socket().to_path_buf();
        let _detached = std::thread::Builder::new()
            .name("credbroker-end".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async { Broker::connect(&path).await?.end(&id).await })
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(())
            });
    }
}

/// Shows a map's keys with every value as `[REDACTED]`.
pub(crate) struct Redacted<I>(pub(crate) I);

impl<'a, I: Iterator<Item = &'a String> + Clone> fmt::Debug for Redacted<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.clone().map(|k| (k, "[REDACTED]")))
            .finish()
    }
}
