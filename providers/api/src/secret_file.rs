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

    /// What identifies the file's current content without reading it: device, inode, size and
    /// modification time. A rotation (a rename over it, or a rewrite) changes it. `None` when
    /// the file cannot be looked at.
    pub fn stamp(&self) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(&self.path).ok()?;
        Some(FileStamp(
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
        ))
    }

    /// The file's content, trailing whitespace removed; an empty file is an error. The read
    /// buffer is zeroized. Errors name the file, never its content.
    pub fn read(&self) -> Result<SecretValue, String> {
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(&self.path)
                .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?,
        );
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| format!("{} is not valid UTF-8", self.path.display()))?
            .trim_end();
        if text.is_empty() {
            return Err(format!("{} is empty", self.path.display()));
        }
        Ok(SecretValue::new(text))
    }
}

/// See [`SecretFile::stamp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp(u64, u64, u64, i64, i64);

/// The one rule for a file holding a secret: a regular file that other users can neither read
/// nor write. (Group access is allowed: `root:credbroker 0640` is a common layout.)
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{} is not a readable file ({e})", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{} is open to every user on the host (mode {mode:04o}); chmod o-rwx it (0600 or \
             0640)",
            path.display()
        ));
    }
    Ok(())
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
