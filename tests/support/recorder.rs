//! A recording HTTP/1.1 proxy for AWS's query APIs (STS, IAM), between the daemon and moto.
//!
//! moto accepts AssumeRole's SourceIdentity, Tags and Policy but neither echoes nor enforces
//! them, so the tests assert on the request as it was sent: every request's form parameters are
//! recorded here on the way through. It can also answer in moto's place with an AWS error
//! (Throttling, AccessDenied, LimitExceeded) a given number of times, which moto cannot do.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub struct Recorded {
    seq: u64,
    pub path: String,
    pub form: Vec<(String, String)>,
    /// What the client was answered; 0 while the answer is still pending.
    pub status: u16,
    pub injected: bool,
}

impl Recorded {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn action(&self) -> &str {
        self.param("Action").unwrap_or_default()
    }

    /// `Tags.member.N.Key/Value` pairs, in order.
    pub fn tags(&self) -> Vec<(String, String)> {
        (1..)
            .map_while(|n| {
                let key = self.param(&format!("Tags.member.{n}.Key"))?;
                let value = self.param(&format!("Tags.member.{n}.Value"))?;
                Some((key.to_string(), value.to_string()))
            })
            .collect()
    }

    /// A list parameter: `NAME.member.N`.
    pub fn members(&self, name: &str) -> Vec<String> {
        (1..)
            .map_while(|n| self.param(&format!("{name}.member.{n}")).map(str::to_owned))
            .collect()
    }
}

struct Fault {
    action: String,
    status: u16,
    code: String,
    message: String,
    times: usize,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    next_seq: u64,
    faults: Vec<Fault>,
    /// (action, delay, times): forward, then hold the answer back.
    delays: Vec<(String, std::time::Duration, usize)>,
}

pub struct Recorder {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Listens on a free loopback port and forwards to `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("recorder bind: {e}"));
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .expect("the recorder listener should have a local address")
        );
        let state = Arc::new(Mutex::new(State::default()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("the recorder's http client should build");
        let upstream = upstream.trim_end_matches('/').to_string();
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, http, upstream) = (Arc::clone(&shared), http.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &state, &http, &upstream).await;
                });
            }
        });
        Self { url, state, task }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    /// The requests for one action (`AssumeRole`, `PutRolePolicy`…).
    pub fn calls(&self, action: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.action() == action)
            .collect()
    }

    /// Answers the next `times` requests for `action` with an AWS error instead of forwarding.
    pub fn fail(&self, action: &str, status: u16, code: &str, message: &str, times: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.faults.push(Fault {
                action: action.into(),
                status,
                code: code.into(),
                message: message.into(),
                times,
            });
        }
    }

    /// Forwards the next `times` requests for `action` but holds moto's answer back for `delay`:
    /// the request took effect and the client does not know it.
    pub fn delay(&self, action: &str, delay: std::time::Duration, times: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.delays.push((action.into(), delay, times));
        }
    }

    pub fn clear(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.requests.clear();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request per connection (answered with `Connection: close`), which every HTTP client
/// handles and keeps this proxy simple.
async fn serve(
    stream: TcpStream,
    state: &Mutex<State>,
    http: &reqwest::Client,
    upstream: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let mut request_line = head.first().map(|l| l.split(' ')).into_iter().flatten();
    let method = request_line.next().unwrap_or("GET").to_string();
    let path = request_line.next().unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = head
        .iter()
        .skip(1)
        .filter_map(|h| h.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let action = form
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    // Recorded on arrival (a held-back answer must not hide that the request was made).
    let seq = state.lock().map_or(0, |mut s| {
        s.next_seq += 1;
        let seq = s.next_seq;
        s.requests.push(Recorded {
            seq,
            path: path.clone(),
            form,
            status: 0,
            injected: false,
        });
        seq
    });
    let fault = state.lock().ok().and_then(|mut s| {
        let f = s
            .faults
            .iter_mut()
            .find(|f| f.action == action && f.times > 0)?;
        f.times -= 1;
        Some((f.status, error_xml(&f.code, &f.message)))
    });
    let delay = state.lock().ok().and_then(|mut s| {
        let d = s
            .delays
            .iter_mut()
            .find(|(a, _, times)| *a == action && *times > 0)?;
        d.2 -= 1;
        Some(d.1)
    });
    let (status, content_type, answer, injected) = match fault {
        Some((status, xml)) => (status, "text/xml".to_string(), xml.into_bytes(), true),
        None => {
            let method =
                reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
            let mut req = http.request(method, format!("{upstream}{path}"));
            for (k, v) in headers
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "host" | "content-length" | "connection"))
            {
                req = req.header(k.as_str(), v.as_str());
            }
            match req.body(body).send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let ct = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("text/xml")
                        .to_string();
                    let bytes = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                    (status, ct, bytes, false)
                }
                Err(e) => (502, "text/plain".into(), e.to_string().into_bytes(), false),
            }
        }
    };
    if let Ok(mut s) = state.lock()
        && let Some(r) = s.requests.iter_mut().find(|r| r.seq == seq)
    {
        r.status = status;
        r.injected = injected;
    }
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&answer).await?;
    stream.shutdown().await
}

/// An AWS query-protocol error document, as STS and IAM send them.
fn error_xml(code: &str, message: &str) -> String {
    format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
         <Code>{code}</Code><Message>{message}</Message></Error>\
         <RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
    )
}
