use std::fmt;
use std::time::Duration;

use credbroker_provider_api::{ErrorKind as ProviderKind, ProviderError};

use crate::journal::JournalError;
use crate::policy::{Denial, DenialKind};
use crate::token::Rejection;

/// How a broker error surfaces (mapped to a gRPC status code in `server::status`, only there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    FailedPrecondition,
    /// The request was not carried out because an earlier attempt's outcome decided it (an
    /// idempotent retry of a BeginTask whose answer was lost).
    Aborted,
    Unavailable,
    Internal,
}

/// An error with a stable reason code. The message never contains a token or a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerError {
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
    pub grant: Option<String>,
    pub retry_after: Option<Duration>,
    /// The task the error is about, for the caller to act on (a replayed BeginTask's task).
    pub task_id: Option<String>,
}

impl BrokerError {
    pub fn new(kind: ErrorKind, code: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.into(),
            message: message.into(),
            grant: None,
            retry_after: None,
            task_id: None,
        }
    }

    pub fn invalid(code: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, code, message)
    }

    pub(crate) fn journal(e: &JournalError) -> Self {
        tracing::error!(error = %e, "journal unavailable");
        Self::new(
            ErrorKind::Unavailable,
            "journal_unavailable",
            "the journal could not record this; nothing was issued",
        )
    }

    /// A provider failure while issuing for `grant`. Backend conditions are never the caller's
    /// fault: only `Invalid` maps to INVALID_ARGUMENT.
    pub(crate) fn provider(e: &ProviderError, grant: &str, provider: &str) -> Self {
        let kind = match e.kind {
            ProviderKind::Denied => ErrorKind::PermissionDenied,
            ProviderKind::Invalid => ErrorKind::InvalidArgument,
            // credbroker's own configuration or credentials: retrying will not help until an
            // operator fixes it, so no RetryInfo, and never the caller's fault.
            ProviderKind::Config | ProviderKind::Unauthorized | ProviderKind::Unsupported => {
                ErrorKind::FailedPrecondition
            }
            _ => ErrorKind::Unavailable,
        };
        let message = match e.kind {
            ProviderKind::Denied => format!(
                "provider {provider:?} refused grant {grant:?}: credbroker's own access does not allow it \
                 (a configuration problem, not the caller's): {}",
                e.message
            ),
            _ => format!("grant {grant:?} via provider {provider:?}: {}", e.message),
        };
        Self {
            kind,
            code: e.kind.code().into(),
            message,
            grant: Some(grant.into()),
            retry_after: e.retry_after,
            task_id: None,
        }
    }
}

impl From<Rejection> for BrokerError {
    fn from(r: Rejection) -> Self {
        let kind = if r.is_unavailable() {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Unauthenticated
        };
        Self::new(kind, r.code(), r.describe())
    }
}

impl From<Denial> for BrokerError {
    fn from(d: Denial) -> Self {
        let kind = match d.kind {
            DenialKind::InvalidArgument => ErrorKind::InvalidArgument,
            DenialKind::PermissionDenied => ErrorKind::PermissionDenied,
            DenialKind::Unauthenticated => ErrorKind::Unauthenticated,
        };
        Self {
            kind,
            code: d.code.as_str().into(),
            message: d.message,
            grant: d.grant,
            retry_after: None,
            task_id: None,
        }
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for BrokerError {}
