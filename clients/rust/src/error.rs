//! What can go wrong talking to the daemon, sorted by what the caller does about it.

use std::path::PathBuf;

use tonic_types::StatusExt as _;

/// The `google.rpc.ErrorInfo` domain of credbroker's reason codes.
pub const ERROR_DOMAIN: &str = "credbroker";

/// An error from the client. None of them carries the token or a credential: the daemon never
/// echoes a token in a status, and the client never puts one in a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be reached at all; `message` says why and what to do about it.
    #[error("{message}")]
    NotConnected {
        path: PathBuf,
        kind: std::io::ErrorKind,
        message: String,
    },
    /// The daemon answered and said no. [`Error::reason`] gives the stable reason code.
    #[error("{code:?} {}", refused_text(reason.as_deref(), message))]
    Refused {
        code: tonic::Code,
        /// From the status's `google.rpc.ErrorInfo` (domain `credbroker`).
        reason: Option<String>,
        message: String,
    },
    /// No answer from credbroker (a reset, a restart): the outcome of the call is unknown.
    /// BeginTask and EndTask have already been retried for ten seconds when this is returned.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Unavailable(tonic::Status),
    /// The channel to the socket could not be set up.
    #[error("cannot connect to {}: {source}", path.display())]
    Transport {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    /// Twice in a row the daemon ended the task an earlier attempt began (`begin_replayed`).
    #[error("BeginTask was replayed twice; giving up")]
    Replayed,
    /// The request was refused before it was sent (e.g. a TTL below one second).
    #[error("{0}")]
    Invalid(String),
}

/// `code: message`, without naming the code twice: the daemon's messages usually start with it.
fn refused_text(reason: Option<&str>, message: &str) -> String {
    match reason {
        Some(r) if message.starts_with(r) => message.to_owned(),
        Some(r) => format!("{r}: {message}"),
        None => format!("(no reason code): {message}"),
    }
}

impl Error {
    /// The stable reason code (`insufficient_scope`, `audience_mismatch`, `unknown_grant`, …)
    /// when the daemon gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Error::Refused { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }

    /// The gRPC code the daemon answered with, if it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Refused { code, .. } => Some(*code),
            Error::Unavailable(s) => Some(s.code()),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        if is_transport(&s) {
            return Error::Unavailable(s);
        }
        Error::Refused {
            code: s.code(),
            reason: reason_of(&s),
            message: s.message().to_string(),
        }
    }
}

/// The reason code of a status from credbroker (its `google.rpc.ErrorInfo` in our domain).
pub fn reason_of(status: &tonic::Status) -> Option<String> {
    status
        .get_details_error_info()
        .filter(|i| i.domain == ERROR_DOMAIN)
        .map(|i| i.reason)
}

/// Whether a failed call never got an answer from credbroker (a reset, a restart, no daemon):
/// then its outcome is unknown and only an idempotent retry is safe.
pub fn is_transport(s: &tonic::Status) -> bool {
    reason_of(s).is_none()
        && matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: Option<&str>, message: &str) -> String {
        Error::Refused {
            code: tonic::Code::PermissionDenied,
            reason: reason.map(str::to_owned),
            message: message.into(),
        }
        .to_string()
    }

    #[test]
    fn a_refusal_names_its_code_once() {
        assert_eq!(
            refused(
                Some("insufficient_scope"),
                "insufficient_scope: needs db.read"
            ),
            "PermissionDenied insufficient_scope: needs db.read"
        );
        assert_eq!(
            refused(Some("unknown_grant"), "no grant \"x\""),
            "PermissionDenied unknown_grant: no grant \"x\""
        );
        assert_eq!(refused(None, "no"), "PermissionDenied (no reason code): no");
    }
}
