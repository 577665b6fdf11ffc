//! Splitting and decoding a compact JWS, and every header rule that needs no key.
//!
//! Nothing decoded here is trusted: the payload is read only to find the issuer, and its claims
//! are looked at only after the signature has been verified.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::json::{JsonError, parse_strict};
use super::{Alg, Rejection};

/// A token that passed the structural and header checks.
pub(crate) struct Jws<'a> {
    pub(crate) alg: Alg,
    pub(crate) kid: Option<String>,
    pub(crate) payload: Map<String, Value>,
    /// `BASE64URL(header) "." BASE64URL(payload)`: what the signature covers.
    pub(crate) signing_input: &'a str,
    /// The third segment, still base64url; decoded once to check it is canonical.
    pub(crate) signature: &'a str,
}

/// Header parameters that would let the token choose its own verification key (RFC 8725 §3.10).
const KEY_HEADERS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];

pub(crate) fn parse(token: &str) -> Result<Jws<'_>, Rejection> {
    parse_typed(token, is_at_jwt)
}

/// A JWS whose `typ` must satisfy `typ_ok` (`at+jwt` for access tokens, `secevent+jwt` for
/// Security Event Tokens); every other rule is the same.
pub(crate) fn parse_typed(token: &str, typ_ok: fn(&str) -> bool) -> Result<Jws<'_>, Rejection> {
    let dots = token.bytes().filter(|&b| b == b'.').count();
    if dots == 4 {
        return Err(Rejection::JweNotSupported);
    }
    if dots != 2 {
        return Err(Rejection::Malformed(
            "a JWS has three dot-separated parts".into(),
        ));
    }
    let (signing_input, signature) = token
        .rsplit_once('.')
        .ok_or_else(|| Rejection::Malformed("a JWS has three dot-separated parts".into()))?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .ok_or_else(|| Rejection::Malformed("a JWS has three dot-separated parts".into()))?;

    let header = decode_object(header_b64, "header")?;
    let alg = check_header(&header, typ_ok)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Rejection::Malformed("kid must be a string".into())),
    };

    let payload = match decode_object(payload_b64, "payload") {
        Ok(p) => p,
        // A payload that is itself a compact JWT is a nested token in disguise.
        Err(Rejection::Malformed(_)) if looks_like_jwt(payload_b64) => {
            return Err(Rejection::NestedJwt);
        }
        Err(e) => return Err(e),
    };

    if signature.is_empty() {
        return Err(Rejection::Malformed("the signature is empty".into()));
    }
    b64(signature, "signature")?;
    Ok(Jws {
        alg,
        kid,
        payload,
        signing_input,
        signature,
    })
}

fn check_header(header: &Map<String, Value>, typ_ok: fn(&str) -> bool) -> Result<Alg, Rejection> {
    if header.contains_key("enc") {
        return Err(Rejection::JweNotSupported);
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) => super::alg::from_header(a)?,
        Some(_) => return Err(Rejection::Malformed("alg must be a string".into())),
        None => return Err(Rejection::Malformed("the header has no alg".into())),
    };
    if header.contains_key("crit") {
        // We understand no extension, so any `crit` must be refused (RFC 7515 §4.1.11).
        return Err(Rejection::CritNotSupported);
    }
    if let Some(cty) = header.get("cty") {
        let cty = cty.as_str().unwrap_or_default();
        if cty.eq_ignore_ascii_case("jwt") || cty.eq_ignore_ascii_case("application/jwt") {
            return Err(Rejection::NestedJwt);
        }
    }
    if let Some(h) = KEY_HEADERS.into_iter().find(|h| header.contains_key(*h)) {
        return Err(Rejection::KeyHeaderNotAllowed(h));
    }
    match header.get("typ") {
        Some(Value::String(t)) if typ_ok(t) => Ok(alg),
        _ => Err(Rejection::TypInvalid),
    }
}

/// RFC 9068 §4: `at+jwt`, compared case-insensitively, with an optional `application/` prefix.
fn is_at_jwt(typ: &str) -> bool {
    let t = typ.to_ascii_lowercase();
    t == "at+jwt" || t == "application/at+jwt"
}

fn decode_object(segment: &str, part: &str) -> Result<Map<String, Value>, Rejection> {
    let bytes = b64(segment, part)?;
    match parse_strict(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::Malformed(format!(
            "the {part} is not a JSON object"
        ))),
        Err(JsonError::DuplicateKey) => Err(Rejection::DuplicateKey),
        Err(JsonError::Invalid(e)) => {
            Err(Rejection::Malformed(format!("the {part} is not JSON: {e}")))
        }
    }
}

/// Strict base64url: no padding, no whitespace, canonical trailing bits.
fn b64(segment: &str, part: &str) -> Result<Vec<u8>, Rejection> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Rejection::Malformed(format!("the {part} is not base64url")))
}

fn looks_like_jwt(payload_b64: &str) -> bool {
    URL_SAFE_NO_PAD
        .decode(payload_b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|s| s.matches('.').count() >= 2 && s.split('.').all(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn tok(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", enc(header), enc(payload), enc("sig"))
    }

    const P: &str = r#"{"iss":"x"}"#;

    fn code(t: &str) -> &'static str {
        match parse(t) {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn header_rules() {
        assert_eq!(code(&tok(r#"{"alg":"ES256","typ":"at+jwt"}"#, P)), "ok");
        assert_eq!(
            code(&tok(r#"{"alg":"ES256","typ":"application/AT+JWT"}"#, P)),
            "ok"
        );
        assert_eq!(
            code(&tok(r#"{"alg":"ES256","typ":"JWT"}"#, P)),
            "typ_invalid"
        );
        assert_eq!(code(&tok(r#"{"alg":"ES256"}"#, P)), "typ_invalid");
        assert_eq!(
            code(&tok(r#"{"alg":"none","typ":"at+jwt"}"#, P)),
            "alg_none"
        );
        assert_eq!(
            code(&tok(r#"{"alg":"HS256","typ":"at+jwt"}"#, P)),
            "alg_symmetric"
        );
        assert_eq!(
            code(&tok(r#"{"alg":"ES256","typ":"at+jwt","crit":["exp"]}"#, P)),
            "crit_not_supported"
        );
        assert_eq!(
            code(&tok(r#"{"alg":"ES256","typ":"at+jwt","cty":"JWT"}"#, P)),
            "nested_jwt"
        );
        assert_eq!(
            code(&tok(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#, P)),
            "jwe_not_supported"
        );
        assert_eq!(
            code(&tok(
                r#"{"alg":"ES256","typ":"at+jwt","jku":"https://e"}"#,
                P
            )),
            "key_header_not_allowed"
        );
        assert_eq!(
            code(&tok(r#"{"alg":"ES256","typ":"at+jwt","x5c":[]}"#, P)),
            "key_header_not_allowed"
        );
        assert_eq!(
            code(&tok(r#"{"alg":"ES256","typ":"at+jwt","jwk":{}}"#, P)),
            "key_header_not_allowed"
        );
        assert_eq!(
            code(&tok(r#"{"alg":"ES256","alg":"ES256","typ":"at+jwt"}"#, P)),
            "duplicate_key"
        );
        assert_eq!(
            code(&tok(r#"{"alg":"ES256","typ":"at+jwt","kid":7}"#, P)),
            "malformed"
        );
    }

    #[test]
    fn structure_rules() {
        assert_eq!(code("a.b.c.d.e"), "jwe_not_supported");
        assert_eq!(code("a.b"), "malformed");
        assert_eq!(code("a.b.c.d"), "malformed");
        let h = enc(r#"{"alg":"ES256","typ":"at+jwt"}"#);
        assert_eq!(code(&format!("{h}.{}.", enc(P))), "malformed");
        assert_eq!(code(&format!("{h}=.{}.{}", enc(P), enc("s"))), "malformed");
        assert_eq!(
            code(&format!("{h}.{}.{}", enc("[1]"), enc("s"))),
            "malformed"
        );
        assert_eq!(
            code(&format!("{h}.{}.{}", enc(r#"{"a":1,"a":1}"#), enc("s"))),
            "duplicate_key"
        );
        let inner = format!("{}.{}.{}", enc("{}"), enc("{}"), enc("s"));
        assert_eq!(
            code(&format!("{h}.{}.{}", enc(&inner), enc("s"))),
            "nested_jwt"
        );
    }
}
