//! Provider instances, held by name (as SPIRE's plugin repository does): grants name the
//! instance they issue from, and the broker looks it up here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker_provider_api::{
    Env, ErrorKind as PKind, ParamRule, Provider, ProviderError, ProviderFactory,
};
use tokio::sync::Semaphore;

use crate::config::{Config, ConfigError, ProviderConfig};

/// The provider kinds this binary can build.
#[derive(Clone, Default)]
pub struct Registry {
    factories: HashMap<&'static str, Arc<dyn ProviderFactory>>,
}

impl Registry {
    /// The providers shipped in the `credbroker` binary.
    pub fn builtin() -> Self {
        Self::default()
            .with(Arc::new(credbroker_provider_vault::VaultFactory))
            .with(Arc::new(credbroker_provider_aws::AwsFactory))
            .with(Arc::new(credbroker_provider_github::GithubFactory))
            .with(Arc::new(credbroker_provider_oauth::OauthFactory))
    }

    pub fn with(mut self, factory: Arc<dyn ProviderFactory>) -> Self {
        self.factories.insert(factory.kind(), factory);
        self
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k: Vec<_> = self.factories.keys().copied().collect();
        k.sort_unstable();
        k
    }
}

/// One configured provider instance (`[[provider]]`), the limit on concurrent calls to it, and
/// how its backend has been answering.
pub struct Instance {
    pub provider: Arc<dyn Provider>,
    pub config: ProviderConfig,
    pub limit: Arc<Semaphore>,
    /// What the broker's own calls to this instance found (see [`Observed`]).
    pub observed: Observed,
}

impl Instance {
    /// Calls the provider within its concurrency limit and `timeout`, and notes how the backend
    /// answered. A timeout after the call started means the outcome is unknown.
    pub async fn call<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let _permit = tokio::time::timeout(timeout, self.limit.acquire())
            .await
            .map_err(|_| {
                ProviderError::new(
                    PKind::Unavailable,
                    "too many calls in flight to this provider",
                )
            })?
            .map_err(|_| ProviderError::new(PKind::Unavailable, "provider is shutting down"))?;
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::new(
                PKind::OutcomeUnknown,
                format!("no answer within {}s", timeout.as_secs_f64()),
            )),
        };
        match &result {
            Err(e)
                if matches!(
                    e.kind,
                    PKind::Unavailable
                        | PKind::OutcomeUnknown
                        | PKind::RateLimited
                        | PKind::Unauthorized
                ) =>
            {
                self.observed.failed(SystemTime::now(), &e.message);
            }
            _ => self.observed.answered(),
        }
        result
    }
}

/// How the backend answered the broker's most recent calls. A provider's own `health()` knows
/// only what it last checked itself (Vault: its token, minutes ago); during an outage every
/// issue and revocation fails while that still says healthy. `Status` combines both.
#[derive(Default)]
pub struct Observed {
    inner: std::sync::Mutex<ObservedInner>,
}

#[derive(Default)]
struct ObservedInner {
    /// Consecutive failures of the backend's making since the last answer.
    failures: u32,
    last_error: Option<String>,
    since: Option<SystemTime>,
    last_at: Option<SystemTime>,
}

/// The backend is failing: how many calls in a row, since when, the last error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failing {
    pub failures: u32,
    pub since: SystemTime,
    pub last_at: SystemTime,
    pub last_error: String,
}

impl Observed {
    /// The backend answered (whatever it said: a refusal is an answer).
    pub fn answered(&self) {
        if let Ok(mut o) = self.inner.lock() {
            *o = ObservedInner::default();
        }
    }

    /// The backend did not answer, or failed (unavailable, timeout, rate limit, credbroker's
    /// own credentials refused).
    pub fn failed(&self, now: SystemTime, error: &str) {
        if let Ok(mut o) = self.inner.lock() {
            o.failures = o.failures.saturating_add(1);
            o.since.get_or_insert(now);
            o.last_at = Some(now);
            o.last_error = Some(error.to_string());
        }
    }

    pub fn failing(&self) -> Option<Failing> {
        let o = self.inner.lock().ok()?;
        Some(Failing {
            failures: o.failures,
            since: o.since?,
            last_at: o.last_at?,
            last_error: o.last_error.clone().unwrap_or_default(),
        })
        .filter(|f| f.failures > 0)
    }
}

/// The instances of one configuration.
#[derive(Default)]
pub struct ProviderSet {
    instances: HashMap<String, Arc<Instance>>,
}

impl ProviderSet {
    /// Starts every instance's background work (see `Provider::start`; idempotent).
    pub fn start(&self) {
        for i in self.instances.values() {
            i.provider.start();
        }
    }

    /// Builds every instance and checks every grant's parameters against its provider,
    /// reporting all problems. Instances whose configuration did not change are taken over from
    /// `previous` (so a reload keeps their connections and tokens).
    pub fn build(
        config: &Config,
        registry: &Registry,
        env: &dyn Env,
        previous: Option<&ProviderSet>,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut instances = HashMap::new();
        for pc in &config.providers {
            if let Some(old) = previous
                .and_then(|p| p.instances.get(&pc.name))
                .filter(|s| s.config == *pc)
            {
                instances.insert(pc.name.clone(), Arc::clone(old));
                continue;
            }
            let Some(factory) = registry.factories.get(pc.kind.as_str()) else {
                errors.push(ConfigError {
                    path: format!("provider.{}.type", pc.name),
                    line: config.key_lines.of(&format!("provider.{}.type", pc.name)),
                    message: format!(
                        "unknown provider type {:?}; this build knows {:?}",
                        pc.kind,
                        registry.kinds()
                    ),
                });
                continue;
            };
            match factory.build(&pc.name, &pc.settings, env) {
                Ok(provider) => {
                    let limit = Arc::new(Semaphore::new(config.broker.provider_concurrency));
                    instances.insert(
                        pc.name.clone(),
                        Arc::new(Instance {
                            provider,
                            config: pc.clone(),
                            limit,
                            observed: Observed::default(),
                        }),
                    );
                }
                Err(errs) => errors.extend(errs.into_iter().map(|e| {
                    let path = format!("provider.{}.{}", pc.name, e.path);
                    ConfigError {
                        line: config.key_lines.of(&path),
                        path,
                        message: e.message,
                    }
                })),
            }
        }
        for (name, grant) in &config.grants {
            if let Some(instance) = instances.get(&grant.provider)
                && let Err(errs) = instance.provider.check_grant(&grant.params)
            {
                errors.extend(errs.into_iter().map(|e| {
                    let path = format!("grant.{name}.params.{}", e.path);
                    ConfigError {
                        line: config.key_lines.of(&path),
                        path,
                        message: e.message,
                    }
                }));
            }
        }
        // Instances dropped from the configuration may still hold leases: keep them, for
        // revocation only (grants can no longer name them).
        if let Some(prev) = previous {
            for (name, instance) in &prev.instances {
                instances
                    .entry(name.clone())
                    .or_insert_with(|| Arc::clone(instance));
            }
        }
        if errors.is_empty() {
            Ok(Self { instances })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Instance>> {
        self.instances.get(name)
    }

    /// The instances, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<Instance>)> {
        let mut instances: Vec<_> = self.instances.iter().collect();
        instances.sort_unstable_by_key(|(name, _)| *name);
        instances.into_iter()
    }

    /// Each instance's grant parameter rules (narrowing, case).
    pub fn param_rules(&self) -> HashMap<String, &'static [ParamRule]> {
        self.instances
            .iter()
            .map(|(k, s)| (k.clone(), s.provider.param_rules()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credbroker_provider_api::EmptyEnv;

    /// Providers see only values; their problems still come back with the file's line, every
    /// one of them at once.
    #[test]
    fn provider_problems_are_reported_all_at_once_with_their_lines() {
        let text = r#"[server]
broker_socket = "/run/b.sock"
admin_socket = "/run/a.sock"
[journal]
path = "/tmp/j.db"
key_file = "/tmp/k"
[[issuer]]
url = "https://as.example"
[[provider]]
name = "aws"
type = "aws"
regoin = "eu-west-1"
timeout = 5
max_attempts = 99
endpoint_url = "http://example.com"

[[provider]]
name = "gh"
type = "github"
app_id = "not a number"
[[provider]]
name = "aws-ok"
type = "aws"

[[grant]]
name = "s3"
provider = "aws-ok"
scopes = ["mcp.tool:s3.read"]
max_ttl = "10m"
[grant.params]
role_arn = "arn:aws:iam::123456789012:role/r"
duration = 20

[[workload]]
name = "w"
uid = 1000
audience = "https://mcp.example/s3"
grants = ["s3"]
"#;
        let config = Config::parse(text, "test")
            .expect("the config should parse; provider checks come later");
        let errors = match ProviderSet::build(&config, &Registry::builtin(), &EmptyEnv, None) {
            Ok(_) => panic!("a configuration with provider problems was accepted"),
            Err(e) => e,
        };
        let found: Vec<(String, Option<usize>)> =
            errors.iter().map(|e| (e.path.clone(), e.line)).collect();
        for (path, line) in [
            ("provider.aws.regoin", 12),
            ("provider.aws.timeout", 13),
            ("provider.aws.max_attempts", 14),
            ("provider.aws.endpoint_url", 15),
            ("provider.gh.app_id", 20),
            ("grant.s3.params.duration", 32),
            ("provider.gh.private_key_credential", 17),
        ] {
            assert!(
                found.contains(&(path.to_string(), Some(line))),
                "{path} at line {line} missing from {found:?}"
            );
        }
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            shown
                .iter()
                .any(|e| e.starts_with("line 12: provider.aws.regoin:")),
            "{shown:?}"
        );
    }
}
