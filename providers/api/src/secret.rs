use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// A secret value: a password, an access key, a token.
///
/// Zeroized on drop, printed as `[redacted]` by both `Debug` and `Display`, and deliberately not
/// `Serialize`: the only way out is [`SecretValue::expose`], and the broker calls it in exactly
/// two places (building the gRPC response, and encrypting a revocation handle for the journal).
pub struct SecretValue(SecretString);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The secret itself. Every caller is a place where a secret can leak: keep them few.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn duplicate(&self) -> Self {
        Self::new(self.expose())
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_redacted() {
        let s = SecretValue::new("hunter2");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2");
    }
}
