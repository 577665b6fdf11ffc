//! The .deb (`scripts/package.sh`, cargo-deb) installed into a scratch root with
//! `dpkg --root`: the binary, units, man pages, completions and snippets land where the units
//! and the tools expect them, the maintainer script creates the users and directories inside
//! that root only, and removal takes the files but keeps the operator's /etc/credbroker.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::repo;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The .deb of the binary this test run built (the dev profile: no release build in CI).
fn build_deb(out: &Path) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_credbroker"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in TARGET/debug");
    run(Command::new(repo().join("scripts/package.sh"))
        .args(["--profile", "dev", "--no-build", "--output"])
        .arg(out)
        .env("CARGO_TARGET_DIR", target));
    std::fs::read_dir(out)
        .expect("the output directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("package.sh should write a .deb")
}

/// An empty root as `dpkg --root` needs it: its own package database, an /etc.
fn scratch_root(root: &Path) {
    for d in [
        "etc",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("scratch root dirs");
    }
    for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(root.join(f), "").expect("dpkg database files");
    }
}

fn dpkg(root: &Path) -> Command {
    let mut c = Command::new("dpkg");
    // Chrootless: the maintainer scripts run here with $DPKG_ROOT set, and must work inside
    // that root only. The root has no libc6 package to satisfy Depends.
    c.arg(format!("--root={}", root.display())).args([
        "--force-script-chrootless",
        "--force-depends",
        "--force-not-root",
        "--log=/dev/null",
    ]);
    c
}

/// `NAME:x:ID:…` of a passwd or group file in the root.
fn id_of(root: &Path, file: &str, name: &str) -> Option<u32> {
    std::fs::read_to_string(root.join("etc").join(file))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then(|| f.nth(1).and_then(|id| id.parse().ok()))?
        })
}

#[test]
fn the_deb_installs_into_a_scratch_root_where_the_units_expect_it() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let deb = build_deb(&tmp.path().join("out"));
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(
        info.contains("Package: credbroker") && info.contains("Depends: libc6"),
        "{info}"
    );

    let root = tmp.path().join("root");
    scratch_root(&root);
    run(dpkg(&root).arg("--install").arg(&deb));

    // The binary runs and is the one that was packaged.
    let bin = root.join("usr/bin/credbroker");
    assert_eq!(
        std::fs::metadata(&bin)
            .expect("usr/bin/credbroker")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    let version = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("credbroker {}", env!("CARGO_PKG_VERSION"))
    );

    // Every unit's own programs and man pages are where the unit says.
    let man_path = root.join("usr/share/man");
    for unit in [
        "credbroker.service",
        "credbroker.socket",
        "credbroker-admin.socket",
        "credbroker-gateway.service",
    ] {
        let text = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(unit))
            .unwrap_or_else(|e| panic!("{unit} not installed: {e}"));
        let mut docs = 0;
        for line in text.lines() {
            if let Some(cmd) = line.split_once('=').filter(|(k, _)| k.starts_with("Exec")) {
                let program = cmd.1.trim_start_matches(['-', '@', '+', '!', ':']);
                let program = program.split_whitespace().next().unwrap_or_default();
                if program.starts_with("/usr/bin/credbroker") {
                    assert!(
                        root.join(&program[1..]).exists(),
                        "{unit}: {program} missing"
                    );
                }
            }
            for page in line
                .strip_prefix("Documentation=")
                .into_iter()
                .flat_map(str::split_whitespace)
                .filter_map(|d| d.strip_prefix("man:"))
            {
                // As systemd-analyze checks it: `man` finds the page on the MANPATH.
                let name = page.split('(').next().unwrap_or_default();
                let found = run(Command::new("man")
                    .args(["-w", name])
                    .env("MANPATH", &man_path));
                assert!(
                    found.trim().starts_with(&*man_path.to_string_lossy()),
                    "{found}"
                );
                docs += 1;
            }
        }
        assert!(docs >= 1, "{unit} names no man page");
    }
    for page in [
        "credbroker",
        "credbroker-serve",
        "credbroker-exec",
        "credbroker-task-begin",
    ] {
        assert!(
            root.join(format!("usr/share/man/man1/{page}.1.gz"))
                .exists(),
            "{page}"
        );
    }
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/credbroker"))
            .expect("the bash completion");
    assert!(
        bash.contains("exec") && bash.contains("--grant"),
        "{bash:.200}"
    );
    for f in [
        "usr/share/zsh/vendor-completions/_credbroker",
        "usr/share/fish/vendor_completions.d/credbroker.fish",
        "usr/lib/sysusers.d/credbroker.conf",
        "usr/lib/tmpfiles.d/credbroker.conf",
        "usr/share/doc/credbroker/examples/credbroker.toml",
        "usr/share/doc/credbroker/examples/gateway.toml",
    ] {
        assert!(root.join(f).exists(), "{f} not installed");
    }

    // postinst applied the snippets inside the root: users, groups, directories and modes.
    let cb = id_of(&root, "group", "credbroker").expect("group credbroker in the root");
    assert!(id_of(&root, "passwd", "credbroker").is_some());
    assert!(id_of(&root, "passwd", "credbroker-gateway").is_some());
    assert!(id_of(&root, "group", "mcp-servers").is_some());
    let etc = std::fs::metadata(root.join("etc/credbroker")).expect("/etc/credbroker");
    assert_eq!((etc.mode() & 0o7777, etc.gid()), (0o750, cb));
    let creds = std::fs::metadata(root.join("etc/credbroker/credentials")).expect("credentials");
    assert_eq!((creds.mode() & 0o7777, creds.uid()), (0o700, 0));

    // Removal takes the package's files and keeps the operator's configuration directory.
    std::fs::write(root.join("etc/credbroker/credentials/journal-key"), "k").expect("a key");
    run(dpkg(&root).args(["--purge", "credbroker"]));
    assert!(
        !bin.exists()
            && !root
                .join("usr/lib/systemd/system/credbroker.service")
                .exists()
    );
    assert!(root.join("etc/credbroker/credentials/journal-key").exists());
}
