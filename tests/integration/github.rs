//! The GitHub App provider against the GitHub stand-in: what the token request named, the App
//! JWT GitHub saw, revocation at task end, narrowing refused before any call, rate limits,
//! tokens that already expired, and a server that grants more than asked.

use std::path::Path;

use credbroker::proto::v1;
use serde_json::json;

use crate::support::daemon::{Daemon, base_config};
use crate::support::github::{APP_ID, FakeGithub, INSTALLATION};
use crate::support::oidc::{AuthServer, GITHUB};
use crate::support::{begin_request, get_task, reason};

const SCOPE: &str = "mcp.tool:github.create_issue";

fn github_config(dir: &Path, issuer: &str, gh: &FakeGithub) -> String {
    let extra = format!(
        r#"
[[provider]]
name = "github"
type = "github"
app_id = {APP_ID}
private_key_credential = "github-app-key"
api_url = "{url}"
timeout = "3s"
max_retry_wait = "3s"

[[grant]]
name = "github-issues"
provider = "github"
scopes = ["{SCOPE}"]
max_ttl = "10m"
params = {{ owner = "acme", repositories = ["notes", "docs"], permissions = {{ issues = "write" }} }}

[[grant]]
name = "github-greedy"
provider = "github"
scopes = ["{SCOPE}"]
max_ttl = "10m"
params = {{ installation_id = 78, repositories = ["notes"], permissions = {{ issues = "write" }} }}
"#,
        url = gh.url
    );
    base_config(dir, issuer, &extra).replace(
        "audience = \"https://mcp.example.test/postgres\"\ngrants = [\"orders-db-read\"]",
        &format!("audience = \"{GITHUB}\"\ngrants = [\"github-issues\", \"github-greedy\"]"),
    )
}

async fn setup() -> (AuthServer, FakeGithub, Daemon, tempfile::TempDir) {
    let auth = AuthServer::start();
    let gh = FakeGithub::start();
    let creds = tempfile::tempdir().expect("a temp dir for github credentials should be created");
    std::fs::copy(&gh.key, creds.path().join("github-app-key"))
        .expect("the github app key should be copied into credentials");
    let env = vec![(
        "CREDENTIALS_DIRECTORY".to_string(),
        creds.path().display().to_string(),
    )];
    let d = Daemon::start_opts(|dir| github_config(dir, &auth.issuer, &gh), "trace", env).await;
    (auth, gh, d, creds)
}

fn narrowed(token: &str, grant: &str, repos: &[&str]) -> v1::BeginTaskRequest {
    let mut req = begin_request(token, &[grant]);
    req.grants[0].narrow.insert(
        "repositories".into(),
        v1::StringList {
            values: repos.iter().map(|r| (*r).to_string()).collect(),
        },
    );
    req
}

fn audit_of(d: &Daemon, event: &str, lease: &str) -> serde_json::Value {
    d.audit()
        .into_iter()
        .find(|r| r["event"] == event && r["lease_id"] == lease)
        .unwrap_or_else(|| panic!("no {event} for {lease}"))
}

async fn end(d: &Daemon, task_id: &str) {
    d.end(task_id)
        .await
        .unwrap_or_else(|e| panic!("end: {e:?}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_installation_token_names_exactly_the_grant_and_is_revoked_when_the_task_ends() {
    let (auth, gh, d, creds) = setup().await;
    let token = auth.token("agent-1", GITHUB, SCOPE).await;
    let begun = d
        .begin(&token, &["github-issues"])
        .await
        .unwrap_or_else(|e| panic!("begin: {e:?}\n{}", d.log_text()))
        .into_inner();
    let task = begun.task.unwrap_or_default();
    let cred = &begun.credentials[0];
    let gh_token = cred.secret["GITHUB_TOKEN"].clone();
    assert!(gh_token.starts_with("ghs_"));
    assert_eq!(cred.public["GITHUB_REPOSITORIES"], "acme/notes,acme/docs");
    assert_eq!(
        cred.public["GITHUB_PERMISSIONS"],
        "issues:write,metadata:read"
    );
    assert_eq!(
        cred.public["GITHUB_INSTALLATION_ID"],
        INSTALLATION.to_string()
    );

    // What GitHub received: the installation found by owner, then exactly the grant.
    // (`GET /app` is the provider's health check, for `status`.)
    let log: Vec<_> = gh
        .log()
        .await
        .into_iter()
        .filter(|r| r["path"] != "/app")
        .collect();
    let paths: Vec<&str> = log.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(
        paths,
        [
            "/orgs/acme/installation",
            "/app/installations/77/access_tokens"
        ]
    );
    assert!(
        log.iter().all(|r| r["jwt"] == "ok"),
        "every App JWT verified: {log:#?}"
    );
    assert_eq!(
        log[1]["body"],
        json!({"repositories": ["notes", "docs"], "permissions": {"issues": "write"}})
    );
    // The stand-in does refuse what GitHub refuses (so "ok" above means something).
    let (status, body) = gh
        .raw(reqwest::Method::GET, "/app", "Bearer e30.e30.c2ln")
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], "A JSON web token could not be decoded");

    // A request may narrow to a subset.
    let narrow = d
        .broker()
        .await
        .begin_task(narrowed(&token, "github-issues", &["docs"]))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let posts = gh.requests("POST", "/access_tokens").await;
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[1]["body"]["repositories"], json!(["docs"]));
    assert_eq!(
        gh.requests("GET", "/installation").await.len(),
        1,
        "the installation lookup is cached"
    );

    // Ending the task revokes the token at GitHub, and the audit log says GitHub confirmed it.
    end(&d, &task.id).await;
    let revoked = gh.requests("DELETE", "/installation/token").await;
    assert_eq!(revoked.len(), 1);
    let tokens = gh.tokens().await;
    let ours = tokens
        .iter()
        .find(|t| t["revoked"] == true)
        .unwrap_or_else(|| panic!("no revoked token: {tokens:#?}"));
    assert_eq!(ours["fingerprint"], revoked[0]["revoked"]);
    let lease = get_task(&d, &task.id).await.leases[0].clone();
    assert!(lease.reference.starts_with("installation 77 token sha256:"));
    let issued = audit_of(&d, "lease_issued", &lease.id);
    assert!(
        issued["detail"]["reference"].as_str().is_some_and(
            |r| r.ends_with("granted issues:write,metadata:read on acme/notes,acme/docs")
        ),
        "GitHub's grant is in the audit log: {issued}"
    );
    let audit = d.audit();
    let rec = audit
        .iter()
        .find(|r| r["event"] == "lease_revoked" && r["lease_id"] == lease.id.as_str())
        .unwrap_or_else(|| panic!("no lease_revoked: {audit:#?}"));
    assert_eq!(rec["detail"]["confirmed"], true);
    end(&d, &narrow.task.unwrap_or_default().id).await;

    // No secret in the log (at trace level) or in the journal: the token, the App's key, a JWT.
    let log_text = d.log_text();
    let journal = std::fs::read(&d.journal).unwrap_or_default();
    let key = std::fs::read_to_string(creds.path().join("github-app-key")).unwrap_or_default();
    let key_body = key.lines().nth(1).unwrap_or("-");
    for secret in [gh_token.as_str(), key_body, "eyJ"] {
        assert!(
            !log_text.contains(secret),
            "{secret:.8}… is in the daemon's log"
        );
        assert!(
            !journal
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{secret:.8}… is in the journal"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_rate_limits_and_expired_tokens() {
    let (auth, gh, d, creds) = setup().await;
    let token = auth.token("agent-1", GITHUB, SCOPE).await;

    // A repository outside the grant: PERMISSION_DENIED, and GitHub never hears of it.
    let refused = d
        .broker()
        .await
        .begin_task(narrowed(&token, "github-issues", &["notes", "secrets"]))
        .await
        .err()
        .unwrap_or_else(|| panic!("a repository outside the grant was not refused"));
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&refused), "narrowing_exceeds_grant");
    assert!(
        gh.log().await.iter().all(|r| r["path"] == "/app"),
        "nothing but the health check reached GitHub"
    );

    // 429 with Retry-After: waited out, then retried.
    gh.rate_limit(
        json!({"path": "/app/installations/77/access_tokens", "times": 1,
        "status": 429, "retry_after": 1, "kind": "secondary"}),
    )
    .await;
    let begun = d
        .begin(&token, &["github-issues"])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let posts = gh.requests("POST", "/access_tokens").await;
    assert_eq!(posts.len(), 2, "{posts:#?}");
    let waited = posts[1]["at_ms"].as_u64().unwrap_or(0) - posts[0]["at_ms"].as_u64().unwrap_or(0);
    assert!(
        waited >= 1000,
        "retried after {waited} ms, Retry-After said 1 s"
    );
    // A secondary limit with no Retry-After asks for a minute: longer than this instance
    // waits, so the caller is told to come back, with no further request.
    gh.rate_limit(
        json!({"path": "/app/installations/77/access_tokens", "times": 1,
        "status": 403, "kind": "secondary"}),
    )
    .await;
    let limited = d
        .begin(&token, &["github-issues"])
        .await
        .err()
        .unwrap_or_else(|| panic!("a secondary rate limit was not reported"));
    assert_eq!(limited.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&limited), "provider_rate_limited");
    assert_eq!(gh.requests("POST", "/access_tokens").await.len(), 3);

    // Status reports the remaining quota, from GitHub's headers.
    let status = d
        .cli()
        .args(["status"])
        .output()
        .expect("credbroker status should run");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("rate limit") && status.contains("/5000 remaining"),
        "{status}"
    );

    // The token expired before the task ended: GitHub's 401 is recorded as already gone.
    gh.expire_all().await;
    let task = begun.task.unwrap_or_default();
    end(&d, &task.id).await;
    let lease = get_task(&d, &task.id).await.leases[0].clone();
    assert_eq!(lease.state, "revoked");
    let audit = d.audit();
    let rec = audit
        .iter()
        .find(|r| r["event"] == "lease_revoked" && r["lease_id"] == lease.id.as_str())
        .unwrap_or_else(|| panic!("no lease_revoked: {audit:#?}"));
    assert_eq!(rec["detail"]["already_gone"], true);
    let deletes = gh.requests("DELETE", "/installation/token").await;
    assert_eq!(deletes.len(), 1, "GitHub was asked, and said 401");

    // A server that grants more than asked: refused, and the token taken back at once.
    let greedy = d
        .begin(&token, &["github-greedy"])
        .await
        .err()
        .unwrap_or_else(|| panic!("an over-broad token was handed out"));
    assert_eq!(greedy.code(), tonic::Code::PermissionDenied, "{greedy:?}");
    assert!(
        greedy
            .message()
            .contains("granted more than asked (contents: write)")
            && greedy.message().contains("revoked at once"),
        "{}",
        greedy.message()
    );
    let tokens = gh.tokens().await;
    assert!(
        tokens
            .iter()
            .filter(|t| t["installation"] == 78)
            .all(|t| t["revoked"] == true),
        "{tokens:#?}"
    );

    // check-config: what the App needs, and --online checks it against the installation.
    let out = d
        .cli()
        .args(["check-config", "--online", "--config"])
        .arg(&d.config)
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .expect("check-config --online against the stand-in should run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("the installation on acme (grant github-issues)")
            && stdout.contains("issues: write"),
        "{stdout}"
    );
}
