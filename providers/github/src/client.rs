//! GitHub's REST API over reqwest: authentication headers marked sensitive, the API version
//! pinned, rate limits honoured, the remaining quota remembered for `Status`.
//!
//! Rate limits, as GitHub documents them: a 429, or a 403 whose `x-ratelimit-remaining` is 0 or
//! whose message names a secondary rate limit. Wait `retry-after` seconds if given, else until
//! `x-ratelimit-reset` for the primary limit, else at least a minute for a secondary one. A wait
//! within `max_wait` is slept here and the call retried (at most `max_retries` times); a longer
//! one becomes [`ErrorKind::RateLimited`] with `retry_after`, which the broker honours.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credbroker_provider_api::{ErrorKind, ProviderError, SecretValue};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const API_VERSION: &str = "2022-11-28";
const SECONDARY_DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The last rate-limit headers seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    pub(crate) reset: SystemTime,
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    max_retries: u32,
    max_wait: Duration,
    quota: Mutex<Option<Quota>>,
}

/// What a call is, for its error messages and for what an unanswered call means.
pub(crate) struct Call<'a> {
    pub(crate) what: &'a str,
    pub(crate) method: Method,
    pub(crate) path: &'a str,
    /// `Bearer <App JWT>` or `Bearer <installation token>`.
    pub(crate) auth: &'a SecretValue,
    pub(crate) body: Option<&'a Value>,
    /// Whether the call creates something (a token): then a request that got no answer is
    /// [`ErrorKind::OutcomeUnknown`], not [`ErrorKind::Unavailable`].
    pub(crate) creates: bool,
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl Answer {
    pub(crate) fn message(&self) -> &str {
        self.body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

impl Client {
    pub(crate) fn new(
        base: &str,
        timeout: Duration,
        max_retries: u32,
        max_wait: Duration,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("credbroker/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the Authorization header to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            max_retries,
            max_wait,
            quota: Mutex::new(None),
        })
    }

    pub(crate) fn quota(&self) -> Option<Quota> {
        self.quota.lock().ok().and_then(|q| *q)
    }

    /// Sends `call`, retrying rate-limited answers within the limits above. Any other answer,
    /// success or not, is returned for the caller to interpret.
    pub(crate) async fn send(&self, call: &Call<'_>) -> Result<Answer, ProviderError> {
        let mut attempt = 0;
        loop {
            let answer = self.once(call).await?;
            let Some(wait) = self.rate_limited(&answer.0, &answer.1) else {
                return Ok(answer.1);
            };
            attempt += 1;
            if attempt > self.max_retries || wait > self.max_wait {
                return Err(ProviderError::new(
                    ErrorKind::RateLimited,
                    format!(
                        "{}: GitHub rate limit ({} {}); retry in {}s",
                        call.what,
                        answer.1.status.as_u16(),
                        answer.1.message(),
                        wait.as_secs()
                    ),
                )
                .with_retry_after(wait));
            }
            tracing::info!(
                call = call.what,
                status = answer.1.status.as_u16(),
                wait_ms = wait.as_millis() as u64,
                "GitHub rate limit; waiting as asked"
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn once(&self, call: &Call<'_>) -> Result<(HeaderMap, Answer), ProviderError> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", call.auth.expose()))
            .map_err(|_| ProviderError::new(ErrorKind::Config, "a token is not a header value"))?;
        auth.set_sensitive(true);
        let mut req = self
            .http
            .request(call.method.clone(), format!("{}{}", self.base, call.path))
            .header("authorization", auth)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", API_VERSION);
        if let Some(body) = call.body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.map_err(|e| {
            // Connection refused: nothing was sent. Anything else may have reached GitHub.
            let kind = if e.is_connect() || !call.creates {
                ErrorKind::Unavailable
            } else {
                ErrorKind::OutcomeUnknown
            };
            ProviderError::new(
                kind,
                format!("{}: cannot reach GitHub: {}", call.what, without_url(&e)),
            )
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        self.remember_quota(&headers);
        let bytes = resp.bytes().await.map_err(|e| {
            let kind = if call.creates {
                ErrorKind::OutcomeUnknown
            } else {
                ErrorKind::Unavailable
            };
            ProviderError::new(
                kind,
                format!("{}: answer cut short: {}", call.what, without_url(&e)),
            )
        })?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((headers, Answer { status, body }))
    }

    fn remember_quota(&self, headers: &HeaderMap) {
        let num = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(limit), Some(remaining), Some(reset)) = (
            num("x-ratelimit-limit"),
            num("x-ratelimit-remaining"),
            num("x-ratelimit-reset"),
        ) && let Ok(mut q) = self.quota.lock()
        {
            *q = Some(Quota {
                limit,
                remaining,
                reset: UNIX_EPOCH + Duration::from_secs(reset),
            });
        }
    }

    /// How long GitHub asks us to wait, if this answer is a rate limit.
    fn rate_limited(&self, headers: &HeaderMap, answer: &Answer) -> Option<Duration> {
        let status = answer.status;
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        let exhausted = header("x-ratelimit-remaining") == Some("0");
        let secondary = answer.message().contains("secondary rate limit");
        if !(status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN && (exhausted || secondary)))
        {
            return None;
        }
        if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
            return Some(Duration::from_secs(secs));
        }
        if exhausted
            && let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())
        {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            return Some(Duration::from_secs(reset.saturating_sub(now) + 1));
        }
        Some(SECONDARY_DEFAULT_WAIT)
    }
}

/// reqwest's errors name the URL, which is not secret here, but keep messages short.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "");
    }
    s
}
