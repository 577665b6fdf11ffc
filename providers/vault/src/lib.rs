//! The Vault / OpenBao provider.
//!
//! **No orphans, by construction.** Every task gets a *scope*: a child token of credbroker's own
//! token, created (and journaled by the broker) before anything else, with a TTL equal to the
//! task's and metadata naming the owner, client and task. The task's dynamic secrets are read
//! *with that child token*, and the task's workload tokens are its children. Vault revokes every
//! lease created under a token, and every child token, when the token is revoked or expires. So
//! ending the task, or finding an unfinished task after a crash, revokes the scope and with it
//! everything issued for the task, including a lease whose id never reached the journal; and if
//! credbroker never comes back, the scope's TTL ends it all on schedule.
//!
//! - **Ending** revokes the credentials first, each confirmed on its own (`sys/leases/revoke` is
//!   synchronous; revoking a token only queues the revocation of its leases), and the scope once
//!   nothing under it still needs its own revocation.
//! - A credential of **unknown outcome** (a crash or timeout between Vault's action and the
//!   journal) is not reconciled on its own: the scope takes it back (`revoked_with_scope`).
//! - Each dynamic lease is also **shortened to the task** (`sys/leases/renew` with the time
//!   left), which moves the backend's own expiry too: PostgreSQL's `VALID UNTIL` is updated
//!   through the role's renew statements, so the credential dies on time even if Vault is down.
//!   This runs just after the answer, not before it: the scope token, whose TTL is the task's,
//!   already bounds the lease (OpenBao revokes a token's leases when it expires), so the
//!   shortening is defence in depth, and before the answer it cost every issue a storage write
//!   and a database statement. A read that returns no lease is refused: nothing could revoke it.
//! - With `scope_type = "batch"` the scope is a batch token instead, which OpenBao does not
//!   store and cannot revoke, and which cuts every lease made with it to its own expiry; what
//!   that keeps and what it gives up is in `batch.rs`.
//! - By default a scope is a child of credbroker's own token, so it ends when that token does.
//!   This fails closed: the task loses its credentials early. With `scope_role`, scopes are
//!   created through a token role that may make them orphans, so they live exactly as long as
//!   their task.
//!
//! **The one gap, on OpenBao's side.** If credbroker is SIGKILLed while OpenBao is creating a
//! credential, OpenBao sees the connection close and abandons the request half-way (its log says
//! `failed to register lease`). What is left is a PostgreSQL role, or a lease not indexed under
//! the scope token, or both: revoking the scope cannot find them, and credbroker never saw them.
//! They were never delivered (OpenBao's audit log has no response carrying them) and end with
//! their own TTL: the role's `VALID UNTIL` and the lease's expiry. Keep the database roles'
//! `default_ttl` short to bound that. The crash test
//! (`vault::sigkill_at_random_moments_leaves_no_lease_and_every_task_accounted_for`) tolerates
//! such leftovers only when OpenBao's audit log shows they were never handed out and
//! credbroker's audit log never mentions them; it first proves that the same audit logs do name
//! the credentials that were delivered, and every credential that was delivered must be gone.
//!
//! **The client** (`client.rs`) is a small one on reqwest rather than vaultrs: vaultrs 0.8 has no
//! `sys/leases/*` endpoints and no lease-bearing generic read, keeps the token as a plain
//! `String` in a `Debug` struct, and needs `&mut` to switch tokens. Here every token stays in a
//! `SecretValue`, and `X-Vault-Token` is a sensitive header value.
//!
//! **credbroker's own token** (`auth.rs`) comes from a file, a systemd credential, or AppRole. A
//! background loop keeps it alive: `lookup-self`, then `renew-self` once less than half its life
//! (or two minutes) is left, and a fresh login (or a re-read of the rotated file) when it cannot
//! be renewed. A 403 whose cause is the token itself (confirmed with `lookup-self`) triggers one
//! re-login and a retry.
//!
//! **Errors** map to what the broker must do: unreachable, 5xx or sealed (503) → `Unavailable`;
//! 429 → `RateLimited`; 403 on a grant's path → `Denied`, which reaches the caller as
//! PERMISSION_DENIED naming the grant and saying it is a configuration problem; no answer to a
//! create or read → `OutcomeUnknown`. A grant's `policies` are never narrowed by a request
//! (an explicit deny wins in Vault, so dropping a policy can *add* access), and Vault compares
//! them without case. `check-config --online` asks `sys/capabilities-self` for every path the
//! instance and its grants need, and reads `scope_role` (if it may) to know which of Vault's
//! policy rules applies to scope tokens (`policies.rs`).
//!
//! Configuration (`[[provider]] type = "vault"`; grant parameters are in `grants.rs`):
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
//! # optional: keep 16 scope tokens made ahead of need, each living 2 minutes (`pool.rs`):
//! # a BeginTask then skips a storage write in OpenBao, at the cost of scope metadata that
//! # cannot name the task (the link is in credbroker's journal) and of a scope that, if
//! # credbroker dies within milliseconds of the answer, may outlive its task by `scope_pool_ttl`.
//! scope_pool = 16
//! scope_pool_ttl = "2m"
//! # optional: scopes as batch tokens (`batch.rs`): no OpenBao storage write per task beyond the
//! # credential's own; unknown-outcome credentials then end at the task's expiry rather than its
//! # end, Vault credentials are not renewable, and workload-token grants are refused.
//! scope_type = "batch"                 # default "service"; not with scope_pool or scope_role
//! ```

mod auth;
mod batch;
mod client;
mod grants;
mod issue;
mod policies;
mod pool;
mod provider;
mod revoke;
mod scope;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use credbroker_provider_api::settings::{Fields, MAX_TIMEOUT, MIN_TIMEOUT, check_endpoint};
use credbroker_provider_api::{Env, ParamError, Params, Provider, ProviderFactory};

use auth::SelfToken;
use client::Client;
use provider::{Inner, VaultProvider};
use settings::{ca_file, login, scope_type};

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
        let timeout = f
            .duration("timeout", MIN_TIMEOUT, MAX_TIMEOUT)
            .unwrap_or(Duration::from_secs(5));
        let ca = ca_file(&mut f);
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
        let pool_size = f.int("scope_pool", 0..=1024).unwrap_or(0) as usize;
        let batch_scopes = scope_type(&mut f, scope_role.is_some(), pool_size > 0);
        let pool_ttl = f
            .duration(
                "scope_pool_ttl",
                Duration::from_secs(30),
                Duration::from_secs(3600),
            )
            .unwrap_or(Duration::from_secs(120));
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
        let client = Client::new(&address, namespace, ca, timeout).map_err(|e| vec![e])?;
        let inner = Arc::new(Inner {
            name: name.to_string(),
            client,
            token: SelfToken::new(login),
            scope_policies,
            scope_role,
            batch_scopes,
            batch: batch::BatchScopes::default(),
            pool: (pool_size > 0).then(|| Arc::new(pool::Pool::new(pool_size, pool_ttl))),
        });
        Ok(Arc::new(VaultProvider {
            inner,
            started: std::sync::atomic::AtomicBool::new(false),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    struct Creds(std::path::PathBuf);
    impl Env for Creds {
        fn var(&self, key: &str) -> Option<String> {
            (key == "CREDENTIALS_DIRECTORY").then(|| self.0.display().to_string())
        }
    }

    fn problems(v: Value, env: &dyn Env) -> Vec<String> {
        let Value::Object(p) = v else { return vec![] };
        match VaultFactory.build("vault", &p, env) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn settings_report_every_problem_with_its_key_nested_ones_included() {
        let dir = std::env::temp_dir().join(format!("cb-vault-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        std::fs::write(dir.join("vault-token"), "s.test\n").unwrap_or_default();
        std::fs::set_permissions(
            dir.join("vault-token"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("the test token should be made private");
        let env = Creds(dir.clone());
        let e = problems(
            serde_json::json!({
                "address": "http://vault.example.com:8200", "timeout": "soon", "colour": 1,
                "approle": { "mount": "approle", "flavour": "x" },
            }),
            &env,
        );
        for needle in [
            "address: must be https (http only on loopback)",
            "timeout: \"soon\" is not a duration",
            "colour: unknown setting",
            "approle.role_id: is required",
            "approle.secret_id_credential: needs secret_id_file or secret_id_credential",
            "approle.flavour: unknown setting",
        ] {
            assert!(
                e.iter().any(|x| x.contains(needle)),
                "{needle} not in {e:#?}"
            );
        }
        let both = problems(
            serde_json::json!({
                "address": "http://127.0.0.1:8200", "token_credential": "vault-token",
                "approle": { "role_id": "r", "secret_id_credential": "vault-token" },
            }),
            &env,
        );
        assert_eq!(both, ["approle: give a token or AppRole, not both"]);
        let none = problems(
            serde_json::json!({ "address": "http://127.0.0.1:8200" }),
            &env,
        );
        assert_eq!(
            none,
            ["token_credential: give token_credential, token_file or approle"]
        );
        let missing = problems(
            serde_json::json!({ "address": "http://127.0.0.1:8200", "token_credential": "nope" }),
            &env,
        );
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(
            missing[0].contains("nope is not a readable file"),
            "{missing:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn batch_scopes_refuse_a_pool_a_role_a_workload_token_grant_and_an_unknown_type() {
        let dir = credentials("batch");
        let env = Creds(dir.clone());
        let with = |extra: Value| {
            let mut v = serde_json::json!({
                "address": "http://127.0.0.1:8200", "token_credential": "vault-token",
            });
            if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
                m.extend(x);
            }
            problems(v, &env)
        };
        assert_eq!(
            with(serde_json::json!({ "scope_type": "batch", "scope_pool": 4 })),
            [
                "scope_type: batch scopes cost OpenBao no storage write, so they are not pooled: \
                 remove scope_pool"
            ]
        );
        assert_eq!(
            with(serde_json::json!({ "scope_type": "batch", "scope_role": "r" })),
            ["scope_type: batch scopes are made without a token role: remove scope_role"]
        );
        assert_eq!(
            with(serde_json::json!({ "scope_type": "Batch" })),
            ["scope_type: \"Batch\": expected \"service\" or \"batch\""]
        );
        assert!(with(serde_json::json!({ "scope_type": "service", "scope_pool": 4 })).is_empty());

        let build = |scope_type: &str| {
            let Value::Object(p) = serde_json::json!({
                "address": "http://127.0.0.1:8200", "token_credential": "vault-token",
                "scope_type": scope_type,
            }) else {
                unreachable!()
            };
            VaultFactory
                .build("vault", &p, &env)
                .unwrap_or_else(|e| panic!("{e:?}"))
        };
        let grant = |v: Value| match v {
            Value::Object(p) => p,
            _ => unreachable!(),
        };
        let token = grant(serde_json::json!({ "kind": "token", "policies": ["p"] }));
        let dynamic = grant(serde_json::json!({ "kind": "dynamic", "path": "database/creds/r" }));
        let batch = build("batch");
        let refused: Vec<String> = batch
            .check_grant(&token)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].starts_with("kind: a workload token cannot be made under a batch scope"),
            "{refused:?}"
        );
        assert!(batch.check_grant(&dynamic).is_ok());
        assert!(build("service").check_grant(&token).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A `$CREDENTIALS_DIRECTORY` of its own for a test, holding a private `vault-token`.
    fn credentials(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cb-vault-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the test directory should be made");
        let token = dir.join("vault-token");
        std::fs::write(&token, "s.test\n").expect("the test token should be written");
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("the test token should be made private");
        dir
    }

    #[test]
    fn ca_file_must_be_absolute_and_its_pem_problems_are_reported_under_ca_file() {
        let dir = credentials("ca-file");
        let env = Creds(dir.clone());
        let with_ca = |ca: &str| {
            problems(
                serde_json::json!({
                    "address": "http://127.0.0.1:8200", "token_credential": "vault-token",
                    "ca_file": ca,
                }),
                &env,
            )
        };
        assert_eq!(
            with_ca("vault-ca.pem"),
            ["ca_file: vault-ca.pem is relative; write an absolute path"]
        );

        let garbled = dir.join("garbled.pem");
        std::fs::write(
            &garbled,
            "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
        )
        .expect("the garbled PEM should be written");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate in here\n")
            .expect("the empty PEM should be written");
        for (file, why) in [
            (&garbled, "not a PEM bundle"),
            (&empty, "no PEM certificate in it"),
        ] {
            let e = with_ca(&file.display().to_string());
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].starts_with(&format!("ca_file: {}: {why}", file.display())),
                "{e:?}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
