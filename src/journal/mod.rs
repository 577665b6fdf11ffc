//! The journal: SQLite in WAL mode, the daemon's durable memory.
//!
//! One writer thread owns the write connection and commits in groups: it takes every submission
//! waiting in its queue, applies them all straight into one transaction and commits once. If a
//! submission fails, the transaction is rolled back and the group replayed with a savepoint
//! around each submission, so the failing one fails alone (a savepoint per submission on the
//! fast path would make SQLite copy every page it first touches). Commits that must survive
//! power loss (`Durability::Fsync`: everything acknowledged to a caller, and intents when
//! `journal.fsync_intents` is on) are made with `synchronous=FULL`; the others with `NORMAL`,
//! which survives a process crash. Nobody is answered before their commit is as durable as they
//! asked. After a commit, observers (metrics, the journald mirror) are told what committed, so
//! nothing that rolled back is ever reported.
//!
//! State updates are guarded by the task and lease state machines (`transitions`).
//!
//! Reads (admin queries, recovery, export) use a separate connection; WAL lets them run beside
//! the writer.

pub mod blocks;
mod checkpoint;
pub mod clients;
mod intents;
mod keycheck;
mod ops;
pub mod read;
pub mod rows;
mod schema;
pub mod seal;
pub mod transitions;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::keys::AuditKey;
use crate::record::AuditRecord;
pub use intents::{Pin as IntentPin, carry};
pub use keycheck::KeyCheckError;
pub use ops::{Op, chain_hash};

/// Submissions taken into one group commit at most.
const MAX_GROUP: usize = 512;
/// How often the writer checkpoints the WAL into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("journal conflict: {0}")]
    Conflict(String),
    /// A state update the state machine does not allow (see `transitions`).
    #[error("journal refuses {what} {id}: {from} → {to} is not a transition")]
    Transition {
        what: &'static str,
        id: String,
        from: String,
        to: &'static str,
    },
    #[error("journal encoding: {0}")]
    Encode(String),
    #[error("journal is closed")]
    Closed,
    #[error("journal file {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("journal schema version {found} is newer than this build understands ({known})")]
    TooNew { found: usize, known: usize },
    #[error(
        "journal schema version {found} is older than this build's ({known}): run this version's \
         `credbroker serve` once to upgrade it (it migrates on start), or read it with the version \
         that wrote it"
    )]
    TooOld { found: usize, known: usize },
}

impl Durability {
    /// How intents (commits made before a provider is called) are committed: see
    /// `journal.fsync_intents`.
    pub fn for_intents(fsync_intents: bool) -> Self {
        if fsync_intents {
            Self::Fsync
        } else {
            Self::Process
        }
    }
}

impl JournalError {
    /// A key that must be unique was used again (a BeginTask idempotency key, an MCP call id).
    pub fn is_duplicate(&self) -> bool {
        matches!(
            self,
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        )
    }
}

/// How durable a commit must be before it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync'd: survives power loss. Everything acknowledged to a caller is committed so.
    Fsync,
    /// Written to the WAL but not fsync'd: survives the process being killed (the kernel
    /// holds the write), not the machine losing power. For intents: the next fsync'd commit
    /// makes them durable with it.
    Process,
}

struct Submission {
    ops: Vec<Op>,
    durability: Durability,
    reply: oneshot::Sender<Result<(), JournalError>>,
}

/// Told about every audit record that committed, once it has: metrics, the journald mirror.
/// Never about a record whose transaction rolled back. Called on the writer thread after every
/// submitter of the group has been answered, so observers add nothing to a request's latency.
pub trait Observer: Send + Sync + 'static {
    fn committed(&self, record: &AuditRecord);
}

/// Mirrors every committed audit record to the log (`record::log`: under systemd, journald
/// records with TASK_ID, GRANT, OWNER… as fields).
pub struct LogMirror;

impl Observer for LogMirror {
    fn committed(&self, record: &AuditRecord) {
        crate::record::log(record);
    }
}

/// Counters for benchmarks and `Status`.
#[derive(Default)]
pub struct JournalStats {
    pub commits: AtomicU64,
    pub submissions: AtomicU64,
}

pub struct Journal {
    queue: mpsc::Sender<Submission>,
    reader: Arc<Mutex<Connection>>,
    /// For the one lookup made on a request's own thread (`begin_key_now`).
    keys: Mutex<Connection>,
    intents: intents::IntentLog,
    path: PathBuf,
    pub stats: Arc<JournalStats>,
}

impl Journal {
    /// Opens (creating, mode 0600) and migrates the journal, and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        Self::open_with(path, None)
    }

    /// [`Journal::open`], sealing the audit chain's head with `head_key` in every commit that
    /// appends records: then rewriting the whole chain, or deleting its newest records, is
    /// detectable by whoever holds the key (`credbroker audit verify --head-key-file`).
    pub fn open_with(path: &Path, head_key: Option<AuditKey>) -> Result<Self, JournalError> {
        Self::open_observed(path, head_key, Vec::new())
    }

    /// [`Journal::open_with`], telling `observers` about every committed audit record.
    pub fn open_observed(
        path: &Path,
        head_key: Option<AuditKey>,
        observers: Vec<Arc<dyn Observer>>,
    ) -> Result<Self, JournalError> {
        create_private(path)?;
        let mut writer = Connection::open(path)?;
        configure(&writer)?;
        let found: usize = writer.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > schema::VERSION {
            return Err(JournalError::TooNew {
                found,
                known: schema::VERSION,
            });
        }
        schema::migrate(&mut writer)?;
        let mut chain = read::chain_head(&writer)?;
        // Intents a stopped daemon left in the log: committed before anything else, so
        // recovery finds them as it finds intents committed to SQLite.
        let (intents, leftovers) = intents::IntentLog::open(path)?;
        writer::commit_leftovers(&mut writer, &leftovers, &mut chain, head_key.as_ref())?;
        leftovers.clear()?;
        // Checkpoints are run between groups, after answering (see `checkpoint`), never inside
        // a commit where every submitter of the group would wait for them.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let reader = Connection::open_with_flags(
            path,
            // NO_MUTEX: the connection is only ever used under our own lock; SQLite's
            // per-call mutex costs a tenth of a bulk read such as recovery.
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&reader)?;
        let keys = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        keys.set_prepared_statement_cache_capacity(4);
        // Its one lookup touches a few index pages, which the OS caches anyway: a page cache of
        // its own would cost a couple of megabytes at 100k tasks for nothing.
        keys.pragma_update(None, "cache_size", -256)?;

        let checkpointer = checkpoint::Checkpointer::start(path, CHECKPOINT_EVERY)?;
        let (queue, rx) = mpsc::channel(8192);
        let stats = Arc::new(JournalStats::default());
        let thread_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || {
                writer::write_loop(
                    writer,
                    checkpointer,
                    rx,
                    chain,
                    head_key,
                    &thread_stats,
                    &observers,
                )
            })
            .map_err(|error| JournalError::Io {
                path: path.display().to_string(),
                error,
            })?;
        Ok(Self {
            queue,
            reader: Arc::new(Mutex::new(reader)),
            keys: Mutex::new(keys),
            intents,
            path: path.to_path_buf(),
            stats,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `ops` atomically and durably. Returns only after the fsync.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), JournalError> {
        self.commit_with(ops, Durability::Fsync).await
    }

    /// Like [`Journal::commit`], choosing the durability. A group containing any `Fsync`
    /// submission is fsync'd whole.
    pub async fn commit_with(
        &self,
        ops: Vec<Op>,
        durability: Durability,
    ) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Submission {
                ops,
                durability,
                reply,
            })
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Writes a BeginTask's intent (`ops`: its task, its pending leases, their records, its
    /// idempotency key) to the intent log, from the calling thread: once this returns it
    /// survives the process being killed, as a `Durability::Process` commit does. The pin is
    /// held until a commit has carried the same ops into SQLite (see `intents`).
    pub fn log_intent(&self, ops: &[Op]) -> Result<IntentPin, JournalError> {
        self.intents.append(ops)
    }

    /// Intents whose rows are not yet in SQLite (BeginTasks in flight, and any kept for the
    /// next start after a journal failure).
    pub fn intents_pinned(&self) -> usize {
        self.intents.pinned()
    }

    /// The task and request digest an idempotency key was journaled with, looked up on the
    /// calling thread: one indexed read of a page that is nearly always cached, cheaper than
    /// a trip to a blocking thread.
    pub fn begin_key_now(
        &self,
        workload: &str,
        key: &str,
    ) -> Result<Option<(String, Vec<u8>)>, JournalError> {
        let conn = self.keys.lock().map_err(|_| JournalError::Closed)?;
        read::begin_key(&conn, workload, key)
    }

    /// Runs a read on the reader connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| JournalError::Closed)?;
            f(&conn)
        })
        .await
        .map_err(|_| JournalError::Closed)?
    }

    /// Opens an existing journal read-only, for the CLI (export, verify) beside a running daemon.
    pub fn open_read_only(path: &Path) -> Result<Connection, JournalError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // A read-only reader cannot migrate; a schema it does not match is said so, not met
        // with an SQL error about a missing column.
        let found: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        match found.cmp(&schema::VERSION) {
            std::cmp::Ordering::Less => Err(JournalError::TooOld {
                found,
                known: schema::VERSION,
            }),
            std::cmp::Ordering::Greater => Err(JournalError::TooNew {
                found,
                known: schema::VERSION,
            }),
            std::cmp::Ordering::Equal => Ok(conn),
        }
    }
}

fn configure(conn: &Connection) -> Result<(), JournalError> {
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is fsynced on every commit, so a committed transition survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

/// Creates the file with mode 0600 if it does not exist, so the database (and the WAL and SHM
/// files SQLite derives from its mode) are never readable by others, not even for an instant.
fn create_private(path: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |error| JournalError::Io {
        path: path.display().to_string(),
        error,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
