//! `[signals]` and `[[transmitter]]`.

use super::raw::{RawSignals, RawTransmitter};
use super::sections::check_path;
use super::*;
use crate::config::signals::{Poll, SignalsConfig, Transmitter};

fn secret(
    p: &mut Problems,
    path: &str,
    what: &str,
    file: Option<PathBuf>,
    credential: Option<String>,
) -> Option<SecretSource> {
    match (file, credential) {
        (Some(f), None) => {
            check_path(p, &format!("{path}.{what}_file"), &f);
            Some(SecretSource::File(f))
        }
        (None, Some(c)) => Some(SecretSource::Credential(c)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            p.at(
                path,
                format!("{what}_file and {what}_credential are mutually exclusive"),
            );
            None
        }
    }
}

fn transmitter(p: &mut Problems, raw: RawTransmitter, issuers: &[IssuerConfig]) -> Transmitter {
    let path = format!("transmitter.{}", raw.name);
    check_name(p, "transmitter", &raw.name);
    if let Err(e) = check_issuer_url(&raw.issuer) {
        p.at(format!("{path}.issuer"), e);
    }
    if raw.audience.is_empty() {
        p.at(format!("{path}.audience"), "must not be empty");
    }
    match (&raw.jwks_file, &raw.jwks_uri) {
        (Some(f), None) => check_path(p, &format!("{path}.jwks_file"), f),
        (None, Some(u)) => {
            if let Err(e) = check_issuer_url(u) {
                p.at(format!("{path}.jwks_uri"), e);
            }
        }
        _ => p.at(&path, "exactly one of jwks_file or jwks_uri is required"),
    }
    let algorithms = match raw.algorithms {
        None => vec![Alg::RS256, Alg::ES256, Alg::EdDSA],
        Some(names) => names
            .iter()
            .filter_map(|n| {
                Alg::from_config(n)
                    .map_err(|e| p.at(format!("{path}.algorithms"), e))
                    .ok()
            })
            .collect(),
    };
    let push_bearer = secret(
        p,
        &path,
        "push_bearer",
        raw.push_bearer_file,
        raw.push_bearer_credential,
    );
    let poll_bearer = secret(
        p,
        &path,
        "poll_bearer",
        raw.poll_bearer_file,
        raw.poll_bearer_credential,
    );
    let poll = match (raw.poll_url, poll_bearer) {
        (None, None) => None,
        (Some(url), Some(bearer)) => {
            if let Err(e) = check_issuer_url(&url) {
                p.at(format!("{path}.poll_url"), e);
            }
            Some(Poll {
                url,
                bearer,
                interval: p.duration(
                    &format!("{path}.poll_interval"),
                    raw.poll_interval.as_ref(),
                    secs(30),
                    (secs(1), secs(3600)),
                ),
            })
        }
        _ => {
            p.at(&path, "poll_url and a poll bearer go together");
            None
        }
    };
    if push_bearer.is_none() && poll.is_none() {
        p.at(
            &path,
            "needs push_bearer_file (push) or poll_url (poll), or both",
        );
    }
    let subject_issuer = match raw.subject_issuer {
        Some(i) if issuers.iter().any(|c| c.url == i) => i,
        Some(i) => {
            p.at(
                format!("{path}.subject_issuer"),
                format!("no [[issuer]] with url {i:?}"),
            );
            String::new()
        }
        None if issuers.len() == 1 => issuers[0].url.clone(),
        None => {
            p.at(
                format!("{path}.subject_issuer"),
                "is required with more than one [[issuer]]: whose subjects does it speak of?",
            );
            String::new()
        }
    };
    Transmitter {
        max_age: p.duration(
            &format!("{path}.max_age"),
            raw.max_age.as_ref(),
            secs(600),
            (secs(10), secs(86_400)),
        ),
        block_for: p.duration(
            &format!("{path}.block_for"),
            raw.block_for.as_ref(),
            secs(86_400),
            (secs(60), secs(30 * 86_400)),
        ),
        name: raw.name,
        issuer: raw.issuer,
        audience: raw.audience,
        jwks_file: raw.jwks_file,
        jwks_uri: raw.jwks_uri,
        algorithms,
        push_bearer,
        poll,
        subject_issuer,
    }
}

pub(super) fn signals(
    p: &mut Problems,
    raw: Option<RawSignals>,
    transmitters: Vec<RawTransmitter>,
    issuers: &[IssuerConfig],
) -> Option<SignalsConfig> {
    if raw.is_none() && transmitters.is_empty() {
        return None;
    }
    let listen = raw
        .and_then(|r| r.listen)
        .and_then(|l| match l.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => Some(a),
            Ok(_) => {
                p.at(
                    "signals.listen",
                    "must be a loopback address: put a TLS proxy in front of it",
                );
                None
            }
            Err(e) => {
                p.at("signals.listen", format!("is not an address and port: {e}"));
                None
            }
        });
    let mut out: Vec<Transmitter> = Vec::new();
    for t in transmitters {
        let t = transmitter(p, t, issuers);
        if out.iter().any(|o| o.name == t.name) {
            p.at(format!("transmitter.{}", t.name), "is defined twice");
        }
        out.push(t);
    }
    if listen.is_none() && out.iter().any(|t| t.push_bearer.is_some()) {
        p.at("signals.listen", "is required for transmitters that push");
    }
    Some(SignalsConfig {
        listen,
        transmitters: out,
    })
}
