use std::fmt;

/// Why a token was refused. Each variant has a stable reason code ([`Rejection::code`]) that
/// appears in gRPC error details, audit records and `credbroker token check` output; codes are
/// part of the API and never change meaning.
///
/// The detail strings never contain the token or any part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    TooLarge { limit: usize },
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
    /// Only from `token check --require-scope`; the broker's own scope checks are policy's.
    InsufficientScope(String),
    Expired,
    NotYetValid,
    IssuedInFuture,
    /// The issuer's keys could not be loaded yet: a backend condition, not the caller's fault.
    KeysUnavailable,
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "token_too_large",
            Self::Malformed(_) => "malformed",
            Self::DuplicateKey => "duplicate_key",
            Self::JweNotSupported => "jwe_not_supported",
            Self::NestedJwt => "nested_jwt",
            Self::AlgNone => "alg_none",
            Self::AlgSymmetric => "alg_symmetric",
            Self::AlgNotAllowed(_) => "alg_not_allowed",
            Self::CritNotSupported => "crit_not_supported",
            Self::KeyHeaderNotAllowed(_) => "key_header_not_allowed",
            Self::TypInvalid => "typ_invalid",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKid => "unknown_kid",
            Self::KeyAlgMismatch => "key_alg_mismatch",
            Self::BadSignature => "bad_signature",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::AudienceMismatch => "audience_mismatch",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::KeysUnavailable => "issuer_keys_unavailable",
        }
    }

    /// True when the rejection is the backend's fault (surfaces as UNAVAILABLE).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::KeysUnavailable)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code();
        match self {
            Self::TooLarge { limit } => write!(f, "{code}: token is longer than {limit} bytes"),
            Self::Malformed(why) => write!(f, "{code}: {why}"),
            Self::DuplicateKey => write!(f, "{code}: a JSON object in the token repeats a key"),
            Self::JweNotSupported => write!(f, "{code}: encrypted tokens (JWE) are not accepted"),
            Self::NestedJwt => write!(f, "{code}: nested JWTs are not accepted"),
            Self::AlgNone => write!(f, "{code}: unsigned tokens are never accepted"),
            Self::AlgSymmetric => write!(f, "{code}: HMAC-signed tokens are never accepted"),
            Self::AlgNotAllowed(alg) => write!(f, "{code}: {alg:?} is not allowed for this issuer"),
            Self::CritNotSupported => write!(f, "{code}: no critical header extension is supported"),
            Self::KeyHeaderNotAllowed(h) => {
                write!(f, "{code}: the {h:?} header is not accepted; keys come only from the issuer's JWKS")
            }
            Self::TypInvalid => write!(f, "{code}: typ must be at+jwt (RFC 9068)"),
            Self::UnknownIssuer => write!(f, "{code}: the token's issuer is not configured"),
            Self::UnknownKid => write!(f, "{code}: no key of the issuer matches the token's kid"),
            Self::KeyAlgMismatch => write!(f, "{code}: the key does not fit the token's alg"),
            Self::BadSignature => write!(f, "{code}: the signature does not verify"),
            Self::MissingClaim(c) => write!(f, "{code}: the {c:?} claim is required"),
            Self::InvalidClaim(c) => write!(f, "{code}: the {c:?} claim has the wrong type or value"),
            Self::AudienceMismatch => write!(f, "{code}: the token is not for this workload's resource"),
            Self::InsufficientScope(s) => write!(f, "{code}: the token does not hold scope {s:?}"),
            Self::Expired => write!(f, "{code}: the token has expired"),
            Self::NotYetValid => write!(f, "{code}: the token is not valid yet (nbf)"),
            Self::IssuedInFuture => write!(f, "{code}: the token was issued in the future (iat)"),
            Self::KeysUnavailable => {
                write!(f, "{code}: the issuer's signing keys could not be loaded; try again later")
            }
        }
    }
}

impl std::error::Error for Rejection {}
