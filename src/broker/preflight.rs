//! Everything `serve`, a reload and `check-config` check before anything runs, in one pass:
//! the core configuration, every provider's settings and grant parameters, and every file the
//! configuration names (keys, JWKS, CA bundles). An operator sees every problem at once, each
//! with its key and line, and `serve` refuses exactly what `check-config` reports.

use std::path::Path;

use credbroker_provider_api::Env;

use super::Runtime;
use crate::config::{Config, ConfigError, ConfigErrors, KeySource};
use crate::providers::{ProviderSet, Registry};
use crate::token::KeySet;

/// Reads, checks and builds the runtime of the configuration at `path`.
pub fn load(
    path: &Path,
    registry: &Registry,
    env: &dyn Env,
    previous: Option<&Runtime>,
) -> Result<Runtime, ConfigErrors> {
    let source = path.display().to_string();
    let mut checked = Config::check_file(path);
    // Built once and kept: building a provider can start its background work (Vault keeps
    // its token alive), and a second, discarded set would do that work twice.
    let mut providers = None;
    let mut problems = Vec::new();
    if let Some(config) = &checked.config {
        problems = files(config, env);
        match ProviderSet::build(config, registry, env, previous.map(|p| &*p.providers)) {
            Ok(set) => providers = Some(set),
            Err(errors) => problems.extend(errors),
        }
    }
    checked.add(problems);
    let config = checked.finish(&source)?;
    let providers = match providers {
        Some(set) => set,
        None => ProviderSet::build(&config, registry, env, previous.map(|p| &*p.providers))
            .map_err(|errors| ConfigErrors {
                source: source.clone(),
                errors,
            })?,
    };
    let alert_key = super::alert_key(&config, env).map_err(|e| ConfigErrors {
        source: source.clone(),
        errors: vec![e],
    })?;
    let mut rt = Runtime::assemble(config, providers, previous)
        .map_err(|errors| ConfigErrors { source, errors })?;
    rt.alert_key = alert_key;
    Ok(rt)
}

/// Problems with the files the configuration names, found without the network.
fn files(config: &Config, env: &dyn Env) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut problem = |path: String, message: String| {
        out.push(ConfigError {
            line: config.key_lines.of(&path),
            path,
            message,
        });
    };
    let webhook = config
        .abuse
        .as_ref()
        .and_then(|a| a.webhook.as_ref())
        .map(|w| &w.secret);
    let keys = [
        ("journal", "key", Some(&config.journal.key)),
        ("audit", "head_key", config.audit.head_key.as_ref()),
        ("abuse", "webhook_secret", webhook),
    ];
    for (section, key, source) in keys {
        let Some(source) = source else { continue };
        let (path, file) = match source {
            // A relative path is reported by the configuration check already.
            KeySource::File(f) if !f.is_absolute() => continue,
            KeySource::File(f) => (format!("{section}.{key}_file"), Ok(f.clone())),
            // No name: the configuration check has said that neither or both were given.
            KeySource::Credential(name) if name.is_empty() => continue,
            KeySource::Credential(name) => (
                format!("{section}.{key}_credential"),
                credbroker_provider_api::settings::credential_path(env, name),
            ),
        };
        // The same rule for a credential as for a file: under systemd it is the service's
        // own, but `CREDENTIALS_DIRECTORY=… check-config` in a shell reads a directory on disk.
        let checked = file.and_then(|f| credbroker_provider_api::settings::check_secret_file(&f));
        if let Err(e) = checked.and_then(|()| source.read(env).map(drop)) {
            problem(path, e);
        }
    }
    for issuer in &config.issuers {
        let at = |key: &str| format!("issuer.{}.{key}", issuer.url);
        if let Some(f) = issuer.jwks_file.as_ref().filter(|f| f.is_absolute())
            && let Err(e) = KeySet::check_file(f, &issuer.algorithms)
        {
            problem(at("jwks_file"), e);
        }
        if let Some(f) = issuer.ca_file.as_ref().filter(|f| f.is_absolute())
            && let Err(e) = ca_bundle(f)
        {
            problem(at("ca_file"), e);
        }
    }
    out
}

/// A PEM bundle with at least one certificate, as the issuer's HTTP client will load it.
fn ca_bundle(path: &Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err(format!("{} holds no PEM certificate", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
