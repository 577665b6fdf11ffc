//! The Vault / OpenBao provider.
//!
//! **No orphans, by construction.** Every task gets a *scope*: a child token of credbroker's own
//! token, created (and journaled by the broker) before anything else, with a TTL equal to the
//! task's. The task's dynamic secrets are read *with that child token*, and the task's workload
//! tokens are its children. Vault revokes every lease created under a token, and every child
//! token, when the token is revoked or expires. So ending the task, or finding an unfinished
//! task after a crash, revokes the scope and with it everything issued for the task, including
//! a lease whose id never reached the journal; and if credbroker never comes back, the scope's
//! TTL ends it all on schedule.
//!
//! Configuration (`[[provider]] type = "vault"`):
//! ```toml
//! address = "https://vault.example.com:8200"
//! namespace = "team-a"                 # optional (Vault Enterprise / OpenBao namespaces)
//! ca_file = "/etc/credbroker/vault-ca.pem"
//! timeout = "5s"
//! # credbroker's own identity, one of:
//! token_credential = "vault-token"     # $CREDENTIALS_DIRECTORY/vault-token (systemd)
//! token_file = "/etc/credbroker/vault-token"
//! approle = { role_id = "…", secret_id_credential = "vault-secret-id" }   # or secret_id_file
//! # optional: policies for per-task scope tokens (default: those of credbroker's token)
//! scope_policies = ["credbroker-task"]
//! # optional: create scope tokens through this token role. A role with `orphan = true` makes
//! # scopes independent of credbroker's own token: without it a scope is that token's child and
//! # ends when it does (AppRole tokens have a max TTL), cutting long tasks short.
//! scope_role = "credbroker-scope"
//! ```

mod auth;
mod client;
mod grants;
mod issue;
mod provider;
mod revoke;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use credbroker_provider_api::{
    Env, ParamError, Params, Provider, ProviderFactory, param_str, param_str_list,
};
use serde_json::Value;

use auth::{Login, SelfToken, Source};
use client::Client;
use provider::{Inner, VaultProvider};

pub struct VaultFactory;

const KEYS: [&str; 9] = [
    "address",
    "namespace",
    "ca_file",
    "timeout",
    "token_file",
    "token_credential",
    "approle",
    "scope_policies",
    "scope_role",
];

impl ProviderFactory for VaultFactory {
    fn kind(&self) -> &'static str {
        "vault"
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
        let address = param_str(config, "address")
            .map_err(|e| errors.push(e))
            .unwrap_or_default()
            .to_string();
        if !(address.is_empty() || address.starts_with("https://") || is_loopback_http(&address)) {
            errors.push(ParamError::new(
                "address",
                "must be https (http only on loopback)",
            ));
        }
        let namespace = config
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let timeout = match config.get("timeout").and_then(Value::as_str) {
            None => Duration::from_secs(5),
            Some(t) => humantime::parse_duration(t).unwrap_or_else(|_| {
                errors.push(ParamError::new(
                    "timeout",
                    format!("{t:?} is not a duration"),
                ));
                Duration::from_secs(5)
            }),
        };
        let ca = config.get("ca_file").and_then(Value::as_str).and_then(|p| {
            std::fs::read(p)
                .map_err(|e| errors.push(ParamError::new("ca_file", format!("{p}: {e}"))))
                .ok()
        });
        let scope_role = config
            .get("scope_role")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if scope_role
            .as_deref()
            .is_some_and(|r| r.is_empty() || r.contains('/'))
        {
            errors.push(ParamError::new("scope_role", "must be a token role name"));
        }
        let scope_policies = param_str_list(config, "scope_policies")
            .map_err(|e| errors.push(e))
            .unwrap_or_default();
        let login = login(config, env, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let Some(login) = login else {
            return Err(vec![ParamError::new(
                "token_credential",
                "credbroker's Vault identity is required",
            )]);
        };
        let client = Client::new(&address, namespace, ca.as_deref(), timeout)
            .map_err(|e| vec![ParamError::new("address", e)])?;
        let inner = Arc::new(Inner {
            name: name.to_string(),
            client,
            token: SelfToken::new(login),
            scope_policies,
            scope_role,
        });
        // Keep credbroker's token alive while the instance exists (the loop holds a weak ref).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&inner);
            rt.spawn(async move {
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let wait = inner.token.maintain(&inner.client).await;
                    drop(inner);
                    tokio::time::sleep(wait).await;
                }
            });
        }
        Ok(Arc::new(VaultProvider { inner }))
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

fn credential_path(env: &dyn Env, name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') {
        return Err(format!("invalid credential name {name:?}"));
    }
    let dir = env
        .var("CREDENTIALS_DIRECTORY")
        .ok_or("$CREDENTIALS_DIRECTORY is not set")?;
    Ok(PathBuf::from(dir).join(name))
}

fn source(
    config: &Params,
    file_key: &str,
    cred_key: &str,
    env: &dyn Env,
    errors: &mut Vec<ParamError>,
) -> Option<Source> {
    match (
        config.get(file_key).and_then(Value::as_str),
        config.get(cred_key).and_then(Value::as_str),
    ) {
        (Some(f), None) => Some(Source::File(PathBuf::from(f))),
        (None, Some(c)) => match credential_path(env, c) {
            Ok(p) => Some(Source::Credential(p)),
            Err(e) => {
                errors.push(ParamError::new(cred_key, e));
                None
            }
        },
        (Some(_), Some(_)) => {
            errors.push(ParamError::new(
                file_key,
                format!("{file_key} and {cred_key} are mutually exclusive"),
            ));
            None
        }
        (None, None) => None,
    }
}

fn login(config: &Params, env: &dyn Env, errors: &mut Vec<ParamError>) -> Option<Login> {
    let token = source(config, "token_file", "token_credential", env, errors);
    let approle = match config.get("approle") {
        None => None,
        Some(Value::Object(a)) => {
            for k in a.keys().filter(|k| {
                !["role_id", "secret_id_file", "secret_id_credential", "mount"]
                    .contains(&k.as_str())
            }) {
                errors.push(ParamError::new(format!("approle.{k}"), "unknown setting"));
            }
            let role_id = param_str(a, "role_id")
                .map_err(|e| errors.push(ParamError::new(format!("approle.{}", e.path), e.message)))
                .ok();
            let mount = a
                .get("mount")
                .and_then(Value::as_str)
                .unwrap_or("approle")
                .to_string();
            let secret_id = source(a, "secret_id_file", "secret_id_credential", env, errors);
            if secret_id.is_none() {
                errors.push(ParamError::new(
                    "approle",
                    "needs secret_id_file or secret_id_credential",
                ));
            }
            match (role_id, secret_id) {
                (Some(r), Some(s)) => Some(Login::AppRole {
                    mount,
                    role_id: r.to_string(),
                    secret_id: s,
                }),
                _ => None,
            }
        }
        Some(_) => {
            errors.push(ParamError::new("approle", "must be a table"));
            None
        }
    };
    match (token, approle) {
        (Some(t), None) => Some(Login::Token(t)),
        (None, Some(a)) => Some(a),
        (Some(_), Some(_)) => {
            errors.push(ParamError::new(
                "approle",
                "give a token or AppRole, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(ParamError::new(
                "token_credential",
                "give token_credential, token_file or approle",
            ));
            None
        }
    }
}
