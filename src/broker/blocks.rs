//! Blocks in force, indexed for the request path, and placing, lifting and enforcing them.
//!
//! A block is journaled (with its `block_added` record) before it is in the index, and before
//! any task it ends is touched: once placed it survives a restart, and recovery ends every live
//! task a block in force matches, so a crash between placing a block and ending its tasks
//! leaves nothing running that the block covers.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use super::{Broker, BrokerError, ErrorKind, Runtime};
use crate::journal::blocks::{self, BlockKind, BlockRow};
use crate::journal::rows::{TaskRow, Text};
use crate::journal::{Durability, Op};
use crate::record::{AuditRecord, Outcome, Reason, event, reason};
use crate::time::to_ms;
use crate::token::Verified;

/// The longest block value (a jti, client id, owner or subject).
const MAX_VALUE: usize = 1024;

/// Who a request is, as blocks and detectors see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Who {
    pub issuer: String,
    pub subject: String,
    pub client_id: String,
    pub owner: Option<String>,
    pub jti: String,
    pub token_fp: String,
    /// When the token expires (Unix ms): a token's block lasts as long.
    pub token_exp_ms: i64,
}

impl Who {
    pub(super) fn of(rt: &Runtime, v: &Verified) -> Self {
        let c = &v.claims;
        Self {
            issuer: c.issuer.clone(),
            subject: c.subject.clone(),
            client_id: c.client_id.clone(),
            owner: crate::policy::attribute(c, &rt.config.attribution).id,
            jti: c.jti.clone(),
            token_fp: v.fingerprint.hex(),
            token_exp_ms: c.expires_at.saturating_mul(1000),
        }
    }

    fn value(&self, kind: BlockKind) -> Option<&str> {
        match kind {
            BlockKind::Jti => (!self.jti.is_empty()).then_some(self.jti.as_str()),
            BlockKind::Client => Some(&self.client_id),
            BlockKind::Owner => self.owner.as_deref(),
            BlockKind::Subject => Some(&self.subject),
        }
    }

    /// Fills a record's principal fields.
    pub(super) fn stamp(&self, r: &mut AuditRecord) {
        r.issuer = Some(self.issuer.clone());
        r.subject = Some(self.subject.clone());
        r.client_id = Some(self.client_id.clone());
        r.owner.clone_from(&self.owner);
        r.jti = (!self.jti.is_empty()).then(|| self.jti.clone());
        r.token_fingerprint = Some(self.token_fp.clone());
    }
}

/// The refusal code a block of this kind answers with.
pub(super) fn refusal(kind: BlockKind) -> Reason {
    match kind {
        BlockKind::Jti => reason::TOKEN_BLOCKED,
        BlockKind::Client => reason::CLIENT_BLOCKED,
        BlockKind::Owner => reason::OWNER_BLOCKED,
        BlockKind::Subject => reason::SUBJECT_BLOCKED,
    }
}

fn matches(b: &BlockRow, kind: BlockKind, issuer: &str, value: &str) -> bool {
    b.kind == kind && b.value == value && b.issuer.as_deref().is_none_or(|i| i == issuer)
}

/// Whether `b` covers requests of `who`.
pub(super) fn covers(b: &BlockRow, who: &Who) -> bool {
    who.value(b.kind)
        .is_some_and(|v| matches(b, b.kind, &who.issuer, v))
}

pub(super) fn task_matches(b: &BlockRow, t: &TaskRow) -> bool {
    let value: Option<&str> = match b.kind {
        BlockKind::Jti => Some(&t.jti),
        BlockKind::Client => Some(&t.client_id),
        BlockKind::Owner => t.owner.as_deref(),
        BlockKind::Subject => Some(&t.subject),
    };
    value.is_some_and(|v| matches(b, b.kind, &t.issuer, v))
}

/// Blocks in force, by what they match. Empty (the usual case) costs the request path one
/// atomic load.
#[derive(Default)]
pub(super) struct Index {
    by_value: RwLock<HashMap<(BlockKind, String), Vec<BlockRow>>>,
    count: AtomicUsize,
}

impl Index {
    fn insert(&self, b: BlockRow) {
        if let Ok(mut m) = self.by_value.write() {
            m.entry((b.kind, b.value.clone())).or_default().push(b);
            self.count.fetch_add(1, Ordering::Release);
        }
    }

    fn remove(&self, id: &str) {
        self.drop_where(|b| b.id == id);
    }

    fn drop_where(&self, gone: impl Fn(&BlockRow) -> bool) {
        if let Ok(mut m) = self.by_value.write() {
            let mut removed = 0;
            m.retain(|_, v| {
                let before = v.len();
                v.retain(|b| !gone(b));
                removed += before - v.len();
                !v.is_empty()
            });
            self.count.fetch_sub(removed, Ordering::Release);
        }
    }

    /// Drops blocks that have lapsed, so an index of old blocks costs nothing again.
    pub(super) fn prune(&self, now_ms: i64) {
        if self.count.load(Ordering::Acquire) > 0 {
            self.drop_where(|b| !b.in_force(now_ms));
        }
    }

    /// Whether any block is in the index (lapsed ones count until pruned).
    pub(super) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// The block in force that refuses `who`, if any.
    pub(super) fn find(&self, who: &Who, now_ms: i64) -> Option<BlockRow> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let m = self.by_value.read().ok()?;
        BlockKind::ALL.into_iter().find_map(|kind| {
            let value = who.value(kind)?;
            m.get(&(kind, value.to_owned()))?
                .iter()
                .find(|b| b.in_force(now_ms) && matches(b, kind, &who.issuer, value))
                .cloned()
        })
    }

    pub(super) fn in_force(&self, now_ms: i64) -> usize {
        if self.count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        self.all(now_ms).len()
    }

    pub(super) fn all(&self, now_ms: i64) -> Vec<BlockRow> {
        self.by_value
            .read()
            .map(|m| {
                m.values()
                    .flatten()
                    .filter(|b| b.in_force(now_ms))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A block as an operator (or the admin API) asks for it. Checked before anything is written.
pub struct BlockAsk {
    pub kind: BlockKind,
    pub issuer: Option<String>,
    pub value: String,
    pub until: SystemTime,
    pub reason: String,
    pub source: String,
}

fn check_ask(a: &BlockAsk, now: SystemTime) -> Result<(), BrokerError> {
    let bad = |code: &str, msg: &str| Err(BrokerError::invalid(code, msg.to_owned()));
    if a.value.is_empty() || a.value.len() > MAX_VALUE || a.value.chars().any(char::is_control) {
        return bad(
            "invalid_block",
            "the blocked value must be 1-1024 printable characters",
        );
    }
    if let Some(i) = &a.issuer
        && (i.is_empty() || i.len() > 2048 || i.chars().any(char::is_control))
    {
        return bad(
            "invalid_block",
            "the issuer must be 1-2048 printable characters",
        );
    }
    if a.kind != BlockKind::Owner && a.issuer.is_none() {
        return bad(
            "invalid_block",
            "a jti, client or subject means something only at its issuer: name the issuer",
        );
    }
    if a.reason.len() > 1024 || a.reason.chars().any(char::is_control) {
        return bad(
            "invalid_block",
            "the reason is over 1024 bytes or holds control characters",
        );
    }
    if a.until <= now || a.until > now + std::time::Duration::from_secs(30 * 86_400) {
        return bad(
            "invalid_block",
            "a block lasts between 1 second and 30 days",
        );
    }
    Ok(())
}

pub(super) fn block_record(b: &BlockRow, ev: &str, now: SystemTime) -> AuditRecord {
    let mut r = AuditRecord::new(ev, Outcome::Success, now)
        .detail("block_id", b.id.clone())
        .detail("kind", b.kind.as_str())
        .detail("value", b.value.clone())
        .detail("until_ms", b.until_ms)
        .detail("source", b.source.clone());
    if !b.reason.is_empty() {
        r = r.detail("block_reason", b.reason.clone());
    }
    r.issuer.clone_from(&b.issuer);
    match b.kind {
        BlockKind::Jti => r.jti = Some(b.value.clone()),
        BlockKind::Client => r.client_id = Some(b.value.clone()),
        BlockKind::Owner => r.owner = Some(b.value.clone()),
        BlockKind::Subject => r.subject = Some(b.value.clone()),
    }
    r
}

impl Broker {
    /// Loads the blocks in force (at start, before any request).
    pub(super) async fn load_blocks(&self) -> Result<usize, crate::journal::JournalError> {
        let now_ms = to_ms(self.clock.now());
        let rows = self
            .journal
            .read(move |c| blocks::in_force(c, now_ms))
            .await?;
        let n = rows.len();
        for b in rows {
            self.blocks.insert(b);
        }
        Ok(n)
    }

    /// Refuses `who` if a block covers them: the refusal is audited with the block's id.
    pub(super) fn blocked(&self, who: &Who, now: SystemTime) -> Option<(BlockRow, BrokerError)> {
        let b = self.blocks.find(who, to_ms(now))?;
        let e = self.refusal_for(&b);
        Some((b, e))
    }

    pub(super) fn refusal_for(&self, b: &BlockRow) -> BrokerError {
        let code = refusal(b.kind);
        BrokerError::new(
            ErrorKind::PermissionDenied,
            code.as_str(),
            format!(
                "this {} is blocked until {} (block {})",
                match b.kind {
                    BlockKind::Jti => "token",
                    k => k.as_str(),
                },
                crate::time::rfc3339(crate::time::from_ms(b.until_ms)),
                b.id
            ),
        )
    }

    /// Places blocks, with `extra` in the same commit (the finding that placed them), then hands
    /// the live tasks they cover to the block loop. Returns those task ids.
    pub(super) async fn place_blocks(
        &self,
        rows: Vec<BlockRow>,
        extra: Vec<Op>,
    ) -> Result<Vec<Text>, BrokerError> {
        self.place_blocks_checked(rows, extra)
            .await
            .map_err(|(_, e)| BrokerError::new(ErrorKind::Unavailable, "journal_unavailable", e))
    }

    /// As [`Self::place_blocks`]; the error says whether the commit conflicted (a duplicate).
    pub(super) async fn place_blocks_checked(
        &self,
        rows: Vec<BlockRow>,
        extra: Vec<Op>,
    ) -> Result<Vec<Text>, (bool, String)> {
        let now = self.clock.now();
        let mut ops = extra;
        for b in &rows {
            ops.push(Op::Block(Box::new(b.clone())));
            ops.push(Op::Audit(Box::new(block_record(
                b,
                event::BLOCK_ADDED,
                now,
            ))));
        }
        self.journal
            .commit_with(ops, Durability::Fsync)
            .await
            .map_err(|e| (e.is_duplicate(), e.to_string()))?;
        let ended = self.covered_tasks(&rows);
        for b in rows {
            self.blocks.insert(b);
        }
        self.queue_block_ends(&ended);
        Ok(ended.into_iter().map(|(id, _)| id).collect())
    }

    /// An operator's block.
    pub async fn add_block(&self, ask: BlockAsk) -> Result<(BlockRow, Vec<Text>), BrokerError> {
        let now = self.clock.now();
        check_ask(&ask, now)?;
        let row = BlockRow {
            id: super::new_id(),
            kind: ask.kind,
            issuer: ask.issuer,
            value: ask.value,
            created_ms: to_ms(now),
            until_ms: to_ms(ask.until),
            reason: ask.reason,
            source: ask.source,
            lifted_ms: None,
            lifted_by: None,
        };
        let ended = self.place_blocks(vec![row.clone()], Vec::new()).await?;
        Ok((row, ended))
    }

    /// Lifts a block in force: audited, and the next request it covered is served.
    pub async fn lift_block(&self, id: &str, by: String) -> Result<BlockRow, BrokerError> {
        let lookup = id.to_owned();
        let now = self.clock.now();
        let row = self
            .journal
            .read(move |c| blocks::get(c, &lookup))
            .await
            .map_err(|e| BrokerError::journal(&e))?;
        let Some(mut row) = row else {
            return Err(BrokerError::new(
                ErrorKind::NotFound,
                "block_not_found",
                format!("no block {id:?}"),
            ));
        };
        if !row.in_force(to_ms(now)) {
            return Err(BrokerError::new(
                ErrorKind::FailedPrecondition,
                "block_not_in_force",
                format!("block {id:?} is already lifted or has lapsed"),
            ));
        }
        row.lifted_ms = Some(to_ms(now));
        row.lifted_by = Some(by.clone());
        let rec = block_record(&row, event::BLOCK_LIFTED, now).detail("lifted_by", by.clone());
        self.journal
            .commit(vec![
                Op::LiftBlock {
                    id: row.id.clone(),
                    lifted_ms: to_ms(now),
                    lifted_by: by,
                },
                Op::Audit(Box::new(rec)),
            ])
            .await
            .map_err(|e| BrokerError::journal(&e))?;
        self.blocks.remove(&row.id);
        Ok(row)
    }

    pub async fn list_blocks(&self, all: bool, limit: usize) -> Result<Vec<BlockRow>, BrokerError> {
        let now_ms = to_ms(self.clock.now());
        self.journal
            .read(move |c| blocks::list(c, now_ms, all, limit))
            .await
            .map_err(|e| BrokerError::journal(&e))
    }
}
