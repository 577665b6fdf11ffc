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

use credbroker_provider_api::{
    Env, ParamError, Params, Provider, ProviderFactory, SecretValue, param_str,
};
use serde_json::Value;

use provider::GithubProvider;

pub struct GithubFactory;

const KEYS: [&str; 7] = [
    "app_id",
    "private_key_file",
    "private_key_credential",
    "api_url",
    "timeout",
    "max_retries",
    "max_retry_wait",
];

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
        let mut errors: Vec<ParamError> = config
            .keys()
            .filter(|k| !KEYS.contains(&k.as_str()))
            .map(|k| ParamError::new(k.as_str(), "unknown setting"))
            .collect();
        let app_id = match config.get("app_id").map(Value::as_u64) {
            Some(Some(id)) if id > 0 => id,
            Some(_) => {
                errors.push(ParamError::new("app_id", "must be a positive integer"));
                0
            }
            None => {
                errors.push(ParamError::new("app_id", "is required"));
                0
            }
        };
        let api_url = match config.get("api_url") {
            None => "https://api.github.com".to_string(),
            Some(_) => param_str(config, "api_url")
                .map_err(|e| errors.push(e))
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
        };
        if !api_url.starts_with("https://") && !is_loopback_http(&api_url) {
            errors.push(ParamError::new(
                "api_url",
                "must be https (http only on loopback)",
            ));
        }
        let duration = |key: &str, default: u64, errors: &mut Vec<ParamError>| match config.get(key)
        {
            None => Duration::from_secs(default),
            Some(v) => v
                .as_str()
                .and_then(|s| humantime::parse_duration(s).ok())
                .unwrap_or_else(|| {
                    errors.push(ParamError::new(key, "must be a duration such as \"10s\""));
                    Duration::from_secs(default)
                }),
        };
        let timeout = duration("timeout", 10, &mut errors);
        let max_wait = duration("max_retry_wait", 10, &mut errors);
        let max_retries = match config.get("max_retries").map(Value::as_u64) {
            None => 3,
            Some(Some(n @ 0..=10)) => n as u32,
            Some(_) => {
                errors.push(ParamError::new("max_retries", "must be 0 to 10"));
                3
            }
        };
        let key = private_key(config, env, &mut errors);
        let app = key.and_then(|k| {
            app::AppJwt::new(app_id, k)
                .map_err(|e| errors.push(ParamError::new("private_key", e)))
                .ok()
        });
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

/// The App's private key, from a file or a systemd credential, as a secret from the start.
fn private_key(
    config: &Params,
    env: &dyn Env,
    errors: &mut Vec<ParamError>,
) -> Option<SecretValue> {
    match (
        config.get("private_key_file").and_then(Value::as_str),
        config.get("private_key_credential").and_then(Value::as_str),
    ) {
        (Some(path), None) => match std::fs::read_to_string(path) {
            Ok(pem) => Some(SecretValue::new(pem)),
            Err(e) => {
                errors.push(ParamError::new("private_key_file", format!("{path}: {e}")));
                None
            }
        },
        (None, Some(name)) => env
            .credential(name)
            .map_err(|e| errors.push(ParamError::new("private_key_credential", e)))
            .ok(),
        (Some(_), Some(_)) => {
            errors.push(ParamError::new(
                "private_key_file",
                "give private_key_file or private_key_credential, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(ParamError::new(
                "private_key_credential",
                "the App's private key is required (private_key_credential or private_key_file)",
            ));
            None
        }
    }
}

fn is_loopback_http(address: &str) -> bool {
    reqwest::Url::parse(address).is_ok_and(|u| {
        u.scheme() == "http"
            && u.host_str().is_some_and(|h| {
                h == "localhost"
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "max_retries: must be 0 to 10",
            "private_key_file: /nonexistent/key.pem",
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
