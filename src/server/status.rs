//! The one place broker errors become gRPC statuses.
//!
//! The status carries a `google.rpc.ErrorInfo` detail (domain `credbroker`, reason = the stable
//! reason code, metadata naming the grant when there is one) and, for retryable conditions, a
//! `RetryInfo`. The message is the error's own text, which never contains a token or a secret.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::broker::{BrokerError, ErrorKind};

pub const DOMAIN: &str = "credbroker";

pub fn to_status(e: &BrokerError) -> Status {
    let code = match e.kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    };
    let mut meta = HashMap::new();
    if let Some(g) = &e.grant {
        meta.insert("grant".to_string(), g.clone());
    }
    if let Some(t) = &e.task_id {
        meta.insert("task_id".to_string(), t.clone());
    }
    let mut details = ErrorDetails::with_error_info(e.code.clone(), DOMAIN, meta);
    if e.kind == ErrorKind::Unavailable {
        details.set_retry_info(e.retry_after.or(Some(std::time::Duration::from_secs(1))));
    }
    Status::with_error_details(code, e.to_string(), details)
}

/// The reason code in a status from credbroker, for clients (the CLI, tests).
pub fn reason_of(status: &Status) -> Option<String> {
    status
        .get_details_error_info()
        .filter(|i| i.domain == DOMAIN)
        .map(|i| i.reason)
}
