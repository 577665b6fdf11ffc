//! AWS errors mapped to what the broker must do ([`ErrorKind`]), by error code, not by text.
//!
//! The SDK has already retried what its standard strategy retries (throttling and transient
//! errors, with exponential backoff and jitter), so an error that reaches here is final for this
//! call.

use std::error::Error as StdError;
use std::io;

use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use credbroker_provider_api::{ErrorKind, ProviderError};

/// Whether the call can have created something even though no answer arrived (AssumeRole: a
/// session may exist). Then an ambiguous transport failure is [`ErrorKind::OutcomeUnknown`],
/// which makes the broker reconcile instead of forgetting.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    Creates,
    ReadsOrIdempotent,
}

/// Maps an SDK error. `what` names the call and its target for the message
/// (`AssumeRole of arn:aws:iam::…:role/x for grant s3-read`).
pub(crate) fn classify<E, R>(what: &str, err: &SdkError<E, R>, effect: Effect) -> ProviderError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown");
            let message = e.message().unwrap_or_default();
            let status = service.raw().http_status();
            by_code(what, code, message, status)
        }
        SdkError::TimeoutError(_) => ProviderError::new(
            ambiguous(effect),
            format!("{what}: timed out waiting for AWS"),
        ),
        SdkError::DispatchFailure(_) if no_credentials(err) => ProviderError::new(
            // Nothing was sent: credbroker has no AWS credentials of its own to sign with.
            ErrorKind::Unauthorized,
            format!(
                "{what}: credbroker has no AWS credentials to sign with (the chain or \
                 credentials_credential): {}",
                DisplayErrorContext(err)
            ),
        ),
        SdkError::DispatchFailure(d) => {
            let detail = DisplayErrorContext(err).to_string();
            let kind = if never_sent(err) || d.is_user() {
                ErrorKind::Unavailable
            } else {
                ambiguous(effect)
            };
            ProviderError::new(kind, format!("{what}: cannot reach AWS: {detail}"))
        }
        SdkError::ResponseError(_) => ProviderError::new(
            ambiguous(effect),
            format!(
                "{what}: unreadable answer from AWS: {}",
                DisplayErrorContext(err)
            ),
        ),
        SdkError::ConstructionFailure(_) => ProviderError::new(
            // Most often: no credentials for credbroker itself, or no region.
            ErrorKind::Unauthorized,
            format!(
                "{what}: cannot sign the request: {}",
                DisplayErrorContext(err)
            ),
        ),
        _ => ProviderError::new(
            ambiguous(effect),
            format!("{what}: {}", DisplayErrorContext(err)),
        ),
    }
}

fn ambiguous(effect: Effect) -> ErrorKind {
    match effect {
        Effect::Creates => ErrorKind::OutcomeUnknown,
        Effect::ReadsOrIdempotent => ErrorKind::Unavailable,
    }
}

/// The credential chain could not produce credentials for credbroker itself.
fn no_credentials(err: &(dyn StdError + 'static)) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some()
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The connection was refused or never made: nothing reached AWS.
fn never_sent(err: &(dyn StdError + 'static)) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// By AWS error code. The lists are the codes STS and IAM document for these calls, plus the
/// common ones every AWS API can return.
pub(crate) fn by_code(what: &str, code: &str, message: &str, status: u16) -> ProviderError {
    let text = format!("{what}: {code}: {message}");
    let kind = match code {
        "AccessDenied" | "AccessDeniedException" => ErrorKind::Denied,
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException" => ErrorKind::RateLimited,
        "ExpiredToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "MissingAuthenticationToken"
        | "IncompleteSignature"
        | "InvalidIdentityToken" => ErrorKind::Unauthorized,
        "PackedPolicyTooLarge"
        | "MalformedPolicyDocument"
        | "RegionDisabledException"
        | "ValidationError"
        | "InvalidParameterValue"
        | "LimitExceeded" => ErrorKind::Config,
        "NoSuchEntity" => ErrorKind::NotFound,
        "ServiceUnavailable" | "ServiceFailure" | "InternalFailure" | "InternalError" => {
            ErrorKind::Unavailable
        }
        _ if status >= 500 => ErrorKind::Unavailable,
        _ => ErrorKind::Config,
    };
    let mut e = ProviderError::new(kind, text);
    if kind == ErrorKind::RateLimited {
        e = e.with_retry_after(std::time::Duration::from_secs(2));
    }
    e
}

/// The HTTP status of a raw response.
pub(crate) trait HasStatus {
    fn http_status(&self) -> u16;
}

impl HasStatus for aws_sdk_sts::config::http::HttpResponse {
    fn http_status(&self) -> u16 {
        self.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_what_the_broker_must_do() {
        let k = |code: &str, status: u16| by_code("AssumeRole", code, "m", status).kind;
        assert_eq!(k("AccessDenied", 403), ErrorKind::Denied);
        assert_eq!(k("Throttling", 400), ErrorKind::RateLimited);
        assert_eq!(k("ExpiredToken", 400), ErrorKind::Unauthorized);
        assert_eq!(k("PackedPolicyTooLarge", 400), ErrorKind::Config);
        assert_eq!(k("NoSuchEntity", 404), ErrorKind::NotFound);
        assert_eq!(k("Whatever", 503), ErrorKind::Unavailable);
        assert_eq!(k("Whatever", 400), ErrorKind::Config);
        let e = by_code(
            "AssumeRole of R for grant g",
            "AccessDenied",
            "not authorized",
            403,
        );
        assert_eq!(
            e.message,
            "AssumeRole of R for grant g: AccessDenied: not authorized"
        );
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(never_sent(&refused));
        assert!(!never_sent(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
    }
}
