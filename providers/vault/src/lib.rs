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

use std::sync::Arc;
use std::time::Duration;

use credbroker_provider_api::settings::{Fields, check_endpoint};
use credbroker_provider_api::{Env, ParamError, Params, Provider, ProviderFactory};
use serde_json::Value;

use auth::{Login, SelfToken};
use client::Client;
use provider::{Inner, VaultProvider};

pub struct VaultFactory;

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
        let mut f = Fields::new(config);
        let address = f
            .required::<String>("address", "the Vault URL")
            .unwrap_or_default();
        if !address.is_empty() && check_endpoint(&address).is_err() {
            f.problem("address", "must be https (http only on loopback)");
        }
        let namespace = f.string("namespace");
        let timeout = f.duration("timeout").unwrap_or(Duration::from_secs(5));
        let ca = f.string("ca_file").and_then(|p| {
            std::fs::read(&p)
                .map_err(|e| f.problem("ca_file", format!("{p}: {e}")))
                .ok()
        });
        let scope_role = f.get::<String>("scope_role", "a token role name");
        if scope_role
            .as_deref()
            .is_some_and(|r| r.is_empty() || r.contains('/'))
        {
            f.problem("scope_role", "must be a token role name");
        }
        let scope_policies: Vec<String> = f
            .get("scope_policies", "a list of policy names")
            .unwrap_or_default();
        let login = login(&mut f, env);
        let errors = f.finish();
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

/// credbroker's own Vault identity: a token (file or credential) or AppRole, exactly one.
fn login(f: &mut Fields<'_>, env: &dyn Env) -> Option<Login> {
    let given_token = f.raw("token_file").is_some() || f.raw("token_credential").is_some();
    let token = f.secret("token_file", "token_credential", env);
    let approle = match f.raw("approle") {
        None => None,
        Some(Value::Object(a)) => {
            let mut af = Fields::nested(a, "approle");
            let role_id = af.required::<String>("role_id", "the AppRole role id");
            let mount = af.string("mount").unwrap_or_else(|| "approle".into());
            let secret_id = af.secret("secret_id_file", "secret_id_credential", env);
            if secret_id.is_none() {
                af.problem(
                    "secret_id_credential",
                    "needs secret_id_file or secret_id_credential",
                );
            }
            for e in af.finish() {
                f.problem(&e.path, e.message);
            }
            match (role_id, secret_id) {
                (Some(role_id), Some(secret_id)) => Some(Login::AppRole {
                    mount,
                    role_id,
                    secret_id,
                }),
                _ => None,
            }
        }
        Some(_) => {
            f.problem("approle", "must be a table");
            None
        }
    };
    match (token, approle) {
        (Some(t), None) => Some(Login::Token(t)),
        (None, Some(a)) => Some(a),
        (Some(_), Some(_)) => {
            f.problem("approle", "give a token or AppRole, not both");
            None
        }
        (None, None) => {
            if !given_token {
                f.problem(
                    "token_credential",
                    "give token_credential, token_file or approle",
                );
            }
            None
        }
    }
}
