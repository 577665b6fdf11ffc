//! The intent log: where a BeginTask's intent is written before any provider is called, so the
//! task's rows reach SQLite once, in the commit that answers the caller.
//!
//! An intent must be durable before the provider is called (recovery must find every intent),
//! but it need not be queryable until the task is answered. So instead of a SQLite commit of its
//! own, the intent is one `write(2)` of a checksummed frame to an append-only file, from the
//! request's own thread: no round trip to the journal writer, no B-tree pages, no WAL frames.
//! That survives the process being killed, exactly as a `synchronous=NORMAL` commit does (the
//! kernel holds the write); like one, it does not survive power loss, which is why
//! `journal.fsync_intents` keeps the SQLite intent commit.
//!
//! The log is a directory of segments beside the database (`journal.db-intents/`). Each
//! BeginTask holds a [`Pin`] on the segment its intent went to until its rows are committed to
//! SQLite; a segment that is no longer written to is deleted when its last pin goes. On open,
//! every segment left over is read: an intent whose task is not in SQLite was in flight when
//! the daemon stopped, and its rows are committed as they would have been (task `issuing`,
//! leases `pending`), so recovery reconciles them like any other interrupted task. Then the
//! leftovers are deleted.

mod entry;

pub(crate) use entry::task_id;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{JournalError, Op};

/// A segment stops taking intents at this size; a new one is started.
const SEGMENT_BYTES: u64 = 4 << 20;
/// A frame: payload length (u32 LE), the first 8 bytes of the payload's SHA-256, the payload.
const HEADER: usize = 12;
/// No intent is anywhere near this; a larger length is a torn or foreign frame.
const MAX_FRAME: usize = 16 << 20;

pub(crate) struct IntentLog {
    dir: PathBuf,
    current: Mutex<Current>,
    segment_bytes: u64,
    pinned: Arc<AtomicUsize>,
}

struct Current {
    file: File,
    segment: Arc<Segment>,
    bytes: u64,
    number: u64,
}

/// One segment file. Deleted when the last pin on it goes, once it is no longer written to.
struct Segment {
    path: PathBuf,
    retired: AtomicBool,
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire)
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot delete an intent segment");
        }
    }
}

/// Holds an intent's segment until the intent's rows are committed to SQLite; keeps the frame,
/// should the commit that was to carry the intent fail and the intent need committing alone.
pub struct Pin {
    _segment: Arc<Segment>,
    frame: Vec<u8>,
    pinned: Arc<AtomicUsize>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.pinned.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pin {
    /// The rows never reached SQLite (the journal failed): keep the segment until the next
    /// start, whose recovery commits them. Still counted as pinned.
    pub fn keep(self) {
        std::mem::forget(self);
    }

    /// The intent's ops, read back from the frame written.
    pub fn ops(&self) -> Result<Vec<Op>, JournalError> {
        entry::decode(&self.frame[HEADER..])
    }
}

/// The segments earlier runs left, oldest first.
pub(crate) struct Leftovers {
    paths: Vec<PathBuf>,
}

impl Leftovers {
    /// Calls `f` with each intent left over, in the order written, holding one segment in
    /// memory at a time (after a crash under load, the segments hold thousands of intents whose
    /// tasks were committed long ago).
    pub(crate) fn for_each(
        &self,
        mut f: impl FnMut(Vec<Op>) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        for path in &self.paths {
            let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
            for payload in frames(&bytes) {
                f(entry::decode(payload)?)?;
            }
        }
        Ok(())
    }

    /// Deletes the leftover segments: call once their intents are committed.
    pub(crate) fn clear(self) -> Result<(), JournalError> {
        for path in self.paths {
            std::fs::remove_file(&path).map_err(|error| io(&path, error))?;
        }
        Ok(())
    }
}

impl IntentLog {
    /// Opens the log of the database at `db`: reads what earlier runs left, and starts a new
    /// segment numbered after them.
    pub(crate) fn open(db: &Path) -> Result<(Self, Leftovers), JournalError> {
        let mut name = db.as_os_str().to_owned();
        name.push("-intents");
        let dir = PathBuf::from(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => private_dir(&dir)?,
            Err(e) => return Err(io(&dir, e)),
        }
        let mut numbered = Vec::new();
        for item in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let item = item.map_err(|e| io(&dir, e))?;
            let path = item.path();
            match segment_number(&path) {
                Some(n) => numbered.push((n, path)),
                None => tracing::warn!(path = %path.display(), "not an intent segment; left alone"),
            }
        }
        numbered.sort();
        let number = numbered.last().map_or(1, |(n, _)| n + 1);
        let current = Current::create(&dir, number)?;
        let leftovers = Leftovers {
            paths: numbered.into_iter().map(|(_, p)| p).collect(),
        };
        Ok((
            Self {
                dir,
                current: Mutex::new(current),
                segment_bytes: SEGMENT_BYTES,
                pinned: Arc::default(),
            },
            leftovers,
        ))
    }

    /// Writes the intent `ops` (a task, its leases, their audit records, its idempotency key).
    /// When this returns the intent survives the process being killed.
    pub(crate) fn append(&self, ops: &[Op]) -> Result<Pin, JournalError> {
        let frame = frame(&entry::encode(ops)?);
        let mut current = self.current.lock().map_err(|_| JournalError::Closed)?;
        if current.bytes >= self.segment_bytes {
            let next = Current::create(&self.dir, current.number + 1)?;
            let old = std::mem::replace(&mut *current, next);
            // Deleted as soon as the intents still in flight in it are committed.
            old.segment.retired.store(true, Ordering::Release);
        }
        // One write(2) of the whole frame, O_APPEND: a crash leaves at most a torn last frame,
        // whose checksum fails, and whose provider call had not started.
        if let Err(e) = current.file.write_all(&frame) {
            // A short write (disk full, I/O error) may have left part of the frame: nothing is
            // appended after it. The next intent goes to a new segment; this one is deleted
            // with its last pin, or read up to the torn frame if an intent in it is kept.
            current.bytes = u64::MAX;
            return Err(io(&current.segment.path, e));
        }
        current.bytes += frame.len() as u64;
        self.pinned.fetch_add(1, Ordering::Relaxed);
        Ok(Pin {
            _segment: Arc::clone(&current.segment),
            frame,
            pinned: Arc::clone(&self.pinned),
        })
    }
}

/// `then` (a task's next commit) with the intent's `ops` before it, folded: a task or lease the
/// intent inserts and `then` moves on (`issuing → active`, `pending → active`) is inserted in
/// its final state, the update dropped. The rows come out as the two in sequence would leave
/// them, both transitions being ones the state machines allow; the audit records keep their
/// order.
pub fn carry(mut ops: Vec<Op>, then: Vec<Op>) -> Vec<Op> {
    use super::rows::{LeaseState, TaskState};
    for op in then {
        let folded = match &op {
            Op::TaskState {
                id,
                state: TaskState::Active,
                ended_ms: None,
                end_reason: None,
            } => ops.iter_mut().any(|o| match o {
                Op::InsertTask(t) if t.id == *id && t.state == TaskState::Issuing => {
                    t.state = TaskState::Active;
                    true
                }
                _ => false,
            }),
            Op::LeaseIssued {
                id,
                issued_ms,
                expires_ms,
                reference,
                sealed_handle,
                renewable,
            } => ops.iter_mut().any(|o| match o {
                Op::InsertLease(l) if l.id == *id && l.state == LeaseState::Pending => {
                    l.state = LeaseState::Active;
                    l.issued_ms = Some(*issued_ms);
                    l.expires_ms = Some(*expires_ms);
                    l.reference = Some(reference.clone());
                    l.sealed_handle = sealed_handle.clone();
                    l.renewable = *renewable;
                    true
                }
                _ => false,
            }),
            _ => false,
        };
        if !folded {
            ops.push(op);
        }
    }
    ops
}

impl IntentLog {
    /// Intents whose rows are not yet in SQLite: BeginTasks in flight, and any kept for the
    /// next start. Zero when nothing is being issued.
    pub(crate) fn pinned(&self) -> usize {
        self.pinned.load(Ordering::Relaxed)
    }
}

impl Current {
    fn create(dir: &Path, number: u64) -> Result<Self, JournalError> {
        let path = dir.join(format!("{number:016}.log"));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        Ok(Self {
            file,
            segment: Arc::new(Segment {
                path,
                retired: AtomicBool::new(false),
            }),
            bytes: 0,
            number,
        })
    }
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d.as_ref()[..8]);
    out
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    // Payloads are bounded by what a BeginTask may ask for, far below 4 GiB.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(payload));
    out.extend_from_slice(payload);
    out
}

/// The payloads of the whole frames in `bytes`. Only the last frame should ever be torn (a
/// crash mid-write; its provider was never called), as nothing is appended after a failed write.
/// But a frame damaged in the middle (a disk's bad block, pages lost in a power cut) must not
/// hide the intents after it, whose providers may have been called: the reader resynchronises
/// at the next offset where a whole frame with a matching checksum starts.
fn frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if let Some(payload) = frame_at(bytes, at) {
            out.push(payload);
            at += HEADER + payload.len();
            continue;
        }
        match (at + 1..bytes.len()).find(|&o| frame_at(bytes, o).is_some()) {
            Some(next) => {
                tracing::warn!(
                    offset = at,
                    bytes = next - at,
                    "a damaged intent in the middle of a segment, skipped; the intents after it are read"
                );
                at = next;
            }
            None => {
                tracing::info!(
                    bytes = bytes.len() - at,
                    "a torn intent at the end of a segment, ignored"
                );
                break;
            }
        }
    }
    out
}

/// The payload of the whole, intact frame starting at `at`, if one does.
fn frame_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let rest = bytes.get(at..)?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    // Every payload is a JSON object: checked first, so a scan of damaged bytes hashes only
    // the rare offset that could start a frame.
    if len == 0 || len > MAX_FRAME || rest.get(HEADER) != Some(&b'{') {
        return None;
    }
    let payload = rest.get(HEADER..HEADER + len)?;
    (checksum(payload) == rest[4..HEADER]).then_some(payload)
}

/// An existing intent directory is ours and private: a real directory (not a link placed to
/// redirect intents elsewhere), readable by its owner only, tightened if someone loosened it.
fn private_dir(dir: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io(dir, e))?;
    if !meta.is_dir() {
        return Err(io(
            dir,
            std::io::Error::other("the intent log's path exists and is not a directory"),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %dir.display(), "the intent log's directory was readable by others; made 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(dir, e))?;
    }
    Ok(())
}

fn io(path: &Path, error: std::io::Error) -> JournalError {
    JournalError::Io {
        path: path.display().to_string(),
        error,
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
