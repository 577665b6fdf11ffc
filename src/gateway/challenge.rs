//! The resource server's side of discovery: RFC 9728 metadata and RFC 6750 challenges.

use serde_json::{Value, json};

use crate::config::gateway::GatewayConfig;

pub(super) const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata document's path: RFC 9728 §3.1 puts the well-known segment between the host
/// and the resource's path.
pub(super) fn metadata_path(cfg: &GatewayConfig) -> String {
    let path = cfg.resource.path().trim_end_matches('/');
    format!("{WELL_KNOWN}{path}")
}

/// Its absolute URL, from the configured resource: never from the request's Host header, which
/// the client controls.
pub(super) fn metadata_url(cfg: &GatewayConfig) -> String {
    format!(
        "{}{}",
        cfg.resource.origin().ascii_serialization(),
        metadata_path(cfg)
    )
}

pub(super) fn metadata(cfg: &GatewayConfig) -> Value {
    let mut doc = json!({
        "resource": cfg.resource.as_str(),
        "authorization_servers": cfg.authorization_servers,
        "scopes_supported": cfg.scopes_supported,
        "bearer_methods_supported": ["header"],
    });
    if let Some(name) = &cfg.resource_name {
        doc["resource_name"] = json!(name);
    }
    doc
}

/// A `WWW-Authenticate` value. `error` is `None` when the request carried no token at all
/// (RFC 6750 §3.1: then the challenge names no error).
pub(super) fn bearer(
    cfg: &GatewayConfig,
    error: Option<(&str, &str)>,
    scopes: &[String],
) -> String {
    let mut parts = Vec::new();
    if let Some((code, description)) = error {
        parts.push(format!("error=\"{code}\""));
        parts.push(format!("error_description=\"{}\"", quotable(description)));
    }
    parts.push(format!("resource_metadata=\"{}\"", metadata_url(cfg)));
    if !scopes.is_empty() {
        parts.push(format!("scope=\"{}\"", scopes.join(" ")));
    }
    format!("Bearer {}", parts.join(", "))
}

/// RFC 6750 §3: error_description is printable ASCII without `"` and `\`.
fn quotable(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii() && !c.is_ascii_control() => c,
            _ => '?',
        })
        .collect()
}

/// The scopes an insufficient-scope challenge asks for: those the token already holds for this
/// resource and the missing ones. The TypeScript SDK re-authorizes with exactly the challenged
/// set, so naming only the missing ones would make it drop what it had.
pub(super) fn step_up(cfg: &GatewayConfig, held: &[String], needed: &[String]) -> Vec<String> {
    let mut out: Vec<String> = held
        .iter()
        .filter(|s| cfg.scopes_supported.contains(s))
        .cloned()
        .collect();
    for s in needed {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}
