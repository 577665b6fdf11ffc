//! `credbroker-bench`: a load generator that drives a running daemon over its unix socket with a
//! real access token, and OpenBao with its own API for comparison. Built with `--features testd`
//! (never shipped). See BENCHMARKS.md and scripts/bench.sh.

#![allow(clippy::expect_used)] // a benchmark's setup that fails should stop the run at that line

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use credbroker::proto::v1;
use credbroker::proto::v1::broker_client::BrokerClient;
use serde_json::json;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "credbroker-bench",
    about = "Load generator for credbroker (and OpenBao, side by side)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Client runtime threads (the daemon shares the machine).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Print one JSON summary line instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args, Clone)]
struct Target {
    #[arg(long, default_value = "/run/credbroker/broker.sock")]
    socket: PathBuf,
    /// A file holding the access token (the same token every request: the cached path).
    #[arg(long)]
    token_file: PathBuf,
    #[arg(long, default_value = "bench")]
    grant: String,
    #[arg(long, default_value = "bench")]
    tool: String,
    /// gRPC connections (HTTP/2) shared by the workers.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// The daemon's pid, to report its memory.
    #[arg(long)]
    daemon_pid: Option<u32>,
}

#[derive(Subcommand)]
enum Cmd {
    /// BeginTask + EndTask cycles for a while, at a fixed concurrency.
    Cycle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value = "10s")]
        duration: String,
        #[arg(long, default_value = "2s")]
        warmup: String,
        /// The TTL each BeginTask asks for, in seconds; 0 asks for none (the task then lasts
        /// as long as the grant's max_ttl and the token allow).
        #[arg(long, default_value_t = 60)]
        ttl: u32,
    },
    /// Begin N tasks and leave them active; report the daemon's memory.
    Fill {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
    },
    /// Begin N tasks, then end them all at once; report how long until every lease is revoked.
    EndBurst {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
        #[arg(long, default_value_t = 1024)]
        concurrency: usize,
    },
    /// `audit export` (each format) and `audit verify` on generated journals (10k and --records
    /// records): peak memory (VmHWM) and time of each process, to show that memory stays flat
    /// as the log grows.
    Audit {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Where the generated journals are kept (generation takes a while; they are reused).
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// A minimal MCP server answering every `tools/call` at once: the gateway benchmark's
    /// upstream. Runs until killed.
    McpUpstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// `tools/call` over Streamable HTTP at a fixed concurrency: against the upstream directly,
    /// and through `credbroker gateway` (with --token-file), for the gateway's added latency.
    Mcp {
        #[arg(long)]
        url: String,
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value = "10s")]
        duration: String,
        #[arg(long, default_value = "2s")]
        warmup: String,
    },
    /// RecordCall straight to the daemon (as `credbroker gateway` does before each call).
    Record {
        #[arg(long, default_value = "/run/credbroker/broker.sock")]
        socket: PathBuf,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value = "10s")]
        duration: String,
        #[arg(long, default_value = "2s")]
        warmup: String,
    },
    /// OpenBao alone, the real-provider cycle credbroker adds to: read a dynamic secret (a
    /// PostgreSQL role), then revoke its lease, one after the other.
    OpenbaoCreds {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        token_file: PathBuf,
        /// The secret to read, e.g. database/creds/bench.
        #[arg(long)]
        path: String,
        #[arg(long, default_value = "10s")]
        duration: String,
        #[arg(long, default_value = "2s")]
        warmup: String,
    },
    /// OpenBao: token create + revoke-accessor cycles (its closest equivalent of a task).
    Openbao {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        token_file: PathBuf,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value = "10s")]
        duration: String,
        #[arg(long, default_value = "2s")]
        warmup: String,
    },
}

fn dur(s: &str) -> Duration {
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

#[path = "../audit_fixture.rs"]
mod audit_fixture;
mod mcp;
mod vault;

fn main() {
    let cli = Cli::parse();
    // Synchronous, and builds its own runtime to generate the journal.
    if let Cmd::Audit { records, dir } = &cli.cmd {
        let summary = audit_export(*records, dir);
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .expect("the load generator's runtime should build");
    let summary = rt.block_on(run(cli.cmd));
    if cli.json {
        println!("{summary}");
    } else {
        for (k, v) in summary.as_object().into_iter().flatten() {
            println!("{k:>24}: {v}");
        }
    }
}

async fn run(cmd: Cmd) -> serde_json::Value {
    match cmd {
        Cmd::Cycle {
            target,
            concurrency,
            duration,
            warmup,
            ttl,
        } => {
            let ttl = (ttl > 0).then_some(ttl);
            cycle(target, concurrency, dur(&duration), dur(&warmup), ttl).await
        }
        Cmd::OpenbaoCreds {
            addr,
            token_file,
            path,
            duration,
            warmup,
        } => vault::creds(addr, token_file, path, dur(&duration), dur(&warmup)).await,
        Cmd::Fill {
            target,
            tasks,
            concurrency,
            ttl,
        } => fill(target, tasks, concurrency, ttl).await,
        Cmd::EndBurst {
            target,
            tasks,
            concurrency,
        } => end_burst(target, tasks, concurrency).await,
        Cmd::Openbao {
            addr,
            token_file,
            concurrency,
            duration,
            warmup,
        } => openbao(addr, token_file, concurrency, dur(&duration), dur(&warmup)).await,
        Cmd::McpUpstream { listen } => mcp::upstream(listen).await,
        Cmd::Mcp {
            url,
            token_file,
            concurrency,
            duration,
            warmup,
        } => mcp::load(url, token_file, concurrency, dur(&duration), dur(&warmup)).await,
        Cmd::Record {
            socket,
            concurrency,
            duration,
            warmup,
        } => mcp::record(socket, concurrency, dur(&duration), dur(&warmup)).await,
        Cmd::Audit { .. } => unreachable!("handled in main"),
    }
}

/// Runs `credbroker-testd audit export` on each journal and format, output to /dev/null,
/// sampling the child's VmHWM (peak resident set) until it exits.
fn audit_export(records: u64, dir: &std::path::Path) -> serde_json::Value {
    std::fs::create_dir_all(dir).expect("the audit journal directory should be created");
    let exe = std::env::current_exe()
        .expect("the bench's own path should be known")
        .with_file_name("credbroker-testd");
    let mut out = serde_json::Map::new();
    for n in [10_000, records] {
        let path = dir.join(format!("audit-{n}.db"));
        let generated = Instant::now();
        let _ = audit_fixture::ensure(&path, n);
        eprintln!("journal of {n} records ready in {:?}", generated.elapsed());
        let runs: [(&str, &[&str]); 4] = [
            ("export-jsonl", &["audit", "export", "--format", "jsonl"]),
            ("export-csv", &["audit", "export", "--format", "csv"]),
            ("export-ocsf", &["audit", "export", "--format", "ocsf"]),
            ("verify", &["audit", "verify"]),
        ];
        for (name, args) in runs {
            let started = Instant::now();
            let mut child = std::process::Command::new(&exe)
                .args(args)
                .arg("--journal")
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
            let status_file = format!("/proc/{}/status", child.id());
            let mut peak_kib = 0u64;
            loop {
                if let Ok(text) = std::fs::read_to_string(&status_file)
                    && let Some(kib) = text
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                {
                    peak_kib = peak_kib.max(kib);
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let secs = started.elapsed().as_secs_f64();
            out.insert(
                format!("{name}/{n}"),
                json!({
                    "peak_rss_mib": (peak_kib as f64 / 1024.0 * 10.0).round() / 10.0,
                    "seconds": (secs * 100.0).round() / 100.0,
                    "records_per_second": (n as f64 / secs).round(),
                }),
            );
        }
    }
    serde_json::Value::Object(out)
}

struct Session {
    clients: Vec<BrokerClient<Channel>>,
    token: String,
    grant: String,
    tool: String,
}

impl Session {
    async fn open(t: &Target) -> Arc<Self> {
        let token = std::fs::read_to_string(&t.token_file)
            .unwrap_or_else(|e| panic!("token: {e}"))
            .trim()
            .to_string();
        let mut clients = Vec::new();
        for _ in 0..t.connections.max(1) {
            let ch = credbroker::client::channel(&t.socket)
                .await
                .expect("the broker socket should accept a connection");
            clients.push(BrokerClient::new(ch).max_decoding_message_size(1 << 20));
        }
        Arc::new(Self {
            clients,
            token,
            grant: t.grant.clone(),
            tool: t.tool.clone(),
        })
    }

    fn client(&self, i: usize) -> BrokerClient<Channel> {
        self.clients[i % self.clients.len()].clone()
    }

    async fn begin(
        &self,
        c: &mut BrokerClient<Channel>,
        ttl: Option<u32>,
    ) -> Result<String, tonic::Status> {
        let req = v1::BeginTaskRequest {
            token: self.token.clone(),
            tool: self.tool.clone(),
            grants: vec![v1::GrantRequest {
                name: self.grant.clone(),
                narrow: Default::default(),
            }],
            ttl_seconds: ttl,
            // As the CLI and the client libraries send one: its index insert is part of the cost.
            idempotency_key: Some(uuid::Uuid::now_v7().to_string()),
            call_id: None,
        };
        Ok(c.begin_task(req)
            .await?
            .into_inner()
            .task
            .unwrap_or_default()
            .id)
    }

    async fn end(
        &self,
        c: &mut BrokerClient<Channel>,
        id: String,
    ) -> Result<v1::Task, tonic::Status> {
        Ok(c.end_task(v1::EndTaskRequest { task_id: id })
            .await?
            .into_inner()
            .task
            .unwrap_or_default())
    }
}

/// Latencies in microseconds.
#[derive(Default)]
struct Hist(Vec<u32>);

impl Hist {
    fn add(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u32::MAX as u128) as u32);
    }

    fn merge(&mut self, o: Hist) {
        self.0.extend(o.0);
    }

    fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.0[i]) / 1000.0
    }

    fn summary(&mut self, name: &str) -> serde_json::Value {
        json!({
            format!("{name}_p50_ms"): self.pct(0.50),
            format!("{name}_p99_ms"): self.pct(0.99),
            format!("{name}_p999_ms"): self.pct(0.999),
        })
    }
}

/// A two-step cycle's latencies: its begin, its end, and the whole.
#[derive(Default)]
struct Cycles {
    begin: Hist,
    end: Hist,
    cycle: Hist,
}

impl Cycles {
    /// A cycle begun at `t0`, whose end started at `t1` and finished at `t2`.
    fn add(&mut self, t0: Instant, t1: Instant, t2: Instant) {
        self.begin.add(t1 - t0);
        self.end.add(t2 - t1);
        self.cycle.add(t2 - t0);
    }

    fn merge(&mut self, o: Cycles) {
        self.begin.merge(o.begin);
        self.end.merge(o.end);
        self.cycle.merge(o.cycle);
    }

    fn count(&self) -> usize {
        self.cycle.0.len()
    }

    /// `begin_p50_ms`, … `cycle_p999_ms`, into `out`.
    fn summarise(&mut self, out: &mut serde_json::Value) {
        merge(out, self.begin.summary("begin"));
        merge(out, self.end.summary("end"));
        merge(out, self.cycle.summary("cycle"));
    }
}

/// Lets `workers` (each looping until `stop`, recording while `measuring`) warm up, measures
/// for `duration`, stops them, and returns their latencies merged and the window's length.
async fn window(
    workers: Vec<tokio::task::JoinHandle<Hist>>,
    stop: &AtomicBool,
    measuring: &AtomicBool,
    warmup: Duration,
    duration: Duration,
) -> (Hist, Duration) {
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut all = Hist::default();
    for w in workers {
        if let Ok(h) = w.await {
            all.merge(h);
        }
    }
    (all, elapsed)
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        a.extend(b.clone());
    }
}

/// CPU time (user + system) a process has used, in microseconds.
fn cpu_us(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    // After the command come state (field 3) … utime (14) and stime (15): indexes 11 and 12.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12)) * 10_000
}

fn memory(pid: Option<u32>) -> serde_json::Value {
    let Some(pid) = pid else { return json!({}) };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    json!({ "daemon_rss_mb": kb("VmRSS:") as f64 / 1024.0, "daemon_peak_rss_mb": kb("VmHWM:") as f64 / 1024.0 })
}

async fn cycle(
    t: Target,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    ttl: Option<u32>,
) -> serde_json::Value {
    let s = Session::open(&t).await;
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..concurrency {
        let (s, stop, measuring, errors) = (
            Arc::clone(&s),
            Arc::clone(&stop),
            Arc::clone(&measuring),
            Arc::clone(&errors),
        );
        workers.push(tokio::spawn(async move {
            let mut c = s.client(i);
            let mut cycles = Cycles::default();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let id = match s.begin(&mut c, ttl).await {
                    Ok(id) => id,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let t1 = Instant::now();
                if s.end(&mut c, id).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if measuring.load(Ordering::Relaxed) {
                    cycles.add(t0, t1, Instant::now());
                }
            }
            cycles
        }));
    }
    tokio::time::sleep(warmup).await;
    let daemon = t.daemon_pid.map(|p| p.to_string());
    let cpu0 = (cpu_us("self"), daemon.as_deref().map(cpu_us));
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu1 = (cpu_us("self"), daemon.as_deref().map(cpu_us));
    stop.store(true, Ordering::Relaxed);
    let mut all = Cycles::default();
    for w in workers {
        if let Ok(c) = w.await {
            all.merge(c);
        }
    }
    let cycles = all.count();
    let mut out = json!({
        "concurrency": concurrency,
        "connections": t.connections,
        "cycles": cycles,
        "cycles_per_s": (cycles as f64 / elapsed.as_secs_f64()).round(),
        "errors": errors.load(Ordering::Relaxed),
    });
    all.summarise(&mut out);
    merge(&mut out, memory(t.daemon_pid));
    // Where the machine's time goes, per cycle (the tick is 10 ms: a long run is needed).
    let per = |a: u64, b: u64| {
        if cycles == 0 {
            0.0
        } else {
            (b.saturating_sub(a)) as f64 / cycles as f64
        }
    };
    merge(
        &mut out,
        json!({ "client_cpu_us_per_cycle": per(cpu0.0, cpu1.0).round() }),
    );
    if let (Some(a), Some(b)) = (cpu0.1, cpu1.1) {
        merge(
            &mut out,
            json!({ "daemon_cpu_us_per_cycle": per(a, b).round() }),
        );
    }
    out
}

async fn begin_many(
    s: &Arc<Session>,
    tasks: usize,
    concurrency: usize,
    ttl: u32,
) -> (Vec<String>, u64, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..concurrency {
        let (s, next, errors) = (Arc::clone(s), Arc::clone(&next), Arc::clone(&errors));
        workers.push(tokio::spawn(async move {
            let mut c = s.client(i);
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < tasks as u64 {
                match s.begin(&mut c, Some(ttl)).await {
                    Ok(id) => ids.push(id),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for w in workers {
        ids.extend(w.await.unwrap_or_default());
    }
    (ids, errors.load(Ordering::Relaxed), started.elapsed())
}

async fn fill(t: Target, tasks: usize, concurrency: usize, ttl: u32) -> serde_json::Value {
    let s = Session::open(&t).await;
    let (ids, errors, took) = begin_many(&s, tasks, concurrency, ttl).await;
    let mut out = json!({
        "tasks_active": ids.len(),
        "errors": errors,
        "fill_seconds": took.as_secs_f64(),
        "begins_per_s": (ids.len() as f64 / took.as_secs_f64()).round(),
    });
    merge(&mut out, memory(t.daemon_pid));
    out
}

async fn end_burst(t: Target, tasks: usize, concurrency: usize) -> serde_json::Value {
    let s = Session::open(&t).await;
    let (ids, begin_errors, _) = begin_many(&s, tasks, 64, 3600).await;
    let queue = Arc::new(std::sync::Mutex::new(ids));
    let revoked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..concurrency {
        let (s, queue, revoked) = (Arc::clone(&s), Arc::clone(&queue), Arc::clone(&revoked));
        workers.push(tokio::spawn(async move {
            let mut c = s.client(i);
            loop {
                let Some(id) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                    return;
                };
                if let Ok(task) = s.end(&mut c, id).await
                    && task.leases.iter().all(|l| l.state == "revoked")
                {
                    revoked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let took = started.elapsed();
    json!({
        "tasks": tasks,
        "begin_errors": begin_errors,
        "revoked": revoked.load(Ordering::Relaxed),
        "all_revoked_seconds": took.as_secs_f64(),
    })
}

async fn openbao(
    addr: String,
    token_file: PathBuf,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
) -> serde_json::Value {
    let token = std::fs::read_to_string(&token_file)
        .expect("the OpenBao token file should be readable")
        .trim()
        .to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("the OpenBao HTTP client should build");
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, addr, token) = (http.clone(), addr.clone(), token.clone());
        let (stop, measuring, errors) = (
            Arc::clone(&stop),
            Arc::clone(&measuring),
            Arc::clone(&errors),
        );
        workers.push(tokio::spawn(async move {
            let mut cyc = Hist::default();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let created = http
                    .post(format!("{addr}/v1/auth/token/create"))
                    .header("X-Vault-Token", &token)
                    .body(r#"{"ttl":"1h","policies":["default"]}"#)
                    .send()
                    .await;
                let accessor = match created {
                    Ok(r) if r.status().is_success() => r
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["auth"]["accessor"].as_str().map(str::to_owned)),
                    _ => None,
                };
                let Some(accessor) = accessor else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let revoked = http
                    .post(format!("{addr}/v1/auth/token/revoke-accessor"))
                    .header("X-Vault-Token", &token)
                    .body(json!({ "accessor": accessor }).to_string())
                    .send()
                    .await;
                if !revoked.is_ok_and(|r| r.status().is_success()) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if measuring.load(Ordering::Relaxed) {
                    cyc.add(t0.elapsed());
                }
            }
            cyc
        }));
    }
    let (mut cyc, elapsed) = window(workers, &stop, &measuring, warmup, duration).await;
    let cycles = cyc.0.len();
    let mut out = json!({
        "concurrency": concurrency,
        "cycles": cycles,
        "cycles_per_s": (cycles as f64 / elapsed.as_secs_f64()).round(),
        "errors": errors.load(Ordering::Relaxed),
    });
    merge(&mut out, cyc.summary("cycle"));
    out
}
