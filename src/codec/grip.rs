//! GRIP instructions from a backend response (GRIP.md §1): the `Grip-*`
//! headers, or the JSON body of `Content-Type: application/grip-instruct`,
//! turned into one typed `Instruct`.

use bytes::Bytes;
use serde_json::Value;

use super::http1::{trim, Fields};

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
    pub status: Option<(u16, Option<String>)>,
    pub next: Option<NextLink>,
    pub meta: Vec<(String, String)>,
    pub expose: Vec<String>,
}

/// The response carried inside a JSON instruction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JsonResponse {
    pub code: Option<u16>,
    pub reason: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
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

fn status(v: &str) -> Result<(u16, Option<String>), GripError> {
    let v = v.trim();
    let (code, reason) = v.split_once(' ').unwrap_or((v, ""));
    let code: u16 = code
        .parse()
        .ok()
        .filter(|c| (100..1000).contains(c))
        .ok_or_else(|| GripError(format!("Grip-Status: '{v}' is not a status")))?;
    let reason = reason.trim();
    Ok((code, (!reason.is_empty()).then(|| reason.to_string())))
}

fn links<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<NextLink>, GripError> {
    for v in values {
        for part in text(v)?.split(',') {
            let (url, ps) = params(part);
            let url = url.trim_start_matches('<').trim_end_matches('>');
            if param(&ps, "rel") == Some("next") && !url.is_empty() {
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

/// Parses the JSON instruction form. The hold is optional (`None`: just
/// send the enclosed response).
pub fn from_json(body: &[u8]) -> Result<(Option<Instruct>, JsonResponse), GripError> {
    use base64::Engine;
    let v: Value =
        serde_json::from_slice(body).map_err(|e| GripError(format!("grip-instruct: {e}")))?;
    let mut resp = JsonResponse::default();
    if let Some(r) = v.get("response") {
        resp.code = r
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok());
        resp.reason = r.get("reason").and_then(Value::as_str).map(String::from);
        match r.get("headers") {
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    if let Some(s) = v.as_str() {
                        resp.headers.push((k.clone(), s.as_bytes().to_vec()));
                    }
                }
            }
            Some(Value::Array(list)) => {
                for pair in list {
                    if let Some([Value::String(k), Value::String(s)]) =
                        pair.as_array().map(Vec::as_slice)
                    {
                        resp.headers.push((k.clone(), s.as_bytes().to_vec()));
                    }
                }
            }
            _ => {}
        }
        if let Some(b) = r.get("body").and_then(Value::as_str) {
            resp.body = Bytes::from(b.to_string());
        } else if let Some(b) = r.get("body-bin").and_then(Value::as_str) {
            resp.body = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Bytes::from)
                .or_else(|_| bad("grip-instruct: response.body-bin is not base64"))?;
        }
    }
    let Some(h) = v.get("hold") else {
        return Ok((None, resp));
    };
    let hold = match h.get("mode").and_then(Value::as_str).unwrap_or("response") {
        "response" => HoldMode::Response,
        "stream" => HoldMode::Stream,
        m => return bad(format!("grip-instruct: unknown hold mode '{m}'")),
    };
    let mut chans = Vec::new();
    for c in h
        .get("channels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = c.get("name").and_then(Value::as_str) else {
            return bad("grip-instruct: a channel has no name");
        };
        chans.push(ChannelSpec {
            name: name.to_string(),
            prev_id: c.get("prev-id").and_then(Value::as_str).map(String::from),
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
            let mode = match k.get("mode").and_then(Value::as_str) {
                Some("interval") => KeepAliveMode::Interval,
                _ => KeepAliveMode::Idle,
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
        assert_eq!(i.status, Some((404, Some("Not Here".into()))));
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
        assert_eq!((r.code, &r.body[..]), (Some(200), &b"start\n"[..]));
        assert_eq!(
            r.headers,
            vec![("Content-Type".into(), b"text/plain".to_vec())]
        );
        let (i, _) = from_json(br#"{"response":{"body":"x"}}"#).expect("valid");
        assert!(i.is_none());
        assert!(from_json(b"{").is_err());
        assert!(from_json(br#"{"hold":{"mode":"stream"}}"#).is_err());
        let f = fields("Content-Type: application/grip-instruct; charset=utf-8\r\n");
        assert!(is_instruct_json(&f) && is_grip(&f));
    }
}
