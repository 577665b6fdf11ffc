use loona_hpack::{Decoder, Encoder};

use super::*;

const SOCKET: &[u8] = b"%2Ftmp%2F.tmpAbC%2Fbroker.sock";

fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn request(authority: &[u8], path: &[u8]) -> Fields {
    vec![
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":method".to_vec(), b"POST".to_vec()),
        (b":authority".to_vec(), authority.to_vec()),
        (b":path".to_vec(), path.to_vec()),
        (b"te".to_vec(), b"trailers".to_vec()),
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
    ]
}

/// A client connection: preface, SETTINGS, then one request per `(stream, fields)` with a DATA
/// frame after each, encoded by a real HPACK encoder (which uses its dynamic table).
fn client(requests: &[(u32, Fields)]) -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut out = PREFACE.to_vec();
    out.extend(frame_bytes(0x4, 0, 0, &[]));
    for (stream, fields) in requests {
        let block = enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
        out.extend(frame_bytes(HEADERS, END_HEADERS, *stream, &block));
        out.extend(frame_bytes(0x0, END_STREAM, *stream, b"\0\0\0\0\x02hi"));
    }
    out
}

/// What h2 would decode from the adapter's output: each header block's fields.
fn server_view(bytes: &[u8]) -> Vec<Fields> {
    assert!(bytes.starts_with(PREFACE));
    let mut dec = Decoder::new();
    let mut at = PREFACE.len();
    let mut blocks = Vec::new();
    let mut pending = Vec::new();
    while at < bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
        let payload = &bytes[at + 9..at + 9 + len];
        if kind == HEADERS || kind == CONTINUATION {
            let (_, fragment) = if kind == HEADERS {
                split_headers_payload(flags, payload).unwrap_or_else(|| panic!("bad frame"))
            } else {
                (None, payload)
            };
            pending.extend_from_slice(fragment);
            if flags & END_HEADERS != 0 {
                blocks.push(dec.decode(&pending).unwrap_or_else(|e| panic!("{e:?}")));
                pending.clear();
            }
        }
        at += 9 + len;
    }
    blocks
}

fn run(input: &[u8], chunk: usize) -> (Vec<u8>, bool) {
    let mut fix = AuthorityFix::default();
    let mut out = Vec::new();
    for c in input.chunks(chunk) {
        fix.feed(c, &mut out);
    }
    (out, fix.take_rewritten())
}

#[test]
fn a_parseable_authority_passes_through_byte_for_byte() {
    let input = client(&[
        (1, request(b"localhost", b"/a")),
        (3, request(b"localhost", b"/b")),
    ]);
    for chunk in [1, 7, 4096] {
        let (out, rewritten) = run(&input, chunk);
        assert_eq!(out, input, "chunk {chunk}");
        assert!(!rewritten);
    }
}

#[test]
fn a_socket_path_authority_becomes_localhost_on_every_request() {
    let input = client(&[
        (1, request(SOCKET, b"/credbroker.v1.Broker/BeginTask")),
        // The second request reuses the encoder's dynamic table entries.
        (3, request(SOCKET, b"/credbroker.v1.Broker/EndTask")),
    ]);
    for chunk in [1, 5, 4096] {
        let (out, rewritten) = run(&input, chunk);
        assert!(rewritten);
        let blocks = server_view(&out);
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            blocks[0],
            request(b"localhost", b"/credbroker.v1.Broker/BeginTask")
        );
        assert_eq!(
            blocks[1],
            request(b"localhost", b"/credbroker.v1.Broker/EndTask")
        );
        // DATA frames are untouched.
        assert_eq!(
            out.windows(7).filter(|w| *w == b"\0\0\0\0\x02hi").count(),
            2,
            "both DATA payloads forwarded"
        );
    }
}

#[test]
fn padding_priority_and_continuations_are_understood() {
    let mut enc = Encoder::new();
    let block = enc.encode(request(SOCKET, b"/x").iter().map(|(n, v)| (&n[..], &v[..])));
    let (head, tail) = block.split_at(block.len() / 2);
    let mut payload = vec![3u8];
    payload.extend_from_slice(&[0, 0, 0, 0, 16]);
    payload.extend_from_slice(head);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame_bytes(HEADERS, PADDED | PRIORITY, 1, &payload));
    input.extend(frame_bytes(CONTINUATION, END_HEADERS, 1, tail));
    let (out, rewritten) = run(&input, 3);
    assert!(rewritten);
    assert_eq!(server_view(&out), vec![request(b"localhost", b"/x")]);
    // The priority fields survive in the first frame.
    let first = &out[PREFACE.len()..];
    assert_eq!(first[4] & PRIORITY, PRIORITY);
    assert_eq!(&first[9..14], &[0, 0, 0, 0, 16]);
}

#[test]
fn a_large_header_block_is_split_into_frames_h2_accepts() {
    let mut fields = request(SOCKET, b"/x");
    fields.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
    let input = client(&[(1, fields.clone())]);
    let (out, _) = run(&input, 4096);
    let mut at = PREFACE.len();
    while at < out.len() {
        let len =
            usize::from(out[at]) << 16 | usize::from(out[at + 1]) << 8 | usize::from(out[at + 2]);
        assert!(len <= MAX_FRAME);
        at += 9 + len;
    }
    fields[2].1 = b"localhost".to_vec();
    assert_eq!(server_view(&out), vec![fields]);
}

#[test]
fn what_it_cannot_read_is_forwarded_unchanged() {
    // Not HTTP/2 at all.
    let (out, _) = run(b"GET / HTTP/1.1\r\n\r\n", 4);
    assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    // A corrupt header block after the preface.
    let mut input = PREFACE.to_vec();
    input.extend(frame_bytes(
        HEADERS,
        END_HEADERS,
        1,
        &[0xff, 0xff, 0xff, 0xff],
    ));
    input.extend(frame_bytes(0x0, 0, 1, b"after"));
    let (out, rewritten) = run(&input, 2);
    assert_eq!(out, input);
    assert!(!rewritten);
}
