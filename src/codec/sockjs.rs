//! SockJS (protocol 0.3.3, the transports Pushpin serves) as pure
//! functions: which SockJS URL a request names, the frames the server
//! writes (`o`, `h`, `a[...]`, `c[code,"reason"]`) and their JSON-P form,
//! the client's message payloads (`xhr_send`, `jsonp_send`, framed
//! WebSocket messages), the `info` answer and the iframe page.
//!
//! Where Pushpin departs from the protocol in ways a client could be hurt
//! by, this module follows the protocol instead: empty or dotted session
//! ids are not found (404), a JSON-P callback is checked, a form-encoded
//! `jsonp_send` turns `+` into a space, an empty framed WebSocket message
//! is ignored. Each is listed in the README's "Moving from Pushpin".

use sha1::{Digest, Sha1};

/// Largest request body a SockJS URL takes (Pushpin's value).
pub const MAX_BODY: usize = 100_000;
/// Largest single message, either way (Pushpin's value).
pub const MAX_MESSAGE: usize = 200_000;
/// Longest JSON-P callback accepted.
pub const MAX_CALLBACK: usize = 128;
/// Longest server or session id segment accepted.
pub const MAX_ID: usize = 128;
/// Idle time after which a held poll is answered `h`, and the framed
/// WebSocket's heartbeat period (Pushpin's value, in seconds).
pub const HEARTBEAT_SECS: u64 = 25;
/// How long a closed session's close frame is kept for late requests, and
/// how long a session waits for its next poll (Pushpin's value, seconds).
pub const LINGER_SECS: u64 = 5;

/// The HTTP transports' last path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `xhr`: a poll (opens the session when it is new).
    Xhr,
    /// `xhr_send`: messages from the client.
    XhrSend,
    /// `jsonp`: a poll answered as a script.
    Jsonp,
    /// `jsonp_send`: messages from the client, form-encoded or raw.
    JsonpSend,
    /// `xhr_streaming`: a prelude, then frames each on its line, until
    /// [`STREAM_LIMIT`] bytes.
    XhrStreaming,
    /// `eventsource`: frames as server-sent events, until
    /// [`STREAM_LIMIT`] bytes.
    EventSource,
    /// `htmlfile`: an HTML page for a hidden iframe ([`htmlfile_page`]),
    /// then each frame as a `<script>` calling the page's `p`, until
    /// [`STREAM_LIMIT`] bytes.
    HtmlFile,
}

impl Transport {
    pub fn is_jsonp(self) -> bool {
        matches!(self, Transport::Jsonp | Transport::JsonpSend)
    }
    pub fn is_send(self) -> bool {
        matches!(self, Transport::XhrSend | Transport::JsonpSend)
    }
    /// A receiving request held open for many frames.
    pub fn is_streaming(self) -> bool {
        matches!(
            self,
            Transport::XhrStreaming | Transport::EventSource | Transport::HtmlFile
        )
    }
}

/// Body bytes after which a streaming response ends, so the client opens
/// a new one (the protocol's `response_limit`, 128 KiB).
pub const STREAM_LIMIT: usize = 128 * 1024;

/// What a streaming response of `t` begins with: for `xhr_streaming`
/// 2048 `h` and a newline (so browsers that buffer the first 2 KiB of a
/// response hand frames over at once), for `eventsource` an empty line.
pub fn stream_prelude(t: Transport) -> Vec<u8> {
    match t {
        Transport::XhrStreaming => {
            let mut v = vec![b'h'; 2048];
            v.push(b'\n');
            v
        }
        Transport::EventSource => b"\r\n".to_vec(),
        _ => Vec::new(),
    }
}

/// The start of an `htmlfile` response: a page for the iframe the client
/// opens, which tells `parent.CALLBACK` the stream started, hands each
/// frame to it as the scripts that follow call `p`, and tells it the
/// stream stopped when the page ends; padded with spaces past 1 KiB (so
/// browsers that buffer the start of a page run it at once). `callback`
/// is a [`valid_callback`] (letters, digits, `_`, `.`, `-`: nothing HTML
/// or a script could read otherwise).
pub fn htmlfile_page(callback: &str) -> Vec<u8> {
    let mut page = format!(
        "<!doctype html>\n<html><head>\n<meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n</head><body><h2>SockJS htmlfile stream</h2>\n<script>\ndocument.domain = document.domain;\nvar c = parent.{callback};\nc.start();\nfunction p(d) {{ c.message(d); }}\nwindow.onload = function() {{ c.stop(); }};\n</script>\n"
    )
    .into_bytes();
    let pad = 1024usize.saturating_sub(page.len());
    page.resize(page.len() + pad, b' ');
    page.extend_from_slice(b"\r\n\r\n");
    page
}

/// The encoded `frame` (no newline) as it goes on a streaming response of
/// `t`: a line for `xhr_streaming`, a `data:` event for `eventsource`, a
/// script for `htmlfile` passing the frame as a JS string in which `<`,
/// `>` and `&` are escaped too (a message holding `</script>` cannot end
/// the script), as are U+2028 and U+2029.
/// Encoded frames are JSON, so they never hold a CR or LF themselves; in
/// an event `%`, CR, LF and NUL are percent-encoded all the same, as the
/// protocol asks (the client `decodeURI`s each event).
pub fn stream_chunk(out: &mut Vec<u8>, t: Transport, frame: &[u8]) {
    if t == Transport::HtmlFile {
        out.extend_from_slice(b"<script>\np(\"");
        let mut i = 0;
        while i < frame.len() {
            let b = frame[i];
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'<' => out.extend_from_slice(b"\\u003c"),
                b'>' => out.extend_from_slice(b"\\u003e"),
                b'&' => out.extend_from_slice(b"\\u0026"),
                0xe2 if frame.get(i + 1) == Some(&0x80)
                    && matches!(frame.get(i + 2), Some(0xa8 | 0xa9)) =>
                {
                    out.extend_from_slice(if frame[i + 2] == 0xa8 {
                        b"\\u2028"
                    } else {
                        b"\\u2029"
                    });
                    i += 3;
                    continue;
                }
                0..=0x1f | 0x7f => {
                    out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                }
                _ => out.push(b),
            }
            i += 1;
        }
        out.extend_from_slice(b"\");\n</script>\r\n");
        return;
    }
    if t == Transport::EventSource {
        out.extend_from_slice(b"data: ");
        for &b in frame {
            match b {
                b'%' => out.extend_from_slice(b"%25"),
                b'\r' => out.extend_from_slice(b"%0D"),
                b'\n' => out.extend_from_slice(b"%0A"),
                0 => out.extend_from_slice(b"%00"),
                _ => out.push(b),
            }
        }
        out.extend_from_slice(b"\r\n\r\n");
    } else {
        out.extend_from_slice(frame);
        out.push(b'\n');
    }
}

/// What a request under a route's `sockjs=` prefix asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Url<'a> {
    /// `OPTIONS` on any SockJS path: `204`.
    Options,
    /// `GET /info`.
    Info,
    /// `GET /iframe*.html`.
    Iframe,
    /// `/<server>/<session>/<transport>` over HTTP.
    Session {
        session: &'a str,
        transport: Transport,
    },
    /// `/<server>/<session>/websocket` upgraded: SockJS framing over a
    /// WebSocket.
    Framed { session: &'a str },
    /// `/websocket` upgraded: a plain WebSocket, no framing.
    Raw,
    /// Anything else: `404`.
    NotFound,
}

/// A server or session id: 1 to [`MAX_ID`] bytes, no dot (the protocol's
/// rule), nothing a path or a log line could be confused by.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"./?#%".contains(&b))
}

/// Reads `path`, the request's path after the route's SockJS prefix (no
/// query), for `method`; `upgrade` is a WebSocket handshake.
pub fn classify<'a>(method: &str, path: &'a str, upgrade: bool) -> Url<'a> {
    if upgrade {
        if path == "/websocket" {
            return Url::Raw;
        }
        return match segments(path) {
            Some((_, session, "websocket")) => Url::Framed { session },
            _ => Url::NotFound,
        };
    }
    if method == "OPTIONS" {
        return Url::Options;
    }
    if path == "/info" {
        return if method == "GET" || method == "HEAD" {
            Url::Info
        } else {
            Url::NotFound
        };
    }
    if let Some(name) = path.strip_prefix("/iframe") {
        if name.ends_with(".html") && !name.contains('/') && (method == "GET" || method == "HEAD") {
            return Url::Iframe;
        }
        return Url::NotFound;
    }
    let Some((_, session, last)) = segments(path) else {
        return Url::NotFound;
    };
    let transport = match (method, last) {
        ("POST", "xhr") => Transport::Xhr,
        ("POST", "xhr_send") => Transport::XhrSend,
        ("GET", "jsonp") => Transport::Jsonp,
        ("POST", "jsonp_send") => Transport::JsonpSend,
        ("POST", "xhr_streaming") => Transport::XhrStreaming,
        ("GET", "eventsource") => Transport::EventSource,
        ("GET", "htmlfile") => Transport::HtmlFile,
        _ => return Url::NotFound,
    };
    Url::Session { session, transport }
}

/// `/<server>/<session>/<last>` with valid ids.
fn segments(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix('/')?;
    let mut it = rest.split('/');
    let (server, session, last) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || !valid_id(server) || !valid_id(session) {
        return None;
    }
    Some((server, session, last))
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Open,
    Heartbeat,
    Messages(&'a [String]),
    Close(u16, &'a str),
}

/// Appends `s` as a JSON string, escaping what the protocol asks for
/// beyond JSON (the characters some JavaScript engines or proxies mangle).
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for ch in s.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20
                || ('\u{200c}'..='\u{200f}').contains(&c)
                || ('\u{2028}'..='\u{202f}').contains(&c)
                || ('\u{2060}'..='\u{206f}').contains(&c)
                || ('\u{fff0}'..='\u{ffff}').contains(&c) =>
            {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Appends `frame` (without a line end).
pub fn encode(out: &mut Vec<u8>, frame: &Frame<'_>) {
    match frame {
        Frame::Open => out.push(b'o'),
        Frame::Heartbeat => out.push(b'h'),
        Frame::Messages(m) => {
            out.extend_from_slice(b"a[");
            for (i, s) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_string(out, s);
            }
            out.push(b']');
        }
        Frame::Close(code, reason) => {
            out.extend_from_slice(format!("c[{code},").as_bytes());
            json_string(out, reason);
            out.push(b']');
        }
    }
}

/// A frame as an `xhr` body: the frame and `\n`.
pub fn xhr_body(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, frame);
    out.push(b'\n');
    out
}

/// A frame (or `ok`) as a `jsonp` body: `/**/CB("<frame>");\n`.
pub fn jsonp_body(callback: &str, frame: &[u8]) -> Vec<u8> {
    let mut out = format!("/**/{callback}(").into_bytes();
    json_string(&mut out, &String::from_utf8_lossy(frame));
    out.extend_from_slice(b");\n");
    out
}

/// The protocol's callback rule: 1 to [`MAX_CALLBACK`] bytes of
/// `[A-Za-z0-9_.-]` (sockjs-client sends `_jp.a` and six characters).
pub fn valid_callback(cb: &str) -> bool {
    !cb.is_empty()
        && cb.len() <= MAX_CALLBACK
        && cb
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Why a client's messages are refused (400, the body names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// No payload at all.
    Expected,
    /// Not a JSON array of strings.
    Broken,
    /// One message over [`MAX_MESSAGE`] bytes.
    TooLarge,
}

impl PayloadError {
    pub fn message(self) -> &'static str {
        match self {
            PayloadError::Expected => "Payload expected.",
            PayloadError::Broken => "Broken JSON encoding.",
            PayloadError::TooLarge => "Message too large.",
        }
    }
}

/// The messages in a payload: a JSON array of strings.
pub fn messages(payload: &[u8]) -> Result<Vec<String>, PayloadError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Expected);
    }
    let v: Vec<String> = serde_json::from_slice(payload).map_err(|_| PayloadError::Broken)?;
    if v.iter().any(|m| m.len() > MAX_MESSAGE) {
        return Err(PayloadError::TooLarge);
    }
    Ok(v)
}

/// A framed WebSocket message from the client: its messages, with an
/// empty message meaning none (the protocol's rule).
pub fn ws_messages(msg: &[u8]) -> Result<Vec<String>, PayloadError> {
    if msg.is_empty() {
        return Ok(Vec::new());
    }
    messages(msg)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Form decoding (`application/x-www-form-urlencoded`): `+` is a space,
/// `%XX` a byte; `None` for a bad escape.
pub fn form_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hi = hex(*s.get(i + 1)?)?;
                let lo = hex(*s.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The first value of `name` in a form-encoded body or a query, decoded.
/// `Some(Err(()))` for a bad escape.
pub fn form_value(form: &[u8], name: &str) -> Option<Result<Vec<u8>, ()>> {
    form.split(|&b| b == b'&').find_map(|pair| {
        let (n, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (form_decode(n).as_deref() == Some(name.as_bytes())).then(|| form_decode(v).ok_or(()))
    })
}

/// The payload of a `jsonp_send`: the form field `d` when the body is
/// form-encoded, otherwise the body itself (the protocol accepts both).
pub fn jsonp_send_payload(
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<Vec<u8>, PayloadError> {
    let form = content_type.is_some_and(|ct| {
        let ct = ct.split(|&b| b == b';').next().unwrap_or(b"");
        ct.trim_ascii()
            .eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    });
    if !form {
        return Ok(body.to_vec());
    }
    match form_value(body, "d") {
        Some(Ok(v)) => Ok(v),
        Some(Err(())) => Err(PayloadError::Broken),
        None => Err(PayloadError::Expected),
    }
}

/// The `info` body (`entropy` a fresh random number each time): Pushpin's
/// keys, compact, sorted, and a line end.
pub fn info_body(entropy: u32) -> Vec<u8> {
    format!(
        "{{\"cookie_needed\":false,\"entropy\":{entropy},\"origins\":[\"*:*\"],\"websocket\":true}}\n"
    )
    .into_bytes()
}

/// The iframe page loading `sockjs_url`, and its entity tag (a hash of the
/// page, quoted). `None` when the URL could break out of its attribute.
pub fn iframe_page(sockjs_url: &str) -> Option<(Vec<u8>, String)> {
    if sockjs_url
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || b"\"<>'\\".contains(&b))
    {
        return None;
    }
    let page = format!(
        "<!DOCTYPE html>\n<html>\n<head>\n  <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  \
         <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n  <script>\n    \
         document.domain = document.domain;\n    _sockjs_onload = function(){{SockJS.bootstrap_iframe();}};\n  \
         </script>\n  <script src=\"{sockjs_url}\"></script>\n</head>\n<body>\n  <h2>Don't panic!</h2>\n  \
         <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>\n</body>\n</html>"
    )
    .into_bytes();
    let digest = Sha1::digest(&page);
    let mut etag = String::from("\"");
    for b in &digest[..16] {
        etag.push_str(&format!("{b:02x}"));
    }
    etag.push('"');
    Some((page, etag))
}

/// Fields of an HTTP transport's first request that do not go into the
/// WebSocket handshake made for its session (framing, hop-by-hop, and
/// what the handshake sets itself).
const NOT_IN_HANDSHAKE: &[&str] = &[
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "expect",
    "te",
];

/// The WebSocket handshake (`GET target`) a session's backend side is
/// opened with: the client's own fields (a WebSocket transport's
/// handshake as it is; an HTTP transport's first request without its
/// framing, plus the upgrade fields and `key`).
pub fn handshake<'a>(
    target: &str,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    from_http: Option<&str>,
) -> Vec<u8> {
    let mut out = format!("GET {target} HTTP/1.1\r\n").into_bytes();
    for (n, v) in fields {
        let skip = from_http.is_some()
            && (NOT_IN_HANDSHAKE
                .iter()
                .any(|f| n.eq_ignore_ascii_case(f.as_bytes()))
                || n.len() >= 14 && n[..14].eq_ignore_ascii_case(b"sec-websocket-"));
        if !skip {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(key) = from_http {
        out.extend_from_slice(
            format!(
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The shard (of `shards`) that owns the HTTP session `id`: every request
/// of one session is served there, whichever core accepted it (FNV-1a,
/// stable across processes and cores).
pub fn owner(id: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// Fuzz invariant: for any input, URL classification, payload parsing and
/// form decoding answer without panicking; an accepted session id is a
/// valid id; accepted messages fit [`MAX_MESSAGE`]; encoding accepted
/// messages as a frame and reading the frame's array back gives them
/// again; a JSON-P body for a valid callback is one script line.
#[doc(hidden)]
pub fn check_invariants(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for method in ["GET", "POST", "OPTIONS"] {
        for upgrade in [false, true] {
            match classify(method, &text, upgrade) {
                Url::Session { session, .. } | Url::Framed { session } => {
                    assert!(valid_id(session));
                }
                _ => {}
            }
        }
    }
    for payload in [
        Ok(data.to_vec()),
        jsonp_send_payload(Some(b"application/x-www-form-urlencoded"), data),
    ] {
        let Ok(Ok(msgs)) = payload.map(|p| messages(&p)) else {
            continue;
        };
        assert!(msgs.iter().all(|m| m.len() <= MAX_MESSAGE));
        let mut out = Vec::new();
        encode(&mut out, &Frame::Messages(&msgs));
        let back: Vec<String> = serde_json::from_slice(&out[1..]).expect("frame is JSON");
        assert_eq!(back, msgs);
        let script = jsonp_body("_jp.a1", &out);
        assert_eq!(script.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(script.ends_with(b");\n"));
        // A streamed frame is one line, one event: no CR/LF inside.
        for t in [Transport::XhrStreaming, Transport::EventSource] {
            let mut line = Vec::new();
            stream_chunk(&mut line, t, &out);
            let end: &[u8] = if t == Transport::EventSource {
                b"\r\n\r\n"
            } else {
                b"\n"
            };
            let inner = &line[..line.len() - end.len()];
            assert!(line.ends_with(end) && !inner.iter().any(|&b| b == b'\r' || b == b'\n'));
        }
        // htmlfile: one script whose string (a JSON string too) is the
        // frame, with no `<` that could end the script early.
        let mut script = Vec::new();
        stream_chunk(&mut script, Transport::HtmlFile, &out);
        let inner = script
            .strip_prefix(b"<script>\np(".as_slice())
            .and_then(|r| r.strip_suffix(b");\n</script>\r\n".as_slice()))
            .expect("one script");
        assert!(!inner.iter().any(|&b| b == b'<' || b == b'\r' || b == b'\n'));
        let back: String = serde_json::from_slice(inner).expect("a JS string");
        assert_eq!(back.as_bytes(), &out[..]);
    }
    let _ = ws_messages(data);
    let _ = form_value(data, "d");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_framing() {
        let p = stream_prelude(Transport::XhrStreaming);
        assert_eq!(p.len(), 2049);
        assert!(p[..2048].iter().all(|&b| b == b'h'));
        assert_eq!(p[2048], b'\n');
        assert_eq!(stream_prelude(Transport::EventSource), b"\r\n");
        // htmlfile: a page naming the callback, past 1 KiB, then scripts.
        let page = htmlfile_page("_jp.a1");
        assert!(page.len() > 1024 && page.ends_with(b" \r\n\r\n"));
        assert!(String::from_utf8_lossy(&page).contains("var c = parent._jp.a1;"));
        let mut out = Vec::new();
        stream_chunk(
            &mut out,
            Transport::HtmlFile,
            "a[\"</script>&\\\"\u{2028}\"]".as_bytes(),
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "<script>\np(\"a[\\\"\\u003c/script\\u003e\\u0026\\\\\\\"\\u2028\\\"]\");\n</script>\r\n"
        );
        assert!(Transport::HtmlFile.is_streaming());
        let mut out = Vec::new();
        stream_chunk(&mut out, Transport::XhrStreaming, b"o");
        stream_chunk(&mut out, Transport::EventSource, b"a[\"x\\ny%41\"]");
        assert_eq!(out, b"o\ndata: a[\"x\\ny%2541\"]\r\n\r\n");
        out.clear();
        stream_chunk(&mut out, Transport::EventSource, b"\r\n\0");
        assert_eq!(out, b"data: %0D%0A%00\r\n\r\n");
        assert!(Transport::EventSource.is_streaming() && !Transport::Xhr.is_streaming());
    }

    #[test]
    fn urls() {
        use Transport::*;
        let s = |session, transport| Url::Session { session, transport };
        for (method, path, upgrade, want) in [
            ("OPTIONS", "/a/b/xhr", false, Url::Options),
            ("OPTIONS", "", false, Url::Options),
            ("GET", "/info", false, Url::Info),
            ("POST", "/info", false, Url::NotFound),
            ("GET", "/iframe.html", false, Url::Iframe),
            ("GET", "/iframe-1.6.1.html", false, Url::Iframe),
            ("GET", "/iframe/x.html", false, Url::NotFound),
            ("GET", "/iframe.htm", false, Url::NotFound),
            ("POST", "/000/abc/xhr", false, s("abc", Xhr)),
            ("POST", "/000/abc/xhr_send", false, s("abc", XhrSend)),
            ("GET", "/000/abc/jsonp", false, s("abc", Jsonp)),
            ("POST", "/000/abc/jsonp_send", false, s("abc", JsonpSend)),
            ("GET", "/000/abc/xhr", false, Url::NotFound),
            (
                "POST",
                "/000/abc/xhr_streaming",
                false,
                s("abc", XhrStreaming),
            ),
            ("GET", "/000/abc/eventsource", false, s("abc", EventSource)),
            ("GET", "/000/abc/xhr_streaming", false, Url::NotFound),
            ("POST", "/000/abc/eventsource", false, Url::NotFound),
            // Not served: the client falls back.
            ("GET", "/000/abc/htmlfile", false, s("abc", HtmlFile)),
            ("POST", "/000/abc/htmlfile", false, Url::NotFound),
            ("GET", "/000/abc/websocket", false, Url::NotFound),
            // Bad ids (the protocol's 404s; Pushpin takes them).
            ("POST", "//abc/xhr", false, Url::NotFound),
            ("POST", "/000//xhr", false, Url::NotFound),
            ("POST", "/a./abc/xhr", false, Url::NotFound),
            ("POST", "/000/a.b/xhr", false, Url::NotFound),
            ("POST", "/000/abc", false, Url::NotFound),
            ("POST", "/000/abc/xhr/x", false, Url::NotFound),
            ("GET", "/", false, Url::NotFound),
            ("GET", "", false, Url::NotFound),
            ("GET", "/websocket", true, Url::Raw),
            (
                "GET",
                "/000/abc/websocket",
                true,
                Url::Framed { session: "abc" },
            ),
            ("GET", "/000/a.c/websocket", true, Url::NotFound),
            ("GET", "/000/abc/xhr", true, Url::NotFound),
            ("GET", "/info", true, Url::NotFound),
        ] {
            assert_eq!(
                classify(method, path, upgrade),
                want,
                "{method} {path} {upgrade}"
            );
        }
        let long = format!("/000/{}/xhr", "a".repeat(MAX_ID + 1));
        assert_eq!(classify("POST", &long, false), Url::NotFound);
    }

    #[test]
    fn urls_split_at_every_offset() {
        // Every prefix of a session URL classifies without panicking, and
        // only the whole one names the session.
        let path = "/123/sess1/xhr_send";
        for i in 0..path.len() {
            let got = classify("POST", &path[..i], false);
            assert!(
                !matches!(got, Url::Session { .. }) || path[..i].ends_with("/xhr"),
                "{i}"
            );
        }
        assert_eq!(
            classify("POST", path, false),
            Url::Session {
                session: "sess1",
                transport: Transport::XhrSend
            }
        );
    }

    #[test]
    fn frames() {
        let m = vec!["a".to_string(), "q\"\\\n\u{1}\u{2028}é".to_string()];
        for (frame, want) in [
            (Frame::Open, "o"),
            (Frame::Heartbeat, "h"),
            (
                Frame::Messages(&m),
                "a[\"a\",\"q\\\"\\\\\\n\\u0001\\u2028é\"]",
            ),
            (Frame::Messages(&[]), "a[]"),
            (Frame::Close(3000, "Go away!"), "c[3000,\"Go away!\"]"),
        ] {
            let mut out = Vec::new();
            encode(&mut out, &frame);
            assert_eq!(String::from_utf8_lossy(&out), want);
        }
        assert_eq!(xhr_body(&Frame::Open), b"o\n");
        assert_eq!(jsonp_body("_jp.a1", b"o"), b"/**/_jp.a1(\"o\");\n");
        assert_eq!(
            String::from_utf8_lossy(&jsonp_body("cb", b"a[\"x\"]")),
            "/**/cb(\"a[\\\"x\\\"]\");\n"
        );
    }

    #[test]
    fn callbacks() {
        for ok in ["_jp.aBc123", "a-b", "x"] {
            assert!(valid_callback(ok), "{ok}");
        }
        let long = "a".repeat(MAX_CALLBACK + 1);
        for bad in ["", "a(1)", "a b", "a\r\nb", "a;b", long.as_str()] {
            assert!(!valid_callback(bad), "{bad}");
        }
    }

    #[test]
    fn payloads() {
        assert_eq!(messages(b"[\"a\",\"b\"]"), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(messages(b" [] "), Ok(Vec::new()));
        for (p, e) in [
            (&b""[..], PayloadError::Expected),
            (b"  ", PayloadError::Expected),
            (b"[\"a\"", PayloadError::Broken),
            (b"[1]", PayloadError::Broken),
            (b"{\"a\":1}", PayloadError::Broken),
            (b"\"a\"", PayloadError::Broken),
        ] {
            assert_eq!(messages(p), Err(e), "{}", String::from_utf8_lossy(p));
        }
        let big = format!("[\"{}\"]", "x".repeat(MAX_MESSAGE + 1));
        assert_eq!(messages(big.as_bytes()), Err(PayloadError::TooLarge));
        assert_eq!(ws_messages(b""), Ok(Vec::new()));
        assert_eq!(ws_messages(b"x"), Err(PayloadError::Broken));
    }

    #[test]
    fn payloads_split_at_every_offset() {
        // A cut payload is refused, never half taken.
        let p = br#"["one","t\"wo"]"#;
        for i in 0..p.len() {
            assert!(messages(&p[..i]).is_err(), "{i}");
        }
        assert_eq!(messages(p), Ok(vec!["one".into(), "t\"wo".into()]));
    }

    #[test]
    fn forms() {
        let form = Some(&b"application/x-www-form-urlencoded"[..]);
        assert_eq!(
            jsonp_send_payload(form, b"i=1&d=%5B%22h%C3%A9llo+w%22%5D&d=x"),
            Ok(b"[\"h\xc3\xa9llo w\"]".to_vec())
        );
        assert_eq!(
            jsonp_send_payload(form, b"i=1"),
            Err(PayloadError::Expected)
        );
        assert_eq!(jsonp_send_payload(form, b"d=%4"), Err(PayloadError::Broken));
        assert_eq!(
            jsonp_send_payload(Some(b"text/plain"), b"[\"a+b\"]"),
            Ok(b"[\"a+b\"]".to_vec())
        );
        assert_eq!(jsonp_send_payload(None, b"x"), Ok(b"x".to_vec()));
        assert_eq!(form_value(b"t=1&d=a%2Bb", "d"), Some(Ok(b"a+b".to_vec())));
        assert_eq!(form_value(b"d", "d"), Some(Ok(Vec::new())));
    }

    #[test]
    fn forms_split_at_every_offset() {
        let s = b"a%41+%2B";
        for i in 0..=s.len() {
            match form_decode(&s[..i]) {
                Some(v) => assert!(b"aA +".starts_with(&v), "{i}"),
                None => assert!(s[..i].iter().rev().take(2).any(|&b| b == b'%'), "{i}"),
            }
        }
    }

    #[test]
    fn info_and_iframe() {
        assert_eq!(
            info_body(7),
            b"{\"cookie_needed\":false,\"entropy\":7,\"origins\":[\"*:*\"],\"websocket\":true}\n"
        );
        let v: serde_json::Value = serde_json::from_slice(&info_body(u32::MAX)).expect("json");
        assert_eq!(v["websocket"], true);
        let (page, etag) = iframe_page("http://h/sockjs.min.js").expect("page");
        let page = String::from_utf8(page).expect("utf8");
        assert!(page.contains("<script src=\"http://h/sockjs.min.js\"></script>"));
        assert!(page.contains("SockJS.bootstrap_iframe()"));
        assert_eq!(etag.len(), 34);
        assert_ne!(Some(etag), iframe_page("http://h/other.js").map(|p| p.1));
        assert_eq!(iframe_page("x\"><script>"), None);
    }

    #[test]
    fn handshakes() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"Host", b"h"),
            (b"Content-Length", b"0"),
            (b"Cookie", b"a=1"),
            (b"Sec-WebSocket-Key", b"old"),
            (b"Connection", b"keep-alive"),
        ];
        let h = handshake("/sj?t=1", fields.iter().copied(), Some("k=="));
        assert_eq!(
            String::from_utf8_lossy(&h),
            "GET /sj?t=1 HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: k==\r\n\r\n"
        );
        let h = handshake("/sj/websocket", fields.iter().copied(), None);
        assert!(String::from_utf8_lossy(&h).contains("Sec-WebSocket-Key: old\r\n"));
    }

    #[test]
    fn owners_are_stable_and_in_range() {
        for n in 1..5 {
            for id in ["a", "abcdefgh", "zz"] {
                let o = owner(id, n);
                assert!(o < n);
                assert_eq!(o, owner(id, n));
            }
        }
        // Both shards own some ids.
        let ids: Vec<String> = (0..32).map(|i| format!("id{i}")).collect();
        assert!(ids.iter().any(|i| owner(i, 2) == 0) && ids.iter().any(|i| owner(i, 2) == 1));
    }

    #[test]
    fn invariants_hold_on_samples() {
        for s in [
            &b""[..],
            b"[\"a\"]",
            b"d=%5B%22x%22%5D",
            b"/1/2/xhr",
            b"\xff\xfe",
            b"d=%zz",
        ] {
            check_invariants(s);
        }
    }
}
