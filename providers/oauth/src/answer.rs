//! Reading a token endpoint's answer: a token (checked against what was asked), or an OAuth
//! error mapped to what the broker must do.
//!
//! | answer | kind | why |
//! |---|---|---|
//! | 400 `invalid_grant`, `invalid_scope`, `unauthorized_client`, `access_denied` | `Denied` | the AS's policy does not allow this exchange for this client or subject |
//! | 400 `invalid_target` | `Config` | the AS does not know the grant's audience or resource |
//! | 400 `invalid_request`, `unsupported_grant_type`, other | `Config` | the AS does not take what the grant sends |
//! | 401 / `invalid_client` | `Unauthorized` | credbroker's own client authentication failed |
//! | 429 | `RateLimited` | with `Retry-After` |
//! | 500, 503, other 5xx | `Unavailable` | the AS failed before issuing |
//! | 502, 504, no answer, a cut-off answer | `OutcomeUnknown` | a proxy timed out or the answer was lost: something may have been issued |
//!
//! `error_description` is the AS's text. It is cut to 200 characters of printable ASCII and
//! anything credbroker sent as a secret is blanked out of it, should an AS echo a token back.

use std::time::{Duration, SystemTime};

use credbroker_provider_api::{ErrorKind, ProviderError, SecretValue};
use reqwest::StatusCode;
use serde_json::Value;

use crate::client::Answer;

/// The error for a non-success answer. `what` names the call; `sent` are the secrets sent.
pub(crate) fn refusal(what: &str, a: &Answer, sent: &[&str]) -> ProviderError {
    let code = a.error();
    let description = a
        .body
        .get("error_description")
        .and_then(Value::as_str)
        .map(|d| scrub(d, sent))
        .unwrap_or_default();
    let shown = match (code.is_empty(), description.is_empty()) {
        (true, _) => format!("{what}: HTTP {}", a.status.as_u16()),
        (false, true) => format!("{what}: {code} (HTTP {})", a.status.as_u16()),
        (false, false) => format!("{what}: {code}: {description} (HTTP {})", a.status.as_u16()),
    };
    let kind = match (a.status, code) {
        (_, "invalid_client") | (StatusCode::UNAUTHORIZED, _) => ErrorKind::Unauthorized,
        (StatusCode::TOO_MANY_REQUESTS, _) => ErrorKind::RateLimited,
        (StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT, _) => ErrorKind::OutcomeUnknown,
        (s, _) if s.is_server_error() => ErrorKind::Unavailable,
        (_, "temporarily_unavailable") => ErrorKind::Unavailable,
        (_, "invalid_grant" | "invalid_scope" | "unauthorized_client" | "access_denied") => {
            ErrorKind::Denied
        }
        _ => ErrorKind::Config,
    };
    let e = ProviderError::new(kind, shown);
    match a.retry_after {
        Some(after) if kind.retryable() => e.with_retry_after(after),
        _ => e,
    }
}

/// At most 200 printable ASCII characters, with every secret sent blanked out.
pub(crate) fn scrub(text: &str, sent: &[&str]) -> String {
    let mut s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    for secret in sent.iter().filter(|s| s.len() >= 8) {
        s = s.replace(secret, "[redacted]");
    }
    // A JWT-shaped run is blanked too: an AS may quote a token credbroker did not send.
    let words: Vec<String> = s
        .split(' ')
        .map(|w| {
            if w.len() > 40 && w.matches('.').count() == 2 {
                "[redacted]".to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    let mut s = words.join(" ");
    if s.len() > 200 {
        s.truncate(200);
        s.push('…');
    }
    s
}

/// A token from a successful answer, as checked against the request.
pub(crate) struct Token {
    pub(crate) value: SecretValue,
    pub(crate) token_type: String,
    pub(crate) expires_at: SystemTime,
    /// What the AS says it granted (the request's scope when it says nothing, RFC 6749 §5.1).
    pub(crate) scope: Vec<String>,
}

/// What an answer must be.
pub(crate) struct Expect<'a> {
    pub(crate) what: &'a str,
    /// `issued_token_type` the answer must carry (when it carries one, or always for ID-JAG).
    pub(crate) issued_token_type: Option<&'a str>,
    pub(crate) requires_issued_type: bool,
    pub(crate) scope: &'a [String],
    /// What the token is for (the grant's resource and audience). A JWT whose `aud` names
    /// anything else is refused: a token the MCP server itself, or another API, would accept is
    /// the passthrough the MCP specification forbids. Empty: not checked (an ID-JAG).
    pub(crate) audiences: &'a [&'a str],
    pub(crate) max_lifetime: Duration,
    pub(crate) now: SystemTime,
}

/// The `aud` of a JWT-shaped token, read without verifying it (the AS that issued it signs
/// it for the API, not for credbroker); `None` for an opaque token or one without `aud`.
fn jwt_audiences(token: &str) -> Option<Vec<String>> {
    if token.matches('.').count() != 2 {
        return None;
    }
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .ok()?
        .claims;
    match claims.get("aud")? {
        Value::String(a) => Some(vec![a.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
        ),
        _ => Some(Vec::new()),
    }
}

/// Why a token that was issued is not handed out (it is revoked, then refused as `Denied`).
pub(crate) struct Excess(pub(crate) String);

/// Reads the token out of a 200 answer. `Err(Ok(e))`: the answer is unusable and nothing
/// usable was issued; `Err(Err(excess, token))`: a token was issued but exceeds the request.
#[allow(clippy::result_large_err)]
pub(crate) fn token(
    a: &Answer,
    x: &Expect<'_>,
) -> Result<Token, Result<ProviderError, (Excess, Token)>> {
    let bad = |m: &str| {
        Err(Ok(ProviderError::new(
            ErrorKind::Config,
            format!("{}: {m}", x.what),
        )))
    };
    let Some(value) = a
        .body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
    else {
        return bad("the answer has no access_token");
    };
    let value = SecretValue::new(value);
    let token_type = a
        .body
        .get("token_type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let issued = a.body.get("issued_token_type").and_then(Value::as_str);
    if let Some(want) = x.issued_token_type {
        match issued {
            Some(t) if t == want => {}
            None if !x.requires_issued_type => {}
            Some(t) => return bad(&format!("issued_token_type is {t}, not {want}")),
            None => {
                return bad(&format!(
                    "the answer has no issued_token_type ({want} expected)"
                ));
            }
        }
    }
    let lifetime = match a.body.get("expires_in") {
        None | Some(Value::Null) => x.max_lifetime,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Duration::from_secs(n),
            _ => return bad("expires_in is not a positive integer"),
        },
    };
    let scope: Vec<String> = match a.body.get("scope").and_then(Value::as_str) {
        Some(s) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        None => x.scope.to_vec(),
    };
    let t = Token {
        value,
        token_type,
        expires_at: x.now + lifetime.min(Duration::from_secs(366 * 24 * 3600)),
        scope,
    };
    if !x.audiences.is_empty()
        && let Some(aud) = jwt_audiences(t.value.expose())
        && let Some(other) = aud.iter().find(|a| !x.audiences.contains(&a.as_str()))
    {
        return Err(Err((
            Excess(format!(
                "the token is for {other:?}, which was not asked for"
            )),
            t,
        )));
    }
    if let Some(extra) = t.scope.iter().find(|s| !x.scope.contains(s)) {
        return Err(Err((
            Excess(format!(
                "the authorization server granted scope {extra:?}, which was not asked for"
            )),
            t,
        )));
    }
    if lifetime > x.max_lifetime {
        return Err(Err((
            Excess(format!(
                "the token lives {}s, longer than max_token_lifetime ({}s): an unknown outcome could not be bounded",
                lifetime.as_secs(),
                x.max_lifetime.as_secs()
            )),
            t,
        )));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            body,
            retry_after: Some(Duration::from_secs(7)),
        }
    }

    #[test]
    fn oauth_errors_map_to_what_the_broker_must_do() {
        let cases = [
            (400, "invalid_grant", ErrorKind::Denied),
            (400, "invalid_scope", ErrorKind::Denied),
            (400, "unauthorized_client", ErrorKind::Denied),
            (400, "invalid_target", ErrorKind::Config),
            (400, "invalid_request", ErrorKind::Config),
            (400, "unsupported_grant_type", ErrorKind::Config),
            (401, "invalid_client", ErrorKind::Unauthorized),
            (400, "invalid_client", ErrorKind::Unauthorized),
            (429, "", ErrorKind::RateLimited),
            (500, "server_error", ErrorKind::Unavailable),
            (503, "temporarily_unavailable", ErrorKind::Unavailable),
            (502, "", ErrorKind::OutcomeUnknown),
            (504, "", ErrorKind::OutcomeUnknown),
        ];
        for (status, code, kind) in cases {
            let e = refusal(
                "exchange",
                &answer(status, serde_json::json!({"error": code})),
                &[],
            );
            assert_eq!(e.kind, kind, "{status} {code}");
            assert_eq!(e.retry_after.is_some(), kind.retryable(), "{status} {code}");
        }
    }

    #[test]
    fn descriptions_never_carry_what_was_sent_or_a_token() {
        let sent = "subject-token-value-0123456789";
        let jwt = format!("eyJhbGciOiJFUzI1NiJ9.{}.sig", "x".repeat(40));
        let a = answer(
            400,
            serde_json::json!({"error": "invalid_grant",
                "error_description": format!("bad {sent} and {jwt}\nnext")}),
        );
        let e = refusal("exchange", &a, &[sent]);
        assert!(
            !e.message.contains(sent) && !e.message.contains(&jwt),
            "{}",
            e.message
        );
        assert!(
            e.message
                .starts_with("exchange: invalid_grant: bad [redacted] and [redacted] (HTTP 400)")
        );
        let long = "y ".repeat(300);
        assert!(scrub(&long, &[]).len() <= 204);
    }

    #[test]
    fn answers_are_checked_against_the_request() {
        let scope = vec!["a".to_string(), "b".to_string()];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let x = Expect {
            what: "exchange",
            issued_token_type: Some("urn:ietf:params:oauth:token-type:access_token"),
            requires_issued_type: false,
            scope: &scope,
            audiences: &["https://api.example/"],
            max_lifetime: Duration::from_secs(600),
            now,
        };
        let ok = token(
            &answer(
                200,
                serde_json::json!({"access_token": "t", "expires_in": 60, "scope": "a"}),
            ),
            &x,
        );
        let t = ok.ok().expect("a narrower answer is fine");
        assert_eq!(
            (t.scope, t.expires_at),
            (vec!["a".to_string()], now + Duration::from_secs(60))
        );
        let wide = token(
            &answer(
                200,
                serde_json::json!({"access_token": "t", "scope": "a c"}),
            ),
            &x,
        );
        assert!(matches!(wide, Err(Err((Excess(m), _))) if m.contains("\"c\"")));
        for (aud, ok) in [
            (json!("https://api.example/"), true),
            (
                json!(["https://api.example/", "https://mcp.example/"]),
                false,
            ),
            (json!("https://mcp.example/"), false),
        ] {
            let jwt = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({"aud": aud, "sub": "carol"}),
                &jsonwebtoken::EncodingKey::from_secret(b"test"),
            )
            .unwrap_or_default();
            let got = token(&answer(200, json!({"access_token": jwt, "scope": "a"})), &x);
            match (got, ok) {
                (Ok(_), true) => {}
                (Err(Err((Excess(m), _))), false) => assert!(m.contains("mcp.example"), "{m}"),
                (_, ok) => panic!("aud {aud}: expected ok = {ok}"),
            }
        }
        let long = token(
            &answer(
                200,
                serde_json::json!({"access_token": "t", "expires_in": 601}),
            ),
            &x,
        );
        assert!(matches!(long, Err(Err((Excess(m), _))) if m.contains("max_token_lifetime")));
        for body in [
            serde_json::json!({}),
            serde_json::json!({"access_token": "t", "expires_in": -1}),
            serde_json::json!({"access_token": "t", "issued_token_type": "urn:x"}),
        ] {
            assert!(
                matches!(token(&answer(200, body), &x), Err(Ok(e)) if e.kind == ErrorKind::Config)
            );
        }
    }
}
