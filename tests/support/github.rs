//! The stand-in for GitHub's REST API (`tests/support/github/server.mjs`): it verifies App JWTs,
//! validates request bodies against GitHub's OpenAPI description, answers with GitHub's shapes
//! and status codes, and records what it received, so tests assert on what credbroker sent.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use super::repo;

pub const APP_ID: u64 = 4242;
pub const INSTALLATION: u64 = 77;
/// An installation on which the stand-in grants more than asked (as a misbehaving server might).
pub const GREEDY_INSTALLATION: u64 = 78;

pub struct FakeGithub {
    pub url: String,
    /// The App's private key, as an operator downloads it (PKCS#1 PEM).
    pub key: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl FakeGithub {
    /// Installation 77 on `acme` (notes, docs, secrets; issues write, contents read, metadata
    /// read), and installation 78 on `greedy`, which grants contents: write on top.
    pub fn start() -> Self {
        let dir = repo().join("tests/support/github");
        super::npm::ensure(&dir, "@octokit/openapi");
        let tmp =
            tempfile::tempdir().expect("a temp dir for the github stand-in should be created");
        let key = tmp.path().join("app.pem");
        let config = json!({
            "app_id": APP_ID,
            "private_key_out": key,
            "installations": [
                {"id": INSTALLATION, "account": "acme", "repositories": ["notes", "docs", "secrets"],
                 "permissions": {"issues": "write", "contents": "read", "metadata": "read"}},
                {"id": GREEDY_INSTALLATION, "account": "greedy", "repositories": ["notes"],
                 "permissions": {"issues": "write", "contents": "write", "metadata": "read"},
                 "overgrant": {"contents": "write"}},
            ],
        });
        let path = tmp.path().join("github.json");
        std::fs::write(&path, config.to_string())
            .expect("the github stand-in config should be written");
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting node: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading READY: {e}"));
        let port = line
            .strip_prefix("READY ")
            .map(str::trim)
            .unwrap_or_else(|| panic!("the GitHub stand-in did not start: {line:?}"));
        Self {
            url: format!("http://127.0.0.1:{port}"),
            key,
            child,
            _dir: tmp,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("the http client for the github stand-in should build"),
        }
    }

    async fn control(&self, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/_fake/{path}", self.url);
        let req = match body {
            Some(b) => self.http.post(url).body(b.to_string()),
            None => self.http.get(url),
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("fake github: {e}"));
        resp.json().await.unwrap_or(Value::Null)
    }

    /// Every request received: `method`, `path`, `body`, `jwt` ("ok" or GitHub's 401 message),
    /// `revoked` (a token fingerprint) for a successful revocation.
    pub async fn log(&self) -> Vec<Value> {
        self.control("log", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn requests(&self, method: &str, path_suffix: &str) -> Vec<Value> {
        self.log()
            .await
            .into_iter()
            .filter(|r| {
                r["method"] == method
                    && r["path"].as_str().is_some_and(|p| p.ends_with(path_suffix))
            })
            .collect()
    }

    /// Issued tokens: fingerprint, installation, expires, revoked, permissions, repositories.
    pub async fn tokens(&self) -> Vec<Value> {
        self.control("tokens", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The next `times` requests under `path` are rate limited.
    pub async fn rate_limit(&self, rule: Value) {
        self.control("ratelimit", Some(rule)).await;
    }

    /// Every token issued so far expires now.
    pub async fn expire_all(&self) {
        self.control("expire", Some(json!({}))).await;
    }

    /// A raw request, for checking the stand-in itself.
    pub async fn raw(&self, method: reqwest::Method, path: &str, auth: &str) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("user-agent", "test")
            .header("authorization", auth)
            .body("{}")
            .send()
            .await
            .expect("a raw request to the github stand-in should get a response");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
