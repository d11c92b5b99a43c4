//! Client side of HTTP/1.1 responses for the load tool: heads parsed with
//! corepin's sans-IO codec, bodies delimited by Content-Length, chunked
//! framing or the connection's end, reported as events; and WebSocket
//! events once a connection is upgraded.

use corepin::codec::chunked::ChunkedDecoder;
use corepin::codec::http1::{parse_response, BodyKind, HeadLimits};
use corepin::codec::ws::{Event, Reader, WsError};

/// Feeds `data` to a WebSocket reader, after what `pending` kept of an
/// unfinished frame header, and calls `f` for each event until it returns
/// false; what the reader could not use yet is left in `pending`. Nothing
/// is copied while input arrives in whole frames.
pub fn ws_events(
    reader: &mut Reader,
    pending: &mut Vec<u8>,
    data: &[u8],
    f: &mut dyn FnMut(Event) -> bool,
) -> Result<(), WsError> {
    let joined;
    let input: &[u8] = if pending.is_empty() {
        data
    } else {
        pending.extend_from_slice(data);
        joined = std::mem::take(pending);
        &joined
    };
    let mut pos = 0;
    loop {
        let (n, ev) = reader.read(&input[pos..])?;
        pos += n;
        let more = match ev {
            Some(e) => f(e),
            None => n > 0,
        };
        if !more {
            break;
        }
    }
    // Kept also after `f` stopped: the caller may read on.
    pending.extend_from_slice(&input[pos..]);
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
pub enum Ev<'a> {
    /// A final response head (1xx other than 101 are skipped).
    Head(u16),
    /// Body bytes; after a 101 head, the upgraded connection's bytes.
    Body(&'a [u8]),
    /// The response is complete (the next bytes start another).
    End,
}

enum Body {
    Head,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Upgraded,
}

pub struct ResponseReader {
    buf: Vec<u8>,
    body: Body,
    keep_alive: bool,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    pub fn new() -> ResponseReader {
        ResponseReader {
            buf: Vec::new(),
            body: Body::Head,
            keep_alive: true,
        }
    }

    /// Whether the last response head allows another request on the
    /// same connection.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Feeds bytes read from the connection; calls `f` for what they
    /// complete. An error names what was malformed.
    pub fn feed(&mut self, data: &[u8], f: &mut dyn FnMut(Ev<'_>)) -> Result<(), String> {
        // Body bytes are handed out straight from `data` when nothing is
        // buffered, which is the common case for streams.
        if self.buf.is_empty() && !matches!(self.body, Body::Head) {
            let used = self.body_bytes(data, f)?;
            if used == data.len() {
                return Ok(());
            }
            self.buf.extend_from_slice(&data[used..]);
        } else {
            self.buf.extend_from_slice(data);
        }
        let buf = std::mem::take(&mut self.buf);
        let mut pos = 0;
        while pos < buf.len() {
            if matches!(self.body, Body::Head) {
                let parsed = parse_response(&buf[pos..], &HeadLimits::default(), false)
                    .map_err(|e| format!("bad response head: {}", e.reason()))?;
                let Some((n, head)) = parsed else { break };
                pos += n;
                if (100..200).contains(&head.status) && head.status != 101 {
                    continue;
                }
                self.keep_alive = head.keep_alive;
                f(Ev::Head(head.status));
                self.body = if head.status == 101 {
                    Body::Upgraded
                } else {
                    match head.body {
                        BodyKind::Empty | BodyKind::Length(0) => {
                            f(Ev::End);
                            Body::Head
                        }
                        BodyKind::Length(n) => Body::Length(n),
                        BodyKind::Chunked => Body::Chunked(ChunkedDecoder::new()),
                        BodyKind::UntilClose => Body::UntilClose,
                    }
                };
                continue;
            }
            let used = self.body_bytes(&buf[pos..], f)?;
            if used == 0 {
                break;
            }
            pos += used;
        }
        self.buf = buf;
        self.buf.drain(..pos);
        Ok(())
    }

    /// Consumes body bytes from `data` up to the end of the body; returns
    /// how many were used (0 when more input is needed).
    fn body_bytes(&mut self, data: &[u8], f: &mut dyn FnMut(Ev<'_>)) -> Result<usize, String> {
        match &mut self.body {
            Body::Head => Ok(0),
            Body::UntilClose | Body::Upgraded => {
                if !data.is_empty() {
                    f(Ev::Body(data));
                }
                Ok(data.len())
            }
            Body::Length(left) => {
                let take = (*left).min(data.len() as u64) as usize;
                if take > 0 {
                    f(Ev::Body(&data[..take]));
                }
                *left -= take as u64;
                if *left == 0 {
                    self.body = Body::Head;
                    f(Ev::End);
                }
                Ok(take)
            }
            Body::Chunked(d) => {
                let mut used = 0;
                while used < data.len() {
                    let r = d
                        .decode(&data[used..])
                        .map_err(|e| e.reason().to_string())?;
                    used += r.consumed;
                    if !r.data.is_empty() {
                        f(Ev::Body(r.data));
                    }
                    if r.done {
                        self.body = Body::Head;
                        f(Ev::End);
                        break;
                    }
                    if r.consumed == 0 {
                        break;
                    }
                }
                Ok(used)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(input: &[u8], cuts: &[usize]) -> Result<(Vec<String>, bool), String> {
        let mut r = ResponseReader::new();
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            r.feed(&input[last..c], &mut |e| {
                out.push(match e {
                    Ev::Head(s) => format!("H{s}"),
                    Ev::Body(b) => format!("B{}", String::from_utf8_lossy(b)),
                    Ev::End => "E".into(),
                })
            })?;
            last = c;
        }
        // Adjacent body pieces are one body whatever the split.
        let mut joined: Vec<String> = Vec::new();
        for e in out {
            match (joined.last_mut(), e.strip_prefix('B')) {
                (Some(prev), Some(more)) if prev.starts_with('B') => prev.push_str(more),
                _ => joined.push(e),
            }
        }
        Ok((joined, r.keep_alive()))
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], &[&str], bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                &["H200", "Bhello", "E"],
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
                &["H204", "E", "H200", "Bx", "E"],
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                &["H200", "Babcde", "E"],
                true,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                &["H200", "Bok", "E"],
                false,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
                &["H101", "B?\u{2}hi"],
                true,
            ),
            (
                b"HTTP/1.0 200 OK\r\n\r\nuntil close",
                &["H200", "Buntil close"],
                false,
            ),
        ];
        for (input, want, keep) in cases {
            for cut in 0..=input.len() {
                let (got, k) = events(input, &[cut]).expect("parses");
                let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
                // The 101 case's frame bytes are not UTF-8: compare lossily.
                let got: Vec<String> = got.iter().map(|s| s.replace('\u{fffd}', "?")).collect();
                assert_eq!(got, want, "cut {cut}");
                assert_eq!(k, *keep, "cut {cut}");
            }
        }
    }

    #[test]
    fn ws_events_survive_any_split_and_stop_when_asked() {
        use corepin::codec::ws::{write_frame, Kind, Opcode, Role};
        let mut input = Vec::new();
        write_frame(&mut input, true, Opcode::Text, b"M0,1;", None);
        write_frame(&mut input, true, Opcode::Ping, b"p", None);
        write_frame(&mut input, true, Opcode::Binary, &[9; 300], None);
        for cut in 0..=input.len() {
            let mut reader = Reader::new(Role::Client, 1 << 20);
            let (mut pending, mut got) = (Vec::new(), Vec::new());
            for part in [&input[..cut], &input[cut..]] {
                ws_events(&mut reader, &mut pending, part, &mut |e| {
                    got.push(e);
                    true
                })
                .expect("valid frames");
            }
            assert_eq!(got.len(), 3, "cut {cut}");
            assert_eq!(got[0], Event::Message(Kind::Text, b"M0,1;".to_vec()));
            assert_eq!(got[2], Event::Message(Kind::Binary, vec![9; 300]));
        }
        let mut reader = Reader::new(Role::Client, 1 << 20);
        let (mut pending, mut seen) = (Vec::new(), 0);
        ws_events(&mut reader, &mut pending, &input, &mut |_| {
            seen += 1;
            false
        })
        .expect("valid frames");
        assert_eq!(seen, 1);
        // A server must not mask its frames.
        let mut reader = Reader::new(Role::Client, 1 << 20);
        let masked = b"\x81\x85\x01\x02\x03\x04abcde";
        assert!(ws_events(&mut reader, &mut Vec::new(), masked, &mut |_| true).is_err());
    }

    #[test]
    fn malformed_heads_and_chunks_are_errors() {
        assert!(events(b"HTTP/1.1 abc\r\n\r\n", &[]).is_err());
        assert!(events(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            &[]
        )
        .is_err());
    }
}
