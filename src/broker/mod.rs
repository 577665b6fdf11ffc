//! The broker: tasks and leases, their state machine, and the loops that end them.
//!
//! Every transition is committed to the journal before it is acknowledged (or before the next
//! side effect depends on it: the intent to issue is durable before any provider is called).
//! The in-memory [`State`] mirrors the live part of the journal for the request path; the journal
//! stays the truth, and [`Broker::recover`] rebuilds memory from it after a restart.
//!
//! Locks: the state mutex is never held across an await. Operations on one task (begin, renew,
//! end, retry) are serialised by that task's own async lock, so the hot path never waits on an
//! unrelated task.

mod abuse;
mod alerts;
mod begin;
mod block_ends;
mod blocks;
mod call_checks;
mod calls;
mod clients;
mod end;
mod error;
mod failed;
mod gate;
#[cfg(test)]
mod harness;
mod intent;
mod intern;
mod issue;
mod live;
mod plan;
pub mod preflight;
mod recheck;
mod recover;
mod refusals;
mod renew;
mod replay;
mod respond;
mod retention;
mod revoke;
mod revoker;
mod settle;
mod signals;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use credbroker_provider_api::Env;
use tokio::sync::Notify;

use crate::config::Config;
use crate::journal::rows::{LeaseState, TaskState};
use crate::journal::seal::Sealer;
use crate::journal::{Journal, Op};
use crate::policy::Policy;
use crate::providers::{ProviderSet, Registry};
use crate::record::AuditRecord;
use crate::time::Clock;
use crate::token::{IssuerStatus, Verifier};

pub use alerts::AlertKey;
pub use begin::{BeginRequest, Begun, IssuedCredential};
pub use blocks::{BlockAsk, Who};
pub use calls::{CallReport, CallResult, Caller};
pub use clients::ClientView;
pub use end::Ender;
pub use error::{BrokerError, ErrorKind};
pub use live::{LeaseSummary, TaskSummary};
pub use recover::Recovery;
pub use renew::{RenewRequest, check_task_id};
pub use signals::Receiver;

use live::State;

/// Everything derived from one configuration. Replaced whole on reload.
pub struct Runtime {
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    pub policy: Policy,
    pub providers: Arc<ProviderSet>,
    pub loaded_at: SystemTime,
    /// The abuse webhook's signing key, when one is configured.
    pub alert_key: Option<Arc<AlertKey>>,
    /// The configuration's client registry, indexed.
    clients: clients::ClientIndex,
    /// Shared Signals transmitters, with their keys and bearer tokens.
    receivers: signals::Receivers,
    refreshers: Vec<tokio::task::JoinHandle<()>>,
}

impl Runtime {
    /// Builds a runtime from a validated configuration. Providers unchanged since `previous`
    /// are kept; so is the verifier (and its keys and cache) when the issuers did not change.
    pub fn build(
        config: Config,
        registry: &Registry,
        env: &dyn Env,
        previous: Option<&Runtime>,
    ) -> Result<Self, Vec<crate::config::ConfigError>> {
        let providers =
            ProviderSet::build(&config, registry, env, previous.map(|p| &*p.providers))?;
        let alert_key = alert_key(&config, env).map_err(|e| vec![e])?;
        let mut rt = Self::assemble(config, providers, previous)?;
        rt.alert_key = alert_key;
        Ok(rt)
    }

    /// A runtime around providers already built for `config`.
    pub fn assemble(
        config: Config,
        providers: ProviderSet,
        previous: Option<&Runtime>,
    ) -> Result<Self, Vec<crate::config::ConfigError>> {
        let reuse = previous
            .filter(|p| p.config.issuers == config.issuers && p.config.tokens == config.tokens);
        let verifier = match reuse {
            Some(p) => Arc::clone(&p.verifier),
            None => Arc::new(Verifier::new(&config.issuers, &config.tokens).map_err(|e| {
                vec![crate::config::ConfigError {
                    path: "issuer".into(),
                    line: None,
                    message: e,
                }]
            })?),
        };
        let policy = Policy::new(&config, providers.param_rules());
        let clients = clients::index(&config.clients);
        let receivers = signals::receivers(config.signals.as_ref()).map_err(|message| {
            vec![crate::config::ConfigError {
                path: "transmitter".into(),
                line: None,
                message,
            }]
        })?;
        Ok(Self {
            config: Arc::new(config),
            verifier,
            policy,
            providers: Arc::new(providers),
            loaded_at: SystemTime::now(),
            alert_key: None,
            clients,
            receivers,
            refreshers: Vec::new(),
        })
    }

    /// Starts the issuers' key refresh loops (a no-op for a reused verifier: its loops run on)
    /// and the providers' background work.
    pub fn start_refresh(&mut self, previous: Option<&Runtime>) {
        self.providers.start();
        match previous {
            Some(p) if Arc::ptr_eq(&p.verifier, &self.verifier) => {}
            _ => self.refreshers = self.verifier.spawn_refresh(),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for h in &self.refreshers {
            h.abort();
        }
    }
}

/// The abuse webhook's signing key, read from its file or credential.
pub(crate) fn alert_key(
    config: &Config,
    env: &dyn Env,
) -> Result<Option<Arc<AlertKey>>, crate::config::ConfigError> {
    let Some(hook) = config.abuse.as_ref().and_then(|a| a.webhook.as_ref()) else {
        return Ok(None);
    };
    let key = hook
        .secret
        .read(env)
        .map_err(|message| crate::config::ConfigError {
            path: "abuse.webhook_secret".into(),
            line: None,
            message,
        })?;
    Ok(Some(Arc::new(AlertKey::new(&key))))
}

/// Counts for `Status` and sd_notify.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub active_tasks: u64,
    pub active_leases: u64,
    pub revocation_backlog: u64,
    /// provider → (active leases, revocation backlog)
    pub by_provider: std::collections::BTreeMap<String, (u64, u64)>,
}

pub struct Broker {
    journal: Journal,
    sealer: Arc<Sealer>,
    runtime: ArcSwap<Runtime>,
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    wake_revoker: Notify,
    wake_reaper: Notify,
    started_at: SystemTime,
    intern: Arc<intern::Interner>,
    refusals: refusals::RefusalLimiter,
    /// Operators' client registry entries, and the clients whose first sight is recorded.
    registry: clients::Registry,
    /// Blocks in force, and the tasks they cover waiting to be ended by the block loop.
    blocks: blocks::Index,
    block_ends: Mutex<Vec<(crate::journal::rows::Text, Ender)>>,
    wake_blocker: Notify,
    detectors: abuse::Detectors,
    /// Active tasks' tokens, for `recheck_active` issuers only.
    held: recheck::HeldTokens,
    wake_alerts: Notify,
    /// Fed by the journal (an observer of committed records) and by issue latencies.
    metrics: Arc<crate::metrics::Metrics>,
    /// The idempotency keys of BeginTasks whose intent is not yet in SQLite (`intent`).
    keys_in_flight: intent::KeysInFlight,
    /// Intents a failing journal left in the intent log only (`intent::Kept`).
    kept_intents: intent::KeptIntents,
}

impl Broker {
    /// `metrics` should be an observer of `journal` (`Journal::open_observed`), so its
    /// counters follow the committed audit records.
    pub fn new(
        journal: Journal,
        sealer: Sealer,
        runtime: Runtime,
        clock: Arc<dyn Clock>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let started_at = clock.now();
        Self {
            journal,
            sealer: Arc::new(sealer),
            runtime: ArcSwap::from_pointee(runtime),
            state: Mutex::new(State::default()),
            clock,
            wake_revoker: Notify::new(),
            wake_reaper: Notify::new(),
            started_at,
            intern: Arc::default(),
            refusals: refusals::RefusalLimiter::default(),
            registry: clients::Registry::default(),
            blocks: blocks::Index::default(),
            block_ends: Mutex::default(),
            wake_blocker: Notify::new(),
            detectors: abuse::Detectors::default(),
            held: recheck::HeldTokens::default(),
            wake_alerts: Notify::new(),
            metrics,
            keys_in_flight: Mutex::default(),
            kept_intents: Mutex::default(),
        }
    }

    /// The live state, or `state_poisoned`: a panic while it was held may have left it half
    /// updated, and nothing proceeds on half-updated memory. Logged every time it is refused;
    /// restarting the daemon rebuilds memory from the journal, which stays the truth.
    pub(crate) fn live_state(&self) -> Result<std::sync::MutexGuard<'_, State>, BrokerError> {
        self.state.lock().map_err(|_| {
            tracing::error!(
                "the broker's in-memory state was poisoned by a panic; refusing to use it. \
                 Restart the daemon: recovery rebuilds it from the journal"
            );
            BrokerError::new(
                ErrorKind::Internal,
                "state_poisoned",
                "the broker's state is unusable after an internal error; restart the daemon",
            )
        })
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Swaps in a new runtime (configuration reload). Requests in flight finish on the old one.
    pub fn replace_runtime(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    pub fn uptime(&self) -> Duration {
        self.clock
            .now()
            .duration_since(self.started_at)
            .unwrap_or_default()
    }

    pub fn issuer_statuses(&self) -> Vec<IssuerStatus> {
        self.runtime().verifier.statuses()
    }

    pub fn counts(&self) -> Counts {
        let Ok(state) = self.live_state() else {
            return Counts::default();
        };
        let mut c = Counts::default();
        for t in state.tasks.values() {
            if t.row.state == TaskState::Active {
                c.active_tasks += 1;
            }
            for l in &t.leases {
                let active = l.row.state == LeaseState::Active;
                let backlog = matches!(l.row.state, LeaseState::Revoking | LeaseState::Reconciling);
                if !active && !backlog {
                    continue;
                }
                let entry = c.by_provider.entry(l.row.provider.to_string()).or_default();
                if active {
                    c.active_leases += 1;
                    entry.0 += 1;
                } else {
                    c.revocation_backlog += 1;
                    entry.1 += 1;
                }
            }
        }
        c
    }

    /// The Prometheus text exposition: counters from the journal, gauges from now.
    pub fn metrics_text(&self) -> String {
        let c = self.counts();
        let mut by_provider = c.by_provider;
        // Every configured provider has its series, at zero when idle.
        for (name, _) in self.runtime().providers.iter() {
            by_provider.entry(name.clone()).or_default();
        }
        let snapshot = crate::metrics::Snapshot {
            active_tasks: c.active_tasks,
            by_provider,
            blocks_in_force: self.blocks.in_force(crate::time::to_ms(self.clock.now())) as u64,
        };
        self.metrics.render(&snapshot)
    }

    /// Appends audit records that go with no state change (rejections). A journal failure is
    /// logged, not returned: the caller's answer is the refusal either way. Not fsync'd on their
    /// own (they acknowledge no transition): the next fsync'd commit carries them, and a flood
    /// of bad tokens cannot make the daemon fsync per request.
    async fn audit_only(&self, records: Vec<AuditRecord>) {
        let records = self
            .refusals
            .admit(records, self.refusal_budget(), self.clock.now());
        if records.is_empty() {
            return;
        }
        let ops = records
            .into_iter()
            .map(|r| Op::Audit(Box::new(r)))
            .collect();
        if let Err(e) = self
            .journal
            .commit_with(ops, crate::journal::Durability::Process)
            .await
        {
            tracing::error!(error = %e, "could not append an audit record");
        }
    }

    fn refusal_budget(&self) -> refusals::Budget {
        let b = &self.runtime().config.broker;
        refusals::Budget {
            limit: b.refusal_audit_limit,
            window: b.refusal_audit_window,
        }
    }

    /// Writes the summaries of refusal windows that have closed (from the reaper's loop).
    pub(super) async fn flush_refusals(&self) {
        let records = self.refusals.flush(self.refusal_budget(), self.clock.now());
        if !records.is_empty() {
            let ops = records
                .into_iter()
                .map(|r| Op::Audit(Box::new(r)))
                .collect();
            if let Err(e) = self
                .journal
                .commit_with(ops, crate::journal::Durability::Process)
                .await
            {
                tracing::error!(error = %e, "could not append a refusal summary");
            }
        }
    }

    /// Runs the reaper and the revocation queue until the process ends.
    pub fn spawn_loops(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(Arc::clone(self).reaper_loop()),
            tokio::spawn(Arc::clone(self).revoker_loop()),
            tokio::spawn(Arc::clone(self).retention_loop()),
            tokio::spawn(Arc::clone(self).block_loop()),
            tokio::spawn(Arc::clone(self).alert_loop()),
            tokio::spawn(Arc::clone(self).recheck_loop()),
            tokio::spawn(Arc::clone(self).poll_loop()),
        ]
    }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
