//! WebSocket (RFC 6455): the opening handshake's accept key, frame headers,
//! a message assembler (fragmentation, interleaved control frames, UTF-8
//! validation across fragments, size limits, close codes) and the frame
//! encoder. Errors carry the close code to send (1002, 1007, 1009).

use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 §1.3.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A valid `Sec-WebSocket-Key`: base64 of 16 bytes.
pub fn valid_key(key: &[u8]) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Which side of the connection is reading: servers require masked
/// frames, clients require unmasked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reading frames a client sent.
    Server,
    /// Reading frames a server sent.
    Client,
}

/// A protocol violation, with the close code to answer it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsError {
    pub code: u16,
    pub reason: &'static str,
}

const fn err(code: u16, reason: &'static str) -> WsError {
    WsError { code, reason }
}

pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_DATA: u16 = 1007;
pub const TOO_BIG: u16 = 1009;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

/// Parses a frame header; `Ok(None)` when more bytes are needed.
pub fn parse_header(buf: &[u8], role: Role) -> Result<Option<(usize, FrameHeader)>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(err(PROTOCOL_ERROR, "reserved bits set"));
    }
    let opcode = Opcode::from(b0 & 0x0f).ok_or(err(PROTOCOL_ERROR, "unknown opcode"))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(err(PROTOCOL_ERROR, "client frame not masked")),
        (Role::Client, true) => return Err(err(PROTOCOL_ERROR, "server frame masked")),
        _ => {}
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let n = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
            if n < 126 {
                return Err(err(PROTOCOL_ERROR, "length not minimally encoded"));
            }
            (n, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(err(PROTOCOL_ERROR, "length has the top bit set"));
            }
            if n < 65536 {
                return Err(err(PROTOCOL_ERROR, "length not minimally encoded"));
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(err(PROTOCOL_ERROR, "fragmented or long control frame"));
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some((
        at,
        FrameHeader {
            fin,
            opcode,
            mask,
            len,
        },
    )))
}

/// XORs `data` with `mask`, `offset` bytes into the payload. Works a word
/// at a time; `apply_mask_reference` is the byte-wise definition.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = [0u8; 4];
    for (i, b) in m.iter_mut().enumerate() {
        *b = mask[(offset + i) % 4];
    }
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(b) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// The byte-wise masking of RFC 6455 §5.3 (the reference for `apply_mask`).
pub fn apply_mask_reference(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) % 4];
    }
}

/// Appends one frame.
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let m = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        out.push(m | n as u8);
    } else if n < 65536 {
        out.push(m | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], k, 0);
        }
        None => out.extend_from_slice(payload),
    }
}

/// Appends a close frame with a code and reason.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    let mut p = code.to_be_bytes().to_vec();
    let mut r = reason;
    while r.len() > 123 {
        let mut cut = 123;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r = &r[..cut];
    }
    p.extend_from_slice(r.as_bytes());
    write_frame(out, true, Opcode::Close, &p, mask);
}

/// True for codes an endpoint may send in a close frame (RFC 6455 §7.4).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Largest payload of a control frame (ping, pong, close), RFC 6455 §5.5.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest close reason: the close payload (2-byte code + reason) of a
/// control frame is at most 125 bytes (RFC 6455 §5.5).
pub const MAX_CLOSE_REASON: usize = 123;

/// Checks a close code someone asks corepin to send (a publish): the
/// codes of `valid_close_code`, refused with the rule that forbids the rest.
/// 1000-1003 and 1007-1014 are defined (1012-1014 by the IANA registry),
/// 3000-3999 are registered and 4000-4999 private use (§7.4.2).
pub fn check_close_code(code: u64) -> Result<u16, String> {
    match code {
        c if c < 1000 => Err(format!("{c} is not a close code (0-999 are unused, RFC 6455 §7.4.2)")),
        1004 => Err("1004 is reserved (RFC 6455 §7.4.1)".into()),
        c @ (1005 | 1006 | 1015) => Err(format!(
            "{c} must never be sent in a close frame (RFC 6455 §7.4.1)"
        )),
        c @ 1016..=2999 => Err(format!(
            "{c} is reserved for the WebSocket protocol (RFC 6455 §7.4.2); applications use 4000-4999"
        )),
        c if c > 4999 => Err(format!("{c} is not a close code (1000-4999)")),
        c => Ok(c as u16),
    }
}

/// Checks a close reason: at most `MAX_CLOSE_REASON` bytes (a `&str` is
/// UTF-8 already, as the frame requires).
pub fn check_close_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_CLOSE_REASON {
        return Err(format!(
            "is {} bytes; a close reason is at most {MAX_CLOSE_REASON} (RFC 6455 §5.5)",
            reason.len()
        ));
    }
    Ok(())
}

/// What a data message carries: text or binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

/// What the assembler found: a whole data message, or a control
/// frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: code (1005 when none was given) and reason.
    Close(u16, String),
}

/// Reassembles messages from frames read in any pieces.
#[derive(Debug)]
pub struct Reader {
    role: Role,
    max_message: usize,
    /// The frame being read: header and payload bytes still expected.
    frame: Option<(FrameHeader, u64, usize)>,
    /// The message in progress (kind) and its bytes so far.
    message: Option<MessageKind>,
    data: Vec<u8>,
    control: Vec<u8>,
    /// Bytes of `data` known to be valid UTF-8.
    valid_upto: usize,
}

impl Reader {
    pub fn new(role: Role, max_message: usize) -> Self {
        Reader {
            role,
            max_message,
            frame: None,
            message: None,
            data: Vec::new(),
            control: Vec::new(),
            valid_upto: 0,
        }
    }

    /// Bytes held for partial messages (for memory accounting).
    pub fn buffered(&self) -> usize {
        self.data.capacity() + self.control.capacity()
    }

    /// Consumes input; returns bytes consumed and, when one completed, an
    /// event. Call again with the rest while it consumes something.
    pub fn read(&mut self, buf: &[u8]) -> Result<(usize, Option<Received>), WsError> {
        let mut used = 0;
        loop {
            let Some((h, left, payload_off)) = self.frame else {
                let Some((n, h)) = parse_header(&buf[used..], self.role)? else {
                    return Ok((used, None));
                };
                self.start_frame(&h)?;
                used += n;
                self.frame = Some((h, h.len, 0));
                continue;
            };
            let take = (buf.len() - used).min(usize::try_from(left).unwrap_or(usize::MAX));
            let chunk = &buf[used..used + take];
            let target = if h.opcode.is_control() {
                &mut self.control
            } else {
                &mut self.data
            };
            let start = target.len();
            target.extend_from_slice(chunk);
            if let Some(m) = h.mask {
                apply_mask(&mut target[start..], m, payload_off);
            }
            used += take;
            let left = left - take as u64;
            if !h.opcode.is_control() && self.message == Some(MessageKind::Text) {
                self.check_utf8(false)?;
            }
            if left > 0 {
                self.frame = Some((h, left, payload_off + take));
                return Ok((used, None));
            }
            self.frame = None;
            if let Some(ev) = self.finish_frame(&h)? {
                return Ok((used, Some(ev)));
            }
            if used == buf.len() {
                return Ok((used, None));
            }
        }
    }

    fn start_frame(&mut self, h: &FrameHeader) -> Result<(), WsError> {
        match h.opcode {
            Opcode::Continuation if self.message.is_none() => {
                Err(err(PROTOCOL_ERROR, "continuation without a message"))
            }
            Opcode::Text | Opcode::Binary if self.message.is_some() => {
                Err(err(PROTOCOL_ERROR, "new message inside a fragmented one"))
            }
            Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                if self.message.is_none() {
                    self.message = Some(if h.opcode == Opcode::Text {
                        MessageKind::Text
                    } else {
                        MessageKind::Binary
                    });
                    self.valid_upto = 0;
                }
                if self.data.len() as u64 + h.len > self.max_message as u64 {
                    return Err(err(TOO_BIG, "message too big"));
                }
                Ok(())
            }
            _ => {
                self.control.clear();
                Ok(())
            }
        }
    }

    /// Checks new text bytes; an incomplete sequence at the end is allowed
    /// until the message's last fragment.
    fn check_utf8(&mut self, last: bool) -> Result<(), WsError> {
        match std::str::from_utf8(&self.data[self.valid_upto..]) {
            Ok(_) => self.valid_upto = self.data.len(),
            Err(e) => {
                if e.error_len().is_some() || last {
                    return Err(err(INVALID_DATA, "invalid UTF-8 in a text message"));
                }
                self.valid_upto += e.valid_up_to();
            }
        }
        Ok(())
    }

    fn finish_frame(&mut self, h: &FrameHeader) -> Result<Option<Received>, WsError> {
        Ok(match h.opcode {
            Opcode::Ping => Some(Received::Ping(std::mem::take(&mut self.control))),
            Opcode::Pong => Some(Received::Pong(std::mem::take(&mut self.control))),
            Opcode::Close => {
                let p = std::mem::take(&mut self.control);
                match p.len() {
                    0 => Some(Received::Close(1005, String::new())),
                    1 => return Err(err(PROTOCOL_ERROR, "close payload of one byte")),
                    _ => {
                        let code = u16::from_be_bytes([p[0], p[1]]);
                        if !valid_close_code(code) {
                            return Err(err(PROTOCOL_ERROR, "invalid close code"));
                        }
                        let reason = String::from_utf8(p[2..].to_vec())
                            .map_err(|_| err(INVALID_DATA, "invalid UTF-8 in close reason"))?;
                        Some(Received::Close(code, reason))
                    }
                }
            }
            _ if !h.fin => None,
            _ => {
                let kind = self.message.take().unwrap_or(MessageKind::Binary);
                if kind == MessageKind::Text {
                    self.check_utf8(true)?;
                }
                let data = std::mem::take(&mut self.data);
                Some(Received::Message(kind, data))
            }
        })
    }
}

/// Reads `input` fed in two pieces split at `cut`: the events, or the
/// first error. Test and fuzz helper.
#[doc(hidden)]
pub fn read_split(
    role: Role,
    input: &[u8],
    cut: usize,
    max: usize,
) -> Result<Vec<Received>, WsError> {
    let cut = cut.min(input.len());
    let mut r = Reader::new(role, max);
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for piece in [&input[..cut], &input[cut..]] {
        pending.extend_from_slice(piece);
        loop {
            let (n, ev) = r.read(&pending)?;
            assert!(n <= pending.len(), "consumed more than given");
            pending.drain(..n);
            if let Some(e) = ev {
                out.push(e);
                continue;
            }
            if n == 0 || pending.is_empty() {
                break;
            }
        }
    }
    Ok(out)
}

/// Fuzz invariant: the reader gives the same events (or error) however
/// its input is split.
#[doc(hidden)]
pub fn check_split_invariant(role: Role, input: &[u8], cut: usize) {
    let whole = read_split(role, input, input.len(), 4096);
    let cut = if input.is_empty() {
        0
    } else {
        cut % (input.len() + 1)
    };
    assert_eq!(
        whole,
        read_split(role, input, cut, 4096),
        "split at {cut} changed the result"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_key() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"c2hvcnQ="));
    }

    fn read_all(
        role: Role,
        input: &[u8],
        cut: usize,
        max: usize,
    ) -> Result<Vec<Received>, WsError> {
        read_split(role, input, cut, max)
    }

    fn check(role: Role, input: &[u8], max: usize, want: Result<Vec<Received>, WsError>) {
        for cut in 0..=input.len() {
            assert_eq!(read_all(role, input, cut, max), want, "cut at {cut}");
        }
    }

    #[test]
    fn rfc_examples() {
        // RFC 6455 §5.7: unmasked "Hello", masked "Hello", fragmented, ping.
        let hello = Received::Message(MessageKind::Text, b"Hello".to_vec());
        check(
            Role::Client,
            &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
            1 << 20,
            Ok(vec![hello.clone()]),
        );
        check(
            Role::Server,
            &[
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ],
            1 << 20,
            Ok(vec![hello.clone()]),
        );
        check(
            Role::Client,
            &[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f],
            1 << 20,
            Ok(vec![hello]),
        );
        check(
            Role::Client,
            &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
            1 << 20,
            Ok(vec![Received::Ping(b"Hello".to_vec())]),
        );
        // 256 bytes binary (16-bit length) and 64 KiB (64-bit length).
        let mut f = vec![0x82, 0x7e, 0x01, 0x00];
        f.extend_from_slice(&[7u8; 256]);
        check(
            Role::Client,
            &f,
            1 << 20,
            Ok(vec![Received::Message(MessageKind::Binary, vec![7u8; 256])]),
        );
        let mut big = Vec::new();
        write_frame(&mut big, true, Opcode::Binary, &vec![9u8; 65536], None);
        assert_eq!(&big[..10], &[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        let r = read_all(Role::Client, &big, 5, 1 << 20).expect("valid");
        assert_eq!(
            r,
            vec![Received::Message(MessageKind::Binary, vec![9u8; 65536])]
        );
    }

    #[test]
    fn fragments_with_interleaved_control_and_utf8_across_fragments() {
        let mut f = Vec::new();
        let euro = "€".as_bytes(); // 3 bytes, split across fragments
        write_frame(
            &mut f,
            false,
            Opcode::Text,
            &[b'a', euro[0]],
            Some([1, 2, 3, 4]),
        );
        write_frame(&mut f, true, Opcode::Ping, b"p", Some([5, 6, 7, 8]));
        write_frame(
            &mut f,
            false,
            Opcode::Continuation,
            &euro[1..],
            Some([9, 9, 9, 9]),
        );
        write_frame(&mut f, true, Opcode::Continuation, b"z", Some([0, 0, 0, 1]));
        write_close(&mut f, 1000, "bye", Some([1, 1, 1, 1]));
        check(
            Role::Server,
            &f,
            1 << 20,
            Ok(vec![
                Received::Ping(b"p".to_vec()),
                Received::Message(MessageKind::Text, "a€z".as_bytes().to_vec()),
                Received::Close(1000, "bye".into()),
            ]),
        );
    }

    #[test]
    fn close_codes_a_publish_may_send() {
        for (code, ok) in [
            (0, false),
            (999, false),
            (1000, true),
            (1001, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1011, true),
            (1014, true),
            (1015, false),
            (1016, false),
            (2999, false),
            (3000, true),
            (4000, true),
            (4999, true),
            (5000, false),
            (65536 + 1000, false),
        ] {
            assert_eq!(check_close_code(code).is_ok(), ok, "{code}");
        }
        // The same set as the codes accepted from peers.
        for c in 0..=6000u16 {
            assert_eq!(
                check_close_code(u64::from(c)).is_ok(),
                valid_close_code(c),
                "{c}"
            );
        }
        assert!(check_close_code(1005)
            .unwrap_err()
            .contains("never be sent"));
        assert!(check_close_reason(&"é".repeat(61)).is_ok(), "122 bytes");
        assert!(check_close_reason(&"x".repeat(123)).is_ok());
        assert!(check_close_reason(&"x".repeat(124))
            .unwrap_err()
            .contains("124 bytes"));
    }

    #[test]
    fn violations_map_to_close_codes() {
        let m = Some([1, 2, 3, 4]);
        let frame = |fin, op, p: &[u8], mask| {
            let mut f = Vec::new();
            write_frame(&mut f, fin, op, p, mask);
            f
        };
        let cases: Vec<(Vec<u8>, Role, u16)> = vec![
            (
                frame(true, Opcode::Text, b"x", None),
                Role::Server,
                PROTOCOL_ERROR,
            ),
            (
                frame(true, Opcode::Text, b"x", m),
                Role::Client,
                PROTOCOL_ERROR,
            ),
            (vec![0xc1, 0x80, 0, 0, 0, 0], Role::Server, PROTOCOL_ERROR),
            (vec![0x83, 0x80, 0, 0, 0, 0], Role::Server, PROTOCOL_ERROR),
            (
                frame(false, Opcode::Ping, b"", m),
                Role::Server,
                PROTOCOL_ERROR,
            ),
            (
                frame(true, Opcode::Ping, &[0u8; 126], m),
                Role::Server,
                PROTOCOL_ERROR,
            ),
            (
                frame(true, Opcode::Continuation, b"x", m),
                Role::Server,
                PROTOCOL_ERROR,
            ),
            (
                [
                    frame(false, Opcode::Text, b"x", m),
                    frame(true, Opcode::Text, b"y", m),
                ]
                .concat(),
                Role::Server,
                PROTOCOL_ERROR,
            ),
            (
                frame(true, Opcode::Text, &[0xff, 0xfe], m),
                Role::Server,
                INVALID_DATA,
            ),
            (
                frame(true, Opcode::Text, &[0xe2, 0x82], m),
                Role::Server,
                INVALID_DATA,
            ),
            (
                frame(true, Opcode::Close, &[3, 0xe8, 0xff], m),
                Role::Server,
                INVALID_DATA,
            ),
            (
                frame(true, Opcode::Close, &[3], m),
                Role::Server,
                PROTOCOL_ERROR,
            ),
            (
                frame(true, Opcode::Close, &[0x03, 0xed], m),
                Role::Server,
                PROTOCOL_ERROR,
            ),
            (
                frame(true, Opcode::Binary, &[0u8; 2000], m),
                Role::Server,
                TOO_BIG,
            ),
            (
                [
                    frame(false, Opcode::Binary, &[0u8; 600], m),
                    frame(true, Opcode::Continuation, &[0u8; 600], m),
                ]
                .concat(),
                Role::Server,
                TOO_BIG,
            ),
            (
                vec![0x82, 0xfe, 0x00, 0x05, 0, 0, 0, 0],
                Role::Server,
                PROTOCOL_ERROR,
            ),
        ];
        for (input, role, code) in cases {
            let got = read_all(role, &input, input.len(), 1024);
            assert_eq!(got.map_err(|e| e.code), Err(code), "{input:02x?}");
        }
    }

    /// A deterministic stand-in for the fuzz target over generated frames.
    #[test]
    fn generated_frames_keep_the_split_invariant() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        for _ in 0..2000 {
            let mut input = Vec::new();
            for _ in 0..(seed % 4) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let ops = [
                    Opcode::Text,
                    Opcode::Binary,
                    Opcode::Continuation,
                    Opcode::Ping,
                    Opcode::Close,
                ];
                let op = ops[(seed % 5) as usize];
                let len = (seed >> 8) as usize % 20;
                let payload: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
                write_frame(
                    &mut input,
                    seed & 64 == 0,
                    op,
                    &payload,
                    Some([seed as u8, 2, 3, 4]),
                );
            }
            if seed & 3 == 0 {
                input.push((seed >> 16) as u8);
            }
            for cut in 0..=input.len() {
                check_split_invariant(Role::Server, &input, cut);
            }
        }
    }

    #[test]
    fn fast_mask_matches_reference() {
        let mut seed = 12345u64;
        for len in 0..70 {
            for offset in 0..4 {
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (seed >> 33) as u8
                    })
                    .collect();
                let mask = [
                    (seed >> 8) as u8,
                    (seed >> 16) as u8,
                    (seed >> 24) as u8,
                    0x5a,
                ];
                let (mut a, mut b) = (data.clone(), data);
                apply_mask(&mut a, mask, offset);
                apply_mask_reference(&mut b, mask, offset);
                assert_eq!(a, b, "len {len} offset {offset}");
            }
        }
    }
}
