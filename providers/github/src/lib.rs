//! The GitHub App provider: one installation token per task credential, limited to the grant's
//! repositories and permissions, revoked when the task ends.
//!
//! **The App JWT** (`app.rs`): RS256 with the App's private key, which is held as a `SecretValue`,
//! checked when the instance is built and parsed again only to sign. `iss` = the App id, `iat`
//! backdated 60 s against clock skew, `exp` 9 minutes from now (10 after `iat`, GitHub's limit).
//! It is reused until a minute before it expires.
//!
//! **Issue**: `POST /app/installations/{id}/access_tokens` with the grant's `repositories` and
//! `permissions`, both required at load (without them GitHub gives the token every repository
//! or every permission of the installation). The installation is an id or is found from
//! `owner`/`repository`; the lookup is made once and cached. GitHub's answer is checked: a token
//! whose `repository_selection`, repositories or permission levels exceed the request is revoked
//! at once and refused as `Denied`. The one tolerated extra is `metadata: read`, which GitHub
//! adds to every token. The token is the revocation handle's secret (sealed in the journal); the
//! public reference is `installation ID token sha256:<12 hex> granted PERMISSIONS on REPOS`.
//!
//! **Revoke**: `DELETE /installation/token`, authenticated with the token itself, even past its
//! expiry by credbroker's clock. 204 → `Revoked` (audited `confirmed`); 401 → `AlreadyGone`
//! (audited `already_gone`): the token no longer authenticates, whether it expired or was
//! revoked. GitHub is moving installation tokens to a stateless format that may not be revocable
//! one by one. Revocation therefore stays behind
//! [`Provider::revoke`](credbroker_provider_api::Provider), and the audit log keeps saying which
//! of the two happened. Tokens expire within an hour either way.
//!
//! **Reconcile**: GitHub cannot list installation tokens, so the answer is `WillExpire` an hour
//! from now (GitHub's cap).
//!
//! **Rate limits** (`client.rs`): a 429, or a 403 with `x-ratelimit-remaining: 0` or a
//! secondary-limit message. The wait is `retry-after`, else the primary limit's
//! `x-ratelimit-reset`, else a minute. A wait within `max_retry_wait` is slept in the call and
//! the call retried (at most `max_retries` times); a longer one becomes `RateLimited` with
//! `retry_after`, so the caller is told when to return and GitHub is not hammered. The last
//! `x-ratelimit-*` headers are kept for `Status`.
//!
//! The HTTP client never follows redirects, so the Authorization header cannot be carried to
//! another host. That header is marked sensitive, and the API version is pinned
//! (`X-GitHub-Api-Version: 2022-11-28`). **Errors**: 401 to the App JWT → `Unauthorized`;
//! 403/404/422 → `Denied` (the App lacks a permission, cannot see a repository, or is not
//! installed), which reaches the caller as PERMISSION_DENIED naming the grant.
//!
//! **Not octocrab**: we call a handful of endpoints (create and revoke a token, find the
//! installation, and `GET /app`, `GET /app/installations/{id}` for health and checks) and need
//! full control of four things: Retry-After and the secondary limits; redirects off; the token
//! never in a plain `String` field of a `Debug` type; the raw `permissions`/`repositories` of
//! the answer, to compare with the request. reqwest and jsonwebtoken are already in the tree;
//! octocrab would bring its own hyper/tower stack and a typed model of the whole API, to build
//! and audit for these few calls.
//!
//! **Tests**: `tests/support/github/server.mjs`, a stand-in that verifies App JWTs as GitHub
//! does. It validates request bodies against `@octokit/openapi`'s description of the endpoint
//! (ajv), builds and validates its answers from that description's examples and schemas, and
//! answers 401/403/404/422/429 with GitHub's messages and rate-limit headers.
//!
//! Configuration (`[[provider]] type = "github"`; grant parameters are in `grant.rs`):
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

use credbroker_provider_api::settings::{Fields, MAX_TIMEOUT, MIN_TIMEOUT};
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
        let timeout = f
            .duration("timeout", MIN_TIMEOUT, MAX_TIMEOUT)
            .unwrap_or(Duration::from_secs(10));
        let max_wait = f
            .duration("max_retry_wait", Duration::ZERO, Duration::from_secs(60))
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
        // A checked-out file is 0644; credentials are refused unless only their owner (and
        // group) may read them, so the test key is copied to a private file first.
        let dir = std::env::temp_dir().join(format!("cb-github-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir for the app key should be created");
        let key = dir.join("app-key.pem");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/app-key.pem"),
            &key,
        )
        .expect("the test app key should be copied");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("the copied app key should be made private");
        GithubFactory
            .build("gh", &p, &Creds(dir.display().to_string()))
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
        let not_a_key =
            std::env::temp_dir().join(format!("cb-github-notkey-{}", std::process::id()));
        std::fs::write(&not_a_key, "[package]\n").expect("a non-key file should be written");
        std::fs::set_permissions(
            &not_a_key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("the non-key file should be made private");
        let e = build(serde_json::json!({"app_id": 1, "private_key_file": not_a_key}));
        assert_eq!(e, ["private_key: is not an RSA private key in PEM form"]);
    }
}
