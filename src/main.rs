//! The `credbroker` binary: the daemon and its command line, with the built-in providers.

fn main() -> std::process::ExitCode {
    credbroker::cli::main(credbroker::providers::Registry::builtin())
}
