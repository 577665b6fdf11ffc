//! The end of an allowed call: the upstream's answer passes through unchanged (streams are not
//! held back) while its first bytes are kept, so that once the body ends — or the client goes
//! away — the call's result is recorded with its JSON-RPC error code, if the answer was one.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use serde_json::Value;

use super::reply::Body;

/// An answer larger than this is not searched for an error code past it: errors are short.
const KEPT: usize = 64 * 1024;

type Done = Box<dyn FnOnce(Option<i64>) + Send + Sync>;

pub(super) struct Watched {
    inner: Body,
    seen: Vec<u8>,
    done: Option<Done>,
}

impl Watched {
    /// `done` gets the answer's JSON-RPC error code once the body has ended or was dropped.
    pub(super) fn new(inner: Body, done: impl FnOnce(Option<i64>) + Send + Sync + 'static) -> Self {
        Self {
            inner,
            seen: Vec::new(),
            done: Some(Box::new(done)),
        }
    }

    fn fire(&mut self) {
        if let Some(done) = self.done.take() {
            done(rpc_error(&self.seen));
        }
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let room = KEPT.saturating_sub(self.seen.len());
                    let take = data.len().min(room);
                    self.seen.extend_from_slice(&data[..take]);
                }
            }
            Poll::Ready(_) => self.fire(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.fire();
    }
}

/// The error code of a JSON-RPC answer: a JSON body, or the `data:` lines of an event stream
/// (the last error wins; notifications before it carry none).
fn rpc_error(bytes: &[u8]) -> Option<i64> {
    let code = |v: &Value| v.get("error")?.get("code")?.as_i64();
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return code(&v);
    }
    let text = std::str::from_utf8(bytes).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find_map(|v| code(&v))
}

#[cfg(test)]
mod tests {
    use super::rpc_error;

    #[test]
    fn an_error_answer_gives_its_code_in_json_and_in_events() {
        assert_eq!(
            rpc_error(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}"#),
            Some(-32602)
        );
        assert_eq!(rpc_error(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#), None);
        let events = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
            event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32001,\"message\":\"y\"}}\n\n";
        assert_eq!(rpc_error(events), Some(-32001));
        assert_eq!(rpc_error(b"data: not json\n\n"), None);
    }
}
