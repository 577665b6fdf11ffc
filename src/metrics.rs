//! Prometheus metrics (off unless `[metrics] listen` is set; loopback TCP or a unix socket).
//!
//! Counters follow the audit stream: every committed audit record is counted by what it says
//! (token rejections by reason, issues and revocations by provider and result), so a metric can
//! never disagree with the audit log about what happened. Gauges (active tasks, active leases
//! and the revocation backlog per provider) are read from the broker's state at scrape time.
//! Issue latency is timed around the provider call. Labels are reason codes and provider
//! instance names from the configuration: bounded sets, never identifiers of people or tokens.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::record::{AuditRecord, event};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Provider {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderResult {
    provider: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// A gateway's MCP calls: its configured name, the decision, the refusal's reason code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    gateway: String,
    outcome: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Detector {
    detector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockChange {
    change: String,
    kind: String,
}

/// What the scrape reads from the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub active_tasks: u64,
    /// provider → (active leases, leases waiting to be revoked or reconciled)
    pub by_provider: BTreeMap<String, (u64, u64)>,
    pub blocks_in_force: u64,
}

pub struct Metrics {
    registry: Registry,
    active_tasks: Gauge,
    active_leases: Family<Provider, Gauge>,
    backlog: Family<Provider, Gauge>,
    issue_seconds: Family<Provider, Histogram>,
    issues: Family<ProviderResult, Counter>,
    revocations: Family<ProviderResult, Counter>,
    rejections: Family<Reason, Counter>,
    calls: Family<Call, Counter>,
    findings: Family<Detector, Counter>,
    block_changes: Family<BlockChange, Counter>,
    blocks_in_force: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("credbroker");
        let active_tasks = Gauge::default();
        registry.register(
            "tasks_active",
            "Tasks currently active",
            active_tasks.clone(),
        );
        let active_leases = Family::<Provider, Gauge>::default();
        registry.register(
            "leases_active",
            "Credentials currently issued and not yet ended, by provider",
            active_leases.clone(),
        );
        let backlog = Family::<Provider, Gauge>::default();
        registry.register(
            "revocation_backlog",
            "Leases waiting to be revoked or reconciled (retried with backoff), by provider",
            backlog.clone(),
        );
        // 5 ms to ~41 s: a local Vault answers in milliseconds, a throttled STS in seconds.
        let issue_seconds = Family::<Provider, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "issue_duration_seconds",
            "Time a provider took to issue one credential, by provider",
            issue_seconds.clone(),
        );
        let issues = Family::<ProviderResult, Counter>::default();
        registry.register(
            "issues",
            "Credentials issued (result=issued) or refused/failed (result=failed), by provider",
            issues.clone(),
        );
        let revocations = Family::<ProviderResult, Counter>::default();
        registry.register(
            "revocations",
            "Revocation outcomes by provider: revoked, failed (will retry), reconciled, \
             expired_unrevoked (cannot be revoked; expires)",
            revocations.clone(),
        );
        let rejections = Family::<Reason, Counter>::default();
        registry.register(
            "token_rejections",
            "Requests refused before a task existed, by reason code",
            rejections.clone(),
        );
        let calls = Family::<Call, Counter>::default();
        registry.register(
            "mcp_calls",
            "MCP calls through credbroker gateway, by gateway, outcome (success: forwarded; \
             denied) and reason code (rate_limited, insufficient_scope, …)",
            calls.clone(),
        );
        let findings = Family::<Detector, Counter>::default();
        registry.register(
            "abuse_findings",
            "Abuse detector findings (abuse_detected records), by detector",
            findings.clone(),
        );
        let block_changes = Family::<BlockChange, Counter>::default();
        registry.register(
            "block_changes",
            "Blocks placed (change=added) and lifted (change=lifted), by kind",
            block_changes.clone(),
        );
        let blocks_in_force = Gauge::default();
        registry.register(
            "blocks_in_force",
            "Blocks (token, client, owner, subject) currently refusing requests",
            blocks_in_force.clone(),
        );
        Self {
            calls,
            findings,
            block_changes,
            blocks_in_force,
            registry,
            active_tasks,
            active_leases,
            backlog,
            issue_seconds,
            issues,
            revocations,
            rejections,
        }
    }
}

impl crate::journal::Observer for Metrics {
    fn committed(&self, record: &AuditRecord) {
        self.record(record);
    }
}

impl Metrics {
    /// Counts a committed audit record.
    pub fn record(&self, r: &AuditRecord) {
        let provider = || r.provider.clone().unwrap_or_default();
        let result = |result: &str| ProviderResult {
            provider: provider(),
            result: result.into(),
        };
        match r.event.as_str() {
            event::TOKEN_REJECTED | event::TOKEN_WRONG_WORKLOAD | event::PEER_REJECTED => {
                let reason = r.reason.clone().unwrap_or_else(|| r.event.clone());
                self.rejections.get_or_create(&Reason { reason }).inc();
            }
            event::LEASE_ISSUED => {
                self.issues.get_or_create(&result("issued")).inc();
            }
            event::MCP_CALL => {
                let gateway = r.detail.get("gateway").and_then(|g| g.as_str());
                self.calls
                    .get_or_create(&Call {
                        gateway: gateway.unwrap_or_default().into(),
                        outcome: r.outcome.clone(),
                        reason: r.reason.clone().unwrap_or_default(),
                    })
                    .inc();
            }
            event::ABUSE_DETECTED => {
                let detector = r.detail.get("detector").and_then(|d| d.as_str());
                self.findings
                    .get_or_create(&Detector {
                        detector: detector.unwrap_or_default().into(),
                    })
                    .inc();
            }
            event::BLOCK_ADDED | event::BLOCK_LIFTED => {
                let kind = r.detail.get("kind").and_then(|d| d.as_str());
                let change = if r.event == event::BLOCK_ADDED {
                    "added"
                } else {
                    "lifted"
                };
                self.block_changes
                    .get_or_create(&BlockChange {
                        change: change.into(),
                        kind: kind.unwrap_or_default().into(),
                    })
                    .inc();
            }
            event::LEASE_ISSUE_FAILED => {
                self.issues.get_or_create(&result("failed")).inc();
            }
            event::LEASE_REVOKED => {
                self.revocations.get_or_create(&result("revoked")).inc();
            }
            event::LEASE_REVOCATION_FAILED => {
                self.revocations.get_or_create(&result("failed")).inc();
            }
            event::LEASE_RECONCILED => {
                self.revocations.get_or_create(&result("reconciled")).inc();
            }
            event::LEASE_EXPIRED_UNREVOKED => {
                self.revocations
                    .get_or_create(&result("expired_unrevoked"))
                    .inc();
            }
            _ => {}
        }
    }

    pub fn observe_issue(&self, provider: &str, took: Duration) {
        self.issue_seconds
            .get_or_create(&Provider {
                provider: provider.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition format, with the gauges set from `now`.
    pub fn render(&self, now: &Snapshot) -> String {
        self.active_tasks.set(now.active_tasks as i64);
        self.blocks_in_force.set(now.blocks_in_force as i64);
        // Providers removed by a reload disappear instead of reporting stale values.
        self.active_leases.clear();
        self.backlog.clear();
        for (name, (active, backlog)) in &now.by_provider {
            let label = Provider {
                provider: name.clone(),
            };
            self.active_leases.get_or_create(&label).set(*active as i64);
            self.backlog.get_or_create(&label).set(*backlog as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Outcome;

    #[test]
    fn records_become_counters_and_the_snapshot_gauges() {
        let m = Metrics::default();
        let at = std::time::UNIX_EPOCH;
        m.record(
            &AuditRecord::new(event::TOKEN_REJECTED, Outcome::Denied, at)
                .reason(crate::record::reason::EXPIRED),
        );
        m.record(
            &AuditRecord::new(event::TOKEN_REJECTED, Outcome::Denied, at)
                .reason(crate::record::reason::EXPIRED),
        );
        m.record(
            &AuditRecord::new(event::LEASE_ISSUED, Outcome::Success, at).lease("l", "g", "vault"),
        );
        m.record(
            &AuditRecord::new(event::LEASE_REVOCATION_FAILED, Outcome::Failure, at)
                .lease("l", "g", "vault"),
        );
        let call = |outcome, reason: Option<crate::record::Reason>| {
            let r = AuditRecord::new(event::MCP_CALL, outcome, at).detail("gateway", "orders");
            m.record(&match reason {
                Some(code) => r.reason(code),
                None => r,
            })
        };
        call(Outcome::Success, None);
        call(Outcome::Denied, Some(crate::record::reason::RATE_LIMITED));
        call(Outcome::Denied, Some(crate::record::reason::RATE_LIMITED));
        m.observe_issue("vault", Duration::from_millis(12));
        let snap = Snapshot {
            active_tasks: 3,
            by_provider: [("vault".to_string(), (2, 1))].into(),
            ..Default::default()
        };
        let text = m.render(&snap);
        for line in [
            "credbroker_token_rejections_total{reason=\"expired\"} 2",
            "credbroker_issues_total{provider=\"vault\",result=\"issued\"} 1",
            "credbroker_revocations_total{provider=\"vault\",result=\"failed\"} 1",
            "credbroker_tasks_active 3",
            "credbroker_mcp_calls_total{gateway=\"orders\",outcome=\"success\",reason=\"\"} 1",
            "credbroker_mcp_calls_total{gateway=\"orders\",outcome=\"denied\",reason=\"rate_limited\"} 2",
            "credbroker_leases_active{provider=\"vault\"} 2",
            "credbroker_revocation_backlog{provider=\"vault\"} 1",
            "credbroker_issue_duration_seconds_count{provider=\"vault\"} 1",
            "credbroker_issue_duration_seconds_bucket{le=\"0.02\",provider=\"vault\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        // A provider gone from the snapshot is gone from the gauges.
        let text = m.render(&Snapshot::default());
        assert!(
            !text.contains("credbroker_leases_active{provider=\"vault\"}"),
            "{text}"
        );
    }
}
