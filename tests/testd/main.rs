//! `credbroker-testd`: the credbroker binary with the test provider (`type = "test"`) compiled
//! in. Built only with `--features testd`, for the integration tests; never shipped.
//!
//! With `CREDBROKER_TEST_SECCOMP=FILE` (a seccompiler JSON filter named `main`), it installs
//! that filter on itself before anything else runs: the tests use it to run the daemon under
//! the equivalent of the systemd unit's `SystemCallFilter=` and `MemoryDenyWriteExecute=`.

mod provider;

/// mimalloc, as the shipped binary has it (see Cargo.toml: glibc's arena locks were contended).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

fn main() -> std::process::ExitCode {
    if let Some(path) = std::env::var_os("CREDBROKER_TEST_SECCOMP")
        && let Err(e) = sandbox(std::path::Path::new(&path))
    {
        eprintln!("credbroker-testd: cannot apply the seccomp filter: {e}");
        return std::process::ExitCode::from(3);
    }
    let registry = credbroker::providers::Registry::builtin()
        .with(Arc::new(provider::TestFactory))
        .with(Arc::new(provider::NoopFactory));
    credbroker::cli::main(registry)
}

fn sandbox(path: &std::path::Path) -> Result<(), String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("{e:?}"))?;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let filters = seccompiler::compile_from_json(file, arch).map_err(|e| e.to_string())?;
    let main = filters.get("main").ok_or("no filter named main")?;
    // Before the runtime starts its threads; all threads then inherit it.
    seccompiler::apply_filter_all_threads(main).map_err(|e| e.to_string())
}
