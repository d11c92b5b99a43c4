//! HTTP/1.1 message heads: parsing (through httparse) with named limits,
//! body framing, keep-alive rules, hop-by-hop filtering and serialisation.

use std::borrow::Cow;
use std::io::Write;
use std::ops::Range;

use super::uri;

/// Hard ceiling on the configurable header count: the parser keeps its
/// header table on the stack.
pub const MAX_HEADERS_CEILING: usize = 256;

/// Size limits applied to every head before a buffer is allowed to grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Bytes in the whole head (request or status line, headers, blank line).
    pub max_head_bytes: usize,
    /// Number of header fields.
    pub max_headers: usize,
    /// Bytes in the request target.
    pub max_uri_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// Why a head was refused. Each variant maps to one answer for the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Syntax or framing the peer got wrong (400 / 502).
    Malformed(&'static str),
    /// The head is larger than `max_head_bytes` or has too many fields (431).
    HeadTooLarge,
    /// The request target is longer than `max_uri_bytes` (414).
    UriTooLong,
    /// A transfer coding other than `chunked` (501).
    UnsupportedTransferEncoding,
    /// An `Expect` value other than `100-continue` (417).
    UnsupportedExpectation,
    /// A method a reverse proxy does not forward: CONNECT, TRACE (501).
    UnsupportedMethod(&'static str),
}

impl HeadError {
    /// The status a server answers a client with for this error.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::HeadTooLarge => 431,
            HeadError::UriTooLong => 414,
            HeadError::UnsupportedTransferEncoding => 501,
            HeadError::UnsupportedExpectation => 417,
            HeadError::UnsupportedMethod(_) => 501,
        }
    }

    /// A short human-readable reason, used as the response body.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::Malformed(why) => why,
            HeadError::HeadTooLarge => "request header fields too large",
            HeadError::UriTooLong => "request URI too long",
            HeadError::UnsupportedTransferEncoding => "unsupported transfer-encoding",
            HeadError::UnsupportedExpectation => "unsupported expectation",
            HeadError::UnsupportedMethod(why) => why,
        }
    }
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Protocol version of a message: HTTP/1.0 or HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// One header field as offsets into the head's own bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// The header fields of a parsed head; owns a copy of the head bytes so it
/// can outlive the read buffer (one buffer for the bytes, one for the
/// offsets). The two buffers come from this thread's spares and go back
/// there when the head is dropped, so parsing the two heads of a proxied
/// request allocates nothing in the steady state (it made four allocations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    raw: Vec<u8>,
    fields: Vec<Field>,
}

/// Spare `Fields` buffers kept per thread: about the heads one core has
/// in flight at once; a peak leaves at most this many behind.
const SPARE_KEEP: usize = 128;
/// Buffers larger than a typical head are freed, not kept.
const SPARE_MAX_RAW: usize = 4096;
const SPARE_MAX_FIELDS: usize = 64;

type Spare = (Vec<u8>, Vec<Field>);

std::thread_local! {
    static SPARE: std::cell::RefCell<Vec<Spare>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_spare() -> Spare {
    SPARE
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl Drop for Fields {
    fn drop(&mut self) {
        if self.raw.capacity() > SPARE_MAX_RAW
            || self.fields.capacity() > SPARE_MAX_FIELDS
            || self.raw.capacity() == 0
        {
            return;
        }
        let mut raw = std::mem::take(&mut self.raw);
        let mut fields = std::mem::take(&mut self.fields);
        raw.clear();
        fields.clear();
        // A thread going away drops its spares instead.
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.len() < SPARE_KEEP {
                    s.push((raw, fields));
                }
            }
        });
    }
}

/// Offsets of `part` (a sub-slice handed out by httparse) inside `buf`.
/// httparse hands out a static "" for a reason phrase that is not UTF-8
/// (obs-text); a part that is not inside `buf` becomes an empty span.
fn span(buf: &[u8], part: &[u8]) -> (u32, u32) {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    if start > buf.len() || part.len() > buf.len() - start {
        return (0, 0);
    }
    (start as u32, (start + part.len()) as u32)
}

fn range(r: (u32, u32)) -> Range<usize> {
    r.0 as usize..r.1 as usize
}

impl Fields {
    /// `spare` reserves room for bytes `append` will add.
    fn from_httparse(
        buf: &[u8],
        head_len: usize,
        headers: &[httparse::Header<'_>],
        spare: usize,
    ) -> Self {
        let (mut raw, mut fields) = take_spare();
        fields.extend(headers.iter().map(|h| Field {
            name: span(buf, h.name.as_bytes()),
            value: span(buf, h.value),
        }));
        raw.reserve(head_len + spare);
        raw.extend_from_slice(&buf[..head_len]);
        Fields { raw, fields }
    }

    /// Keeps `bytes` after the head's own and returns their span.
    fn append(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.raw.len();
        self.raw.extend_from_slice(bytes);
        (start as u32, self.raw.len() as u32)
    }

    /// Replaces the value of the first `name` field, or adds the field.
    fn set(&mut self, name: &'static str, value: &[u8]) {
        let value = self.append(value);
        let at = self
            .fields
            .iter()
            .position(|f| self.raw[range(f.name)].eq_ignore_ascii_case(name.as_bytes()));
        match at {
            Some(i) => self.fields[i].value = value,
            None => {
                let name = self.append(name.as_bytes());
                self.fields.push(Field { name, value });
            }
        }
    }

    /// Bytes of the head between two offsets (request line parts).
    fn slice(&self, r: (u32, u32)) -> &[u8] {
        &self.raw[range(r)]
    }

    /// All fields in order, as (name, value). Names were validated as
    /// tokens by httparse, so they are ASCII.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields
            .iter()
            .map(move |f| (&self.raw[range(f.name)], &self.raw[range(f.value)]))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Comma-separated tokens across every `name` field, trimmed, non-empty.
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .map(trim)
            .filter(|t| !t.is_empty())
    }

    /// True when any `name` field lists `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.tokens(name)
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }
}

/// Trims optional whitespace (SP / HTAB) from both ends.
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    method: (u32, u32),
    /// 1 + the method's index in `STATIC_METHODS` when it is one of them
    /// (as spelled there), else 0: `method()` is asked several times per
    /// request and then needs no UTF-8 check of the head's bytes. A byte,
    /// in the head's padding (a held stream keeps its head).
    known_method: u8,
    target: (u32, u32),
    pub version: Version,
    pub fields: Fields,
    pub body: BodyKind,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

/// Methods a parsed head names by a static string (`RequestHead::method`).
const STATIC_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

impl RequestHead {
    pub fn method(&self) -> &str {
        match STATIC_METHODS.get(usize::from(self.known_method).wrapping_sub(1)) {
            Some(m) => m,
            None => std::str::from_utf8(self.fields.slice(self.method)).unwrap_or(""),
        }
    }

    /// The request target in origin form, its path in normal form
    /// (`codec::uri`) and its query as sent: what routes match and what the
    /// backend receives.
    pub fn target(&self) -> &str {
        std::str::from_utf8(self.fields.slice(self.target)).unwrap_or("")
    }

    /// The path part of the target, without the query.
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// The Host header without a port and without the trailing dot of a
    /// fully qualified name (as nginx: `example.com.` is `example.com`);
    /// lower-cased comparison is the caller's. For an absolute-form request
    /// this is the target's authority, which replaced the Host header (RFC
    /// 9112 §3.2.2).
    pub fn host(&self) -> Option<&str> {
        let h = std::str::from_utf8(trim(self.fields.get("host")?)).ok()?;
        let h = strip_port(h);
        Some(h.strip_suffix('.').unwrap_or(h))
    }

    /// Methods that may be replayed on a fresh connection (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        )
    }

    pub fn is_head(&self) -> bool {
        self.method() == "HEAD"
    }

    /// A WebSocket (or other) upgrade was requested.
    pub fn is_upgrade(&self) -> bool {
        self.fields.has_token("connection", "upgrade") && self.fields.get("upgrade").is_some()
    }
}

/// `host[:port]` or `[v6]:port` without the port.
pub fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split_once(']').map_or(h, |(a, _)| a);
    }
    h.rsplit_once(':').map_or(h, |(a, _)| a)
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    reason: (u32, u32),
    pub version: Version,
    pub fields: Fields,
    pub body: BodyKind,
    /// Whether the connection may carry another exchange afterwards.
    pub keep_alive: bool,
}

impl ResponseHead {
    pub fn reason(&self) -> &str {
        std::str::from_utf8(self.fields.slice(self.reason)).unwrap_or("")
    }
}

fn version(v: Option<u8>) -> Version {
    if v == Some(0) {
        Version::Http10
    } else {
        Version::Http11
    }
}

fn httparse_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::HeadTooLarge,
        httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status line"),
        httparse::Error::Token => HeadError::Malformed("invalid token"),
        httparse::Error::Version => HeadError::Malformed("invalid HTTP version"),
    }
}

/// What to do when a head is still incomplete: wait, or refuse it because it
/// has already passed a limit.
fn check_partial(buf: &[u8], limits: &HeadLimits, is_request: bool) -> Result<(), HeadError> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    if is_request && line_end.is_none() && buf.len() > limits.max_uri_bytes + 32 {
        return Err(HeadError::UriTooLong);
    }
    if buf.len() >= limits.max_head_bytes {
        if is_request && line_end.is_none() {
            return Err(HeadError::UriTooLong);
        }
        return Err(HeadError::HeadTooLarge);
    }
    Ok(())
}

/// Decides `Content-Length` / `Transfer-Encoding` framing shared by both
/// directions. `None` means neither header is present.
fn framing(fields: &Fields, version: Version) -> Result<Option<BodyKind>, HeadError> {
    let has_te = fields.get("transfer-encoding").is_some();
    let mut length: Option<u64> = None;
    for v in fields.get_all("content-length") {
        for part in v.split(|&b| b == b',') {
            let part = trim(part);
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed("invalid content-length"));
            }
            let n = part
                .iter()
                .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
            match length {
                Some(prev) if prev != n => {
                    return Err(HeadError::Malformed("conflicting content-length values"))
                }
                _ => length = Some(n),
            }
        }
    }
    if has_te {
        if length.is_some() {
            return Err(HeadError::Malformed(
                "both content-length and transfer-encoding",
            ));
        }
        if version == Version::Http10 {
            return Err(HeadError::Malformed("transfer-encoding in HTTP/1.0"));
        }
        let mut codings = fields.tokens("transfer-encoding");
        let (first, rest) = (codings.next(), codings.next());
        return match (first, rest) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Some(BodyKind::Chunked)),
            _ => Err(HeadError::UnsupportedTransferEncoding),
        };
    }
    Ok(length.map(|n| {
        if n == 0 {
            BodyKind::Empty
        } else {
            BodyKind::Length(n)
        }
    }))
}

fn keep_alive(fields: &Fields, version: Version) -> bool {
    match version {
        Version::Http11 => !fields.has_token("connection", "close"),
        Version::Http10 => fields.has_token("connection", "keep-alive"),
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some((n, head)))`: the head took
/// `n` bytes; the body (if any) follows.
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(usize, RequestHead)>, HeadError> {
    // Uninitialised: httparse writes the entries it fills (a zeroed
    // table was 8 KiB of stores per parse, twice per proxied request).
    let mut table =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CEILING];
    let max = limits.max_headers.min(MAX_HEADERS_CEILING);
    let mut req = httparse::Request::new(&mut []);
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let n = match req.parse_with_uninit_headers(window, &mut table[..max]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            check_partial(buf, limits, true)?;
            return Ok(None);
        }
        Err(e) => return Err(httparse_error(e)),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    if target.len() > limits.max_uri_bytes {
        return Err(HeadError::UriTooLong);
    }
    let version = version(req.version);
    // Methods are case-sensitive (RFC 9110 §9.1), but a backend that folds
    // case must not be handed a `trace` either.
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(HeadError::UnsupportedMethod(
            "CONNECT is not supported: corepin is a reverse proxy, not a tunnel",
        ));
    }
    if method.eq_ignore_ascii_case("TRACE") {
        return Err(HeadError::UnsupportedMethod(
            "TRACE is not supported: it would echo the headers corepin adds",
        ));
    }
    let norm = uri::normalize_target(target.as_bytes()).map_err(HeadError::Malformed)?;
    let known_method = STATIC_METHODS
        .iter()
        .position(|m| *m == method)
        .map_or(0, |i| i as u8 + 1);
    let method = span(buf, method.as_bytes());
    let rewritten = matches!(norm.path_and_query, Cow::Owned(_));
    let spare = norm.authority.map_or(0, |a| a.len() + 4)
        + if rewritten {
            norm.path_and_query.len()
        } else {
            0
        };
    let mut fields = Fields::from_httparse(buf, n, req.headers, spare);
    let mut hosts = 0;
    for v in fields.get_all("host") {
        hosts += 1;
        if !uri::valid_authority(trim(v)) {
            return Err(HeadError::Malformed("invalid host header"));
        }
    }
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one host header"));
    }
    if hosts == 0 && version == Version::Http11 {
        return Err(HeadError::Malformed("HTTP/1.1 request without host header"));
    }
    if let Some(authority) = norm.authority {
        fields.set("Host", authority);
    }
    let target = if rewritten {
        fields.append(&norm.path_and_query)
    } else {
        span(buf, target.as_bytes())
    };
    let body = framing(&fields, version)?.unwrap_or(BodyKind::Empty);
    let mut expect_continue = false;
    if let Some(e) = fields.get("expect") {
        if trim(e).eq_ignore_ascii_case(b"100-continue") {
            expect_continue = version == Version::Http11;
        } else {
            return Err(HeadError::UnsupportedExpectation);
        }
    }
    let keep_alive = keep_alive(&fields, version);
    Ok(Some((
        n,
        RequestHead {
            method,
            known_method,
            target,
            version,
            fields,
            body,
            keep_alive,
            expect_continue,
        },
    )))
}

/// Parses a response head from the start of `buf`. `request_was_head` makes
/// the body empty whatever the headers say.
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
    request_was_head: bool,
) -> Result<Option<(usize, ResponseHead)>, HeadError> {
    let mut table =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CEILING];
    let max = limits.max_headers.min(MAX_HEADERS_CEILING);
    let mut res = httparse::Response::new(&mut []);
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        window,
        &mut table[..max],
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            check_partial(buf, limits, false)?;
            return Ok(None);
        }
        Err(e) => return Err(httparse_error(e)),
    };
    let (Some(status), Some(reason)) = (res.code, res.reason) else {
        return Err(HeadError::Malformed("incomplete status line"));
    };
    let version = version(res.version);
    let reason = span(buf, reason.as_bytes());
    let fields = Fields::from_httparse(buf, n, res.headers, 0);
    let framed = framing(&fields, version)?;
    let body = if request_was_head || (100..200).contains(&status) || status == 204 || status == 304
    {
        BodyKind::Empty
    } else {
        framed.unwrap_or(BodyKind::UntilClose)
    };
    let keep_alive = keep_alive(&fields, version) && body != BodyKind::UntilClose;
    Ok(Some((
        n,
        ResponseHead {
            status,
            reason,
            version,
            fields,
            body,
            keep_alive,
        },
    )))
}

/// Hop-by-hop fields never forwarded by a proxy (RFC 9110 §7.6.1), plus the
/// framing fields the proxy always writes itself (and never copies from a
/// GRIP source, `codec::response`).
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// End-to-end fields a `Connection` header may not make hop-by-hop: the
/// request's authority, which corepin routes on and forwards (RFC 9110
/// §7.6.1 forbids listing fields meant for every recipient). Framing
/// fields need no entry: corepin always writes its own.
const NOT_HOP_BY_HOP: &[&str] = &["host"];

/// True when the field named `name` must not be forwarded: it is hop-by-hop
/// or listed in the message's own `Connection` header (unless it is one of
/// `NOT_HOP_BY_HOP`).
pub fn is_hop_by_hop(fields: &Fields, name: &[u8]) -> bool {
    HopByHop::of(fields).drops(name)
}

/// [`is_hop_by_hop`] for one message, its `Connection` fields looked at
/// once: a loop over a head's fields then scans them again only when they
/// list something beyond `keep-alive` (itself always hop-by-hop), instead
/// of once per field.
pub struct HopByHop<'a> {
    fields: &'a Fields,
    /// A `Connection` field lists a token other than `keep-alive`.
    listed: bool,
}

impl<'a> HopByHop<'a> {
    pub fn of(fields: &'a Fields) -> Self {
        let listed = fields
            .tokens("connection")
            .any(|t| !t.eq_ignore_ascii_case(b"keep-alive"));
        HopByHop { fields, listed }
    }

    /// True when the field `name` must not be forwarded.
    pub fn drops(&self, name: &[u8]) -> bool {
        HOP_BY_HOP
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
            || (self.listed
                && self
                    .fields
                    .tokens("connection")
                    .any(|t| t.eq_ignore_ascii_case(name))
                && !NOT_HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_bytes().eq_ignore_ascii_case(name)))
    }
}

/// `name` compared as CGI/WSGI servers see it: ASCII case ignored, and `_`
/// and `.` taken as `-` (`Grip_Sig` and `grip.sig` both arrive as
/// `HTTP_GRIP_SIG`). `canonical` is lower-case with `-`.
fn same_as_cgi(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name.iter().zip(canonical).all(|(&n, &c)| {
            let n = match n {
                b'_' | b'.' => b'-',
                n => n.to_ascii_lowercase(),
            };
            n == c
        })
}

/// True when `name` is `canonical` (lower-case, with `-`) under the CGI
/// mapping of `same_as_cgi`: a client cannot slip `X_Real_IP` past a check
/// for `X-Real-IP`.
pub fn cgi_name_is(name: &[u8], canonical: &str) -> bool {
    same_as_cgi(name, canonical.as_bytes())
}

/// True when `name` starts with `prefix` (lower-case, with `-`) under the
/// CGI mapping of `same_as_cgi`.
pub fn cgi_name_starts(name: &[u8], prefix: &str) -> bool {
    name.len() >= prefix.len() && same_as_cgi(&name[..prefix.len()], prefix.as_bytes())
}

/// The canonical reason phrase for a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// Appends `name: value\r\n`.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal, without `core::fmt` (every proxied head
/// writes a status code or a length).
pub fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends the framing fields for `body` as the sender of the message.
pub fn write_framing(out: &mut Vec<u8>, body: BodyKind) {
    match body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            write_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::Empty | BodyKind::UntilClose => {}
    }
}

/// Appends a complete small response with a text body: used for every error
/// the proxy answers itself.
pub fn write_simple_response(out: &mut Vec<u8>, status: u16, body: &str, close: bool) {
    write_simple_response_with(out, status, body, close, b"");
}

/// `write_simple_response` with extra whole header lines.
pub fn write_simple_response_with(
    out: &mut Vec<u8>,
    status: u16,
    body: &str,
    close: bool,
    extra: &[u8],
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\n",
        reason_phrase(status)
    );
    write_framing(out, BodyKind::Length(body.len() as u64 + 1));
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out.push(b'\n');
}

/// Fuzz invariant: parsing never claims more bytes than given, and no
/// prefix of `data` completes differently from the whole, or fails where
/// the whole succeeds; a parsed request's target is in origin form and
/// normal form (normalising it again changes nothing), and its Host, if
/// any, is valid.
#[doc(hidden)]
pub fn check_head_invariants(data: &[u8], limits: &HeadLimits) {
    let whole = parse_request(data, limits);
    if let Ok(Some((n, head))) = &whole {
        assert!(*n <= data.len(), "claimed {n} of {} bytes", data.len());
        let again = uri::normalize_target(head.target().as_bytes());
        assert!(
            matches!(&again, Ok(t) if t.authority.is_none() && *t.path_and_query == *head.target().as_bytes()),
            "target {:?} is not in normal form",
            head.target()
        );
        if let Some(h) = head.fields.get("host") {
            assert!(uri::valid_authority(trim(h)), "host {h:?}");
        }
    }
    for cut in 0..data.len().min(600) {
        match parse_request(&data[..cut], limits) {
            Ok(None) => {}
            Ok(Some((n, _))) => {
                assert!(
                    matches!(&whole, Ok(Some((w, _))) if *w == n),
                    "prefix {cut} completed at {n}"
                )
            }
            Err(_) => assert!(whole.is_err(), "prefix {cut} failed, whole did not"),
        }
    }
}

#[cfg(test)]
mod tests;
