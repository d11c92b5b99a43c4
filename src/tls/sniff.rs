//! What the first bytes on a TLS port are: a TLS ClientHello, a plaintext
//! HTTP request (answered 400, as nginx does), or neither. Sans-IO: a
//! function over the bytes read so far, looked at before any of them is
//! handed to rustls.

/// The first bytes a client sent on a TLS port, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// A TLS handshake record (content type 22, record version 3.x): hand
    /// the bytes to rustls.
    Tls,
    /// An HTTP request line's method and space: answer
    /// [`PLAINTEXT_RESPONSE`] and close.
    PlainHttp,
    /// Neither: close without an answer (counted as "not TLS").
    Other,
}

/// Bytes that decide every input: an HTTP method token of up to
/// [`MAX_METHOD`] characters and its space.
pub const DECISIVE_BYTES: usize = MAX_METHOD + 1;

/// Longest method token taken as HTTP (the longest registered method,
/// UPDATEREDIRECTREF, has 17 characters).
pub const MAX_METHOD: usize = 20;

/// TLS record content type of a handshake record (RFC 8446 §5.1).
const HANDSHAKE: u8 = 0x16;

/// The answer to a plaintext HTTP request on a TLS port, whole. The
/// connection is closed after it, so it says `Connection: close`.
pub const PLAINTEXT_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 46\r\n\
Connection: close\r\n\
\r\n\
The plain HTTP request was sent to HTTPS port\n";

/// Classifies the first bytes of a connection on a TLS port. `Ok(None)`:
/// not enough bytes to tell yet (read more; [`DECISIVE_BYTES`] always
/// suffice). Consumes nothing: the caller hands the same bytes on.
pub fn classify(first: &[u8]) -> Option<Sniff> {
    let &b0 = first.first()?;
    if b0 == HANDSHAKE {
        // Record version: 3.x for every SSL 3.0 / TLS 1.x record.
        return match first.get(1) {
            None => None,
            Some(3) => Some(Sniff::Tls),
            Some(_) => Some(Sniff::Other),
        };
    }
    // An HTTP request starts with a method token (upper-case by
    // convention; every registered method is) and one space.
    for (i, &b) in first.iter().enumerate().take(DECISIVE_BYTES) {
        match b {
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD => {}
            b' ' if i > 0 => return Some(Sniff::PlainHttp),
            _ => return Some(Sniff::Other),
        }
    }
    if first.len() >= DECISIVE_BYTES {
        Some(Sniff::Other)
    } else {
        None
    }
}

/// Fuzz and test invariant: for any bytes, [`classify`] never panics;
/// an answer given for a prefix never changes as bytes are added; every
/// input of [`DECISIVE_BYTES`] or more bytes gets an answer; `Tls` means
/// the bytes start 0x16 0x03, `PlainHttp` means they start with a method
/// token and a space.
pub fn check_classify_invariants(data: &[u8]) {
    let full = classify(data);
    if data.len() >= DECISIVE_BYTES {
        assert!(full.is_some(), "undecided after {} bytes", data.len());
    }
    let mut decided = None;
    for end in 0..=data.len() {
        match (decided, classify(&data[..end])) {
            (None, got) => decided = got,
            (Some(d), got) => assert_eq!(got, Some(d), "changed at {end}"),
        }
    }
    assert_eq!(decided, full);
    match full {
        Some(Sniff::Tls) => assert!(data.starts_with(&[HANDSHAKE, 3])),
        Some(Sniff::PlainHttp) => {
            let sp = data.iter().position(|&b| b == b' ').expect("a space");
            assert!((1..=MAX_METHOD).contains(&sp));
            assert!(data[..sp]
                .iter()
                .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_'));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&[u8], Option<Sniff>)] = &[
            (b"", None),
            (b"\x16", None),
            (b"\x16\x03", Some(Sniff::Tls)),
            (b"\x16\x03\x01\x02\x00\x01", Some(Sniff::Tls)),
            (b"\x16\x02", Some(Sniff::Other)),
            // SSL 2.0-style hello: rustls does not speak it.
            (b"\x80\x2e\x01\x03\x01", Some(Sniff::Other)),
            (b"G", None),
            (b"GET", None),
            (b"GET ", Some(Sniff::PlainHttp)),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Some(Sniff::PlainHttp)),
            (b"POST /x HTTP/1.1\r\n", Some(Sniff::PlainHttp)),
            (b"M-SEARCH * HTTP/1.1", Some(Sniff::PlainHttp)),
            (b"UPDATEREDIRECTREF / HTTP/1.1", Some(Sniff::PlainHttp)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Sniff::PlainHttp)),
            (b" GET /", Some(Sniff::Other)),
            (b"get / HTTP/1.1", Some(Sniff::Other)),
            (b"GET\t/", Some(Sniff::Other)),
            (b"\r\nGET / HTTP/1.1", Some(Sniff::Other)),
            (b"\x00\x00", Some(Sniff::Other)),
            (b"ABCDEFGHIJKLMNOPQRST", None),
            (b"ABCDEFGHIJKLMNOPQRST ", Some(Sniff::PlainHttp)),
            (b"ABCDEFGHIJKLMNOPQRSTU", Some(Sniff::Other)),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Some(Sniff::Other)),
        ];
        for (input, want) in cases {
            assert_eq!(
                classify(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            check_classify_invariants(input);
        }
    }

    #[test]
    fn split_at_every_offset_gives_the_same_answer() {
        for input in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"\x16\x03\x01\x00\x05hello",
            b"BREW /pot HTTP/1.1",
            b"\xff\xfe",
        ] {
            check_classify_invariants(input);
        }
    }

    #[test]
    fn the_response_is_well_formed() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = r.parse(PLAINTEXT_RESPONSE).expect("parses") else {
            panic!("incomplete")
        };
        assert_eq!(r.code, Some(400));
        let len = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| std::str::from_utf8(h.value).expect("ascii"))
            .expect("length");
        assert_eq!(
            len.parse::<usize>().expect("number"),
            PLAINTEXT_RESPONSE.len() - n
        );
        assert!(
            PLAINTEXT_RESPONSE[n..].starts_with(b"The plain HTTP request was sent to HTTPS port")
        );
    }
}
