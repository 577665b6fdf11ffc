//! `credbroker-testd`: the credbroker binary with the test provider (`type = "test"`) compiled
//! in. Built only with `--features testd`, for the integration tests; never shipped.

mod provider;

use std::sync::Arc;

fn main() -> std::process::ExitCode {
    let registry = credbroker::providers::Registry::builtin()
        .with(Arc::new(provider::TestFactory))
        .with(Arc::new(provider::NoopFactory));
    credbroker::cli::main(registry)
}
