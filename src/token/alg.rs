use std::fmt;

use jsonwebtoken::Algorithm;

use super::Rejection;

/// Asymmetric JWS algorithms credbroker can verify. HMAC and `none` are not representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

const ALL: [Alg; 9] = [
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
    Alg::ES256,
    Alg::ES384,
    Alg::EdDSA,
];

/// The family of key an algorithm needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    /// Exact, case-sensitive match (RFC 8725 §3.1): `es256` is not `ES256`.
    fn exact(name: &str) -> Option<Self> {
        ALL.into_iter().find(|a| a.name() == name)
    }

    /// The `alg` of a token header. `none` and HMAC get their own reason codes because they are
    /// attacks more often than mistakes.
    pub(crate) fn from_header(name: &str) -> Result<Self, Rejection> {
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
        Self::exact(name).ok_or_else(|| Rejection::AlgNotAllowed(truncate(name)))
    }

    pub fn from_config(name: &str) -> Result<Self, String> {
        if name.eq_ignore_ascii_case("none") || name.to_ascii_uppercase().starts_with("HS") {
            return Err(format!(
                "{name:?}: unsigned and HMAC tokens are never accepted"
            ));
        }
        Self::exact(name).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|a| a.name()).collect();
            format!("{name:?} is not one of {}", names.join(", "))
        })
    }

    pub(crate) fn family(self) -> KeyFamily {
        match self {
            Self::RS256 | Self::RS384 | Self::RS512 | Self::PS256 | Self::PS384 | Self::PS512 => {
                KeyFamily::Rsa
            }
            Self::ES256 => KeyFamily::EcP256,
            Self::ES384 => KeyFamily::EcP384,
            Self::EdDSA => KeyFamily::Ed25519,
        }
    }

    pub(crate) fn jwt(self) -> Algorithm {
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

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
                matches!(Alg::from_header(alg), Err(Rejection::AlgNotAllowed(_))),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn header_alg_is_exact_and_special_cases_attacks() {
        assert_eq!(Alg::from_header("ES256"), Ok(Alg::ES256));
        assert_eq!(
            Alg::from_header("es256"),
            Err(Rejection::AlgNotAllowed("es256".into()))
        );
        assert_eq!(Alg::from_header("none"), Err(Rejection::AlgNone));
        assert_eq!(Alg::from_header("nOnE"), Err(Rejection::AlgNone));
        assert_eq!(Alg::from_header("HS256"), Err(Rejection::AlgSymmetric));
        assert_eq!(Alg::from_header("hs512"), Err(Rejection::AlgSymmetric));
        assert_eq!(
            Alg::from_header("ES512"),
            Err(Rejection::AlgNotAllowed("ES512".into()))
        );
    }

    #[test]
    fn config_refuses_hmac_and_none() {
        assert!(Alg::from_config("HS256").is_err());
        assert!(Alg::from_config("none").is_err());
        assert!(Alg::from_config("ed25519").is_err());
        assert_eq!(Alg::from_config("EdDSA"), Ok(Alg::EdDSA));
    }
}
