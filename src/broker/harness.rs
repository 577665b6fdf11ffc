//! An in-process broker for unit tests: a real journal in a temporary directory, a real
//! verifier over a static JWKS (the fixture keys), an in-memory provider, and a
//! [`ManualClock`]. No sockets, no child processes: a whole task lifecycle runs in milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credbroker_provider_api::{
    Credential, Env, ErrorKind, IssueRequest, Issued, LeaseRef, ParamError, Params, Provider,
    ProviderError, ProviderFactory, Reconciled, Renewed, RevocationHandle, Revoked, SecretValue,
};

use super::{BeginRequest, Begun, Broker, BrokerError, Runtime};
use crate::config::Config;
use crate::journal::Journal;
use crate::journal::seal::Sealer;
use crate::policy::GrantAsk;
use crate::providers::Registry;
use crate::time::ManualClock;
use crate::workload::{PeerInfo, Units};
use credbroker_provider_api::EmptyEnv;

use crate::forge;

pub(super) const ISS: &str = "https://as.example.test";
pub(super) const AUD: &str = "https://mcp.example.test/db";
pub(super) const SCOPE: &str = "mcp.tool:db.read";
/// The uid the harness's workload is registered for.
pub(super) const UID: u32 = 1000;

/// What the in-memory provider holds: live credentials by lease id, and what was revoked.
#[derive(Default)]
pub(super) struct Mem {
    pub(super) live: Mutex<BTreeSet<String>>,
    pub(super) revoked: Mutex<Vec<String>>,
    /// Revocations fail (a backend outage) while set.
    pub(super) fail_revoke: AtomicBool,
    /// Issues fail (a backend outage) while set.
    pub(super) fail_issue: AtomicBool,
}

impl Mem {
    pub(super) fn live(&self) -> Vec<String> {
        self.live
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn revoked(&self) -> Vec<String> {
        self.revoked.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

struct MemFactory(Arc<Mem>);

impl ProviderFactory for MemFactory {
    fn kind(&self) -> &'static str {
        "mem"
    }

    fn build(
        &self,
        _name: &str,
        _config: &Params,
        _env: &dyn Env,
    ) -> Result<Arc<dyn Provider>, Vec<ParamError>> {
        Ok(Arc::new(MemProvider(Arc::clone(&self.0))))
    }
}

struct MemProvider(Arc<Mem>);

fn unavailable() -> ProviderError {
    ProviderError::new(ErrorKind::Unavailable, "simulated outage")
}

#[async_trait::async_trait]
impl Provider for MemProvider {
    fn kind(&self) -> &'static str {
        "mem"
    }

    fn check_grant(&self, _params: &Params) -> Result<(), Vec<ParamError>> {
        Ok(())
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, ProviderError> {
        if self.0.fail_issue.load(Ordering::SeqCst) {
            return Err(unavailable());
        }
        let mut live = self.0.live.lock().map_err(|_| unavailable())?;
        live.insert(req.lease_id.to_string());
        let mut credential = Credential::default();
        credential
            .secret
            .insert("password".into(), SecretValue::new("mem-secret"));
        Ok(Issued {
            credential,
            handle: RevocationHandle {
                reference: req.lease_id.to_string(),
                secret: None,
            },
            expires_at: req.expires_at,
            renewable: true,
        })
    }

    async fn renew(
        &self,
        _lease: &LeaseRef<'_>,
        expires_at: SystemTime,
        _now: SystemTime,
    ) -> Result<Renewed, ProviderError> {
        Ok(Renewed { expires_at })
    }

    async fn revoke(
        &self,
        lease: &LeaseRef<'_>,
        _now: SystemTime,
    ) -> Result<Revoked, ProviderError> {
        if self.0.fail_revoke.load(Ordering::SeqCst) {
            return Err(unavailable());
        }
        let removed = self
            .0
            .live
            .lock()
            .map_err(|_| unavailable())?
            .remove(lease.lease_id);
        if removed {
            if let Ok(mut r) = self.0.revoked.lock() {
                r.push(lease.lease_id.to_string());
            }
            Ok(Revoked::Revoked)
        } else {
            Ok(Revoked::AlreadyGone)
        }
    }

    async fn reconcile(
        &self,
        req: &IssueRequest<'_>,
        _now: SystemTime,
    ) -> Result<Reconciled, ProviderError> {
        let removed = self
            .0
            .live
            .lock()
            .map_err(|_| unavailable())?
            .remove(req.lease_id);
        Ok(if removed {
            Reconciled::Revoked
        } else {
            Reconciled::NothingIssued
        })
    }
}

pub(super) struct Harness {
    pub(super) broker: Arc<Broker>,
    pub(super) clock: Arc<ManualClock>,
    pub(super) mem: Arc<Mem>,
    signer: forge::Signer,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub(super) async fn new() -> Self {
        Self::with("").await
    }

    /// With `extra` appended to the configuration (an `[audit]` section, say).
    pub(super) async fn with(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("the harness should get a temp dir");
        let d = dir.path().display();
        let jwks = forge::fixtures().join("keys/keys.json");
        let text = std::fs::read_to_string(&jwks).expect("the fixture JWKS should be readable");
        let mut set: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        for k in set["keys"].as_array_mut().into_iter().flatten() {
            if let Some(m) = k.as_object_mut() {
                for private in ["d", "p", "q", "dp", "dq", "qi"] {
                    m.remove(private);
                }
            }
        }
        std::fs::write(dir.path().join("jwks.json"), set.to_string())
            .expect("the public JWKS should be written for the verifier");
        let config = format!(
            r#"
[server]
broker_socket = "{d}/b.sock"
admin_socket = "{d}/a.sock"
[journal]
path = "{d}/j.db"
key_file = "{d}/k"
[[issuer]]
url = "{ISS}"
jwks_file = "{d}/jwks.json"
[attribution]
clients = {{ "agent-1" = "alice@example.com" }}
[[provider]]
name = "mem"
type = "mem"
[[grant]]
name = "db"
provider = "mem"
scopes = ["{SCOPE}"]
max_ttl = "1h"
default_ttl = "10m"
[[workload]]
name = "db-mcp"
uid = {UID}
audience = "{AUD}"
grants = ["db"]
{extra}
"#
        );
        let config = Config::parse(&config, "harness").expect("the harness config should parse");
        let mem = Arc::new(Mem::default());
        let registry = Registry::default().with(Arc::new(MemFactory(Arc::clone(&mem))));
        let runtime =
            Runtime::build(config, &registry, &EmptyEnv, None).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(runtime.verifier.load_keys().await.is_empty());
        let journal =
            Journal::open(&dir.path().join("j.db")).expect("the harness journal should open");
        let sealer =
            Sealer::from_bytes(&[7u8; 32]).expect("a 32-byte sealer key should be accepted");
        // A whole second, so token times (whole seconds) and the clock agree.
        let start = UNIX_EPOCH
            + Duration::from_secs(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            );
        let clock = Arc::new(ManualClock::at(start));
        let broker = Arc::new(Broker::new(
            journal,
            sealer,
            runtime,
            Arc::clone(&clock) as Arc<dyn crate::time::Clock>,
            Arc::new(crate::metrics::Metrics::default()),
        ));
        Self {
            broker,
            clock,
            mem,
            signer: forge::Signer::fixture("keys", "es256-1"),
            _dir: dir,
        }
    }

    /// A token minted now (by the harness's clock), valid for five minutes.
    pub(super) fn token(&self) -> SecretValue {
        let now = unix_now(&self.clock);
        SecretValue::new(self.signer.token(&forge::claims(ISS, AUD, SCOPE, now)))
    }

    /// The registered workload's process.
    pub(super) fn peer(&self) -> PeerInfo {
        PeerInfo::new(UID, UID, 4242, None, Units::default())
    }

    /// A process no workload is registered for.
    pub(super) fn stranger(&self) -> PeerInfo {
        PeerInfo::new(UID + 1, UID + 1, 4343, None, Units::default())
    }

    pub(super) async fn begin(&self, ttl: Duration) -> Result<Begun, BrokerError> {
        self.begin_as(&self.peer(), self.token(), ttl).await
    }

    pub(super) async fn begin_as(
        &self,
        peer: &PeerInfo,
        token: SecretValue,
        ttl: Duration,
    ) -> Result<Begun, BrokerError> {
        let req = BeginRequest {
            token,
            tool: "query".into(),
            grants: vec![GrantAsk {
                name: "db".into(),
                narrow: BTreeMap::new(),
            }],
            ttl: Some(ttl),
            idempotency_key: None,
            call_id: None,
        };
        self.broker.begin(peer, req).await
    }

    /// The journal's audit events, in order.
    pub(super) async fn events(&self) -> Vec<(String, Option<String>)> {
        self.broker
            .journal()
            .read(|c| {
                let mut stmt = c.prepare("SELECT event, reason FROM audit ORDER BY seq")?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
            .expect("the audit events should read back from the journal")
    }
}

fn unix_now(clock: &ManualClock) -> i64 {
    use crate::time::Clock as _;
    clock
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
