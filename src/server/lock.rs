//! One daemon per journal. A second `serve` on the same configuration used to open the journal,
//! run recovery and append `daemon_started` before it found the socket taken; from then on the
//! first daemon's writer, whose idea of the audit chain's head was now stale, failed every
//! commit. An exclusive lock on `<journal>.lock`, taken before the journal is opened, makes the
//! second start refuse without touching anything.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Held for the daemon's lifetime; the kernel releases it when the process ends, however it ends.
pub(super) struct JournalLock {
    _file: File,
}

fn lock_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock or says which process holds it.
pub(super) fn acquire(journal: &Path) -> Result<JournalLock, String> {
    let path = lock_path(journal);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another credbroker (pid {holder})")
            };
            return Err(format!(
                "{who} already runs on the journal {}: refusing to start (lock {})",
                journal.display(),
                path.display()
            ));
        }
        Err(TryLockError::Error(e)) => return Err(format!("{}: {e}", path.display())),
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{pid}"))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(JournalLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().expect("a temp dir for the journal lock should be created");
        let journal = dir.path().join("journal.db");
        let first = acquire(&journal).expect("the first holder should take the free lock");
        let err = acquire(&journal).err().unwrap_or_default();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("refusing"),
            "{err}"
        );
        // Nothing was created beside the lock: the journal itself is untouched.
        assert!(!journal.exists());
        drop(first);
        assert!(acquire(&journal).is_ok());
    }
}
