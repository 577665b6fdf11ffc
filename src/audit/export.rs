//! `credbroker audit export`: the audit log as JSON Lines, CSV or OCSF events, streamed record
//! by record so an export of any size runs in constant memory (measured: `credbroker-bench
//! audit`). Records hold identifiers and fingerprints only; identifiers that are sensitive in
//! themselves (who the owner is) can be replaced by their HMAC with an export key.

use std::io::Write;

use rusqlite::Connection;

use super::AuditRecord;
use super::query::{AuditFilter, for_each_record};
use crate::journal::JournalError;
use crate::keys::AuditKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The records as the chain hashed them, one JSON object per line.
    Jsonl,
    /// One row per record, a fixed header.
    Csv,
    /// One OCSF 1.5.0 event per line (see `audit::ocsf`).
    Ocsf,
}

/// Identifiers an export can pseudonymise.
pub const HMAC_FIELDS: &[&str] = &["owner", "sub", "client", "actors", "jti", "exe"];

/// Replaces the chosen identifiers with `hmac-sha256:…` of their value.
pub struct Pseudonymise {
    pub key: AuditKey,
    pub fields: Vec<String>,
}

impl Pseudonymise {
    pub fn new(key: AuditKey, fields: Vec<String>) -> Result<Self, String> {
        if let Some(f) = fields.iter().find(|f| !HMAC_FIELDS.contains(&f.as_str())) {
            return Err(format!(
                "cannot HMAC field {f:?}: choose from {}",
                HMAC_FIELDS.join(", ")
            ));
        }
        Ok(Self { key, fields })
    }

    fn apply(&self, r: &AuditRecord) -> AuditRecord {
        let mut r = r.clone();
        let k = &self.key;
        let mac = |v: &mut Option<String>| {
            if let Some(s) = v.as_mut() {
                *s = k.field(s);
            }
        };
        for f in &self.fields {
            match f.as_str() {
                "owner" => mac(&mut r.owner),
                "sub" => mac(&mut r.subject),
                "client" => mac(&mut r.client_id),
                "jti" => mac(&mut r.jti),
                "actors" => r.actors.iter_mut().for_each(|a| *a = k.field(a)),
                "exe" => {
                    if let Some(p) = r.peer.as_mut() {
                        mac(&mut p.exe);
                    }
                }
                _ => {}
            }
        }
        r
    }
}

const CSV_HEADER: &str = "seq,time,event,outcome,reason,task_id,lease_id,workload,tool,grant,\
provider,peer_uid,peer_gid,peer_pid,peer_exe,peer_unit,issuer,client_id,subject,actors,owner,\
owner_source,token_fingerprint,jti,detail";

/// RFC 4180 quoting, and a leading `'` on a cell a spreadsheet would run as a formula (values
/// such as an owner come from token claims, which an attacker may choose).
fn csv_cell(out: &mut String, value: &str) {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || value.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in value.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quote {
        out.push('"');
    }
}

fn csv_row(out: &mut String, r: &AuditRecord) {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let peer = r.peer.as_ref();
    let detail = if r.detail.is_empty() {
        String::new()
    } else {
        serde_json::Value::Object(r.detail.clone()).to_string()
    };
    let cells = [
        r.seq.to_string(),
        r.time.clone(),
        r.event.clone(),
        r.outcome.clone(),
        s(&r.reason),
        s(&r.task_id),
        s(&r.lease_id),
        s(&r.workload),
        s(&r.tool),
        s(&r.grant),
        s(&r.provider),
        peer.map(|p| p.uid.to_string()).unwrap_or_default(),
        peer.map(|p| p.gid.to_string()).unwrap_or_default(),
        peer.map(|p| p.pid.to_string()).unwrap_or_default(),
        peer.and_then(|p| p.exe.clone()).unwrap_or_default(),
        peer.and_then(|p| p.unit.clone()).unwrap_or_default(),
        s(&r.issuer),
        s(&r.client_id),
        s(&r.subject),
        r.actors.join(" "),
        s(&r.owner),
        s(&r.owner_source),
        s(&r.token_fingerprint),
        s(&r.jti),
        detail,
    ];
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_cell(out, c);
    }
}

/// Writes every record matching `filter`, oldest first. Returns how many.
pub fn export(
    conn: &Connection,
    filter: &AuditFilter,
    format: Format,
    pseudonymise: Option<&Pseudonymise>,
    out: &mut dyn Write,
) -> Result<u64, JournalError> {
    let io = |error| JournalError::Io {
        path: "output".into(),
        error,
    };
    if format == Format::Csv {
        writeln!(out, "{CSV_HEADER}").map_err(io)?;
    }
    let mut line = String::new();
    let n = for_each_record(conn, filter, &mut |record| {
        let owned;
        let r = match pseudonymise {
            Some(p) => {
                owned = p.apply(record);
                &owned
            }
            None => record,
        };
        line.clear();
        match format {
            Format::Jsonl => {
                line.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?)
            }
            Format::Ocsf => line.push_str(&super::ocsf::event(r).to_string()),
            Format::Csv => csv_row(&mut line, r),
        }
        line.push('\n');
        out.write_all(line.as_bytes())
    })?;
    out.flush().map_err(io)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let mut s = String::new();
        csv_cell(&mut s, "plain");
        s.push('|');
        csv_cell(&mut s, "a,\"b\"\nc");
        s.push('|');
        csv_cell(&mut s, "=HYPERLINK(\"x\")");
        assert_eq!(s, "plain|\"a,\"\"b\"\"\nc\"|\"'=HYPERLINK(\"\"x\"\")\"");
    }

    #[test]
    fn pseudonymised_fields_are_stable_and_unreadable() {
        let p = Pseudonymise::new(
            AuditKey::from_key(&[3u8; 32]),
            vec!["owner".into(), "actors".into()],
        )
        .expect("owner and actors should be accepted hmac fields");
        let mut r = AuditRecord {
            owner: Some("alice@example.com".into()),
            actors: vec!["agent".into()],
            client_id: Some("c1".into()),
            ..Default::default()
        };
        r.seq = 1;
        let a = p.apply(&r);
        assert!(
            a.owner
                .as_deref()
                .is_some_and(|o| o.starts_with("hmac-sha256:"))
        );
        assert!(
            !serde_json::to_string(&a)
                .unwrap_or_default()
                .contains("alice")
        );
        assert_eq!(a.owner, p.apply(&r).owner);
        assert_eq!(a.client_id.as_deref(), Some("c1"));
        assert!(Pseudonymise::new(AuditKey::from_key(&[3u8; 32]), vec!["token".into()]).is_err());
    }
}
