//! The claims of a verified token (RFC 9068 §2.2), checked for presence, type and time.

use serde_json::{Map, Value};

use super::Rejection;

/// How deep an `act` chain may nest before the token is refused.
const MAX_ACT_DEPTH: usize = 8;
/// NumericDate values beyond this are not plausible times (2^53 seconds is far past year 9999).
const MAX_NUMERIC_DATE: f64 = 9_007_199_254_740_991.0;

/// What credbroker relies on from a validated access token. Holds no secret: the token itself
/// is never kept, only its fingerprint.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    pub issuer: String,
    pub subject: String,
    pub client_id: String,
    pub jti: String,
    pub audiences: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
    pub issued_at: i64,
    pub not_before: Option<i64>,
    pub scopes: Vec<String>,
    /// Subjects of the nested `act` claims (RFC 8693 §4.1), the current actor first.
    pub actors: Vec<String>,
    /// Every claim, for grant conditions.
    pub all: Map<String, Value>,
}

impl Claims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Looks up a claim by dotted path (`act.sub`) for conditions and templates.
    pub fn lookup(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let mut v = self.all.get(parts.next()?)?;
        for p in parts {
            v = v.get(p)?;
        }
        Some(v)
    }
}

/// Reads and checks the claims. `now` and `leeway` are in seconds.
pub(crate) fn check(
    payload: Map<String, Value>,
    now: i64,
    leeway: i64,
) -> Result<Claims, Rejection> {
    let issuer = string(&payload, "iss")?;
    let subject = string(&payload, "sub")?;
    let client_id = string(&payload, "client_id")?;
    let jti = string(&payload, "jti")?;
    let audiences = match payload.get("aud") {
        None => return Err(Rejection::MissingClaim("aud")),
        Some(Value::String(a)) if !a.is_empty() => vec![a.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(Rejection::InvalidClaim("aud"))?,
        Some(_) => return Err(Rejection::InvalidClaim("aud")),
    };
    let expires_at = date(&payload, "exp")?.ok_or(Rejection::MissingClaim("exp"))?;
    let issued_at = date(&payload, "iat")?.ok_or(Rejection::MissingClaim("iat"))?;
    let not_before = date(&payload, "nbf")?;
    let scopes = match payload.get("scope") {
        None => Vec::new(),
        Some(Value::String(s)) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(_) => return Err(Rejection::InvalidClaim("scope")),
    };
    let actors = actors(&payload)?;

    if now >= expires_at.saturating_add(leeway) {
        return Err(Rejection::Expired);
    }
    if not_before.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(Rejection::NotYetValid);
    }
    if issued_at > now.saturating_add(leeway) {
        return Err(Rejection::IssuedInFuture);
    }
    Ok(Claims {
        issuer,
        subject,
        client_id,
        jti,
        audiences,
        expires_at,
        issued_at,
        not_before,
        scopes,
        actors,
        all: payload,
    })
}

fn string(payload: &Map<String, Value>, name: &'static str) -> Result<String, Rejection> {
    match payload.get(name) {
        None => Err(Rejection::MissingClaim(name)),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(Rejection::InvalidClaim(name)),
    }
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, possibly fractional.
fn date(payload: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, Rejection> {
    match payload.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if (0.0..=MAX_NUMERIC_DATE).contains(&f) => Ok(Some(f.floor() as i64)),
            _ => Err(Rejection::InvalidClaim(name)),
        },
        Some(_) => Err(Rejection::InvalidClaim(name)),
    }
}

fn actors(payload: &Map<String, Value>) -> Result<Vec<String>, Rejection> {
    let mut out = Vec::new();
    let mut next = payload.get("act");
    while let Some(act) = next {
        let obj = act.as_object().ok_or(Rejection::InvalidClaim("act"))?;
        let sub = obj
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(Rejection::InvalidClaim("act"))?;
        out.push(sub.to_owned());
        if out.len() > MAX_ACT_DEPTH {
            return Err(Rejection::InvalidClaim("act"));
        }
        next = obj.get("act");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn base() -> Map<String, Value> {
        let v = json!({
            "iss": "https://as", "sub": "alice", "client_id": "agent", "jti": "j1",
            "aud": "https://mcp/pg", "exp": NOW + 60, "iat": NOW - 5,
            "scope": "a b  c",
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn with(key: &str, v: Value) -> Map<String, Value> {
        let mut m = base();
        m.insert(key.into(), v);
        m
    }

    fn without(key: &str) -> Map<String, Value> {
        let mut m = base();
        m.remove(key);
        m
    }

    fn code(m: Map<String, Value>) -> &'static str {
        match check(m, NOW, 30) {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn accepts_a_good_token_and_splits_scopes() {
        let c = check(base(), NOW, 30).ok();
        assert_eq!(
            c.as_ref().map(|c| c.scopes.clone()),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(
            c.map(|c| c.audiences),
            Some(vec!["https://mcp/pg".to_string()])
        );
    }

    #[test]
    fn required_claims() {
        for name in ["iss", "sub", "client_id", "jti", "aud", "exp", "iat"] {
            assert_eq!(code(without(name)), "missing_claim", "{name}");
            assert_eq!(code(with(name, json!(true))), "invalid_claim", "{name}");
        }
        assert_eq!(code(with("sub", json!(""))), "invalid_claim");
        assert_eq!(code(with("aud", json!([]))), "invalid_claim");
        assert_eq!(code(with("aud", json!(["x", 1]))), "invalid_claim");
        assert_eq!(code(with("exp", json!("1800000060"))), "invalid_claim");
        assert_eq!(code(with("exp", json!(-1))), "invalid_claim");
        assert_eq!(code(with("scope", json!(["a"]))), "invalid_claim");
    }

    #[test]
    fn time_rules_with_bounded_leeway() {
        assert_eq!(code(with("exp", json!(NOW - 31))), "expired");
        assert_eq!(code(with("exp", json!(NOW - 30))), "expired");
        assert_eq!(code(with("exp", json!(NOW - 29))), "ok");
        assert_eq!(code(with("exp", json!(NOW as f64 + 10.5))), "ok");
        assert_eq!(code(with("nbf", json!(NOW + 31))), "not_yet_valid");
        assert_eq!(code(with("nbf", json!(NOW + 30))), "ok");
        assert_eq!(code(with("iat", json!(NOW + 31))), "issued_in_future");
    }

    #[test]
    fn act_chain() {
        let c = check(
            with(
                "act",
                json!({"sub": "agent-7", "act": {"sub": "orchestrator"}}),
            ),
            NOW,
            0,
        );
        assert_eq!(
            c.map(|c| c.actors).ok(),
            Some(vec!["agent-7".into(), "orchestrator".into()])
        );
        assert_eq!(code(with("act", json!({"client": "x"}))), "invalid_claim");
        assert_eq!(code(with("act", json!("agent"))), "invalid_claim");
    }
}
