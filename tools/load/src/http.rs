//! Client side of HTTP/1.1 responses for the load tool: heads parsed with
//! corepin's sans-IO codec, bodies delimited by Content-Length, chunked
//! framing or the connection's end, reported as events; and WebSocket
//! events once a connection is upgraded.

use corepin::codec::chunked::ChunkedDecoder;
use corepin::codec::http1::{parse_response, BodyKind, HeadLimits};
use corepin::codec::ws::{Reader, Received, WsError};

/// Feeds `data` to a WebSocket reader, after what `pending` kept of an
/// unfinished frame header, and calls `f` for each event until it returns
/// false; what the reader could not use yet is left in `pending`. Nothing
/// is copied while input arrives in whole frames.
pub fn ws_events(
    reader: &mut Reader,
    pending: &mut Vec<u8>,
    data: &[u8],
    f: &mut dyn FnMut(Received) -> bool,
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

/// A response event with its bytes copied, for comparing two readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedEv {
    Head(u16),
    /// Adjacent body pieces joined: a split may cut a body anywhere.
    Body(Vec<u8>),
    End,
}

/// `input` cut at the offsets in `cuts` (out-of-order or too large offsets
/// give empty pieces), in order, covering it all.
fn pieces<'a>(input: &'a [u8], cuts: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut last = 0;
    cuts.iter()
        .copied()
        .chain(std::iter::once(input.len()))
        .map(move |c| {
            let c = c.clamp(last, input.len());
            let piece = &input[last..c];
            last = c;
            piece
        })
}

/// What a fresh reader makes of `input` fed in the pieces that the offsets
/// in `cuts` mark: its events up to the end or the first error, then its
/// keep-alive verdict or that error.
pub fn read_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<OwnedEv>, Result<bool, String>) {
    let mut reader = ResponseReader::new();
    let mut out: Vec<OwnedEv> = Vec::new();
    for piece in pieces(input, cuts) {
        let fed = reader.feed(piece, &mut |e| match (e, out.last_mut()) {
            (Ev::Body(b), Some(OwnedEv::Body(prev))) => prev.extend_from_slice(b),
            (Ev::Body(b), _) => out.push(OwnedEv::Body(b.to_vec())),
            (Ev::Head(status), _) => out.push(OwnedEv::Head(status)),
            (Ev::End, _) => out.push(OwnedEv::End),
        });
        if let Err(e) = fed {
            return (out, Err(e));
        }
    }
    (out, Ok(reader.keep_alive()))
}

/// Panics unless reading `input` whole and split at `cut` (taken modulo
/// the length + 1) gives the same events, and both either fail or agree
/// on keep-alive. The unit tests and the fuzz target check this.
pub fn check_split_invariant(input: &[u8], cut: usize) {
    let cut = cut % (input.len() + 1);
    let (whole, whole_end) = read_in_pieces(input, &[]);
    let (split, split_end) = read_in_pieces(input, &[cut]);
    assert_eq!(whole, split, "events differ when split at {cut}");
    match (whole_end, split_end) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "keep-alive differs when split at {cut}"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("split at {cut}: whole {a:?}, split {b:?}"),
    }
}

/// The WebSocket events a client-role reader finds in `input` fed through
/// [`ws_events`] in the pieces that the offsets in `cuts` mark, up to the
/// first error; and whether there was one.
pub fn ws_events_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<Received>, bool) {
    let mut reader = Reader::new(corepin::codec::ws::Role::Client, 1 << 20);
    let (mut pending, mut got) = (Vec::new(), Vec::new());
    for piece in pieces(input, cuts) {
        let fed = ws_events(&mut reader, &mut pending, piece, &mut |e| {
            got.push(e);
            true
        });
        if fed.is_err() {
            return (got, true);
        }
    }
    (got, false)
}

/// Panics unless [`ws_events`] finds the same events and the same failure
/// in `input` whole and split at `cut` (modulo the length + 1).
pub fn check_ws_split_invariant(input: &[u8], cut: usize) {
    let cut = cut % (input.len() + 1);
    assert_eq!(
        ws_events_in_pieces(input, &[]),
        ws_events_in_pieces(input, &[cut]),
        "WebSocket events differ when split at {cut}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use corepin::codec::ws::{write_frame, MessageKind, Opcode};
    use OwnedEv::{Body as B, End as E, Head as H};

    fn b(s: &[u8]) -> OwnedEv {
        B(s.to_vec())
    }

    #[test]
    fn table() {
        let cases: Vec<(&[u8], Vec<OwnedEv>, bool)> = vec![
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                vec![H(200), b(b"hello"), E],
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
                vec![H(204), E, H(200), b(b"x"), E],
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                vec![H(200), b(b"abcde"), E],
                true,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                vec![H(200), b(b"ok"), E],
                false,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
                vec![H(101), b(b"\x81\x02hi")],
                true,
            ),
            (
                b"HTTP/1.0 200 OK\r\n\r\nuntil close",
                vec![H(200), b(b"until close")],
                false,
            ),
        ];
        for (input, want, keep) in &cases {
            for cut in 0..=input.len() {
                assert_eq!(
                    read_in_pieces(input, &[cut]),
                    (want.clone(), Ok(*keep)),
                    "cut {cut}"
                );
                check_split_invariant(input, cut);
            }
        }
    }

    #[test]
    fn ws_events_survive_any_split_and_stop_when_asked() {
        let mut input = Vec::new();
        write_frame(&mut input, true, Opcode::Text, b"M0,1;", None);
        write_frame(&mut input, true, Opcode::Ping, b"p", None);
        write_frame(&mut input, true, Opcode::Binary, &[9; 300], None);
        for cut in 0..=input.len() {
            let (got, failed) = ws_events_in_pieces(&input, &[cut]);
            assert!(!failed, "cut {cut}");
            assert_eq!(got.len(), 3, "cut {cut}");
            assert_eq!(
                got[0],
                Received::Message(MessageKind::Text, b"M0,1;".to_vec())
            );
            assert_eq!(got[2], Received::Message(MessageKind::Binary, vec![9; 300]));
            check_ws_split_invariant(&input, cut);
        }
        let mut reader = Reader::new(corepin::codec::ws::Role::Client, 1 << 20);
        let (mut pending, mut seen) = (Vec::new(), 0);
        ws_events(&mut reader, &mut pending, &input, &mut |_| {
            seen += 1;
            false
        })
        .expect("valid frames");
        assert_eq!(seen, 1);
        // A server must not mask its frames.
        let masked = b"\x81\x85\x01\x02\x03\x04abcde";
        assert!(ws_events_in_pieces(masked, &[]).1);
        for cut in 0..=masked.len() {
            check_ws_split_invariant(masked, cut);
        }
    }

    #[test]
    fn malformed_heads_and_chunks_are_errors() {
        let bad: [&[u8]; 2] = [
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ];
        for input in bad {
            assert!(read_in_pieces(input, &[]).1.is_err());
            for cut in 0..=input.len() {
                check_split_invariant(input, cut);
            }
        }
    }
}
