//! The daemon: start-up, the two gRPC servers, reload and shutdown.
//!
//! Start-up order matters: configuration and providers are validated, the journal key is read
//! and the journal opened, memory is rebuilt from the journal (`recover`), and only then are the
//! sockets bound — a workload can never reach a daemon that does not yet know what it issued.

mod accept;
mod admin_svc;
mod broker_svc;
mod calls_svc;
/// Public for the fuzz targets (fuzz/): the daemon's own HTTP/2 byte-level parsers.
pub mod h2fix;
pub mod h2watch;
pub mod listener;
mod lock;
mod metrics;
pub mod peer;
mod signals;
pub mod status;
pub mod systemd;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use credbroker_provider_api::Env;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tonic::transport::Server;

use crate::broker::{Broker, preflight};
use crate::journal::Journal;
use crate::journal::seal::Sealer;
use crate::proto::v1::admin_server::AdminServer;
use crate::proto::v1::broker_server::BrokerServer;
use crate::providers::Registry;
use crate::time::SystemClock;

/// Requests larger than this are refused before they are decoded (tokens are capped far lower).
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long start-up waits for issuers' keys before serving anyway (requests then get
/// `issuer_keys_unavailable` until the background refresh succeeds).
const INITIAL_KEY_WAIT: Duration = Duration::from_secs(5);
/// How often `STATUS=` is refreshed when there is no watchdog to ping.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

pub struct Daemon {
    pub config_path: PathBuf,
    pub registry: Registry,
    pub env: Arc<dyn Env>,
}

impl Daemon {
    pub async fn run(self) -> anyhow::Result<()> {
        let mut runtime =
            preflight::load(&self.config_path, &self.registry, self.env.as_ref(), None)?;
        // Before anything touches the journal: one daemon per journal.
        let _lock = lock::acquire(&runtime.config.journal.path).map_err(anyhow::Error::msg)?;
        let sealer = Sealer::load(&runtime.config.journal.key, self.env.as_ref())?;
        let head_key = match &runtime.config.audit.head_key {
            Some(source) => Some(
                source
                    .audit_key(self.env.as_ref())
                    .map_err(|e| anyhow::anyhow!("audit head key: {e}"))?,
            ),
            None => {
                tracing::warn!(
                    "[audit] has no head key: the audit chain's head is not sealed, so a cut-off \
                     or rebuilt tail would go unnoticed by `audit verify`"
                );
                None
            }
        };
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let observers: Vec<Arc<dyn crate::journal::Observer>> = vec![
            Arc::clone(&metrics) as Arc<dyn crate::journal::Observer>,
            Arc::new(crate::journal::LogMirror),
        ];
        let journal = Journal::open_observed(&runtime.config.journal.path, head_key, observers)
            .with_context(|| {
                format!(
                    "opening the journal {}",
                    runtime.config.journal.path.display()
                )
            })?;
        journal.check_key(&sealer).await.with_context(|| {
            format!(
                "checking the journal key against {}",
                runtime.config.journal.path.display()
            )
        })?;
        let verifier = Arc::clone(&runtime.verifier);
        runtime.start_refresh(None);
        let cfg = Arc::clone(&runtime.config);
        let broker = Arc::new(Broker::new(
            journal,
            sealer,
            runtime,
            Arc::new(SystemClock),
            metrics,
        ));
        // Issuer keys load (network) while the journal is recovered (disk).
        let started = std::time::Instant::now();
        let (recovery, ()) = tokio::join!(broker.recover(), load_keys(&verifier));
        let recovery = recovery.context("recovering from the journal")?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            active = recovery.active,
            interrupted = recovery.interrupted,
            ending = recovery.ending,
            "journal recovered"
        );
        let loops = broker.spawn_loops();

        let read_exe = Arc::new(AtomicBool::new(needs_exe(&cfg)));
        // Sockets passed by systemd (credbroker.socket) are used as they are: their mode and
        // group are the .socket unit's. Otherwise the daemon binds its own.
        let activated = systemd::activated_sockets(self.env.as_ref())?;
        let broker_listener = match activated.broker {
            Some(l) => listener::adopt(l)?,
            None => listener::bind(
                &cfg.server.broker_socket,
                0o660,
                cfg.server.broker_socket_gid,
            )
            .with_context(|| format!("binding {}", cfg.server.broker_socket.display()))?,
        };
        let admin_listener = match activated.admin {
            Some(l) => listener::adopt(l)?,
            None => listener::bind(&cfg.server.admin_socket, 0o600, None)
                .with_context(|| format!("binding {}", cfg.server.admin_socket.display()))?,
        };

        broker
            .record_started(&recovery)
            .await
            .context("recording the start in the journal")?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let (broker_budget, admin_budget) = accept::budgets();
        // One uid never gets more than half a socket's budget, whatever is configured: a
        // flooding peer leaves room for everyone else.
        let limits = |total: usize| accept::Limits {
            per_uid: cfg.server.max_connections_per_uid.min(total / 2).max(1),
            total,
            idle: cfg.server.connection_idle_timeout,
        };
        let broker_srv = tokio::spawn(serve_broker(
            Arc::clone(&broker),
            accept::incoming(
                broker_listener,
                Arc::clone(&read_exe),
                limits(broker_budget),
                "broker",
            ),
            stop_rx.clone(),
        ));
        let metrics_srv = match &cfg.metrics {
            Some(listen) => Some(
                metrics::start(listen, Arc::clone(&broker), stop_rx.clone())
                    .await
                    .with_context(|| format!("serving metrics on {listen:?}"))?,
            ),
            None => None,
        };
        let signals_srv = match cfg.signals.as_ref().and_then(|s| s.listen) {
            Some(listen) => Some(
                signals::start(listen, Arc::clone(&broker), stop_rx.clone())
                    .await
                    .with_context(|| format!("receiving signals on {listen}"))?,
            ),
            None => None,
        };
        let admin_srv = tokio::spawn(serve_admin(
            Arc::clone(&broker),
            accept::incoming(
                admin_listener,
                Arc::clone(&read_exe),
                limits(admin_budget),
                "admin",
            ),
            stop_rx,
        ));
        let notifier = systemd::Notifier::from_env(self.env.as_ref());
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // Ready: the configuration is valid, the journal open and recovered, both sockets
        // listening (a connection made now is queued until the servers accept it).
        tracing::info!(
            broker_socket = %cfg.server.broker_socket.display(),
            admin_socket = %cfg.server.admin_socket.display(),
            socket_activated = activated.passed,
            "credbroker ready"
        );
        notifier.notify(&format!(
            "READY=1\nMAINPID={}\n{}",
            std::process::id(),
            status_line(&broker)
        ));
        // The watchdog is pinged from this loop, so a stuck loop (or a dead background loop)
        // stops the pings and systemd restarts the daemon. STATUS= is refreshed on the same beat.
        let watchdog = systemd::watchdog_interval(self.env.as_ref());
        let mut beat =
            tokio::time::interval(watchdog.unwrap_or(STATUS_INTERVAL).min(STATUS_INTERVAL));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    notifier.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
                    if let Err(e) = self.reload(&broker, &read_exe).await {
                        tracing::error!(error = %e, "reload failed; keeping the running configuration");
                    }
                    notifier.notify(&format!("READY=1\n{}", status_line(&broker)));
                }
                _ = beat.tick() => {
                    if let Some(dead) = loops.iter().position(|l| l.is_finished()) {
                        // Not pinging is the point: systemd's watchdog restarts us.
                        tracing::error!(loop_index = dead, "a background loop stopped; no more watchdog pings");
                        continue;
                    }
                    if watchdog.is_some() {
                        notifier.notify(&format!("WATCHDOG=1\n{}", status_line(&broker)));
                    } else {
                        notifier.notify(&status_line(&broker));
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        notifier.notify(
            "STOPPING=1\nSTATUS=stopping: tasks stay journaled and resume on the next start",
        );
        tracing::info!(
            "shutting down: no new requests; tasks stay journaled and resume on the next start"
        );
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            let _ = broker_srv.await;
            let _ = admin_srv.await;
            for m in [metrics_srv, signals_srv].into_iter().flatten() {
                let _ = m.await;
            }
        })
        .await;
        for l in loops {
            l.abort();
        }
        Ok(())
    }

    /// Re-reads the configuration; installs it only if every part of it is valid.
    async fn reload(&self, broker: &Broker, read_exe: &AtomicBool) -> anyhow::Result<()> {
        let old = broker.runtime();
        let mut runtime = preflight::load(
            &self.config_path,
            &self.registry,
            self.env.as_ref(),
            Some(&old),
        )?;
        let config = &runtime.config;
        if config.server.broker_socket != old.config.server.broker_socket
            || config.server.admin_socket != old.config.server.admin_socket
            || config.journal.path != old.config.journal.path
        {
            tracing::warn!("socket and journal paths change only on restart");
        }
        // The journal key cannot change while the daemon runs: every sealed handle depends on
        // it. A reload whose key is missing, unreadable or different is refused whole.
        let sealer = Sealer::load(&config.journal.key, self.env.as_ref())
            .map_err(|e| anyhow::anyhow!("journal key: {e}; the running key stays"))?;
        if !broker.journal().key_matches(&sealer).await? {
            anyhow::bail!(
                "the reloaded journal key ({:?}) is not the key this journal was written with; \
                 the key cannot change without a restart and a journal it opens",
                config.journal.key
            );
        }
        if !Arc::ptr_eq(&runtime.verifier, &old.verifier) {
            load_keys(&runtime.verifier).await;
        }
        runtime.start_refresh(Some(&old));
        read_exe.store(needs_exe(&runtime.config), Ordering::Relaxed);
        broker.replace_runtime(runtime);
        tracing::info!(path = %self.config_path.display(), "configuration reloaded");
        Ok(())
    }
}

/// `STATUS=` for systemd: what `systemctl status credbroker` shows.
fn status_line(broker: &Broker) -> String {
    let c = broker.counts();
    format!(
        "STATUS=serving: {} active task(s), {} lease(s), {} revocation(s) pending",
        c.active_tasks, c.active_leases, c.revocation_backlog
    )
}

/// CLOCK_MONOTONIC in microseconds, which systemd wants beside RELOADING=1.
fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
    })
}

/// Whether peers' executables are read: a workload selects on them, or token reuse detection
/// tells peers apart by them.
fn needs_exe(cfg: &crate::config::Config) -> bool {
    crate::workload::needs_exe(&cfg.workloads)
        || cfg.abuse.as_ref().is_some_and(|a| a.token_reuse.is_some())
}

async fn load_keys(verifier: &crate::token::Verifier) {
    match tokio::time::timeout(INITIAL_KEY_WAIT, verifier.load_keys()).await {
        Ok(failed) => {
            for (url, e) in failed {
                tracing::warn!(issuer = %url, error = %e, "issuer keys not loaded yet; retrying in the background");
            }
        }
        Err(_) => tracing::warn!("issuer keys still loading; continuing in the background"),
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn reflection() -> anyhow::Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?)
}

type Incoming = tokio_stream::wrappers::ReceiverStream<std::io::Result<listener::PeerStream>>;

async fn serve_broker(
    broker: Arc<Broker>,
    incoming: Incoming,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<BrokerServer<broker_svc::BrokerService>>()
        .await;
    let calls = crate::proto::v1::calls_server::CallsServer::new(calls_svc::CallsService {
        broker: Arc::clone(&broker),
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let svc = BrokerServer::new(broker_svc::BrokerService { broker })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    Server::builder()
        .layer(tower::util::MapResponseLayer::new(|r| {
            status::with_size_reason(r, MAX_REQUEST_BYTES)
        }))
        .add_service(health_svc)
        .add_service(reflection()?)
        .add_service(svc)
        .add_service(calls)
        .serve_with_incoming_shutdown(incoming, stopped(stop))
        .await?;
    Ok(())
}

async fn serve_admin(
    broker: Arc<Broker>,
    incoming: Incoming,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<AdminServer<admin_svc::AdminService>>()
        .await;
    let svc = AdminServer::new(admin_svc::AdminService { broker })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    Server::builder()
        .layer(tower::util::MapResponseLayer::new(|r| {
            status::with_size_reason(r, MAX_REQUEST_BYTES)
        }))
        .add_service(health_svc)
        .add_service(reflection()?)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, stopped(stop))
        .await?;
    Ok(())
}
