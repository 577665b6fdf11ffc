//! `credbroker check-config`: everything `serve` checks before binding a socket, without
//! binding one. `--online` also reaches each issuer for its metadata and keys.

use std::path::Path;
use std::process::ExitCode;

use credbroker_provider_api::{Env, Params};

use crate::broker::Runtime;
use crate::config::Config;
use crate::journal::seal::Sealer;
use crate::providers::Registry;
use crate::server::config_errors;

pub(super) async fn run(
    path: &Path,
    online: bool,
    registry: &Registry,
    env: &dyn Env,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let summary = format!(
        "{} issuer(s), {} workload(s), {} grant(s), {} provider(s)",
        config.issuers.len(),
        config.workloads.len(),
        config.grants.len(),
        config.providers.len()
    );
    let runtime = Runtime::build(config, registry, env, None)
        .map_err(|errors| config_errors(path, errors))?;
    Sealer::load(&runtime.config.journal.key, env)?;
    if let Some(source) = &runtime.config.audit.head_key {
        source
            .audit_key(env)
            .map_err(|e| anyhow::anyhow!("audit head key: {e}"))?;
    }
    outln!("{}: ok: {summary}", path.display())?;
    for (name, instance) in runtime.providers.iter() {
        let grants = grants_of(&runtime, name);
        for paragraph in instance.provider.explain(&grants) {
            outln!("\nprovider {name} needs:\n{paragraph}")?;
        }
    }
    if !online {
        return Ok(ExitCode::SUCCESS);
    }
    let failed = runtime.verifier.load_keys().await;
    for s in runtime.verifier.statuses() {
        match failed.iter().find(|(u, _)| *u == s.url) {
            Some((_, e)) => outln!("issuer {}: FAILED: {e}", s.url)?,
            None => outln!("issuer {}: ok, {} key(s)", s.url, s.keys)?,
        }
    }
    let mut bad = !failed.is_empty();
    for (name, instance) in runtime.providers.iter() {
        let grants = grants_of(&runtime, name);
        let problems = instance.provider.check_online(&grants).await;
        for p in &problems {
            outln!("provider {name}: FAILED: {p}")?;
        }
        bad |= !problems.is_empty();
        let h = instance.provider.health().await;
        outln!(
            "provider {name} ({}): {}{}",
            instance.config.kind,
            if h.healthy { "ok" } else { "FAILED" },
            if h.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", h.detail)
            }
        )?;
        bad |= !h.healthy;
    }
    Ok(if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The grants `(name, params)` that issue from the provider instance `provider`.
fn grants_of<'a>(runtime: &'a Runtime, provider: &str) -> Vec<(&'a str, &'a Params)> {
    let mut grants: Vec<(&str, &Params)> = runtime
        .config
        .grants
        .values()
        .filter(|g| g.provider == provider)
        .map(|g| (g.name.as_str(), &g.params))
        .collect();
    grants.sort_unstable_by_key(|(name, _)| *name);
    grants
}
