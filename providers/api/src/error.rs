use std::fmt;
use std::time::Duration;

/// What the broker must do about a provider error. Grouped by consequence, not by cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The backend is down, sealed, overloaded or unreachable. Retrying later can help.
    /// Surfaces as UNAVAILABLE; never the caller's fault.
    Unavailable,
    /// The backend asked us to slow down. Retry after `retry_after` if given.
    RateLimited,
    /// credbroker's own identity was refused by the backend (expired token, bad key).
    /// An operator must fix it; surfaces as UNAVAILABLE with a reason naming the instance.
    Unauthorized,
    /// The backend refused this grant's request for lack of permission (a policy or trust
    /// relationship that does not allow it). A configuration problem, reported naming the grant.
    Denied,
    /// The request was malformed as the backend sees it (for example a narrowing it rejects).
    /// The caller's fault.
    Invalid,
    /// The credential no longer exists. For a revoke this is success.
    NotFound,
    /// The request was sent and no answer came back: something may have been issued.
    /// The broker must reconcile, never forget.
    OutcomeUnknown,
    /// The provider does not support the operation (renew on STS, for example).
    Unsupported,
    /// The provider's configuration is wrong in a way only visible at run time.
    Config,
}

impl ErrorKind {
    /// Every kind, for registries that must know each code (credbroker's `record::reason`).
    pub const ALL: [ErrorKind; 9] = [
        Self::Unavailable,
        Self::RateLimited,
        Self::Unauthorized,
        Self::Denied,
        Self::Invalid,
        Self::NotFound,
        Self::OutcomeUnknown,
        Self::Unsupported,
        Self::Config,
    ];

    /// A stable, lower-case code for audit records and error details.
    pub fn code(self) -> &'static str {
        match self {
            Self::Unavailable => "provider_unavailable",
            Self::RateLimited => "provider_rate_limited",
            Self::Unauthorized => "provider_unauthorized",
            Self::Denied => "provider_denied",
            Self::Invalid => "provider_invalid_request",
            Self::NotFound => "provider_not_found",
            Self::OutcomeUnknown => "provider_outcome_unknown",
            Self::Unsupported => "provider_unsupported",
            Self::Config => "provider_config",
        }
    }

    /// Whether trying the same operation again later can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::RateLimited | Self::OutcomeUnknown
        )
    }
}

/// An error from a provider. Its message must never contain a secret value: providers build it
/// from status codes and backend error strings, never from request or response bodies that
/// carry credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderError {
    pub kind: ErrorKind,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for ProviderError {}
