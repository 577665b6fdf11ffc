//! The `credbroker` binary: the daemon and its command line, with the built-in providers.

/// mimalloc as the allocator (see Cargo.toml: glibc's arena locks were contended).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    credbroker::cli::main(credbroker::providers::Registry::builtin())
}
