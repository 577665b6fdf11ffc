//! `check-config` on broken configurations, as a new operator writes them: for each, exit 2 and
//! every problem named with its key path and its line, all at once, and nothing else.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use crate::support::daemon::testd;
use crate::support::{repo, write_secret};

const KEY: &str = "8f3a6b1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

/// A good configuration: the test provider and a Vault provider, an issuer with a static JWKS
/// (so nothing here needs the network).
const BASE: &str = r#"[server]
broker_socket = "{d}/b.sock"
admin_socket = "{d}/a.sock"

[journal]
path = "{d}/journal.db"
key_file = "{d}/journal.key"

[broker]
default_ttl = "15m"

[[issuer]]
url = "http://127.0.0.1:9"
jwks_file = "{d}/jwks.json"

[[provider]]
name = "pg"
type = "test"
state_dir = "{d}/provider"

[[provider]]
name = "bao"
type = "vault"
address = "http://127.0.0.1:8200"
token_file = "{d}/vault-token"
timeout = "5s"

[[grant]]
name = "orders"
provider = "pg"
scopes = ["orders.read"]
max_ttl = "10m"
params = { label = "orders-{owner}" }

[[grant]]
name = "bao-db"
provider = "bao"
scopes = ["db.read"]
max_ttl = "10m"
params = { kind = "dynamic", path = "database/creds/ro" }

[[workload]]
name = "mcp"
uid = 1000
audience = "https://mcp.example.com/"
grants = ["orders", "bao-db"]
"#;

/// One broken configuration.
struct Case {
    name: &'static str,
    /// Text replacements applied to the base, in order (`{d}` is the case's directory).
    edits: &'static [(&'static str, &'static str)],
    /// Changes to the files the base names.
    files: fn(&Path),
    /// Every problem expected: the key path, and text on the line it must be reported at
    /// (the first line holding it; `↑text`: the line above it, an entry's `[[…]]` header, where
    /// a missing key is reported), or `None` for a key with no line (a missing section).
    expect: &'static [(&'static str, Option<&'static str>)],
}

fn none(_: &Path) {}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .expect("the test file's mode should be set");
}

fn public_jwks() -> String {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/keys/keys.json"))
        .expect("the fixture key set should be readable");
    let mut v: serde_json::Value =
        serde_json::from_str(&text).expect("the fixture key set should be JSON");
    for k in v["keys"].as_array_mut().into_iter().flatten() {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            k.as_object_mut().map(|m| m.remove(private));
        }
    }
    v.to_string()
}

fn setup(dir: &Path) {
    write_secret(dir.join("journal.key"), KEY).expect("the journal key should be written");
    write_secret(dir.join("vault-token"), "s.test").expect("the vault token should be written");
    std::fs::write(dir.join("jwks.json"), public_jwks()).expect("the JWKS should be written");
}

const CASES: &[Case] = &[
    // Unknown keys, at every level.
    Case {
        name: "a misspelt required key: unknown, and the real one missing",
        edits: &[("broker_socket = ", "broker_sockt = ")],
        files: none,
        expect: &[
            ("server.broker_sockt", Some("broker_sockt")),
            ("server.broker_socket", Some("[server]")),
        ],
    },
    Case {
        name: "two unknown keys in one table",
        edits: &[("[server]\n", "[server]\ncolour = 1\nshape = \"round\"\n")],
        files: none,
        expect: &[
            ("server.colour", Some("colour")),
            ("server.shape", Some("shape")),
        ],
    },
    Case {
        name: "an unknown section",
        edits: &[("[broker]", "[brokerr]")],
        files: none,
        expect: &[("brokerr", Some("[brokerr]"))],
    },
    Case {
        name: "an unknown journal key",
        edits: &[("[journal]\n", "[journal]\nfsync_intent = true\n")],
        files: none,
        expect: &[("journal.fsync_intent", Some("fsync_intent"))],
    },
    Case {
        name: "an unknown issuer key",
        edits: &[("jwks_file", "refreshh = \"1m\"\njwks_file")],
        files: none,
        expect: &[("issuer.http://127.0.0.1:9.refreshh", Some("refreshh"))],
    },
    Case {
        name: "an unknown grant key",
        edits: &[(
            "max_ttl = \"10m\"\nparams = { label",
            "max_tll = \"1h\"\nmax_ttl = \"10m\"\nparams = { label",
        )],
        files: none,
        expect: &[("grant.orders.max_tll", Some("max_tll"))],
    },
    Case {
        name: "an unknown workload key",
        edits: &[("uid = 1000", "uid = 1000\nexecutable = \"/usr/bin/mcp\"")],
        files: none,
        expect: &[("workload.mcp.executable", Some("executable"))],
    },
    Case {
        name: "an unknown setting of the test provider",
        edits: &[("state_dir", "colour = \"blue\"\nstate_dir")],
        files: none,
        expect: &[("provider.pg.colour", Some("colour"))],
    },
    Case {
        name: "an unknown Vault setting",
        edits: &[("timeout = \"5s\"", "timeout = \"5s\"\nnamepsace = \"ops\"")],
        files: none,
        expect: &[("provider.bao.namepsace", Some("namepsace"))],
    },
    Case {
        name: "an unknown grant parameter",
        edits: &[(
            "label = \"orders-{owner}\"",
            "label = \"orders-{owner}\", colour = 1",
        )],
        files: none,
        expect: &[("grant.orders.params.colour", Some("colour = 1"))],
    },
    Case {
        name: "a key of the other Vault grant kind",
        edits: &[(
            "path = \"database/creds/ro\"",
            "path = \"database/creds/ro\", policies = [\"x\"]",
        )],
        files: none,
        expect: &[("grant.bao-db.params.policies", Some("policies"))],
    },
    // Wrong types.
    Case {
        name: "a socket path that is a number",
        edits: &[("broker_socket = \"{d}/b.sock\"", "broker_socket = 5")],
        files: none,
        expect: &[("server.broker_socket", Some("broker_socket"))],
    },
    Case {
        name: "a boolean written as a string",
        edits: &[("[journal]\n", "[journal]\nfsync_intents = \"yes\"\n")],
        files: none,
        expect: &[("journal.fsync_intents", Some("fsync_intents"))],
    },
    Case {
        name: "a uid written as a string",
        edits: &[("uid = 1000", "uid = \"1000\"")],
        files: none,
        expect: &[("workload.mcp.uid", Some("uid ="))],
    },
    Case {
        name: "a negative uid",
        edits: &[("uid = 1000", "uid = -1")],
        files: none,
        expect: &[("workload.mcp.uid", Some("uid ="))],
    },
    Case {
        name: "scopes as a string, not a list",
        edits: &[("scopes = [\"orders.read\"]", "scopes = \"orders.read\"")],
        files: none,
        expect: &[("grant.orders.scopes", Some("scopes = \"orders.read\""))],
    },
    Case {
        name: "a Vault timeout as a number",
        edits: &[("timeout = \"5s\"", "timeout = 5")],
        files: none,
        expect: &[("provider.bao.timeout", Some("timeout = 5"))],
    },
    Case {
        name: "a Vault namespace as a number",
        edits: &[("timeout = \"5s\"", "timeout = \"5s\"\nnamespace = 5")],
        files: none,
        expect: &[("provider.bao.namespace", Some("namespace"))],
    },
    Case {
        name: "a Vault ca_file as a number",
        edits: &[("timeout = \"5s\"", "timeout = \"5s\"\nca_file = 7")],
        files: none,
        expect: &[("provider.bao.ca_file", Some("ca_file"))],
    },
    Case {
        name: "a grant parameter of the wrong type",
        edits: &[("label = \"orders-{owner}\"", "label = 5")],
        files: none,
        expect: &[("grant.orders.params.label", Some("label = 5"))],
    },
    Case {
        name: "an unknown Vault grant kind",
        edits: &[("kind = \"dynamic\"", "kind = \"kv\"")],
        files: none,
        expect: &[("grant.bao-db.params.kind", Some("kind = \"kv\""))],
    },
    // Missing keys.
    Case {
        name: "a grant without max_ttl",
        edits: &[("max_ttl = \"10m\"\nparams = { label", "params = { label")],
        files: none,
        expect: &[("grant.orders.max_ttl", Some("↑name = \"orders\""))],
    },
    Case {
        name: "no [journal] section",
        edits: &[
            ("[journal]\n", ""),
            ("path = \"{d}/journal.db\"\n", ""),
            ("key_file = \"{d}/journal.key\"\n", ""),
        ],
        files: none,
        expect: &[("journal", None)],
    },
    Case {
        name: "a workload without audience",
        edits: &[("audience = \"https://mcp.example.com/\"\n", "")],
        files: none,
        expect: &[("workload.mcp.audience", Some("↑name = \"mcp\""))],
    },
    Case {
        name: "a provider without type",
        edits: &[("type = \"vault\"\n", "")],
        files: none,
        expect: &[("provider.bao.type", Some("↑name = \"bao\""))],
    },
    Case {
        name: "Vault without its address",
        edits: &[("address = \"http://127.0.0.1:8200\"\n", "")],
        files: none,
        expect: &[("provider.bao.address", Some("↑name = \"bao\""))],
    },
    // Durations.
    Case {
        name: "10M is not ten months",
        edits: &[(
            "max_ttl = \"10m\"\nparams = { label",
            "max_ttl = \"10M\"\nparams = { label",
        )],
        files: none,
        expect: &[("grant.orders.max_ttl", Some("max_ttl = \"10M\""))],
    },
    Case {
        name: "a max TTL of 500ms",
        edits: &[(
            "max_ttl = \"10m\"\nparams = { label",
            "max_ttl = \"500ms\"\nparams = { label",
        )],
        files: none,
        expect: &[("grant.orders.max_ttl", Some("500ms"))],
    },
    Case {
        name: "a max TTL of 999999h",
        edits: &[(
            "max_ttl = \"10m\"\nparams = { label",
            "max_ttl = \"999999h\"\nparams = { label",
        )],
        files: none,
        expect: &[("grant.orders.max_ttl", Some("999999h"))],
    },
    Case {
        name: "a default TTL that is no duration",
        edits: &[("default_ttl = \"15m\"", "default_ttl = \"forever\"")],
        files: none,
        expect: &[("broker.default_ttl", Some("forever"))],
    },
    Case {
        name: "a Vault timeout beyond its bound",
        edits: &[("timeout = \"5s\"", "timeout = \"5 minutes\"")],
        files: none,
        expect: &[("provider.bao.timeout", Some("5 minutes"))],
    },
    // Files.
    Case {
        name: "a journal key file that does not exist",
        edits: &[],
        files: |d| std::fs::remove_file(d.join("journal.key")).expect("the key should be removed"),
        expect: &[("journal.key_file", Some("key_file"))],
    },
    Case {
        name: "a journal key file every user can read",
        edits: &[],
        files: |d| chmod(&d.join("journal.key"), 0o644),
        expect: &[("journal.key_file", Some("key_file"))],
    },
    Case {
        name: "a journal key of the wrong shape",
        edits: &[],
        files: |d| write_secret(d.join("journal.key"), "short").expect("the key should be written"),
        expect: &[("journal.key_file", Some("key_file"))],
    },
    Case {
        name: "a JWKS file holding private keys",
        edits: &[],
        files: |d| {
            std::fs::copy(
                repo().join("tests/fixtures/keys/keys.json"),
                d.join("jwks.json"),
            )
            .expect("the private key set should be copied");
        },
        expect: &[("issuer.http://127.0.0.1:9.jwks_file", Some("jwks_file"))],
    },
    Case {
        name: "a JWKS file that is not JSON",
        edits: &[],
        files: |d| std::fs::write(d.join("jwks.json"), "keys").expect("the JWKS should be written"),
        expect: &[("issuer.http://127.0.0.1:9.jwks_file", Some("jwks_file"))],
    },
    Case {
        name: "a CA file that does not exist",
        edits: &[("jwks_file", "ca_file = \"{d}/ca.pem\"\njwks_file")],
        files: none,
        expect: &[("issuer.http://127.0.0.1:9.ca_file", Some("ca_file"))],
    },
    Case {
        name: "a Vault token file that does not exist",
        edits: &[],
        files: |d| {
            std::fs::remove_file(d.join("vault-token")).expect("the token should be removed")
        },
        expect: &[("provider.bao.token_file", Some("token_file"))],
    },
    Case {
        name: "a Vault token file every user can read",
        edits: &[],
        files: |d| chmod(&d.join("vault-token"), 0o604),
        expect: &[("provider.bao.token_file", Some("token_file"))],
    },
    // Paths.
    Case {
        name: "a relative journal path",
        edits: &[("path = \"{d}/journal.db\"", "path = \"journal.db\"")],
        files: none,
        expect: &[("journal.path", Some("path = \"journal.db\""))],
    },
    Case {
        name: "a relative journal key file",
        edits: &[(
            "key_file = \"{d}/journal.key\"",
            "key_file = \"journal.key\"",
        )],
        files: none,
        expect: &[("journal.key_file", Some("key_file"))],
    },
    Case {
        name: "a relative Vault token file",
        edits: &[(
            "token_file = \"{d}/vault-token\"",
            "token_file = \"vault-token\"",
        )],
        files: none,
        expect: &[("provider.bao.token_file", Some("token_file"))],
    },
    Case {
        name: "a socket path longer than a unix socket can have",
        edits: &[(
            "admin_socket = \"{d}/a.sock\"",
            "admin_socket = \"/run/credbroker/an-admin-socket-path-that-goes-on-and-on-and-on-and-on-well-past-the-108-bytes-of-sun-path.sock\"",
        )],
        files: none,
        expect: &[("server.admin_socket", Some("admin_socket"))],
    },
    // References.
    Case {
        name: "a grant naming no provider",
        edits: &[("provider = \"pg\"", "provider = \"pgg\"")],
        files: none,
        expect: &[("grant.orders.provider", Some("provider = \"pgg\""))],
    },
    Case {
        name: "a workload naming no grant",
        edits: &[(
            "grants = [\"orders\", \"bao-db\"]",
            "grants = [\"orders\", \"nope\"]",
        )],
        files: none,
        expect: &[(
            "workload.mcp.grants",
            Some("grants = [\"orders\", \"nope\"]"),
        )],
    },
    // Several at once, across the core, a provider and a grant.
    Case {
        name: "problems in the core, a provider, a grant and a file, together",
        edits: &[
            ("[server]\n", "[server]\nbroker_sockt = \"/x\"\n"),
            ("timeout = \"5s\"", "timeout = 5"),
            (
                "max_ttl = \"10m\"\nparams = { label",
                "max_ttl = \"10M\"\nparams = { label",
            ),
            (
                "label = \"orders-{owner}\"",
                "label = \"orders-{owner}\", colour = 1",
            ),
        ],
        files: |d| chmod(&d.join("journal.key"), 0o644),
        expect: &[
            ("server.broker_sockt", Some("broker_sockt")),
            ("journal.key_file", Some("key_file")),
            ("provider.bao.timeout", Some("timeout = 5")),
            ("grant.orders.max_ttl", Some("max_ttl = \"10M\"")),
            ("grant.orders.params.colour", Some("colour = 1")),
        ],
    },
];

fn check(dir: &Path, text: &str) -> (Option<i32>, String) {
    let path = dir.join("credbroker.toml");
    std::fs::write(&path, text).expect("the case's config should be written");
    let out = Command::new(testd())
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("check-config should run");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn every_problem_is_reported_at_once_with_its_key_and_line() {
    assert!(CASES.len() >= 40, "{} cases", CASES.len());
    let base_dir = tempfile::tempdir().expect("a temp dir for the base config should be created");
    setup(base_dir.path());
    let d = base_dir.path().display().to_string();
    let (code, out) = check(base_dir.path(), &BASE.replace("{d}", &d));
    assert_eq!(code, Some(0), "the base config must pass: {out}");

    let mut failures = Vec::new();
    for case in CASES {
        let dir = tempfile::tempdir().expect("a temp dir for the case should be created");
        setup(dir.path());
        (case.files)(dir.path());
        let mut text = BASE.to_string();
        for (from, to) in case.edits {
            assert!(
                text.contains(from),
                "{}: the edit {from:?} matches nothing",
                case.name
            );
            text = text.replacen(from, to, 1);
        }
        let text = text.replace("{d}", &dir.path().display().to_string());
        let (code, out) = check(dir.path(), &text);
        let reported: Vec<&str> = out.lines().filter(|l| l.starts_with("  ")).collect();
        let mut wrong = Vec::new();
        if code != Some(2) {
            wrong.push(format!("exit {code:?}, not 2"));
        }
        for (path, at) in case.expect {
            let want = match at {
                Some(marker) => {
                    let (above, marker) = match marker.strip_prefix('↑') {
                        Some(m) => (1, m),
                        None => (0, *marker),
                    };
                    let line = text
                        .lines()
                        .position(|l| l.contains(marker))
                        .map(|i| i + 1 - above);
                    let Some(line) = line else {
                        wrong.push(format!("marker {marker:?} is not in the config"));
                        continue;
                    };
                    format!("  line {line}: {path}: ")
                }
                None => format!("  {path}: "),
            };
            if !reported.iter().any(|l| l.starts_with(&want)) {
                wrong.push(format!("no {want:?}"));
            }
        }
        if reported.len() != case.expect.len() {
            wrong.push(format!(
                "{} problems reported, {} expected",
                reported.len(),
                case.expect.len()
            ));
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n{out}", case.name, wrong.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
