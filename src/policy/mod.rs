//! Policy: which grants a validated token may use, for whom, and for how long.
//!
//! Deny by default. A grant is issued only when the workload lists it, the token holds every one
//! of its scopes, every claim condition holds and the tool is allowed; a request can narrow a
//! grant's parameters and lifetime, never widen them.

mod owner;
/// Kept at its old path for callers (`policy::template`); it is a leaf now.
pub use crate::template;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credbroker_provider_api::{Narrowing, ParamRule, Params};
use serde_json::Value;

use crate::config::{Attribution, BrokerSettings, Config, GrantConfig, WorkloadConfig};
use crate::record::reason::{self, Reason};
use crate::token::Claims;
pub use owner::{Owner, OwnerSource, attribute};
use template::{RenderError, Vars};

/// One grant as asked for in a request.
#[derive(Clone, Debug, Default)]
pub struct GrantAsk {
    pub name: String,
    pub narrow: BTreeMap<String, Vec<String>>,
}

/// Everything policy needs to decide.
pub struct Ask<'a> {
    pub workload: &'a WorkloadConfig,
    pub claims: &'a Claims,
    pub tool: &'a str,
    pub grants: &'a [GrantAsk],
    pub ttl: Option<Duration>,
    pub task_id: &'a str,
    pub now: SystemTime,
}

/// A grant resolved for one task.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub grant: Arc<GrantConfig>,
    /// Rendered and narrowed; shared with the grant when it has no template to render.
    pub params: Arc<Params>,
}

#[derive(Clone, Debug)]
pub struct Decision {
    pub owner: Owner,
    pub expires_at: SystemTime,
    pub grants: Vec<Resolved>,
}

/// How a denial surfaces to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenialKind {
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
}

/// A refusal with a stable reason code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub kind: DenialKind,
    pub code: Reason,
    pub message: String,
    pub grant: Option<String>,
}

impl Denial {
    fn new(kind: DenialKind, code: Reason, grant: Option<&str>, message: String) -> Self {
        Self {
            kind,
            code,
            message,
            grant: grant.map(str::to_owned),
        }
    }
}

/// The grants, attribution rules and limits of one configuration.
pub struct Policy {
    grants: HashMap<String, Arc<GrantConfig>>,
    /// The parameters of grants without templates, shared by all their leases.
    fixed: HashMap<String, Arc<Params>>,
    attribution: Attribution,
    settings: BrokerSettings,
    /// provider instance → what its grant parameters allow (narrowing, case).
    rules: HashMap<String, &'static [ParamRule]>,
}

impl Policy {
    pub fn new(config: &Config, rules: HashMap<String, &'static [ParamRule]>) -> Self {
        Self {
            grants: config
                .grants
                .iter()
                .map(|(k, g)| (k.clone(), Arc::new(g.clone())))
                .collect(),
            fixed: config
                .grants
                .iter()
                .filter(|(_, g)| !template::has_placeholders(&g.params))
                .map(|(k, g)| (k.clone(), Arc::new(g.params.clone())))
                .collect(),
            attribution: config.attribution.clone(),
            settings: config.broker.clone(),
            rules,
        }
    }

    pub fn grant(&self, name: &str) -> Option<&Arc<GrantConfig>> {
        self.grants.get(name)
    }

    pub fn decide(&self, ask: &Ask<'_>) -> Result<Decision, Denial> {
        use DenialKind::*;
        let owner = attribute(ask.claims, &self.attribution);
        if self.attribution.require_owner && owner.id.is_none() {
            return Err(Denial::new(
                PermissionDenied,
                reason::OWNER_REQUIRED,
                None,
                format!(
                    "no owner can be attributed to client {:?}; require_owner is set",
                    ask.claims.client_id
                ),
            ));
        }

        let mut resolved = Vec::with_capacity(ask.grants.len());
        let mut ttl_cap = Duration::MAX;
        let mut default_ttl: Option<Duration> = None;
        for g in ask.grants {
            let grant = self.grants.get(&g.name).ok_or_else(|| {
                Denial::new(
                    InvalidArgument,
                    reason::UNKNOWN_GRANT,
                    Some(&g.name),
                    format!("no grant named {:?}", g.name),
                )
            })?;
            let name = Some(g.name.as_str());
            if !ask.workload.grants.contains(&g.name) {
                return Err(Denial::new(
                    PermissionDenied,
                    reason::GRANT_NOT_ALLOWED,
                    name,
                    format!(
                        "workload {:?} may not request grant {:?}",
                        ask.workload.name, g.name
                    ),
                ));
            }
            if grant.issuer != ask.claims.issuer {
                return Err(Denial::new(
                    PermissionDenied,
                    reason::ISSUER_NOT_ALLOWED,
                    name,
                    format!(
                        "grant {:?} is for tokens of another issuer than {:?}",
                        g.name, ask.claims.issuer
                    ),
                ));
            }
            if let Some(missing) = grant.scopes.iter().find(|s| !ask.claims.has_scope(s)) {
                return Err(Denial::new(
                    PermissionDenied,
                    reason::INSUFFICIENT_SCOPE,
                    name,
                    format!(
                        "grant {:?} needs scope {missing:?}, which the token does not hold",
                        g.name
                    ),
                ));
            }
            for (path, allowed) in &grant.conditions {
                if !condition_holds(ask.claims.lookup(path), allowed) {
                    return Err(Denial::new(
                        PermissionDenied,
                        reason::CONDITION_NOT_MET,
                        name,
                        format!(
                            "grant {:?}: claim {path:?} does not hold an allowed value",
                            g.name
                        ),
                    ));
                }
            }
            if grant.tools.as_ref().is_some_and(|t| !t.contains(ask.tool)) {
                return Err(Denial::new(
                    PermissionDenied,
                    reason::TOOL_NOT_ALLOWED,
                    name,
                    format!("grant {:?} is not for tool {:?}", g.name, ask.tool),
                ));
            }
            let vars = Vars {
                sub: &ask.claims.subject,
                client_id: &ask.claims.client_id,
                owner: owner.id.as_deref(),
                task_id: ask.task_id,
                workload: &ask.workload.name,
                tool: ask.tool,
                grant: &g.name,
            };
            let params = match self.fixed.get(&g.name) {
                Some(fixed) if g.narrow.is_empty() => Arc::clone(fixed),
                _ => {
                    let rules = self.rules.get(&grant.provider).copied().unwrap_or(&[]);
                    let mut params = template::render(&grant.params, &vars, rules)
                        .map_err(|e| render_denial(&g.name, e))?;
                    self.narrow(grant, &g.narrow, &mut params)?;
                    Arc::new(params)
                }
            };
            ttl_cap = ttl_cap.min(grant.max_ttl);
            if let Some(d) = grant.default_ttl {
                default_ttl = Some(default_ttl.map_or(d, |cur| cur.min(d)));
            }
            resolved.push(Resolved {
                grant: Arc::clone(grant),
                params,
            });
        }

        let wanted = ask.ttl.or(default_ttl).unwrap_or(self.settings.default_ttl);
        let token_exp = UNIX_EPOCH + Duration::from_secs(ask.claims.expires_at.max(0) as u64);
        let expires_at = (ask.now + wanted.min(ttl_cap)).min(token_exp);
        if expires_at <= ask.now {
            return Err(Denial::new(
                Unauthenticated,
                reason::EXPIRED,
                None,
                "the token expires now".into(),
            ));
        }
        Ok(Decision {
            owner,
            expires_at,
            grants: resolved,
        })
    }

    fn narrow(
        &self,
        grant: &GrantConfig,
        narrow: &BTreeMap<String, Vec<String>>,
        params: &mut Params,
    ) -> Result<(), Denial> {
        use DenialKind::*;
        let rules = self.rules.get(&grant.provider).copied().unwrap_or(&[]);
        for (key, wanted) in narrow {
            let name = Some(grant.name.as_str());
            let rule = rules.iter().find(|r| r.key == key);
            if rule.is_none_or(|r| r.narrowing != Narrowing::Subset) {
                return Err(Denial::new(
                    InvalidArgument,
                    reason::NARROWING_NOT_ALLOWED,
                    name,
                    format!(
                        "grant {:?}: parameter {key:?} cannot be narrowed",
                        grant.name
                    ),
                ));
            }
            let have: Vec<&str> = match params.get(key) {
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if wanted.is_empty() || wanted.iter().any(|w| !have.contains(&w.as_str())) {
                return Err(Denial::new(
                    PermissionDenied,
                    reason::NARROWING_EXCEEDS_GRANT,
                    name,
                    format!(
                        "grant {:?}: {key:?} may only be narrowed to a non-empty subset of what it allows",
                        grant.name
                    ),
                ));
            }
            params.insert(
                key.clone(),
                Value::Array(wanted.iter().cloned().map(Value::String).collect()),
            );
        }
        Ok(())
    }
}

fn render_denial(grant: &str, e: RenderError) -> Denial {
    use DenialKind::*;
    let name = Some(grant);
    match e {
        RenderError::Missing(p) => Denial::new(
            PermissionDenied,
            reason::OWNER_REQUIRED,
            name,
            format!("grant {grant:?} uses {{{p}}} but the task has none"),
        ),
        RenderError::Unsafe(p) => Denial::new(
            PermissionDenied,
            reason::TEMPLATE_VALUE_REJECTED,
            name,
            format!(
                "grant {grant:?}: the value for {{{p}}} is not one plain path segment \
                 ([A-Za-z0-9@._+:|-], not '.', no '..')"
            ),
        ),
        RenderError::CaseFolded { placeholder, param } => Denial::new(
            PermissionDenied,
            reason::TEMPLATE_VALUE_REJECTED,
            name,
            format!(
                "grant {grant:?}: the value for {{{placeholder}}} has upper-case letters, and \
                 the provider compares {param:?} without case: it could name another \
                 principal's resource"
            ),
        ),
        RenderError::DotSegment { param } => Denial::new(
            PermissionDenied,
            reason::TEMPLATE_VALUE_REJECTED,
            name,
            format!("grant {grant:?}: {param:?} would render a '.' or '..' path segment"),
        ),
    }
}

fn condition_holds(value: Option<&Value>, allowed: &[String]) -> bool {
    match value {
        Some(Value::String(s)) => allowed.contains(s),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .any(|s| allowed.iter().any(|a| a == s)),
        Some(Value::Bool(b)) => allowed
            .iter()
            .any(|a| a == if *b { "true" } else { "false" }),
        _ => false,
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
