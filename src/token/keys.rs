//! An issuer's verification keys, from its JWKS.
//!
//! Keys are checked when the set is loaded (type, curve, size, intended use) so that the request
//! path only has to pick one. A key that fails a check is skipped and reported; the rest of the
//! set is still used.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::Value;

use super::alg::{AlgExt as _, KeyFamily};
use super::{Alg, Rejection};

/// Keys smaller than this are refused (NIST SP 800-131A; aws-lc refuses them too).
const MIN_RSA_BITS: usize = 2048;
/// A JWKS larger than this is refused rather than parsed.
pub(crate) const MAX_JWKS_BYTES: usize = 256 * 1024;

pub(crate) struct VerifyKey {
    kid: Option<String>,
    family: KeyFamily,
    /// The JWK's own `alg`, when it names one: then only that alg may use the key.
    alg: Option<Alg>,
    key: DecodingKey,
}

impl VerifyKey {
    fn fits(&self, alg: Alg) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }

    /// Verifies `signature` (base64url) over `message`.
    pub(crate) fn verify(&self, alg: Alg, message: &[u8], signature: &str) -> bool {
        self.fits(alg)
            && jsonwebtoken::crypto::verify(signature, message, &self.key, alg.jwt())
                .unwrap_or(false)
    }
}

/// A loaded JWKS.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
    by_kid: HashMap<String, Vec<usize>>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// JWK members that only private asymmetric keys have (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
/// A symmetric key's `k` is not here: `oct` keys are skipped as unusable (HMAC is refused).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

impl KeySet {
    /// Parses a JWKS document. Returns the usable keys and a note for each key skipped.
    /// Fails only when the document itself is unusable or holds no usable key.
    /// Checks a static `jwks_file` as start-up would: readable, a key set, public keys only,
    /// at least one usable for `allowed`. The number of usable keys.
    pub fn check_file(path: &std::path::Path, allowed: &[Alg]) -> Result<usize, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&bytes, allowed).map(|(set, _)| set.len())
    }

    pub(crate) fn parse(bytes: &[u8], allowed: &[Alg]) -> Result<(Self, Vec<String>), String> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("JWKS has no \"keys\" array")?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let label = entry
                .get("kid")
                .and_then(Value::as_str)
                .map_or_else(|| format!("key #{i}"), |k| format!("key {k:?}"));
            // A verification key set holding a private key means the signing key has been
            // handed around: refuse the set outright rather than skip the entry, so nobody
            // runs on a key that anyone who read the file can sign with.
            if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| entry.get(**m).is_some()) {
                return Err(format!(
                    "JWKS {label} holds private key material (member {m:?}): a key set for \
                     verifying tokens must hold public keys only, and whoever read this one can \
                     sign tokens"
                ));
            }
            match serde_json::from_value::<Jwk>(entry.clone())
                .map_err(|e| e.to_string())
                .and_then(|jwk| load_key(&jwk, allowed))
            {
                Ok(key) => set.push(key),
                Err(why) => skipped.push(format!("{label} skipped: {why}")),
            }
        }
        if set.keys.is_empty() {
            let why = if skipped.is_empty() {
                "it is empty".to_string()
            } else {
                skipped.join("; ")
            };
            return Err(format!("JWKS holds no usable key: {why}"));
        }
        Ok((set, skipped))
    }

    fn push(&mut self, key: VerifyKey) {
        if let Some(kid) = &key.kid {
            self.by_kid
                .entry(kid.clone())
                .or_default()
                .push(self.keys.len());
        }
        self.keys.push(key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token's `kid` and `alg`. Without a `kid`, the key must be the only one
    /// that fits the alg: guessing among several would make every key a candidate.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Alg) -> Result<&VerifyKey, Rejection> {
        match kid {
            Some(kid) => {
                let idx = self.by_kid.get(kid).ok_or(Rejection::UnknownKid)?;
                idx.iter()
                    .map(|&i| &self.keys[i])
                    .find(|k| k.fits(alg))
                    .ok_or(Rejection::KeyAlgMismatch)
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Ok(k),
                    _ => Err(Rejection::UnknownKid),
                }
            }
        }
    }

    /// Whether a key with this kid still fits `alg`: used to drop cached validations whose key
    /// was removed from the issuer's JWKS.
    pub(crate) fn still_has(&self, kid: Option<&str>, alg: Alg) -> bool {
        self.find(kid, alg).is_ok()
    }
}

fn load_key(jwk: &Jwk, allowed: &[Alg]) -> Result<VerifyKey, String> {
    if let Some(u) = &jwk.use_
        && u != "sig"
    {
        return Err(format!("use is {u:?}, not \"sig\""));
    }
    if let Some(ops) = &jwk.key_ops
        && !ops.iter().any(|o| o == "verify")
    {
        return Err("key_ops does not include \"verify\"".into());
    }
    let alg = match &jwk.alg {
        None => None,
        Some(name) => {
            let a = Alg::from_config(name)?;
            if !allowed.contains(&a) {
                return Err(format!("alg {name} is not allowed for this issuer"));
            }
            Some(a)
        }
    };
    let (family, key) = match jwk.kty.as_str() {
        "RSA" => {
            let (n, e) = (required(&jwk.n, "n")?, required(&jwk.e, "e")?);
            let n_bytes = decode(n, "n")?;
            let bits = significant_bits(&n_bytes);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus is {bits} bits; at least {MIN_RSA_BITS} required"
                ));
            }
            let e_bytes = decode(e, "e")?;
            if e_bytes.len() > 4 || e_bytes.last().is_none_or(|b| b & 1 == 0) {
                return Err("RSA exponent must be odd and at most 32 bits".into());
            }
            let key = DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?;
            (KeyFamily::Rsa, key)
        }
        "EC" => {
            let (family, len) = match jwk.crv.as_deref() {
                Some("P-256") => (KeyFamily::EcP256, 32),
                Some("P-384") => (KeyFamily::EcP384, 48),
                other => return Err(format!("EC curve {other:?} is not supported")),
            };
            let (x, y) = (required(&jwk.x, "x")?, required(&jwk.y, "y")?);
            if decode(x, "x")?.len() != len || decode(y, "y")?.len() != len {
                return Err(format!("EC coordinates must be {len} bytes"));
            }
            let key = DecodingKey::from_ec_components(x, y).map_err(|e| e.to_string())?;
            (family, key)
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(format!("OKP curve {:?} is not supported", jwk.crv));
            }
            let x = required(&jwk.x, "x")?;
            if decode(x, "x")?.len() != 32 {
                return Err("Ed25519 public key must be 32 bytes".into());
            }
            let key = DecodingKey::from_ed_components(x).map_err(|e| e.to_string())?;
            (KeyFamily::Ed25519, key)
        }
        // Symmetric ("oct") keys are refused: a published HMAC key verifies forgeries.
        other => return Err(format!("kty {other:?} is not supported")),
    };
    if let Some(a) = alg {
        if a.family() != family {
            return Err(format!("alg {a} does not fit kty {}", jwk.kty));
        }
    } else if !allowed.iter().any(|a| a.family() == family) {
        return Err("no allowed algorithm uses this kind of key".into());
    }
    Ok(VerifyKey {
        kid: jwk.kid.clone(),
        family,
        alg,
        key,
    })
}

fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, String> {
    v.as_deref().ok_or_else(|| format!("missing {name}"))
}

fn decode(v: &str, name: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| format!("{name} is not base64url"))
}

fn significant_bits(bytes: &[u8]) -> usize {
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    match bytes.get(skip) {
        None => 0,
        Some(first) => (bytes.len() - skip - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
