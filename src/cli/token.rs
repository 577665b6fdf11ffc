//! `credbroker token check`: validate a token (read on stdin) exactly as the daemon would, and
//! print the verdict, the reason code and a claims summary as JSON. Exit 1 when rejected.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::output::Output;
use crate::config::{Config, IssuerConfig, MetadataMode, TokenSettings, check_issuer_url};
use crate::time::rfc3339;
use crate::token::{Alg, Rejection, Verified, Verifier};

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// Validate a token read on stdin, against the configured issuers or an ad hoc one.
    Check {
        /// Use the issuers and token settings of this configuration.
        #[arg(long, short, conflicts_with_all = ["issuer", "jwks"])]
        config: Option<PathBuf>,
        /// With --config: check the audience of this workload (default: any configured workload).
        #[arg(long, requires = "config")]
        workload: Option<String>,
        /// Ad hoc: the issuer URL (metadata discovered from it unless --jwks is given).
        #[arg(long, requires = "audience")]
        issuer: Option<String>,
        /// The resource the token must be for.
        #[arg(long)]
        audience: Option<String>,
        /// Ad hoc: a static JWKS file instead of discovery.
        #[arg(long, requires = "issuer")]
        jwks: Option<PathBuf>,
        /// Scopes the token must hold (repeatable).
        #[arg(long = "require-scope")]
        require_scope: Vec<String>,
        #[arg(long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
}

pub(super) async fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::Check {
        config,
        workload,
        issuer,
        audience,
        jwks,
        require_scope,
        output,
    } = cmd;
    let (issuers, settings, audiences) = match (config, issuer) {
        (Some(path), None) => {
            let cfg = Config::load(&path)?;
            let audiences: Vec<(String, String)> = match (&workload, &audience) {
                (Some(w), _) => {
                    let w = cfg
                        .workload(w)
                        .with_context(|| format!("no workload named {w:?}"))?;
                    vec![(w.name.clone(), w.audience.clone())]
                }
                (None, Some(a)) => vec![(String::new(), a.clone())],
                (None, None) => cfg
                    .workloads
                    .iter()
                    .map(|w| (w.name.clone(), w.audience.clone()))
                    .collect(),
            };
            (cfg.issuers, cfg.tokens, audiences)
        }
        (None, Some(url)) => {
            check_issuer_url(&url).map_err(|e| anyhow::anyhow!("--issuer: {e}"))?;
            let issuer = IssuerConfig {
                introspection: None,
                url,
                algorithms: vec![Alg::RS256, Alg::ES256, Alg::EdDSA],
                metadata: MetadataMode::Auto,
                jwks_file: jwks,
                refresh: Duration::from_secs(900),
                min_refresh_interval: Duration::from_secs(30),
                http_timeout: Duration::from_secs(5),
                ca_file: None,
            };
            let audience = audience.context("--audience is required with --issuer")?;
            (
                vec![issuer],
                TokenSettings::default(),
                vec![(String::new(), audience)],
            )
        }
        _ => bail!("give either --config, or --issuer with --audience"),
    };

    let mut token = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut token)
        .context("reading the token from stdin")?;
    let token = Zeroizing::new(token.trim().to_string());
    if token.is_empty() {
        bail!(
            "no token on stdin: pipe the access token in (`credbroker token check … < token.jwt`)"
        );
    }

    let verifier = Verifier::new(&issuers, &settings).map_err(anyhow::Error::msg)?;
    let load_errors = verifier.load_keys().await;
    let (verdict, code) = match verifier.verify(&token, SystemTime::now()).await {
        Err((r, fp)) => (rejected(&r, fp.map(|f| f.hex()), &load_errors), 1),
        Ok(v) => match check_more(&v, &audiences, &require_scope) {
            Ok(workload) => (accepted(&v, workload), 0),
            Err(r) => (rejected(&r, Some(v.fingerprint.hex()), &load_errors), 1),
        },
    };
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&verdict)?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = verdict
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    vec![k.clone(), v]
                })
                .collect();
            out!("{}", super::output::table(&rows))?;
        }
    }
    Ok(ExitCode::from(code))
}

/// Audience (any of the candidates) and required scopes.
fn check_more(
    v: &Verified,
    audiences: &[(String, String)],
    scopes: &[String],
) -> Result<Option<String>, Rejection> {
    let matched = audiences
        .iter()
        .find(|(_, a)| v.check_audience(a).is_ok())
        .ok_or(Rejection::AudienceMismatch)?;
    if let Some(missing) = scopes.iter().find(|s| !v.claims.has_scope(s)) {
        return Err(Rejection::InsufficientScope(missing.clone()));
    }
    Ok((!matched.0.is_empty()).then(|| matched.0.clone()))
}

fn rejected(r: &Rejection, fingerprint: Option<String>, load_errors: &[(String, String)]) -> Value {
    let mut v = json!({ "verdict": "rejected", "reason": r.code(), "message": r.to_string(), "fingerprint": fingerprint });
    if r.is_unavailable() || !load_errors.is_empty() {
        v["issuer_errors"] = json!(
            load_errors
                .iter()
                .map(|(u, e)| json!({"issuer": u, "error": e}))
                .collect::<Vec<_>>()
        );
    }
    v
}

fn accepted(v: &Verified, workload: Option<String>) -> Value {
    let c = &v.claims;
    let at = |s: i64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64));
    json!({
        "verdict": "accepted",
        "fingerprint": v.fingerprint.hex(),
        "workload": workload,
        "claims": {
            "iss": c.issuer, "sub": c.subject, "client_id": c.client_id, "jti": c.jti,
            "aud": c.audiences, "scopes": c.scopes, "actors": c.actors,
            "iat": at(c.issued_at), "exp": at(c.expires_at), "nbf": c.not_before.map(at),
        },
    })
}
