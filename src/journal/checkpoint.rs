//! WAL checkpoints off the writer's path.
//!
//! A checkpoint copies the WAL's pages back into the database file and fsyncs it; once every
//! frame is copied, the writer's next transaction starts the WAL over, so it stays small. Run by
//! the writer, a checkpoint of 250 ms of traffic stalled every submitter of the next group for
//! ~15 ms: most of the p99 tail. Run only by another connection, it never catches up with a busy
//! writer (frames keep arriving after the point it copies to), so the WAL is never started over
//! and grows without bound, and so does the time to open it after a crash.
//!
//! So both, in turn:
//! 1. Every [`CHECKPOINT_EVERY`](super::CHECKPOINT_EVERY), the writer asks the checkpointer
//!    thread, on its own connection, for a PASSIVE checkpoint: it copies what was committed up
//!    to then while the writer goes on committing.
//! 2. When it is done, the writer, between two groups and with everyone answered, checkpoints
//!    the remainder itself — only the frames committed while the first ran — which completes
//!    the WAL, so its next transaction starts it over.
//!
//! Neither changes what is durable: a commit is as durable as it was asked to be when its
//! submitter is answered, checkpoint or not; a checkpoint only moves pages already durable in
//! the WAL, and SQLite never restarts the WAL before the database file is fsync'd.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::JournalError;

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;

pub(super) struct Checkpointer {
    ask: std::sync::mpsc::SyncSender<()>,
    state: Arc<AtomicU8>,
    last: Instant,
    every: Duration,
}

fn passive(conn: &Connection, who: &str) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, by = who, "journal checkpoint failed");
    }
}

impl Checkpointer {
    /// Opens the checkpointer's connection to `path` and starts its thread. It ends when the
    /// writer drops this.
    pub(super) fn start(path: &Path, every: Duration) -> Result<Self, JournalError> {
        let conn = Connection::open(path)?;
        super::configure(&conn)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let state = Arc::new(AtomicU8::new(IDLE));
        let shared = Arc::clone(&state);
        std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    passive(&conn, "checkpointer");
                    shared.store(DONE, Ordering::Release);
                }
            })
            .map_err(|error| JournalError::Io {
                path: path.display().to_string(),
                error,
            })?;
        Ok(Self {
            ask,
            state,
            last: Instant::now(),
            every,
        })
    }

    /// Called by the writer after each group, once its submitters are answered.
    pub(super) fn between_groups(&mut self, writer: &Connection) {
        match self.state.load(Ordering::Acquire) {
            IDLE if self.last.elapsed() >= self.every => {
                self.state.store(RUNNING, Ordering::Release);
                if self.ask.try_send(()).is_err() {
                    // The thread is gone: checkpoint here, as before there was one.
                    self.state.store(IDLE, Ordering::Release);
                    passive(writer, "writer");
                    self.last = Instant::now();
                }
            }
            DONE => {
                passive(writer, "writer");
                self.state.store(IDLE, Ordering::Release);
                self.last = Instant::now();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_writer_still_gets_its_wal_started_over() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("j.db");
        let writer = Connection::open(&path).expect("open");
        super::super::configure(&writer).expect("configure");
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no autocheckpoint");
        writer
            .pragma_update(None, "synchronous", "NORMAL")
            .expect("normal");
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .expect("table");
        let mut c = Checkpointer::start(&path, Duration::from_millis(20)).expect("start");
        let mut restarts = 0;
        let mut last_frames = 0;
        let started = Instant::now();
        let mut n = 0i64;
        // A writer that never pauses for long: commits back to back for a second.
        while started.elapsed() < Duration::from_secs(1) {
            writer
                .execute("INSERT INTO t (v) VALUES (zeroblob(3000))", [])
                .expect("insert");
            n += 1;
            c.between_groups(&writer);
            if n % 50 == 0 {
                let now = wal_frames_peek(&path);
                if now < last_frames {
                    restarts += 1;
                }
                last_frames = now;
            }
        }
        assert!(n > 200, "only {n} commits");
        assert!(
            restarts >= 3,
            "the WAL was started over {restarts} times in {n} commits"
        );
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, n);
    }

    /// The WAL's frame count, `mxFrame` of the wal-index header (offset 16 of the -shm file, a
    /// native u32), read without checkpointing. The WAL file's size says nothing: it is reused
    /// from the start, not truncated.
    fn wal_frames_peek(path: &Path) -> i64 {
        let shm = std::fs::read(path.with_extension("db-shm")).unwrap_or_default();
        shm.get(16..20)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, |b| i64::from(u32::from_ne_bytes(b)))
    }
}
