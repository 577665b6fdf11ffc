//! Access tokens: `Verifier::verify` (size check, JWS split and base64url, strict JSON with
//! duplicate-key refusal, header rules, issuer, alg allowlist, key lookup, signature, claims and
//! times, the validation cache) and the JWKS parser behind `Verifier::load_keys`.
//!
//! The JWS, JSON, claims and JWKS parsers are crate-private (`token::{jws,json,claims,keys}`),
//! so everything goes through the public front end, configured offline with a static
//! `jwks_file`. To get past the signature check, the structured mode signs what it builds with
//! the fixture keys (tests/fixtures/keys, embedded at compile time).
//!
//! Input: the first byte picks the mode.
//! * 0: the rest, UTF-8-lossy, is the token.
//! * 1: structured: header and payload JSON built from a good token's with fuzzed edits (or
//!   raw fuzzed text), base64url-encoded, with a real, fuzzed or absent signature.
//! * 2: the rest is a JWKS document: loaded by a second verifier, which then verifies a token
//!   signed with a fixture key.
//!
//! Invariants beyond "no panic": a token that verifies has a signature that verifies with a key
//! of the fixture JWKS whose kid and alg fit its header, was at most `max_token_bytes` long,
//! and has sane claims; verifying the same token again (now from the cache) gives the same
//! answer; a rejection's description never repeats a long part of the token.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Unstructured;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credbroker::config::{IssuerConfig, MetadataMode, TokenSettings};
use credbroker::token::{Alg, Fingerprint, Rejection, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use serde_json::{Map, Value, json};

const ISS: &str = "https://as.fuzz.test";
const AUD: &str = "https://mcp.fuzz.test/db";
/// A fixed clock, so that a crash reproduces whenever it is replayed.
const NOW: u64 = 1_800_000_000;
const MAX_TOKEN_BYTES: usize = 8192;

const KEYS_JSON: &str = include_str!("../../tests/fixtures/keys/keys.json");
const RS256_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/rs256-1.pem");
const ES256_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/es256-1.pem");
const EDDSA_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/eddsa-1.pem");

struct Signer {
    kid: &'static str,
    name: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

impl Signer {
    fn sign(&self, input: &str) -> String {
        jsonwebtoken::crypto::sign(input.as_bytes(), &self.key, self.alg)
            .unwrap_or_else(|e| panic!("signing with the fixture key {}: {e}", self.kid))
    }
}

/// A public key of the fixture JWKS, for the independent signature check.
struct PublicKey {
    kid: Option<String>,
    alg: Option<String>,
    kty: String,
    key: DecodingKey,
}

struct World {
    rt: tokio::runtime::Runtime,
    verifier: Verifier,
    /// For mode 2: its `jwks_file` is rewritten with each input.
    jwks_verifier: Verifier,
    jwks_path: PathBuf,
    good_jwks: String,
    public: Vec<PublicKey>,
    signers: Vec<Signer>,
}

fn public_jwks() -> Value {
    let mut v: Value = serde_json::from_str(KEYS_JSON).unwrap_or_else(|e| panic!("keys.json: {e}"));
    for k in v["keys"].as_array_mut().into_iter().flatten() {
        if let Some(m) = k.as_object_mut() {
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                m.remove(private);
            }
        }
    }
    v
}

fn issuer(jwks: PathBuf) -> IssuerConfig {
    IssuerConfig {
        introspection: None,
        url: ISS.into(),
        algorithms: vec![Alg::RS256, Alg::PS256, Alg::ES256, Alg::ES384, Alg::EdDSA],
        metadata: MetadataMode::Auto,
        jwks_file: Some(jwks),
        refresh: Duration::from_secs(900),
        // An unknown kid re-reads the file at most once an hour: the run stays deterministic.
        min_refresh_interval: Duration::from_secs(3600),
        http_timeout: Duration::from_secs(1),
        ca_file: None,
    }
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let dir = common::scratch_dir("token");
    let jwks = public_jwks();
    let good_jwks = jwks.to_string();
    let path = dir.join("jwks.json");
    std::fs::write(&path, &good_jwks).unwrap_or_else(|e| panic!("{e}"));
    let jwks_path = dir.join("fuzzed-jwks.json");
    std::fs::write(&jwks_path, &good_jwks).unwrap_or_else(|e| panic!("{e}"));
    let settings = TokenSettings {
        max_token_bytes: MAX_TOKEN_BYTES,
        leeway: Duration::from_secs(30),
        // Small, so that the full-cache eviction is exercised too.
        cache_entries: 16,
    };
    let verifier = Verifier::new(&[issuer(path)], &settings).unwrap_or_else(|e| panic!("{e}"));
    let jwks_verifier =
        Verifier::new(&[issuer(jwks_path.clone())], &settings).unwrap_or_else(|e| panic!("{e}"));
    for v in [&verifier, &jwks_verifier] {
        let failed = rt.block_on(v.load_keys());
        assert!(failed.is_empty(), "the fixture JWKS does not load: {failed:?}");
    }
    let public = jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| {
            let s = |n: &str| k.get(n).and_then(Value::as_str).unwrap_or_default();
            let key = match s("kty") {
                "RSA" => DecodingKey::from_rsa_components(s("n"), s("e")).ok()?,
                "EC" => DecodingKey::from_ec_components(s("x"), s("y")).ok()?,
                "OKP" => DecodingKey::from_ed_components(s("x")).ok()?,
                _ => return None,
            };
            Some(PublicKey {
                kid: k.get("kid").and_then(Value::as_str).map(str::to_owned),
                alg: k.get("alg").and_then(Value::as_str).map(str::to_owned),
                kty: s("kty").to_owned(),
                key,
            })
        })
        .collect();
    let signer = |kid, name, alg, key: Result<EncodingKey, _>| Signer {
        kid,
        name,
        alg,
        key: key.unwrap_or_else(|e| panic!("fixture key {kid}: {e}")),
    };
    let signers = vec![
        signer("eddsa-1", "EdDSA", Algorithm::EdDSA, EncodingKey::from_ed_pem(EDDSA_PEM)),
        signer("es256-1", "ES256", Algorithm::ES256, EncodingKey::from_ec_pem(ES256_PEM)),
        signer("rs256-1", "RS256", Algorithm::RS256, EncodingKey::from_rsa_pem(RS256_PEM)),
    ];
    World {
        rt,
        verifier,
        jwks_verifier,
        jwks_path,
        good_jwks,
        public,
        signers,
    }
});

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Structured tokens.

/// A JSON value of bounded size.
fn arb_value(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Value> {
    let pick: u8 = if depth == 0 { u.int_in_range(0..=5)? } else { u.int_in_range(0..=7)? };
    Ok(match pick {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => json!(u.arbitrary::<i64>()?),
        3 => Number(u.arbitrary::<f64>()?),
        4 => json!(u.arbitrary::<u64>()?),
        5 => Value::String(arb_string(u)?),
        6 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| arb_value(u, depth - 1)).collect::<Result<_, _>>()?)
        }
        _ => {
            let n = u.int_in_range(0..=4)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(arb_key(u)?, arb_value(u, depth - 1)?);
            }
            Value::Object(m)
        }
    })
}

#[allow(non_snake_case)]
fn Number(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Strings: often one the verifier compares against, else fuzzed text.
fn arb_string(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    const INTERESTING: &[&str] = &[
        ISS, AUD, "at+jwt", "application/at+jwt", "AT+JWT", "JWT", "application/jwt", "ES256",
        "ES384", "RS256", "PS256", "EdDSA", "none", "HS256", "eddsa-1", "es256-1", "rs256-1",
        "agent-1", "", " ", "a b  c", "sig", "verify",
    ];
    if u.ratio(1, 2)? {
        Ok((*u.choose(INTERESTING)?).to_owned())
    } else {
        let s: String = u.arbitrary()?;
        Ok(s.chars().take(64).collect())
    }
}

fn arb_key(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    const KEYS: &[&str] = &[
        "alg", "typ", "kid", "cty", "crit", "enc", "jku", "x5u", "jwk", "x5c", "iss", "sub",
        "client_id", "jti", "aud", "exp", "iat", "nbf", "scope", "act",
    ];
    if u.ratio(3, 4)? { Ok((*u.choose(KEYS)?).to_owned()) } else { arb_string(u) }
}

/// A good object with fuzzed edits: set a key, remove a key, or repeat one in the text.
fn edited(u: &mut Unstructured<'_>, base: Value) -> arbitrary::Result<String> {
    if u.ratio(1, 16)? {
        // Raw text instead of an object.
        let s: String = u.arbitrary()?;
        return Ok(s.chars().take(512).collect());
    }
    let Value::Object(mut m) = base else { return Ok(String::new()) };
    let edits = u.int_in_range(0..=4)?;
    let mut duplicate = None;
    for _ in 0..edits {
        match u.int_in_range(0..=5)? {
            0 => {
                let k = arb_key(u)?;
                m.remove(&k);
            }
            1 => duplicate = Some((arb_key(u)?, arb_value(u, 2)?)),
            _ => {
                let k = arb_key(u)?;
                let v = arb_value(u, 3)?;
                m.insert(k, v);
            }
        }
    }
    let text = Value::Object(m).to_string();
    Ok(match duplicate {
        // `{"k":v,` + the rest: the key may now appear twice.
        Some((k, v)) if text.len() > 1 => {
            format!("{{{}:{},{}", Value::String(k), v, &text[1..]).replace(",}", "}")
        }
        _ => text,
    })
}

fn good_claims(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    let now = NOW as i64;
    let mut c = json!({
        "iss": ISS, "sub": "agent-1", "client_id": "agent-1", "aud": AUD,
        "jti": format!("jti-{}", u.arbitrary::<u16>()?),
        "iat": now - 5, "exp": now + 300, "scope": "mcp.tool:db.read extra",
    });
    if u.ratio(1, 4)? {
        c["act"] = json!({"sub": "agent-7", "act": {"sub": "orchestrator"}});
    }
    if u.ratio(1, 4)? {
        c["aud"] = json!([AUD, "https://other.test"]);
    }
    Ok(c)
}

fn structured(u: &mut Unstructured<'_>, w: &World) -> arbitrary::Result<String> {
    let signer = &w.signers[match u.int_in_range(0..=7u8)? {
        0..=3 => 0,
        4..=6 => 1,
        _ => 2,
    }];
    let header = edited(u, json!({"alg": signer.name, "typ": "at+jwt", "kid": signer.kid}))?;
    let claims = good_claims(u)?;
    let payload = edited(u, claims)?;
    let (h, p) = match u.int_in_range(0..=15u8)? {
        // A nested compact JWT as the payload.
        0 => (b64(&header), b64(format!("{}.{}.{}", b64(&header), b64(&payload), b64("s")))),
        // Padding, or standard base64 characters.
        1 => (format!("{}=", b64(&header)), b64(&payload)),
        2 => (b64(&header).replace('_', "/"), b64(&payload).replace('-', "+")),
        _ => (b64(&header), b64(&payload)),
    };
    let input = format!("{h}.{p}");
    let sig = match u.int_in_range(0..=15u8)? {
        0 => String::new(),
        1 => b64(u.arbitrary::<Vec<u8>>()?),
        2 => {
            // A signature by another fixture key (the kid in the header stays).
            let other = u.choose(&w.signers)?;
            other.sign(&input)
        }
        3 => {
            // The real signature with one character changed (non-canonical trailing bits too).
            let mut s = signer.sign(&input).into_bytes();
            let i = u.choose_index(s.len().max(1))?.min(s.len().saturating_sub(1));
            if let Some(c) = s.get_mut(i) {
                *c = *u.choose(b"AQgw-_Zz09")?;
            }
            String::from_utf8_lossy(&s).into_owned()
        }
        _ => signer.sign(&input),
    };
    let mut token = format!("{input}.{sig}");
    if u.ratio(1, 32)? {
        token.push_str(&format!(".{}.{}", b64("x"), b64("y")));
    }
    Ok(token)
}

// ---------------------------------------------------------------------------------------------
// Checking the answers.

fn jwt_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn fits(kty: &str, alg: Algorithm) -> bool {
    matches!(
        (kty, alg),
        ("RSA", Algorithm::RS256 | Algorithm::PS256)
            | ("EC", Algorithm::ES256 | Algorithm::ES384)
            | ("OKP", Algorithm::EdDSA)
    )
}

/// Checked independently of the verifier: the header names an allowed alg and a typ of
/// at+jwt, and a key of the fixture JWKS that fits its kid and alg verifies the signature.
fn independently_signed(w: &World, token: &str) -> Result<(), String> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three parts".into());
    };
    let header: Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the header is not base64url JSON")?;
    let payload: Value = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the payload is not base64url JSON")?;
    if !payload.is_object() {
        return Err("the payload is not an object".into());
    }
    let typ = header.get("typ").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    if typ != "at+jwt" && typ != "application/at+jwt" {
        return Err(format!("typ {typ:?}"));
    }
    for forbidden in ["crit", "jku", "x5u", "jwk", "x5c", "enc"] {
        if header.get(forbidden).is_some() {
            return Err(format!("header has {forbidden}"));
        }
    }
    let alg_name = header.get("alg").and_then(Value::as_str).ok_or("no alg")?;
    let alg = jwt_alg(alg_name).ok_or_else(|| format!("alg {alg_name:?} is not allowed"))?;
    let kid = header.get("kid").map(|k| k.as_str().ok_or("kid is not a string")).transpose()?;
    let message = format!("{h}.{p}");
    let ok = w.public.iter().any(|k| {
        kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
            && fits(&k.kty, alg)
            && k.alg.as_deref().is_none_or(|a| a == alg_name)
            && jsonwebtoken::crypto::verify(sig, message.as_bytes(), &k.key, alg).unwrap_or(false)
    });
    if ok { Ok(()) } else { Err("no fixture key verifies the signature".into()) }
}

type Answer = Result<credbroker::token::Verified, (Rejection, Option<Fingerprint>)>;

fn check_answer(w: &World, token: &str, answer: &Answer) {
    match answer {
        Ok(v) => {
            assert!(token.len() <= MAX_TOKEN_BYTES, "accepted a {}-byte token", token.len());
            if let Err(why) = independently_signed(w, token) {
                panic!("accepted a token that is not validly signed: {why}");
            }
            let c = &v.claims;
            let (now, leeway) = (NOW as i64, 30);
            assert_eq!(c.issuer, ISS);
            assert!(!c.subject.is_empty() && !c.client_id.is_empty() && !c.jti.is_empty());
            assert!(!c.audiences.is_empty() && c.audiences.iter().all(|a| !a.is_empty()));
            assert!(now < c.expires_at.saturating_add(leeway), "accepted an expired token");
            assert!(c.issued_at <= now + leeway, "accepted a token issued in the future");
            assert!(c.not_before.is_none_or(|nbf| nbf <= now + leeway));
            assert!(c.actors.len() <= 8, "act chain of {}", c.actors.len());
            assert!(c.scopes.iter().all(|s| !s.is_empty() && !s.contains(' ')));
            assert_eq!(v.fingerprint, Fingerprint::of(token));
            let _ = v.check_audience(AUD);
            let _ = c.lookup("act.sub");
            let _ = c.lookup("");
        }
        Err((rejection, fp)) => {
            match rejection {
                Rejection::TooLarge { .. } => {
                    assert!(token.len() > MAX_TOKEN_BYTES);
                    assert!(fp.is_none());
                }
                _ => {
                    assert!(token.len() <= MAX_TOKEN_BYTES);
                    assert_eq!(*fp, Some(Fingerprint::of(token)));
                }
            }
            // Reason details never repeat the token (only a 16-character prefix of an alg).
            // Only long base64url-looking parts are looked for: the fixed descriptions are
            // words with spaces between, which a short or spaced part could match by chance.
            let said = rejection.describe();
            let b64url = |p: &&str| {
                p.len() >= 24 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            for part in token.split('.').filter(b64url) {
                assert!(!said.contains(part), "the rejection {rejection:?} repeats the token");
            }
            let _ = rejection.code();
            let _ = rejection.to_string();
        }
    }
}

fn same(a: &Answer, b: &Answer) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x.claims == y.claims && x.fingerprint == y.fingerprint,
        (Err((x, fx)), Err((y, fy))) => x == y && fx == fy,
        _ => false,
    }
}

fn verify_twice(w: &World, verifier: &Verifier, token: &str, check: bool) {
    let first = w.rt.block_on(verifier.verify(token, now()));
    if check {
        check_answer(w, token, &first);
    }
    // Again: a success is now answered from the cache, and must be the same answer.
    let second = w.rt.block_on(verifier.verify(token, now()));
    assert!(same(&first, &second), "verify changed its answer: {first:?} then {second:?}");
    // Past every expiry a token can name (2^53 s, plus the leeway): never accepted, from the
    // cache or not.
    let late = UNIX_EPOCH + Duration::from_secs(9_007_199_254_740_991 + 31);
    if let Ok(v) = w.rt.block_on(verifier.verify(token, late)) {
        panic!("accepted at the end of time: {v:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let w = &*WORLD;
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            let _ = Alg::from_config(&token);
            verify_twice(w, &w.verifier, &token, true);
        }
        1 => {
            let mut u = Unstructured::new(rest);
            let Ok(token) = structured(&mut u, w) else { return };
            verify_twice(w, &w.verifier, &token, true);
        }
        _ => {
            // A fuzzed JWKS, loaded after the good one (so a failed load cannot keep keys from
            // an earlier input), then a fixture-signed token against whatever loaded.
            let _ = std::fs::write(&w.jwks_path, &w.good_jwks);
            let _ = w.rt.block_on(w.jwks_verifier.load_keys());
            let split = rest.len().saturating_sub(rest.len() / 8);
            let (jwks, tail) = rest.split_at(split);
            let _ = std::fs::write(&w.jwks_path, jwks);
            let failed = w.rt.block_on(w.jwks_verifier.load_keys());
            let _ = w.jwks_verifier.statuses();
            let mut u = Unstructured::new(tail);
            if let Ok(token) = structured(&mut u, w) {
                // The keys are fuzzed: only the cache's consistency is checked.
                let _ = failed;
                verify_twice(w, &w.jwks_verifier, &token, false);
            }
        }
    }
});
