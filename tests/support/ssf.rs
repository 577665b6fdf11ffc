//! A Shared Signals transmitter for the tests: Security Event Tokens signed with its own keys
//! (the `keys-rotated` fixtures, which the test AS does not use), pushed to the daemon (RFC 8935)
//! or queued for it to poll (RFC 8936), recording the acknowledgements and errors it is sent.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};

use super::forge::{Signer, fixtures};

pub const ISSUER: &str = "https://ssf.example.test";
pub const AUDIENCE: &str = "https://credbroker.example.test/ssf";
pub const PUSH_BEARER: &str = "push-bearer-7f3c9a";
pub const POLL_BEARER: &str = "poll-bearer-2b81d4";
pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

#[derive(Default)]
struct Queue {
    /// jti → SET, until acknowledged.
    pending: Map<String, Value>,
    acks: Vec<String>,
    errs: Map<String, Value>,
    polls: usize,
    bad_bearer: usize,
}

pub struct Transmitter {
    pub signer: Signer,
    /// The poll endpoint.
    pub poll_url: String,
    queue: Arc<Mutex<Queue>>,
    task: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

/// The public half of a fixture key set, as a JWKS file.
pub fn write_public_jwks(set: &str, path: &Path) {
    let text = std::fs::read_to_string(fixtures().join(set).join("keys.json"))
        .expect("the fixture key set should be readable");
    let mut v: Value = serde_json::from_str(&text).expect("the fixture key set is JSON");
    for k in v["keys"].as_array_mut().into_iter().flatten() {
        if let Some(m) = k.as_object_mut() {
            for p in ["d", "p", "q", "dp", "dq", "qi"] {
                m.remove(p);
            }
        }
    }
    std::fs::write(path, v.to_string()).expect("the JWKS file should be written");
}

fn now() -> i64 {
    super::now()
}

impl Transmitter {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("the transmitter should bind loopback");
        let poll_url = format!("http://{}/poll", listener.local_addr().expect("an address"));
        let queue: Arc<Mutex<Queue>> = Arc::default();
        let q = Arc::clone(&queue);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let q = Arc::clone(&q);
                        async move { Ok::<_, std::convert::Infallible>(poll(req, &q).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            signer: Signer::fixture("keys-rotated", "es256-2"),
            poll_url,
            queue,
            task,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("the http client should build"),
        }
    }

    /// A `session-revoked` SET's claims for `sub` at the token issuer `iss`.
    pub fn session_revoked(&self, iss: &str, sub: &str, jti: &str) -> Value {
        json!({
            "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "jti": jti,
            "sub_id": {"format": "iss_sub", "iss": iss, "sub": sub},
            "events": {SESSION_REVOKED: {"event_timestamp": now()}},
        })
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(&self.signer, claims)
    }

    pub fn sign_with(&self, signer: &Signer, claims: &Value) -> String {
        let header = json!({"alg": signer.alg_name(), "typ": "secevent+jwt", "kid": signer.kid});
        signer.sign(&header, claims)
    }

    /// Pushes `set` to `url` (RFC 8935): the status and the JSON error body, if any.
    pub async fn push(
        &self,
        url: &str,
        bearer: Option<&str>,
        ctype: &str,
        set: &str,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .post(url)
            .header("content-type", ctype)
            .header("accept", "application/json")
            .body(set.to_owned());
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        let resp = r.send().await.expect("the receiver should answer");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Queues a SET for the next poll.
    pub fn queue(&self, jti: &str, set: String) {
        self.queue
            .lock()
            .expect("the queue lock")
            .pending
            .insert(jti.into(), set.into());
    }

    pub fn acks(&self) -> Vec<String> {
        self.queue.lock().expect("the queue lock").acks.clone()
    }

    pub fn errs(&self) -> Map<String, Value> {
        self.queue.lock().expect("the queue lock").errs.clone()
    }

    pub fn polls(&self) -> usize {
        self.queue.lock().expect("the queue lock").polls
    }
}

async fn poll(req: Request<Incoming>, q: &Mutex<Queue>) -> Response<String> {
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {POLL_BEARER}"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut q = q.lock().expect("the queue lock");
    if !authorized {
        q.bad_bearer += 1;
        let mut r = Response::new(String::new());
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    q.polls += 1;
    let asked: Value = serde_json::from_slice(&body).unwrap_or_default();
    for a in asked["ack"].as_array().into_iter().flatten() {
        if let Some(j) = a.as_str() {
            q.pending.remove(j);
            q.acks.push(j.to_owned());
        }
    }
    for (j, e) in asked["setErrs"].as_object().into_iter().flatten() {
        q.pending.remove(j);
        q.errs.insert(j.clone(), e.clone());
    }
    let answer = json!({"sets": q.pending.clone(), "moreAvailable": false});
    let mut r = Response::new(answer.to_string());
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

impl Drop for Transmitter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
