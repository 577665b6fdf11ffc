//! The real authorization server: npm `oidc-provider`, started per test on a free loopback
//! port, signing with the fixture keys so tests can also forge tokens its JWKS will verify.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{free_port, repo};

pub const POSTGRES: &str = "https://mcp.example.test/postgres";
pub const S3: &str = "https://mcp.example.test/s3";
pub const GITHUB: &str = "https://mcp.example.test/github";
pub const PG_READ: &str = "mcp.tool:postgres.read";
pub const PG_WRITE: &str = "mcp.tool:postgres.write";

/// One registered client: (id, secret, allowed scopes, extra claims).
pub struct ClientSpec {
    pub id: &'static str,
    pub scope: &'static str,
    pub extra: Value,
    /// Users this client may get delegated tokens for (RFC 8693 token exchange).
    pub may_act_for: Vec<&'static str>,
}

pub fn default_clients() -> Vec<ClientSpec> {
    vec![
        ClientSpec {
            id: "agent-1",
            scope: "mcp.tool:postgres.read mcp.tool:postgres.write mcp.tool:s3.read mcp.tool:github.create_issue",
            extra: json!({}),
            may_act_for: vec![],
        },
        ClientSpec {
            id: "agent-noscope",
            scope: "mcp.tool:s3.read",
            extra: json!({}),
            may_act_for: vec![],
        },
        ClientSpec {
            id: "agent-unowned",
            scope: "mcp.tool:postgres.read",
            extra: json!({}),
            may_act_for: vec![],
        },
        ClientSpec {
            id: "agent-delegated",
            scope: "mcp.tool:postgres.read",
            extra: json!({"act": {"sub": "agent-delegated"}}),
            may_act_for: vec![],
        },
        ClientSpec {
            id: "agent-7",
            scope: "mcp.tool:postgres.read mcp.tool:s3.read",
            extra: json!({}),
            may_act_for: vec!["carol@example.com"],
        },
    ]
}

pub struct Options {
    pub clients: Vec<ClientSpec>,
    /// "both", "oauth" or "oidc": which discovery documents are served.
    pub metadata: &'static str,
    /// Fixture key sets (`keys`, `keys-rotated`); the first one signs.
    pub key_sets: Vec<&'static str>,
    pub port: Option<u16>,
    /// Access token lifetime in seconds, for every resource.
    pub ttl: u64,
    /// Resources (audiences) beyond the three fixed ones, e.g. a gateway on a loopback port.
    pub resources: Vec<String>,
    /// Resources whose access tokens are opaque (stored by the AS, so it introspects and
    /// revokes them: RFC 7662, RFC 7009).
    pub opaque_resources: Vec<String>,
    /// The authorization-code flow (off when `None`).
    pub authorization_code: Option<AuthorizationCode>,
    /// Raw client entries appended to the config's `clients` (see tests/support/oidc/README.md):
    /// `token_endpoint_auth_method` (`private_key_jwt` with `jwks`, `client_secret_post`),
    /// `grant_types`, `exchange: true`, `jwks` for actor tokens, ...
    pub extra_clients: Vec<Value>,
    /// Issuers whose ID-JAGs this server redeems (RFC 7523 JWT bearer grant); each one's
    /// `jwks_uri` is `<issuer>/jwks`.
    pub trusted_idps: Vec<String>,
    /// ID-JAG issuance: `{"<resource AS issuer>": {"<client_id here>": "<client_id there>"}}`
    /// (`Value::Null`: none).
    pub id_jag: Value,
    /// Resources with an explicit spec, e.g.
    /// `{"alg":"ES256","ttl":300,"scope":"crm.read crm.write crm.admin","format":"opaque"}`.
    pub resource_specs: Vec<(String, Value)>,
}

/// The authorization-code flow: PKCE, resource indicators and a headless login, in which
/// `user` logs in and consents by herself (see tests/support/oidc/README.md).
pub struct AuthorizationCode {
    pub user: &'static str,
    /// RFC 7591 dynamic client registration.
    pub registration: bool,
    /// Client ID Metadata Documents, fetched over https from loopback: the authorization
    /// server trusts the test CA (`tests/fixtures/tls/ca1.pem`) for them.
    pub client_id_metadata_documents: bool,
    /// Public clients registered beforehand.
    pub public_clients: Vec<PublicClient>,
}

impl Default for AuthorizationCode {
    fn default() -> Self {
        Self {
            user: "alice@example.com",
            registration: false,
            client_id_metadata_documents: false,
            public_clients: Vec::new(),
        }
    }
}

/// A public client (no secret, token_endpoint_auth_method none).
pub struct PublicClient {
    pub id: &'static str,
    pub redirect_uri: String,
    pub scope: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clients: default_clients(),
            metadata: "both",
            key_sets: vec!["keys"],
            port: None,
            ttl: 300,
            resources: Vec::new(),
            opaque_resources: Vec::new(),
            authorization_code: None,
            extra_clients: Vec::new(),
            trusted_idps: Vec::new(),
            id_jag: Value::Null,
            resource_specs: Vec::new(),
        }
    }
}

pub struct AuthServer {
    pub issuer: String,
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

fn oidc_dir() -> PathBuf {
    repo().join("tests/support/oidc")
}

fn ensure_installed() {
    super::npm::ensure(&oidc_dir(), "oidc-provider");
}

impl AuthServer {
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Self {
        ensure_installed();
        let port = opts.port.unwrap_or_else(free_port);
        let issuer = format!("http://127.0.0.1:{port}");
        // Signing keys: the first set listed signs; all are published.
        let mut all_keys = Vec::new();
        for set in &opts.key_sets {
            let v: Value = serde_json::from_str(
                &std::fs::read_to_string(repo().join("tests/fixtures").join(set).join("keys.json"))
                    .unwrap_or_default(),
            )
            .unwrap_or_default();
            all_keys.extend(v["keys"].as_array().cloned().unwrap_or_default());
        }
        let keys = json!({ "keys": all_keys });
        let clients = opts.clients;
        let ttl = opts.ttl;
        let metadata = opts.metadata;
        let dir = tempfile::tempdir().expect("a temp dir for the auth server should be created");
        // credbroker.*: the scopes of `credbroker mcp` over HTTP.
        let all = "mcp.tool:postgres.read mcp.tool:postgres.write mcp.tool:s3.read mcp.tool:github.create_issue credbroker.audit credbroker.admin";
        let mut resources = json!({
            POSTGRES: { "alg": "ES256", "ttl": ttl, "scope": all },
            S3: { "alg": "RS256", "ttl": ttl, "scope": all },
            GITHUB: { "alg": "EdDSA", "ttl": ttl, "scope": all },
        });
        for r in &opts.resources {
            resources[r] = json!({ "alg": "ES256", "ttl": ttl, "scope": all });
        }
        for r in &opts.opaque_resources {
            resources[r] = json!({ "alg": "ES256", "ttl": ttl, "scope": all, "format": "opaque" });
        }
        for (r, spec) in &opts.resource_specs {
            resources[r] = spec.clone();
        }
        let mut clients: Vec<Value> = clients.iter().map(|c| json!({
            "client_id": c.id, "client_secret": secret(c.id), "scope": c.scope, "extra_claims": c.extra,
            "may_act_for": c.may_act_for,
        })).collect();
        clients.extend(opts.extra_clients.iter().cloned());
        let mut config = json!({
            "issuer": issuer,
            "keys": keys,
            "metadata": metadata,
            "resources": resources,
        });
        if !opts.trusted_idps.is_empty() {
            config["trusted_idps"] = opts
                .trusted_idps
                .iter()
                .map(|i| json!({ "issuer": i, "jwks_uri": format!("{i}/jwks") }))
                .collect();
        }
        if !opts.id_jag.is_null() {
            config["id_jag"] = opts.id_jag.clone();
        }
        let mut command = Command::new("node");
        if let Some(code) = &opts.authorization_code {
            config["authorization_code"] = json!({
                "user": code.user,
                "registration": code.registration,
                "client_id_metadata_documents": code.client_id_metadata_documents,
            });
            clients.extend(code.public_clients.iter().map(
                |c| json!({"client_id": c.id, "redirect_uris": [c.redirect_uri], "scope": c.scope}),
            ));
            if code.client_id_metadata_documents {
                command.env(
                    "NODE_EXTRA_CA_CERTS",
                    repo().join("tests/fixtures/tls/ca1.pem"),
                );
            }
        }
        config["clients"] = json!(clients);
        let path = dir.path().join("as.json");
        std::fs::write(&path, config.to_string())
            .expect("the auth server config should be written");
        let mut child = command
            .arg(oidc_dir().join("server.mjs"))
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting node: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let mut line = String::new();
        let started = Instant::now();
        BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading READY: {e}"));
        assert!(
            line.starts_with("READY "),
            "authorization server did not start: {line:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        Self {
            issuer,
            port,
            child,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    /// A real access token, by client credentials with a resource indicator (RFC 8707).
    pub async fn token(&self, client: &str, resource: &str, scope: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(secret(client)))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap_or_else(|e| panic!("token request: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        assert!(status.is_success(), "token request failed: {status} {body}");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_string()
    }

    /// RFC 7009: revokes `token` as the client it was issued to.
    pub async fn revoke(&self, client: &str, token: &str) {
        let resp = self
            .http
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth(client, Some(secret(client)))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .unwrap_or_else(|e| panic!("revocation request: {e}"));
        assert!(
            resp.status().is_success(),
            "revocation failed: {}",
            resp.status()
        );
    }

    /// A delegated token (RFC 8693 token exchange): `sub` = `user`, `act` = `{sub: client}`.
    pub async fn delegated_token(
        &self,
        client: &str,
        user: &str,
        resource: &str,
        scope: &str,
    ) -> String {
        let resp = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(secret(client)))
            .form(&[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token_type", "urn:credbroker:test:user"),
                ("subject_token", user),
                ("resource", resource),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap_or_else(|e| panic!("token exchange: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "token exchange failed: {status} {body}"
        );
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_string()
    }

    /// What it did, oldest first: `token` (grant_type, client_id, sub, aud, scope),
    /// `registration`, `client_id_metadata_document`, `login`, `authorization` events.
    pub async fn log(&self) -> Vec<Value> {
        self.http
            .get(format!("{}/test/log", self.issuer))
            .send()
            .await
            .expect("the auth server should answer /test/log")
            .json()
            .await
            .expect("/test/log is JSON")
    }

    /// RFC 7662 introspection as `client` (client_secret_basic with `secret(client)`): the JSON
    /// answer (`{"active": false}` for an unknown, expired or revoked token).
    pub async fn introspect(&self, client: &str, token: &str) -> Value {
        let resp = self
            .http
            .post(format!("{}/token/introspection", self.issuer))
            .basic_auth(client, Some(secret(client)))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("introspection request: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        assert!(status.is_success(), "introspection failed: {status} {body}");
        body
    }

    /// `POST /token` from now on: `ok`, `fail-500` (500 server_error), `fail-503`
    /// (503 temporarily_unavailable) or `hang` (never answers).
    pub async fn token_mode(&self, mode: &str) {
        self.fail_mode("token-mode", mode).await;
    }

    /// `POST /token/revocation` from now on: `ok`, `fail-500`, `fail-503` or `hang`.
    pub async fn revocation_mode(&self, mode: &str) {
        self.fail_mode("revocation-mode", mode).await;
    }

    async fn fail_mode(&self, switch: &str, mode: &str) {
        let resp = self
            .http
            .post(format!("{}/test/{switch}", self.issuer))
            .body(mode.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("the {switch} switch should reach the auth server: {e}"));
        assert!(
            resp.status().is_success(),
            "{switch} {mode}: {}",
            resp.status()
        );
    }

    /// Makes the JWKS endpoint fail (503) or work again.
    pub async fn jwks_ok(&self, ok: bool) {
        let resp = self
            .http
            .post(format!("{}/test/jwks-mode", self.issuer))
            .body(if ok { "ok" } else { "fail" })
            .send()
            .await
            .expect("the jwks-mode switch should reach the auth server");
        assert!(resp.status().is_success());
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn secret(client: &str) -> String {
    format!("secret-for-{client}")
}

/// The kid of the client key that signs `private_key_jwt` assertions (ES256).
pub const CLIENT_KEY_KID: &str = "es256-credbroker-1";
/// The kid of the client key that signs actor tokens (EdDSA, Ed25519).
pub const ACTOR_KEY_KID: &str = "eddsa-credbroker-1";

fn client_keys_dir() -> PathBuf {
    repo().join("tests/fixtures/client-keys")
}

/// A client's ES256 private key (PKCS#8 PEM, kid [`CLIENT_KEY_KID`]), for `private_key_jwt`.
pub fn client_key_pem() -> PathBuf {
    client_keys_dir().join(format!("{CLIENT_KEY_KID}.pem"))
}

/// The same client's Ed25519 private key (PKCS#8 PEM, kid [`ACTOR_KEY_KID`]), for actor tokens.
pub fn actor_key_pem() -> PathBuf {
    client_keys_dir().join(format!("{ACTOR_KEY_KID}.pem"))
}

/// The public JWKS of the client keys (ES256, EdDSA and a spare RS256 one): the `jwks` of a
/// `private_key_jwt` client, which also verifies its actor tokens.
pub fn client_public_jwks() -> Value {
    let path = client_keys_dir().join("keys.json");
    let private: Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let keys: Vec<Value> = private["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut k| {
            if let Some(o) = k.as_object_mut() {
                for m in ["d", "p", "q", "dp", "dq", "qi"] {
                    o.remove(m);
                }
            }
            k
        })
        .collect();
    json!({ "keys": keys })
}
