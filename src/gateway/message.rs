//! What an MCP request asks for, read from its JSON-RPC body and the 2026-07-28 headers, and
//! which scopes that needs.

use serde_json::Value;

use crate::config::gateway::{GUARDED_METHODS, GatewayConfig, Unnamed};
use crate::record::{Reason, reason};

/// One JSON-RPC message from the client, as far as the gateway needs it.
#[derive(Debug, PartialEq)]
pub struct Message {
    /// `None` for a client's response to a server request (sampling, elicitation).
    pub method: Option<String>,
    /// The tool, resource URI or prompt the method names.
    pub name: Option<String>,
    pub id: Value,
    /// `params.arguments` of a tool call or prompt: digested, never recorded whole.
    pub arguments: Option<Value>,
    /// The client's `clientInfo` (initialize's, or 2026-07-28's `_meta`), name and version.
    pub client: Option<(String, String)>,
    /// The protocol revision the message says it speaks (`_meta`, or initialize's).
    pub protocol: Option<String>,
}

/// Why a body is not an MCP message the gateway will pass on.
#[derive(Debug, PartialEq)]
pub enum BadMessage {
    /// JSON-RPC -32700.
    Parse(String),
    /// JSON-RPC -32600, with the id when one was readable.
    Invalid(String, Value),
    /// `Mcp-Method`/`Mcp-Name` say one thing and the body another.
    HeaderMismatch(String, Value),
}

impl BadMessage {
    pub fn code(&self) -> i64 {
        match self {
            Self::Parse(_) => -32700,
            Self::Invalid(..) | Self::HeaderMismatch(..) => -32600,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            Self::Parse(_) => reason::MALFORMED_JSON,
            Self::Invalid(..) => reason::INVALID_JSONRPC,
            Self::HeaderMismatch(..) => reason::HEADER_MISMATCH,
        }
    }

    pub fn id(&self) -> Value {
        match self {
            Self::Parse(_) => Value::Null,
            Self::Invalid(_, id) | Self::HeaderMismatch(_, id) => id.clone(),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Parse(m) | Self::Invalid(m, _) | Self::HeaderMismatch(m, _) => m,
        }
    }
}

/// Reads the body. `header_method`/`header_name` are `Mcp-Method` and `Mcp-Name` when sent:
/// when present they must equal the body's, or an intermediary routing on the headers and the
/// server acting on the body would see two different requests.
pub fn read(
    body: &[u8],
    header_method: Option<&str>,
    header_name: Option<&str>,
) -> Result<Message, BadMessage> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| BadMessage::Parse(format!("the body is not JSON: {e}")))?;
    let Value::Object(obj) = v else {
        let what = if v.is_array() {
            "a JSON-RPC batch: MCP has not allowed batches since 2025-06-18"
        } else {
            "not a JSON-RPC message (expected an object)"
        };
        return Err(BadMessage::Invalid(
            format!("the body is {what}"),
            Value::Null,
        ));
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(BadMessage::Invalid("jsonrpc must be \"2.0\"".into(), id));
    }
    let method = match obj.get("method") {
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(BadMessage::Invalid("method must be a string".into(), id)),
        None if obj.contains_key("result") || obj.contains_key("error") => None,
        None => {
            return Err(BadMessage::Invalid(
                "a request needs a method (or a response its result or error)".into(),
                id,
            ));
        }
    };
    let params = obj.get("params");
    let name = match method.as_deref() {
        Some("tools/call" | "prompts/get") => Some(string_param(params, "name", &id)?),
        Some("resources/read") => Some(string_param(params, "uri", &id)?),
        _ => None,
    };
    if let Some(h) = header_method
        && Some(h) != method.as_deref()
    {
        return Err(BadMessage::HeaderMismatch(
            format!("Mcp-Method {h:?} does not match the body's method {method:?}"),
            id,
        ));
    }
    if let Some(h) = header_name
        && Some(h) != name.as_deref()
    {
        return Err(BadMessage::HeaderMismatch(
            format!("Mcp-Name {h:?} does not match the body's {name:?}"),
            id,
        ));
    }
    let arguments = match method.as_deref() {
        Some("tools/call" | "prompts/get") => params.and_then(|p| p.get("arguments")).cloned(),
        _ => None,
    };
    let meta = params.and_then(|p| p.get("_meta"));
    let said = |init: &str, meta_key: &str| {
        params
            .and_then(|p| p.get(init))
            .filter(|_| method.as_deref() == Some("initialize"))
            .or_else(|| meta.and_then(|m| m.get(meta_key)))
    };
    let client = said("clientInfo", CLIENT_INFO).map(|c| {
        let field = |k: &str| printable(c.get(k).and_then(Value::as_str).unwrap_or_default());
        (field("name"), field("version"))
    });
    let protocol = said("protocolVersion", PROTOCOL_VERSION)
        .and_then(Value::as_str)
        .map(|v| printable(v).chars().take(32).collect());
    Ok(Message {
        method,
        name,
        id,
        arguments,
        client,
        protocol,
    })
}

const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// What a client says about itself, fit for a record: no control characters, at most 256.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(256).collect()
}

/// SHA-256, hex, of the arguments in canonical JSON: keys sorted (serde_json's map is ordered),
/// no whitespace. The record can then show that two calls had the same arguments, or match
/// them against a value someone holds, without keeping them.
pub fn digest(arguments: &Value) -> String {
    let canonical = serde_json::to_vec(arguments).unwrap_or_default();
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &canonical,
    ))
}

fn string_param(params: Option<&Value>, key: &str, id: &Value) -> Result<String, BadMessage> {
    match params.and_then(|p| p.get(key)) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(BadMessage::Invalid(
            format!("params.{key} must be a non-empty string"),
            id.clone(),
        )),
    }
}

/// What the policy says about a message.
#[derive(Debug, PartialEq)]
pub enum Need {
    /// A valid token for this resource is enough.
    Token,
    /// Every one of these scopes.
    Scopes(Vec<String>),
    /// Nothing allows it (an unnamed tool under `default = "deny"`).
    Denied,
}

pub fn need(cfg: &GatewayConfig, m: &Message) -> Need {
    let (Some(method), Some(name)) = (m.method.as_deref(), m.name.as_deref()) else {
        return Need::Token;
    };
    let named = match method {
        "tools/call" => cfg.tools.get(name),
        m if GUARDED_METHODS.contains(&m) => cfg.methods.get(m),
        _ => return Need::Token,
    };
    match (named, cfg.default) {
        (Some(scopes), _) => Need::Scopes(scopes.clone()),
        (None, Unnamed::Allow) => Need::Token,
        (None, Unnamed::Deny) => Need::Denied,
    }
}

/// Whether a token with `has` may call the tool `name` (for filtering `tools/list`).
pub fn may_call(cfg: &GatewayConfig, name: &str, has: impl Fn(&str) -> bool) -> bool {
    match cfg.tools.get(name) {
        Some(scopes) => scopes.iter().all(|s| has(s)),
        None => cfg.default == Unnamed::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap_or_default()
    }

    #[test]
    fn a_tool_call_names_its_tool_and_the_headers_must_agree() {
        let call = body(
            json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"query","arguments":{}}}),
        );
        let m = read(&call, Some("tools/call"), Some("query")).expect("a valid call");
        assert_eq!(
            (m.method.as_deref(), m.name.as_deref(), m.id),
            (Some("tools/call"), Some("query"), json!(7))
        );
        // Older clients send no headers: the body decides.
        assert!(read(&call, None, None).is_ok());
        let e = read(&call, Some("tools/call"), Some("delete")).expect_err("a mismatch");
        assert_eq!((e.reason(), e.id()), (reason::HEADER_MISMATCH, json!(7)));
        let e = read(&call, Some("tools/list"), None).expect_err("a mismatch");
        assert_eq!(e.reason(), reason::HEADER_MISMATCH);
    }

    #[test]
    fn bad_bodies_get_their_json_rpc_error() {
        for (b, reason, code) in [
            (b"{not json".to_vec(), "malformed_json", -32700),
            (
                body(json!([{"jsonrpc":"2.0","id":1,"method":"ping"}])),
                "invalid_jsonrpc",
                -32600,
            ),
            (
                body(json!({"jsonrpc":"2.0","id":1})),
                "invalid_jsonrpc",
                -32600,
            ),
            (
                body(json!({"jsonrpc":"1.0","id":1,"method":"ping"})),
                "invalid_jsonrpc",
                -32600,
            ),
            (
                body(json!({"jsonrpc":"2.0","id":1,"method":7})),
                "invalid_jsonrpc",
                -32600,
            ),
            (
                body(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}})),
                "invalid_jsonrpc",
                -32600,
            ),
            (body(json!("ping")), "invalid_jsonrpc", -32600),
        ] {
            let e = read(&b, None, None).expect_err("refused");
            assert_eq!(
                (e.reason().as_str(), e.code()),
                (reason, code),
                "{}",
                String::from_utf8_lossy(&b)
            );
        }
        // A client's answer to a server request has no method, and passes.
        let answer = body(json!({"jsonrpc":"2.0","id":"s1","result":{}}));
        assert_eq!(read(&answer, None, None).map(|m| m.method), Ok(None));
    }

    #[test]
    fn what_a_client_says_about_itself_and_its_arguments_are_read() {
        let init = body(
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","clientInfo":{"name":"agent\u{7}x","version":"1.2"}}}),
        );
        let m = read(&init, None, None).expect("initialize");
        assert_eq!(m.client, Some(("agentx".into(), "1.2".into())));
        assert_eq!(m.protocol.as_deref(), Some("2025-11-25"));
        let call = body(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
            "name":"query","arguments":{"b":1,"a":"x"},
            "_meta":{"io.modelcontextprotocol/clientInfo":{"name":"py","version":"2.3"},
                     "io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}),
        );
        let m = read(&call, None, None).expect("a call");
        assert_eq!(m.client, Some(("py".into(), "2.3".into())));
        assert_eq!(m.protocol.as_deref(), Some("2026-07-28"));
        // Key order does not change the digest; a value does.
        let same = digest(&json!({"a":"x","b":1}));
        assert_eq!(m.arguments.as_ref().map(digest), Some(same.clone()));
        assert_ne!(digest(&json!({"a":"y","b":1})), same);
        assert_eq!(same.len(), 64);
        // A clientInfo in a tool call's params (not _meta) is the tool's argument, not the client.
        let odd = body(
            json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{
            "name":"q","clientInfo":{"name":"spoof"}}}),
        );
        assert_eq!(read(&odd, None, None).map(|m| m.client), Ok(None));
    }
}
