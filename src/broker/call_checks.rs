//! What a gateway's report must be before the daemon records it: every field checked as any
//! request is, so a malformed report changes nothing.

use std::net::SocketAddr;

use serde_json::Value;

use super::BrokerError;
use super::calls::CallReport;
use crate::record::{Reason, reason};

pub(super) fn invalid(what: &str) -> BrokerError {
    BrokerError::invalid("invalid_call_report", format!("the call report's {what}"))
}

/// Printable text of at most `max` bytes (no control characters: records end up in terminals).
fn text(v: &str, max: usize, what: &str) -> Result<(), BrokerError> {
    if v.len() > max || v.chars().any(char::is_control) {
        return Err(invalid(&format!(
            "{what} is over {max} bytes or holds control characters"
        )));
    }
    Ok(())
}

fn required(v: &str, max: usize, what: &str) -> Result<(), BrokerError> {
    if v.is_empty() {
        return Err(invalid(&format!("{what} is empty")));
    }
    text(v, max, what)
}

pub(super) fn check_call_id(id: &str) -> Result<(), BrokerError> {
    match uuid::Uuid::try_parse(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(()),
        _ => Err(invalid("call_id is not a lowercase hyphenated UUID")),
    }
}

fn hex64(v: &str, what: &str) -> Result<(), BrokerError> {
    if v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(invalid(&format!("{what} is not 64 lowercase hex digits")))
    }
}

pub(super) fn gateway_name(v: &str) -> Result<(), BrokerError> {
    required(v, 64, "gateway")?;
    if v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err(invalid(
            "gateway name holds characters other than [A-Za-z0-9._-]",
        ))
    }
}

pub(super) fn code(v: &str, what: &str) -> Result<Option<Reason>, BrokerError> {
    if v.is_empty() {
        return Ok(None);
    }
    reason::find(v)
        .map(Some)
        .ok_or_else(|| invalid(&format!("{what} {v:?} is not a registered reason code")))
}

impl CallReport {
    pub(super) fn check(&self) -> Result<Option<Reason>, BrokerError> {
        check_call_id(&self.call_id)?;
        gateway_name(&self.gateway)?;
        required(&self.resource, 2048, "resource")?;
        text(&self.method, 128, "method")?;
        text(&self.name, 2048, "name")?;
        if !self.arguments_sha256.is_empty() {
            hex64(&self.arguments_sha256, "arguments_sha256")?;
        }
        if self.arguments.len() > 32 {
            return Err(invalid("arguments hold over 32 keys"));
        }
        for (k, v) in &self.arguments {
            required(k, 64, "argument key")?;
            if v.len() > 1024 || serde_json::from_str::<Value>(v).is_err() {
                return Err(invalid(&format!(
                    "argument {k:?} is not JSON of at most 1024 bytes"
                )));
            }
        }
        if let Some(c) = &self.caller {
            required(&c.issuer, 2048, "caller issuer")?;
            required(&c.subject, 1024, "caller subject")?;
            required(&c.client_id, 1024, "caller client_id")?;
            text(&c.jti, 1024, "caller jti")?;
            required(&c.owner_source, 32, "caller owner_source")?;
            if let Some(o) = &c.owner {
                required(o, 1024, "caller owner")?;
            }
            if c.actors.len() > 16 {
                return Err(invalid("caller has over 16 actors"));
            }
            for a in &c.actors {
                required(a, 1024, "caller actor")?;
            }
            hex64(&c.token_fingerprint, "caller token_fingerprint")?;
        }
        if self.source.parse::<SocketAddr>().is_err() {
            return Err(invalid("source is not an address and port"));
        }
        text(&self.client_name, 256, "client_name")?;
        text(&self.client_version, 256, "client_version")?;
        text(&self.protocol_version, 32, "protocol_version")?;
        let refused = code(&self.refused, "refusal")?;
        match (refused, self.caller.is_some(), self.http_status) {
            (None, false, _) => Err(invalid("caller is missing from an allowed call")),
            (None, true, 0) | (Some(_), _, 400..=599) => Ok(refused),
            (None, true, _) => Err(invalid("http_status is set on an allowed call")),
            (Some(_), _, _) => Err(invalid("http_status of a refusal is not 400-599")),
        }
    }
}
