use std::fmt;

use crate::record::reason::{self, Reason};

/// Why a token was refused. Each variant has a stable reason code ([`Rejection::code`]) that
/// appears in gRPC error details, audit records and `credbroker token check` output; codes are
/// part of the API and never change meaning.
///
/// The detail strings never contain the token or any part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    TooLarge {
        limit: usize,
    },
    Malformed(String),
    DuplicateKey,
    JweNotSupported,
    NestedJwt,
    AlgNone,
    AlgSymmetric,
    AlgNotAllowed(String),
    CritNotSupported,
    KeyHeaderNotAllowed(&'static str),
    TypInvalid,
    UnknownIssuer,
    UnknownKid,
    KeyAlgMismatch,
    BadSignature,
    MissingClaim(&'static str),
    InvalidClaim(&'static str),
    AudienceMismatch,
    /// A configured issuer, but not the one this workload accepts tokens from.
    IssuerNotAccepted,
    /// Only from `token check --require-scope`; the broker's own scope checks are policy's.
    InsufficientScope(String),
    Expired,
    NotYetValid,
    IssuedInFuture,
    /// The issuer's keys could not be loaded yet: a backend condition, not the caller's fault.
    KeysUnavailable,
    /// Introspection says the token is not active (revoked at the AS, or unknown to it).
    Inactive,
    /// The introspection endpoint could not be asked: a backend condition.
    IntrospectionUnavailable,
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        self.reason().as_str()
    }

    pub fn reason(&self) -> Reason {
        match self {
            Self::TooLarge { .. } => reason::TOKEN_TOO_LARGE,
            Self::Malformed(_) => reason::MALFORMED,
            Self::DuplicateKey => reason::DUPLICATE_KEY,
            Self::JweNotSupported => reason::JWE_NOT_SUPPORTED,
            Self::NestedJwt => reason::NESTED_JWT,
            Self::AlgNone => reason::ALG_NONE,
            Self::AlgSymmetric => reason::ALG_SYMMETRIC,
            Self::AlgNotAllowed(_) => reason::ALG_NOT_ALLOWED,
            Self::CritNotSupported => reason::CRIT_NOT_SUPPORTED,
            Self::KeyHeaderNotAllowed(_) => reason::KEY_HEADER_NOT_ALLOWED,
            Self::TypInvalid => reason::TYP_INVALID,
            Self::UnknownIssuer => reason::UNKNOWN_ISSUER,
            Self::UnknownKid => reason::UNKNOWN_KID,
            Self::KeyAlgMismatch => reason::KEY_ALG_MISMATCH,
            Self::BadSignature => reason::BAD_SIGNATURE,
            Self::MissingClaim(_) => reason::MISSING_CLAIM,
            Self::InvalidClaim(_) => reason::INVALID_CLAIM,
            Self::AudienceMismatch => reason::AUDIENCE_MISMATCH,
            Self::IssuerNotAccepted => reason::ISSUER_NOT_ACCEPTED,
            Self::InsufficientScope(_) => reason::INSUFFICIENT_SCOPE,
            Self::Expired => reason::EXPIRED,
            Self::NotYetValid => reason::NOT_YET_VALID,
            Self::IssuedInFuture => reason::ISSUED_IN_FUTURE,
            Self::KeysUnavailable => reason::ISSUER_KEYS_UNAVAILABLE,
            Self::Inactive => reason::TOKEN_INACTIVE,
            Self::IntrospectionUnavailable => reason::INTROSPECTION_UNAVAILABLE,
        }
    }

    /// True when the rejection is the backend's fault (surfaces as UNAVAILABLE).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::KeysUnavailable | Self::IntrospectionUnavailable)
    }
}

impl Rejection {
    /// What went wrong, without the code.
    pub fn describe(&self) -> String {
        Describe(self).to_string()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), Describe(self))
    }
}

struct Describe<'a>(&'a Rejection);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Rejection::*;
        match self.0 {
            TooLarge { limit } => write!(f, "token is longer than {limit} bytes"),
            Malformed(why) => write!(f, "{why}"),
            DuplicateKey => write!(f, "a JSON object in the token repeats a key"),
            JweNotSupported => write!(f, "encrypted tokens (JWE) are not accepted"),
            NestedJwt => write!(f, "nested JWTs are not accepted"),
            AlgNone => write!(f, "unsigned tokens are never accepted"),
            AlgSymmetric => write!(f, "HMAC-signed tokens are never accepted"),
            AlgNotAllowed(alg) => write!(f, "{alg:?} is not allowed for this issuer"),
            CritNotSupported => write!(f, "no critical header extension is supported"),
            KeyHeaderNotAllowed(h) => {
                write!(
                    f,
                    "the {h:?} header is not accepted; keys come only from the issuer's JWKS"
                )
            }
            TypInvalid => write!(f, "typ must be at+jwt (RFC 9068)"),
            UnknownIssuer => write!(f, "the token's issuer is not configured"),
            UnknownKid => write!(f, "no key of the issuer matches the token's kid"),
            KeyAlgMismatch => write!(f, "the key does not fit the token's alg"),
            BadSignature => write!(f, "the signature does not verify"),
            MissingClaim(c) => write!(f, "the {c:?} claim is required"),
            InvalidClaim(c) => write!(f, "the {c:?} claim has the wrong type or value"),
            AudienceMismatch => write!(f, "the token is not for this workload's resource"),
            IssuerNotAccepted => write!(f, "this workload does not accept tokens of this issuer"),
            InsufficientScope(s) => write!(f, "the token does not hold scope {s:?}"),
            Expired => write!(f, "the token has expired"),
            NotYetValid => write!(f, "the token is not valid yet (nbf)"),
            IssuedInFuture => write!(f, "the token was issued in the future (iat)"),
            Inactive => write!(f, "the authorization server says the token is not active"),
            IntrospectionUnavailable => write!(
                f,
                "the authorization server could not be asked whether the token is active; try again later"
            ),
            KeysUnavailable => {
                write!(
                    f,
                    "the issuer's signing keys could not be loaded; try again later"
                )
            }
        }
    }
}

impl std::error::Error for Rejection {}
