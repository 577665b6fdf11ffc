//! The provider: AssumeRole per credential, revocation through the role's deny list
//! (`denylist`), the online checks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_sts::types::{PolicyDescriptorType, Tag};
use credbroker_provider_api::Credential;
use credbroker_provider_api::{
    ErrorKind, IssueRequest, Issued, LeaseRef, ParamError, Params, Provider, ProviderError,
    ProviderHealth, Reconciled, RevocationHandle, Revoked, Role, SecretValue, TaskContext,
};
use tokio::sync::OnceCell;

use crate::clients::{Clients, build_clients};
use crate::deny::{Entry, Outcome};
use crate::denylist::DenyList;
use crate::errors::{Effect, classify};
use crate::grant::{self, Grant, MAX_DURATION, MIN_DURATION};
use crate::session::{duration_for, duration_refused, session_tags, source_identity};
use crate::{Revocation, Settings};

/// A session policy that allows nothing: the dry AssumeRole of `check-config --online`.
const DENY_ALL: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}"#;
/// A role's maximum session duration when IAM cannot be asked (STS's default for a role).
const DEFAULT_ROLE_MAX: Duration = Duration::from_secs(3600);

pub(crate) struct AwsProvider {
    pub(crate) name: String,
    pub(crate) settings: Settings,
    /// Built on first use: loading the SDK configuration is async and may read files.
    clients: OnceCell<Clients>,
    /// One deny-list writer per role.
    pub(crate) deny_lists: Mutex<HashMap<String, Arc<DenyList>>>,
    /// Roles' MaxSessionDuration, learnt when STS refused a longer session.
    role_max: Mutex<HashMap<String, Duration>>,
}

impl AwsProvider {
    pub(crate) fn new(name: &str, settings: Settings) -> Self {
        Self {
            name: name.to_string(),
            settings,
            clients: OnceCell::new(),
            deny_lists: Mutex::new(HashMap::new()),
            role_max: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn clients(&self) -> &Clients {
        self.clients
            .get_or_init(|| build_clients(&self.settings))
            .await
    }

    fn grant(params: &Params) -> Result<Grant, ProviderError> {
        grant::parse(params).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            ProviderError::new(ErrorKind::Config, list.join("; "))
        })
    }

    fn role_max(&self, role_arn: &str) -> Duration {
        self.role_max
            .lock()
            .ok()
            .and_then(|m| m.get(role_arn).copied())
            .unwrap_or(MAX_DURATION)
    }

    /// The role's MaxSessionDuration from IAM, or STS's default when IAM will not say.
    async fn learn_role_max(&self, g: &Grant) -> Duration {
        let iam = &self.clients().await.iam;
        let max = match iam.get_role().role_name(g.role_name()).send().await {
            Ok(out) => out
                .role()
                .and_then(|r| r.max_session_duration())
                .and_then(|s| u64::try_from(s).ok())
                .map_or(DEFAULT_ROLE_MAX, Duration::from_secs),
            Err(e) => {
                let e = classify("GetRole", &e, Effect::ReadsOrIdempotent);
                tracing::warn!(provider = %self.name, role = %g.role_arn, error = %e,
                    "cannot read the role's maximum session duration; assuming one hour");
                DEFAULT_ROLE_MAX
            }
        };
        if let Ok(mut m) = self.role_max.lock() {
            m.insert(g.role_arn.clone(), max);
        }
        max
    }

    async fn assume(
        &self,
        req: &IssueRequest<'_>,
        g: &Grant,
        duration: Duration,
    ) -> Result<aws_sdk_sts::operation::assume_role::AssumeRoleOutput, ProviderError> {
        let sts = &self.clients().await.sts;
        let task = req.task;
        let mut call = sts
            .assume_role()
            .role_arn(&g.role_arn)
            .role_session_name(grant::session_name(&g.session_name_prefix, req.lease_id))
            .duration_seconds(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX))
            .set_external_id(g.external_id.clone())
            .set_policy(g.session_policy.clone());
        if let Some(identity) = source_identity(task) {
            call = call.source_identity(identity);
        }
        for arn in &g.policy_arns {
            call = call.policy_arns(PolicyDescriptorType::builder().arn(arn).build());
        }
        for (key, value) in session_tags(task, req.grant) {
            let tag = Tag::builder().key(key).value(value).build().map_err(|e| {
                ProviderError::new(ErrorKind::Config, format!("session tag {key}: {e}"))
            })?;
            call = call.tags(tag);
            if g.transitive_tags {
                call = call.transitive_tag_keys(key);
            }
        }
        call.send().await.map_err(|e| {
            classify(
                &format!("AssumeRole of {} for grant {}", g.role_arn, req.grant),
                &e,
                Effect::Creates,
            )
        })
    }
}

#[async_trait::async_trait]
impl Provider for AwsProvider {
    fn kind(&self) -> &'static str {
        "aws"
    }

    fn check_grant(&self, params: &Params) -> Result<(), Vec<ParamError>> {
        grant::parse(params).map(|_| ())
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, ProviderError> {
        if req.role != Role::Credential {
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                "the AWS provider has no per-task scope",
            ));
        }
        let g = Self::grant(req.params)?;
        let mut duration = duration_for(
            req.expires_at,
            req.now,
            g.duration,
            self.role_max(&g.role_arn),
        );
        let out = match self.assume(req, &g, duration).await {
            Err(e) if duration_refused(&e) && duration > DEFAULT_ROLE_MAX => {
                // Longer than the role allows: learn its maximum, ask again, once.
                let max = self.learn_role_max(&g).await;
                duration = duration_for(req.expires_at, req.now, g.duration, max);
                self.assume(req, &g, duration).await?
            }
            other => other?,
        };
        let (Some(creds), Some(user)) = (out.credentials(), out.assumed_role_user()) else {
            return Err(ProviderError::new(
                ErrorKind::OutcomeUnknown,
                format!(
                    "AssumeRole of {}: the answer has no credentials",
                    g.role_arn
                ),
            ));
        };
        let expires_at = SystemTime::try_from(*creds.expiration()).unwrap_or(req.now + duration);
        // What an SDK is told: the end of the task, when the session is denied or its use is
        // over, not STS's expiry (at least 15 minutes away), or it keeps using cached
        // credentials it believes valid. The lease keeps STS's expiry: the deny entry and any
        // residual exposure are measured against that.
        let usable_until = expires_at.min(req.expires_at.max(req.now));
        let mut credential = Credential::default();
        credential
            .public
            .insert("AWS_ACCESS_KEY_ID".into(), creds.access_key_id().into());
        credential.public.insert(
            "AWS_CREDENTIAL_EXPIRATION".into(),
            humantime::format_rfc3339_seconds(credbroker_provider_api::clamp_rfc3339(usable_until))
                .to_string(),
        );
        credential
            .public
            .insert("AWS_SESSION_ARN".into(), user.arn().into());
        if let Some(region) = &self.clients().await.region {
            // Both: the newer SDKs read AWS_REGION, boto3 and the older ones AWS_DEFAULT_REGION.
            credential
                .public
                .insert("AWS_REGION".into(), region.clone());
            credential
                .public
                .insert("AWS_DEFAULT_REGION".into(), region.clone());
        }
        credential.secret.insert(
            "AWS_SECRET_ACCESS_KEY".into(),
            SecretValue::new(creds.secret_access_key()),
        );
        credential.secret.insert(
            "AWS_SESSION_TOKEN".into(),
            SecretValue::new(creds.session_token()),
        );
        Ok(Issued {
            credential,
            handle: RevocationHandle {
                // ROLE_ID:SESSION_NAME, the session's aws:userid.
                reference: user.assumed_role_id().to_string(),
                secret: None,
            },
            expires_at,
            renewable: false,
        })
    }

    async fn revoke(
        &self,
        lease: &LeaseRef<'_>,
        now: SystemTime,
    ) -> Result<Revoked, ProviderError> {
        // Past its expiry by our clock, the session is still denied: STS's clock decides when it
        // stops working, and an entry past its `until` is pruned at the next write anyway.
        match self.settings.revocation {
            Revocation::Expire => Ok(Revoked::WillExpire {
                at: lease.expires_at,
            }),
            Revocation::DenySession => {
                let g = Self::grant(lease.params)?;
                let entry = Entry {
                    userid: lease.handle.reference.clone(),
                    until: lease.expires_at,
                };
                Ok(match self.deny(&g, entry, now).await? {
                    Outcome::Denied => Revoked::Revoked,
                    Outcome::CutOff { issued_before } => Revoked::CutOff { issued_before },
                })
            }
        }
    }

    async fn reconcile(
        &self,
        req: &IssueRequest<'_>,
        now: SystemTime,
    ) -> Result<Reconciled, ProviderError> {
        // STS cannot list sessions. Whatever AssumeRole may have issued for this lease was
        // named after it and lives at most the grant's duration from now.
        let g = Self::grant(req.params)?;
        let until = now + g.duration.max(MIN_DURATION);
        match self.settings.revocation {
            Revocation::Expire => Ok(Reconciled::WillExpire { at: until }),
            Revocation::DenySession => {
                let entry = Entry {
                    // The role id is unknown without an answer; the session name is unique.
                    userid: format!(
                        "*:{}",
                        grant::session_name(&g.session_name_prefix, req.lease_id)
                    ),
                    until,
                };
                Ok(match self.deny(&g, entry, now).await? {
                    Outcome::Denied => Reconciled::Revoked,
                    Outcome::CutOff { issued_before } => Reconciled::CutOff { issued_before },
                })
            }
        }
    }

    fn explain(&self, grants: &[(&str, &Params)]) -> Vec<String> {
        let mut roles: BTreeMap<&str, (Vec<&str>, Option<String>)> = BTreeMap::new();
        let parsed: Vec<(&str, Grant)> = grants
            .iter()
            .filter_map(|(name, p)| grant::parse(p).ok().map(|g| (*name, g)))
            .collect();
        for (name, g) in &parsed {
            let e = roles.entry(&g.role_arn).or_default();
            e.0.push(name);
            if g.external_id.is_some() {
                e.1.clone_from(&g.external_id);
            }
        }
        let mut out = Vec::new();
        for (role, (names, external_id)) in roles {
            let mut statement = serde_json::json!({
                "Effect": "Allow",
                "Principal": {"AWS": "<credbroker's own role or user ARN>"},
                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
            });
            if let Some(id) = external_id {
                statement["Condition"] =
                    serde_json::json!({"StringEquals": {"sts:ExternalId": id}});
            }
            let mut text = format!(
                "  role {role} (grant {}): its trust policy must allow credbroker to assume it, \
                 tag the session and set its source identity:\n    {}\n",
                names.join(", "),
                statement
            );
            match self.settings.revocation {
                Revocation::Expire => text.push_str(
                    "  revocation = \"expire\": ending a task calls nothing; each session keeps \
                     working until it expires (at least 15 minutes after issue), recorded as \
                     residual exposure in the audit log and shown by `tasks show`.",
                ),
                Revocation::DenySession => text.push_str(&format!(
                    "  revocation = \"deny-session\": credbroker's identity needs \
                     iam:GetRolePolicy and iam:PutRolePolicy on {role} (inline policy {}); \
                     ended sessions are denied within IAM's propagation delay (seconds).",
                    self.settings.deny_policy_name
                )),
            }
            out.push(text);
        }
        out
    }

    async fn check_online(&self, grants: &[(&str, &Params)]) -> Vec<String> {
        let clients = self.clients().await;
        let mut problems = Vec::new();
        if let Err(e) = clients.sts.get_caller_identity().send().await {
            problems.push(classify("GetCallerIdentity", &e, Effect::ReadsOrIdempotent).to_string());
            return problems;
        }
        let check = TaskContext {
            task_id: "check-config".into(),
            subject: "credbroker-check".into(),
            client_id: "credbroker-check".into(),
            owner: Some("credbroker-check".into()),
            ..TaskContext::default()
        };
        for (name, params) in grants {
            let Ok(g) = grant::parse(params) else {
                continue;
            };
            // A real AssumeRole, but of a session that can do nothing and ends in 15 minutes:
            // proves the trust policy allows AssumeRole, TagSession and SetSourceIdentity.
            let dry = Grant {
                session_policy: Some(DENY_ALL.into()),
                policy_arns: Vec::new(),
                session_name_prefix: "credbroker-check".into(),
                ..g.clone()
            };
            let req = IssueRequest {
                lease_id: "check",
                role: Role::Credential,
                task: &check,
                scope: None,
                grant: name,
                params,
                expires_at: SystemTime::now(),
                now: SystemTime::now(),
                subject_token: None,
            };
            if let Err(e) = self.assume(&req, &dry, MIN_DURATION).await {
                problems.push(format!("grant {name}: {e}"));
                continue;
            }
            if self.settings.revocation == Revocation::DenySession {
                let read = clients
                    .iam
                    .get_role_policy()
                    .role_name(g.role_name())
                    .policy_name(&self.settings.deny_policy_name)
                    .send()
                    .await;
                if let Err(e) = read {
                    let e = classify("GetRolePolicy", &e, Effect::ReadsOrIdempotent);
                    if e.kind != ErrorKind::NotFound {
                        problems.push(format!("grant {name}: deny-session needs it: {e}"));
                    }
                }
            }
        }
        problems
    }

    async fn health(&self) -> ProviderHealth {
        match self.clients().await.sts.get_caller_identity().send().await {
            Ok(me) => ProviderHealth {
                healthy: true,
                detail: format!("as {}", me.arn().unwrap_or("?")),
            },
            Err(e) => ProviderHealth {
                healthy: false,
                detail: classify("GetCallerIdentity", &e, Effect::ReadsOrIdempotent).to_string(),
            },
        }
    }
}
