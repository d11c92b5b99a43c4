//! Automatic cross-origin (Pushpin's `aco` route option and its global
//! `auto_cross_origin`): the `Access-Control-*` fields added to a response
//! head already written, computed from the client's request fields.
//!
//! Each field is added only when the response does not carry it yet (names
//! compared ignoring case), so a backend's or a publisher's own
//! `Access-Control-*` field always wins. The fields and their order are
//! Pushpin's: Allow-Methods, Allow-Headers, Expose-Headers,
//! Allow-Credentials, Allow-Origin, Max-Age.

use super::http1::{trim, Fields};

/// Allow-Methods when the request names no `Access-Control-Request-Method`.
pub const DEFAULT_METHODS: &[u8] = b"OPTIONS, HEAD, GET, POST, PUT, DELETE";

/// Access-Control-Max-Age, in seconds.
pub const MAX_AGE: &[u8] = b"3600";

/// Response fields never listed in Access-Control-Expose-Headers: the
/// CORS-safelisted ones (Pushpin's list, which includes Content-Length),
/// and the framing fields corepin writes itself.
const NOT_EXPOSED: &[&str] = &[
    "cache-control",
    "content-language",
    "content-length",
    "content-type",
    "expires",
    "last-modified",
    "pragma",
    "connection",
    "keep-alive",
    "transfer-encoding",
];

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A request value copied into a response: only visible ASCII, spaces and
/// tabs (the request parser already refused CR, LF and NUL; this keeps
/// obs-text and other controls out of the answer too).
fn copyable(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The first non-empty, copyable value of `name`.
fn first_value<'a>(req: &'a Fields, name: &str) -> Option<&'a [u8]> {
    req.get(name)
        .map(trim)
        .filter(|v| !v.is_empty() && copyable(v))
}

/// Splits on commas outside double quotes.
fn split_unquoted(v: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in v.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == b',' && !quoted {
            parts.push(&v[start..i]);
            start = i + 1;
        }
    }
    parts.push(&v[start..]);
    parts
}

/// The names of the fields in a written head (the status line first, each
/// line ending CRLF, no final empty line).
fn field_names(head: &[u8]) -> Vec<&[u8]> {
    head.split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some(trim(&line[..colon]))
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// The CORS fields for a response whose head (status line and fields,
/// without the final empty line) is `head`, as `Name: value\r\n` lines.
pub fn fields_for(req: &Fields, head: &[u8]) -> Vec<u8> {
    let names = field_names(head);
    let has = |n: &str| names.iter().any(|h| h.eq_ignore_ascii_case(n.as_bytes()));
    let mut out = Vec::new();
    let mut line = |name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    if !has("access-control-allow-methods") {
        let m = first_value(req, "access-control-request-method").unwrap_or(DEFAULT_METHODS);
        line("Access-Control-Allow-Methods", m);
    }
    if !has("access-control-allow-headers") {
        let asked: Vec<&[u8]> = req
            .get_all("access-control-request-headers")
            .filter(|v| copyable(v))
            .flat_map(split_unquoted)
            .map(trim)
            .filter(|p| !p.is_empty())
            .collect();
        if !asked.is_empty() {
            line("Access-Control-Allow-Headers", &asked.join(&b", "[..]));
        }
    }
    if !has("access-control-expose-headers") {
        let mut exposed: Vec<&[u8]> = Vec::new();
        for n in &names {
            let skip = NOT_EXPOSED
                .iter()
                .any(|s| n.eq_ignore_ascii_case(s.as_bytes()))
                || starts_with_ci(n, b"access-control-")
                || starts_with_ci(n, b"grip-")
                || exposed.iter().any(|e| e.eq_ignore_ascii_case(n));
            if !skip {
                exposed.push(n);
            }
        }
        if !exposed.is_empty() {
            line("Access-Control-Expose-Headers", &exposed.join(&b", "[..]));
        }
    }
    if !has("access-control-allow-credentials") {
        line("Access-Control-Allow-Credentials", b"true");
    }
    if !has("access-control-allow-origin") {
        line(
            "Access-Control-Allow-Origin",
            first_value(req, "origin").unwrap_or(b"*"),
        );
    }
    if !has("access-control-max-age") {
        line("Access-Control-Max-Age", MAX_AGE);
    }
    out
}

/// Adds the CORS fields to the response head that starts at `start` in
/// `out` (the bytes after its empty line, a body already appended, stay
/// as they are). Returns false, changing nothing, when `out[start..]`
/// holds no complete head.
pub fn apply(req: &Fields, out: &mut Vec<u8>, start: usize) -> bool {
    let Some(tail) = out.get(start..) else {
        return false;
    };
    let Some(end) = tail.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    // The head's lines, the last one's CRLF included.
    let head_end = start + end + 2;
    let add = fields_for(req, &out[start..head_end - 2]);
    out.splice(head_end..head_end, add);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::http1::{parse_request, HeadLimits};

    fn req(fields: &str) -> Fields {
        let raw = format!("GET / HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
        match parse_request(raw.as_bytes(), &HeadLimits::default()) {
            Ok(Some((_, h))) => h.fields,
            other => panic!("test request did not parse: {other:?}"),
        }
    }

    fn run(request: &str, response: &str) -> String {
        let mut out = response.as_bytes().to_vec();
        assert!(apply(&req(request), &mut out, 0));
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, &str)] = &[
            // No Origin, no preflight fields, only safelisted response fields.
            (
                "",
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
                 Access-Control-Allow-Methods: OPTIONS, HEAD, GET, POST, PUT, DELETE\r\n\
                 Access-Control-Allow-Credentials: true\r\n\
                 Access-Control-Allow-Origin: *\r\n\
                 Access-Control-Max-Age: 3600\r\n\r\nhi",
            ),
            // Origin echoed, method and headers asked, exposed fields.
            (
                "Origin: http://a.example:81\r\nAccess-Control-Request-Method: PUT\r\n\
                 Access-Control-Request-Headers: X-A, x-b\r\nAccess-Control-Request-Headers: \"q,r\" , ,X-C\r\n",
                "HTTP/1.1 204 No Content\r\nX-Custom: 1\r\nGrip-Hold: x\r\nx-custom: 2\r\nVia: 1.1 corepin\r\n\
                 Connection: close\r\n\r\n",
                "HTTP/1.1 204 No Content\r\nX-Custom: 1\r\nGrip-Hold: x\r\nx-custom: 2\r\nVia: 1.1 corepin\r\n\
                 Connection: close\r\n\
                 Access-Control-Allow-Methods: PUT\r\n\
                 Access-Control-Allow-Headers: X-A, x-b, \"q,r\", X-C\r\n\
                 Access-Control-Expose-Headers: X-Custom, Via\r\n\
                 Access-Control-Allow-Credentials: true\r\n\
                 Access-Control-Allow-Origin: http://a.example:81\r\n\
                 Access-Control-Max-Age: 3600\r\n\r\n",
            ),
            // The backend's own fields win, each one separately.
            (
                "Origin: null\r\n",
                "HTTP/1.1 200 OK\r\naccess-control-allow-origin: https://x\r\n\
                 Access-Control-Expose-Headers: X-Y\r\nX-Y: 1\r\n\r\n",
                "HTTP/1.1 200 OK\r\naccess-control-allow-origin: https://x\r\n\
                 Access-Control-Expose-Headers: X-Y\r\nX-Y: 1\r\n\
                 Access-Control-Allow-Methods: OPTIONS, HEAD, GET, POST, PUT, DELETE\r\n\
                 Access-Control-Allow-Credentials: true\r\n\
                 Access-Control-Max-Age: 3600\r\n\r\n",
            ),
            // An empty Origin and an empty request method fall back.
            (
                "Origin: \r\nAccess-Control-Request-Method: \r\n",
                "HTTP/1.1 502 Bad Gateway\r\n\r\n",
                "HTTP/1.1 502 Bad Gateway\r\n\
                 Access-Control-Allow-Methods: OPTIONS, HEAD, GET, POST, PUT, DELETE\r\n\
                 Access-Control-Allow-Credentials: true\r\n\
                 Access-Control-Allow-Origin: *\r\n\
                 Access-Control-Max-Age: 3600\r\n\r\n",
            ),
        ];
        for (request, response, want) in cases {
            assert_eq!(run(request, response), *want, "request {request:?}");
        }
    }

    #[test]
    fn not_a_head_changes_nothing() {
        let r = req("Origin: o\r\n");
        for bad in ["", "HTTP/1.1 200 OK\r\n", "HTTP/1.1 200 OK\r\nA: b\r\n"] {
            let mut out = bad.as_bytes().to_vec();
            assert!(!apply(&r, &mut out, 0));
            assert_eq!(out, bad.as_bytes());
        }
        let mut out = b"x".to_vec();
        assert!(!apply(&r, &mut out, 5));
    }

    #[test]
    fn head_after_start_offset() {
        let mut out = b"PREVIOUS\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody".to_vec();
        assert!(apply(&req(""), &mut out, 12));
        let s = String::from_utf8(out).unwrap_or_default();
        assert!(s.starts_with("PREVIOUS\r\n\r\nHTTP/1.1 200 OK\r\nAccess-Control-Allow-Methods"));
        assert!(s.ends_with("Max-Age: 3600\r\n\r\nbody"));
    }

    #[test]
    fn obs_text_is_not_copied() {
        let raw = b"GET / HTTP/1.1\r\nOrigin: a\xffb\r\n\r\n";
        let Ok(Some((_, h))) = parse_request(raw, &HeadLimits::default()) else {
            // Refused by the request parser: nothing can be copied either.
            return;
        };
        let add = fields_for(&h.fields, b"HTTP/1.1 200 OK\r\n");
        let s = String::from_utf8_lossy(&add);
        assert!(s.contains("Access-Control-Allow-Origin: *\r\n"), "{s}");
    }

    #[test]
    fn quoted_commas() {
        assert_eq!(
            split_unquoted(b"a,\"b,\\\"c\",d"),
            vec![&b"a"[..], &b"\"b,\\\"c\""[..], &b"d"[..]]
        );
    }
}
