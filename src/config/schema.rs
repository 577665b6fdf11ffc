//! The shape of the configuration file: which keys each table has and what type each holds.
//!
//! Why a schema walked by hand and not only serde: serde stops at the first unknown key or
//! wrong type, and an operator fixing a file wants every problem at once. [`check`] walks the
//! whole document, reports every unknown key, wrong type and missing key with its path, and
//! hands back a document serde can read (bad keys removed, missing ones stood in for), so the
//! semantic checks after it still run and report their own problems in the same pass.

use std::collections::BTreeSet;

use toml::{Table, Value};

/// What a key holds.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Str,
    Bool,
    /// An integer within the bounds.
    Int(i64, i64),
    StrList,
    IntList(i64, i64),
    /// A table of string values (client → owner).
    StrMap,
    /// A table of string lists (grant conditions).
    StrListMap,
    Table(&'static [Field]),
    /// An array of tables, each with these fields.
    Entries(&'static [Field]),
    /// As `Entries`, and every other key belongs to someone else (a provider's settings).
    OpenEntries(&'static [Field]),
    /// Checked by someone else (a provider's settings, a grant's params): any table.
    AnyTable,
}

#[derive(Clone, Copy)]
pub(super) struct Field {
    key: &'static str,
    kind: Kind,
    required: bool,
}

const fn opt(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        kind,
        required: false,
    }
}

const fn req(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        kind,
        required: true,
    }
}

const U32: Kind = Kind::Int(0, u32::MAX as i64);
const COUNT: Kind = Kind::Int(0, i64::MAX);

const SERVER: &[Field] = &[
    req("broker_socket", Kind::Str),
    opt("broker_socket_group", Kind::Str),
    req("admin_socket", Kind::Str),
    opt("admin_uids", Kind::IntList(0, u32::MAX as i64)),
    opt("gateway_uids", Kind::IntList(0, u32::MAX as i64)),
    opt("max_connections_per_uid", COUNT),
    opt("connection_idle_timeout", Kind::Str),
];
const JOURNAL: &[Field] = &[
    req("path", Kind::Str),
    opt("fsync_intents", Kind::Bool),
    opt("key_file", Kind::Str),
    opt("key_credential", Kind::Str),
];
const TOKENS: &[Field] = &[
    opt("max_token_bytes", COUNT),
    opt("leeway", Kind::Str),
    opt("cache_entries", COUNT),
];
const BROKER: &[Field] = &[
    opt("max_grants_per_task", COUNT),
    opt("default_ttl", Kind::Str),
    opt("provider_concurrency", COUNT),
    opt("provider_timeout", Kind::Str),
    opt("end_task_wait", Kind::Str),
    opt("revoke_backoff_initial", Kind::Str),
    opt("revoke_backoff_max", Kind::Str),
    opt("refusal_audit_limit", U32),
    opt("refusal_audit_window", Kind::Str),
    opt("require_registered_client", Kind::Bool),
];
const AUDIT: &[Field] = &[
    opt("head_key_file", Kind::Str),
    opt("head_key_credential", Kind::Str),
    opt("retention", Kind::Str),
    opt("archive_dir", Kind::Str),
];
const METRICS: &[Field] = &[opt("listen", Kind::Str)];
const ATTRIBUTION: &[Field] = &[
    opt("require_owner", Kind::Bool),
    opt("clients", Kind::StrMap),
];
const ISSUER: &[Field] = &[
    req("url", Kind::Str),
    opt("algorithms", Kind::StrList),
    opt("metadata", Kind::Str),
    opt("jwks_file", Kind::Str),
    opt("refresh", Kind::Str),
    opt("min_refresh_interval", Kind::Str),
    opt("http_timeout", Kind::Str),
    opt("ca_file", Kind::Str),
    opt("clients", Kind::StrMap),
    opt("introspect", Kind::Str),
    opt("introspection_endpoint", Kind::Str),
    opt("introspection_client_id", Kind::Str),
    opt("introspection_secret_file", Kind::Str),
    opt("introspection_secret_credential", Kind::Str),
    opt("introspection_cache", Kind::Str),
    opt("recheck_active", Kind::Str),
];
const WORKLOAD: &[Field] = &[
    req("name", Kind::Str),
    opt("uid", U32),
    opt("user", Kind::Str),
    opt("gid", U32),
    opt("exe", Kind::Str),
    opt("systemd_unit", Kind::Str),
    opt("systemd_user_unit", Kind::Str),
    opt("issuer", Kind::Str),
    req("audience", Kind::Str),
    opt("grants", Kind::StrList),
];
const GRANT: &[Field] = &[
    req("name", Kind::Str),
    req("provider", Kind::Str),
    opt("issuer", Kind::Str),
    opt("scopes", Kind::StrList),
    opt("conditions", Kind::StrListMap),
    req("max_ttl", Kind::Str),
    opt("default_ttl", Kind::Str),
    opt("tools", Kind::StrList),
    opt("params", Kind::AnyTable),
];
const GATEWAY: &[Field] = &[
    req("name", Kind::Str),
    req("listen", Kind::Str),
    req("resource", Kind::Str),
    req("upstream", Kind::Str),
    opt("resource_name", Kind::Str),
    opt("authorization_servers", Kind::StrList),
    opt("scopes_supported", Kind::StrList),
    opt("tools", Kind::StrListMap),
    opt("methods", Kind::StrListMap),
    opt("default", Kind::Str),
    opt("forward_token", Kind::Bool),
    opt("allow_plain_http", Kind::Bool),
    opt("tls_cert_file", Kind::Str),
    opt("tls_key_file", Kind::Str),
    opt("rate_limit_client", Kind::Str),
    opt("rate_limit_owner", Kind::Str),
    opt("max_body_bytes", COUNT),
    opt("upstream_timeout", Kind::Str),
    opt("record_arguments", Kind::StrList),
    opt("upstream_socket", Kind::Str),
    opt("upstream_ca_file", Kind::Str),
];
/// Where the gateway reports calls: the daemon's broker socket.
const DAEMON: &[Field] = &[req("socket", Kind::Str), opt("timeout", Kind::Str)];
/// The gateway's own file: it faces the network, so it holds tokens' issuers and its routes,
/// never a provider, journal or key.
pub(super) const GATEWAY_ROOT: &[Field] = &[
    req("daemon", Kind::Table(DAEMON)),
    opt("worker_threads", COUNT),
    opt("tokens", Kind::Table(TOKENS)),
    opt("issuer", Kind::Entries(ISSUER)),
    req("gateway", Kind::Entries(GATEWAY)),
];
const CLIENT: &[Field] = &[
    req("id", Kind::Str),
    opt("issuer", Kind::Str),
    opt("owner", Kind::Str),
    opt("expires", Kind::Str),
    opt("grants", Kind::StrList),
    opt("status", Kind::Str),
];
const SIGNALS: &[Field] = &[opt("listen", Kind::Str)];
const TRANSMITTER: &[Field] = &[
    req("name", Kind::Str),
    req("issuer", Kind::Str),
    req("audience", Kind::Str),
    opt("jwks_file", Kind::Str),
    opt("jwks_uri", Kind::Str),
    opt("algorithms", Kind::StrList),
    opt("push_bearer_file", Kind::Str),
    opt("push_bearer_credential", Kind::Str),
    opt("poll_url", Kind::Str),
    opt("poll_bearer_file", Kind::Str),
    opt("poll_bearer_credential", Kind::Str),
    opt("poll_interval", Kind::Str),
    opt("max_age", Kind::Str),
    opt("block_for", Kind::Str),
    opt("subject_issuer", Kind::Str),
];
const DETECTOR: &[Field] = &[
    opt("response", Kind::StrList),
    opt("threshold", Kind::Int(1, 1_000_000)),
    opt("window", Kind::Str),
    opt("per", Kind::Str),
    opt("new_network", Kind::Bool),
];
const ABUSE: &[Field] = &[
    opt("block_for", Kind::Str),
    opt("webhook_url", Kind::Str),
    opt("webhook_secret_file", Kind::Str),
    opt("webhook_secret_credential", Kind::Str),
    opt("webhook_timeout", Kind::Str),
    opt("wrong_audience", Kind::Table(DETECTOR)),
    opt("token_reuse", Kind::Table(DETECTOR)),
    opt("scope_probing", Kind::Table(DETECTOR)),
    opt("rate", Kind::Table(DETECTOR)),
    opt("blocked_reuse", Kind::Table(DETECTOR)),
];
/// A provider's own keys are its settings, checked by the provider.
const PROVIDER: &[Field] = &[req("name", Kind::Str), req("type", Kind::Str)];

pub(super) const ROOT: &[Field] = &[
    req("server", Kind::Table(SERVER)),
    req("journal", Kind::Table(JOURNAL)),
    opt("tokens", Kind::Table(TOKENS)),
    opt("broker", Kind::Table(BROKER)),
    opt("attribution", Kind::Table(ATTRIBUTION)),
    opt("audit", Kind::Table(AUDIT)),
    opt("metrics", Kind::Table(METRICS)),
    opt("abuse", Kind::Table(ABUSE)),
    opt("issuer", Kind::Entries(ISSUER)),
    opt("workload", Kind::Entries(WORKLOAD)),
    opt("grant", Kind::Entries(GRANT)),
    opt("provider", Kind::OpenEntries(PROVIDER)),
    opt("client", Kind::Entries(CLIENT)),
    opt("signals", Kind::Table(SIGNALS)),
    opt("transmitter", Kind::Entries(TRANSMITTER)),
];

/// A structural problem: the key's path and what is wrong.
pub(super) type Problem = (String, String);

/// What the walk found.
pub(super) struct Checked {
    /// The document with every bad key removed and every missing key stood in for.
    pub(super) doc: Table,
    pub(super) problems: Vec<Problem>,
    /// Paths whose value is a stand-in: later problems about them would only repeat ours.
    pub(super) stand_ins: BTreeSet<String>,
}

/// Walks `doc` against the schema whose top level is `root`.
pub(super) fn check(mut doc: Table, root: &[Field]) -> Checked {
    let mut walk = Walk {
        problems: Vec::new(),
        stand_ins: BTreeSet::new(),
    };
    walk.table(&mut doc, "", root, true);
    Checked {
        doc,
        problems: walk.problems,
        stand_ins: walk.stand_ins,
    }
}

struct Walk {
    problems: Vec<Problem>,
    stand_ins: BTreeSet<String>,
}

impl Walk {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push((path.to_string(), message.into()));
    }

    /// `open`: keys the schema does not name belong to someone else (a provider's settings).
    fn table(&mut self, table: &mut Table, prefix: &str, fields: &[Field], strict: bool) {
        let join = |key: &str| {
            if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            }
        };
        if strict {
            let unknown: Vec<String> = table
                .keys()
                .filter(|k| !fields.iter().any(|f| f.key == k.as_str()))
                .cloned()
                .collect();
            for k in unknown {
                let known: Vec<&str> = fields.iter().map(|f| f.key).collect();
                let hint = match closest(&k, &known) {
                    Some(c) => format!("unknown key (did you mean {c:?}?)"),
                    None => format!("unknown key (expected one of: {})", known.join(", ")),
                };
                self.problem(&join(&k), hint);
                table.remove(&k);
            }
        }
        for field in fields {
            let path = join(field.key);
            match table.get_mut(field.key) {
                None if field.required => {
                    self.problem(&path, format!("is required ({})", describe(field.kind)));
                    let v = self.stand_in(field.kind, &path);
                    table.insert(field.key.to_string(), v);
                }
                None => {}
                Some(value) => {
                    let fits = self.value(value, &path, field.kind);
                    if !fits {
                        self.problem(&path, format!("must be {}", describe(field.kind)));
                        table.remove(field.key);
                    }
                    // Stood in even when optional: as if absent, later checks would report
                    // what its absence means ("must match on uid") on top of our problem.
                    if !fits {
                        let v = self.stand_in(field.kind, &path);
                        table.insert(field.key.to_string(), v);
                    }
                }
            }
        }
    }

    /// Whether `value` has the kind's shape (entries and tables are checked inside, and their
    /// own problems reported there).
    fn value(&mut self, value: &mut Value, path: &str, kind: Kind) -> bool {
        match (kind, value) {
            (Kind::Str, Value::String(_)) | (Kind::Bool, Value::Boolean(_)) => true,
            (Kind::Int(lo, hi), Value::Integer(n)) => (lo..=hi).contains(n),
            (Kind::StrList, Value::Array(items)) => items.iter().all(Value::is_str),
            (Kind::IntList(lo, hi), Value::Array(items)) => items
                .iter()
                .all(|v| v.as_integer().is_some_and(|n| (lo..=hi).contains(&n))),
            (Kind::StrMap, Value::Table(t)) => self.each(t, path, |v| v.is_str(), "a string"),
            (Kind::StrListMap, Value::Table(t)) => self.each(
                t,
                path,
                |v| v.as_array().is_some_and(|a| a.iter().all(Value::is_str)),
                "a list of strings",
            ),
            (Kind::AnyTable, Value::Table(_)) => true,
            (Kind::Table(fields), Value::Table(t)) => {
                self.table(t, path, fields, true);
                true
            }
            (Kind::Entries(fields) | Kind::OpenEntries(fields), Value::Array(items))
                if items.iter().all(Value::is_table) =>
            {
                let strict = matches!(kind, Kind::Entries(_));
                let mut keep = Vec::new();
                for (i, mut item) in std::mem::take(items).into_iter().enumerate() {
                    let name = item
                        .get("name")
                        .or_else(|| item.get("url"))
                        .or_else(|| item.get("id"))
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("[{i}]"), |n| format!(".{n}"));
                    let entry = format!("{path}{name}");
                    let Some(t) = item.as_table_mut() else {
                        continue;
                    };
                    self.table(t, &entry, fields, strict);
                    // An entry without its name cannot be referred to, nor reported on by
                    // later checks: it is dropped after its problems are reported.
                    let named = ["name", "url", "id"].iter().any(|k| {
                        t.get(*k).is_some() && !self.stand_ins.contains(&format!("{entry}.{k}"))
                    });
                    if named {
                        keep.push(item);
                    }
                }
                *items = keep;
                true
            }
            _ => false,
        }
    }

    /// A value of the right type for a missing required key, so serde can read the rest.
    /// Strings name the path, so two stand-ins never look equal to each other. Later problems
    /// about a stand-in would only repeat the one already reported.
    fn stand_in(&mut self, kind: Kind, path: &str) -> Value {
        let value = match kind {
            Kind::Str => Value::String(format!("/missing/{path}")),
            Kind::Bool => Value::Boolean(false),
            Kind::Int(lo, _) => Value::Integer(lo),
            Kind::StrList => Value::Array(vec![Value::String(format!("/missing/{path}"))]),
            Kind::IntList(..) => Value::Array(Vec::new()),
            Kind::StrMap | Kind::StrListMap | Kind::AnyTable => Value::Table(Table::new()),
            Kind::Table(fields) => {
                let mut t = Table::new();
                for f in fields.iter().filter(|f| f.required) {
                    let p = format!("{path}.{}", f.key);
                    let v = self.stand_in(f.kind, &p);
                    t.insert(f.key.to_string(), v);
                }
                Value::Table(t)
            }
            Kind::Entries(_) | Kind::OpenEntries(_) => Value::Array(Vec::new()),
        };
        self.stand_ins.insert(path.to_string());
        value
    }

    /// Every value of a table has a shape; each bad one is its own problem and is removed.
    fn each(
        &mut self,
        table: &mut Table,
        path: &str,
        ok: impl Fn(&Value) -> bool,
        what: &str,
    ) -> bool {
        let bad: Vec<String> = table
            .iter()
            .filter(|(_, v)| !ok(v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in bad {
            self.problem(&format!("{path}.{k}"), format!("must be {what}"));
            table.remove(&k);
        }
        true
    }
}

fn describe(kind: Kind) -> String {
    match kind {
        Kind::Str => "a string".into(),
        Kind::Bool => "true or false".into(),
        Kind::Int(lo, hi) if hi == i64::MAX => format!("a whole number of at least {lo}"),
        Kind::Int(lo, hi) => format!("a whole number from {lo} to {hi}"),
        Kind::StrList => "a list of strings".into(),
        Kind::IntList(..) => "a list of whole numbers".into(),
        Kind::StrMap => "a table of strings".into(),
        Kind::StrListMap => "a table of string lists".into(),
        Kind::Table(_) | Kind::AnyTable => "a table".into(),
        Kind::Entries(_) | Kind::OpenEntries(_) => "an array of tables ([[…]])".into(),
    }
}

/// The known key closest to `key` (a typo's likely meaning), if one is close enough.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}
