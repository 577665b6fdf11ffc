//! The broker socket's HTTP/2 byte-level parsers (`credbroker::server::h2fix`, `h2watch`): what
//! any local peer that can connect sends before a gRPC service sees it.
//!
//! Two kinds of input: raw bytes (after the connection preface, or not), and structured
//! connections (preface, SETTINGS, header blocks encoded by a real HPACK encoder with fuzzed
//! authorities and fields, DATA frames), each fed in fuzzed chunk sizes. Beyond "no panic":
//! chunking never changes what h2 gets; a connection whose first authority parses passes
//! through byte for byte; after a rewrite an HPACK decoder reading the output sees the same
//! fields, every unparseable authority replaced by `localhost`, in frames of at most 16384
//! bytes. The write-side watcher finds the same refusals however the bytes are split.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use credbroker::server::h2fix::AuthorityFix;
use credbroker::server::h2watch::FrameWatch;
use libfuzzer_sys::fuzz_target;
use loona_hpack::{Decoder, Encoder};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Arbitrary, Debug)]
struct Request {
    authority: Vec<u8>,
    path: Vec<u8>,
    extra: Vec<(Vec<u8>, Vec<u8>)>,
    data: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw { preface: bool, bytes: Vec<u8>, chunks: Vec<u8> },
    Connection { requests: Vec<Request>, chunks: Vec<u8> },
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Feeds `input` in chunks whose sizes come from `sizes` (cycled, each 1..=256).
fn feed(input: &[u8], sizes: &[u8]) -> (Vec<u8>, bool) {
    let mut fix = AuthorityFix::default();
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let n = sizes.get(i % sizes.len().max(1)).map_or(4096, |s| usize::from(*s) + 1);
        let end = (at + n).min(input.len());
        fix.feed(&input[at..end], &mut out);
        at = end;
        i += 1;
    }
    let rewritten = fix.take_rewritten();
    (out, rewritten)
}

fn parses(authority: &[u8]) -> bool {
    http::uri::Authority::try_from(authority).is_ok()
}

/// The header blocks h2 would decode from `bytes` (after the preface), and the largest frame.
fn server_view(bytes: &[u8]) -> Option<(Vec<Vec<(Vec<u8>, Vec<u8>)>>, usize)> {
    let mut dec = Decoder::new();
    let mut at = PREFACE.len();
    let (mut blocks, mut pending, mut largest) = (Vec::new(), Vec::new(), 0);
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16 | usize::from(bytes[at + 1]) << 8 | usize::from(bytes[at + 2]);
        let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
        let payload = bytes.get(at + 9..at + 9 + len)?;
        largest = largest.max(len);
        if kind == 0x1 || kind == 0x9 {
            let mut p = payload;
            if kind == 0x1 && flags & 0x20 != 0 {
                p = p.get(5..)?;
            }
            pending.extend_from_slice(p);
            if flags & 0x4 != 0 {
                blocks.push(dec.decode(&pending).ok()?);
                pending.clear();
            }
        }
        at += 9 + len;
    }
    Some((blocks, largest))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    match input {
        Input::Raw { preface, bytes, chunks } => {
            let mut stream = if preface { PREFACE.to_vec() } else { Vec::new() };
            stream.extend_from_slice(&bytes);
            let whole = feed(&stream, &[]);
            let split = feed(&stream, &chunks);
            assert_eq!(whole, split, "chunking changed the output");
            // The watcher, on the same bytes as if the daemon wrote them.
            let mut a = FrameWatch::default();
            let mut b = FrameWatch::default();
            let all = a.scan(&bytes);
            let mut parts = Vec::new();
            for c in bytes.chunks(usize::from(chunks.first().copied().unwrap_or(0)) + 1) {
                parts.extend(b.scan(c));
            }
            assert_eq!(all, parts, "the watcher depends on chunking");
        }
        Input::Connection { requests, chunks } => {
            let mut enc = Encoder::new();
            let mut stream = PREFACE.to_vec();
            frame(0x4, 0, 0, &[], &mut stream);
            let mut sent = Vec::new();
            for (i, r) in requests.iter().take(8).enumerate() {
                let id = (i as u32) * 2 + 1;
                let mut fields = vec![
                    (b":method".to_vec(), b"POST".to_vec()),
                    (b":scheme".to_vec(), b"http".to_vec()),
                    (b":authority".to_vec(), r.authority.clone()),
                    (b":path".to_vec(), r.path.clone()),
                ];
                fields.extend(r.extra.iter().take(8).cloned());
                let block = enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
                if block.len() > 16_000 {
                    return;
                }
                frame(0x1, 0x4, id, &block, &mut stream);
                frame(0x0, 0x1, id, &r.data, &mut stream);
                sent.push(fields);
            }
            let (out, rewritten) = feed(&stream, &chunks);
            assert_eq!((out.clone(), rewritten), feed(&stream, &[]), "chunking changed the output");
            let first_ok = sent.first().is_none_or(|f| {
                f.iter().filter(|(n, _)| n.as_slice() == b":authority").all(|(_, v)| parses(v))
            });
            if first_ok {
                assert_eq!(out, stream, "a parseable first authority must pass through untouched");
                return;
            }
            let (blocks, largest) = server_view(&out).unwrap_or_else(|| panic!("rewritten output is not HTTP/2"));
            assert!(largest <= 16_384, "a frame of {largest} bytes");
            assert_eq!(blocks.len(), sent.len());
            for (got, mut want) in blocks.into_iter().zip(sent) {
                for (n, v) in &mut want {
                    if n.as_slice() == b":authority" && !parses(v) {
                        *v = b"localhost".to_vec();
                    }
                }
                assert_eq!(got, want, "fields changed in the rewrite");
            }
        }
    }
});
