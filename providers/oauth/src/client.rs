//! Talking to one authorization server: its metadata (RFC 8414, else OIDC discovery), and form
//! POSTs to its endpoints with credbroker's client authentication.
//!
//! Every request body is built in a [`Zeroizing`] buffer and carries its secrets (the caller's
//! token, the actor token, a client secret or assertion) only there: they are never in a URL,
//! a log line or an error. The HTTP client never follows redirects, so neither the body nor the
//! Authorization header can be carried to another host.

use std::time::{Duration, SystemTime};

use base64::Engine;
use credbroker_provider_api::{ErrorKind, ProviderError, SecretValue};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::key::secs;
use crate::settings::{Method, Server};

/// The endpoints of one server, from its settings and metadata.
#[derive(Clone, Debug, Default)]
pub(crate) struct Endpoints {
    pub(crate) token: String,
    pub(crate) revocation: Option<String>,
    pub(crate) introspection: Option<String>,
    /// From the metadata, when it says (`None`: it did not).
    pub(crate) grant_types: Option<Vec<String>>,
    pub(crate) auth_methods: Option<Vec<String>>,
}

/// An answer from an endpoint: its status and its JSON body (`Null` when it was not JSON).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    pub(crate) retry_after: Option<Duration>,
}

impl Answer {
    pub(crate) fn error(&self) -> &str {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

pub(crate) struct Client {
    pub(crate) server: Server,
    http: reqwest::Client,
    endpoints: OnceCell<Endpoints>,
}

/// `application/x-www-form-urlencoded` of one value (RFC 6749 Appendix B).
fn form(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

fn strings(v: &Value, key: &str) -> Option<Vec<String>> {
    v.get(key)?.as_array().map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    })
}

impl Client {
    pub(crate) fn new(server: Server, timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("credbroker/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            server,
            http,
            endpoints: OnceCell::new(),
        })
    }

    /// The endpoints, from the metadata read once (a failed read is tried again next time).
    pub(crate) async fn endpoints(&self) -> Result<&Endpoints, ProviderError> {
        self.endpoints.get_or_try_init(|| self.discover()).await
    }

    /// Reads the metadata now (for `check-config --online`), bypassing the cache.
    pub(crate) async fn discover(&self) -> Result<Endpoints, ProviderError> {
        let s = &self.server;
        let meta = if s.discovery {
            self.metadata().await?
        } else {
            Value::Null
        };
        let pick = |explicit: &Option<String>, key: &str| {
            explicit
                .clone()
                .or_else(|| meta.get(key).and_then(Value::as_str).map(String::from))
        };
        let token = pick(&s.token_endpoint, "token_endpoint").ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Config,
                format!("{}: the metadata names no token_endpoint", s.issuer),
            )
        })?;
        let endpoints = Endpoints {
            token,
            revocation: pick(&s.revocation_endpoint, "revocation_endpoint"),
            introspection: pick(&s.introspection_endpoint, "introspection_endpoint"),
            grant_types: strings(&meta, "grant_types_supported"),
            auth_methods: strings(&meta, "token_endpoint_auth_methods_supported"),
        };
        for url in [
            Some(&endpoints.token),
            endpoints.revocation.as_ref(),
            endpoints.introspection.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if credbroker_provider_api::settings::check_endpoint(url).is_err() {
                return Err(ProviderError::new(
                    ErrorKind::Config,
                    format!(
                        "{}: the metadata names an endpoint that is not https: {url}",
                        s.issuer
                    ),
                ));
            }
        }
        Ok(endpoints)
    }

    /// RFC 8414 §3 (the well-known path after the host, before the issuer's path), then OIDC
    /// discovery. The document's `issuer` must be the configured one (RFC 8414 §3.3), or a
    /// document from elsewhere could point the token endpoint anywhere.
    async fn metadata(&self) -> Result<Value, ProviderError> {
        let issuer = &self.server.issuer;
        let parsed = url::Url::parse(issuer)
            .map_err(|_| ProviderError::new(ErrorKind::Config, "issuer is not a URL"))?;
        let origin = parsed.origin().ascii_serialization();
        let path = parsed.path().trim_end_matches('/');
        let urls = [
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{issuer}/.well-known/openid-configuration"),
        ];
        let mut last = String::new();
        for url in &urls {
            let resp = match self.http.get(url).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{url}: {}", transport(&e));
                    continue;
                }
            };
            let status = resp.status();
            if !status.is_success() {
                last = format!("{url}: HTTP {}", status.as_u16());
                continue;
            }
            let doc: Value = match resp.bytes().await {
                Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if doc
                .get("issuer")
                .and_then(Value::as_str)
                .map(|i| i.trim_end_matches('/'))
                != Some(issuer.as_str())
            {
                return Err(ProviderError::new(
                    ErrorKind::Config,
                    format!("{url}: the metadata's issuer is not {issuer}"),
                ));
            }
            return Ok(doc);
        }
        Err(ProviderError::new(
            ErrorKind::Unavailable,
            format!("authorization server metadata: {last}"),
        ))
    }

    /// POSTs `fields` to `url` with client authentication. `creates`: the call may issue a
    /// token, so a request that got no answer is [`ErrorKind::OutcomeUnknown`].
    pub(crate) async fn post(
        &self,
        url: &str,
        fields: &[(&str, &str)],
        creates: bool,
        now: SystemTime,
    ) -> Result<Answer, ProviderError> {
        let c = &self.server.client;
        let mut body = Zeroizing::new(String::new());
        let mut add = |k: &str, v: &str| {
            if !body.is_empty() {
                body.push('&');
            }
            body.push_str(k);
            body.push('=');
            body.push_str(&form(v));
        };
        for (k, v) in fields {
            add(k, v);
        }
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        match c.method {
            Method::Basic => {
                // RFC 6749 §2.3.1: both halves form-encoded before base64.
                let secret = c
                    .secret
                    .as_ref()
                    .map(SecretValue::expose)
                    .unwrap_or_default();
                let pair = Zeroizing::new(format!("{}:{}", form(&c.client_id), form(secret)));
                let encoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()),
                );
                let mut value =
                    reqwest::header::HeaderValue::from_str(&format!("Basic {}", *encoded))
                        .map_err(|_| {
                            ProviderError::new(ErrorKind::Config, "client_id cannot be sent")
                        })?;
                value.set_sensitive(true);
                req = req.header("authorization", value);
            }
            Method::Post => {
                add("client_id", &c.client_id);
                add(
                    "client_secret",
                    c.secret
                        .as_ref()
                        .map(SecretValue::expose)
                        .unwrap_or_default(),
                );
            }
            Method::PrivateKeyJwt => {
                let assertion = self.client_assertion(now)?;
                add("client_id", &c.client_id);
                add(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                );
                add("client_assertion", assertion.expose());
            }
        }
        let resp = req.body(body.to_string()).send().await.map_err(|e| {
            // A refused connection sent nothing; anything later may have been acted on.
            let kind = if creates && !e.is_connect() {
                ErrorKind::OutcomeUnknown
            } else {
                ErrorKind::Unavailable
            };
            ProviderError::new(kind, format!("{url}: {}", transport(&e)))
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match resp.bytes().await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
            Err(e) if creates => {
                return Err(ProviderError::new(
                    ErrorKind::OutcomeUnknown,
                    format!("{url}: the answer was cut off: {}", transport(&e)),
                ));
            }
            Err(_) => Value::Null,
        };
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }

    /// RFC 7523 §2.2 / §3: `iss` = `sub` = the client id, `aud` = the issuer (RFC 7523bis:
    /// the issuer identifier, never an endpoint a metadata document could move), a minute's
    /// life, a fresh `jti`.
    fn client_assertion(&self, now: SystemTime) -> Result<SecretValue, ProviderError> {
        let c = &self.server.client;
        let key = c.key.as_ref().ok_or_else(|| {
            ProviderError::new(ErrorKind::Config, "no private key for private_key_jwt")
        })?;
        let t = secs(now);
        let claims = json!({
            "iss": c.client_id, "sub": c.client_id, "aud": self.server.issuer,
            "iat": t, "exp": t + 60, "jti": jti(),
        });
        key.sign("JWT", &claims)
            .map_err(|e| ProviderError::new(ErrorKind::Config, format!("client assertion: {e}")))
    }
}

/// 128 random bits, hex.
pub(crate) fn jti() -> String {
    let mut b = [0u8; 16];
    // aws-lc's system RNG; failure to read it is not recoverable anyway.
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

/// A transport error, without its URL (which we print ourselves) or any body.
fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        let mut s = e.to_string();
        s.truncate(200);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ClientAuth;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-connection-at-a-time HTTP server answering every request with `status` and
    /// `body`, which is made from the server's own URL.
    async fn serve(
        status: &'static str,
        body: impl FnOnce(&str) -> String,
        extra: &'static str,
    ) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let body = body(&url);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 8192];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            }
        });
        url
    }

    fn client(issuer: &str, token_endpoint: Option<String>, discovery: bool) -> Client {
        let server = Server {
            issuer: issuer.to_string(),
            discovery,
            token_endpoint,
            revocation_endpoint: None,
            introspection_endpoint: None,
            client: ClientAuth {
                client_id: "cb".into(),
                method: Method::Basic,
                secret: Some(SecretValue::new("s3cret-value-for-tests")),
                key: None,
            },
            max_token_lifetime: Duration::from_secs(600),
        };
        Client::new(server, Duration::from_secs(2)).expect("a client")
    }

    #[tokio::test]
    async fn metadata_from_another_issuer_or_pointing_off_loopback_http_is_refused() {
        let url = serve(
            "200 OK",
            |_| json!({"issuer": "https://evil.example", "token_endpoint": "https://evil.example/token"}).to_string(),
            "",
        )
        .await;
        let e = client(&url, None, true)
            .discover()
            .await
            .expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("the metadata's issuer is not"), "{e}");
        // The right issuer, but a plain-http token endpoint off loopback.
        let url = serve(
            "200 OK",
            |me| json!({"issuer": me, "token_endpoint": "http://evil.example/token"}).to_string(),
            "",
        )
        .await;
        let e = client(&url, None, true)
            .discover()
            .await
            .expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("not https"), "{e}");
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_the_secret_never_shows() {
        let url = serve(
            "307 Temporary Redirect",
            |_| String::new(),
            "location: http://127.0.0.1:9/steal\r\n",
        )
        .await;
        let c = client(&url, Some(format!("{url}/token")), false);
        let a = c
            .post(
                &format!("{url}/token"),
                &[("grant_type", "client_credentials")],
                true,
                SystemTime::now(),
            )
            .await
            .expect("an answer");
        assert_eq!(
            a.status.as_u16(),
            307,
            "the redirect is returned, not followed"
        );
        let e = crate::answer::refusal("client credentials", &a, &[]);
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(!e.message.contains("s3cret"), "{e}");
    }

    #[tokio::test]
    async fn no_answer_after_sending_is_an_unknown_outcome_and_a_refused_connection_is_not() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s); // read nothing, answer nothing
            }
        });
        let c = client(&url, Some(format!("{url}/token")), false);
        let e = c
            .post(&format!("{url}/token"), &[], true, SystemTime::now())
            .await
            .err()
            .expect("times out");
        assert_eq!(e.kind, ErrorKind::OutcomeUnknown, "{e}");
        let e = c
            .post(&format!("{url}/token"), &[], false, SystemTime::now())
            .await
            .err()
            .expect("times out");
        assert_eq!(
            e.kind,
            ErrorKind::Unavailable,
            "a call that creates nothing: {e}"
        );
        let closed = "http://127.0.0.1:9";
        let c = client(closed, Some(format!("{closed}/token")), false);
        let e = c
            .post(&format!("{closed}/token"), &[], true, SystemTime::now())
            .await
            .err()
            .expect("refused");
        assert_eq!(e.kind, ErrorKind::Unavailable, "nothing was sent: {e}");
    }
}
