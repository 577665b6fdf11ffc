use std::fmt;

use serde_json::Value;

/// Grant parameters or a provider's configuration table, in a neutral form (TOML is converted on
/// load). At issue time string leaves have had their claim templates rendered.
pub type Params = serde_json::Map<String, Value>;

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

/// A required string parameter.
pub fn param_str<'a>(params: &'a Params, key: &str) -> Result<&'a str, ParamError> {
    match params.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ParamError::new(key, "must not be empty")),
        Some(_) => Err(ParamError::new(key, "must be a string")),
        None => Err(ParamError::new(key, "is required")),
    }
}

/// An optional list of strings; absent means empty.
pub fn param_str_list(params: &Params, key: &str) -> Result<Vec<String>, ParamError> {
    match params.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(ParamError::new(key, "must be a list of strings")),
            })
            .collect(),
        Some(_) => Err(ParamError::new(key, "must be a list of strings")),
    }
}
