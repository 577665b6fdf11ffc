//! The one place broker errors become gRPC statuses.
//!
//! The status carries a `google.rpc.ErrorInfo` detail (domain `credbroker`, reason = the stable
//! reason code, metadata naming the grant when there is one) and, for retryable conditions, a
//! `RetryInfo`. The message is the error's own text, which never contains a token or a secret.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::broker::{BrokerError, ErrorKind};

pub const DOMAIN: &str = credbroker_client::ERROR_DOMAIN;

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

/// A provider's health as `Status` reports it: what the provider says of itself, overruled by
/// what the broker's calls found. A backend failing now is unhealthy whatever its own check
/// said; a failure older than five minutes with nothing left to retry is old news.
pub fn provider_health(
    own: credbroker_provider_api::ProviderHealth,
    failing: Option<crate::providers::Failing>,
    backlog: u64,
) -> (bool, String) {
    let stale = |f: &crate::providers::Failing| {
        backlog == 0
            && f.last_at
                .elapsed()
                .is_ok_and(|e| e > std::time::Duration::from_secs(300))
    };
    match failing.filter(|f| !stale(f)) {
        Some(f) => (
            false,
            format!(
                "{} call(s) failed since {}; last: {}; {backlog} revocation(s) pending{}",
                f.failures,
                crate::time::rfc3339(f.since),
                f.last_error,
                if own.detail.is_empty() {
                    String::new()
                } else {
                    format!("; {}", own.detail)
                }
            ),
        ),
        None => (own.healthy, own.detail),
    }
}

/// The reason code of a request larger than the daemon reads.
pub const REQUEST_TOO_LARGE: &str = "request_too_large";

/// Gives tonic's own "message too large" refusal (OUT_OF_RANGE, raised while decoding, before
/// any handler runs) a reason code like every other refusal. Only that refusal is OUT_OF_RANGE:
/// the broker's own errors never map to it.
pub fn with_size_reason(
    response: http::Response<tonic::body::Body>,
    limit: usize,
) -> http::Response<tonic::body::Body> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    if !out_of_range || response.headers().contains_key("grpc-status-details-bin") {
        return response;
    }
    Status::with_error_details(
        Code::OutOfRange,
        format!(
            "{REQUEST_TOO_LARGE}: the request is larger than the {limit} bytes the daemon reads \
             (a token is at most tokens.max_token_bytes)"
        ),
        ErrorDetails::with_error_info(REQUEST_TOO_LARGE, DOMAIN, HashMap::new()),
    )
    .into_http()
}

/// The reason code in a status from credbroker, for clients (the CLI, tests): the client
/// crate's, so the domain it reads is the one written here.
pub use credbroker_client::reason_of;

#[cfg(test)]
mod tests {
    use super::*;
    use credbroker_provider_api::ProviderHealth;

    fn own() -> ProviderHealth {
        ProviderHealth {
            healthy: true,
            detail: "token ok".into(),
        }
    }

    /// End-to-end finding 10: `status` said healthy while OpenBao was down and 40 revocations
    /// were failing. What the broker's own calls found overrules the provider's last check.
    #[test]
    fn failing_calls_make_a_provider_unhealthy_until_it_answers() {
        let observed = crate::providers::Observed::default();
        assert!(provider_health(own(), observed.failing(), 0).0);
        observed.failed(std::time::SystemTime::now(), "connection refused");
        observed.failed(std::time::SystemTime::now(), "connection refused");
        let (healthy, detail) = provider_health(own(), observed.failing(), 40);
        assert!(!healthy);
        assert!(
            detail.starts_with("2 call(s) failed since")
                && detail.contains("connection refused")
                && detail.contains("40 revocation(s) pending")
                && detail.ends_with("; token ok"),
            "{detail}"
        );
        observed.answered();
        assert_eq!(
            provider_health(own(), observed.failing(), 0),
            (true, "token ok".into())
        );
    }
}
