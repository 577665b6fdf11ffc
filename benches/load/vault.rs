//! OpenBao alone: the real-provider cycle that credbroker's own cost is measured against. A
//! dynamic secret read (OpenBao creates a PostgreSQL role), then its lease revoked (OpenBao
//! drops the role), sequentially, with a least-privilege token.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::Cycles;

pub(super) async fn creds(
    addr: String,
    token_file: PathBuf,
    path: String,
    duration: Duration,
    warmup: Duration,
) -> serde_json::Value {
    let token = std::fs::read_to_string(&token_file)
        .expect("the OpenBao token file should be readable")
        .trim()
        .to_string();
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, measuring, errors) = (
            Arc::clone(&stop),
            Arc::clone(&measuring),
            Arc::clone(&errors),
        );
        tokio::spawn(async move {
            let mut cycles = Cycles::default();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let got = http
                    .get(format!("{addr}/v1/{path}"))
                    .header("X-Vault-Token", &token)
                    .send()
                    .await;
                let lease = match got {
                    Ok(r) if r.status().is_success() => r
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["lease_id"].as_str().map(str::to_owned)),
                    _ => None,
                };
                let Some(lease) = lease.filter(|l| !l.is_empty()) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let t1 = Instant::now();
                let revoked = http
                    .put(format!("{addr}/v1/sys/leases/revoke"))
                    .header("X-Vault-Token", &token)
                    .body(json!({ "lease_id": lease }).to_string())
                    .send()
                    .await;
                if !revoked.is_ok_and(|r| r.status().is_success()) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if measuring.load(Ordering::Relaxed) {
                    cycles.add(t0, t1, Instant::now());
                }
            }
            cycles
        })
    };
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut all = worker.await.unwrap_or_default();
    let cycles = all.count();
    let mut out = json!({
        "concurrency": 1,
        "cycles": cycles,
        "cycles_per_s": (cycles as f64 / elapsed.as_secs_f64()).round(),
        "errors": errors.load(Ordering::Relaxed),
    });
    // Named as credbroker's cycle is: the read is the begin, the revocation the end.
    all.summarise(&mut out);
    out
}
