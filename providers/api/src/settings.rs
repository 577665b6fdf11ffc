//! Reading a provider's settings (or a grant's parameters) the same way in every provider:
//! typed, every problem collected with the key it is about, unknown keys refused, and one rule
//! each for durations, endpoints and secrets read from files.
//!
//! Why not a `#[serde(deny_unknown_fields)]` struct: serde stops at the first error, and an
//! operator fixing a file wants every problem at once (with its line, which the broker adds
//! from the key). [`Fields`] deserializes each key on its own, so a wrong type in one key does
//! not hide an unknown key or a bad value in another.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Env, ParamError, Params};

pub use crate::secret_file::{FileStamp, SecretFile, check_secret_file, credential_path};

/// A settings table being read. Every key read is remembered; [`Fields::finish`] reports the
/// rest as unknown.
pub struct Fields<'a> {
    map: &'a Params,
    /// `approle.` for a nested table: errors name the key from the instance's root.
    prefix: String,
    seen: BTreeSet<String>,
    errors: Vec<ParamError>,
    /// What a key nobody read is called: "unknown setting" or "unknown parameter".
    unknown: &'static str,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Params) -> Self {
        Self::nested(map, "")
    }

    /// A table inside the settings (`approle = { … }`), its errors named `PREFIX.KEY`.
    pub fn nested(map: &'a Params, prefix: &str) -> Self {
        Self {
            map,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}.")
            },
            seen: BTreeSet::new(),
            errors: Vec::new(),
            unknown: "unknown setting",
        }
    }

    /// A grant's `params` table: the same rules, its stray keys called parameters.
    pub fn params(map: &'a Params) -> Self {
        Self {
            unknown: "unknown parameter",
            ..Self::new(map)
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Records a problem with `key`.
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let path = self.path(key);
        self.errors.push(ParamError::new(path, message));
    }

    /// Whether any problem has been recorded so far.
    pub fn has_problem(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Whether a problem has been recorded for `key` (so a follow-up check need not add a
    /// second, vaguer one).
    pub fn has_problem_with(&self, key: &str) -> bool {
        let path = self.path(key);
        self.errors.iter().any(|e| e.path == path)
    }

    /// The raw value of `key`, if present (marks it known).
    pub fn raw(&mut self, key: &str) -> Option<&'a Value> {
        self.seen.insert(key.to_string());
        self.map.get(key)
    }

    /// `key` as a `T`, if present; a value of another shape is a problem ("must be `expect`").
    pub fn get<T: DeserializeOwned>(&mut self, key: &str, expect: &str) -> Option<T> {
        let v = self.raw(key)?;
        match T::deserialize(v) {
            Ok(t) => Some(t),
            Err(_) => {
                self.problem(key, format!("must be {expect}"));
                None
            }
        }
    }

    /// As [`Fields::get`], and a problem when absent.
    pub fn required<T: DeserializeOwned>(&mut self, key: &str, expect: &str) -> Option<T> {
        if !self.map.contains_key(key) {
            self.seen.insert(key.to_string());
            self.problem(key, format!("is required ({expect})"));
            return None;
        }
        self.get(key, expect)
    }

    /// A non-empty string.
    pub fn string(&mut self, key: &str) -> Option<String> {
        let s: String = self.get(key, "a non-empty string")?;
        if s.is_empty() {
            self.problem(key, "must be a non-empty string");
            return None;
        }
        Some(s)
    }

    /// `true` or `false`.
    pub fn boolean(&mut self, key: &str) -> Option<bool> {
        self.get(key, "true or false")
    }

    /// A list of strings (each may be empty; the caller checks what an entry must be).
    pub fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        self.get(key, "a list of strings")
    }

    /// A table, for the caller to read with [`Fields::nested`] or by hand.
    pub fn table(&mut self, key: &str) -> Option<&'a Params> {
        match self.raw(key)? {
            Value::Object(map) => Some(map),
            _ => {
                self.problem(key, "must be a table");
                None
            }
        }
    }

    /// A table whose every value is a string (labels, metadata); each bad entry is a problem
    /// named `KEY.ENTRY`.
    pub fn string_map(&mut self, key: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let map = self.table(key)?;
        let mut out = std::collections::BTreeMap::new();
        for (k, v) in map {
            match v.as_str() {
                Some(s) => {
                    out.insert(k.clone(), s.to_string());
                }
                None => self.problem(&format!("{key}.{k}"), "must be a string"),
            }
        }
        Some(out)
    }

    /// Takes the problems of a nested [`Fields`] (already named from the root).
    pub fn absorb(&mut self, problems: Vec<ParamError>) {
        self.errors.extend(problems);
    }

    /// An integer within `range`.
    pub fn int(&mut self, key: &str, range: std::ops::RangeInclusive<u64>) -> Option<u64> {
        let expect = format!("an integer from {} to {}", range.start(), range.end());
        let n: u64 = self.get(key, &expect)?;
        if range.contains(&n) {
            Some(n)
        } else {
            self.problem(key, format!("must be {expect}"));
            None
        }
    }

    /// A duration (`"5s"`, `"20m"`, the grammar of [`crate::parse_duration`]) within
    /// `min..=max`.
    pub fn duration(&mut self, key: &str, min: Duration, max: Duration) -> Option<Duration> {
        let text: String = self.get(key, "a duration such as \"10s\"")?;
        match crate::parse_duration_within(&text, min, max) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(key, e);
                None
            }
        }
    }

    /// A URL credbroker may send credentials to: https, or http only on loopback.
    pub fn endpoint(&mut self, key: &str) -> Option<String> {
        let url = self.string(key)?;
        if check_endpoint(&url).is_err() {
            self.problem(key, "must be https (http only on loopback)");
            return None;
        }
        Some(url)
    }

    /// A secret read from a file: `file_key` names a path, `credential_key` a systemd
    /// credential in `$CREDENTIALS_DIRECTORY`; one of them, not both. `Ok(None)` when neither
    /// is given (the caller decides whether that is a problem).
    pub fn secret(
        &mut self,
        file_key: &str,
        credential_key: &str,
        env: &dyn Env,
    ) -> Option<SecretFile> {
        let file = self.string(file_key);
        let credential = self.string(credential_key);
        let (key, path) = match (file, credential) {
            (Some(_), Some(_)) => {
                self.problem(
                    file_key,
                    format!("{file_key} and {credential_key} are mutually exclusive"),
                );
                return None;
            }
            (None, None) => return None,
            (Some(f), None) => (file_key, PathBuf::from(f)),
            (None, Some(c)) => match credential_path(env, &c) {
                Ok(p) => (credential_key, p),
                Err(e) => {
                    self.problem(credential_key, e);
                    return None;
                }
            },
        };
        if !path.is_absolute() {
            self.problem(
                key,
                format!("{} is relative; write an absolute path", path.display()),
            );
            return None;
        }
        if let Err(e) = check_secret_file(&path) {
            self.problem(key, e);
            return None;
        }
        Some(SecretFile { path })
    }

    /// The problems found, unknown keys included. Empty: the table is good.
    pub fn finish(mut self) -> Vec<ParamError> {
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|k| !self.seen.contains(k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            self.problem(&k, self.unknown);
        }
        self.errors
    }
}

/// The bounds of a provider's HTTP timeout: below 100ms nothing answers, above a minute the
/// broker's own provider timeout has long fired.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether credbroker may send credentials to `url`: https anywhere, http only to a loopback
/// host (`localhost`, `127.0.0.0/8`, `::1`). A URL with user info is refused outright: in
/// `http://127.0.0.1@evil.example/` the host is `evil.example`.
pub fn check_endpoint(url: &str) -> Result<(), &'static str> {
    let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err("no host, or user info in the URL");
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if is_loopback(authority) => Ok(()),
        _ => Err("must be https (http only on loopback)"),
    }
}

fn is_loopback(authority: &str) -> bool {
    let host = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, tail)) if tail.is_empty() || port(tail.strip_prefix(':')) => h,
            _ => return false,
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) if port(Some(p)) => h,
            Some(_) => return false,
            None => authority,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn port(p: Option<&str>) -> bool {
    p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmptyEnv;
    use serde_json::json;

    #[test]
    fn every_problem_is_collected_and_unknown_keys_are_named() {
        let map: Params = serde_json::from_value(json!({
            "timeout": 5, "region": "", "max_attempts": 99, "colour": "blue",
            "api_url": "http://example.com", "token_credential": "a/b",
        }))
        .unwrap_or_default();
        let mut f = Fields::new(&map);
        assert_eq!(f.duration("timeout", Duration::ZERO, Duration::MAX), None);
        assert_eq!(f.string("region"), None);
        assert_eq!(f.int("max_attempts", 1..=10), None);
        assert_eq!(f.endpoint("api_url"), None);
        assert_eq!(f.secret("token_file", "token_credential", &EmptyEnv), None);
        assert_eq!(f.required::<u64>("app_id", "a positive integer"), None);
        let errors: Vec<(String, String)> = f
            .finish()
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect();
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "timeout",
                "region",
                "max_attempts",
                "api_url",
                "token_credential",
                "app_id",
                "colour"
            ],
            "{errors:?}"
        );
        assert!(errors[6].1.contains("unknown"));
    }

    #[test]
    fn nested_tables_name_their_keys_from_the_root() {
        let map: Params =
            serde_json::from_value(json!({ "mount": 1, "x": true })).unwrap_or_default();
        let mut f = Fields::nested(&map, "approle");
        assert_eq!(f.string("mount"), None);
        let paths: Vec<String> = f.finish().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["approle.mount", "approle.x"]);
    }

    #[test]
    fn endpoints_are_https_or_loopback_http() {
        for ok in [
            "https://vault.example:8200",
            "http://127.0.0.1:8200",
            "http://localhost/v1",
            "http://[::1]:9000/",
            "http://127.9.9.9",
            "HTTPS://api.github.com",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://example.com",
            "http://127.0.0.1@evil.example/",
            "http://localhost.evil.example",
            "http://127.0.0.1:80x",
            "http://[::1]x",
            "ftp://127.0.0.1",
            "127.0.0.1:8200",
            "https://",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_files_are_read_with_one_rule() {
        let dir = std::env::temp_dir().join(format!("cb-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        std::fs::write(dir.join("tok"), "s3cret\n").unwrap_or_default();
        std::fs::write(dir.join("open"), "s3cret\n").unwrap_or_default();
        use std::os::unix::fs::PermissionsExt as _;
        for (file, mode) in [("tok", 0o640), ("open", 0o604)] {
            std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(mode))
                .expect("the test secret's mode should be set");
        }
        struct Creds(PathBuf);
        impl Env for Creds {
            fn var(&self, k: &str) -> Option<String> {
                (k == "CREDENTIALS_DIRECTORY").then(|| self.0.display().to_string())
            }
        }
        let env = Creds(dir.clone());
        let map: Params =
            serde_json::from_value(json!({ "token_credential": "tok" })).unwrap_or_default();
        let mut f = Fields::new(&map);
        let s = f.secret("token_file", "token_credential", &env);
        assert!(f.finish().is_empty());
        let read = s.map(|s| s.read().map(|v| v.expose().to_string()));
        assert_eq!(read, Some(Ok("s3cret".to_string())));
        for (name, want) in [
            ("..", "invalid"),
            ("missing", "not a readable file"),
            ("open", "open to every user on the host (mode 0604)"),
        ] {
            let map: Params =
                serde_json::from_value(json!({ "token_credential": name })).unwrap_or_default();
            let mut f = Fields::new(&map);
            assert_eq!(f.secret("token_file", "token_credential", &env), None);
            let e = f.finish();
            assert!(e.len() == 1 && e[0].message.contains(want), "{name}: {e:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
