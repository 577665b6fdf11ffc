//! [`Broker`]: a connection to the broker socket, and the calls with their retry rules.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret as _, SecretString};
use tonic::transport::Channel;

use crate::proto::v1::{self, broker_client::BrokerClient};
use crate::{Error, Task, connect_unix, is_transport};

/// How long BeginTask and EndTask keep retrying a call whose answer was lost to the transport.
pub const RETRY_FOR: Duration = Duration::from_secs(10);

/// How long one attempt may wait for its answer: a daemon that accepts the connection and
/// never answers (stopped, wedged) counts as no answer, retried like a reset.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

type Notice = Arc<dyn Fn(&Error) + Send + Sync>;

/// A connection to credbroker's broker socket. Cheap to clone; clones share the connection,
/// which is redialled by itself after a daemon restart.
#[derive(Clone)]
pub struct Broker {
    client: BrokerClient<Channel>,
    path: PathBuf,
    notice: Option<Notice>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("path", &self.path).finish()
    }
}

/// What [`Broker::begin`] asks for. `BeginTask::new` fills in the optional fields; set them
/// with struct-update syntax: `BeginTask { ttl: Some(d), ..BeginTask::new(token, tool, grants) }`.
#[derive(Debug)]
pub struct BeginTask {
    /// The caller's OAuth access token (never printed: `Debug` shows it redacted).
    pub token: SecretString,
    /// The MCP tool about to run.
    pub tool: String,
    /// The grants wanted, by name.
    pub grants: Vec<String>,
    /// Wanted lifetime (whole seconds, at least one); capped by policy and the token's expiry.
    pub ttl: Option<Duration>,
    /// Narrowings of list-valued grant parameters; each names one of `grants`.
    pub narrow: Vec<Narrow>,
    /// The `Credbroker-Call` header `credbroker gateway` added to the MCP request.
    pub call_id: Option<String>,
}

/// Narrow the grant's list parameter `param` to `values` (a subset of what the grant allows).
#[derive(Debug, Clone)]
pub struct Narrow {
    pub grant: String,
    pub param: String,
    pub values: Vec<String>,
}

impl BeginTask {
    pub fn new(
        token: SecretString,
        tool: impl Into<String>,
        grants: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            token,
            tool: tool.into(),
            grants: grants.into_iter().map(Into::into).collect(),
            ttl: None,
            narrow: Vec::new(),
            call_id: None,
        }
    }

    fn request(self) -> Result<v1::BeginTaskRequest, Error> {
        let mut grants: Vec<v1::GrantRequest> = self
            .grants
            .into_iter()
            .map(|name| v1::GrantRequest {
                name,
                narrow: Default::default(),
            })
            .collect();
        for n in self.narrow {
            let g = grants
                .iter_mut()
                .find(|g| g.name == n.grant)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "narrowing {}.{} names grant {:?}, which is not requested",
                        n.grant, n.param, n.grant
                    ))
                })?;
            g.narrow
                .insert(n.param, v1::StringList { values: n.values });
        }
        Ok(v1::BeginTaskRequest {
            token: self.token.expose_secret().to_string(),
            tool: self.tool,
            grants,
            ttl_seconds: ttl_seconds(self.ttl)?,
            idempotency_key: None,
            call_id: self.call_id,
        })
    }
}

/// Whole seconds on the wire: below one second would round to none at all.
fn ttl_seconds(ttl: Option<Duration>) -> Result<Option<u32>, Error> {
    ttl.map(|d| {
        if d < Duration::from_secs(1) {
            return Err(Error::Invalid(format!(
                "ttl {}ms: a task lives at least 1s",
                d.as_millis()
            )));
        }
        u32::try_from(d.as_secs()).map_err(|_| Error::Invalid("ttl too long".into()))
    })
    .transpose()
}

/// What [`Broker::end`] and [`Task::end`] report: `state` is `ended`, or `ending` while a
/// revocation is still being retried by the daemon.
#[derive(Debug, Clone)]
pub struct Ended {
    pub state: String,
    pub task: v1::Task,
}

// === impl Broker ===

impl Broker {
    /// Connects to the broker socket (see [`connect_unix`] for the errors).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        Ok(Self {
            client: BrokerClient::new(connect_unix(path).await?),
            path: path.to_path_buf(),
            notice: None,
        })
    }

    /// Like [`Broker::connect`], but a socket that is missing or refusing (the daemon starting
    /// or restarting) is dialled again, backing off, for up to [`RETRY_FOR`]. Nothing has been
    /// sent, so waiting is always safe; `notice` is told once, when the waiting starts. A
    /// socket the caller may not open (`PermissionDenied`) is reported at once.
    pub async fn connect_waiting(
        path: impl AsRef<Path>,
        notice: impl Fn(&Error),
    ) -> Result<Self, Error> {
        let mut backoff = Backoff::new();
        loop {
            match Self::connect(path.as_ref()).await {
                Err(e) if daemon_absent(&e) && backoff.wait_more() => {
                    if backoff.first() {
                        notice(&e);
                    }
                    backoff.sleep().await;
                }
                other => return other,
            }
        }
    }

    /// Called once per call when it starts retrying after a transport error (the CLI tells a
    /// person at a terminal why it is waiting).
    pub fn on_retry(mut self, notice: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.notice = Some(Arc::new(notice));
        self
    }

    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// BeginTask, safe to retry: every attempt carries an idempotency key, an answer lost to the
    /// transport is retried with the same key for up to [`RETRY_FOR`], and when the daemon says
    /// the key already began a task (`begin_replayed`: it ended that task, whose answer was
    /// lost) the request is made once more with a new key. So a reset never leaves a live
    /// credential the caller does not know about — unless no answer comes at all within
    /// [`RETRY_FOR`]: then the error is [`Error::Unavailable`], a task may have been begun, and
    /// it ends at its expiry (the daemon's reaper; its id is in the audit trail).
    pub async fn begin(&self, begin: BeginTask) -> Result<Task, Error> {
        let mut request = begin.request()?;
        for _fresh in 0..2 {
            request.idempotency_key = Some(uuid::Uuid::now_v7().to_string());
            let outcome = self
                .retrying(|mut c| {
                    let r = request.clone();
                    async move { c.begin_task(r).await }
                })
                .await;
            match outcome {
                Ok(resp) => return Ok(Task::new(self.clone(), resp)),
                Err(e) if e.reason() == Some("begin_replayed") => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Replayed)
    }

    /// RenewTask: extends the task and its renewable leases. Needs a valid token for the same
    /// issuer, client and subject the task was begun with.
    pub async fn renew(
        &self,
        task_id: &str,
        token: &SecretString,
        ttl: Option<Duration>,
    ) -> Result<v1::Task, Error> {
        let request = v1::RenewTaskRequest {
            task_id: task_id.to_string(),
            token: token.expose_secret().to_string(),
            ttl_seconds: ttl_seconds(ttl)?,
        };
        let resp = self.client.clone().renew_task(request).await?;
        Ok(resp.into_inner().task.unwrap_or_default())
    }

    /// EndTask, retried on transport errors for up to [`RETRY_FOR`] (ending is idempotent).
    pub async fn end(&self, task_id: &str) -> Result<Ended, Error> {
        let task = self
            .retrying(|mut c| {
                let r = v1::EndTaskRequest {
                    task_id: task_id.to_string(),
                };
                async move { c.end_task(r).await }
            })
            .await?
            .task
            .unwrap_or_default();
        Ok(Ended {
            state: task.state.clone(),
            task,
        })
    }

    /// Makes `call` until it gets an answer, backing off from 50 ms to 1 s, for [`RETRY_FOR`].
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(BrokerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut backoff = Backoff::new();
        loop {
            let answer = tokio::time::timeout(ATTEMPT_TIMEOUT, call(self.client.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::unavailable(format!(
                        "no answer from credbroker within {}s",
                        ATTEMPT_TIMEOUT.as_secs()
                    )))
                });
            match answer {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if is_transport(&s) && backoff.wait_more() => {
                    if let (true, Some(n)) = (backoff.first(), &self.notice) {
                        n(&Error::Unavailable(s));
                    }
                    backoff.sleep().await;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }
}

/// No daemon behind the socket yet: a restart in progress looks like this.
fn daemon_absent(e: &Error) -> bool {
    matches!(
        e,
        Error::NotConnected { kind, .. }
            if matches!(kind, std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
    )
}

/// Exponential backoff from 50 ms to 1 s, giving up when the next wait would pass
/// [`RETRY_FOR`] from the start.
struct Backoff {
    deadline: Instant,
    delay: Duration,
    waits: u32,
}

impl Backoff {
    fn new() -> Self {
        Self {
            deadline: Instant::now() + RETRY_FOR,
            delay: Duration::from_millis(50),
            waits: 0,
        }
    }

    fn wait_more(&self) -> bool {
        Instant::now() + self.delay < self.deadline
    }

    /// Whether no wait has happened yet (the moment to tell someone).
    fn first(&self) -> bool {
        self.waits == 0
    }

    async fn sleep(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.waits += 1;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
    }
}
