//! The README's OpenBao quick start, run as written: the shell block under
//! `<!-- quickstart:openbao -->` is taken from README.md (not copied here) and run by bash from
//! the repository root against a real OpenBao and PostgreSQL, with only the variables the README
//! names set. The credential it prints must log in to PostgreSQL.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

use crate::support::daemon::testd;
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::openbao::{OpenBao, bao};
use crate::support::postgres::{self, Postgres};
use crate::support::{repo, write_secret};

/// The quick start's shell block, exactly as the README has it.
fn readme_block() -> String {
    let readme =
        std::fs::read_to_string(repo().join("README.md")).expect("the README should be readable");
    let after = readme
        .split_once("<!-- quickstart:openbao -->")
        .map(|(_, rest)| rest)
        .expect("the README should mark its OpenBao quick start");
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("the quick start should be a ```sh block");
    block.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_openbao_quick_start_works_as_written() {
    let auth = AuthServer::start();
    let pg = Postgres::start();
    let bao_server = OpenBao::dev().await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;

    let dir = tempfile::tempdir().expect("a temp dir for the quick start should be created");
    let token_file = dir.path().join("token.jwt");
    write_secret(&token_file, &token).expect("the access token should be written");
    // `credbroker` and `bao` on the PATH, as the README assumes.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("a bin dir should be created");
    std::os::unix::fs::symlink(testd(), bin.join("credbroker"))
        .expect("credbroker should be linked into the bin dir");
    std::os::unix::fs::symlink(bao(), bin.join("bao")).expect("bao should be linked in");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out_path = dir.path().join("out.txt");
    let out = std::fs::File::create(&out_path).expect("the output file should be created");
    let err = out
        .try_clone()
        .expect("the output file should be shared with stderr");
    let at = |p: &str| dir.path().join(p).display().to_string();

    // stdout goes to a file, not a pipe: the block leaves `credbroker serve &` running, which
    // would hold a pipe open after bash exits.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{}", readme_block()))
        .current_dir(repo())
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir.path())
        .env("CB", at("etc"))
        .env("RUN", at("run"))
        .env("STATE", at("state"))
        .env("BAO_ADDR", &bao_server.addr)
        .env("BAO_TOKEN", &bao_server.root)
        .env("PG_URL", pg.url())
        .env("PG_USER", postgres::ADMIN)
        .env("PG_PASSWORD", postgres::ADMIN_PASSWORD)
        .env("ISSUER", &auth.issuer)
        .env("AUDIENCE", POSTGRES)
        .env("TOKEN_FILE", &token_file)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group, so the daemon it starts is stopped with it below.
        .process_group(0)
        .spawn()
        .expect("bash should run the quick start");
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status = child.wait().expect("the quick start should finish");
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "the quick start failed ({status}):\n{output}"
    );

    assert!(
        output
            .lines()
            .any(|l| l.starts_with("ok: ") && l.contains("reachable")),
        "check-config --online passed: {output}"
    );
    // The last command printed the task and its credential as JSON: the document starting at
    // the last line that opens one. The daemon's log shares the file, and its lines (which
    // start with a timestamp) can fall between the document's: they are left out.
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with([' ', '{', '}']))
        .collect();
    let start = lines
        .iter()
        .rposition(|l| *l == "{")
        .expect("task begin should print JSON");
    let doc: serde_json::Value = serde_json::from_str(&lines[start..].join("\n"))
        .unwrap_or_else(|e| panic!("task begin's JSON: {e}\n{output}"));
    let cred = &doc["credentials"][0];
    let user = cred["public"]["username"].as_str().unwrap_or_default();
    let password = cred["secret"]["password"].as_str().unwrap_or_default();
    assert_eq!(
        pg.query_as(user, password, "SELECT count(*) FROM orders")
            .as_deref(),
        Ok("3"),
        "the quick start's credential logs in: {doc}"
    );
}
