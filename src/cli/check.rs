//! `credbroker check-config`: everything `serve` checks before binding a socket, without
//! binding one. `--online` also reaches each issuer for its metadata and keys.

use std::path::Path;
use std::process::ExitCode;

use credbroker_provider_api::{Env, Params};

use crate::broker::{Runtime, preflight};
use crate::providers::Registry;

pub(super) async fn run(
    path: &Path,
    online: bool,
    registry: &Registry,
    env: &dyn Env,
) -> anyhow::Result<ExitCode> {
    let runtime = preflight::load(path, registry, env, None)?;
    let config = &runtime.config;
    let summary = format!(
        "{} issuer(s), {} workload(s), {} grant(s), {} provider(s)",
        config.issuers.len(),
        config.workloads.len(),
        config.grants.len(),
        config.providers.len()
    );
    if config.audit.head_key.is_none() {
        outln!("warning: {UNSEALED}\n")?;
    }
    for (name, instance) in runtime.providers.iter() {
        let grants = grants_of(&runtime, name);
        for paragraph in instance.provider.explain(&grants) {
            outln!("provider {name} needs:\n{paragraph}\n")?;
        }
    }
    if !online {
        outln!(
            "ok: {}: {summary} (offline checks; --online also asks the issuers and providers)",
            path.display()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut failures = 0usize;
    let failed = runtime.verifier.load_keys().await;
    for s in runtime.verifier.statuses() {
        match failed.iter().find(|(u, _)| *u == s.url) {
            Some((_, e)) => {
                failures += 1;
                outln!("issuer {}: FAILED: {e}", s.url)?;
            }
            None => outln!("issuer {}: ok, {} key(s)", s.url, s.keys)?,
        }
    }
    for (name, instance) in runtime.providers.iter() {
        let grants = grants_of(&runtime, name);
        // One verdict per provider: its health and what its grants need, together.
        let mut problems = instance.provider.check_online(&grants).await;
        let h = instance.provider.health().await;
        if !h.healthy {
            problems.insert(0, format!("unhealthy: {}", h.detail));
        }
        let kind = &instance.config.kind;
        if problems.is_empty() {
            let detail = if h.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", h.detail)
            };
            outln!("provider {name} ({kind}): ok{detail}")?;
        } else {
            failures += problems.len();
            outln!("provider {name} ({kind}): FAILED")?;
            for p in &problems {
                outln!("  {p}")?;
            }
        }
    }
    // The last line is the verdict, and it says what the exit code says.
    if failures == 0 {
        outln!(
            "ok: {}: {summary}, issuers and providers reachable",
            path.display()
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        outln!(
            "FAILED: {}: {failures} problem(s) found online",
            path.display()
        )?;
        Ok(ExitCode::FAILURE)
    }
}

/// Why a configuration without an audit head key is worth a warning.
pub(crate) const UNSEALED: &str = "[audit] has no head key: `audit verify` finds an edited or \
     deleted record, but not a cut-off or rebuilt tail. Create one (`credbroker keygen`) and set \
     head_key_credential or head_key_file";

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
