//! Logs what the HTTP/2 layer refuses. h2 answers a malformed request with `RST_STREAM` or
//! `GOAWAY` before any service runs and logs it only at debug level, so a client that cannot
//! talk to the daemon would otherwise leave no trace. This watches the frames the daemon writes
//! (frame headers only; payloads are skipped) and reports refusals with their error code.

const FRAME_HEADER: usize = 9;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
/// Refusals logged per connection; a client looping on a bad request is not a log flood.
const MAX_LOGGED: u32 = 5;

/// A refusal the daemon sent: which frame, which stream, which HTTP/2 error code.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub frame: &'static str,
    pub stream: u32,
    pub code: u32,
}

impl Refusal {
    /// RFC 9113 §7 names.
    pub fn code_name(&self) -> &'static str {
        match self.code {
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x9 => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            _ => "UNKNOWN",
        }
    }
}

/// The server→client half of one connection.
#[derive(Default)]
pub struct FrameWatch {
    header: Vec<u8>,
    /// Payload bytes of the current frame still to skip or collect.
    remaining: usize,
    kind: u8,
    stream: u32,
    /// The first 8 payload bytes of an RST_STREAM or GOAWAY.
    collected: Vec<u8>,
    logged: u32,
}

impl FrameWatch {
    /// Scans bytes the daemon wrote; returns the refusals completed in them.
    pub fn scan(&mut self, mut bytes: &[u8]) -> Vec<Refusal> {
        let mut found = Vec::new();
        while !bytes.is_empty() {
            if self.remaining == 0 && self.header.len() < FRAME_HEADER {
                let n = (FRAME_HEADER - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if self.header.len() < FRAME_HEADER {
                    break;
                }
                let h = &self.header;
                self.remaining =
                    usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.kind = h[3];
                self.stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                self.collected.clear();
                if self.remaining == 0 {
                    self.header.clear();
                }
                continue;
            }
            let n = self.remaining.min(bytes.len());
            if matches!(self.kind, RST_STREAM | GOAWAY) && self.collected.len() < 8 {
                let take = (8 - self.collected.len()).min(n);
                self.collected.extend_from_slice(&bytes[..take]);
            }
            bytes = &bytes[n..];
            self.remaining -= n;
            if self.remaining == 0 {
                self.header.clear();
                if let Some(r) = self.refusal() {
                    found.push(r);
                }
            }
        }
        found
    }

    fn refusal(&mut self) -> Option<Refusal> {
        let c = &self.collected;
        let (frame, code) = match self.kind {
            RST_STREAM if c.len() >= 4 => {
                ("RST_STREAM", u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            }
            GOAWAY if c.len() >= 8 => ("GOAWAY", u32::from_be_bytes([c[4], c[5], c[6], c[7]])),
            _ => return None,
        };
        // NO_ERROR and CANCEL are how streams and connections normally end.
        if code == 0x0 || code == 0x8 || self.logged >= MAX_LOGGED {
            return None;
        }
        self.logged += 1;
        Some(Refusal {
            frame,
            stream: self.stream,
            code,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn finds_refusals_across_any_chunking_and_ignores_normal_endings() {
        let mut bytes = frame(0x4, 0, &[0, 3, 0, 0, 0, 100]);
        bytes.extend(frame(0x0, 1, &[7; 300]));
        bytes.extend(frame(RST_STREAM, 1, &[0, 0, 0, 1]));
        bytes.extend(frame(RST_STREAM, 3, &[0, 0, 0, 8]));
        bytes.extend(frame(GOAWAY, 0, &[0, 0, 0, 3, 0, 0, 0, 0xb, b'x']));
        for chunk in [1, 2, 9, 10, 1000] {
            let mut w = FrameWatch::default();
            let found: Vec<Refusal> = bytes.chunks(chunk).flat_map(|c| w.scan(c)).collect();
            assert_eq!(
                found,
                vec![
                    Refusal {
                        frame: "RST_STREAM",
                        stream: 1,
                        code: 1
                    },
                    Refusal {
                        frame: "GOAWAY",
                        stream: 0,
                        code: 0xb
                    },
                ],
                "chunk {chunk}"
            );
            assert_eq!(found[0].code_name(), "PROTOCOL_ERROR");
        }
    }

    #[test]
    fn logs_a_few_per_connection_only() {
        let mut w = FrameWatch::default();
        let bytes: Vec<u8> = (0..20)
            .flat_map(|i| frame(RST_STREAM, i * 2 + 1, &[0, 0, 0, 1]))
            .collect();
        assert_eq!(w.scan(&bytes).len(), MAX_LOGGED as usize);
    }
}
