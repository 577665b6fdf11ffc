//! `alg` as the token verifier needs it: a header's value checked (RFC 8725: exact names, `none`
//! and HMAC singled out), and each algorithm's key family and jsonwebtoken name.

use jsonwebtoken::Algorithm;

use super::Rejection;
pub use crate::jose::Alg;

/// The family of key an algorithm needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

/// What the verifier needs of an [`Alg`] beyond its name.
pub(crate) trait AlgExt {
    fn family(self) -> KeyFamily;
    fn jwt(self) -> Algorithm;
}

impl AlgExt for Alg {
    fn family(self) -> KeyFamily {
        match self {
            Self::RS256 | Self::RS384 | Self::RS512 | Self::PS256 | Self::PS384 | Self::PS512 => {
                KeyFamily::Rsa
            }
            Self::ES256 => KeyFamily::EcP256,
            Self::ES384 => KeyFamily::EcP384,
            Self::EdDSA => KeyFamily::Ed25519,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Self::RS256 => Algorithm::RS256,
            Self::RS384 => Algorithm::RS384,
            Self::RS512 => Algorithm::RS512,
            Self::PS256 => Algorithm::PS256,
            Self::PS384 => Algorithm::PS384,
            Self::PS512 => Algorithm::PS512,
            Self::ES256 => Algorithm::ES256,
            Self::ES384 => Algorithm::ES384,
            Self::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// The `alg` of a token header. `none` and HMAC get their own reason codes because they are
/// attacks more often than mistakes.
pub(crate) fn from_header(name: &str) -> Result<Alg, Rejection> {
    if name.eq_ignore_ascii_case("none") {
        return Err(Rejection::AlgNone);
    }
    // Bytes, not a `str` slice: the header is the caller's, and `"H\u{e9}…"[..2]` would
    // split a character and panic (found by the `token` fuzz target).
    if name
        .as_bytes()
        .get(..2)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"HS"))
    {
        return Err(Rejection::AlgSymmetric);
    }
    Alg::exact(name).ok_or_else(|| Rejection::AlgNotAllowed(truncate(name)))
}

/// Header values are attacker-controlled: never put an unbounded one in an error.
fn truncate(s: &str) -> String {
    s.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzzing regression (fuzz/regressions/token/alg-split-inside-a-char): an `alg` whose
    /// second byte is inside a multi-byte character panicked instead of being refused.
    #[test]
    fn a_multibyte_alg_is_refused_not_a_panic() {
        for alg in ["H\u{e9}256", "\u{e9}", "H\u{10348}", "h\u{df}"] {
            assert!(
                matches!(from_header(alg), Err(Rejection::AlgNotAllowed(_))),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn header_alg_is_exact_and_special_cases_attacks() {
        assert_eq!(from_header("ES256"), Ok(Alg::ES256));
        assert_eq!(
            from_header("es256"),
            Err(Rejection::AlgNotAllowed("es256".into()))
        );
        assert_eq!(from_header("none"), Err(Rejection::AlgNone));
        assert_eq!(from_header("nOnE"), Err(Rejection::AlgNone));
        assert_eq!(from_header("HS256"), Err(Rejection::AlgSymmetric));
        assert_eq!(from_header("hs512"), Err(Rejection::AlgSymmetric));
        assert_eq!(
            from_header("ES512"),
            Err(Rejection::AlgNotAllowed("ES512".into()))
        );
    }
}
