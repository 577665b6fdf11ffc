use serde_json::{Value, json};

use super::*;

fn fixture_jwk(kid: &str) -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/keys.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default())
        .unwrap_or_default();
    let mut k = v["keys"]
        .as_array()
        .and_then(|a| a.iter().find(|k| k["kid"] == kid).cloned())
        .unwrap_or_default();
    if let Some(m) = k.as_object_mut() {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            m.remove(private);
        }
    }
    k
}

const ALL: [Alg; 3] = [Alg::RS256, Alg::ES256, Alg::EdDSA];

fn parse(keys: Value, allowed: &[Alg]) -> Result<(KeySet, Vec<String>), String> {
    KeySet::parse(json!({ "keys": keys }).to_string().as_bytes(), allowed)
}

#[test]
fn skips_unusable_keys_and_says_why() {
    let mut enc = fixture_jwk("es256-1");
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc-key");
    let mut p384 = fixture_jwk("es256-1");
    p384["crv"] = json!("P-384");
    p384["kid"] = json!("p384");
    let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"});
    let mut mismatched = fixture_jwk("rs256-1");
    mismatched["alg"] = json!("ES256");
    mismatched["kid"] = json!("mismatch");
    let (set, skipped) = parse(
        json!([fixture_jwk("es256-1"), enc, p384, oct, mismatched]),
        &ALL,
    )
    .expect("the set should parse, skipping the unusable keys");
    assert_eq!(set.len(), 1);
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert!(
        skipped
            .iter()
            .any(|s| s.contains("\"hmac\"") && s.contains("oct"))
    );
}

#[test]
fn a_key_set_with_a_private_key_is_refused_whole() {
    let mut leaked = fixture_jwk("eddsa-1");
    leaked["d"] = json!("c2VjcmV0");
    let e = parse(json!([fixture_jwk("rs256-1"), leaked]), &ALL)
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("private key material") && e.contains("\"d\""),
        "{e}"
    );
    assert!(
        !e.contains("c2VjcmV0"),
        "the private value itself is never repeated: {e}"
    );
}

#[test]
fn small_rsa_keys_are_refused() {
    let mut k = fixture_jwk("rs256-1");
    // A 1024-bit modulus.
    k["n"] = json!(URL_SAFE_NO_PAD.encode([0xffu8; 128]));
    assert!(parse(json!([k]), &ALL).is_err_and(|e| e.contains("1024 bits")));
}

#[test]
fn a_set_with_no_usable_key_is_an_error() {
    assert!(parse(json!([]), &ALL).is_err());
    assert!(KeySet::parse(b"{}", &ALL).is_err());
    assert!(KeySet::parse(&vec![b' '; MAX_JWKS_BYTES + 1], &ALL).is_err());
    // Keys for algorithms the issuer does not allow are not usable.
    assert!(parse(json!([fixture_jwk("eddsa-1")]), &[Alg::RS256]).is_err());
}

#[test]
fn kid_less_tokens_need_exactly_one_fitting_key() {
    let (set, _) = parse(
        json!([fixture_jwk("es256-1"), fixture_jwk("rs256-1")]),
        &ALL,
    )
    .expect("a set of one EC and one RSA key should parse");
    assert!(set.find(None, Alg::ES256).is_ok());
    let mut second = fixture_jwk("es256-1");
    second["kid"] = json!("another");
    let (set, _) = parse(json!([fixture_jwk("es256-1"), second]), &ALL)
        .expect("a set of two EC keys should parse");
    assert!(matches!(
        set.find(None, Alg::ES256),
        Err(Rejection::UnknownKid)
    ));
    assert!(matches!(
        set.find(Some("es256-1"), Alg::RS256),
        Err(Rejection::KeyAlgMismatch)
    ));
    assert!(matches!(
        set.find(Some("nope"), Alg::ES256),
        Err(Rejection::UnknownKid)
    ));
}
