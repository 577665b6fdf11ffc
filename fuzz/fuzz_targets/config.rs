//! The configuration loader: `Config::parse` (TOML, then validation naming every problem), and
//! for a configuration that parses, what the daemon builds from it at start and on reload:
//! `Runtime::build` with the built-in provider registry (every provider instance from its
//! settings, every grant's parameters checked by its provider, the verifier, the policy), the
//! journal's sealing key and the audit head key.
//!
//! Offline and contained: no tokio runtime is entered (so no provider starts a background
//! loop), `$CREDENTIALS_DIRECTORY` is a temporary directory holding a few credentials the seeds
//! name, and every path the build would read (`*_file` provider settings, an issuer's
//! `ca_file`, the key files) is confined to that directory: a relative path without `..` is
//! taken inside it, any other path is replaced by one that does not exist there. (Otherwise the
//! fuzzer could name `/dev/zero` or a FIFO: a hang, but an operator's own doing, not a bug.)

#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use credbroker::broker::Runtime;
use credbroker::config::{Config, KeySource, parse_duration};
use credbroker::journal::seal::Sealer;
use credbroker::providers::Registry;
use credbroker_provider_api::Env;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use serde_json::Value;

const RSA_PEM: &str = include_str!("../../tests/fixtures/keys/rs256-1.pem");
const HEX_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";

struct World {
    dir: PathBuf,
    env: FuzzEnv,
    registry: Registry,
}

struct FuzzEnv {
    credentials: String,
}

impl Env for FuzzEnv {
    fn var(&self, key: &str) -> Option<String> {
        (key == "CREDENTIALS_DIRECTORY").then(|| self.credentials.clone())
    }
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let dir = common::scratch_dir("config");
    let creds = dir.join("credentials");
    let write = |p: PathBuf, text: &str| {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    };
    for (name, text) in [
        ("journal-key", HEX_KEY),
        ("audit-head-key", HEX_KEY),
        ("vault-token", "s.fuzz-token\n"),
        ("vault-secret-id", "fuzz-secret-id\n"),
        ("github-app-key", RSA_PEM),
    ] {
        write(creds.join(name), text);
        // The same files, for `*_file` settings (relative paths are taken in `dir`).
        write(dir.join(name), text);
    }
    write(dir.join("github-app.pem"), RSA_PEM);
    write(dir.join("journal.key"), HEX_KEY);
    World {
        env: FuzzEnv {
            credentials: creds.display().to_string(),
        },
        dir,
        registry: Registry::builtin(),
    }
});

/// A path the build may read: inside the fuzz directory, or nowhere.
fn confine(dir: &Path, p: &Path) -> PathBuf {
    let inside = p.is_relative() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if inside && !p.as_os_str().is_empty() {
        dir.join(p)
    } else {
        dir.join("not-in-the-fuzz-directory")
    }
}

fn confine_settings(dir: &Path, v: &mut Value) {
    if let Value::Object(m) = v {
        for (k, v) in m.iter_mut() {
            if k.ends_with("_file") || k.ends_with("_dir") || k == "credentials_file" {
                if let Value::String(s) = v {
                    *s = confine(dir, Path::new(s.as_str())).display().to_string();
                }
            } else {
                confine_settings(dir, v);
            }
        }
    } else if let Value::Array(items) = v {
        items.iter_mut().for_each(|i| confine_settings(dir, i));
    }
}

fn confine_config(dir: &Path, c: &mut Config) {
    for i in &mut c.issuers {
        if let Some(p) = &mut i.ca_file {
            *p = confine(dir, p);
        }
        if let Some(p) = &mut i.jwks_file {
            *p = confine(dir, p);
        }
    }
    for key in [&mut c.journal.key].into_iter().chain(c.audit.head_key.as_mut()) {
        if let KeySource::File(p) = key {
            *p = confine(dir, p);
        }
    }
    for p in &mut c.providers {
        for (k, v) in p.settings.iter_mut() {
            if k.ends_with("_file") || k.ends_with("_dir") {
                if let Value::String(s) = v {
                    *s = confine(dir, Path::new(s.as_str())).display().to_string();
                }
            } else {
                confine_settings(dir, v);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = &*WORLD;
    let text = String::from_utf8_lossy(data);
    if text.len() < 64 {
        let _ = parse_duration(&text);
        let _ = credbroker::config::check_issuer_url(&text);
    }
    let first = Config::parse(&text, "fuzz");
    let lines = text.matches('\n').count() + 1;
    match &first {
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "refused with no problem named");
            for e in &errors.errors {
                if let Some(line) = e.line {
                    assert!((1..=lines).contains(&line), "line {line} of a {lines}-line text: {e}");
                }
                assert!(!e.message.is_empty(), "a problem without a message: {e:?}");
            }
            let _ = errors.to_string();
            // The same text is refused the same way.
            match Config::parse(&text, "fuzz") {
                Ok(_) => panic!("parsed on the second try"),
                Err(again) => assert_eq!(&again, errors, "parse is not deterministic"),
            }
        }
        Ok(config) => {
            for (name, grant) in &config.grants {
                assert_eq!(name, &grant.name);
            }
            let mut config = config.clone();
            confine_config(&w.dir, &mut config);
            let _ = Sealer::load(&config.journal.key, &w.env);
            if let Some(k) = &config.audit.head_key {
                let _ = k.audit_key(&w.env);
            }
            // As at start, then as on a reload of the same file (instances and verifier kept).
            if let Ok(runtime) = Runtime::build(config.clone(), &w.registry, &w.env, None) {
                let again = Runtime::build(config, &w.registry, &w.env, Some(&runtime));
                let again = again.unwrap_or_else(|e| panic!("built once, not on reload: {e:?}"));
                assert!(std::sync::Arc::ptr_eq(&runtime.verifier, &again.verifier));
                let fresh: Vec<_> = runtime.providers.iter().map(|(n, _)| n.clone()).collect();
                let kept: Vec<_> = again.providers.iter().map(|(n, _)| n.clone()).collect();
                assert_eq!(fresh, kept, "a reload of the same file changed the instances");
            }
        }
    }
});
