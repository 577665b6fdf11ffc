//! Shared by the targets (each includes it with `#[path]`).

use std::path::{Path, PathBuf};

/// A scratch directory for this process, on a tmpfs when there is one.
///
/// libFuzzer ends the process with `exit()`, so statics (and a `TempDir` in one) are never
/// dropped: the directories of earlier processes of the same target, whose pid is gone, are
/// removed here instead.
pub fn scratch_dir(target: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let prefix = format!("credbroker-fuzz-{target}-");
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}
