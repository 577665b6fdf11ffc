//! Lets stock gRPC clients of other languages reach the daemon over a unix socket.
//!
//! gRPC C-core (Python's grpcio, Ruby, PHP, C++) sends `:authority` = the percent-encoded socket
//! path (`%2Frun%2Fcredbroker%2Fbroker.sock`), grpc-java the bare path. Neither is an authority
//! `http` can parse, and h2 answers with `RST_STREAM(PROTOCOL_ERROR)` before any service sees
//! the request (hyperium/h2#487, open since 2020). Over a unix socket the authority means
//! nothing, so this adapter, on the client→server bytes of one connection, replaces an
//! unparseable `:authority` with `localhost` before h2 reads it.
//!
//! It decides on the connection's first header block. If that block's authority parses (Rust,
//! Go and Node clients), the connection is passed through untouched from then on, at the cost
//! of one decode. Otherwise every header block of the connection is decoded (with the client's
//! HPACK table) and re-encoded as literals without indexing, so h2's decoder table stays empty
//! and can never disagree with what the client meant. Anything this adapter cannot make sense
//! of is forwarded as it came, for h2 to refuse.

use loona_hpack::Decoder;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// h2's default SETTINGS_MAX_FRAME_SIZE, which the daemon does not raise.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is forwarded untouched (h2 enforces its own limits); the
/// daemon's requests are capped at 64 KiB anyway.
const MAX_BLOCK: usize = 64 * 1024;
/// h2's default SETTINGS_HEADER_TABLE_SIZE: the most a client may make its table.
const TABLE_SIZE: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    /// Before the first header block.
    Undecided,
    /// The client's authority parses: nothing to do on this connection.
    PassThrough,
    /// Every header block is re-encoded.
    Rewrite,
}

/// One header block being collected (a HEADERS frame and its CONTINUATIONs).
struct Block {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as they arrived, forwarded unchanged if the block is not rewritten.
    raw: Vec<u8>,
}

/// The client→server half of one connection.
pub struct AuthorityFix {
    mode: Mode,
    preface_seen: bool,
    input: Vec<u8>,
    decoder: Option<Decoder<'static>>,
    block: Option<Block>,
    /// Bytes of a non-header frame still to forward as they come.
    passing: usize,
    rewritten: bool,
}

impl Default for AuthorityFix {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            mode: Mode::Undecided,
            preface_seen: false,
            input: Vec::new(),
            decoder: Some(decoder),
            block: None,
            passing: 0,
            rewritten: false,
        }
    }
}

impl AuthorityFix {
    /// A whole header block (a request) has arrived on this connection.
    pub fn saw_request(&self) -> bool {
        self.mode != Mode::Undecided
    }

    /// Nothing more to do on this connection: reads can bypass the adapter.
    pub fn done(&self) -> bool {
        self.mode == Mode::PassThrough && self.input.is_empty()
    }

    /// Whether this connection's authority was replaced (for the log, once).
    pub fn take_rewritten(&mut self) -> bool {
        std::mem::take(&mut self.rewritten)
    }

    /// Feeds bytes read from the client; appends what h2 should read to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.mode == Mode::PassThrough && self.input.is_empty() {
            out.extend_from_slice(bytes);
            return;
        }
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            let rest = &self.input[at..];
            if self.mode == Mode::PassThrough {
                out.extend_from_slice(rest);
                at = self.input.len();
                break;
            }
            if !self.preface_seen {
                if rest.len() < PREFACE.len() {
                    if !PREFACE.starts_with(rest) {
                        self.mode = Mode::PassThrough;
                        continue;
                    }
                    break;
                }
                if &rest[..PREFACE.len()] != PREFACE {
                    // Not HTTP/2 with prior knowledge: h2 will say so.
                    self.mode = Mode::PassThrough;
                    continue;
                }
                out.extend_from_slice(PREFACE);
                at += PREFACE.len();
                self.preface_seen = true;
                continue;
            }
            if self.passing > 0 {
                let n = self.passing.min(rest.len());
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&rest[..n]);
                self.passing -= n;
                at += n;
                continue;
            }
            if rest.len() < FRAME_HEADER {
                break;
            }
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let kind = rest[3];
            if kind != HEADERS && kind != CONTINUATION {
                out.extend_from_slice(&rest[..FRAME_HEADER]);
                at += FRAME_HEADER;
                self.passing = len;
                continue;
            }
            if rest.len() < FRAME_HEADER + len {
                break;
            }
            let frame = rest[..FRAME_HEADER + len].to_vec();
            at += FRAME_HEADER + len;
            self.header_frame(&frame, out);
        }
        self.input.drain(..at);
    }

    fn header_frame(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        let kind = frame[3];
        let flags = frame[4];
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.block.take()) {
            (HEADERS, None) => {
                let Some((priority, fragment)) = split_headers_payload(flags, payload) else {
                    return self.give_up(frame, out);
                };
                let block = Block {
                    stream,
                    flags,
                    priority,
                    fragment: fragment.to_vec(),
                    raw: frame.to_vec(),
                };
                self.collect(block, flags, out);
            }
            (CONTINUATION, Some(mut block)) if block.stream == stream => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(frame);
                if block.raw.len() > MAX_BLOCK {
                    let raw = std::mem::take(&mut block.raw);
                    return self.give_up(&raw, out);
                }
                self.collect(block, flags, out);
            }
            // Out of order: not ours to judge.
            (_, Some(block)) => {
                let mut raw = block.raw;
                raw.extend_from_slice(frame);
                self.give_up(&raw, out);
            }
            (_, None) => self.give_up(frame, out),
        }
    }

    fn collect(&mut self, block: Block, flags: u8, out: &mut Vec<u8>) {
        if flags & END_HEADERS == 0 {
            self.block = Some(block);
            return;
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return out.extend_from_slice(&block.raw);
        };
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        let decoded = decoder.decode_with_cb(&block.fragment, |name, value| {
            size += name.len() + value.len() + 32;
            if size <= MAX_BLOCK {
                fields.push((name.into_owned(), value.into_owned()));
            }
        });
        if decoded.is_err() || size > MAX_BLOCK {
            return self.give_up(&block.raw, out);
        }
        let bad = fields
            .iter()
            .any(|(n, v)| n == b":authority" && !authority_parses(v));
        if self.mode == Mode::Undecided {
            if !bad {
                // The decoder saw what h2 will see: both tables agree, nothing more to do.
                self.mode = Mode::PassThrough;
                self.decoder = None;
                return out.extend_from_slice(&block.raw);
            }
            self.mode = Mode::Rewrite;
        }
        for (name, value) in &mut fields {
            if name == b":authority" && !authority_parses(value) {
                *value = b"localhost".to_vec();
                self.rewritten = true;
            }
        }
        encode_block(&block, &fields, out);
    }

    /// Forwards bytes unchanged and stops interfering: after a rewrite h2's table is out of
    /// step with the client's, so the connection will fail there, as it should.
    fn give_up(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(raw);
        self.mode = Mode::PassThrough;
        self.decoder = None;
        self.block = None;
    }
}

fn authority_parses(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A HEADERS payload without its padding: (priority fields, header block fragment).
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (head, rest) = p.split_at_checked(5)?;
        priority = Some([head[0], head[1], head[2], head[3], head[4]]);
        p = rest;
    }
    let end = p.len().checked_sub(pad)?;
    Some((priority, &p[..end]))
}

/// Re-encodes a header list as HEADERS + CONTINUATION frames: every field a literal without
/// indexing with a literal name (RFC 7541 §6.2.2), so the receiver's dynamic table is never used.
fn encode_block(block: &Block, fields: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) {
    let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
    for (name, value) in fields {
        encoded.push(0x00);
        string(name, &mut encoded);
        string(value, &mut encoded);
    }
    let mut first = true;
    let mut chunks = encoded.chunks(MAX_FRAME - 5).peekable();
    if chunks.peek().is_none() {
        frame(
            HEADERS,
            block.flags & END_STREAM | END_HEADERS,
            block,
            block.priority,
            &[],
            out,
        );
        return;
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let end_headers = if last { END_HEADERS } else { 0 };
        if first {
            let flags = block.flags & END_STREAM | end_headers;
            frame(HEADERS, flags, block, block.priority, chunk, out);
            first = false;
        } else {
            frame(CONTINUATION, end_headers, block, None, chunk, out);
        }
    }
}

fn frame(
    kind: u8,
    flags: u8,
    block: &Block,
    prio: Option<[u8; 5]>,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    let len = body.len() + prio.map_or(0, |_| 5);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind]);
    out.push(flags | if prio.is_some() { PRIORITY } else { 0 });
    out.extend_from_slice(&block.stream.to_be_bytes());
    if let Some(p) = prio {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(body);
}

/// An HPACK string literal, not Huffman-coded (§5.2), with its length as a 7-bit-prefix integer.
fn string(s: &[u8], out: &mut Vec<u8>) {
    integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with an N-bit prefix (§5.1).
fn integer(mut n: usize, prefix: u8, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

#[cfg(test)]
#[path = "h2fix_tests.rs"]
mod tests;
