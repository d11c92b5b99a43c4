//! The response head corepin writes to a client on behalf of a GRIP source:
//! a backend's instructing response (header form or
//! `application/grip-instruct` JSON) and a published `http-response`. Every
//! source builds the same validated `Head`, once, when its input is parsed;
//! nothing else may put a status line or header fields from those sources on
//! the wire, so no source can inject a header, split a response or send a
//! status a client cannot take as final.
//!
//! The rules (RFC 9110, RFC 9112):
//! - status: 200..=599. A held or published response is the final answer to
//!   the client's request; 1xx are interim responses (a client would wait
//!   for another response, or switch protocols on 101), and RFC 9110 §15
//!   calls anything outside 100..=599 invalid.
//! - reason phrase: HTAB, SP, VCHAR and obs-text only (RFC 9112 §4), at most
//!   `MAX_REASON` bytes; absent or empty means the canonical phrase.
//! - field names: tokens (RFC 9110 §5.1); field values: no CTL but HTAB
//!   (field-content, RFC 9110 §5.5), so no CR, LF or NUL.
//! - hop-by-hop fields, framing fields and `Grip-*` fields are never copied
//!   from a source (`is_managed`): corepin writes the framing of each client
//!   connection itself, and `Grip-*` fields are instructions for corepin.
//! - 204 and 304 carry no body and no `Content-Length` (RFC 9110 §8.6,
//!   §15.3.5, §15.4.5): a body given with them is refused, since the client
//!   would read it as the start of the next response.
//! - the whole head stays under `MAX_HEAD` bytes and `MAX_FIELDS` fields.

use std::fmt;
use std::io::Write;

use super::http1::{is_hop_by_hop, reason_phrase, ResponseHead, HOP_BY_HOP};

/// Lowest status a source may give: the first final status.
pub const MIN_STATUS: u16 = 200;
/// Highest status a source may give (RFC 9110 §15).
pub const MAX_STATUS: u16 = 599;
/// Longest reason phrase accepted.
pub const MAX_REASON: usize = 512;
/// Largest status line plus header fields accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields a source may give (corepin adds its framing ones).
pub const MAX_FIELDS: usize = 128;

/// What is wrong with one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Not a final status code in 200..=599.
    NotFinalStatus(u64),
    /// Contains CR or LF (would end the line and start another).
    CrLf,
    /// Contains NUL.
    Nul,
    /// Contains another control character.
    Control(u8),
    /// Longer than the limit, in bytes.
    TooLong(usize),
    /// An empty field name.
    Empty,
    /// A byte a field name (token) cannot hold.
    NotToken(u8),
    /// A body given with a status that has none.
    BodyNotAllowed(u16),
    /// The head grew past `MAX_HEAD`.
    HeadTooLarge,
    /// More than `MAX_FIELDS` fields.
    TooManyFields,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotFinalStatus(c) => write!(
                f,
                "{c} is not a final status code ({MIN_STATUS}-{MAX_STATUS})"
            ),
            Problem::CrLf => f.write_str("contains CR or LF"),
            Problem::Nul => f.write_str("contains NUL"),
            Problem::Control(b) => write!(f, "contains control character 0x{b:02x}"),
            Problem::TooLong(max) => write!(f, "is longer than {max} bytes"),
            Problem::Empty => f.write_str("is empty"),
            Problem::NotToken(b) => write!(
                f,
                "is not a header name: {} is not allowed in a token (RFC 9110 §5.6.2)",
                byte_name(*b)
            ),
            Problem::BodyNotAllowed(c) => {
                write!(f, "must be empty: a {c} response has no body")
            }
            Problem::HeadTooLarge => {
                write!(f, "make the response head larger than {MAX_HEAD} bytes")
            }
            Problem::TooManyFields => write!(f, "make more than {MAX_FIELDS} header fields"),
        }
    }
}

fn byte_name(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("byte 0x{b:02x}")
    }
}

/// A refused value and the field it was in, relative to the source's
/// response object: `code`, `reason`, `headers.NAME`, `headers[I][0]`
/// (a name in list form), `headers[I][1]` (its value), `body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub problem: Problem,
}

impl Invalid {
    fn new(field: impl Into<String>, problem: Problem) -> Invalid {
        Invalid {
            field: field.into(),
            problem,
        }
    }

    /// The message with the field's full path, e.g.
    /// `items[0].http-response.reason: contains CR or LF`.
    pub fn at(&self, path: &str) -> String {
        if path.is_empty() {
            self.to_string()
        } else {
            format!("{path}.{}: {}", self.field, self.problem)
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Checks text that goes inside a header line: no CTL but HTAB. CR and LF
/// are named first, as they are what an injection uses.
pub fn check_value(v: &[u8]) -> Result<(), Problem> {
    if v.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(Problem::CrLf);
    }
    match v.iter().find(|&&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
        Some(0) => Err(Problem::Nul),
        Some(&b) => Err(Problem::Control(b)),
        None => Ok(()),
    }
}

/// Checks a reason phrase: HTAB / SP / VCHAR / obs-text, bounded.
pub fn check_reason(r: &str) -> Result<(), Problem> {
    check_value(r.as_bytes())?;
    if r.len() > MAX_REASON {
        return Err(Problem::TooLong(MAX_REASON));
    }
    Ok(())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks a field name: a non-empty token.
pub fn check_name(n: &[u8]) -> Result<(), Problem> {
    if n.is_empty() {
        return Err(Problem::Empty);
    }
    match n.iter().find(|&&b| !is_tchar(b)) {
        Some(&b) => Err(Problem::NotToken(b)),
        None => Ok(()),
    }
}

/// True for fields corepin never copies from a source: hop-by-hop and
/// framing fields, and `Grip-*`.
pub fn is_managed(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|m| m.as_bytes().eq_ignore_ascii_case(name))
        || super::heads::is_grip_name(name)
}

/// A validated status: a final code and a reason phrase safe to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: u16,
    /// `None`: the canonical phrase for the code.
    reason: Option<Box<str>>,
}

impl Status {
    /// 200 with the canonical phrase.
    pub const OK: Status = Status {
        code: 200,
        reason: None,
    };

    /// Validates a code and an optional reason (empty = canonical).
    pub fn new(code: u64, reason: Option<&str>) -> Result<Status, Invalid> {
        let code = u16::try_from(code)
            .ok()
            .filter(|c| (MIN_STATUS..=MAX_STATUS).contains(c))
            .ok_or(Invalid::new("code", Problem::NotFinalStatus(code)))?;
        let reason = match reason {
            None | Some("") => None,
            Some(r) => {
                check_reason(r).map_err(|p| Invalid::new("reason", p))?;
                Some(r.into())
            }
        };
        Ok(Status { code, reason })
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    /// The reason phrase written: the given one or the canonical one.
    pub fn reason(&self) -> &str {
        self.reason
            .as_deref()
            .unwrap_or_else(|| reason_phrase(self.code))
    }

    /// False for 204 and 304, which never carry a body (or a length).
    pub fn has_body(&self) -> bool {
        !matches!(self.code, 204 | 304)
    }

    fn write_line(&self, out: &mut Vec<u8>) {
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.code, self.reason());
    }
}

/// How a source lists its header fields, for naming one in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// An object keyed by name: `headers.NAME`.
    Key,
    /// The I-th `[name, value]` pair of a list: `headers[I]`.
    Index(usize),
}

fn field_label(at: At, name: &[u8], part: usize) -> String {
    match at {
        At::Index(i) => format!("headers[{i}][{part}]"),
        At::Key if check_name(name).is_ok() => {
            format!("headers.{}", String::from_utf8_lossy(name))
        }
        At::Key => format!("headers.{:?}", String::from_utf8_lossy(name)),
    }
}

/// A validated response head: status and the fields a client gets, without
/// framing (written per connection by `write_length` or the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    status: Status,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes the status line and fields take on the wire.
    size: usize,
}

impl Head {
    pub fn new(status: Status) -> Head {
        // "HTTP/1.1 NNN " + reason + CRLF
        let size = 15 + status.reason().len();
        Head {
            status,
            fields: Vec::new(),
            size,
        }
    }

    /// Validates and adds one field; a managed field (`is_managed`) is
    /// left out. The error's `field` is filled in by the caller.
    fn push(&mut self, name: &[u8], value: &[u8]) -> Result<(), (usize, Problem)> {
        check_name(name).map_err(|p| (0, p))?;
        check_value(value).map_err(|p| (1, p))?;
        if is_managed(name) {
            return Ok(());
        }
        self.size += name.len() + value.len() + 4;
        if self.size > MAX_HEAD {
            return Err((0, Problem::HeadTooLarge));
        }
        if self.fields.len() == MAX_FIELDS {
            return Err((0, Problem::TooManyFields));
        }
        self.fields.push((name.to_vec(), value.to_vec()));
        Ok(())
    }

    /// Validates and adds one field corepin itself sets (a managed name
    /// is left out, as from any source).
    pub fn add(&mut self, name: &str, value: &[u8]) -> Result<(), Invalid> {
        self.push(name.as_bytes(), value)
            .map_err(|(part, p)| Invalid::new(field_label(At::Key, name.as_bytes(), part), p))
    }

    /// Builds a head from a source's parts: `code` (`None` = 200), an
    /// optional reason, header fields as `(how listed, name, value)`, and
    /// the body the head will carry (checked against the status).
    pub fn from_parts<'a>(
        code: Option<u64>,
        reason: Option<&str>,
        fields: impl IntoIterator<Item = (At, &'a [u8], &'a [u8])>,
        body: &[u8],
    ) -> Result<Head, Invalid> {
        let mut head = Head::new(Status::new(code.unwrap_or(200), reason)?);
        for (at, name, value) in fields {
            head.push(name, value)
                .map_err(|(part, p)| Invalid::new(field_label(at, name, part), p))?;
        }
        head.check_body(body.len())?;
        Ok(head)
    }

    /// The head of a backend's own response (header-form instructions):
    /// its status line and the fields that reach clients (also leaving
    /// out those its `Connection` field lists).
    pub fn from_backend(resp: &ResponseHead, body: &[u8]) -> Result<Head, Invalid> {
        let fields = resp
            .fields
            .iter()
            .filter(|(n, _)| !is_hop_by_hop(&resp.fields, n))
            .map(|(n, v)| (At::Key, n, v));
        Self::from_parts(
            Some(u64::from(resp.status)),
            Some(resp.reason()),
            fields,
            body,
        )
    }

    /// Refuses a non-empty body for a status that has none.
    pub fn check_body(&self, len: usize) -> Result<(), Invalid> {
        if len > 0 && !self.status.has_body() {
            return Err(Invalid::new(
                "body",
                Problem::BodyNotAllowed(self.status.code),
            ));
        }
        Ok(())
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    /// Appends the status line (`status` in place of this head's own when
    /// given) and the fields; no framing, no blank line.
    pub fn write(&self, out: &mut Vec<u8>, status: Option<&Status>) {
        status.unwrap_or(&self.status).write_line(out);
        for (n, v) in &self.fields {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends `Content-Length` for a body of `len` bytes, unless `status`
/// never has a body.
pub fn write_length(out: &mut Vec<u8>, status: &Status, len: usize) {
    if status.has_body() {
        let _ = write!(out, "Content-Length: {len}\r\n");
    }
}

/// Fuzz invariant: whatever head a publish body or a JSON instruction
/// yields, written with its framing, parses back as exactly one complete
/// response head with the same status, reason and fields: no input adds a
/// line, a field or a second response.
#[doc(hidden)]
pub fn check_source_invariants(data: &[u8]) {
    use super::http1::{parse_response, trim, HeadLimits, MAX_HEADERS_CEILING};
    let mut heads = Vec::new();
    if let Ok(items) = super::publish::parse(data) {
        heads.extend(
            items
                .into_iter()
                .filter_map(|i| i.http_response.map(|r| (r.head, r.body.len()))),
        );
    }
    if let Ok((_, r)) = super::grip::from_json(data) {
        heads.push((r.head, r.body.len()));
    }
    let limits = HeadLimits {
        max_head_bytes: MAX_HEAD + 64,
        max_headers: MAX_HEADERS_CEILING,
        max_uri_bytes: 16,
    };
    for (head, body) in heads {
        let mut out = Vec::new();
        head.write(&mut out, None);
        write_length(&mut out, head.status(), body);
        out.extend_from_slice(b"\r\n");
        let parsed = parse_response(&out, &limits, false);
        let Ok(Some((n, parsed))) = parsed else {
            panic!("{head:?} wrote a head that does not parse: {parsed:?}");
        };
        assert_eq!(n, out.len(), "one head, nothing after it");
        assert_eq!(parsed.status, head.status().code());
        // (httparse hands out obs-text reasons as "", so only ASCII ones
        // can be compared.)
        if head.status().reason().is_ascii() {
            assert_eq!(parsed.reason(), head.status().reason());
        }
        let want = head.fields.len() + usize::from(head.status().has_body());
        assert_eq!(parsed.fields.len(), want, "{head:?}");
        for ((n, v), (pn, pv)) in head.fields.iter().zip(parsed.fields.iter()) {
            assert_eq!((&n[..], trim(v)), (pn, trim(pv)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        code: Option<u64>,
        reason: Option<&str>,
        fields: &[(&str, &str)],
        body: &str,
    ) -> Result<Head, Invalid> {
        Head::from_parts(
            code,
            reason,
            fields
                .iter()
                .enumerate()
                .map(|(i, (n, v))| (At::Index(i), n.as_bytes(), v.as_bytes())),
            body.as_bytes(),
        )
    }

    fn written(h: &Head) -> String {
        let mut out = Vec::new();
        h.write(&mut out, None);
        write_length(&mut out, h.status(), 0);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn status_codes() {
        for (code, ok) in [
            (0, false),
            (99, false),
            (100, false),
            (101, false),
            (199, false),
            (200, true),
            (204, true),
            (304, true),
            (404, true),
            (599, true),
            (600, false),
            (999, false),
            (65535, false),
            (65536 + 200, false),
            (u64::MAX, false),
        ] {
            let r = Status::new(code, None);
            assert_eq!(r.is_ok(), ok, "{code}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e, Invalid::new("code", Problem::NotFinalStatus(code)));
            }
        }
    }

    #[test]
    fn reason_phrases() {
        let ok = |r: &str| Status::new(200, Some(r)).map(|s| s.reason().to_string());
        assert_eq!(ok("Fine").as_deref(), Ok("Fine"));
        assert_eq!(ok("").as_deref(), Ok("OK"), "empty: canonical");
        assert_eq!(
            Status::new(404, None).map(|s| s.reason().to_string()),
            Ok("Not Found".into())
        );
        assert_eq!(ok("tab\tand space").as_deref(), Ok("tab\tand space"));
        assert_eq!(ok("obs-text é").as_deref(), Ok("obs-text é"));
        for (reason, problem) in [
            ("OK\r\nSet-Cookie: a=b", Problem::CrLf),
            ("OK\nX: y", Problem::CrLf),
            ("OK\r", Problem::CrLf),
            ("O\0K", Problem::Nul),
            ("O\x1bK", Problem::Control(0x1b)),
            ("O\x7fK", Problem::Control(0x7f)),
            (&"x".repeat(MAX_REASON + 1), Problem::TooLong(MAX_REASON)),
        ] {
            assert_eq!(
                Status::new(200, Some(reason)),
                Err(Invalid::new("reason", problem)),
                "{reason:?}"
            );
        }
        assert!(ok(&"x".repeat(MAX_REASON)).is_ok());
    }

    #[test]
    fn names_and_values() {
        for (name, value, field, problem) in [
            ("X-A\r\nB", "v", "headers[0][0]", Problem::NotToken(b'\r')),
            ("X A", "v", "headers[0][0]", Problem::NotToken(b' ')),
            ("X:A", "v", "headers[0][0]", Problem::NotToken(b':')),
            ("", "v", "headers[0][0]", Problem::Empty),
            ("Xé", "v", "headers[0][0]", Problem::NotToken(0xc3)),
            ("X-A", "a\r\nSet-Cookie: x", "headers[0][1]", Problem::CrLf),
            ("X-A", "a\nb", "headers[0][1]", Problem::CrLf),
            ("X-A", "a\0b", "headers[0][1]", Problem::Nul),
            ("X-A", "a\x01b", "headers[0][1]", Problem::Control(1)),
        ] {
            assert_eq!(
                head(None, None, &[(name, value)], ""),
                Err(Invalid::new(field, problem)),
                "{name:?}: {value:?}"
            );
        }
        let h = head(
            None,
            None,
            &[("X-A", "tab\tok é"), ("!#$%&'*+-.^_`|~09az", "")],
            "",
        )
        .expect("valid");
        assert_eq!(h.get("x-a"), Some("tab\tok é".as_bytes()));
        // Object form names the field by its name, escaped when needed.
        let e = Head::from_parts(None, None, [(At::Key, &b"X-A"[..], &b"a\nb"[..])], b"")
            .expect_err("bad");
        assert_eq!(e.to_string(), "headers.X-A: contains CR or LF");
        let e = Head::from_parts(None, None, [(At::Key, &b"X\nA"[..], &b""[..])], b"")
            .expect_err("bad");
        assert_eq!(e.field, "headers.\"X\\nA\"");
        assert_eq!(
            e.at("items[0].http-response"),
            "items[0].http-response.headers.\"X\\nA\": is not a header name: byte 0x0a is not allowed in a token (RFC 9110 §5.6.2)"
        );
    }

    #[test]
    fn managed_fields_are_left_out() {
        let h = head(
            Some(200),
            None,
            &[
                ("Content-Length", "99"),
                ("transfer-encoding", "chunked"),
                ("Connection", "close"),
                ("Keep-Alive", "5"),
                ("Upgrade", "websocket"),
                ("TE", "trailers"),
                ("Trailer", "X"),
                ("Proxy-Connection", "x"),
                ("Grip-Hold", "stream"),
                ("X-Kept", "1"),
            ],
            "",
        )
        .expect("valid");
        assert_eq!(
            written(&h),
            "HTTP/1.1 200 OK\r\nX-Kept: 1\r\nContent-Length: 0\r\n"
        );
        // Even a managed field must be well-formed.
        assert_eq!(
            head(None, None, &[("Content-Length", "1\r\nX: y")], ""),
            Err(Invalid::new("headers[0][1]", Problem::CrLf))
        );
    }

    #[test]
    fn bodiless_statuses() {
        for code in [204, 304] {
            assert_eq!(
                head(Some(code), None, &[], "x"),
                Err(Invalid::new("body", Problem::BodyNotAllowed(code as u16)))
            );
            let h = head(Some(code), None, &[], "").expect("empty body");
            assert!(!written(&h).contains("Content-Length"), "{code}");
        }
        let h = head(Some(205), None, &[], "").expect("205");
        assert!(written(&h).contains("Content-Length: 0"));
    }

    #[test]
    fn head_size_is_bounded() {
        let big = "v".repeat(MAX_HEAD / 2);
        let e = head(None, None, &[("A", &big), ("B", &big)], "").expect_err("too big");
        assert_eq!(e, Invalid::new("headers[1][0]", Problem::HeadTooLarge));
        assert!(head(None, None, &[("A", &big)], "").is_ok());
        let many: Vec<(String, String)> = (0..=MAX_FIELDS)
            .map(|i| (format!("X-{i}"), String::new()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            head(None, None, &many, ""),
            Err(Invalid::new(
                format!("headers[{MAX_FIELDS}][0]"),
                Problem::TooManyFields
            ))
        );
        assert!(head(None, None, &many[..MAX_FIELDS], "").is_ok());
    }

    #[test]
    fn status_override_when_writing() {
        let h = head(Some(200), Some("Fine"), &[("X", "1")], "").expect("valid");
        let mut out = Vec::new();
        let s = Status::new(404, Some("Gone Away")).expect("valid");
        h.write(&mut out, Some(&s));
        assert_eq!(out, b"HTTP/1.1 404 Gone Away\r\nX: 1\r\n");
    }

    #[test]
    fn generated_sources_keep_the_invariant() {
        // Every single byte, and a few injection shapes, in each place a
        // source can put text.
        let mut texts: Vec<String> = (0u8..=127).map(|b| format!("a{}b", b as char)).collect();
        texts.extend(
            [
                "é",
                "\r\nSet-Cookie: x=1",
                "\n\nHTTP/1.1 200 OK",
                " lead",
                "trail\t",
                "",
            ]
            .map(String::from),
        );
        for t in &texts {
            for response in [
                serde_json::json!({"reason": t}),
                serde_json::json!({"headers": {t.as_str(): "v"}}),
                serde_json::json!({"headers": [["X", t]]}),
                serde_json::json!({"code": 204, "body": t}),
            ] {
                let publish =
                    serde_json::json!({"items": [{"channel": "c", "http-response": response}]});
                check_source_invariants(publish.to_string().as_bytes());
                let instruct = serde_json::json!({"response": response});
                check_source_invariants(instruct.to_string().as_bytes());
            }
        }
    }

    #[test]
    fn messages_name_the_path() {
        let e = head(None, Some("a\r\nb"), &[], "").expect_err("bad");
        assert_eq!(
            e.at("items[0].http-response"),
            "items[0].http-response.reason: contains CR or LF"
        );
        assert_eq!(e.to_string(), "reason: contains CR or LF");
    }
}
