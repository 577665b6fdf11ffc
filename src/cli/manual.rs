//! `credbroker man` and `credbroker completions`: the manual pages and shell completions,
//! generated from the clap definitions so they always describe the commands this binary has.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};

#[derive(Args)]
pub(super) struct ManArgs {
    /// Write credbroker.1 and one page per command (credbroker-serve.1, credbroker-task-begin.1,
    /// …) into this directory.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Args)]
pub(super) struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

pub(super) fn man(args: &ManArgs) -> anyhow::Result<ExitCode> {
    write_pages(&args.dir)?;
    Ok(ExitCode::SUCCESS)
}

fn write_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(super::Cli::command(), dir)
        .with_context(|| format!("writing the manual pages into {}", dir.display()))
}

pub(super) fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "credbroker", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_page_that_names_it() {
        let dir = tempfile::tempdir().expect("a temp dir");
        write_pages(dir.path()).expect("pages should be written");
        for page in [
            "credbroker.1",
            "credbroker-serve.1",
            "credbroker-task-begin.1",
            "credbroker-exec.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_default();
            assert!(
                text.starts_with(".ie \\n(.g .ds Aq"),
                "{page} is not roff: {text:.80}"
            );
            // roff escapes the hyphens of the name.
            let name = page.trim_end_matches(".1").replace('-', r"\-");
            assert!(
                text.contains(&format!(".SH NAME\n{name} \\- ")),
                "{page}: {text:.300}"
            );
            let version = env!("CARGO_PKG_VERSION");
            assert!(text.contains(version), "{page} has no version: {text:.300}");
        }
    }
}
