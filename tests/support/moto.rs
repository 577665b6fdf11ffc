//! moto's server (PyPI `moto[server]`) as STS and IAM, installed into `.deps/venv` and started
//! per test on a free loopback port, with a [`Recorder`] in front of it; plus boto3 (which moto
//! brings along) as the real AWS SDK that consumes what credbroker hands out.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::recorder::Recorder;
use super::{free_port, venv};

const REQUIREMENT: &str = "moto[server]==5.2.5";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";

pub fn moto_server() -> PathBuf {
    venv::ensure(REQUIREMENT, |venv| {
        let p = venv.join("bin/moto_server");
        p.exists().then_some(p)
    })
}

pub struct Moto {
    /// moto itself.
    pub direct: String,
    /// The recording proxy in front of it: what the daemon is configured with.
    pub recorder: Recorder,
    child: Child,
    http: reqwest::Client,
}

impl Moto {
    pub async fn start() -> Self {
        let bin = moto_server();
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("moto_server: {e}"));
        let direct = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("the http client for moto should build");
        let started = Instant::now();
        while http.get(format!("{direct}/")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let recorder = Recorder::start(&direct).await;
        Self {
            direct,
            recorder,
            child,
            http,
        }
    }

    /// An IAM call straight to moto (not recorded). moto routes by the signing scope in the
    /// Authorization header and does not check signatures.
    pub async fn iam(&self, params: &[(&str, &str)]) -> (u16, String) {
        let mut form: Vec<(&str, &str)> = vec![("Version", "2010-05-08")];
        form.extend_from_slice(params);
        let resp = self
            .http
            .post(format!("{}/", self.direct))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDSETUP/20260101/us-east-1/iam/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .form(&form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("iam: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// Creates a role that trusts the account, with sessions of up to `max_session` seconds;
    /// returns its ARN.
    pub async fn create_role(&self, name: &str, max_session: u32) -> String {
        let trust = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT}:root"}},"Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"]}}]}}"#
        );
        let (status, body) = self
            .iam(&[
                ("Action", "CreateRole"),
                ("RoleName", name),
                ("AssumeRolePolicyDocument", &trust),
                ("MaxSessionDuration", &max_session.to_string()),
            ])
            .await;
        assert_eq!(status, 200, "CreateRole: {body}");
        format!("arn:aws:iam::{ACCOUNT}:role/{name}")
    }

    pub async fn put_role_policy(&self, role: &str, policy: &str, document: &str) {
        let (status, body) = self
            .iam(&[
                ("Action", "PutRolePolicy"),
                ("RoleName", role),
                ("PolicyName", policy),
                ("PolicyDocument", document),
            ])
            .await;
        assert_eq!(status, 200, "PutRolePolicy: {body}");
    }

    /// The role's inline policy, decoded; `None` if it has none of that name.
    pub async fn role_policy(&self, role: &str, policy: &str) -> Option<serde_json::Value> {
        let (status, body) = self
            .iam(&[
                ("Action", "GetRolePolicy"),
                ("RoleName", role),
                ("PolicyName", policy),
            ])
            .await;
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "GetRolePolicy: {body}");
        let encoded = between(&body, "<PolicyDocument>", "</PolicyDocument>")?;
        // IAM URL-encodes the document (RFC 3986: no '+' for spaces).
        let decoded: String = url::form_urlencoded::parse(format!("d={encoded}").as_bytes())
            .map(|(_, v)| v.into_owned())
            .next()?;
        serde_json::from_str(&decoded).ok()
    }

    /// The names of the role's inline policies.
    pub async fn role_policy_names(&self, role: &str) -> Vec<String> {
        let (status, body) = self
            .iam(&[("Action", "ListRolePolicies"), ("RoleName", role)])
            .await;
        assert_eq!(status, 200, "ListRolePolicies: {body}");
        body.split("<member>")
            .skip(1)
            .filter_map(|m| m.split("</member>").next())
            .map(str::to_owned)
            .collect()
    }

    /// Runs a Python snippet with the venv's interpreter (boto3 is there); `env` is passed
    /// through the environment, never the command line.
    pub fn python(&self, code: &str, env: &[(&str, &str)]) -> Output {
        let python = venv::dir().join("bin/python");
        Command::new(python)
            .args(["-c", code])
            .env_remove("AWS_PROFILE")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("python: {e}"))
    }

    /// The daemon's own AWS identity, as a shared-credentials file for `$CREDENTIALS_DIRECTORY`.
    pub fn write_credentials(dir: &Path) {
        super::write_secret(
            dir.join("aws-credentials"),
            "[default]\naws_access_key_id = AKIDCREDBROKERTEST\n\
             aws_secret_access_key = credbroker-own-secret-key-for-moto\n",
        )
        .expect("the moto aws-credentials file should be written");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}
