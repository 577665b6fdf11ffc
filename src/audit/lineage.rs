//! `credbroker lineage`: for every credential, the chain that led to it —
//! owner → agent (OAuth client) → token → MCP call (when a gateway's call began the task) →
//! task (tool, workload, process) → leases — read from the journal's tasks, leases and call
//! records, and printed as an indented tree, JSON, or Graphviz DOT.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rusqlite::Connection;
use serde::Serialize;

use crate::journal::JournalError;
use crate::journal::read::{TaskFilter, TaskView, tasks};
use crate::journal::rows::LeaseRow;
use crate::time::rfc3339_ms;

#[derive(Debug, Serialize)]
pub struct Lineage {
    pub owners: Vec<OwnerNode>,
    /// True when more tasks matched than the limit; narrow the filters.
    pub truncated: bool,
}

#[derive(Debug, Serialize)]
pub struct OwnerNode {
    /// The human (or team) the credentials were issued for; null when none was established.
    pub owner: Option<String>,
    pub clients: Vec<ClientNode>,
}

#[derive(Debug, Serialize)]
pub struct ClientNode {
    pub client_id: String,
    pub tokens: Vec<TokenNode>,
}

#[derive(Debug, Serialize)]
pub struct TokenNode {
    pub fingerprint: String,
    pub issuer: String,
    pub subject: String,
    /// The delegation chain (`act` claims), outermost actor first.
    pub actors: Vec<String>,
    pub jti: String,
    pub owner_source: String,
    pub expires: String,
    pub tasks: Vec<TaskNode>,
}

#[derive(Debug, Serialize)]
pub struct TaskNode {
    pub task_id: String,
    pub tool: String,
    pub workload: String,
    pub peer_uid: u32,
    pub peer_pid: i32,
    pub peer_exe: Option<String>,
    pub peer_unit: Option<String>,
    pub state: String,
    pub created: String,
    pub ended: Option<String>,
    pub end_reason: Option<String>,
    /// The MCP call, through `credbroker gateway`, this task was begun for.
    pub call: Option<CallNode>,
    pub leases: Vec<LeaseNode>,
}

#[derive(Debug, Serialize)]
pub struct CallNode {
    pub call_id: String,
    pub gateway: Option<String>,
    pub method: Option<String>,
    /// The tool (resource URI, prompt) called.
    pub name: Option<String>,
    pub time: String,
    pub source: Option<String>,
    /// The upstream's HTTP status and the call's duration, once recorded.
    pub http_status: Option<u64>,
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct LeaseNode {
    pub lease_id: String,
    pub grant: String,
    pub provider: String,
    pub kind: String,
    pub role: String,
    /// The provider's name for it: Vault lease id, STS session name, GitHub token id.
    pub reference: Option<String>,
    pub state: String,
    pub issued: Option<String>,
    pub expires: Option<String>,
    pub revoked: Option<String>,
}

fn lease_node(l: &LeaseRow) -> LeaseNode {
    LeaseNode {
        lease_id: l.id.to_string(),
        grant: l.grant.to_string(),
        provider: l.provider.to_string(),
        kind: l.kind.to_string(),
        role: crate::journal::rows::role_str(l.role).into(),
        reference: l.reference.as_deref().map(str::to_owned),
        state: l.state.as_str().into(),
        issued: l.issued_ms.map(rfc3339_ms),
        expires: l.expires_ms.map(rfc3339_ms),
        revoked: l.revoked_ms.map(rfc3339_ms),
    }
}

fn task_node(v: &TaskView) -> TaskNode {
    let t = &v.task;
    TaskNode {
        task_id: t.id.to_string(),
        tool: t.tool.to_string(),
        workload: t.workload.to_string(),
        peer_uid: t.peer.uid,
        peer_pid: t.peer.pid,
        peer_exe: t.peer.exe.clone(),
        peer_unit: t.peer.unit.clone(),
        state: t.state.as_str().into(),
        created: rfc3339_ms(t.created_ms),
        ended: t.ended_ms.map(rfc3339_ms),
        end_reason: t.end_reason.as_deref().map(str::to_owned),
        call: None,
        leases: v.leases.iter().map(lease_node).collect(),
    }
}

/// The call's record and, when there is one, its result's.
fn call_node(conn: &Connection, call_id: &str) -> Result<Option<CallNode>, JournalError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM audit WHERE call_id = ?1 AND event IN ('mcp_call', 'mcp_call_finished')
         ORDER BY seq",
        crate::journal::read::AUDIT_COLUMNS
    ))?;
    let records = stmt
        .query_map([call_id], crate::journal::read::audit_record)?
        .collect::<Result<Vec<_>, _>>()?;
    let Some(call) = records
        .iter()
        .find(|r| r.event == crate::record::event::MCP_CALL)
    else {
        return Ok(None);
    };
    let text = |r: &crate::record::AuditRecord, k: &str| {
        r.detail.get(k).and_then(|v| v.as_str()).map(str::to_owned)
    };
    let done = records
        .iter()
        .find(|r| r.event == crate::record::event::MCP_CALL_FINISHED);
    let number = |k: &str| done.and_then(|r| r.detail.get(k)).and_then(|v| v.as_u64());
    Ok(Some(CallNode {
        call_id: call_id.to_owned(),
        gateway: text(call, "gateway"),
        method: text(call, "method"),
        name: call.tool.clone(),
        time: call.time.clone(),
        source: text(call, "source"),
        http_status: number("http_status"),
        duration_ms: number("duration_ms"),
    }))
}

/// The lineage of the tasks matching `filter` (ended ones included), at most `limit` tasks.
pub fn build(
    conn: &Connection,
    filter: &TaskFilter,
    limit: usize,
) -> Result<Lineage, JournalError> {
    let mut f = filter.clone();
    f.include_ended = true;
    f.limit = limit + 1;
    // One snapshot for the tasks and each task's leases.
    let snapshot = conn.unchecked_transaction()?;
    let mut found = tasks(&snapshot, &f)?;
    let mut calls: BTreeMap<String, CallNode> = BTreeMap::new();
    for v in found.iter().take(limit) {
        if let Some(id) = v.task.call_id.as_deref()
            && let Some(node) = call_node(&snapshot, id)?
        {
            calls.insert(id.to_owned(), node);
        }
    }
    snapshot.finish()?;
    let truncated = found.len() > limit;
    found.truncate(limit);
    // Oldest first inside each branch reads like a story.
    found.reverse();
    type Tokens = BTreeMap<String, TokenNode>;
    let mut tree: BTreeMap<Option<String>, BTreeMap<String, Tokens>> = BTreeMap::new();
    for v in &found {
        let t = &v.task;
        let token = tree
            .entry(t.owner.as_deref().map(str::to_owned))
            .or_default()
            .entry(t.client_id.to_string())
            .or_default()
            .entry(t.token_fp.to_string())
            .or_insert_with(|| TokenNode {
                fingerprint: t.token_fp.to_string(),
                issuer: t.issuer.to_string(),
                subject: t.subject.to_string(),
                actors: t.actors.clone(),
                jti: t.jti.to_string(),
                owner_source: t.owner_source.to_string(),
                expires: rfc3339_ms(t.token_exp_ms),
                tasks: Vec::new(),
            });
        let mut node = task_node(v);
        node.call = t.call_id.as_deref().and_then(|id| calls.remove(id));
        token.tasks.push(node);
    }
    Ok(Lineage {
        truncated,
        owners: tree
            .into_iter()
            .map(|(owner, clients)| OwnerNode {
                owner,
                clients: clients
                    .into_iter()
                    .map(|(client_id, tokens)| ClientNode {
                        client_id,
                        tokens: tokens.into_values().collect(),
                    })
                    .collect(),
            })
            .collect(),
    })
}

fn short(fp: &str) -> &str {
    fp.get(..16).unwrap_or(fp)
}

fn owner_label(o: &Option<String>) -> &str {
    o.as_deref().unwrap_or("(no owner)")
}

/// An indented tree, one line per node.
pub fn text(l: &Lineage) -> String {
    let mut out = String::new();
    for o in &l.owners {
        let _ = writeln!(out, "owner {}", owner_label(&o.owner));
        for c in &o.clients {
            let _ = writeln!(out, "  agent (client) {}", c.client_id);
            for t in &c.tokens {
                let via = if t.actors.is_empty() {
                    String::new()
                } else {
                    format!(" act={}", t.actors.join(">"))
                };
                let _ = writeln!(
                    out,
                    "    token sha256:{}… sub={}{via} iss={} owner from {}",
                    short(&t.fingerprint),
                    t.subject,
                    t.issuer,
                    t.owner_source
                );
                for k in &t.tasks {
                    // A task begun for an MCP call sits under the call.
                    let pad = match &k.call {
                        Some(c) => {
                            let _ = writeln!(
                                out,
                                "      call {} {} {} via {} from {} {}{}",
                                c.call_id,
                                c.method.as_deref().unwrap_or("-"),
                                c.name.as_deref().unwrap_or("-"),
                                c.gateway.as_deref().unwrap_or("-"),
                                c.source.as_deref().unwrap_or("-"),
                                c.time,
                                c.http_status
                                    .map(|s| format!(" → {s} in {} ms", c.duration_ms.unwrap_or(0)))
                                    .unwrap_or_default()
                            );
                            "  "
                        }
                        None => "",
                    };
                    let _ = writeln!(
                        out,
                        "{pad}      task {} tool={} workload={} pid={} {} {}{}",
                        k.task_id,
                        k.tool,
                        k.workload,
                        k.peer_pid,
                        k.state,
                        k.created,
                        k.ended
                            .as_ref()
                            .map(|e| format!(" → {e} ({})", k.end_reason.as_deref().unwrap_or("")))
                            .unwrap_or_default()
                    );
                    for s in &k.leases {
                        let _ = writeln!(
                            out,
                            "{pad}        lease {} {} {}/{} {} ref={} issued={} revoked={}",
                            s.lease_id,
                            s.role,
                            s.provider,
                            s.grant,
                            s.state,
                            s.reference.as_deref().unwrap_or("-"),
                            s.issued.as_deref().unwrap_or("-"),
                            s.revoked.as_deref().unwrap_or("-"),
                        );
                    }
                }
            }
        }
    }
    if l.truncated {
        out.push_str("(more tasks matched than --limit; narrow the filters)\n");
    }
    out
}

/// A DOT string literal: every value comes from tokens and configuration, so nothing is
/// trusted to be free of quotes, backslashes or newlines.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' | '\r' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Graphviz DOT, left to right: `dot -Tsvg lineage.dot > lineage.svg`.
pub fn dot(l: &Lineage) -> String {
    let mut out = String::from(
        "digraph lineage {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n",
    );
    let mut n = 0usize;
    let mut node = |out: &mut String, label: String, attrs: &str| {
        n += 1;
        let _ = writeln!(out, "  n{n} [label={}{attrs}];", quoted(&label));
        n
    };
    let edge = |out: &mut String, a: usize, b: usize| {
        let _ = writeln!(out, "  n{a} -> n{b};");
    };
    for o in &l.owners {
        let on = node(
            &mut out,
            format!("owner\n{}", owner_label(&o.owner)),
            ", shape=ellipse",
        );
        for c in &o.clients {
            let cn = node(&mut out, format!("agent (client)\n{}", c.client_id), "");
            edge(&mut out, on, cn);
            for t in &c.tokens {
                let mut label =
                    format!("token sha256:{}…\nsub {}", short(&t.fingerprint), t.subject);
                if !t.actors.is_empty() {
                    let _ = write!(label, "\nact {}", t.actors.join(" > "));
                }
                let tn = node(&mut out, label, ", shape=note");
                edge(&mut out, cn, tn);
                for k in &t.tasks {
                    let from = match &k.call {
                        Some(c) => {
                            let label = format!(
                                "MCP call {}\n{} {}",
                                c.call_id,
                                c.method.as_deref().unwrap_or("-"),
                                c.name.as_deref().unwrap_or("-")
                            );
                            let cn = node(&mut out, label, ", shape=cds");
                            edge(&mut out, tn, cn);
                            cn
                        }
                        None => tn,
                    };
                    let kn = node(
                        &mut out,
                        format!(
                            "task {}\ntool {}\nworkload {} (pid {})\n{}",
                            k.task_id, k.tool, k.workload, k.peer_pid, k.state
                        ),
                        "",
                    );
                    edge(&mut out, from, kn);
                    for s in &k.leases {
                        let color = match s.state.as_str() {
                            "active" => ", color=darkgreen",
                            "revoked" => ", color=gray40",
                            _ => ", color=firebrick",
                        };
                        let ln = node(
                            &mut out,
                            format!(
                                "{} {}\n{} / {}\n{}\n{}",
                                s.role,
                                s.lease_id,
                                s.provider,
                                s.grant,
                                s.reference.as_deref().unwrap_or("-"),
                                s.state
                            ),
                            color,
                        );
                        edge(&mut out, kn, ln);
                    }
                }
            }
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_quotes_hostile_values() {
        assert_eq!(quoted("a\"b\\c\nd\u{7}"), "\"a\\\"b\\\\c\\nd\"");
        let l = Lineage {
            truncated: false,
            owners: vec![OwnerNode {
                owner: Some("x\" -> evil [label=\"".into()),
                clients: vec![],
            }],
        };
        let d = dot(&l);
        assert!(d.contains("\"owner\\nx\\\" -> evil [label=\\\"\""), "{d}");
        assert_eq!(
            d.matches("->").count(),
            1,
            "only the quoted text, no edge: {d}"
        );
    }
}
