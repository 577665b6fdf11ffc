//! JSON for untrusted input: like `serde_json::Value`, but a repeated object key is an error.
//!
//! serde_json keeps the last of two equal keys, so `{"sub":"alice","sub":"mallory"}` would be
//! read one way here and perhaps another way by the authorization server or a log pipeline.
//! RFC 8725 §3.11 and RFC 7515 §5.2 say to reject such input.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

const DUPLICATE: &str = "credbroker-duplicate-key";

pub(crate) enum JsonError {
    DuplicateKey,
    Invalid(String),
}

/// Parses JSON text, refusing duplicate keys at any depth.
pub(crate) fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(v)) => Ok(v),
        Err(e) if e.to_string().contains(DUPLICATE) => Err(JsonError::DuplicateKey),
        // serde_json's messages name a line and column, never echo the input.
        Err(e) => Err(JsonError::Invalid(e.to_string())),
    }
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(matches!(
            parse_strict(br#"{"a":1,"a":2}"#),
            Err(JsonError::DuplicateKey)
        ));
        assert!(matches!(
            parse_strict(br#"{"x":{"b":1,"b":1}}"#),
            Err(JsonError::DuplicateKey)
        ));
        assert!(matches!(
            parse_strict(br#"[{"c":1,"c":1}]"#),
            Err(JsonError::DuplicateKey)
        ));
        // Escapes that decode to the same key are the same key.
        assert!(matches!(
            parse_strict(br#"{"sub":1,"s\u0075b":2}"#),
            Err(JsonError::DuplicateKey)
        ));
    }

    #[test]
    fn ordinary_json_parses() {
        let v = parse_strict(br#"{"a":[1,2.5,"x",null,true],"b":{"c":-3}}"#).ok();
        assert_eq!(
            v,
            Some(serde_json::json!({"a":[1,2.5,"x",null,true],"b":{"c":-3}}))
        );
        assert!(matches!(parse_strict(b"{"), Err(JsonError::Invalid(_))));
        assert!(matches!(
            parse_strict(br#"{"a":1} x"#),
            Err(JsonError::Invalid(_))
        ));
    }
}
