//! The provider: installation tokens narrowed to the grant, checked against what GitHub granted,
//! revoked with `DELETE /installation/token`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use credbroker_provider_api::{
    Credential, ErrorKind, IssueRequest, Issued, LeaseRef, ParamError, ParamRule, Params, Provider,
    ProviderError, ProviderHealth, Reconciled, RevocationHandle, Revoked, Role, SecretValue,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::answer::{excess, fingerprint, refusal};
use crate::app::AppJwt;
use crate::client::{Answer, Call, Client};
use crate::grant::{self, Grant, Installation, level};

/// GitHub's cap on an installation token's life.
const TOKEN_MAX_LIFE: Duration = Duration::from_secs(3600);

pub(crate) struct GithubProvider {
    pub(crate) name: String,
    pub(crate) api_url: String,
    pub(crate) app: AppJwt,
    pub(crate) client: Client,
    /// Installations found by owner/repository, so the lookup is made once.
    pub(crate) installations: Mutex<HashMap<Installation, u64>>,
}

impl GithubProvider {
    fn grant(params: &Params) -> Result<Grant, ProviderError> {
        grant::parse(params).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            ProviderError::new(ErrorKind::Config, list.join("; "))
        })
    }

    fn jwt(&self) -> Result<SecretValue, ProviderError> {
        self.app
            .current(SystemTime::now())
            .map_err(|e| ProviderError::new(ErrorKind::Config, e))
    }

    async fn app_call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        creates: bool,
    ) -> Result<Answer, ProviderError> {
        let jwt = self.jwt()?;
        self.client
            .send(&Call {
                what,
                method,
                path,
                auth: &jwt,
                body,
                creates,
            })
            .await
    }

    async fn installation_id(&self, g: &Grant) -> Result<u64, ProviderError> {
        let (owner, repository) = match &g.installation {
            Installation::Id(id) => return Ok(*id),
            Installation::Owner { owner, repository } => (owner, repository),
        };
        if let Some(id) = self
            .installations
            .lock()
            .ok()
            .and_then(|m| m.get(&g.installation).copied())
        {
            return Ok(id);
        }
        let paths = match repository {
            Some(repo) => vec![format!("/repos/{owner}/{repo}/installation")],
            None => vec![
                format!("/orgs/{owner}/installation"),
                format!("/users/{owner}/installation"),
            ],
        };
        let what = format!("finding the App's installation on {owner}");
        for path in &paths {
            let answer = self.app_call(&what, Method::GET, path, None, false).await?;
            match answer.status {
                StatusCode::OK => {
                    let id = answer.body["id"].as_u64().ok_or_else(|| {
                        ProviderError::new(ErrorKind::Unavailable, format!("{what}: no id"))
                    })?;
                    if let Ok(mut m) = self.installations.lock() {
                        m.insert(g.installation.clone(), id);
                    }
                    return Ok(id);
                }
                StatusCode::NOT_FOUND => continue,
                _ => return Err(refusal(&what, &answer)),
            }
        }
        Err(ProviderError::new(
            ErrorKind::Denied,
            format!("{what}: the App is not installed there (404)"),
        ))
    }

    async fn revoke_token(&self, token: &SecretValue) -> Result<Revoked, ProviderError> {
        let answer = self
            .client
            .send(&Call {
                what: "revoking an installation token",
                method: Method::DELETE,
                path: "/installation/token",
                auth: token,
                body: None,
                creates: false,
            })
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT => Ok(Revoked::Revoked),
            // The token no longer authenticates: expired or already revoked.
            StatusCode::UNAUTHORIZED => Ok(Revoked::AlreadyGone),
            _ => Err(refusal("revoking an installation token", &answer)),
        }
    }
}

#[async_trait::async_trait]
impl Provider for GithubProvider {
    fn kind(&self) -> &'static str {
        "github"
    }

    fn check_grant(&self, params: &Params) -> Result<(), Vec<ParamError>> {
        grant::parse(params).map(|_| ())
    }

    fn param_rules(&self) -> &'static [ParamRule] {
        // GitHub compares account and repository names without case.
        const RULES: [ParamRule; 3] = [
            ParamRule::subset("repositories").case_insensitive(),
            ParamRule::fixed("owner").case_insensitive(),
            ParamRule::fixed("repository").case_insensitive(),
        ];
        &RULES
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, ProviderError> {
        if req.role != Role::Credential {
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                "the GitHub provider has no per-task scope",
            ));
        }
        let g = Self::grant(req.params)?;
        if let Some(bad) = g.repositories.iter().find(|r| !grant::valid_name(r)) {
            return Err(ProviderError::new(
                ErrorKind::Invalid,
                format!(
                    "grant {}: {bad:?} is not a repository name once rendered",
                    req.grant
                ),
            ));
        }
        let id = self.installation_id(&g).await?;
        let body = json!({"repositories": g.repositories, "permissions": g.permissions});
        let what = format!(
            "creating a token on installation {id} for grant {}",
            req.grant
        );
        let path = format!("/app/installations/{id}/access_tokens");
        let answer = self
            .app_call(&what, Method::POST, &path, Some(&body), true)
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(refusal(&what, &answer));
        }
        let mut answer = answer;
        let token = match answer.body.get_mut("token").map(Value::take) {
            Some(Value::String(t)) if !t.is_empty() => SecretValue::new(t),
            _ => {
                return Err(ProviderError::new(
                    ErrorKind::OutcomeUnknown,
                    format!("{what}: the answer has no token"),
                ));
            }
        };
        let b = &answer.body;
        let expires_at = b["expires_at"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .unwrap_or(req.now + TOKEN_MAX_LIFE);
        let granted: BTreeMap<String, String> = b["permissions"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("?").to_string()))
            .collect();
        let granted_repos: Vec<String> = b["repositories"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect();
        let selection = b["repository_selection"].as_str().unwrap_or("all");
        let extra = excess(
            &g.repositories,
            &g.permissions,
            &granted_repos,
            &granted,
            selection,
        );
        if !extra.is_empty() {
            // Never hand out more than the grant allows: take it back at once.
            tracing::warn!(provider = %self.name, grant = req.grant, extra = ?extra,
                "GitHub granted more than asked; revoking the token");
            let revoked = self.revoke_token(&token).await;
            return Err(ProviderError::new(
                ErrorKind::Denied,
                format!(
                    "{what}: GitHub granted more than asked ({}); the token was {}",
                    extra.join(", "),
                    if revoked.is_ok() {
                        "revoked at once"
                    } else {
                        "refused but could not be revoked; it expires within an hour"
                    }
                ),
            ));
        }
        let full_names: Vec<String> = b["repositories"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["full_name"].as_str().map(str::to_owned))
            .collect();
        let mut credential = Credential::default();
        credential.public.insert(
            "GITHUB_TOKEN_EXPIRES_AT".into(),
            humantime::format_rfc3339_seconds(credbroker_provider_api::clamp_rfc3339(expires_at))
                .to_string(),
        );
        credential
            .public
            .insert("GITHUB_REPOSITORIES".into(), full_names.join(","));
        credential.public.insert(
            "GITHUB_PERMISSIONS".into(),
            granted
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        credential
            .public
            .insert("GITHUB_API_URL".into(), self.api_url.clone());
        credential
            .public
            .insert("GITHUB_INSTALLATION_ID".into(), id.to_string());
        // The reference is audited with the lease: what GitHub says it granted goes with it.
        let mut repos = full_names
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join(",");
        if full_names.len() > 10 {
            repos.push_str(&format!(",+{} more", full_names.len() - 10));
        }
        let reference = format!(
            "installation {id} token sha256:{} granted {} on {repos}",
            fingerprint(token.expose()),
            credential.public["GITHUB_PERMISSIONS"]
        );
        credential
            .secret
            .insert("GITHUB_TOKEN".into(), token.duplicate());
        Ok(Issued {
            credential,
            handle: RevocationHandle {
                reference,
                // The token revokes itself: it is all DELETE /installation/token needs.
                secret: Some(token),
            },
            expires_at,
            renewable: false,
        })
    }

    async fn revoke(
        &self,
        lease: &LeaseRef<'_>,
        _now: SystemTime,
    ) -> Result<Revoked, ProviderError> {
        // Past its expiry by our clock, GitHub is still asked: its clock decides, and a token
        // that has expired there answers 401, which is `AlreadyGone`.
        let Some(token) = &lease.handle.secret else {
            return Err(ProviderError::new(
                ErrorKind::Config,
                "the revocation handle has no token",
            ));
        };
        self.revoke_token(token).await
    }

    async fn reconcile(
        &self,
        _req: &IssueRequest<'_>,
        now: SystemTime,
    ) -> Result<Reconciled, ProviderError> {
        // GitHub cannot list installation tokens; one issued by a request that got no answer
        // stops working within the hour.
        Ok(Reconciled::WillExpire {
            at: now + TOKEN_MAX_LIFE,
        })
    }

    fn explain(&self, grants: &[(&str, &Params)]) -> Vec<String> {
        /// What one installation must allow, over every grant that uses it.
        #[derive(Default)]
        struct Needs<'a> {
            grants: BTreeSet<&'a str>,
            permissions: BTreeMap<String, String>,
            repositories: BTreeSet<String>,
        }
        let mut needs: BTreeMap<String, Needs<'_>> = BTreeMap::new();
        for (name, params) in grants {
            let Ok(g) = grant::parse(params) else {
                continue;
            };
            let key = match &g.installation {
                Installation::Id(id) => format!("installation {id}"),
                Installation::Owner { owner, .. } => format!("the installation on {owner}"),
            };
            let n = needs.entry(key).or_default();
            n.grants.insert(name);
            for (p, l) in &g.permissions {
                let cur = n.permissions.entry(p.clone()).or_insert_with(|| l.clone());
                if level(l) > level(cur) {
                    cur.clone_from(l);
                }
            }
            n.repositories.extend(g.repositories.iter().cloned());
        }
        let join = |items: Vec<String>| items.join(", ");
        needs
            .into_iter()
            .map(|(inst, n)| {
                format!(
                    "  {inst} (grant {}): the App must be installed with access to {} and hold \
                     the permissions {}",
                    join(n.grants.iter().map(|g| g.to_string()).collect()),
                    join(n.repositories.into_iter().collect()),
                    join(
                        n.permissions
                            .iter()
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect()
                    )
                )
            })
            .collect()
    }

    async fn check_online(&self, grants: &[(&str, &Params)]) -> Vec<String> {
        let mut problems = Vec::new();
        match self
            .app_call("GET /app", Method::GET, "/app", None, false)
            .await
        {
            Ok(a) if a.status == StatusCode::OK => {}
            Ok(a) => {
                problems.push(refusal("GET /app with the App JWT", &a).to_string());
                return problems;
            }
            Err(e) => {
                problems.push(e.to_string());
                return problems;
            }
        }
        for (name, params) in grants {
            let Ok(g) = grant::parse(params) else {
                continue;
            };
            let id = match self.installation_id(&g).await {
                Ok(id) => id,
                Err(e) => {
                    problems.push(format!("grant {name}: {e}"));
                    continue;
                }
            };
            let path = format!("/app/installations/{id}");
            match self.app_call(&path, Method::GET, &path, None, false).await {
                Ok(a) if a.status == StatusCode::OK => {
                    let has = &a.body["permissions"];
                    for (p, l) in &g.permissions {
                        let held = has[p].as_str().unwrap_or("none");
                        if level(held) == u8::MAX || level(held) < level(l) {
                            problems.push(format!(
                                "grant {name}: installation {id} has {p}: {held}, the grant asks {l}"
                            ));
                        }
                    }
                }
                Ok(a) => problems.push(format!("grant {name}: {}", refusal(&path, &a))),
                Err(e) => problems.push(format!("grant {name}: {e}")),
            }
        }
        problems
    }

    async fn health(&self) -> ProviderHealth {
        if self.client.quota().is_none()
            && let Err(e) = self
                .app_call("GET /app", Method::GET, "/app", None, false)
                .await
        {
            return ProviderHealth {
                healthy: false,
                detail: e.to_string(),
            };
        }
        match self.client.quota() {
            Some(q) => ProviderHealth {
                healthy: q.remaining > 0,
                detail: format!(
                    "rate limit {}/{} remaining, resets at {}",
                    q.remaining,
                    q.limit,
                    humantime::format_rfc3339_seconds(credbroker_provider_api::clamp_rfc3339(
                        q.reset
                    ))
                ),
            },
            None => ProviderHealth {
                healthy: true,
                detail: "rate limit not reported".into(),
            },
        }
    }
}
