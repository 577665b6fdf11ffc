//! The JOSE signature algorithms credbroker accepts, by their registered names (RFC 7518). A
//! leaf: the configuration names them (`[[issuer]] algorithms`), the token verifier checks
//! headers against them and maps them to keys (`token::alg`).

use std::fmt;

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

pub const ALL: [Alg; 9] = [
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
    pub fn exact(name: &str) -> Option<Self> {
        ALL.into_iter().find(|a| a.name() == name)
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
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_refuses_hmac_and_none() {
        assert!(Alg::from_config("HS256").is_err());
        assert!(Alg::from_config("none").is_err());
        assert!(Alg::from_config("ed25519").is_err());
        assert_eq!(Alg::from_config("EdDSA"), Ok(Alg::EdDSA));
    }
}
