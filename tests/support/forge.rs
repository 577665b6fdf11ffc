//! Test tokens signed with the fixture keys in `tests/fixtures/keys*` (the same keys the test
//! authorization server signs with), including every malformed and hostile shape the verifier
//! must refuse. Shared by the verifier's unit tests and the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// One signing key from the fixtures, e.g. `Signer::fixture("keys", "es256-1")`.
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
}

impl Signer {
    pub fn fixture(set: &str, kid: &str) -> Self {
        let pem = std::fs::read(fixtures().join(set).join(format!("{kid}.pem")))
            .unwrap_or_else(|e| panic!("fixture key {set}/{kid}: {e}"));
        let (alg, key) = if kid.starts_with("rs256") {
            (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem))
        } else if kid.starts_with("es256") {
            (Algorithm::ES256, EncodingKey::from_ec_pem(&pem))
        } else {
            (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem))
        };
        Self {
            kid: kid.into(),
            alg,
            key: key.unwrap_or_else(|e| panic!("fixture key {kid}: {e}")),
        }
    }

    pub fn alg_name(&self) -> &'static str {
        match self.alg {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "EdDSA",
        }
    }

    /// The header a well-behaved issuer would write.
    pub fn header(&self) -> Value {
        json!({ "alg": self.alg_name(), "typ": "at+jwt", "kid": self.kid })
    }

    /// Signs exactly the JSON texts given (so duplicate keys survive).
    pub fn sign_raw(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.key, self.alg)
            .unwrap_or_else(|e| panic!("signing: {e}"));
        format!("{input}.{sig}")
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    pub fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

/// Claims of a good RFC 9068 access token.
pub fn claims(iss: &str, aud: &str, scope: &str, now: i64) -> Value {
    json!({
        "iss": iss, "sub": "agent-1", "client_id": "agent-1", "aud": aud,
        "jti": format!("jti-{now}-{}", fastrand::u64(..)), "iat": now - 5, "exp": now + 300, "scope": scope,
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove(key);
    }
    v
}

/// Every way a token must be refused, as (expected reason code, description, token).
/// `good` is a valid claims set for the audience under test.
pub fn rejection_cases(
    signer: &Signer,
    rotated: &Signer,
    good: &Value,
    now: i64,
) -> Vec<(&'static str, &'static str, String)> {
    let h = signer.header();
    let t = |claims: &Value| signer.token(claims);
    let hdr = |k: &str, v: Value| signer.sign(&with(h.clone(), k, v), good);
    let valid = t(good);
    let mut parts = valid.splitn(3, '.');
    let (h64, p64) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );

    let mut cases = vec![
        (
            "token_too_large",
            "over 8 KiB",
            t(&with(good.clone(), "padding", json!("x".repeat(9000)))),
        ),
        ("malformed", "not a JWS", "not-a-token".to_string()),
        ("malformed", "bad base64", format!("{h64}.{p64}.@@@")),
        (
            "malformed",
            "payload not JSON",
            format!("{h64}.{}.{}", b64("hello"), b64("sig")),
        ),
        ("duplicate_key", "duplicate claim", {
            let raw = good.to_string();
            signer.sign_raw(
                &h.to_string(),
                &format!("{{\"sub\":\"mallory\",{}", &raw[1..]),
            )
        }),
        (
            "duplicate_key",
            "duplicate header key",
            signer.sign_raw(
                &format!(
                    "{{\"alg\":\"{}\",\"typ\":\"at+jwt\",\"typ\":\"at+jwt\",\"kid\":\"{}\"}}",
                    signer.alg_name(),
                    signer.kid
                ),
                &good.to_string(),
            ),
        ),
        (
            "jwe_not_supported",
            "five parts",
            format!(
                "{}.{}.{}.{}.{}",
                b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#),
                b64("k"),
                b64("iv"),
                b64("ct"),
                b64("tag")
            ),
        ),
        ("nested_jwt", "cty JWT", hdr("cty", json!("JWT"))),
        (
            "alg_none",
            "alg none",
            format!("{}.{p64}.", b64(r#"{"alg":"none","typ":"at+jwt"}"#)),
        ),
        ("alg_symmetric", "HS256", {
            let key = EncodingKey::from_secret(b"a shared secret that is long enough to be a key");
            let input = format!("{}.{p64}", b64(r#"{"alg":"HS256","typ":"at+jwt"}"#));
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256)
                .unwrap_or_default();
            format!("{input}.{sig}")
        }),
        ("alg_not_allowed", "PS256 not allowlisted", {
            let sig = valid.rsplit('.').next().unwrap_or_default().to_string();
            format!(
                "{}.{p64}.{sig}",
                b64(&with(h.clone(), "alg", json!("PS384")).to_string())
            )
        }),
        // Found by fuzzing: the second byte inside a character made the HMAC check panic.
        ("alg_not_allowed", "a multi-byte alg", {
            let sig = valid.rsplit('.').next().unwrap_or_default().to_string();
            format!(
                "{}.{p64}.{sig}",
                b64(&with(h.clone(), "alg", json!("H\u{e9}256")).to_string())
            )
        }),
        (
            "crit_not_supported",
            "crit header",
            hdr("crit", json!(["exp"])),
        ),
        (
            "key_header_not_allowed",
            "jku header",
            hdr("jku", json!("https://attacker.example/jwks")),
        ),
        (
            "key_header_not_allowed",
            "x5u header",
            hdr("x5u", json!("https://attacker.example/cert")),
        ),
        (
            "key_header_not_allowed",
            "jwk header",
            hdr("jwk", json!({"kty": "oct", "k": "AAAA"})),
        ),
        (
            "key_header_not_allowed",
            "x5c header",
            hdr("x5c", json!(["MIIB"])),
        ),
        ("typ_invalid", "typ JWT", hdr("typ", json!("JWT"))),
        (
            "typ_invalid",
            "no typ",
            signer.sign(&without(h.clone(), "typ"), good),
        ),
        (
            "unknown_issuer",
            "foreign iss",
            t(&with(
                good.clone(),
                "iss",
                json!("https://attacker.example"),
            )),
        ),
        ("unknown_kid", "key not in the JWKS", rotated.token(good)),
        ("key_alg_mismatch", "RS256 header on an EC key", {
            let sig = valid.rsplit('.').next().unwrap_or_default().to_string();
            format!(
                "{}.{p64}.{sig}",
                b64(&with(h.clone(), "alg", json!("RS256")).to_string())
            )
        }),
        ("bad_signature", "signed by another key under this kid", {
            let mut hh = rotated.header();
            hh["kid"] = json!(signer.kid);
            rotated.sign(&hh, good)
        }),
        (
            "audience_mismatch",
            "other resource",
            t(&with(
                good.clone(),
                "aud",
                json!("https://elsewhere.example/mcp"),
            )),
        ),
        (
            "expired",
            "exp an hour ago",
            t(&with(
                with(good.clone(), "exp", json!(now - 3600)),
                "iat",
                json!(now - 7200),
            )),
        ),
        (
            "not_yet_valid",
            "nbf in an hour",
            t(&with(good.clone(), "nbf", json!(now + 3600))),
        ),
        (
            "issued_in_future",
            "iat in an hour",
            t(&with(good.clone(), "iat", json!(now + 3600))),
        ),
        (
            "invalid_claim",
            "exp as a string",
            t(&with(good.clone(), "exp", json!((now + 300).to_string()))),
        ),
        (
            "invalid_claim",
            "act without sub",
            t(&with(good.clone(), "act", json!({"client": "x"}))),
        ),
    ];
    for claim in ["sub", "client_id", "jti", "exp", "iat", "aud"] {
        cases.push(("missing_claim", claim, t(&without(good.clone(), claim))));
    }
    cases.push(("missing_claim", "iss", t(&without(good.clone(), "iss"))));
    let _ = now;
    cases
}
