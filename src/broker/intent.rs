//! Where a BeginTask's intent is until its rows are in SQLite, and the idempotency keys of the
//! BeginTasks in flight.
//!
//! By default the intent goes to the intent log (`journal::intents`): one write from the
//! request's thread, and the rows reach SQLite with the first commit the task makes anyway (its
//! scope's, or the one that answers the caller). Every path that commits for the task before
//! then, a failure included, first makes sure the intent is in SQLite, so the failure's own
//! commit, the revoker and recovery find the rows as they always did. With
//! `journal.fsync_intents` the intent is an fsync'd SQLite commit of its own, as before: the
//! log survives the process being killed, not the machine losing power.
//!
//! An idempotency key must be known to be new before any provider is called. With the intent
//! committed to SQLite, the key's unique row said so; in the log, nothing does until the rows
//! are committed. So a keyed BeginTask claims its key in memory first (a second BeginTask
//! with the key waits for the first to finish, then replays), then looks for it in SQLite.
//! The claim is released only after the commit carrying the key: whoever claims it next finds
//! the row.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::issue::KEY_SEEN;
use super::{Broker, BrokerError, ErrorKind};
use crate::journal::rows::Text;
use crate::journal::{Durability, IntentPin, JournalError, Op};

/// A task's lock (`LiveTask::op`): held by its BeginTask until issuing is done.
pub(super) type TaskLock = Arc<tokio::sync::Mutex<()>>;

pub(super) enum Intent<'a> {
    /// In SQLite: committed on its own (`journal.fsync_intents`), or carried by a commit.
    Journaled,
    /// In the intent log only. `ops` go with the task's next commit; the pin keeps the
    /// intent's segment until that commit is made, and the claim keeps its idempotency key
    /// (the key's row is among `ops`) from being taken meanwhile.
    Logged {
        ops: Option<Vec<Op>>,
        pin: Option<IntentPin>,
        claim: Option<KeyClaim<'a>>,
        /// Where it goes if the journal fails before its rows are in SQLite.
        kept: &'a KeptIntents,
    },
}

impl Intent<'_> {
    /// `ops` for a commit of the task's, with the intent's ops before them if not yet in SQLite.
    pub(super) fn carried(&mut self, ops: Vec<Op>) -> Vec<Op> {
        match self {
            Self::Logged { ops: pending, .. } => match pending.take() {
                Some(intent) => crate::journal::carry(intent, ops),
                None => ops,
            },
            Self::Journaled => ops,
        }
    }

    /// The commit that carried the intent is made: the log no longer needs it, and the key's
    /// row in SQLite now says it is taken, so the claim is released.
    pub(super) fn committed(&mut self) {
        // The pin is released here, not kept: overwriting `self` would run `Drop` on the old
        // value, which keeps a pin it still holds.
        if let Self::Logged { pin, .. } = self {
            drop(pin.take());
        }
        *self = Self::Journaled;
    }
}

impl Drop for Intent<'_> {
    fn drop(&mut self) {
        // Left without its rows in SQLite (the journal failed): keep its segment and its key's
        // claim (no SQLite row says the key is taken, and a retry must not issue a second time)
        // until its rows are committed: by `heal_kept_intents` once the journal takes commits
        // again, or, if the daemon stops first, by the next start, which reads the segment.
        if let Self::Logged {
            pin, claim, kept, ..
        } = self
            && let Some(pin) = pin.take()
        {
            tracing::error!(
                "an intent's rows never reached the journal; kept until the journal takes them"
            );
            let key = claim.take().map(KeyClaim::hold);
            match kept.lock() {
                Ok(mut kept) => kept.push(Kept { pin, key }),
                // Memory is unusable: keep the segment for the next start, the key claimed.
                Err(_) => pin.keep(),
            }
        }
    }
}

/// An intent whose rows never reached SQLite, and the key it still holds claimed.
pub(super) struct Kept {
    pin: IntentPin,
    key: Option<(Text, String)>,
}

pub(super) type KeptIntents = Mutex<Vec<Kept>>;

impl Broker {
    /// Commits the intents a failing journal left in the log only (see `Intent`'s `Drop`), so
    /// their tasks are in SQLite for the revoker's records and their keys answer a retry,
    /// without waiting for a restart. Those still refused wait for the next call.
    pub(super) async fn heal_kept_intents(&self) {
        let kept = match self.kept_intents.lock() {
            Ok(mut kept) if !kept.is_empty() => std::mem::take(&mut *kept),
            _ => return,
        };
        let mut still = Vec::new();
        for k in kept {
            let committed = match k.pin.ops() {
                Ok(ops) => match self.journal.commit_with(ops, Durability::Fsync).await {
                    Ok(()) => true,
                    // Its rows are there after all: nothing to add.
                    Err(e) if e.is_duplicate() => true,
                    Err(_) => false,
                },
                Err(e) => {
                    tracing::error!(error = %e, "a kept intent cannot be read back; left for the next start");
                    false
                }
            };
            if committed {
                tracing::info!("a kept intent's rows are in the journal now");
                if let (Some(id), Ok(mut flying)) = (&k.key, self.keys_in_flight.lock()) {
                    flying.remove(id);
                }
            } else {
                still.push(k);
            }
        }
        if let Ok(mut kept) = self.kept_intents.lock() {
            kept.extend(still);
        }
    }

    /// Before a failure is journaled: puts the intent's rows into SQLite (if only the log holds
    /// them), committed alone, so the failure's commit and the revoker find them.
    pub(super) async fn journal_intent(&self, intent: &mut Intent<'_>) -> Result<(), JournalError> {
        let Intent::Logged { ops, pin, .. } = intent else {
            return Ok(());
        };
        let ops = match (ops.take(), pin.as_ref()) {
            (Some(ops), _) => ops,
            (None, Some(pin)) => pin.ops()?,
            (None, None) => return Ok(()),
        };
        self.journal.commit_with(ops, Durability::Process).await?;
        intent.committed();
        Ok(())
    }

    /// Claims `key` for the BeginTask holding `lock`, or says it was used: by a BeginTask still
    /// in flight (after waiting for it to finish), or by one journaled.
    pub(super) async fn claim_key(
        &self,
        workload: &Text,
        key: &str,
        lock: &TaskLock,
    ) -> Result<KeyClaim<'_>, BrokerError> {
        let id = (Text::clone(workload), key.to_string());
        let other = {
            let mut flying = self.keys_in_flight.lock().map_err(|_| poisoned())?;
            match flying.get(&id) {
                Some(other) => Some(Arc::clone(other)),
                None => {
                    flying.insert(id.clone(), Arc::clone(lock));
                    None
                }
            }
        };
        if let Some(other) = other {
            // Its BeginTask holds its lock until its rows, the key's included, are committed.
            drop(other.lock().await);
            return Err(seen());
        }
        let claim = KeyClaim {
            flying: &self.keys_in_flight,
            id,
        };
        match self.journal.begin_key_now(workload, key) {
            Ok(None) => Ok(claim),
            Ok(Some(_)) => Err(seen()),
            Err(e) => Err(BrokerError::journal(&e)),
        }
    }
}

pub(super) type KeysInFlight = Mutex<HashMap<(Text, String), TaskLock>>;

/// A key claimed by a BeginTask in flight; released when the commit carrying the key's row is
/// made or the BeginTask is done, never while the key is in the intent log only.
pub(super) struct KeyClaim<'a> {
    flying: &'a KeysInFlight,
    id: (Text, String),
}

impl KeyClaim<'_> {
    /// The key stays claimed past this claim: its id, for whoever releases it later.
    fn hold(self) -> (Text, String) {
        let mut me = std::mem::ManuallyDrop::new(self);
        std::mem::replace(&mut me.id, (Text::from(""), String::new()))
    }
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        if let Ok(mut flying) = self.flying.lock() {
            flying.remove(&self.id);
        }
    }
}

fn seen() -> BrokerError {
    BrokerError::new(ErrorKind::Aborted, KEY_SEEN, "idempotency key seen")
}

fn poisoned() -> BrokerError {
    BrokerError::new(
        ErrorKind::Internal,
        "state_poisoned",
        "broker state is unusable",
    )
}
