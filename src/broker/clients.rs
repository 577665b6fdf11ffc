//! The client registry on the request path, and the first sight of each client.
//!
//! An entry is the configuration's `[[client]]`, unless an operator changed it at run time
//! (`credbroker clients`, journaled), whose entry then wins. A registered client that is
//! suspended, retired or past its expiry is refused with its own code; with
//! `broker.require_registered_client`, so is a client the registry does not hold.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::SystemTime;

use super::{Broker, BrokerError, ErrorKind, Runtime};
use crate::config::clients::{ClientEntry, ClientStatus};
use crate::journal::clients::{self, ClientRow};
use crate::journal::rows::Text;
use crate::journal::{Durability, Op};
use crate::record::{AuditRecord, Outcome, Reason, event, reason};
use crate::time::to_ms;
use crate::token::Verified;
use crate::workload::PeerInfo;

/// issuer → client id → entry.
pub(super) type ClientIndex = HashMap<String, HashMap<String, ClientEntry>>;

pub(super) fn index(entries: &[ClientEntry]) -> ClientIndex {
    let mut m = ClientIndex::new();
    for e in entries {
        m.entry(e.issuer.clone())
            .or_default()
            .insert(e.client_id.clone(), e.clone());
    }
    m
}

/// What the registry says of a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientView {
    pub entry: ClientEntry,
    /// `config` or `operator`.
    pub source: &'static str,
    pub updated: Option<(i64, String)>,
}

#[derive(Default)]
pub(super) struct Registry {
    /// Operators' entries (from the journal).
    overrides: RwLock<ClientIndex>,
    /// (issuer → clients) whose first request is known to be recorded.
    seen: RwLock<HashMap<String, HashSet<String>>>,
}

impl Registry {
    pub(super) fn was_seen(&self, issuer: &str, client: &str) -> bool {
        self.seen
            .read()
            .is_ok_and(|s| s.get(issuer).is_some_and(|c| c.contains(client)))
    }

    pub(super) fn mark_seen(&self, issuer: &str, client: &str) {
        if let Ok(mut s) = self.seen.write() {
            s.entry(issuer.to_owned())
                .or_default()
                .insert(client.to_owned());
        }
    }
}

fn refusal(code: Reason, msg: String) -> BrokerError {
    BrokerError::new(ErrorKind::PermissionDenied, code.as_str(), msg)
}

/// Why the registry refuses this client now, if it does.
fn verdict(
    entry: Option<&ClientEntry>,
    required: bool,
    client: &str,
    now: SystemTime,
) -> Option<(Reason, String)> {
    match entry {
        None if required => Some((
            reason::CLIENT_UNREGISTERED,
            format!("client {client:?} is not registered (broker.require_registered_client)"),
        )),
        None => None,
        Some(e) => match e.status {
            ClientStatus::Suspended => Some((
                reason::CLIENT_SUSPENDED,
                format!("client {client:?} is suspended"),
            )),
            ClientStatus::Retired => Some((
                reason::CLIENT_RETIRED,
                format!("client {client:?} is retired"),
            )),
            ClientStatus::Active if e.expires.is_some_and(|x| x <= now) => Some((
                reason::CLIENT_EXPIRED,
                format!(
                    "client {client:?}'s registration expired at {}",
                    crate::time::rfc3339(e.expires.unwrap_or(now))
                ),
            )),
            ClientStatus::Active => None,
        },
    }
}

impl Broker {
    pub(super) async fn load_clients(&self) -> Result<(), crate::journal::JournalError> {
        let rows = self.journal.read(clients::all).await?;
        if let Ok(mut o) = self.registry.overrides.write() {
            *o = index(&rows.into_iter().map(|r| r.entry).collect::<Vec<_>>());
        }
        Ok(())
    }

    fn client_entry(&self, rt: &Runtime, issuer: &str, client: &str) -> Option<ClientEntry> {
        let over = self
            .registry
            .overrides
            .read()
            .ok()
            .and_then(|o| o.get(issuer).and_then(|c| c.get(client)).cloned());
        over.or_else(|| rt.clients.get(issuer).and_then(|c| c.get(client)).cloned())
    }

    fn registry_empty(&self, rt: &Runtime) -> bool {
        rt.clients.is_empty()
            && !rt.config.broker.require_registered_client
            && self.registry.overrides.read().is_ok_and(|o| o.is_empty())
    }

    /// The registry's verdict on `issuer`/`client` (the gateway's callers and the socket's).
    pub(super) fn client_refusal(
        &self,
        rt: &Runtime,
        issuer: &str,
        client: &str,
        grants: &[&str],
        now: SystemTime,
    ) -> Option<(Reason, BrokerError)> {
        if self.registry_empty(rt) {
            return None;
        }
        let entry = self.client_entry(rt, issuer, client);
        if let Some((code, msg)) = verdict(
            entry.as_ref(),
            rt.config.broker.require_registered_client,
            client,
            now,
        ) {
            return Some((code, refusal(code, msg)));
        }
        let allowed = entry.map(|e| e.grants).unwrap_or_default();
        if !allowed.is_empty()
            && let Some(g) = grants.iter().find(|g| !allowed.iter().any(|a| a == *g))
        {
            let code = reason::GRANT_NOT_ALLOWED;
            let mut e = refusal(
                code,
                format!("client {client:?} is registered for other grants than {g:?}"),
            );
            e.grant = Some((*g).to_owned());
            return Some((code, e));
        }
        None
    }

    /// The registry's check of a BeginTask or RenewTask, audited when it refuses; and the
    /// client's first sight, recorded once.
    pub(super) async fn check_client(
        &self,
        rt: &Runtime,
        workload: &str,
        peer: &PeerInfo,
        verified: &Verified,
        grants: &[&str],
        now: SystemTime,
    ) -> Result<(), BrokerError> {
        let c = &verified.claims;
        let refused = self.client_refusal(rt, &c.issuer, &c.client_id, grants, now);
        // Seen even when refused: an unregistered client knocking is what a reviewer of new
        // registrations wants to know about first.
        if !self.registry.was_seen(&c.issuer, &c.client_id) {
            let mut first = AuditRecord::new(event::CLIENT_FIRST_SEEN, Outcome::Success, now)
                .detail("via", "broker_socket");
            if let Some((code, _)) = &refused {
                first = first.detail("refused", code.as_str());
            }
            first.peer = Some(peer.record());
            first.workload = Some(workload.to_owned());
            first.issuer = Some(c.issuer.clone());
            first.client_id = Some(c.client_id.clone());
            first.subject = Some(c.subject.clone());
            first.owner = crate::policy::attribute(c, &rt.config.attribution).id;
            self.note_seen(&c.issuer, &c.client_id, "local", String::new(), first)
                .await?;
        }
        if let Some((code, e)) = refused {
            let mut rec =
                AuditRecord::new(event::REQUEST_DENIED, Outcome::Denied, now).reason(code);
            rec.peer = Some(peer.record());
            rec.workload = Some(workload.to_owned());
            rec.grant.clone_from(&e.grant);
            rec.issuer = Some(c.issuer.clone());
            rec.client_id = Some(c.client_id.clone());
            rec.subject = Some(c.subject.clone());
            rec.token_fingerprint = Some(verified.fingerprint.hex());
            rec.jti = Some(c.jti.clone());
            self.audit_only(vec![rec]).await;
            return Err(e);
        }
        Ok(())
    }

    /// Records a client's first sight unless it is recorded already. A lost race is no second
    /// record: the journal appends `first` only with the row it inserts.
    pub(super) async fn note_seen(
        &self,
        issuer: &str,
        client: &str,
        network: &str,
        call_id: String,
        first: AuditRecord,
    ) -> Result<(), BrokerError> {
        let op = Op::ClientSeen {
            issuer: issuer.to_owned(),
            client_id: client.to_owned(),
            network: network.to_owned(),
            first_ms: first.at_ms,
            call_id,
            first: Some(Box::new(first)),
        };
        self.journal
            .commit_with(vec![op], Durability::Process)
            .await
            .map_err(|e| BrokerError::journal(&e))?;
        self.registry.mark_seen(issuer, client);
        Ok(())
    }

    /// An operator's change to a client's entry: journaled with its `client_updated` record;
    /// suspending or retiring a client ends its live tasks.
    pub async fn set_client(
        &self,
        entry: ClientEntry,
        by: String,
    ) -> Result<(ClientRow, Vec<Text>), BrokerError> {
        let now = self.clock.now();
        check_entry(&entry)?;
        let row = ClientRow {
            entry,
            updated_ms: to_ms(now),
            updated_by: by,
        };
        let e = &row.entry;
        let mut rec = AuditRecord::new(event::CLIENT_UPDATED, Outcome::Success, now)
            .detail("status", e.status.as_str())
            .detail("grants", e.grants.clone())
            .detail("updated_by", row.updated_by.clone());
        if let Some(x) = e.expires {
            rec = rec.detail("expires", crate::time::rfc3339(x));
        }
        rec.issuer = Some(e.issuer.clone());
        rec.client_id = Some(e.client_id.clone());
        rec.owner.clone_from(&e.owner);
        self.journal
            .commit_with(
                vec![
                    Op::SetClient(Box::new(row.clone())),
                    Op::Audit(Box::new(rec)),
                ],
                Durability::Fsync,
            )
            .await
            .map_err(|e| BrokerError::journal(&e))?;
        if let Ok(mut o) = self.registry.overrides.write() {
            o.entry(e.issuer.clone())
                .or_default()
                .insert(e.client_id.clone(), e.clone());
        }
        let ended = if e.status == ClientStatus::Active {
            Vec::new()
        } else {
            self.end_client_tasks(&e.issuer, &e.client_id, e.status)
        };
        Ok((row, ended))
    }

    /// Every client the registry holds: the configuration's and operators' (which win).
    pub fn list_clients(&self) -> Vec<ClientView> {
        let rt = self.runtime();
        let mut out: Vec<ClientView> = Vec::new();
        let over = self
            .registry
            .overrides
            .read()
            .map(|o| o.clone())
            .unwrap_or_default();
        for e in rt.config.clients.iter() {
            if over
                .get(&e.issuer)
                .is_some_and(|c| c.contains_key(&e.client_id))
            {
                continue;
            }
            out.push(ClientView {
                entry: e.clone(),
                source: "config",
                updated: None,
            });
        }
        for e in over.values().flat_map(|c| c.values()) {
            out.push(ClientView {
                entry: e.clone(),
                source: "operator",
                updated: None,
            });
        }
        out.sort_by(|a, b| {
            (&a.entry.issuer, &a.entry.client_id).cmp(&(&b.entry.issuer, &b.entry.client_id))
        });
        out
    }

    /// The registered entry of one client, for `clients suspend` and friends.
    pub fn client(&self, issuer: &str, client: &str) -> Option<ClientEntry> {
        self.client_entry(&self.runtime(), issuer, client)
    }
}

fn check_entry(e: &ClientEntry) -> Result<(), BrokerError> {
    let bad = |m: &str| Err(BrokerError::invalid("invalid_client", m.to_owned()));
    let printable =
        |s: &str, max: usize| !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control);
    if !printable(&e.client_id, 1024) {
        return bad("the client id must be 1-1024 printable characters");
    }
    if !printable(&e.issuer, 2048) {
        return bad("the issuer must be 1-2048 printable characters");
    }
    if e.owner.as_deref().is_some_and(|o| !printable(o, 1024)) {
        return bad("the owner must be 1-1024 printable characters");
    }
    if e.grants.len() > 64 || e.grants.iter().any(|g| !printable(g, 64)) {
        return bad("at most 64 grants, each 1-64 printable characters");
    }
    Ok(())
}
