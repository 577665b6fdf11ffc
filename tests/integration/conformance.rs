//! The provider conformance suite (`credbroker_provider_api::testkit`), mounted once per
//! provider against its real backend: the test provider, OpenBao with PostgreSQL, moto's STS and
//! IAM, and the GitHub stand-in. Each [`Backend`] answers "does the backend still honour this
//! credential?" by the backend's own means: a database login, the role's deny documents read
//! back, an API call with the token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use credbroker_provider_api::testkit::{self, Backend};
use credbroker_provider_api::{Env, Issued, Params, Provider, ProviderFactory, Revoked};
use serde_json::{Value, json};

use crate::support::github::{APP_ID, FakeGithub};
use crate::support::moto::{ACCOUNT, Moto};
use crate::support::openbao::OpenBao;
use crate::support::postgres::Postgres;

#[path = "../testd/provider.rs"]
#[allow(dead_code)]
mod testd_provider;

/// The environment a factory sees: only these variables.
struct Vars(HashMap<String, String>);

impl Env for Vars {
    fn var(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

fn vars(pairs: &[(&str, String)]) -> Vars {
    Vars(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect(),
    )
}

fn params(v: Value) -> Params {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("params: {e}"))
}

fn build(factory: &dyn ProviderFactory, settings: Value, env: &dyn Env) -> Arc<dyn Provider> {
    factory
        .build("conformance", &params(settings), env)
        .unwrap_or_else(|e| panic!("build: {e:?}"))
}

async fn conforms(backend: &dyn Backend) {
    let failures = testkit::run(backend).await;
    assert!(failures.is_empty(), "{}", testkit::report(&failures));
}

// --- The test provider -------------------------------------------------------------------

struct TestBackend {
    provider: Arc<dyn Provider>,
    dir: PathBuf,
}

#[async_trait::async_trait]
impl Backend for TestBackend {
    fn provider(&self) -> Arc<dyn Provider> {
        Arc::clone(&self.provider)
    }
    fn grant(&self) -> (String, Params) {
        (
            "items".into(),
            params(json!({ "label": "x", "items": ["a"] })),
        )
    }
    async fn honoured(&self, issued: &Issued) -> Result<bool, String> {
        let lease = &issued.handle.reference;
        Ok(self
            .dir
            .join("issued")
            .join(format!("{lease}.json"))
            .exists())
    }
    fn second_revoke(&self) -> Revoked {
        Revoked::AlreadyGone
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_provider_conforms_unscoped_and_scoped() {
    for scoped in [false, true] {
        let dir = tempfile::tempdir()
            .expect("a temp dir for the test provider's state should be created");
        let settings = json!({ "state_dir": dir.path(), "scoped": scoped });
        let backend = TestBackend {
            provider: build(&testd_provider::TestFactory, settings, &vars(&[])),
            dir: dir.path().to_path_buf(),
        };
        conforms(&backend).await;
    }
}

// --- Vault / OpenBao ---------------------------------------------------------------------

struct VaultBackend {
    provider: Arc<dyn Provider>,
    pg: Postgres,
}

#[async_trait::async_trait]
impl Backend for VaultBackend {
    fn provider(&self) -> Arc<dyn Provider> {
        Arc::clone(&self.provider)
    }
    fn grant(&self) -> (String, Params) {
        let p = json!({ "kind": "dynamic", "path": "database/creds/orders-read", "public": ["username"] });
        ("orders-db".into(), params(p))
    }
    /// PostgreSQL itself: can the role log in and read?
    async fn honoured(&self, issued: &Issued) -> Result<bool, String> {
        let user = issued
            .credential
            .public
            .get("username")
            .ok_or("no username")?;
        let password = issued
            .credential
            .secret
            .get("password")
            .ok_or("no password")?;
        Ok(self
            .pg
            .query_as(user, password.expose(), "SELECT count(*) FROM orders")
            .is_ok())
    }
    /// OpenBao answers 204 to revoking any lease id, known or not.
    fn second_revoke(&self) -> Revoked {
        Revoked::Revoked
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vault_provider_conforms_against_openbao_and_postgresql() {
    let pg = Postgres::start();
    let bao = OpenBao::dev().await;
    bao.setup_database(&pg).await;
    let secrets =
        tempfile::tempdir().expect("a temp dir for the conformance vault token should be created");
    let token = secrets.path().join("vault-token");
    crate::support::write_secret(&token, bao.broker_token().await)
        .expect("the conformance vault token should be written");
    let settings = json!({ "address": bao.addr, "timeout": "5s", "token_file": token });
    let backend = VaultBackend {
        provider: build(
            &credbroker_provider_vault::VaultFactory,
            settings,
            &vars(&[]),
        ),
        pg,
    };
    conforms(&backend).await;
}

// --- AWS STS (moto) ----------------------------------------------------------------------

const ROLE: &str = "conformance-role";
const WRITER: &str = "conf";

struct AwsBackend {
    provider: Arc<dyn Provider>,
    moto: Moto,
}

impl AwsBackend {
    /// Whether the role's deny documents (every writer's) deny this session: a `Deny`
    /// statement whose `aws:userid` pattern matches it, as IAM evaluates `StringLike`.
    async fn denied(&self, userid: &str) -> Result<bool, String> {
        for name in self.moto.role_policy_names(ROLE).await {
            let Some(doc) = self.moto.role_policy(ROLE, &name).await else {
                continue;
            };
            let statements = doc["Statement"].as_array().cloned().unwrap_or_default();
            for s in statements.iter().filter(|s| s["Effect"] == "Deny") {
                let patterns = match &s["Condition"]["StringLike"]["aws:userid"] {
                    Value::String(p) => vec![p.clone()],
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                    _ => Vec::new(),
                };
                if patterns.iter().any(|p| glob(p, userid)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// IAM's `StringLike`: `*` matches any run of characters, `?` one.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[async_trait::async_trait]
impl Backend for AwsBackend {
    fn provider(&self) -> Arc<dyn Provider> {
        Arc::clone(&self.provider)
    }
    fn grant(&self) -> (String, Params) {
        let p = json!({
            "role_arn": format!("arn:aws:iam::{ACCOUNT}:role/{ROLE}"),
            "duration": "20m",
            "role_session_name": "conformance",
        });
        ("s3-reports".into(), params(p))
    }
    /// STS recognises the session (GetCallerIdentity with its keys names it), and no deny
    /// document on the role denies it.
    async fn honoured(&self, issued: &Issued) -> Result<bool, String> {
        let public = &issued.credential.public;
        let secret = &issued.credential.secret;
        let key = public
            .get("AWS_ACCESS_KEY_ID")
            .ok_or("no AWS_ACCESS_KEY_ID")?;
        let sk = secret
            .get("AWS_SECRET_ACCESS_KEY")
            .ok_or("no AWS_SECRET_ACCESS_KEY")?;
        let st = secret
            .get("AWS_SESSION_TOKEN")
            .ok_or("no AWS_SESSION_TOKEN")?;
        let out = self.moto.python(
            "import boto3,os\n\
             print(boto3.client('sts', endpoint_url=os.environ['URL'], region_name='us-east-1')\
             .get_caller_identity()['Arn'])",
            &[
                ("URL", self.moto.direct.as_str()),
                ("AWS_ACCESS_KEY_ID", key.as_str()),
                ("AWS_SECRET_ACCESS_KEY", sk.expose()),
                ("AWS_SESSION_TOKEN", st.expose()),
            ],
        );
        let arn = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !arn.contains(":assumed-role/") {
            return Err(format!(
                "GetCallerIdentity: {arn:?} {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(!self.denied(&issued.handle.reference).await?)
    }
    /// Writing a deny entry again is idempotent; IAM cannot say it was there.
    fn second_revoke(&self) -> Revoked {
        Revoked::Revoked
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aws_provider_conforms_against_moto() {
    let moto = Moto::start().await;
    moto.create_role(ROLE, 43200).await;
    let creds =
        tempfile::tempdir().expect("a temp dir for conformance aws credentials should be created");
    Moto::write_credentials(creds.path());
    let env = vars(&[("CREDENTIALS_DIRECTORY", creds.path().display().to_string())]);
    let settings = json!({
        "region": "us-east-1",
        "endpoint_url": moto.direct,
        "credentials_credential": "aws-credentials",
        "timeout": "5s",
        "revocation": "deny-session",
        "deny_writer": WRITER,
    });
    let backend = AwsBackend {
        provider: build(&credbroker_provider_aws::AwsFactory, settings, &env),
        moto,
    };
    conforms(&backend).await;
}

// --- GitHub (the stand-in) ---------------------------------------------------------------

struct GithubBackend {
    provider: Arc<dyn Provider>,
    gh: FakeGithub,
}

#[async_trait::async_trait]
impl Backend for GithubBackend {
    fn provider(&self) -> Arc<dyn Provider> {
        Arc::clone(&self.provider)
    }
    fn grant(&self) -> (String, Params) {
        let p = json!({
            "owner": "acme",
            "repositories": ["notes"],
            "permissions": { "issues": "write" },
        });
        ("github-issues".into(), params(p))
    }
    /// The token authenticates an API call.
    async fn honoured(&self, issued: &Issued) -> Result<bool, String> {
        let token = issued
            .credential
            .secret
            .get("GITHUB_TOKEN")
            .ok_or("no GITHUB_TOKEN")?;
        let auth = format!("token {}", token.expose());
        let (status, body) = self
            .gh
            .raw(reqwest::Method::GET, "/installation/repositories", &auth)
            .await;
        match status {
            200 => Ok(true),
            401 => Ok(false),
            s => Err(format!("GET /installation/repositories: {s} {body}")),
        }
    }
    /// A revoked token no longer authenticates its own DELETE: GitHub answers 401.
    fn second_revoke(&self) -> Revoked {
        Revoked::AlreadyGone
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_github_provider_conforms_against_the_stand_in() {
    let gh = FakeGithub::start();
    let creds = tempfile::tempdir()
        .expect("a temp dir for conformance github credentials should be created");
    std::fs::copy(&gh.key, creds.path().join("github-app-key"))
        .expect("the github app key should be copied for conformance");
    let env = vars(&[("CREDENTIALS_DIRECTORY", creds.path().display().to_string())]);
    let settings = json!({
        "app_id": APP_ID,
        "private_key_credential": "github-app-key",
        "api_url": gh.url,
        "timeout": "5s",
    });
    let backend = GithubBackend {
        provider: build(&credbroker_provider_github::GithubFactory, settings, &env),
        gh,
    };
    conforms(&backend).await;
}

// --- OAuth (oidc-provider) ---------------------------------------------------------------

struct OauthBackend {
    provider: Arc<dyn Provider>,
    servers: crate::oauth_setup::Servers,
    subject: String,
}

#[async_trait::async_trait]
impl Backend for OauthBackend {
    fn provider(&self) -> Arc<dyn Provider> {
        Arc::clone(&self.provider)
    }
    fn grant(&self) -> (String, Params) {
        let p = json!({
            "mode": "token-exchange",
            "resource": crate::oauth_setup::CRM,
            "scope": ["crm.read"],
        });
        ("crm".into(), params(p))
    }
    fn subject_token(&self) -> Option<credbroker_provider_api::SecretValue> {
        Some(credbroker_provider_api::SecretValue::new(
            self.subject.as_str(),
        ))
    }
    /// The AS's own introspection (RFC 7662), as the downstream API would ask it.
    async fn honoured(&self, issued: &Issued) -> Result<bool, String> {
        let token = issued
            .credential
            .secret
            .get("access_token")
            .ok_or("no access_token")?;
        let seen = self.servers.idp.introspect("agent-1", token.expose()).await;
        seen["active"]
            .as_bool()
            .ok_or_else(|| format!("introspection: {seen}"))
    }
    /// Introspection finds a revoked token inactive, so nothing is sent to revoke it again.
    fn second_revoke(&self) -> Revoked {
        Revoked::AlreadyGone
    }
    fn ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(240)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_oauth_provider_conforms_against_oidc_provider() {
    let servers = crate::oauth_setup::Servers::start();
    let subject = servers.carol().await;
    let creds = tempfile::tempdir().expect("a temp dir for conformance oauth credentials");
    let key = std::fs::read(crate::support::oidc::client_key_pem()).expect("the client key reads");
    crate::support::write_secret(creds.path().join("client-key"), key).expect("the key is written");
    let env = vars(&[("CREDENTIALS_DIRECTORY", creds.path().display().to_string())]);
    let settings = json!({
        "issuer": servers.idp.issuer,
        "client_id": "credbroker",
        "client_auth": "private_key_jwt",
        "private_key_credential": "client-key",
        "private_key_id": crate::support::oidc::CLIENT_KEY_KID,
        // The suite's tasks name a made-up issuer; the subject token is the IdP's own.
        "subject_issuers": [servers.idp.issuer, "https://as.conformance.test"],
        "max_token_lifetime": "10m",
        "timeout": "5s",
    });
    let backend = OauthBackend {
        provider: build(&credbroker_provider_oauth::OauthFactory, settings, &env),
        servers,
        subject,
    };
    conforms(&backend).await;
}
