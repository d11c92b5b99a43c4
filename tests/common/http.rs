//! HTTP/1.1 as the test side reads and writes it: requests (for test
//! backends) and responses (for test clients), deliberately simple and
//! independent of corepin's own codec.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;

/// The first value of `name` (case-insensitive) in a header list.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A request as a test backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Reads a head up to its blank line; `None` at EOF.
fn read_head_bytes(r: &mut impl BufRead, bare_lf: bool) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        let end = line == b"\r\n" || (bare_lf && line == b"\n");
        head.extend_from_slice(&line);
        if end {
            return Some(head);
        }
    }
}

/// Reads one request (head and Content-Length or chunked body) from `r`.
pub fn read_request(r: &mut BufReader<TcpStream>) -> Option<Seen> {
    let head = read_head_bytes(r, true)?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&head).ok()?;
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    if let Some(len) = find_header(&headers, "content-length") {
        let n: usize = len.trim().parse().ok()?;
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    } else if find_header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = read_chunked(r)?;
    }
    Some(Seen {
        method: req.method?.to_string(),
        path: req.path?.to_string(),
        headers,
        body,
    })
}

/// Reads a chunked body (test side, deliberately simple).
pub fn read_chunked(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            let mut t = String::new();
            loop {
                t.clear();
                r.read_line(&mut t).ok()?;
                if t == "\r\n" || t.is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).ok()?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).ok()?;
    }
}

/// A `200 OK` text/plain response carrying `body`.
pub fn ok_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A parsed response read by a test client.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `r`; `head_request` means no body.
pub fn read_response(r: &mut BufReader<TcpStream>, head_request: bool) -> Option<Response> {
    let resp = read_head_only(r)?;
    let status = resp.status;
    if status == 100 {
        return read_response(r, head_request);
    }
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 {
    } else if let Some(len) = resp.header("content-length") {
        body.resize(len.trim().parse().ok()?, 0);
        r.read_exact(&mut body).ok()?;
    } else if resp.header("transfer-encoding").is_some() {
        body = read_chunked(r)?;
    } else {
        r.read_to_end(&mut body).ok()?;
    }
    Some(Response { body, ..resp })
}

/// Reads a response head without its body.
pub fn read_head_only(r: &mut BufReader<TcpStream>) -> Option<Response> {
    parse_head(&read_head_bytes(r, false)?)
}

/// A response head's status and fields (no body).
fn parse_head(head: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    res.parse(head).ok()?;
    Some(Response {
        status: res.code?,
        headers: res
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
    })
}

/// Reads one unmasked WebSocket frame, as a server sends it: (opcode,
/// payload). A test's socket has a read timeout, so a frame that never
/// comes fails the test.
pub fn read_frame(r: &mut impl Read) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).expect("frame header");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).expect("len");
            usize::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).expect("len");
            usize::try_from(u64::from_be_bytes(b)).expect("a length that fits")
        }
        n => usize::from(n),
    };
    let mut p = vec![0u8; len];
    r.read_exact(&mut p).expect("payload");
    (h[0] & 0x0f, p)
}
