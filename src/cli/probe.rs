//! `credbroker probe URL…`: finds naked and half-protected MCP servers from the outside, as an
//! MCP client (or an attacker) meets them: does the server answer without a token, does its
//! 401 lead a client to its authorization server (RFC 9728), is that server fit for MCP
//! (PKCE S256, RFC 9207 `iss`, Client ID Metadata Documents), and does the server take tokens
//! it must refuse (in the URI, or issued for another resource).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Args)]
pub(super) struct ProbeArgs {
    /// MCP endpoints (Streamable HTTP), e.g. https://mcp.example.com/mcp.
    urls: Vec<String>,
    /// A file with one URL per line (# comments).
    #[arg(long)]
    file: Option<PathBuf>,
    /// A valid access token issued for a *different* resource: a server that accepts it is a
    /// confused deputy. Also used to test tokens in the query string.
    #[arg(long)]
    token: Option<String>,
    #[arg(long, value_enum, default_value_t = Shape::Table)]
    output: Shape,
    /// Per request.
    #[arg(long, default_value = "10s")]
    timeout: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Shape {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Severity {
    Ok,
    Info,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Serialize)]
struct Finding {
    url: String,
    check: &'static str,
    severity: Severity,
    message: String,
}

pub(super) async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let mut urls = args.urls.clone();
    if let Some(f) = &args.file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("--file {}: {e}", f.display()))?;
        urls.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if urls.is_empty() {
        eprintln!("error: give at least one URL (or --file)");
        return Ok(ExitCode::from(2));
    }
    let timeout = crate::config::parse_duration(&args.timeout).map_err(anyhow::Error::msg)?;
    let http = reqwest::Client::builder()
        .timeout(timeout.max(Duration::from_millis(100)))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut findings = Vec::new();
    for url in &urls {
        let p = Probe {
            http: &http,
            url,
            token: args.token.as_deref(),
        };
        findings.extend(p.run().await);
    }
    print(&findings, args.output)?;
    let critical = findings.iter().any(|f| f.severity == Severity::Critical);
    Ok(if critical {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn print(findings: &[Finding], shape: Shape) -> anyhow::Result<()> {
    match shape {
        Shape::Json => outln!("{}", serde_json::to_string_pretty(findings)?)?,
        Shape::Table => {
            for f in findings {
                let sev = serde_json::to_value(f.severity)?;
                outln!(
                    "{:<9} {:<28} {}  {}",
                    sev.as_str().unwrap_or_default(),
                    f.check,
                    f.url,
                    f.message
                )?;
            }
            let worst = findings.iter().map(|f| f.severity).max();
            outln!(
                "{}",
                match worst {
                    Some(Severity::Critical) => "CRITICAL: at least one server is open",
                    Some(Severity::High) => "problems found (high), none critical",
                    _ => "ok: no critical or high finding",
                }
            )?;
        }
    }
    Ok(())
}

struct Probe<'a> {
    http: &'a reqwest::Client,
    url: &'a str,
    token: Option<&'a str>,
}

/// What an MCP POST answered.
struct Answer {
    status: u16,
    www: Option<String>,
}

impl Probe<'_> {
    fn finding(
        &self,
        check: &'static str,
        severity: Severity,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            url: self.url.to_string(),
            check,
            severity,
            message: message.into(),
        }
    }

    async fn post(&self, url: &str, body: &Value, bearer: Option<&str>) -> Result<Answer, String> {
        let method = body["method"].as_str().unwrap_or_default();
        let mut r = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-method", method)
            .body(body.to_string());
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.map_err(|e| format!("{e}"))?;
        Ok(Answer {
            status: resp.status().as_u16(),
            www: resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        })
    }

    async fn run(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let Ok(parsed) = url::Url::parse(self.url) else {
            out.push(self.finding("url", Severity::High, "not a URL"));
            return out;
        };
        if parsed.scheme() == "http" && !is_loopback(&parsed) {
            out.push(self.finding(
                "transport",
                Severity::High,
                "plain HTTP off loopback: tokens and tool calls travel in clear",
            ));
        }
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "credbroker-probe", "version": env!("CARGO_PKG_VERSION")}}});
        let anonymous = match self.post(self.url, &list, None).await {
            Ok(a) => a,
            Err(e) => {
                out.push(self.finding("reachable", Severity::Info, format!("no answer: {e}")));
                return out;
            }
        };
        for (check, body, what) in [
            ("no_token_tools_list", &list, "tools/list"),
            ("no_token_initialize", &init, "initialize"),
        ] {
            let a = if what == "tools/list" {
                Ok(Answer {
                    status: anonymous.status,
                    www: anonymous.www.clone(),
                })
            } else {
                self.post(self.url, body, None).await
            };
            match a {
                Ok(a) if (200..300).contains(&a.status) => out.push(self.finding(
                    check,
                    Severity::Critical,
                    format!(
                        "answers {what} with no token ({}): anyone who reaches it calls its tools",
                        a.status
                    ),
                )),
                Ok(a) if a.status == 401 => out.push(self.finding(
                    check,
                    Severity::Ok,
                    format!("{what} without a token: 401"),
                )),
                Ok(a) => out.push(self.finding(
                    check,
                    Severity::Info,
                    format!("{what} without a token: {}", a.status),
                )),
                Err(e) => out.push(self.finding(check, Severity::Info, format!("{what}: {e}"))),
            }
        }
        let metadata_url = anonymous
            .www
            .as_deref()
            .and_then(|w| param(w, "resource_metadata"));
        if anonymous.status == 401 {
            match &metadata_url {
                Some(_) => out.push(self.finding("challenge", Severity::Ok, "401 names resource_metadata")),
                None => out.push(self.finding(
                    "challenge",
                    Severity::High,
                    "401 without resource_metadata (RFC 9728 §5.1): clients cannot find the authorization server",
                )),
            }
        }
        let metadata_url =
            metadata_url.unwrap_or_else(|| well_known(&parsed, "oauth-protected-resource"));
        out.extend(self.metadata(&metadata_url).await);
        if let Some(token) = self.token {
            out.extend(self.foreign_token(token, &list).await);
        }
        out
    }

    /// The protected-resource metadata, and each authorization server it names.
    async fn metadata(&self, at: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        let doc = match get_json(self.http, at).await {
            Ok(d) => d,
            Err(e) => {
                out.push(self.finding("resource_metadata", Severity::High, format!("{at}: {e}")));
                return out;
            }
        };
        let resource = doc["resource"].as_str().unwrap_or_default();
        if resource.trim_end_matches('/') == self.url.trim_end_matches('/') {
            out.push(self.finding(
                "resource_metadata",
                Severity::Ok,
                format!("resource {resource}"),
            ));
        } else {
            out.push(self.finding(
                "resource_metadata",
                Severity::High,
                format!(
                    "resource is {resource:?}, not this URL: clients must refuse it (RFC 9728 §3.3)"
                ),
            ));
        }
        let servers: Vec<&str> = doc["authorization_servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if servers.is_empty() {
            out.push(self.finding(
                "authorization_servers",
                Severity::High,
                "the metadata names no authorization server",
            ));
        }
        for s in servers {
            out.extend(self.authorization_server(s).await);
        }
        out
    }

    async fn authorization_server(&self, issuer: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        let Ok(u) = url::Url::parse(issuer) else {
            out.push(self.finding(
                "authorization_server",
                Severity::High,
                format!("{issuer:?} is not a URL"),
            ));
            return out;
        };
        let mut doc = None;
        for kind in ["oauth-authorization-server", "openid-configuration"] {
            if let Ok(d) = get_json(self.http, &well_known(&u, kind)).await {
                doc = Some(d);
                break;
            }
        }
        let Some(doc) = doc else {
            out.push(self.finding(
                "authorization_server",
                Severity::High,
                format!("{issuer}: no RFC 8414 or OpenID metadata"),
            ));
            return out;
        };
        let s256 = doc["code_challenge_methods_supported"]
            .as_array()
            .is_some_and(|m| m.iter().any(|v| v == "S256"));
        out.push(match s256 {
            true => self.finding("pkce", Severity::Ok, format!("{issuer}: S256")),
            false => self.finding(
                "pkce",
                Severity::High,
                format!("{issuer}: does not advertise PKCE S256, which MCP clients require"),
            ),
        });
        out.push(
            match doc["authorization_response_iss_parameter_supported"] == true {
                true => self.finding(
                    "iss_parameter",
                    Severity::Ok,
                    format!("{issuer}: RFC 9207 iss"),
                ),
                false => self.finding(
                    "iss_parameter",
                    Severity::Medium,
                    format!(
                        "{issuer}: no RFC 9207 iss in authorization responses (mix-up attacks)"
                    ),
                ),
            },
        );
        out.push(match doc["client_id_metadata_document_supported"] == true {
            true => self.finding("client_registration", Severity::Ok, format!("{issuer}: Client ID Metadata Documents")),
            false => self.finding("client_registration", Severity::Info, format!("{issuer}: no Client ID Metadata Documents (MCP 2026-07-28 prefers them to dynamic registration)")),
        });
        out
    }

    /// A valid token for another resource: it must be refused in the header (RFC 8707, the
    /// confused deputy) and anywhere in the URI.
    async fn foreign_token(&self, token: &str, list: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        match self.post(self.url, list, Some(token)).await {
            Ok(a) if (200..300).contains(&a.status) => out.push(self.finding(
                "audience",
                Severity::Critical,
                "accepted a token issued for another resource: a confused deputy (RFC 8707)",
            )),
            Ok(a) => out.push(self.finding(
                "audience",
                Severity::Ok,
                format!("a token for another resource: {}", a.status),
            )),
            Err(e) => out.push(self.finding("audience", Severity::Info, e)),
        }
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let in_query = format!("{}{sep}access_token={}", self.url, token);
        match self.post(&in_query, list, None).await {
            Ok(a) if (200..300).contains(&a.status) => out.push(self.finding(
                "token_in_query",
                Severity::Critical,
                "accepted a token in the query string, where logs and proxies keep it",
            )),
            Ok(a) => out.push(self.finding(
                "token_in_query",
                Severity::Ok,
                format!("a token in the URI: {}", a.status),
            )),
            Err(e) => out.push(self.finding("token_in_query", Severity::Info, e)),
        }
        out
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{}", resp.status()));
    }
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))
}

/// RFC 8414 §3.1 / RFC 9728 §3.1: the well-known segment goes between host and path.
fn well_known(u: &url::Url, kind: &str) -> String {
    let path = u.path().trim_end_matches('/');
    format!(
        "{}/.well-known/{kind}{path}",
        u.origin().ascii_serialization()
    )
}

/// A quoted parameter of a `WWW-Authenticate` challenge.
fn param(www: &str, name: &str) -> Option<String> {
    let at = www.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &www[at..];
    Some(rest[..rest.find('"')?].to_string())
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parameters_and_well_known_paths() {
        let www = r#"Bearer error="invalid_token", resource_metadata="https://a/.well-known/oauth-protected-resource/mcp", scope="x y""#;
        assert_eq!(
            param(www, "resource_metadata").as_deref(),
            Some("https://a/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(param(www, "scope").as_deref(), Some("x y"));
        assert_eq!(param(www, "realm"), None);
        let u = url::Url::parse("https://as.example.com/tenant/").expect("a URL");
        assert_eq!(
            well_known(&u, "oauth-authorization-server"),
            "https://as.example.com/.well-known/oauth-authorization-server/tenant"
        );
    }
}
