//! Secrets read from files: one rule for where they may live and who may read them.

use std::path::{Path, PathBuf};

use crate::{Env, SecretValue};

/// A file holding a secret (a token, a key, a credentials file). Read when needed, so a file
/// rotated on disk is picked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFile {
    pub(crate) path: PathBuf,
}

impl SecretFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What identifies the file's current content without reading it: device, inode, size,
    /// modification time and status-change time. A rotation (a rename over it, or a rewrite)
    /// changes it; so does a chmod or chown, so a file refused for its mode or owner is looked
    /// at again once it is fixed. `None` when the file cannot be looked at.
    pub fn stamp(&self) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(&self.path).ok()?;
        Some(FileStamp(
            m.dev(),
            m.ino(),
            m.len(),
            (m.mtime(), m.mtime_nsec()),
            (m.ctime(), m.ctime_nsec()),
        ))
    }

    /// The file's content, trailing whitespace removed; an empty file is an error. The read
    /// buffer is zeroized. Errors name the file, never its content.
    pub fn read(&self) -> Result<SecretValue, String> {
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(&self.path)
                .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?,
        );
        secret_text(&self.path, &bytes)
    }

    /// [`SecretFile::read`], refusing the file unless it still passes [`check_secret_file`]:
    /// for a file read again after startup (a rotated token), which may have been replaced by
    /// one with another mode or owner since the configuration was checked.
    pub fn read_checked(&self) -> Result<SecretValue, String> {
        use std::io::Read as _;
        let cannot_read = |e: std::io::Error| format!("cannot read {}: {e}", self.path.display());
        // By path first, so a FIFO or a device put in its place is never opened; then on the
        // opened file, so what is read is what was checked even if the path is swapped between.
        check_secret_file(&self.path)?;
        let mut file = std::fs::File::open(&self.path).map_err(cannot_read)?;
        let meta = file.metadata().map_err(cannot_read)?;
        check_metadata(&self.path, &meta)?;
        // Sized up front: a buffer that grows leaves copies of the secret behind, unzeroized.
        let size = usize::try_from(meta.len()).unwrap_or(0);
        let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(size.saturating_add(1)));
        file.read_to_end(&mut bytes).map_err(cannot_read)?;
        secret_text(&self.path, &bytes)
    }
}

/// A secret file's content as text, trailing whitespace removed. Errors never quote it.
fn secret_text(path: &Path, bytes: &[u8]) -> Result<SecretValue, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| format!("{} is not valid UTF-8", path.display()))?
        .trim_end();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretValue::new(text))
}

/// See [`SecretFile::stamp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp(u64, u64, u64, (i64, i64), (i64, i64));

/// The one rule for a file holding a secret: a regular file, owned by root or by the daemon's
/// user, that nobody but its owner can write and other users cannot read: 0600, or 0640 for a
/// group (`root:credbroker 0640` is a common layout). A group that can write it, or an owner
/// who is someone else, could put their own token or key in it.
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{} is not a readable file ({e})", path.display()))?;
    check_metadata(path, &meta)
}

fn check_metadata(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if let Some(problem) = mode_problem(meta.permissions().mode()) {
        return Err(format!("{} {problem}", path.display()));
    }
    if let Some(problem) = owner_problem(meta.uid(), effective_uid()) {
        return Err(format!("{} {problem}", path.display()));
    }
    Ok(())
}

/// What is wrong with a secret file's mode, if anything: anything for other users, or write for
/// the group. Said after the file's path.
fn mode_problem(mode: u32) -> Option<String> {
    let mode = mode & 0o777;
    let fix = "make it 0600 (or 0640 for a group)";
    if mode & 0o007 != 0 {
        Some(format!(
            "is open to every user on the host (mode {mode:04o}); {fix}"
        ))
    } else if mode & 0o020 != 0 {
        Some(format!(
            "is mode {mode:04o}: other users than its owner can write it; {fix}"
        ))
    } else {
        None
    }
}

/// What is wrong with a secret file's owner, if anything: root and the daemon's own user are the
/// only owners that cannot be someone else able to rewrite it (an owner can always chmod).
/// `euid` is `None` when the daemon's uid cannot be read: then only root will do. Said after the
/// file's path.
fn owner_problem(uid: u32, euid: Option<u32>) -> Option<String> {
    (uid != 0 && Some(uid) != euid).then(|| {
        format!("is owned by uid {uid}: a secret must be owned by root or by the daemon's user")
    })
}

/// The process's effective uid, from `/proc/self/status` (its `Uid:` line: real, effective,
/// saved, filesystem). Not from the owner of `/proc/self`, which is root in a process that made
/// itself non-dumpable; and without `unsafe` or a libc binding in this crate.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The path of systemd credential `name`: one path component inside `$CREDENTIALS_DIRECTORY`.
pub fn credential_path(env: &dyn Env, name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("invalid credential name {name:?}"));
    }
    let dir = env
        .var("CREDENTIALS_DIRECTORY")
        .ok_or_else(|| format!("credential {name:?}: $CREDENTIALS_DIRECTORY is not set"))?;
    Ok(PathBuf::from(dir).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A secret file with `mode` in a directory of the test's own, owned by the current user.
    fn secret_with_mode(dir: &Path, name: &str, mode: u32) -> SecretFile {
        let path = dir.join(name);
        std::fs::write(&path, "s3cret\n").expect("the test secret should be written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .expect("the test secret's mode should be set");
        SecretFile { path }
    }

    fn test_dir(what: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cb-secret-file-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the test directory should be created");
        dir
    }

    #[test]
    fn owner_only_and_group_read_pass() {
        let dir = test_dir("pass");
        for mode in [0o600, 0o400, 0o640, 0o440] {
            let f = secret_with_mode(&dir, &format!("{mode:o}"), mode);
            assert_eq!(check_secret_file(f.path()), Ok(()), "mode {mode:04o}");
            let read = f.read_checked().map(|v| v.expose().to_string());
            assert_eq!(read, Ok("s3cret".to_string()), "mode {mode:04o}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn group_write_and_any_access_for_others_are_refused_naming_the_mode() {
        let dir = test_dir("refused");
        for (mode, want) in [
            (
                0o660,
                "is mode 0660: other users than its owner can write it",
            ),
            (
                0o620,
                "is mode 0620: other users than its owner can write it",
            ),
            (0o604, "is open to every user on the host (mode 0604)"),
            (0o602, "is open to every user on the host (mode 0602)"),
            (0o666, "is open to every user on the host (mode 0666)"),
        ] {
            let f = secret_with_mode(&dir, &format!("{mode:o}"), mode);
            for e in [check_secret_file(f.path()).err(), f.read_checked().err()] {
                let e = e.unwrap_or_default();
                assert!(e.contains(want), "mode {mode:04o}: {e}");
                assert!(e.contains("make it 0600 (or 0640 for a group)"), "{e}");
                assert!(e.contains(&f.path().display().to_string()), "{e}");
                assert!(!e.contains("s3cret"), "the error quotes the secret: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn owner_must_be_root_or_the_daemon_user() {
        // Files made here belong to the current user, the one the daemon would run as.
        let dir = test_dir("owner");
        let f = secret_with_mode(&dir, "mine", 0o600);
        assert_eq!(check_secret_file(f.path()), Ok(()));
        let _ = std::fs::remove_dir_all(dir);

        assert!(effective_uid().is_some(), "the euid is read from /proc");
        assert_eq!(owner_problem(0, Some(1000)), None);
        assert_eq!(owner_problem(1000, Some(1000)), None);
        assert_eq!(owner_problem(0, None), None);
        assert_eq!(
            owner_problem(1001, Some(1000)).as_deref(),
            Some("is owned by uid 1001: a secret must be owned by root or by the daemon's user")
        );
        assert!(owner_problem(1000, None).is_some());
    }

    #[test]
    fn not_a_regular_file_is_refused() {
        let dir = test_dir("dir");
        let e = check_secret_file(&dir).err().unwrap_or_default();
        assert!(e.contains("is not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_chmod_changes_the_stamp() {
        let dir = test_dir("stamp");
        let f = secret_with_mode(&dir, "tok", 0o660);
        let before = f.stamp();
        assert!(before.is_some());
        // ctime has nanosecond resolution on the filesystems tests run on; a coarse one could
        // give the same stamp, so wait out a tick.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600))
            .expect("the test secret's mode should be set");
        assert_ne!(f.stamp(), before, "fixing the mode is noticed");
        let _ = std::fs::remove_dir_all(dir);
    }
}
