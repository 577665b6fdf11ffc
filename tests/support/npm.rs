//! npm packages of the test servers, installed into their own folders (`npm ci`, from the
//! committed lock file) once, under a lock since nextest runs tests as parallel processes.

use std::path::Path;
use std::process::Command;

/// Makes sure `dir/node_modules/<package>` is installed.
pub fn ensure(dir: &Path, package: &str) {
    let marker = dir.join("node_modules").join(package).join("package.json");
    if marker.exists() {
        return;
    }
    let lock =
        std::fs::File::create(dir.join(".install.lock")).unwrap_or_else(|e| panic!("lock: {e}"));
    lock.lock().unwrap_or_else(|e| panic!("lock: {e}"));
    if !marker.exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .status()
            .unwrap_or_else(|e| panic!("npm ci: {e} (is Node.js installed?)"));
        assert!(status.success(), "npm ci failed in {}", dir.display());
    }
}
