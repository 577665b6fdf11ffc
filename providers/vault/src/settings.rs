//! Reading the instance's own settings that need more than `Fields`: the scope type, the CA
//! file and credbroker's Vault identity. Every problem is reported under its key.

use credbroker_provider_api::Env;
use credbroker_provider_api::settings::Fields;
use serde_json::Value;

use crate::auth::Login;

/// `scope_type`: `"service"` (the default) or `"batch"` (see `batch.rs`). A batch scope cannot
/// come from a pool (it is free to make) or a token role (a role making batch tokens must make
/// orphans, whose leases no parent takes back), so both combinations are refused here.
pub(crate) fn scope_type(f: &mut Fields<'_>, with_role: bool, with_pool: bool) -> bool {
    let batch = match f.string("scope_type").as_deref() {
        None | Some("service") => false,
        Some("batch") => true,
        Some(other) => {
            f.problem(
                "scope_type",
                format!("{other:?}: expected \"service\" or \"batch\""),
            );
            false
        }
    };
    if batch && with_role {
        f.problem(
            "scope_type",
            "batch scopes are made without a token role: remove scope_role",
        );
    }
    if batch && with_pool {
        f.problem(
            "scope_type",
            "batch scopes cost OpenBao no storage write, so they are not pooled: remove scope_pool",
        );
    }
    batch
}

/// The certificates of `ca_file`, trusted on top of the system's roots (none when it is not
/// set). Read and parsed with the other settings, so that a bad file is reported under
/// `ca_file`, together with every other problem.
pub(crate) fn ca_file(f: &mut Fields<'_>) -> Vec<reqwest::Certificate> {
    let Some(path) = f.string("ca_file").map(std::path::PathBuf::from) else {
        return Vec::new();
    };
    // As for every other file credbroker reads: a relative path would depend on the directory
    // the daemon happens to be started from.
    if !path.is_absolute() {
        f.problem(
            "ca_file",
            format!("{} is relative; write an absolute path", path.display()),
        );
        return Vec::new();
    }
    let pem = match std::fs::read(&path) {
        Ok(pem) => pem,
        Err(e) => {
            f.problem("ca_file", format!("{}: {e}", path.display()));
            return Vec::new();
        }
    };
    // A file with no certificate section parses as an empty bundle: refuse it rather than
    // quietly trust the system's roots alone.
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => certs,
        Ok(_) => {
            f.problem(
                "ca_file",
                format!("{}: no PEM certificate in it", path.display()),
            );
            Vec::new()
        }
        Err(e) => {
            f.problem(
                "ca_file",
                format!(
                    "{}: not a PEM bundle: {}",
                    path.display(),
                    crate::client::describe(&e)
                ),
            );
            Vec::new()
        }
    }
}

/// credbroker's own Vault identity: a token (file or credential) or AppRole, exactly one.
pub(crate) fn login(f: &mut Fields<'_>, env: &dyn Env) -> Option<Login> {
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
            f.absorb(af.finish());
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
