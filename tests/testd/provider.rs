//! A test-only provider with real, durable state, so tests can assert on what was issued and
//! revoked — across daemon crashes — without a real backend. Never part of the shipped binary.
//!
//! Instance settings: `state_dir` (required), `scoped` (bool: issue under a per-task scope, the
//! way Vault issues under a child token — revoking the scope revokes every credential issued
//! under it, recorded or not). Every issued credential is a file
//! `STATE_DIR/issued/LEASE_ID.json`; revoking moves it to `STATE_DIR/revoked/`. Tests steer
//! behaviour by creating files in `STATE_DIR`:
//!
//! * `fail-issue`   → issue answers Unavailable
//! * `deny-issue`   → issue answers Denied
//! * `hang-issue`   → issue records the credential, then never answers (outcome unknown)
//! * `fail-revoke`  → revoke and reconcile answer Unavailable (a provider outage)
//! * `slow-issue-ms`, `slow-revoke-ms` → contents: a delay in milliseconds before acting
//! * `slow-answer-ms` → a delay after the credential exists, before answering (a crash then
//!   leaves a credential the journal never heard of)
//!
//! While a delay runs, `<name>.waiting` exists (a test can act at that moment).
//!
//! Grant parameters: `label` (string), `items` (list of strings, narrowable), `floor_s`
//! (integer: a minimum lifetime, like STS's 15 minutes). Anything else is a config error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credbroker_provider_api::settings::Fields;
use credbroker_provider_api::{
    Credential, Env, ErrorKind, IssueRequest, Issued, LeaseRef, ParamError, ParamRule, Params,
    Provider, ProviderError, ProviderFactory, ProviderHealth, Reconciled, Renewed,
    RevocationHandle, Revoked, Role, SecretValue,
};
use serde_json::{Value, json};

pub(crate) struct TestFactory;

impl ProviderFactory for TestFactory {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn build(
        &self,
        _name: &str,
        config: &Params,
        _env: &dyn Env,
    ) -> Result<Arc<dyn Provider>, Vec<ParamError>> {
        let mut f = Fields::new(config);
        let scoped = f.get("scoped", "true or false").unwrap_or(false);
        let dir = f
            .required::<String>("state_dir", "a directory")
            .map(PathBuf::from)
            .unwrap_or_default();
        let errors = f.finish();
        if !errors.is_empty() {
            return Err(errors);
        }
        for sub in ["issued", "revoked", "scopes", "revoked-scopes"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| vec![ParamError::new("state_dir", e.to_string())])?;
        }
        Ok(Arc::new(TestProvider { dir, scoped }))
    }
}

struct TestProvider {
    dir: PathBuf,
    scoped: bool,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sha256_hex(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    hex::encode(d.as_ref())
}

fn unavailable(msg: &str) -> ProviderError {
    ProviderError::new(ErrorKind::Unavailable, msg)
}

impl TestProvider {
    fn flag(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    async fn delay(&self, name: &str) {
        if let Some(ms) = std::fs::read_to_string(self.dir.join(name))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            let waiting = self.dir.join(format!("{name}.waiting"));
            let _ = std::fs::write(&waiting, b"");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let _ = std::fs::remove_file(&waiting);
        }
    }

    fn issued(&self, lease_id: &str) -> PathBuf {
        self.dir.join("issued").join(format!("{lease_id}.json"))
    }

    fn revoked(&self, lease_id: &str) -> PathBuf {
        self.dir.join("revoked").join(format!("{lease_id}.json"))
    }

    /// Writes atomically, so a crash never leaves half a record.
    fn write(path: &Path, v: &Value) -> Result<(), ProviderError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, v.to_string()).map_err(|e| unavailable(&e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| unavailable(&e.to_string()))
    }

    /// Revokes a scope and, like Vault revoking a parent token, everything issued under it.
    fn take_back_scope(&self, lease_id: &str) -> Result<bool, ProviderError> {
        let from = self.dir.join("scopes").join(format!("{lease_id}.json"));
        if !from.exists() {
            return Ok(false);
        }
        let issued =
            std::fs::read_dir(self.dir.join("issued")).map_err(|e| unavailable(&e.to_string()))?;
        for entry in issued.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let record: Value = serde_json::from_str(&text).unwrap_or_default();
            if record["scope"] == lease_id {
                let _ = std::fs::rename(
                    entry.path(),
                    self.dir.join("revoked").join(entry.file_name()),
                );
            }
        }
        let to = self
            .dir
            .join("revoked-scopes")
            .join(format!("{lease_id}.json"));
        std::fs::rename(&from, to).map_err(|e| unavailable(&e.to_string()))?;
        Ok(true)
    }

    fn take_back(
        &self,
        lease_id: &str,
        secret: Option<&SecretValue>,
    ) -> Result<bool, ProviderError> {
        let from = self.issued(lease_id);
        let Ok(text) = std::fs::read_to_string(&from) else {
            return Ok(false);
        };
        let record: Value = serde_json::from_str(&text).map_err(|e| unavailable(&e.to_string()))?;
        if let Some(secret) = secret {
            // The handle's secret must be the one issued: proves the journal's sealed copy
            // survived a restart intact.
            if record["secret_sha256"].as_str() != Some(&sha256_hex(secret.expose())) {
                return Err(ProviderError::new(
                    ErrorKind::Unauthorized,
                    "revocation handle does not match",
                ));
            }
        }
        std::fs::rename(&from, self.revoked(lease_id)).map_err(|e| unavailable(&e.to_string()))?;
        Ok(true)
    }
}

#[async_trait::async_trait]
impl Provider for TestProvider {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn check_grant(&self, params: &Params) -> Result<(), Vec<ParamError>> {
        let mut f = Fields::params(params);
        f.get::<String>("label", "a string");
        f.strings("items");
        f.get::<u64>("floor_s", "a whole number of seconds");
        let errors = f.finish();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn param_rules(&self) -> &'static [ParamRule] {
        // `items` is an allow-list; `deny` is a list whose entries take access away (as Vault
        // policies can), so it is never narrowed; `names` is compared without case.
        const RULES: [ParamRule; 3] = [
            ParamRule::subset("items"),
            ParamRule::fixed("deny"),
            ParamRule::fixed("names").case_insensitive(),
        ];
        &RULES
    }

    fn scoped(&self) -> bool {
        self.scoped
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, ProviderError> {
        if req.role == Role::Scope {
            if self.flag("fail-scope") {
                return Err(unavailable("simulated outage opening the scope"));
            }
            let record = json!({ "lease_id": req.lease_id, "task_id": req.task.task_id, "expires_at": unix(req.expires_at) });
            Self::write(
                &self
                    .dir
                    .join("scopes")
                    .join(format!("{}.json", req.lease_id)),
                &record,
            )?;
            return Ok(Issued {
                credential: Credential::default(),
                handle: RevocationHandle {
                    reference: req.lease_id.to_string(),
                    secret: Some(SecretValue::new(format!("scope-{}", req.lease_id))),
                },
                expires_at: req.expires_at,
                renewable: true,
            });
        }
        if self.scoped && req.scope.and_then(|s| s.secret.as_ref()).is_none() {
            return Err(ProviderError::new(ErrorKind::Config, "no scope"));
        }
        // The contract: what `check_grant` refuses, `issue` refuses too.
        if let Err(errors) = self.check_grant(req.params) {
            let names: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!("grant parameters refused: {names:?}"),
            ));
        }
        self.delay("slow-issue-ms").await;
        if self.flag("fail-issue") {
            return Err(unavailable("simulated outage"));
        }
        if self.flag("deny-issue") {
            return Err(ProviderError::new(
                ErrorKind::Denied,
                "simulated permission denied",
            ));
        }
        let floor = req
            .params
            .get("floor_s")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let expires_at = req.expires_at.max(req.now + Duration::from_secs(floor));
        let mut raw = [0u8; 24];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| unavailable("no randomness"))?;
        let secret = SecretValue::new(format!("tp_{}", hex::encode(raw)));
        let record = json!({
            "lease_id": req.lease_id,
            "task_id": req.task.task_id,
            "grant": req.grant,
            "owner": req.task.owner,
            "client_id": req.task.client_id,
            "params": req.params,
            "expires_at": unix(expires_at),
            "secret_sha256": sha256_hex(secret.expose()),
            "scope": req.scope.map(|s| s.reference.clone()),
            // Whether the broker handed this provider the caller's token (it must not: only
            // providers that exchange it get it).
            "subject_token": req.subject_token.is_some(),
        });
        Self::write(&self.issued(req.lease_id), &record)?;
        self.delay("slow-answer-ms").await;
        if self.flag("hang-issue") {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let username = format!(
            "u-{}",
            &req.lease_id[req.lease_id.len().saturating_sub(12)..]
        );
        let mut credential = Credential::default();
        credential.public.insert("username".into(), username);
        credential
            .secret
            .insert("password".into(), secret.duplicate());
        Ok(Issued {
            credential,
            handle: RevocationHandle {
                reference: req.lease_id.to_string(),
                secret: Some(secret),
            },
            expires_at,
            renewable: true,
        })
    }

    async fn renew(
        &self,
        lease: &LeaseRef<'_>,
        expires_at: SystemTime,
        _now: SystemTime,
    ) -> Result<Renewed, ProviderError> {
        let path = self.issued(lease.lease_id);
        let text = std::fs::read_to_string(&path)
            .map_err(|_| ProviderError::new(ErrorKind::NotFound, "no such lease"))?;
        let mut record: Value =
            serde_json::from_str(&text).map_err(|e| unavailable(&e.to_string()))?;
        record["expires_at"] = json!(unix(expires_at));
        Self::write(&path, &record)?;
        Ok(Renewed { expires_at })
    }

    async fn revoke(
        &self,
        lease: &LeaseRef<'_>,
        _now: SystemTime,
    ) -> Result<Revoked, ProviderError> {
        self.delay("slow-revoke-ms").await;
        if self.flag("fail-revoke") {
            return Err(unavailable("simulated outage"));
        }
        if lease.role == Role::Scope {
            return Ok(if self.take_back_scope(lease.lease_id)? {
                Revoked::Revoked
            } else {
                Revoked::AlreadyGone
            });
        }
        match self.take_back(lease.lease_id, lease.handle.secret.as_ref())? {
            true => Ok(Revoked::Revoked),
            false => Ok(Revoked::AlreadyGone),
        }
    }

    async fn reconcile(
        &self,
        req: &IssueRequest<'_>,
        _now: SystemTime,
    ) -> Result<Reconciled, ProviderError> {
        if self.flag("fail-revoke") {
            return Err(unavailable("simulated outage"));
        }
        if req.role == Role::Scope {
            return Ok(if self.take_back_scope(req.lease_id)? {
                Reconciled::Revoked
            } else {
                Reconciled::NothingIssued
            });
        }
        match self.take_back(req.lease_id, None)? {
            true => Ok(Reconciled::Revoked),
            false => Ok(Reconciled::NothingIssued),
        }
    }

    async fn health(&self) -> ProviderHealth {
        ProviderHealth {
            healthy: self.dir.join("issued").is_dir(),
            detail: self.dir.display().to_string(),
        }
    }
}

/// `type = "noop"`: issues nothing and remembers nothing — the cost of the broker alone, for
/// benchmarks. Settings: `revoke_delay_ms` (a provider that answers revoke that slowly).
pub(crate) struct NoopFactory;

impl ProviderFactory for NoopFactory {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn build(
        &self,
        _name: &str,
        config: &Params,
        _env: &dyn Env,
    ) -> Result<Arc<dyn Provider>, Vec<ParamError>> {
        let mut errors = Vec::new();
        for key in config.keys() {
            if key != "revoke_delay_ms" && key != "issue_delay_ms" {
                errors.push(ParamError::new(key, "unknown setting"));
            }
        }
        let ms =
            |k: &str| Duration::from_millis(config.get(k).and_then(Value::as_u64).unwrap_or(0));
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Arc::new(Noop {
            issue_delay: ms("issue_delay_ms"),
            revoke_delay: ms("revoke_delay_ms"),
        }))
    }
}

struct Noop {
    issue_delay: Duration,
    revoke_delay: Duration,
}

#[async_trait::async_trait]
impl Provider for Noop {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn check_grant(&self, _params: &Params) -> Result<(), Vec<ParamError>> {
        Ok(())
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, ProviderError> {
        if !self.issue_delay.is_zero() {
            tokio::time::sleep(self.issue_delay).await;
        }
        Ok(Issued {
            credential: Credential::default(),
            handle: RevocationHandle {
                reference: req.lease_id.to_string(),
                secret: None,
            },
            expires_at: req.expires_at,
            renewable: false,
        })
    }

    async fn revoke(
        &self,
        _lease: &LeaseRef<'_>,
        _now: SystemTime,
    ) -> Result<Revoked, ProviderError> {
        if !self.revoke_delay.is_zero() {
            tokio::time::sleep(self.revoke_delay).await;
        }
        Ok(Revoked::Revoked)
    }

    async fn reconcile(
        &self,
        _req: &IssueRequest<'_>,
        _now: SystemTime,
    ) -> Result<Reconciled, ProviderError> {
        Ok(Reconciled::NothingIssued)
    }
}
