//! Security Event Tokens (RFC 8417) from a Shared Signals transmitter: the same strict JWS rules
//! as access tokens (no `none`, no HMAC, no key headers, duplicate keys refused), `typ`
//! `secevent+jwt`, signed by a key in the transmitter's JWKS. Claims are read only after the
//! signature verifies; what they mean is the broker's business (`broker::signals`).

use serde_json::{Map, Value};

use super::{Alg, KeySet, Rejection, jws};

fn is_secevent(typ: &str) -> bool {
    let t = typ.to_ascii_lowercase();
    t == "secevent+jwt" || t == "application/secevent+jwt"
}

/// Why a SET was refused, as RFC 8935 §2.4 names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    /// Malformed, too old, replayed, or naming nothing usable.
    InvalidRequest(String),
    /// Its key is unknown or not acceptable, or the signature does not verify.
    InvalidKey(String),
    InvalidIssuer,
    InvalidAudience,
    /// No or a wrong bearer token on a push.
    AuthenticationFailed,
}

impl SetError {
    /// The RFC 8935 `err` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidKey(_) => "invalid_key",
            Self::InvalidIssuer => "invalid_issuer",
            Self::InvalidAudience => "invalid_audience",
            Self::AuthenticationFailed => "authentication_failed",
        }
    }

    pub fn description(&self) -> String {
        match self {
            Self::InvalidRequest(m) | Self::InvalidKey(m) => m.clone(),
            Self::InvalidIssuer => "the SET's iss is not this transmitter's".into(),
            Self::InvalidAudience => "the SET is not addressed to this receiver".into(),
            Self::AuthenticationFailed => "the push carries no valid bearer token".into(),
        }
    }
}

/// Verifies a SET's signature with `keys` and returns its claims; `iss` and `aud` are checked
/// against the transmitter's, the rest by the caller.
pub fn verify(
    set: &str,
    keys: &KeySet,
    algorithms: &[Alg],
    issuer: &str,
    audience: &str,
) -> Result<Map<String, Value>, SetError> {
    if set.len() > 64 * 1024 {
        return Err(SetError::InvalidRequest("the SET is over 64 KiB".into()));
    }
    let jws = jws::parse_typed(set, is_secevent).map_err(|r| match r {
        Rejection::AlgNone | Rejection::AlgSymmetric | Rejection::AlgNotAllowed(_) => {
            SetError::InvalidKey(r.describe())
        }
        r => SetError::InvalidRequest(r.describe()),
    })?;
    if !algorithms.contains(&jws.alg) {
        return Err(SetError::InvalidKey(format!(
            "alg {} is not accepted",
            jws.alg.name()
        )));
    }
    let key = keys
        .find(jws.kid.as_deref(), jws.alg)
        .map_err(|r| SetError::InvalidKey(r.describe()))?;
    if !key.verify(jws.alg, jws.signing_input.as_bytes(), jws.signature) {
        return Err(SetError::InvalidKey("the signature does not verify".into()));
    }
    let claims = jws.payload;
    match claims.get("iss") {
        Some(Value::String(i)) if i == issuer => {}
        _ => return Err(SetError::InvalidIssuer),
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(SetError::InvalidAudience);
    }
    Ok(claims)
}
