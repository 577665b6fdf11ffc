//! What each tool takes. Unknown fields are refused, not ignored: a misspelt filter must not
//! widen a query or, for `revoke`, what gets revoked.

use rmcp::schemars::{self, JsonSchema};
use serde::Deserialize;

use crate::cli::admin::SelectorArgs;
use crate::cli::audit::{FilterArgs, RecordArgs, fingerprint};
use crate::record::{Reason, event, reason};

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LineageInput {
    /// The human (or team) the credentials were issued for, e.g. alice@example.com.
    pub owner: Option<String>,
    /// The OAuth client id of the calling agent.
    pub client: Option<String>,
    /// The token's subject (`sub`).
    pub sub: Option<String>,
    /// The token's fingerprint as every output prints it: `sha256:` and 64 hex digits.
    pub token: Option<String>,
    /// One task, by id.
    pub task: Option<String>,
    /// Only tasks that held a lease of this grant.
    pub grant: Option<String>,
    /// Only tasks that held a lease from this provider.
    pub provider: Option<String>,
    /// Tasks created from: an RFC 3339 time, or a duration meaning that long ago (`24h`).
    pub since: Option<String>,
    /// Tasks created before (exclusive): an RFC 3339 time or a duration ago.
    pub until: Option<String>,
    /// At most this many tasks, newest first (1–100000; default 1000).
    pub limit: Option<usize>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQueryInput {
    /// Count records of these events only, e.g. `mcp_call` (one per MCP call through the
    /// gateway), `task_begun`, `lease_issued`, `lease_revoked`.
    #[serde(default)]
    pub event: Vec<String>,
    /// `success`, `denied` or `failure`.
    pub outcome: Option<Outcome>,
    /// A reason code, e.g. `insufficient_scope`, `token_expired`.
    pub reason: Option<String>,
    pub owner: Option<String>,
    /// The OAuth client id of the calling agent.
    pub client: Option<String>,
    pub sub: Option<String>,
    /// The token's fingerprint: `sha256:` and 64 hex digits.
    pub token: Option<String>,
    pub grant: Option<String>,
    pub provider: Option<String>,
    pub task: Option<String>,
    /// One MCP call (its `call_id`).
    pub call: Option<String>,
    /// From: an RFC 3339 time, or a duration meaning that long ago (`24h`).
    pub since: Option<String>,
    /// Until (exclusive): an RFC 3339 time or a duration ago.
    pub until: Option<String>,
    /// Group the counts by these, in order. For MCP calls, `workload` is the gateway (the MCP
    /// server called) and `tool` the tool.
    #[serde(default)]
    pub group_by: Vec<GroupKey>,
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum Outcome {
    Success,
    Denied,
    Failure,
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum GroupKey {
    Client,
    Owner,
    Grant,
    Provider,
    Event,
    Outcome,
    Reason,
    Workload,
    Tool,
    Sub,
    Token,
    Day,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TasksListInput {
    pub owner: Option<String>,
    /// The OAuth client id of the calling agent.
    pub client: Option<String>,
    pub subject: Option<String>,
    /// The token's `jti`.
    pub jti: Option<String>,
    pub grant: Option<String>,
    pub provider: Option<String>,
    /// The MCP server (workload) that began the task.
    pub workload: Option<String>,
    /// Include ended tasks (default: live ones only).
    #[serde(default)]
    pub include_ended: bool,
    /// At most this many, newest first (default 100).
    pub limit: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeInput {
    /// One task, by id. Give this or at least one selector field, not both.
    pub task_id: Option<String>,
    /// Every live task of this owner.
    pub owner: Option<String>,
    /// Every live task of this OAuth client (agent).
    pub client: Option<String>,
    pub subject: Option<String>,
    /// Every live task of this token (`jti`).
    pub jti: Option<String>,
    pub grant: Option<String>,
    pub provider: Option<String>,
    pub workload: Option<String>,
    /// Why: recorded in the audit log with the revocation. Required.
    pub reason: String,
}

fn token(t: Option<String>) -> Result<Option<String>, String> {
    t.map(|t| fingerprint(&t)).transpose()
}

impl LineageInput {
    pub(super) fn filter(self) -> Result<(FilterArgs, Option<String>, usize), String> {
        let f = FilterArgs {
            owner: self.owner,
            client: self.client,
            sub: self.sub,
            token: token(self.token)?,
            grant: self.grant,
            provider: self.provider,
            since: self.since,
            until: self.until,
        };
        Ok((f, self.task, self.limit.unwrap_or(1000)))
    }
}

impl AuditQueryInput {
    pub(super) fn records(self) -> Result<(RecordArgs, Vec<String>), String> {
        if let Some(e) = self
            .event
            .iter()
            .find(|e| !event::ALL.contains(&e.as_str()))
        {
            return Err(format!(
                "unknown event {e:?}; known events: {}",
                event::ALL.join(", ")
            ));
        }
        if let Some(r) = &self.reason
            && !reason::ALL.iter().any(|k| Reason::as_str(*k) == r)
        {
            return Err(format!(
                "unknown reason code {r:?} (the operations manual lists them)"
            ));
        }
        let records = RecordArgs {
            filter: FilterArgs {
                owner: self.owner,
                client: self.client,
                sub: self.sub,
                token: token(self.token)?,
                grant: self.grant,
                provider: self.provider,
                since: self.since,
                until: self.until,
            },
            event: self.event,
            outcome: self.outcome.map(|o| {
                match o {
                    Outcome::Success => "success",
                    Outcome::Denied => "denied",
                    Outcome::Failure => "failure",
                }
                .to_string()
            }),
            reason: self.reason,
            task: self.task,
            call: self.call,
            after_seq: None,
        };
        let keys = self
            .group_by
            .iter()
            .map(|k| group_name(*k).to_string())
            .collect();
        Ok((records, keys))
    }
}

fn group_name(k: GroupKey) -> &'static str {
    match k {
        GroupKey::Client => "client",
        GroupKey::Owner => "owner",
        GroupKey::Grant => "grant",
        GroupKey::Provider => "provider",
        GroupKey::Event => "event",
        GroupKey::Outcome => "outcome",
        GroupKey::Reason => "reason",
        GroupKey::Workload => "workload",
        GroupKey::Tool => "tool",
        GroupKey::Sub => "sub",
        GroupKey::Token => "token",
        GroupKey::Day => "day",
    }
}

impl TasksListInput {
    pub(super) fn selector(self) -> (SelectorArgs, bool, u32) {
        let s = SelectorArgs {
            jti: self.jti,
            subject: self.subject,
            client: self.client,
            owner: self.owner,
            grant: self.grant,
            provider: self.provider,
            workload: self.workload,
        };
        (s, self.include_ended, self.limit.unwrap_or(100))
    }
}

impl RevokeInput {
    /// The task id or the selector, and the reason; refused when neither or both are given or
    /// the reason is empty (an unexplained revocation helps no one reading the trail later).
    pub(super) fn target(self) -> Result<(Option<String>, SelectorArgs, String), String> {
        if self.reason.trim().is_empty() {
            return Err("give a reason: it is recorded with the revocation".into());
        }
        let s = SelectorArgs {
            jti: self.jti,
            subject: self.subject,
            client: self.client,
            owner: self.owner,
            grant: self.grant,
            provider: self.provider,
            workload: self.workload,
        };
        let any = [
            &s.jti,
            &s.subject,
            &s.client,
            &s.owner,
            &s.grant,
            &s.provider,
            &s.workload,
        ]
        .iter()
        .any(|v| v.as_deref().is_some_and(|v| !v.is_empty()));
        match (&self.task_id, any) {
            (Some(_), true) => Err("give a task_id or selector fields, not both".into()),
            (None, false) => Err(
                "give a task_id, or at least one of owner, client, subject, jti, grant, \
                 provider, workload"
                    .into(),
            ),
            _ => Ok((self.task_id, s, self.reason)),
        }
    }
}
