//! Verifier tests against a static JWKS built from the fixture keys, and Google's Wycheproof
//! signature vectors (copied into `tests/data/wycheproof` with their licence).

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::*;
use crate::config::{IssuerConfig, MetadataMode, TokenSettings};

use crate::forge::{self, Signer};

const ISS: &str = "https://as.example.test";
const AUD: &str = "https://mcp.example.test/postgres";

fn now() -> (SystemTime, i64) {
    let t = SystemTime::now();
    (t, unix(t))
}

/// The fixture JWKS with its private members removed.
fn public_jwks(set: &str) -> Value {
    let text =
        std::fs::read_to_string(forge::fixtures().join(set).join("keys.json")).unwrap_or_default();
    let mut v: Value = serde_json::from_str(&text).unwrap_or_default();
    for k in v["keys"].as_array_mut().into_iter().flatten() {
        if let Some(m) = k.as_object_mut() {
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                m.remove(private);
            }
        }
    }
    v
}

fn issuer(jwks: &Path) -> IssuerConfig {
    IssuerConfig {
        introspection: None,
        url: ISS.into(),
        algorithms: vec![Alg::RS256, Alg::ES256, Alg::EdDSA],
        metadata: MetadataMode::Auto,
        jwks_file: Some(jwks.to_path_buf()),
        refresh: Duration::from_secs(900),
        min_refresh_interval: Duration::from_secs(30),
        http_timeout: Duration::from_secs(1),
        ca_file: None,
    }
}

async fn verifier(dir: &Path) -> Verifier {
    let path = dir.join("jwks.json");
    std::fs::write(&path, public_jwks("keys").to_string()).unwrap_or_default();
    let v = Verifier::new(&[issuer(&path)], &TokenSettings::default())
        .expect("a verifier over the fixture JWKS file should build");
    assert!(v.load_keys().await.is_empty());
    v
}

async fn code(v: &Verifier, token: &str, at: SystemTime) -> &'static str {
    match v.verify(token, at).await {
        Ok(ok) => match ok.check_audience(AUD) {
            Ok(()) => "ok",
            Err(r) => r.code(),
        },
        Err((r, _)) => r.code(),
    }
}

#[tokio::test]
async fn accepts_each_algorithm_and_reads_the_claims() {
    let dir = tempfile::tempdir().expect("a temp dir for the JWKS file should be created");
    let v = verifier(dir.path()).await;
    let (at, now) = now();
    for kid in ["rs256-1", "es256-1", "eddsa-1"] {
        let s = Signer::fixture("keys", kid);
        let mut c = forge::claims(ISS, AUD, "mcp.tool:postgres.read extra", now);
        c["act"] = json!({"sub": "agent-7"});
        c["sub"] = json!("alice@example.com");
        let ok = v
            .verify(&s.token(&c), at)
            .await
            .unwrap_or_else(|(r, _)| panic!("{kid}: {r}"));
        assert!(ok.check_audience(AUD).is_ok());
        assert_eq!(ok.claims.subject, "alice@example.com");
        assert_eq!(
            ok.claims.scopes,
            vec!["mcp.tool:postgres.read".to_string(), "extra".into()]
        );
        assert_eq!(ok.claims.actors, vec!["agent-7".to_string()]);
    }
}

#[tokio::test]
async fn every_rejection_has_its_reason_code() {
    let dir = tempfile::tempdir().expect("a temp dir for the JWKS file should be created");
    let v = verifier(dir.path()).await;
    let (at, now) = now();
    let signer = Signer::fixture("keys", "es256-1");
    let rotated = Signer::fixture("keys-rotated", "es256-2");
    let good = forge::claims(ISS, AUD, "mcp.tool:postgres.read", now);
    assert_eq!(code(&v, &signer.token(&good), at).await, "ok");
    let mut failures = Vec::new();
    for (want, what, token) in forge::rejection_cases(&signer, &rotated, &good, now) {
        let got = code(&v, &token, at).await;
        if got != want {
            failures.push(format!("{what}: expected {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Nothing refused was cached; the audience is checked per use, so the one token valid for
    // another resource was (it is refused for this one on every use, cached or not).
    assert_eq!(v.cached(), 2);
}

#[tokio::test]
async fn cached_validations_still_expire_and_follow_key_removal() {
    let dir = tempfile::tempdir().expect("a temp dir for the JWKS file should be created");
    let v = verifier(dir.path()).await;
    let (at, now) = now();
    let s = Signer::fixture("keys", "es256-1");
    let token = s.token(&forge::claims(ISS, AUD, "a", now));
    assert_eq!(code(&v, &token, at).await, "ok");
    assert_eq!(v.cached(), 1);
    assert_eq!(code(&v, &token, at).await, "ok");
    // Later than exp + leeway: the cache does not keep an expired token alive.
    assert_eq!(
        code(&v, &token, at + Duration::from_secs(400)).await,
        "expired"
    );

    let token = s.token(&forge::claims(ISS, AUD, "a", now));
    assert_eq!(code(&v, &token, at).await, "ok");
    // The issuer drops the key: a cached validation under it no longer counts.
    let mut jwks = public_jwks("keys");
    if let Some(keys) = jwks["keys"].as_array_mut() {
        keys.retain(|k| k["kid"] != "es256-1");
    }
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap_or_default();
    assert!(v.load_keys().await.is_empty());
    assert_eq!(code(&v, &token, at).await, "unknown_kid");
}

#[tokio::test]
async fn a_missing_key_set_is_a_backend_condition() {
    let dir = tempfile::tempdir().expect("a temp dir without a key set should be created");
    let v = Verifier::new(
        &[issuer(&dir.path().join("absent.json"))],
        &TokenSettings::default(),
    )
    .expect("a verifier should build even with its key file missing");
    assert_eq!(v.load_keys().await.len(), 1);
    let (at, now) = now();
    let token = Signer::fixture("keys", "es256-1").token(&forge::claims(ISS, AUD, "a", now));
    let err = v.verify(&token, at).await.err().map(|(r, _)| r);
    assert_eq!(err, Some(Rejection::KeysUnavailable));
    assert!(err.is_some_and(|r| r.is_unavailable()));
}

#[test]
fn fingerprints_are_sha256_hex() {
    assert_eq!(
        Fingerprint::of("abc").hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

// === Wycheproof ===

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("Wycheproof hex {s:?}: {e}"))
}

/// Some ECDSA groups give the key only as hex coordinates: build the JWK (RFC 7518 §6.2.1:
/// each coordinate exactly 32 bytes, left-padded).
fn ec_jwk(pk: &Value) -> Value {
    use base64::Engine;
    let coord = |name: &str| {
        let h = pk[name]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("00");
        let mut bytes = hex(&format!("{h:0>64}"));
        bytes.drain(..bytes.len().saturating_sub(32));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    json!({ "kty": "EC", "crv": "P-256", "x": coord("wx"), "y": coord("wy") })
}

/// Runs a vector file through the same key loading and signature check the verifier uses.
/// Returns (valid accepted, invalid rejected, acceptable accepted, acceptable total).
fn run_wycheproof(file: &str, alg: Alg, jwk_field: &str) -> (usize, usize, usize, usize) {
    use base64::Engine;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/wycheproof")
        .join(file);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default())
        .unwrap_or_default();
    let (mut valid, mut invalid, mut acceptable_ok, mut acceptable) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for group in doc["testGroups"].as_array().into_iter().flatten() {
        let mut jwk = match &group[jwk_field] {
            Value::Null => ec_jwk(&group["publicKey"]),
            j => j.clone(),
        };
        jwk["kid"] = json!("k");
        let set = KeySet::parse(json!({ "keys": [jwk] }).to_string().as_bytes(), &[alg]);
        for t in group["tests"].as_array().into_iter().flatten() {
            let msg = hex(t["msg"].as_str().unwrap_or_default());
            let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(hex(t["sig"].as_str().unwrap_or_default()));
            let ok = match &set {
                Ok((keys, _)) => keys
                    .find(Some("k"), alg)
                    .is_ok_and(|k| k.verify(alg, &msg, &sig)),
                Err(_) => false,
            };
            match t["result"].as_str() {
                Some("valid") if ok => valid += 1,
                Some("invalid") if !ok => invalid += 1,
                Some("acceptable") => {
                    acceptable += 1;
                    acceptable_ok += usize::from(ok);
                }
                r => failures.push(format!(
                    "tcId {} ({}): result {r:?}, verified {ok}",
                    t["tcId"], t["comment"]
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{file}: {failures:#?}");
    (valid, invalid, acceptable_ok, acceptable)
}

#[test]
fn wycheproof_es256() {
    assert_eq!(
        run_wycheproof(
            "ecdsa_secp256r1_sha256_p1363_test.json",
            Alg::ES256,
            "publicKeyJwk"
        ),
        (173, 89, 0, 0)
    );
}

#[test]
fn wycheproof_eddsa() {
    assert_eq!(
        run_wycheproof("ed25519_test.json", Alg::EdDSA, "publicKeyJwk"),
        (88, 63, 0, 0)
    );
}

#[test]
fn wycheproof_rs256() {
    // The one "acceptable" vector (a signature with a missing NULL in its DigestInfo) is
    // rejected: aws-lc accepts only the canonical encoding, which is the stricter choice.
    assert_eq!(
        run_wycheproof("rsa_signature_2048_sha256_test.json", Alg::RS256, "keyJwk"),
        (9, 249, 0, 1)
    );
}
