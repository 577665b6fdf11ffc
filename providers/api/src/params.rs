use std::fmt;

use serde_json::Value;

/// Grant parameters or a provider's configuration table, in a neutral form (TOML is converted on
/// load). At issue time string leaves have had their claim templates rendered.
pub type Params = serde_json::Map<String, Value>;

/// How a request may narrow one grant parameter. Narrowing must only ever take access away,
/// and whether removing an entry does depends on what the entries mean: removing a repository
/// from a GitHub token's list removes access, but removing a Vault *policy* can remove a deny
/// and so add access. Each provider says, per parameter, which kind is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Narrowing {
    /// A request may not change it.
    Never,
    /// A non-empty subset of the grant's list: only for allow-lists, where every entry adds
    /// access and none can take any away.
    Subset,
}

/// What the broker must know about one top-level grant parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamRule {
    pub key: &'static str,
    pub narrowing: Narrowing,
    /// The backend folds the case of this parameter's values (Vault policy names, GitHub
    /// owners and repositories): claim values rendered into it must not rely on case, or
    /// `ALICE` would name alice's policy.
    pub case_insensitive: bool,
}

impl ParamRule {
    /// A parameter a request may narrow to a subset.
    pub const fn subset(key: &'static str) -> Self {
        Self {
            key,
            narrowing: Narrowing::Subset,
            case_insensitive: false,
        }
    }

    /// A parameter a request may not change.
    pub const fn fixed(key: &'static str) -> Self {
        Self {
            key,
            narrowing: Narrowing::Never,
            case_insensitive: false,
        }
    }

    /// The same rule, for a backend that folds case.
    pub const fn case_insensitive(self) -> Self {
        Self {
            case_insensitive: true,
            ..self
        }
    }
}

/// A problem with one parameter. `path` is relative to the table it was found in
/// (`role_arn`, `permissions.issues`); the broker prefixes it with where that table lives
/// (`grant.orders-db-read.params`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    pub path: String,
    pub message: String,
}

impl ParamError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}
