//! The command line.
pub fn main(_registry: crate::providers::Registry) -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
