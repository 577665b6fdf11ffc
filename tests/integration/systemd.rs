//! Running under systemd, without a running systemd: the units checked by `systemd-analyze`,
//! socket activation through `systemd-socket-activate`, sd_notify against a test
//! `NOTIFY_SOCKET`, and native journald records received on a stand-in journal socket.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::daemon::{Daemon, base_config, testd};
use crate::support::oidc::{AuthServer, PG_READ, POSTGRES};
use crate::support::{eventually, repo};

/// The units, with the binary path pointed at one that exists here.
fn units(dir: &Path) {
    for unit in [
        "credbroker.service",
        "credbroker.socket",
        "credbroker-admin.socket",
        "credbroker-gateway.service",
    ] {
        let text = std::fs::read_to_string(repo().join("systemd").join(unit))
            .unwrap_or_else(|e| panic!("{unit}: {e}"))
            .replace("/usr/bin/credbroker", &testd().display().to_string());
        std::fs::write(dir.join(unit), text).expect("the patched unit file should be written");
    }
}

#[test]
fn the_units_verify_and_the_services_score_1_5_or_lower() {
    let dir = tempfile::tempdir().expect("a temp dir for the units should be created");
    units(dir.path());
    let verify = Command::new("systemd-analyze")
        .args([
            "verify",
            // `Documentation=man:` pages are checked where the .deb installs them (package.rs).
            "--man=no",
            "credbroker.service",
            "credbroker.socket",
            "credbroker-admin.socket",
            "credbroker-gateway.service",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}"));
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    // The daemon, and the network-facing gateway apart from it.
    for unit in ["credbroker.service", "credbroker-gateway.service"] {
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=true", &format!("./{unit}")])
            .current_dir(dir.path())
            .output()
            .expect("systemd-analyze security should run");
        let report = String::from_utf8_lossy(&security.stdout);
        let score: f64 = report
            .lines()
            .find_map(|l| l.split(&format!("{unit}: ")).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
        assert!(score <= 1.5, "{unit}: exposure {score} > 1.5:\n{report}");
    }

    // sysusers.d and tmpfiles.d snippets apply to an empty root.
    let root =
        tempfile::tempdir().expect("a temp root for sysusers and tmpfiles should be created");
    std::fs::create_dir_all(root.path().join("etc"))
        .expect("the temp root's etc should be created");
    for f in ["passwd", "group", "shadow", "gshadow"] {
        std::fs::write(root.path().join("etc").join(f), "")
            .expect("the empty account databases should be written");
    }
    let run = |tool: &str, args: &[&str], file: &str| {
        let out = Command::new(tool)
            .arg(format!("--root={}", root.path().display()))
            .args(args)
            .arg(repo().join("systemd").join(file))
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("systemd-sysusers", &[], "credbroker.sysusers.conf");
    run(
        "systemd-tmpfiles",
        &["--create"],
        "credbroker.tmpfiles.conf",
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap_or_default();
    assert!(passwd.starts_with("credbroker:"), "{passwd}");
    assert!(passwd.contains("\ncredbroker-gateway:"), "{passwd}");
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap_or_default();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("mcp-servers:") && l.ends_with(":credbroker-gateway")),
        "the gateway is not in the broker socket's group:\n{group}"
    );
    let gw = std::fs::metadata(root.path().join("etc/credbroker-gateway"))
        .expect("tmpfiles should have created the gateway's directory");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&gw.permissions()) & 0o777,
        0o750
    );
    let creds = root.path().join("etc/credbroker/credentials");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&creds)
            .expect("tmpfiles should have created the credentials directory")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_activation_passes_named_sockets_and_a_task_begins_through_them() {
    let auth = AuthServer::start();
    let wrapper = [
        "systemd-socket-activate",
        "-l",
        "{dir}/broker.sock",
        "-l",
        "{dir}/admin.sock",
        "--fdname=broker:admin",
    ]
    .map(String::from)
    .to_vec();
    let d = Daemon::start_wrapped(
        |dir| base_config(dir, &auth.issuer, ""),
        "info",
        Vec::new(),
        wrapper,
    )
    .await;
    // The ready line is written just after the sockets start answering.
    eventually(Duration::from_secs(5), "the ready line", || async {
        d.log_text().contains("socket_activated=true")
    })
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d
        .begin(&token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("begin through the activated socket: {e:?}"));
    assert_eq!(begun.into_inner().credentials.len(), 1);
    // The peer was identified through the passed socket as through its own.
    assert!(
        d.audit()
            .iter()
            .any(|r| r["event"] == "task_opened" && r["peer"]["uid"].is_number())
    );

    // Sockets that cannot be told apart are refused, not guessed at.
    let dir =
        tempfile::tempdir().expect("a temp dir for the unnamed-sockets daemon should be created");
    let config = dir.path().join("credbroker.toml");
    // Its own journal: the running daemon holds the first one's lock.
    std::fs::write(
        &config,
        std::fs::read_to_string(&d.config)
            .unwrap_or_default()
            .replace(
                &d.journal.display().to_string(),
                &dir.path().join("journal.db").display().to_string(),
            ),
    )
    .expect("the second daemon's config should be written");
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(dir.path().join("a.sock"))
        .arg("-l")
        .arg(dir.path().join("b.sock"))
        .arg("--fdname=workload:operator")
        .arg(testd())
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate should spawn the daemon");
    // systemd-socket-activate starts the service on the first connection, as systemd does.
    let a = dir.path().join("a.sock");
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(&a).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child
        .wait_with_output()
        .expect("the refusing daemon's stderr should be collected");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("expected the names broker and admin"),
        "{stderr}"
    );
}

/// Datagrams received on a socket, with when they arrived.
type Received = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

fn receive_on(path: &Path) -> Received {
    let socket = UnixDatagram::bind(path).expect("the stand-in datagram socket should bind");
    let received: Received = Arc::default();
    let sink = Arc::clone(&received);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buf) {
            if let Ok(mut r) = sink.lock() {
                r.push((Instant::now(), buf[..n].to_vec()));
            }
        }
    });
    received
}

fn texts(r: &Received) -> Vec<(Instant, String)> {
    r.lock()
        .map(|v| {
            v.iter()
                .map(|(t, b)| (*t, String::from_utf8_lossy(b).into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn sd_notify_says_ready_reloading_stopping_and_pings_the_watchdog_at_half_its_interval() {
    let auth = AuthServer::start();
    let sock_dir = tempfile::tempdir().expect("a temp dir for the notify socket should be created");
    let notify = sock_dir.path().join("notify");
    let received = receive_on(&notify);
    let env = vec![
        ("NOTIFY_SOCKET".to_string(), notify.display().to_string()),
        // 600 ms: pings every 300 ms.
        ("WATCHDOG_USEC".to_string(), "600000".to_string()),
    ];
    let mut d = Daemon::start_opts(|dir| base_config(dir, &auth.issuer, ""), "info", env).await;
    let started = Instant::now();
    // READY=1 is a datagram sent once the sockets listen, so it may land just after the admin
    // socket first answers (which is all `Daemon::start` waits for): wait for it, not assume it.
    eventually(Duration::from_secs(10), "READY=1", || async {
        texts(&received)
            .iter()
            .any(|(_, m)| m.starts_with("READY=1"))
    })
    .await;
    let msgs = texts(&received);
    let ready = msgs
        .iter()
        .position(|(_, m)| m.starts_with("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1: {msgs:?}"));
    let (_, ready_msg) = &msgs[ready];
    assert!(ready_msg.contains(&format!("MAINPID={}", d.pid().unwrap_or(0))));
    assert!(
        ready_msg.contains("STATUS=serving: 0 active task(s)"),
        "{ready_msg}"
    );
    // READY=1 comes only once the sockets listen: the journal recovery and the bind are logged
    // before it, and nothing was sent before READY but READY itself.
    assert_eq!(ready, 0, "{msgs:?}");

    // Watchdog: about 3 s / 300 ms = 10 pings (loose bounds: a busy machine delays ticks).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pings: Vec<Instant> = texts(&received)
        .into_iter()
        .filter(|(t, m)| m.starts_with("WATCHDOG=1") && *t >= started)
        .map(|(t, _)| t)
        .collect();
    assert!(
        (6..=13).contains(&pings.len()),
        "{} watchdog pings in 3 s at a 300 ms interval",
        pings.len()
    );
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    d.begin(&token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    eventually(
        Duration::from_secs(3),
        "STATUS= counts the task",
        || async {
            texts(&received)
                .iter()
                .any(|(_, m)| m.contains("STATUS=serving: 1 active task(s), 1 lease(s)"))
        },
    )
    .await;

    // Reload: RELOADING=1 (with the monotonic time systemd asks for), then READY=1.
    let before = texts(&received).len();
    d.signal(Signal::SIGHUP);
    eventually(
        Duration::from_secs(5),
        "RELOADING=1 then READY=1",
        || async {
            let after: Vec<String> = texts(&received)
                .into_iter()
                .skip(before)
                .map(|(_, m)| m)
                .filter(|m| !m.starts_with("WATCHDOG=1"))
                .collect();
            after.len() >= 2
                && after[0].starts_with("RELOADING=1\nMONOTONIC_USEC=")
                && after[1].starts_with("READY=1")
        },
    )
    .await;

    // SIGTERM: STOPPING=1, then the process exits.
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the daemon did not stop"));
    assert!(status.success());
    assert!(
        texts(&received)
            .iter()
            .any(|(_, m)| m.starts_with("STOPPING=1"))
    );
}

/// journald's native protocol: `KEY=value\n`, or `KEY\n` + 64-bit LE length + value + `\n`.
fn journal_fields(datagram: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &rest[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            rest = &rest[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let after = &rest[nl + 1..];
            if after.len() < 8 {
                break;
            }
            let mut len = [0u8; 8];
            len.copy_from_slice(&after[..8]);
            let len = u64::from_le_bytes(len) as usize;
            let value = after.get(8..8 + len).unwrap_or_default();
            out.push((key, String::from_utf8_lossy(value).into_owned()));
            rest = after.get(8 + len + 1..).unwrap_or_default();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn under_journald_each_audit_event_is_a_record_with_task_grant_owner_and_reason_fields() {
    let auth = AuthServer::start();
    let sock_dir =
        tempfile::tempdir().expect("a temp dir for the journal socket should be created");
    let journal = sock_dir.path().join("journal.sock");
    let received = receive_on(&journal);
    // journald's socket path is fixed (/run/systemd/journal/socket): give the daemon a private
    // /run in which that path is the test's socket.
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
         touch /run/systemd/journal/socket && \
         mount --bind {} /run/systemd/journal/socket && exec \"$@\"",
        journal.display()
    );
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
        "sh",
    ]
    .map(String::from)
    .to_vec();
    let env = vec![("CREDBROKER_LOG_FORMAT".to_string(), "journald".to_string())];
    let d = Daemon::start_wrapped(
        |dir| base_config(dir, &auth.issuer, ""),
        "info",
        env,
        wrapper,
    )
    .await;
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d
        .begin(&token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let task = begun.task.unwrap_or_default();
    let secret = begun.credentials[0]
        .secret
        .values()
        .next()
        .cloned()
        .unwrap_or_default();
    let bad = d.begin("not-a-token", &["orders-db-read"]).await;
    assert!(bad.is_err());
    let find = |event: &'static str| {
        let received = Arc::clone(&received);
        move || {
            let received = Arc::clone(&received);
            async move {
                received.lock().is_ok_and(|r| {
                    r.iter().any(|(_, d)| {
                        journal_fields(d)
                            .iter()
                            .any(|(k, v)| k == "MESSAGE" && v == event)
                    })
                })
            }
        }
    };
    eventually(
        Duration::from_secs(5),
        "task_opened in the journal",
        find("task_opened"),
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "token_rejected in the journal",
        find("token_rejected"),
    )
    .await;
    let records: Vec<Vec<(String, String)>> = received
        .lock()
        .map(|r| r.iter().map(|(_, d)| journal_fields(d)).collect())
        .unwrap_or_default();
    let get = |r: &[(String, String)], k: &str| {
        r.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    };
    let opened = records
        .iter()
        .find(|r| get(r, "MESSAGE").as_deref() == Some("task_opened"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(get(&opened, "TASK_ID"), Some(task.id.clone()));
    assert_eq!(get(&opened, "OWNER").as_deref(), Some("alice@example.com"));
    assert_eq!(
        get(&opened, "SYSLOG_IDENTIFIER").as_deref(),
        Some("credbroker")
    );
    assert_eq!(get(&opened, "PRIORITY").as_deref(), Some("6"));
    let issued = records
        .iter()
        .find(|r| get(r, "MESSAGE").as_deref() == Some("lease_issued"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(get(&issued, "GRANT").as_deref(), Some("orders-db-read"));
    assert_eq!(get(&issued, "TASK_ID"), Some(task.id.clone()));
    let rejected = records
        .iter()
        .find(|r| get(r, "MESSAGE").as_deref() == Some("token_rejected"))
        .cloned()
        .unwrap_or_default();
    assert!(
        get(&rejected, "REASON").is_some_and(|r| !r.is_empty()),
        "{rejected:?}"
    );
    // Nothing went to stderr but what precedes logging, and no secret reached the journal.
    let everything: Vec<u8> = received
        .lock()
        .map(|r| r.iter().flat_map(|(_, d)| d.clone()).collect())
        .unwrap_or_default();
    assert!(!secret.is_empty());
    assert!(
        !everything
            .windows(secret.len())
            .any(|w| w == secret.as_bytes()),
        "a credential reached the journal"
    );
    assert!(
        !everything
            .windows(token.len())
            .any(|w| w == token.as_bytes()),
        "the access token reached the journal"
    );
}

fn dir_file(beside: &Path, name: &str) -> std::path::PathBuf {
    beside.with_file_name(name)
}

/// The groups `systemd-analyze syscall-filter` knows, each expanded to system call names.
fn syscall_groups() -> std::collections::HashMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .expect("systemd-analyze syscall-filter should list the groups");
    let mut raw: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(group) = line.strip_prefix('@') {
            current = format!("@{}", group.trim());
        } else {
            let item = line.trim();
            if !item.is_empty() && !item.starts_with('#') && !current.is_empty() {
                raw.entry(current.clone())
                    .or_default()
                    .push(item.to_string());
            }
        }
    }
    fn expand(
        name: &str,
        raw: &std::collections::HashMap<String, Vec<String>>,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        for item in raw.get(name).into_iter().flatten() {
            if item.starts_with('@') {
                expand(item, raw, out);
            } else {
                out.insert(item.clone());
            }
        }
    }
    raw.keys()
        .map(|g| {
            let mut set = std::collections::BTreeSet::new();
            expand(g, &raw, &mut set);
            (g.clone(), set.into_iter().collect())
        })
        .collect()
}

/// A seccompiler filter equivalent to the unit's SystemCallFilter= lines,
/// SystemCallErrorNumber=EPERM and MemoryDenyWriteExecute=yes (which systemd also implements
/// with seccomp: no mapping both writable and executable, no making memory executable later).
fn unit_seccomp_filter() -> serde_json::Value {
    use serde_json::json;
    let unit =
        std::fs::read_to_string(repo().join("systemd/credbroker.service")).unwrap_or_default();
    let groups = syscall_groups();
    let names = |spec: &str| -> Vec<String> {
        spec.split_whitespace()
            .flat_map(|g| {
                if g.starts_with('@') {
                    groups.get(g).cloned().unwrap_or_default()
                } else {
                    vec![g.to_string()]
                }
            })
            .collect()
    };
    let mut allowed: std::collections::BTreeSet<String> = names("@default").into_iter().collect();
    for line in unit.lines() {
        if let Some(spec) = line.strip_prefix("SystemCallFilter=") {
            match spec.strip_prefix('~') {
                Some(denied) => names(denied).iter().for_each(|n| {
                    allowed.remove(n);
                }),
                None => allowed.extend(names(spec)),
            }
        }
    }
    assert!(
        allowed.len() > 200,
        "{} system calls allowed?",
        allowed.len()
    );
    // Only names this architecture has (the groups list every architecture's).
    let arch: seccompiler::TargetArch = std::env::consts::ARCH
        .try_into()
        .unwrap_or_else(|e| panic!("{e:?}"));
    let known = |name: &str| {
        let one = json!({"t": {"mismatch_action": "trap", "match_action": "allow",
            "filter": [{"syscall": name}]}});
        seccompiler::compile_from_json(one.to_string().as_bytes(), arch).is_ok()
    };
    const PROT_WRITE: u64 = 2;
    const PROT_EXEC: u64 = 4;
    const SHM_EXEC: u64 = 0o100000;
    let no = |index: u8, mask: u64| json!({"index": index, "type": "dword", "op": {"masked_eq": mask}, "val": 0});
    let mut rules = Vec::new();
    let present: Vec<&String> = allowed.iter().filter(|n| known(n)).collect();
    assert!(present.len() > 150, "{} known system calls?", present.len());
    for name in present {
        match name.as_str() {
            "mmap" => {
                rules.push(json!({"syscall": "mmap", "args": [no(2, PROT_WRITE)]}));
                rules.push(json!({"syscall": "mmap", "args": [no(2, PROT_EXEC)]}));
            }
            "mprotect" | "pkey_mprotect" => {
                rules.push(json!({"syscall": name, "args": [no(2, PROT_EXEC)]}));
            }
            "shmat" => rules.push(json!({"syscall": "shmat", "args": [no(2, SHM_EXEC)]})),
            _ => rules.push(json!({"syscall": name})),
        }
    }
    json!({"main": {"mismatch_action": {"errno": 1}, "match_action": "allow", "filter": rules}})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_serves_under_the_units_sandbox() {
    let auth = AuthServer::start();
    let filter_dir =
        tempfile::tempdir().expect("a temp dir for the seccomp filter should be created");
    let filter = filter_dir.path().join("seccomp.json");
    std::fs::write(&filter, unit_seccomp_filter().to_string())
        .expect("the unit's seccomp filter should be written");
    // The filter is really applied: keygen prints a key under it, and nothing once `write` is
    // taken out of it.
    let keygen = |filter: &Path| {
        let out = dir_file(filter, "keygen.out");
        let mut child = Command::new(testd())
            .arg("keygen")
            .env("CREDBROKER_TEST_SECCOMP", filter)
            .stdout(std::fs::File::create(&out).expect("the keygen output file should be created"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("keygen should spawn under the seccomp filter");
        // Without `write` the process cannot even report its failure: give it 5 s.
        let started = Instant::now();
        while child.try_wait().ok().flatten().is_none()
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        std::fs::read(&out).map(|o| o.len()).unwrap_or(0)
    };
    assert_eq!(keygen(&filter), 65, "a 64-hex-digit key and a newline");
    let mut no_write = unit_seccomp_filter();
    if let Some(rules) = no_write["main"]["filter"].as_array_mut() {
        rules.retain(|r| r["syscall"] != "write");
    }
    let crippled = filter_dir.path().join("no-write.json");
    std::fs::write(&crippled, no_write.to_string())
        .expect("the filter without write should be written");
    assert_eq!(keygen(&crippled), 0);
    std::fs::set_permissions(
        filter_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("the filter dir should be opened to the sandboxed uid");
    // DynamicUser= (not root), NoNewPrivileges=, CapabilityBoundingSet= (none), PrivateIPC=,
    // ProtectHostname= (own IPC and UTS namespaces), a private mount namespace, and the
    // seccomp filter above.
    let script = "chown -R 65534:65534 \"$DIR\" && exec unshare --ipc --uts --mount \
                  --propagation private -- setpriv --reuid=65534 --regid=65534 --clear-groups \
                  --no-new-privs --bounding-set=-all --inh-caps=-all -- \"$@\"";
    let wrapper = ["env", "DIR={dir}", "sh", "-c", script, "sh"]
        .map(String::from)
        .to_vec();
    let env = vec![(
        "CREDBROKER_TEST_SECCOMP".to_string(),
        filter.display().to_string(),
    )];
    let d = Daemon::start_wrapped(
        // The operator (this test, as root) is listed: the daemon itself is not root here.
        |dir| {
            base_config(dir, &auth.issuer, "").replace("[server]\n", "[server]\nadmin_uids = [0]\n")
        },
        "info",
        env,
        wrapper,
    )
    .await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid().unwrap_or(0)))
        .unwrap_or_default();
    for expected in [
        "Uid:\t65534",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "CapBnd:\t0000000000000000",
    ] {
        assert!(status.contains(expected), "{expected} not in:\n{status}");
    }
    let token = auth.token("agent-1", POSTGRES, PG_READ).await;
    let begun = d
        .begin(&token, &["orders-db-read"])
        .await
        .unwrap_or_else(|e| panic!("begin under the sandbox: {e:?}\n{}", d.log_text()))
        .into_inner();
    let task = begun.task.unwrap_or_default();
    d.broker()
        .await
        .end_task(credbroker::proto::v1::EndTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("end under the sandbox: {e:?}"));
    eventually(Duration::from_secs(5), "the lease revoked", || async {
        d.revoked().len() == 1
    })
    .await;
    // SIGHUP reload works under the filter too.
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(5), "reloaded", || async {
        d.log_text().contains("configuration reloaded")
    })
    .await;
}
