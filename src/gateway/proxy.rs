//! Passing an admitted request to the upstream MCP server, and its answer back: streamed as it
//! comes (SSE events are not held back), except a `tools/list` answer, which is read whole to
//! drop the tools the caller may not call.

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::reply::{self, Body};

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the gateway sets itself.
const DROPPED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

pub(super) fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, forward_token: bool) {
    for (name, value) in from {
        if DROPPED.contains(&name.as_str())
            || (!forward_token && name == header::AUTHORIZATION)
            || name.as_str() == "credbroker-call"
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// A W3C `traceparent`: the caller's when well formed, else a new one.
pub(super) fn traceparent(from: &HeaderMap) -> HeaderValue {
    let given = from
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            let parts: Vec<&str> = v.split('-').collect();
            parts.len() == 4
                && [2, 32, 16, 2]
                    .iter()
                    .zip(&parts)
                    .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()))
        });
    match given {
        Some(v) => HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
        None => {
            let trace = format!("{:032x}", fastrand::u128(1..));
            let span = format!("{:016x}", fastrand::u64(1..));
            HeaderValue::from_str(&format!("00-{trace}-{span}-01"))
                .unwrap_or(HeaderValue::from_static(""))
        }
    }
}

pub(super) const CALL_HEADER: HeaderName = HeaderName::from_static("credbroker-call");

/// The upstream's answer as the caller gets it. `keep` filters `tools/list` results.
pub(super) async fn answer(
    resp: Response<Incoming>,
    keep: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    for h in DROPPED.iter().take(7) {
        parts.headers.remove(*h);
    }
    let Some(keep) = keep.filter(|_| parts.status == StatusCode::OK) else {
        return Response::from_parts(parts, body.boxed());
    };
    // A tool listing is small; 16 MiB is far past any real one.
    let bytes = match Limited::new(body, 16 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return reply::error(
                StatusCode::BAD_GATEWAY,
                Value::Null,
                -32603,
                "upstream_invalid",
                "the upstream's tool listing could not be read",
            );
        }
    };
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let filtered = if sse {
        filter_events(&bytes, keep)
    } else {
        filter_json(&bytes, keep).unwrap_or_else(|| bytes.to_vec())
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, reply::full(filtered))
}

/// `result.tools` without the tools `keep` refuses, order kept; `None` when the message has
/// no tool list (an error, say), which passes unchanged.
fn filter_json(bytes: &[u8], keep: &(dyn Fn(&str) -> bool + Sync)) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    let tools = v.get_mut("result")?.get_mut("tools")?.as_array_mut()?;
    tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(keep));
    serde_json::to_vec(&v).ok()
}

/// The same for each `data:` line of an event stream.
fn filter_events(bytes: &[u8], keep: &(dyn Fn(&str) -> bool + Sync)) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        match body.strip_prefix("data:") {
            Some(data) => match filter_json(data.trim_start().as_bytes(), keep) {
                Some(f) => {
                    out.push_str("data: ");
                    out.push_str(&String::from_utf8_lossy(&f));
                    out.push_str(ending);
                }
                None => out.push_str(line),
            },
            None => out.push_str(line),
        }
    }
    out.into_bytes()
}

pub(super) fn request(
    upstream: &url::Url,
    method: hyper::Method,
    headers: &HeaderMap,
    forward_token: bool,
    call_id: &str,
    body: Bytes,
) -> Option<Request<http_body_util::Full<Bytes>>> {
    let mut req = Request::builder()
        .method(method)
        .uri(upstream.as_str())
        .body(http_body_util::Full::new(body))
        .ok()?;
    copy_headers(headers, req.headers_mut(), forward_token);
    req.headers_mut()
        .insert("traceparent", traceparent(headers));
    req.headers_mut()
        .insert(CALL_HEADER, HeaderValue::from_str(call_id).ok()?);
    Some(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_listings_keep_only_callable_tools_in_order_as_json_and_as_events() {
        let keep = |n: &str| n != "write";
        let json = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"read"},{"name":"write"},{"name":"stream"}]}}"#;
        let out: Value = serde_json::from_slice(&filter_json(json, &keep).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(
            out["result"]["tools"],
            serde_json::json!([{"name":"read"},{"name":"stream"}])
        );
        let sse = format!(
            "event: message\r\ndata: {}\r\n\r\n",
            String::from_utf8_lossy(json)
        );
        let out = String::from_utf8(filter_events(sse.as_bytes(), &keep)).unwrap_or_default();
        assert!(out.starts_with("event: message\r\ndata: {"), "{out}");
        assert!(out.ends_with("}\r\n\r\n"), "{out}");
        assert!(!out.contains("write") && out.contains("stream"), "{out}");
        // An error answer passes as it is.
        let err = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#;
        assert_eq!(filter_json(err, &keep), None);
    }

    #[test]
    fn a_well_formed_traceparent_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", HeaderValue::from_static(good));
        assert_eq!(traceparent(&h), good);
        h.insert("traceparent", HeaderValue::from_static("00-zz-11-01"));
        let made = traceparent(&h);
        assert_ne!(made, "00-zz-11-01");
        assert_eq!(made.to_str().map(|s| s.len()).unwrap_or(0), 55);
    }
}
