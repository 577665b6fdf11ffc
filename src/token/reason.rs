use std::fmt;

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
            Self::IssuerNotAccepted => "issuer_not_accepted",
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
