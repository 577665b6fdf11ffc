//! `[abuse]`: detectors and their responses.

use super::raw::{RawAbuse, RawDetector};
use super::sections::check_path;
use super::*;
use crate::config::abuse::{AbuseConfig, Counting, Per, Response, Simple, Webhook};

/// A block outlasting a week is a policy decision, not an incident response: lift it or
/// register the client's status instead.
const BLOCK_FOR: (Duration, Duration) = (secs(60), secs(7 * 86_400));

fn responses(p: &mut Problems, path: &str, raw: &[String]) -> Vec<Response> {
    let mut out = Vec::new();
    for r in raw {
        match Response::parse(r) {
            Some(r) if out.contains(&r) => p.at(path, format!("names {:?} twice", r.as_str())),
            Some(r) => out.push(r),
            None => p.at(
                path,
                format!(
                    "{r:?} is not a response (one of {})",
                    Response::ALL.map(Response::as_str).join(", ")
                ),
            ),
        }
    }
    if raw.is_empty() {
        p.at(path, "name at least one response (log, deny, revoke-token, revoke-client, revoke-owner, alert)");
    }
    out.sort_unstable();
    out
}

fn simple(p: &mut Problems, name: &str, raw: Option<RawDetector>) -> Option<Simple> {
    let raw = raw?;
    let path = format!("abuse.{name}");
    for (key, set) in [
        ("threshold", raw.threshold.is_some()),
        ("window", raw.window.is_some()),
        ("per", raw.per.is_some()),
    ] {
        if set {
            p.at(
                format!("{path}.{key}"),
                "this detector fires on one event: it counts nothing",
            );
        }
    }
    if raw.new_network.is_some() && name != "token_reuse" {
        p.at(
            format!("{path}.new_network"),
            "only token_reuse watches networks",
        );
    }
    Some(Simple {
        responses: responses(p, &format!("{path}.response"), &raw.response),
        new_network: raw.new_network.unwrap_or(false),
    })
}

fn counting(
    p: &mut Problems,
    name: &str,
    raw: Option<RawDetector>,
    default_per: Per,
) -> Option<Counting> {
    let raw = raw?;
    let path = format!("abuse.{name}");
    let per = match raw.per.as_deref() {
        None => default_per,
        Some(s) => Per::parse(s).unwrap_or_else(|| {
            p.at(format!("{path}.per"), "must be token, client or owner");
            default_per
        }),
    };
    if raw.new_network.is_some() {
        p.at(
            format!("{path}.new_network"),
            "only token_reuse watches networks",
        );
    }
    let Some(threshold) = raw.threshold else {
        p.at(format!("{path}.threshold"), "is required");
        return None;
    };
    Some(Counting {
        responses: responses(p, &format!("{path}.response"), &raw.response),
        threshold,
        window: p.duration(
            &format!("{path}.window"),
            raw.window.as_ref(),
            secs(300),
            bounds::WINDOW,
        ),
        per,
    })
}

fn webhook(p: &mut Problems, raw: &mut RawAbuse) -> Option<Webhook> {
    let url = raw.webhook_url.take();
    let secret = match (
        raw.webhook_secret_file.take(),
        raw.webhook_secret_credential.take(),
    ) {
        (Some(f), None) => {
            check_path(p, "abuse.webhook_secret_file", &f);
            Some(KeySource::File(f))
        }
        (None, Some(c)) => Some(KeySource::Credential(c)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            p.at(
                "abuse",
                "webhook_secret_file and webhook_secret_credential are mutually exclusive",
            );
            None
        }
    };
    let timeout = p.duration(
        "abuse.webhook_timeout",
        raw.webhook_timeout.as_ref(),
        secs(10),
        bounds::TIMEOUT,
    );
    match (url, secret) {
        (None, None) => None,
        (None, Some(_)) => {
            p.at("abuse.webhook_url", "is required with a webhook secret");
            None
        }
        (Some(_), None) => {
            p.at(
                "abuse",
                "a webhook needs webhook_secret_file or webhook_secret_credential: alerts are signed",
            );
            None
        }
        (Some(url), Some(secret)) => {
            if let Err(e) = check_webhook_url(&url) {
                p.at("abuse.webhook_url", e);
            }
            Some(Webhook {
                url,
                secret,
                timeout,
            })
        }
    }
}

/// https, or http to a loopback address (a local relay): alerts name people and what they hold.
fn check_webhook_url(url: &str) -> Result<(), String> {
    let u = url::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry credentials in the URL".into());
    }
    match (u.scheme(), u.host()) {
        ("https", Some(_)) => Ok(()),
        ("http", Some(url::Host::Ipv4(ip))) if ip.is_loopback() => Ok(()),
        ("http", Some(url::Host::Ipv6(ip))) if ip.is_loopback() => Ok(()),
        ("http", Some(url::Host::Domain("localhost"))) => Ok(()),
        _ => Err("must be https (or http to a loopback address)".into()),
    }
}

pub(super) fn abuse(p: &mut Problems, raw: Option<RawAbuse>) -> Option<AbuseConfig> {
    let mut raw = raw?;
    let webhook = webhook(p, &mut raw);
    let c = AbuseConfig {
        block_for: p.duration(
            "abuse.block_for",
            raw.block_for.as_ref(),
            secs(3600),
            BLOCK_FOR,
        ),
        webhook,
        wrong_audience: simple(p, "wrong_audience", raw.wrong_audience),
        token_reuse: simple(p, "token_reuse", raw.token_reuse),
        scope_probing: counting(p, "scope_probing", raw.scope_probing, Per::Token),
        rate: counting(p, "rate", raw.rate, Per::Client),
        blocked_reuse: simple(p, "blocked_reuse", raw.blocked_reuse),
    };
    let alerts = [
        c.wrong_audience.as_ref().map(|d| &d.responses),
        c.token_reuse.as_ref().map(|d| &d.responses),
        c.scope_probing.as_ref().map(|d| &d.responses),
        c.rate.as_ref().map(|d| &d.responses),
        c.blocked_reuse.as_ref().map(|d| &d.responses),
    ]
    .into_iter()
    .flatten()
    .any(|r| r.contains(&Response::Alert));
    if alerts && c.webhook.is_none() {
        p.at(
            "abuse.webhook_url",
            "a detector responds with `alert`: configure the webhook it goes to",
        );
    }
    Some(c)
}
