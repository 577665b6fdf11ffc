//! The writer thread: takes every submission waiting, commits them in one transaction, answers,
//! then tells the observers and lets the checkpointer run (see the module `journal`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::ops::{self, Chain};
use super::{
    Durability, JournalError, JournalStats, MAX_GROUP, Observer, Op, Submission, checkpoint,
    intents,
};
use crate::keys::AuditKey;

pub(super) fn write_loop(
    mut conn: Connection,
    mut checkpointer: checkpoint::Checkpointer,
    mut rx: mpsc::Receiver<Submission>,
    mut chain: Chain,
    head_key: Option<AuditKey>,
    stats: &JournalStats,
    observers: &[Arc<dyn Observer>],
) {
    let mut group: Vec<Submission> = Vec::with_capacity(MAX_GROUP);
    let mut committed: Vec<Vec<Op>> = Vec::with_capacity(MAX_GROUP);
    let mut fsyncing = true;
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(s) => group.push(s),
                Err(_) => break,
            }
        }
        // In WAL mode, synchronous=FULL fsyncs the WAL at commit and NORMAL does not; the
        // setting applies per transaction, so a group pays for an fsync only if it needs one.
        let fsync = group.iter().any(|s| s.durability == Durability::Fsync);
        if fsync != fsyncing {
            let mode = if fsync { "FULL" } else { "NORMAL" };
            match conn.pragma_update(None, "synchronous", mode) {
                Ok(()) => fsyncing = fsync,
                Err(e) if fsync => {
                    // Never acknowledge as durable what would not be fsync'd.
                    tracing::error!(error = %e, "cannot make the journal fsync; refusing the group");
                    for sub in group.drain(..) {
                        let _ = sub.reply.send(Err(JournalError::Conflict(e.to_string())));
                    }
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "cannot switch the journal to NORMAL sync"),
            }
        }
        let before = chain;
        let results = commit_group(&mut conn, &mut group, &mut chain, head_key.as_ref());
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .submissions
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        match results {
            Ok(results) => {
                for (sub, result) in group.drain(..).zip(results) {
                    let ok = result.is_ok();
                    let _ = sub.reply.send(result);
                    if ok {
                        committed.push(sub.ops);
                    }
                }
                // Everyone is answered; now the observers, while the submitters carry on.
                for ops in committed.drain(..) {
                    for op in &ops {
                        if let Op::Audit(r) | Op::PruneAudit { anchor: r, .. } = op {
                            for o in observers {
                                o.committed(r);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                // The commit itself failed (disk full, I/O error): nothing in the group is
                // durable, so every submitter hears so, and the chain rewinds.
                chain = before;
                tracing::error!(error = %e, "journal commit failed");
                let msg = e.to_string();
                for sub in group.drain(..) {
                    let _ = sub.reply.send(Err(JournalError::Conflict(msg.clone())));
                }
            }
        }
        // With everyone answered: most of the copying on another thread, the remainder here
        // (see `checkpoint`).
        checkpointer.between_groups(&conn);
    }
}

/// Commits the intents left in the log whose tasks never reached SQLite, as their intent
/// commit would have; the others were committed already and are skipped.
pub(super) fn commit_leftovers(
    conn: &mut Connection,
    leftovers: &intents::Leftovers,
    chain: &mut Chain,
    head_key: Option<&AuditKey>,
) -> Result<(), JournalError> {
    let mut group = Vec::new();
    leftovers.for_each(|ops| {
        let Some(id) = intents::task_id(&ops) else {
            return Ok(());
        };
        let known = conn
            .prepare_cached("SELECT 1 FROM tasks WHERE id = ?1")?
            .exists([id])?;
        if !known {
            let (reply, _) = oneshot::channel();
            group.push(Submission {
                ops,
                durability: Durability::Fsync,
                reply,
            });
        }
        Ok(())
    })?;
    if group.is_empty() {
        return Ok(());
    }
    tracing::info!(
        tasks = group.len(),
        "committing the intents of tasks that were being issued when the daemon stopped"
    );
    // The writer connection is still at synchronous=FULL: this commit is fsync'd.
    let results = commit_group(conn, &mut group, chain, head_key)?;
    // An idempotency key taken meanwhile (a retry while the journal was failing) must not keep
    // the daemon from starting, nor the intent from being settled: its task is committed
    // without the key's row, which the other task holds.
    let mut again = Vec::new();
    for (mut sub, result) in group.into_iter().zip(results) {
        match result {
            Ok(()) => {}
            Err(e)
                if e.is_duplicate() && sub.ops.iter().any(|o| matches!(o, Op::BeginKey { .. })) =>
            {
                tracing::warn!(
                    task = intents::task_id(&sub.ops).unwrap_or_default(),
                    "an intent's idempotency key was taken by another task; committing it without"
                );
                sub.ops.retain(|o| !matches!(o, Op::BeginKey { .. }));
                again.push(sub);
            }
            Err(e) => return Err(e),
        }
    }
    if !again.is_empty() {
        for result in commit_group(conn, &mut again, chain, head_key)? {
            result?;
        }
    }
    Ok(())
}

/// One transaction, one fsync, for the whole group.
///
/// Fast path: every submission applied straight into the transaction. A savepoint per
/// submission would make SQLite copy every page it first touches into a statement journal,
/// which costs more than the inserts themselves; and a failing submission is a bug, not load.
/// So only when one fails is the transaction rolled back and the group replayed with a
/// savepoint around each submission, so the failing one fails alone.
fn commit_group(
    conn: &mut Connection,
    group: &mut [Submission],
    chain: &mut Chain,
    head_key: Option<&AuditKey>,
) -> Result<Vec<Result<(), JournalError>>, JournalError> {
    let start = *chain;
    // In the same transaction as the records: the sealed head and the chain never disagree.
    let seal = |tx: &Connection, chain: &Chain| -> rusqlite::Result<()> {
        match head_key {
            Some(key) if chain.seq != start.seq => {
                let mac = key.seal_head(chain.seq, &chain.hash);
                tx.prepare_cached(
                    "INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, ?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET seq = ?1, hash = ?2, mac = ?3",
                )?
                .execute(rusqlite::params![
                    chain.seq,
                    chain.hash.as_slice(),
                    mac.as_slice()
                ])?;
                Ok(())
            }
            _ => Ok(()),
        }
    };
    {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied = group.iter_mut().try_for_each(|sub| {
            sub.ops
                .iter_mut()
                .try_for_each(|op| ops::apply(&tx, op, chain))
        });
        if applied.is_ok() {
            seal(&tx, chain)?;
            tx.commit()?;
            return Ok(group.iter().map(|_| Ok(())).collect());
        }
        // Dropping the transaction rolls it back.
    }
    *chain = start;
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(group.len());
    for sub in group.iter_mut() {
        let mut sp = tx.savepoint()?;
        let before = *chain;
        match sub
            .ops
            .iter_mut()
            .try_for_each(|op| ops::apply(&sp, op, chain))
        {
            Ok(()) => {
                sp.commit()?;
                results.push(Ok(()));
            }
            Err(e) => {
                sp.rollback()?;
                *chain = before;
                results.push(Err(e));
            }
        }
    }
    seal(&tx, chain)?;
    tx.commit()?;
    Ok(results)
}
