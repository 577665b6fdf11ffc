//! The GitHub App provider: one installation token per task credential, limited to the grant's
//! repositories and permissions, revoked when the task ends.
//!
//! Issue: `POST /app/installations/{id}/access_tokens` with the repositories and permissions,
//! authenticated with the App's JWT ([`app`]). GitHub's answer is checked: a token with more
//! repositories or permissions than asked is revoked at once and refused. Revoke:
//! `DELETE /installation/token`, authenticated with the token itself; 204 is confirmed, and a
//! 401 (the token no longer authenticates: expired or already revoked) counts as gone.
//!
//! GitHub is moving installation tokens to a stateless format that may not be revocable one by
//! one. Revocation therefore stays behind [`Provider::revoke`](credbroker_provider_api::Provider),
//! and the audit log records whether GitHub confirmed it (`confirmed`) or the token was already
//! gone (`already_gone`). Tokens expire within an hour either way.
//!
//! Configuration (`[[provider]] type = "github"`):
//! ```toml
//! app_id = 123456
//! private_key_credential = "github-app-key"   # $CREDENTIALS_DIRECTORY/github-app-key (PEM)
//! # private_key_file = "/etc/credbroker/github-app.pem"
//! api_url = "https://api.github.com"          # or https://HOST/api/v3 (GitHub Enterprise Server)
//! timeout = "10s"
//! max_retries = 3                             # rate-limited answers retried…
//! max_retry_wait = "10s"                      # …when GitHub asks to wait no longer than this
//! ```

mod answer;
mod app;
mod client;
mod grant;
mod provider;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credbroker_provider_api::settings::Fields;
use credbroker_provider_api::{Env, ParamError, Params, Provider, ProviderFactory};

use provider::GithubProvider;

pub struct GithubFactory;

impl ProviderFactory for GithubFactory {
    fn kind(&self) -> &'static str {
        "github"
    }

    fn build(
        &self,
        name: &str,
        config: &Params,
        env: &dyn Env,
    ) -> Result<Arc<dyn Provider>, Vec<ParamError>> {
        let mut f = Fields::new(config);
        let app_id = f.required::<u64>("app_id", "a positive integer");
        if app_id == Some(0) {
            f.problem("app_id", "must be a positive integer");
        }
        let api_url = f
            .endpoint("api_url")
            .unwrap_or_else(|| "https://api.github.com".into())
            .trim_end_matches('/')
            .to_string();
        let timeout = f.duration("timeout").unwrap_or(Duration::from_secs(10));
        let max_wait = f
            .duration("max_retry_wait")
            .unwrap_or(Duration::from_secs(10));
        let max_retries = f.int("max_retries", 0..=10).unwrap_or(3) as u32;
        let key = f.secret("private_key_file", "private_key_credential", env);
        let given = ["private_key_file", "private_key_credential"]
            .iter()
            .any(|k| config.contains_key(*k));
        if !given {
            f.problem(
                "private_key_credential",
                "the App's private key is required (private_key_credential or private_key_file)",
            );
        }
        let mut errors = f.finish();
        // The key is read once, as a secret from the start; errors name the file, never the key.
        let app = match (app_id, key) {
            (Some(id), Some(k)) if id > 0 => k
                .read()
                .and_then(|pem| app::AppJwt::new(id, pem))
                .map_err(|e| errors.push(ParamError::new("private_key", e)))
                .ok(),
            _ => None,
        };
        let client = client::Client::new(&api_url, timeout, max_retries, max_wait)
            .map_err(|e| errors.push(ParamError::new("api_url", e)))
            .ok();
        match (app, client) {
            (Some(app), Some(client)) if errors.is_empty() => Ok(Arc::new(GithubProvider {
                name: name.to_string(),
                api_url,
                app,
                client,
                installations: Mutex::new(HashMap::new()),
            })),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    struct Creds(String);
    impl Env for Creds {
        fn var(&self, key: &str) -> Option<String> {
            (key == "CREDENTIALS_DIRECTORY").then(|| self.0.clone())
        }
    }

    fn build(v: Value) -> Vec<String> {
        let Value::Object(p) = v else { return vec![] };
        let dir = env!("CARGO_MANIFEST_DIR");
        GithubFactory
            .build("gh", &p, &Creds(format!("{dir}/testdata")))
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn settings_are_checked_and_the_key_never_quoted() {
        assert!(
            build(serde_json::json!({"app_id": 1, "private_key_credential": "app-key.pem"}))
                .is_empty()
        );
        let e = build(serde_json::json!({
            "app_id": "one", "api_url": "http://github.example.com", "timeout": 5,
            "max_retries": 99, "private_key_file": "/nonexistent/key.pem", "colour": 1
        }));
        for needle in [
            "colour: unknown setting",
            "app_id: must be a positive integer",
            "api_url: must be https",
            "timeout: must be a duration",
            "max_retries: must be an integer from 0 to 10",
            "private_key_file: /nonexistent/key.pem is not a readable file",
        ] {
            assert!(
                e.iter().any(|x| x.contains(needle)),
                "{needle} not in {e:#?}"
            );
        }
        let dir = env!("CARGO_MANIFEST_DIR");
        let e = build(
            serde_json::json!({"app_id": 1, "private_key_file": format!("{dir}/Cargo.toml")}),
        );
        assert_eq!(e, ["private_key: is not an RSA private key in PEM form"]);
    }
}
