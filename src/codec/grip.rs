//! GRIP instructions from a backend response (GRIP.md §1): the `Grip-*`
//! headers, or the JSON body of `Content-Type: application/grip-instruct`,
//! turned into one typed `Instruct`.

use bytes::Bytes;
use serde_json::Value;

use super::http1::{trim, Fields};
use super::response::{self, At, Head, Status};

/// The capabilities announced to backends in `Grip-Feature`.
pub const GRIP_FEATURES: &str = "status, link:next, filter:skip-self, filter:require-sub";

/// Default seconds a `response` hold lasts.
pub const DEFAULT_TIMEOUT: u32 = 55;
/// Shortest hold timeout accepted.
pub const MIN_TIMEOUT: u32 = 5;
/// Default keep-alive timeout (seconds).
pub const DEFAULT_KEEP_ALIVE: u32 = 55;
/// Default seconds before a stream's next link is fetched.
pub const DEFAULT_LINK_TIMEOUT: u32 = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    Response,
    Stream,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    pub name: String,
    pub prev_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveMode {
    /// Send after `timeout` seconds without any other output.
    Idle,
    /// Send every `timeout` seconds regardless.
    Interval,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepAlive {
    pub data: Bytes,
    pub timeout: u32,
    pub mode: KeepAliveMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextLink {
    pub url: String,
    pub timeout: u32,
}

/// A hold instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruct {
    pub hold: HoldMode,
    pub channels: Vec<ChannelSpec>,
    pub timeout: u32,
    pub keep_alive: Option<KeepAlive>,
    /// `Grip-Status`: the status of the held response, validated.
    pub status: Option<Status>,
    pub next: Option<NextLink>,
    pub meta: Vec<(String, String)>,
    pub expose: Vec<String>,
}

/// The response carried inside a JSON instruction, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonResponse {
    pub head: Head,
    pub body: Bytes,
}

/// Instructions the backend got wrong (answered 502 to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GripError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, GripError> {
    Err(GripError(msg.into()))
}

/// Splits `value; k=v; k2="v 2"` into the value and its parameters.
fn params(s: &str) -> (&str, Vec<(String, String)>) {
    let mut parts = s.split(';');
    let first = parts.next().unwrap_or("").trim();
    let ps = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().trim_matches('"').to_string();
            (!k.is_empty()).then_some((k, v))
        })
        .collect();
    (first, ps)
}

fn param<'a>(ps: &'a [(String, String)], key: &str) -> Option<&'a str> {
    ps.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn text(v: &[u8]) -> Result<&str, GripError> {
    std::str::from_utf8(v).or_else(|_| bad("a Grip header is not UTF-8"))
}

fn seconds(s: &str, what: &str) -> Result<u32, GripError> {
    s.trim()
        .parse()
        .or_else(|_| bad(format!("{what}: '{s}' is not a number of seconds")))
}

/// Decodes keep-alive data written as raw text, a C string (`\\ \r \n \t
/// \xHH`) or base64.
pub fn decode_keep_alive(data: &str, format: &str) -> Result<Bytes, GripError> {
    match format {
        "raw" | "" => Ok(Bytes::from(data.to_string())),
        "base64" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map(Bytes::from)
                .or_else(|_| bad("Grip-Keep-Alive: data is not valid base64"))
        }
        "cstring" => {
            let mut out = Vec::with_capacity(data.len());
            let b = data.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] != b'\\' {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
                match b.get(i + 1) {
                    Some(b'\\') => out.push(b'\\'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b'n') => out.push(b'\n'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'x') => {
                        let hex = b
                            .get(i + 2..i + 4)
                            .and_then(|h| std::str::from_utf8(h).ok());
                        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                            Some(v) => out.push(v),
                            None => return bad("Grip-Keep-Alive: bad \\x escape"),
                        }
                        i += 2;
                    }
                    _ => return bad("Grip-Keep-Alive: bad escape in cstring data"),
                }
                i += 2;
            }
            Ok(Bytes::from(out))
        }
        other => bad(format!("Grip-Keep-Alive: unknown format '{other}'")),
    }
}

fn keep_alive(v: &str) -> Result<KeepAlive, GripError> {
    let (data, ps) = params(v);
    let data = decode_keep_alive(data, param(&ps, "format").unwrap_or("raw"))?;
    let timeout = match param(&ps, "timeout") {
        Some(t) => seconds(t, "Grip-Keep-Alive timeout")?.max(1),
        None => DEFAULT_KEEP_ALIVE,
    };
    let mode = match param(&ps, "mode") {
        None | Some("idle") => KeepAliveMode::Idle,
        Some("interval") => KeepAliveMode::Interval,
        Some(m) => return bad(format!("Grip-Keep-Alive: unknown mode '{m}'")),
    };
    Ok(KeepAlive {
        data,
        timeout,
        mode,
    })
}

fn channels<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Vec<ChannelSpec>, GripError> {
    let mut out = Vec::new();
    for v in values {
        for part in text(v)?.split(',') {
            let (name, ps) = params(part);
            if name.is_empty() {
                continue;
            }
            out.push(ChannelSpec {
                name: name.to_string(),
                prev_id: param(&ps, "prev-id").map(String::from),
            });
        }
    }
    Ok(out)
}

fn status(v: &str) -> Result<Status, GripError> {
    let v = v.trim();
    let (code, reason) = v.split_once(' ').unwrap_or((v, ""));
    let code: u64 = code.parse().map_err(|_| {
        GripError(format!(
            "Grip-Status: '{v}' does not start with a status code"
        ))
    })?;
    Status::new(code, Some(reason.trim())).map_err(|e| GripError(format!("Grip-Status: {e}")))
}

fn links<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<NextLink>, GripError> {
    for v in values {
        for part in text(v)?.split(',') {
            let (url, ps) = params(part);
            let url = url.trim_start_matches('<').trim_end_matches('>');
            if param(&ps, "rel") == Some("next") && !url.is_empty() {
                // The URL goes into a request line to a backend.
                if let Some(b) = url.bytes().find(|b| !b.is_ascii_graphic()) {
                    return bad(format!(
                        "Grip-Link: byte 0x{b:02x} in the URL is not visible ASCII (percent-encode it)"
                    ));
                }
                let timeout = match param(&ps, "timeout") {
                    Some(t) => seconds(t, "Grip-Link timeout")?.max(1),
                    None => DEFAULT_LINK_TIMEOUT,
                };
                return Ok(Some(NextLink {
                    url: url.to_string(),
                    timeout,
                }));
            }
        }
    }
    Ok(None)
}

/// True when the response carries any `Grip-*` header or is a JSON
/// instruction.
pub fn is_grip(fields: &Fields) -> bool {
    is_instruct_json(fields)
        || fields
            .iter()
            .any(|(n, _)| n.len() > 5 && n[..5].eq_ignore_ascii_case(b"grip-"))
}

/// True for `Content-Type: application/grip-instruct`.
pub fn is_instruct_json(fields: &Fields) -> bool {
    fields.get("content-type").is_some_and(|ct| {
        let ct = ct.split(|&b| b == b';').next().unwrap_or(b"");
        trim(ct).eq_ignore_ascii_case(b"application/grip-instruct")
    })
}

/// Reads the hold instruction from response headers; `None` when there is
/// no `Grip-Hold`.
pub fn from_headers(fields: &Fields) -> Result<Option<Instruct>, GripError> {
    let hold = match fields
        .get("grip-hold")
        .map(|v| trim(v).to_ascii_lowercase())
    {
        None => return Ok(None),
        Some(v) if v == b"response" => HoldMode::Response,
        Some(v) if v == b"stream" => HoldMode::Stream,
        Some(v) => {
            return bad(format!(
                "Grip-Hold: unknown mode '{}'",
                String::from_utf8_lossy(&v)
            ))
        }
    };
    let channels = channels(fields.get_all("grip-channel"))?;
    if channels.is_empty() {
        return bad("Grip-Hold without Grip-Channel");
    }
    let timeout = match fields.get("grip-timeout") {
        Some(t) => seconds(text(t)?, "Grip-Timeout")?.max(MIN_TIMEOUT),
        None => DEFAULT_TIMEOUT,
    };
    let keep_alive = match fields.get("grip-keep-alive") {
        Some(v) => Some(keep_alive(text(v)?)?),
        None => None,
    };
    let status = match fields.get("grip-status") {
        Some(v) => Some(status(text(v)?)?),
        None => None,
    };
    let mut meta = Vec::new();
    for v in fields.get_all("grip-set-meta") {
        for kv in text(v)?.split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                meta.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
            }
        }
    }
    let expose = fields
        .tokens("grip-expose-headers")
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    Ok(Some(Instruct {
        hold,
        channels,
        timeout,
        keep_alive,
        status,
        next: links(fields.get_all("grip-link"))?,
        meta,
        expose,
    }))
}

/// Where a JSON instruction's response sits, for error messages.
const JSON_RESPONSE: &str = "grip-instruct: response";

/// The `response` object of a JSON instruction, validated through
/// `codec::response` like every other source of a client response.
fn json_response(r: Option<&Value>) -> Result<JsonResponse, GripError> {
    use base64::Engine;
    let p = JSON_RESPONSE;
    let Some(r) = r.filter(|r| !r.is_null()) else {
        return Ok(JsonResponse {
            head: Head::new(Status::OK),
            body: Bytes::new(),
        });
    };
    let Some(r) = r.as_object() else {
        return bad(format!("{p}: must be an object"));
    };
    let code = match r.get("code") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(c) => Some(c),
            None => {
                return bad(format!(
                    "{p}.code: {n} is not a final status code ({}-{})",
                    response::MIN_STATUS,
                    response::MAX_STATUS
                ))
            }
        },
        Some(_) => return bad(format!("{p}.code: must be a number")),
    };
    let reason = match r.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return bad(format!("{p}.reason: must be a string")),
    };
    let mut fields: Vec<(At, &[u8], &[u8])> = Vec::new();
    match r.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Value::String(s) = v else {
                    return bad(format!(
                        "{p}.headers.{}: must be a string",
                        k.escape_debug()
                    ));
                };
                fields.push((At::Key, k.as_bytes(), s.as_bytes()));
            }
        }
        Some(Value::Array(list)) => {
            for (i, pair) in list.iter().enumerate() {
                match pair.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), Value::String(s)]) => {
                        fields.push((At::Index(i), k.as_bytes(), s.as_bytes()))
                    }
                    _ => {
                        return bad(format!(
                            "{p}.headers[{i}]: must be a [name, value] pair of strings"
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return bad(format!(
                "{p}.headers: must be an object or a list of [name, value] pairs"
            ))
        }
    }
    let body = match (r.get("body"), r.get("body-bin")) {
        (Some(_), Some(_)) => return bad(format!("{p}: give either body or body-bin, not both")),
        (Some(Value::String(b)), None) => Bytes::from(b.clone()),
        (Some(_), None) => return bad(format!("{p}.body: must be a string")),
        (None, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map(Bytes::from)
            .or_else(|_| bad(format!("{p}.body-bin: is not valid base64")))?,
        (None, Some(_)) => return bad(format!("{p}.body-bin: must be a base64 string")),
        (None, None) => Bytes::new(),
    };
    let head = Head::from_parts(code, reason, fields, &body).map_err(|e| GripError(e.at(p)))?;
    Ok(JsonResponse { head, body })
}

/// Refuses channel names and ids that could not sit in a header line
/// (they are sent back to backends in `Grip-Last`).
fn check_channel_text(v: &str, path: &str) -> Result<(), GripError> {
    response::check_value(v.as_bytes()).map_err(|p| GripError(format!("{path}: {p}")))
}

/// Parses the JSON instruction form. The hold is optional (`None`: just
/// send the enclosed response).
pub fn from_json(body: &[u8]) -> Result<(Option<Instruct>, JsonResponse), GripError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| GripError(format!("grip-instruct: {e}")))?;
    let resp = json_response(v.get("response"))?;
    let Some(h) = v.get("hold") else {
        return Ok((None, resp));
    };
    let hold = match h.get("mode").and_then(Value::as_str).unwrap_or("response") {
        "response" => HoldMode::Response,
        "stream" => HoldMode::Stream,
        m => return bad(format!("grip-instruct: unknown hold mode {m:?}")),
    };
    let mut chans = Vec::new();
    for (i, c) in h
        .get("channels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(name) = c.get("name").and_then(Value::as_str) else {
            return bad("grip-instruct: a channel has no name");
        };
        let prev_id = c.get("prev-id").and_then(Value::as_str);
        check_channel_text(name, &format!("grip-instruct: hold.channels[{i}].name"))?;
        if let Some(p) = prev_id {
            check_channel_text(p, &format!("grip-instruct: hold.channels[{i}].prev-id"))?;
        }
        chans.push(ChannelSpec {
            name: name.to_string(),
            prev_id: prev_id.map(String::from),
        });
    }
    if chans.is_empty() {
        return bad("grip-instruct: hold without channels");
    }
    let timeout = h
        .get("timeout")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_TIMEOUT, |t| {
            u32::try_from(t).unwrap_or(u32::MAX).max(MIN_TIMEOUT)
        });
    let keep_alive = match h.get("keep-alive") {
        Some(k) => {
            let data = match (
                k.get("content").and_then(Value::as_str),
                k.get("content-bin").and_then(Value::as_str),
            ) {
                (Some(s), _) => Bytes::from(s.to_string()),
                (None, Some(b)) => decode_keep_alive(b, "base64")?,
                _ => Bytes::new(),
            };
            let mode = match k.get("mode") {
                None | Some(Value::Null) => KeepAliveMode::Idle,
                Some(Value::String(m)) if m == "idle" => KeepAliveMode::Idle,
                Some(Value::String(m)) if m == "interval" => KeepAliveMode::Interval,
                Some(m) => {
                    return bad(format!(
                        "grip-instruct: hold.keep-alive.mode: {m} is not \"idle\" or \"interval\""
                    ))
                }
            };
            let timeout = k
                .get("timeout")
                .and_then(Value::as_u64)
                .map_or(DEFAULT_KEEP_ALIVE, |t| {
                    t.clamp(1, u64::from(u32::MAX)) as u32
                });
            Some(KeepAlive {
                data,
                timeout,
                mode,
            })
        }
        None => None,
    };
    Ok((
        Some(Instruct {
            hold,
            channels: chans,
            timeout,
            keep_alive,
            status: None,
            next: None,
            meta: Vec::new(),
            expose: Vec::new(),
        }),
        resp,
    ))
}

/// Checks an instruction against the response it came with: the status
/// the held client gets (`Grip-Status`, else the response's own) must allow
/// what the hold writes. A stream needs a body; a 204 or 304 has none, and a
/// body after one would be read by the client as its next response.
pub fn check_hold(i: &Instruct, head: &Head, body: &[u8]) -> Result<(), GripError> {
    let status = i.status.as_ref().unwrap_or(head.status());
    if status.has_body() {
        return Ok(());
    }
    if i.hold == HoldMode::Stream {
        return bad(format!(
            "a stream hold cannot use status {}: a {} response has no body",
            status.code(),
            status.code()
        ));
    }
    if !body.is_empty() {
        return bad(format!(
            "the response body must be empty: a {} response has no body",
            status.code()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::http1::{parse_response, HeadLimits};

    fn fields(headers: &str) -> Fields {
        let head = format!("HTTP/1.1 200 OK\r\n{headers}\r\n");
        parse_response(head.as_bytes(), &HeadLimits::default(), false)
            .expect("valid")
            .expect("complete")
            .1
            .fields
    }

    #[test]
    fn full_header_set() {
        let f = fields(concat!(
            "Grip-Hold: stream\r\n",
            "Grip-Channel: a; prev-id=3, b\r\n",
            "Grip-Channel: c\r\n",
            "Grip-Timeout: 2\r\n",
            "Grip-Keep-Alive: \\n; format=cstring; timeout=20; mode=interval\r\n",
            "Grip-Status: 404 Not Here\r\n",
            "Grip-Link: </next?x=1>; rel=next; timeout=30\r\n",
            "Grip-Set-Meta: user=alice, role=admin\r\n",
            "Grip-Expose-Headers: X-A, X-B\r\n",
        ));
        assert!(is_grip(&f));
        let i = from_headers(&f).expect("valid").expect("hold");
        assert_eq!(i.hold, HoldMode::Stream);
        let names: Vec<_> = i
            .channels
            .iter()
            .map(|c| (c.name.as_str(), c.prev_id.as_deref()))
            .collect();
        assert_eq!(names, vec![("a", Some("3")), ("b", None), ("c", None)]);
        assert_eq!(i.timeout, MIN_TIMEOUT, "clamped to the minimum");
        let ka = i.keep_alive.expect("keep-alive");
        assert_eq!(
            (&ka.data[..], ka.timeout, ka.mode),
            (&b"\n"[..], 20, KeepAliveMode::Interval)
        );
        assert_eq!(i.status, Status::new(404, Some("Not Here")).ok());
        assert_eq!(
            i.next,
            Some(NextLink {
                url: "/next?x=1".into(),
                timeout: 30
            })
        );
        assert_eq!(
            i.meta,
            vec![
                ("user".into(), "alice".into()),
                ("role".into(), "admin".into())
            ]
        );
        assert_eq!(i.expose, vec!["X-A".to_string(), "X-B".to_string()]);
    }

    #[test]
    fn defaults_and_no_hold() {
        let i = from_headers(&fields("Grip-Hold: response\r\nGrip-Channel: x\r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (i.hold, i.timeout, i.keep_alive.is_none()),
            (HoldMode::Response, DEFAULT_TIMEOUT, true)
        );
        assert_eq!(from_headers(&fields("X: y\r\n")), Ok(None));
        assert!(!is_grip(&fields("X: y\r\n")));
        assert!(from_headers(&fields("Grip-Hold: forever\r\nGrip-Channel: x\r\n")).is_err());
        assert!(from_headers(&fields("Grip-Hold: stream\r\n")).is_err());
    }

    #[test]
    fn keep_alive_formats() {
        assert_eq!(
            decode_keep_alive("a\\\\b\\r\\n\\x41", "cstring").unwrap(),
            Bytes::from_static(b"a\\b\r\nA")
        );
        assert_eq!(
            decode_keep_alive("aGk=", "base64").unwrap(),
            Bytes::from_static(b"hi")
        );
        assert_eq!(
            decode_keep_alive(":", "raw").unwrap(),
            Bytes::from_static(b":")
        );
        assert!(decode_keep_alive("\\q", "cstring").is_err());
        assert!(decode_keep_alive("\\x4", "cstring").is_err());
        assert!(decode_keep_alive("x", "rot13").is_err());
    }

    #[test]
    fn json_form() {
        let (i, r) = from_json(br#"{"hold":{"mode":"stream","channels":[{"name":"x","prev-id":"1"}],"timeout":60},
            "response":{"code":200,"reason":"OK","headers":{"Content-Type":"text/plain"},"body":"start\n"}}"#)
        .expect("valid");
        let i = i.expect("hold");
        assert_eq!(
            (i.hold, i.timeout, i.channels[0].prev_id.as_deref()),
            (HoldMode::Stream, 60, Some("1"))
        );
        assert_eq!(
            (r.head.status().code(), &r.body[..]),
            (200, &b"start\n"[..])
        );
        assert_eq!(r.head.get("content-type"), Some(&b"text/plain"[..]));
        let (i, _) = from_json(br#"{"response":{"body":"x"}}"#).expect("valid");
        assert!(i.is_none());
        assert!(from_json(b"{").is_err());
        assert!(from_json(br#"{"hold":{"mode":"stream"}}"#).is_err());
        let f = fields("Content-Type: application/grip-instruct; charset=utf-8\r\n");
        assert!(is_instruct_json(&f) && is_grip(&f));
    }

    #[test]
    fn bad_instructions_name_the_field() {
        for (headers, needle) in [
            (
                "Grip-Status: 0\r\n",
                "Grip-Status: code: 0 is not a final status code (200-599)",
            ),
            (
                "Grip-Status: 65535 Big\r\n",
                "Grip-Status: code: 65535 is not",
            ),
            (
                "Grip-Status: 101 Switching\r\n",
                "Grip-Status: code: 101 is not",
            ),
            ("Grip-Status: 600\r\n", "Grip-Status: code: 600 is not"),
            (
                "Grip-Status: nope\r\n",
                "Grip-Status: 'nope' does not start",
            ),
            (
                "Grip-Link: </a b>; rel=next\r\n",
                "Grip-Link: byte 0x20 in the URL",
            ),
        ] {
            let f = fields(&format!(
                "Grip-Hold: stream\r\nGrip-Channel: x\r\n{headers}"
            ));
            let e = from_headers(&f).expect_err(headers).0;
            assert!(e.contains(needle), "{headers:?}: {e}");
        }
        let bad_json = [
            (
                r#"{"response":{"code":0}}"#,
                "grip-instruct: response.code: 0 is not a final status code",
            ),
            (
                r#"{"response":{"code":65535}}"#,
                "response.code: 65535 is not",
            ),
            (r#"{"response":{"code":-1}}"#, "response.code: -1 is not"),
            (
                r#"{"response":{"code":"200"}}"#,
                "response.code: must be a number",
            ),
            (
                r#"{"response":{"reason":"OK\r\nSet-Cookie: a=b"}}"#,
                "grip-instruct: response.reason: contains CR or LF",
            ),
            (
                r#"{"response":{"reason":5}}"#,
                "response.reason: must be a string",
            ),
            (
                r#"{"response":{"headers":{"X-A":"1\r\nSet-Cookie: a=b"}}}"#,
                "response.headers.X-A: contains CR or LF",
            ),
            (
                r#"{"response":{"headers":{"X-A\r\nSet-Cookie":"a=b"}}}"#,
                "is not a header name",
            ),
            (
                r#"{"response":{"headers":{"X-A":"a\u0000b"}}}"#,
                "response.headers.X-A: contains NUL",
            ),
            (
                r#"{"response":{"headers":[["X-A","a\nb"]]}}"#,
                "response.headers[0][1]: contains CR or LF",
            ),
            (
                r#"{"response":{"headers":[["X A","b"]]}}"#,
                "response.headers[0][0]: is not a header name",
            ),
            (
                r#"{"response":{"headers":[["X-A"]]}}"#,
                "response.headers[0]: must be a [name, value] pair",
            ),
            (
                r#"{"response":{"headers":{"X-A":5}}}"#,
                "response.headers.X-A: must be a string",
            ),
            (
                r#"{"response":{"code":204,"body":"x"}}"#,
                "response.body: must be empty: a 204 response has no body",
            ),
            (
                r#"{"response":{"body":5}}"#,
                "response.body: must be a string",
            ),
            (r#"{"response":[]}"#, "response: must be an object"),
            (
                r#"{"hold":{"channels":[{"name":"a\r\nb"}]}}"#,
                "hold.channels[0].name: contains CR or LF",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a","prev-id":"1\n"}]}}"#,
                "hold.channels[0].prev-id: contains CR or LF",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a"}],"keep-alive":{"mode":"often"}}}"#,
                "hold.keep-alive.mode",
            ),
            (
                r#"{"hold":{"mode":"x\ny","channels":[{"name":"a"}]}}"#,
                "unknown hold mode \"x\\ny\"",
            ),
        ];
        for (json, needle) in bad_json {
            let e = from_json(json.as_bytes()).expect_err(json).0;
            assert!(e.contains(needle), "{json}: {e}");
            assert!(
                !e.contains('\n') && !e.contains('\r'),
                "one clean line: {e:?}"
            );
        }
        // Framing, hop-by-hop and Grip-* fields are left out, not refused.
        let (_, r) = from_json(
            br#"{"response":{"headers":{"Content-Length":"9","Connection":"close","Grip-Hold":"x","X-A":"1"}}}"#,
        )
        .expect("valid");
        let mut out = Vec::new();
        r.head.write(&mut out, None);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nX-A: 1\r\n");
    }

    #[test]
    fn holds_fit_their_status() {
        let hold = |h: &str| {
            from_headers(&fields(&format!("Grip-Channel: x\r\n{h}")))
                .expect("valid")
                .expect("hold")
        };
        let ok = Head::new(Status::OK);
        let no_content = Head::new(Status::new(204, None).expect("valid"));
        let stream = hold("Grip-Hold: stream\r\n");
        assert!(check_hold(&stream, &ok, b"hi").is_ok());
        let e = check_hold(&stream, &no_content, b"")
            .expect_err("stream 204")
            .0;
        assert!(e.contains("stream hold cannot use status 204"), "{e}");
        let e = check_hold(&hold("Grip-Hold: stream\r\nGrip-Status: 304\r\n"), &ok, b"")
            .expect_err("stream 304")
            .0;
        assert!(e.contains("status 304"), "{e}");
        let poll = hold("Grip-Hold: response\r\nGrip-Status: 204\r\n");
        assert!(check_hold(&poll, &ok, b"").is_ok());
        let e = check_hold(&poll, &ok, b"late")
            .expect_err("body with 204")
            .0;
        assert!(e.contains("must be empty"), "{e}");
    }
}
