//! `Transfer-Encoding: chunked` (RFC 9112 §7.1): an incremental decoder that
//! yields body data as slices of its input, and the encoder's framing pieces.
//!
//! The decoder is strict where leniency enables request smuggling: chunk
//! lines must end in CRLF, sizes are hex without sign or whitespace inside,
//! and at most 16 digits. Chunk extensions and trailers are accepted and
//! discarded, each bounded in size.

use std::io::Write;

/// Longest chunk-size line (size, extensions, CRLF) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most hex digits in a chunk size (16 digits = 64 bits).
const MAX_SIZE_DIGITS: u8 = 16;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Not a hex digit where the size was expected, or no digits at all.
    InvalidSize,
    /// More than 16 hex digits.
    SizeOverflow,
    /// A chunk line or trailer line not ended by CRLF, or data not followed by CRLF.
    InvalidLineEnding,
    /// The chunk-size line (with extensions) is longer than `MAX_CHUNK_LINE`.
    LineTooLong,
    /// The trailer section is larger than `MAX_TRAILER_BYTES`.
    TrailersTooLarge,
}

impl ChunkError {
    pub fn reason(self) -> &'static str {
        match self {
            ChunkError::InvalidSize => "invalid chunk size",
            ChunkError::SizeOverflow => "chunk size too large",
            ChunkError::InvalidLineEnding => "invalid chunk line ending",
            ChunkError::LineTooLong => "chunk extension too long",
            ChunkError::TrailersTooLarge => "chunked trailers too large",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the size.
    Size { digits: u8, value: u64 },
    /// After the digits: optional whitespace and extensions until CR.
    Ext { value: u64 },
    /// Expecting LF after the size line's CR.
    SizeLf { value: u64 },
    /// Inside chunk data.
    Data { remaining: u64 },
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// In the trailer section; `line_empty` is true at the start of a line.
    Trailer { line_empty: bool },
    /// Expecting LF of a trailer line.
    TrailerLf { line_empty: bool },
    /// The terminating empty line has been read.
    Done,
}

/// What one `decode` call found.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Bytes of input consumed (framing and data).
    pub consumed: usize,
    /// Body data found, a slice of the input (may be empty).
    pub data: &'a [u8],
    /// The body is complete; input after `consumed` belongs to the next message.
    pub done: bool,
}

/// Incremental decoder; feed it input as it arrives.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size {
                digits: 0,
                value: 0,
            },
            line_len: 0,
            trailer_len: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `input` until it reaches data, runs out of input
    /// or completes. Returns at most one data slice per call; callers loop
    /// while `consumed < input.len()` and not `done`.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<'a>, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Data { remaining } => {
                    let take =
                        (input.len() - i).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok(Decoded {
                        consumed: i + take,
                        data: &input[i..i + take],
                        done: false,
                    });
                }
                State::Size { digits, value } => {
                    self.bump_line()?;
                    if let Some(d) = hex_value(b) {
                        if digits == MAX_SIZE_DIGITS {
                            return Err(ChunkError::SizeOverflow);
                        }
                        self.state = State::Size {
                            digits: digits + 1,
                            value: (value << 4) | u64::from(d),
                        };
                    } else if digits == 0 {
                        return Err(ChunkError::InvalidSize);
                    } else {
                        self.state = self.after_size(b, value)?;
                    }
                }
                State::Ext { value } => {
                    self.bump_line()?;
                    self.state = match b {
                        b'\r' => State::SizeLf { value },
                        b'\n' => return Err(ChunkError::InvalidLineEnding),
                        _ => State::Ext { value },
                    };
                }
                State::SizeLf { value } => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.line_len = 0;
                    self.state = if value == 0 {
                        State::Trailer { line_empty: true }
                    } else {
                        State::Data { remaining: value }
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.state = State::Size {
                        digits: 0,
                        value: 0,
                    };
                }
                State::Trailer { line_empty } => {
                    self.bump_trailer()?;
                    self.state = match b {
                        b'\r' => State::TrailerLf { line_empty },
                        b'\n' => return Err(ChunkError::InvalidLineEnding),
                        _ => State::Trailer { line_empty: false },
                    };
                }
                State::TrailerLf { line_empty } => {
                    self.bump_trailer()?;
                    if b != b'\n' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    if line_empty {
                        self.state = State::Done;
                        return Ok(Decoded {
                            consumed: i + 1,
                            data: &[],
                            done: true,
                        });
                    }
                    self.state = State::Trailer { line_empty: true };
                }
                State::Done => break,
            }
            i += 1;
        }
        Ok(Decoded {
            consumed: i,
            data: &[],
            done: self.state == State::Done,
        })
    }

    fn bump_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILER_BYTES {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(())
    }

    fn bump_line(&mut self) -> Result<(), ChunkError> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(())
    }

    /// The first byte after the size digits: whitespace, `;` or CR.
    fn after_size(&self, b: u8, value: u64) -> Result<State, ChunkError> {
        match b {
            b'\r' => Ok(State::SizeLf { value }),
            b';' | b' ' | b'\t' => Ok(State::Ext { value }),
            b'\n' => Err(ChunkError::InvalidLineEnding),
            _ => Err(ChunkError::InvalidSize),
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The terminating chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// What follows each chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// Appends the size line for a chunk of `len` bytes (`len` > 0).
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    let _ = write!(out, "{len:x}\r\n");
}

/// Appends one whole chunk holding `data` (nothing for empty data, which
/// would otherwise end the body).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    write_chunk_header(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_END);
}

/// The data bytes inside whole chunks written by `write_chunk` (what an
/// access log counts as body bytes; the framing is not). Bytes that do not
/// parse as such chunks count as data, so the result never undercounts.
pub fn payload_len(framed: &[u8]) -> usize {
    let mut total = 0;
    let mut rest = framed;
    while !rest.is_empty() {
        let Some(eol) = rest.iter().position(|&b| b == b'\r') else {
            return total + rest.len();
        };
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok());
        let whole =
            size.and_then(|n| Some((n, eol.checked_add(2)?.checked_add(n)?.checked_add(2)?)));
        match whole {
            Some((n, len)) if len <= rest.len() && rest[eol + 1] == b'\n' => {
                total += n;
                rest = &rest[len..];
            }
            _ => return total + rest.len(),
        }
    }
    total
}

/// Decodes `input` fed in pieces split at `cuts` (ascending offsets);
/// returns (data, done, bytes left after the body). Test and fuzz helper.
#[doc(hidden)]
pub fn decode_split(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool, usize), ChunkError> {
    let mut dec = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    bounds.push(input.len());
    let mut start = 0;
    for end in bounds {
        let end = end.max(start);
        pending.extend_from_slice(&input[start..end]);
        start = end;
        loop {
            let d = dec.decode(&pending)?;
            assert!(d.consumed <= pending.len(), "consumed more than given");
            data.extend_from_slice(d.data);
            let (consumed, done) = (d.consumed, d.done);
            pending.drain(..consumed);
            if done {
                return Ok((data, true, pending.len() + (input.len() - start)));
            }
            if consumed == 0 || pending.is_empty() {
                break;
            }
        }
    }
    Ok((data, false, pending.len()))
}

/// Fuzz invariant: decoding `input` whole and split at `cut` agree.
#[doc(hidden)]
pub fn check_split_invariant(input: &[u8], cut: usize) {
    let whole = decode_split(input, &[]);
    let cut = if input.is_empty() {
        0
    } else {
        cut % (input.len() + 1)
    };
    assert_eq!(
        whole,
        decode_split(input, &[cut]),
        "split at {cut} changed the result"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn payload_len_counts_data_not_framing() {
        use super::{payload_len, write_chunk};
        for parts in [
            vec![],
            vec![&b"a"[..]],
            vec![&b"hello\n"[..], &b"x"[..]],
            vec![&[7u8; 300][..], &b"\r\n0\r\n"[..], &[0u8; 16][..]],
        ] {
            let mut framed = Vec::new();
            for p in &parts {
                write_chunk(&mut framed, p);
            }
            let want: usize = parts.iter().map(|p| p.len()).sum();
            assert_eq!(payload_len(&framed), want, "{parts:?}");
        }
        // Not chunks: every byte counts.
        assert_eq!(payload_len(b"raw bytes"), 9);
        assert_eq!(payload_len(b"5\r\nab"), 5, "cut short");
        assert_eq!(payload_len(b"1\r\na\r\nzz"), 3);
    }

    use super::*;

    /// Runs one case whole and split at every offset; all must agree.
    fn check(input: &[u8], expect: Result<(&[u8], bool, usize), ChunkError>) {
        let expect = expect.map(|(d, done, left)| (d.to_vec(), done, left));
        assert_eq!(decode_split(input, &[]), expect, "whole: {input:?}");
        for cut in 0..=input.len() {
            assert_eq!(
                decode_split(input, &[cut]),
                expect,
                "cut at {cut}: {input:?}"
            );
        }
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            decode_split(input, &every),
            expect,
            "byte by byte: {input:?}"
        );
    }

    #[test]
    fn table() {
        check(b"5\r\nhello\r\n0\r\n\r\n", Ok((b"hello", true, 0)));
        check(
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            Ok((b"hello world", true, 0)),
        );
        check(
            b"A\r\n0123456789\r\n0\r\n\r\nGET",
            Ok((b"0123456789", true, 3)),
        );
        check(
            b"a;name=value\r\n0123456789\r\n0\r\n\r\n",
            Ok((b"0123456789", true, 0)),
        );
        check(b"3 ; ext\r\nabc\r\n0\r\n\r\n", Ok((b"abc", true, 0)));
        check(
            b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n",
            Ok((b"abc", true, 0)),
        );
        check(b"0\r\n\r\n", Ok((b"", true, 0)));
        check(b"3\r\nab", Ok((b"ab", false, 0)));
        check(
            b"0000000000000003\r\nabc\r\n0\r\n\r\n",
            Ok((b"abc", true, 0)),
        );
    }

    #[test]
    fn rejects() {
        check(b"g\r\n", Err(ChunkError::InvalidSize));
        check(b"\r\n", Err(ChunkError::InvalidSize));
        check(b"-1\r\n", Err(ChunkError::InvalidSize));
        check(b"+1\r\n", Err(ChunkError::InvalidSize));
        check(b"0x5\r\n", Err(ChunkError::InvalidSize));
        check(b"10000000000000000\r\n", Err(ChunkError::SizeOverflow));
        check(b"5\nhello\r\n", Err(ChunkError::InvalidLineEnding));
        check(b"5\r\nhelloXX", Err(ChunkError::InvalidLineEnding));
        check(b"5\r\nhello\n0\r\n\r\n", Err(ChunkError::InvalidLineEnding));
        check(b"0\r\n\n", Err(ChunkError::InvalidLineEnding));
        check(b"5\rX", Err(ChunkError::InvalidLineEnding));
    }

    #[test]
    fn long_lines_are_refused() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE + 10, b'x');
        check(&line, Err(ChunkError::LineTooLong));
        let mut trailer = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILER_BYTES / 10 + 1 {
            trailer.extend_from_slice(b"X-A: 123\r\n");
        }
        assert_eq!(
            decode_split(&trailer, &[]),
            Err(ChunkError::TrailersTooLarge)
        );
    }

    /// A deterministic stand-in for the fuzz target, so `cargo test` covers
    /// its invariant on many generated inputs.
    #[test]
    fn generated_inputs_keep_the_split_invariant() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"0123456789abcdefABCDEF;= \t\r\nxz";
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let mut input = Vec::with_capacity(len);
            let mut s = seed;
            for _ in 0..len {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                input.push(alphabet[(s >> 33) as usize % alphabet.len()]);
            }
            for cut in 0..=input.len() {
                check_split_invariant(&input, cut);
            }
        }
    }

    #[test]
    fn encoder_round_trips() {
        let mut out = Vec::new();
        write_chunk(&mut out, b"hello");
        write_chunk(&mut out, b"");
        write_chunk(&mut out, &[7u8; 300]);
        out.extend_from_slice(LAST_CHUNK);
        let mut expect = b"hello".to_vec();
        expect.extend_from_slice(&[7u8; 300]);
        let (data, done, left) = decode_split(&out, &[]).expect("valid");
        assert_eq!((data, done, left), (expect, true, 0));
        assert!(out.starts_with(b"5\r\nhello\r\n12c\r\n"));
    }
}
