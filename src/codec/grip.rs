//! GRIP instructions from a backend response (GRIP.md §1): the `Grip-*`
//! headers, or the JSON body of `Content-Type: application/grip-instruct`,
//! turned into one typed `Instruct`.

use bytes::Bytes;
use serde::de::Deserializer;
use serde::Deserialize;

use super::filter::Filters;
use super::http1::{trim, Fields};
use super::json::{
    self, Checked, Flag, Headers, List, Meta, Obj, Seconds, StatusCode, Str, StrList, B64,
};
use super::response::{self, At, Head, Status};

/// The capabilities announced to backends in `Grip-Feature`.
pub const GRIP_FEATURES: &str = "status, link:next, link:gone, filter:skip-self, filter:skip-users, filter:require-sub, filter:build-id, filter:var-subst";

/// Default seconds a `response` hold lasts.
pub const DEFAULT_TIMEOUT: u32 = 55;
/// Shortest hold timeout accepted.
pub const MIN_TIMEOUT: u32 = 5;
/// Default keep-alive timeout (seconds).
pub const DEFAULT_KEEP_ALIVE: u32 = 55;
/// Default seconds before a stream's next link is fetched.
pub const DEFAULT_LINK_TIMEOUT: u32 = 120;
/// Most subscription meta entries one connection may hold.
pub const MAX_META_ENTRIES: usize = 32;
/// Most bytes of one meta key or value.
pub const MAX_META_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    Response,
    Stream,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    pub name: String,
    pub prev_id: Option<String>,
    /// The subscription filters for this channel, in order.
    pub filters: Filters,
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
    /// `Grip-Link: <URL>; rel=gone`: POSTed when the held request ends.
    pub gone: Option<String>,
    /// Subscription meta (`Grip-Set-Meta`, then `hold.meta`), for filters.
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
pub use super::Invalid as GripError;

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

/// Splits a header value on the commas that are not inside a quoted
/// string (Pushpin's parameter lists).
pub fn split_list(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// One `;`-separated part of a list element: `key`, `key=token` or
/// `key="quoted \" text"`, the key trimmed and the value unquoted.
pub type Param = (String, Option<String>);

/// Parses `a; k=v; k2="v 2"` into its parameters (the first is the
/// element itself). A quoted value may hold `;` and `,`; `\\` escapes the
/// next character inside quotes.
pub fn parse_params(part: &str) -> Result<Vec<Param>, String> {
    let mut out = Vec::new();
    let b = part.as_bytes();
    let mut i = 0;
    loop {
        let key_start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b';' {
            if b[i] == b'"' {
                return Err(format!("unexpected '\"' in {:?}", part.trim()));
            }
            i += 1;
        }
        let key = part[key_start..i].trim().to_string();
        let mut value = None;
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            if i < b.len() && b[i] == b'"' {
                let mut v = Vec::new();
                i += 1;
                let mut closed = false;
                while i < b.len() {
                    match b[i] {
                        b'\\' if i + 1 < b.len() => {
                            v.push(b[i + 1]);
                            i += 2;
                        }
                        b'"' => {
                            closed = true;
                            i += 1;
                            break;
                        }
                        c => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                if !closed {
                    return Err(format!("unterminated quoted string in {:?}", part.trim()));
                }
                while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                    i += 1;
                }
                if i < b.len() && b[i] != b';' {
                    return Err(format!("text after a quoted string in {:?}", part.trim()));
                }
                value = Some(String::from_utf8_lossy(&v).into_owned());
            } else {
                let vs = i;
                while i < b.len() && b[i] != b';' {
                    if b[i] == b'"' {
                        return Err(format!("unexpected '\"' in {:?}", part.trim()));
                    }
                    i += 1;
                }
                value = Some(part[vs..i].trim().to_string());
            }
        }
        out.push((key, value));
        if i >= b.len() {
            return Ok(out);
        }
        i += 1; // the ';'
    }
}

fn channels<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Vec<ChannelSpec>, GripError> {
    let mut out = Vec::new();
    for v in values {
        for part in split_list(text(v)?) {
            if part.trim().is_empty() {
                continue;
            }
            let ps = parse_params(part).map_err(|e| GripError(format!("Grip-Channel: {e}")))?;
            let Some(((name, value), rest)) = ps.split_first() else {
                continue;
            };
            if name.is_empty() || value.is_some() {
                return bad(format!(
                    "Grip-Channel: {:?} does not start with a channel name",
                    part.trim()
                ));
            }
            let mut prev_id = None;
            let mut filters = Vec::new();
            let mut prefix = false;
            for (k, v) in rest {
                match (k.as_str(), v) {
                    // Pushpin compares `filter` exactly and `prev-id`
                    // ignoring case.
                    ("filter", Some(f)) => filters.push(f.as_str()),
                    (k, Some(p)) if k.eq_ignore_ascii_case("prev-id") => prev_id = Some(p.clone()),
                    // corepin's own: every channel under this prefix.
                    ("prefix", None) => prefix = true,
                    (k, _) => {
                        return bad(format!(
                            "Grip-Channel: channel '{}': unknown parameter '{}' (prev-id, filter, prefix)",
                            name.escape_debug(),
                            k.escape_debug()
                        ))
                    }
                }
            }
            let filters = Filters::parse(filters, name)
                .map_err(|e| GripError(format!("Grip-Channel: {e}")))?;
            check_channel_text(name, "Grip-Channel: name")?;
            if let Some(p) = &prev_id {
                check_channel_text(p, "Grip-Channel: prev-id")?;
            }
            let name = channel_key(name, prefix, prev_id.is_some(), "Grip-Channel")?;
            out.push(ChannelSpec {
                name,
                prev_id,
                filters,
            });
        }
    }
    Ok(out)
}

/// Checks one meta entry and adds it (a later key replaces an earlier
/// one). Meta values reach clients' bytes through `var-subst`.
pub fn set_meta(
    meta: &mut Vec<(String, String)>,
    key: &str,
    value: &str,
    what: &str,
) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("{what}: a meta name must not be empty"));
    }
    for (part, v) in [("name", key), ("value", value)] {
        response::check_value(v.as_bytes())
            .map_err(|p| format!("{what}: meta {part} '{}': {p}", key.escape_debug()))?;
        if v.len() > MAX_META_BYTES {
            return Err(format!(
                "{what}: meta {part} '{}' is {} bytes (at most {MAX_META_BYTES})",
                key.escape_debug(),
                v.len()
            ));
        }
    }
    meta.retain(|(k, _)| k != key);
    if meta.len() >= MAX_META_ENTRIES {
        return Err(format!("{what}: more than {MAX_META_ENTRIES} meta entries"));
    }
    meta.push((key.to_string(), value.to_string()));
    Ok(())
}

/// `Grip-Set-Meta: user="alice", id_format="%(room)s"`: each element a
/// `name=value` (a value may be quoted; further `;` parameters are
/// refused rather than ignored).
fn set_meta_headers<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Vec<(String, String)>, GripError> {
    let mut meta = Vec::new();
    for v in values {
        for part in split_list(text(v)?) {
            if part.trim().is_empty() {
                return bad("Grip-Set-Meta: an element is empty");
            }
            let ps = parse_params(part).map_err(|e| GripError(format!("Grip-Set-Meta: {e}")))?;
            let [(k, val)] = ps.as_slice() else {
                return bad(format!(
                    "Grip-Set-Meta: {:?}: parameters after the value are not supported",
                    part.trim()
                ));
            };
            set_meta(&mut meta, k, val.as_deref().unwrap_or(""), "Grip-Set-Meta")
                .map_err(GripError)?;
        }
    }
    Ok(meta)
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

/// The links of `Grip-Link`: `rel=next` (with its timeout) and
/// `rel=gone`.
fn links<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<(Option<NextLink>, Option<String>), GripError> {
    let (mut next, mut gone) = (None, None);
    for v in values {
        for part in split_list(text(v)?) {
            if part.trim().is_empty() {
                continue;
            }
            let (url, ps) = params(part);
            let Some(url) = url
                .strip_prefix('<')
                .and_then(|u| u.strip_suffix('>'))
                .filter(|u| !u.is_empty())
            else {
                return bad(format!(
                    "Grip-Link: {:?} does not start with <URL>",
                    part.trim()
                ));
            };
            // The URL goes into a request line to a backend.
            if let Some(b) = url.bytes().find(|b| !b.is_ascii_graphic()) {
                return bad(format!(
                    "Grip-Link: byte 0x{b:02x} in the URL is not visible ASCII (percent-encode it)"
                ));
            }
            match param(&ps, "rel") {
                Some("next") => {
                    let timeout = match param(&ps, "timeout") {
                        Some(t) => seconds(t, "Grip-Link timeout")?.max(1),
                        None => DEFAULT_LINK_TIMEOUT,
                    };
                    next = Some(NextLink {
                        url: url.to_string(),
                        timeout,
                    });
                }
                Some("gone") => gone = Some(url.to_string()),
                Some(other) => {
                    return bad(format!(
                        "Grip-Link: unknown rel '{}' (next, gone)",
                        other.escape_debug()
                    ))
                }
                None => return bad(format!("Grip-Link: <{url}> has no rel")),
            }
        }
    }
    Ok((next, gone))
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
    let meta = set_meta_headers(fields.get_all("grip-set-meta"))?;
    let (next, gone) = links(fields.get_all("grip-link"))?;
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
        next,
        gone,
        meta,
        expose,
    }))
}

/// The channels' filters and the meta a response body is filtered with.
pub type ResponseFilters = (Vec<Filters>, Vec<(String, String)>);

/// A response without `Grip-Hold` may still name channels with filters
/// and set meta: Pushpin runs the channels' response-content filters
/// (`build-id`) over its body. The channels' filters and the meta, when
/// some channel lists a filter; `None` otherwise.
pub fn no_hold_filters(fields: &Fields) -> Result<Option<ResponseFilters>, GripError> {
    let channels = channels(fields.get_all("grip-channel"))?;
    if channels.iter().all(|c| c.filters.is_empty()) {
        return Ok(None);
    }
    let meta = set_meta_headers(fields.get_all("grip-set-meta"))?;
    Ok(Some((
        channels.into_iter().map(|c| c.filters).collect(),
        meta,
    )))
}

/// Where a JSON instruction's response sits, for error messages.
const JSON_RESPONSE: &str = "grip-instruct: response";

/// The `response` object of a JSON instruction, validated through
/// `codec::response` like every other source of a client response.
fn json_response(r: Option<RawResponse>) -> Result<JsonResponse, GripError> {
    let p = JSON_RESPONSE;
    let Some(r) = r else {
        return Ok(JsonResponse {
            head: Head::new(Status::OK),
            body: Bytes::new(),
        });
    };
    let fields: Vec<(At, &[u8], &[u8])> = r
        .headers
        .as_ref()
        .map(|h| {
            h.0.iter()
                .map(|(at, k, v)| (*at, k.0.as_bytes(), v.0.as_bytes()))
                .collect()
        })
        .unwrap_or_default();
    let body = match (r.body, r.body_bin) {
        (Some(_), Some(_)) => return bad(format!("{p}: give either body or body-bin, not both")),
        (Some(b), None) => b.into_bytes(),
        (None, Some(b)) => b.0,
        (None, None) => Bytes::new(),
    };
    let code = r.code.map(|c| c.0);
    let reason = r.reason.as_ref().map(|r| r.0.as_ref());
    let head = Head::from_parts(code, reason, fields, &body).map_err(|e| GripError(e.at(p)))?;
    Ok(JsonResponse { head, body })
}

/// A hold's channel name, or with `prefix` the key of every channel under
/// it (see `codec::wildcard`). A prefix has no one sequence of ids to
/// follow, so `prev-id` beside it is refused.
fn channel_key(name: &str, prefix: bool, prev_id: bool, at: &str) -> Result<String, GripError> {
    if !prefix {
        return Ok(name.to_string());
    }
    if prev_id {
        return bad(format!(
            "{at}: channel '{}': prev-id does not apply to a prefix subscription",
            name.escape_debug()
        ));
    }
    Ok(crate::codec::wildcard::key(name))
}

/// Refuses channel names and ids that could not sit in a header line
/// (they are sent back to backends in `Grip-Last`).
fn check_channel_text(v: &str, path: &str) -> Result<(), GripError> {
    response::check_value(v.as_bytes()).map_err(|p| GripError(format!("{path}: {p}")))
}

/// Parses the JSON instruction form. The hold is optional (`None`: just
/// send the enclosed response).
pub fn from_json(body: &[u8]) -> Result<(Option<Instruct>, JsonResponse), GripError> {
    json_instruct(None, body)
}

/// Parses a JSON instruction and the `Grip-*` headers Pushpin reads
/// beside it: `Grip-Link` (the JSON form has no links) and
/// `Grip-Set-Meta` (which `hold.meta` then overrides key by key).
pub fn from_json_response(
    fields: &Fields,
    body: &[u8],
) -> Result<(Option<Instruct>, JsonResponse), GripError> {
    json_instruct(Some(fields), body)
}

fn json_instruct(
    fields: Option<&Fields>,
    body: &[u8],
) -> Result<(Option<Instruct>, JsonResponse), GripError> {
    let raw = match json::from_slice::<Obj<RawInstruct>>(body) {
        Ok(raw) => raw.0,
        Err(e) => {
            // An unknown member of the root is named as `body.NAME`.
            let base = if e.unknown_at_root() { "body" } else { "" };
            return bad(format!("grip-instruct: {}", e.explain("", base, "")));
        }
    };
    let resp = json_response(raw.response.map(|r| r.0))?;
    let Some(Obj(h)) = raw.hold else {
        return Ok((None, resp));
    };
    let hold = h.mode.unwrap_or(HoldMode::Response);
    let mut chans = Vec::new();
    for (i, Obj(c)) in h
        .channels
        .map(|l| l.0)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let at = format!("hold.channels[{i}]");
        let name = c.name.0.as_ref();
        let prev_id = c.prev_id.as_ref().map(|p| p.0.as_ref());
        let names: Vec<&str> = c
            .filters
            .as_ref()
            .map_or(Vec::new(), |f| f.0.iter().map(String::as_str).collect());
        let filters = Filters::parse(names, name)
            .map_err(|e| GripError(format!("grip-instruct: {at}.filters: {e}")))?;
        check_channel_text(name, &format!("grip-instruct: {at}.name"))?;
        if let Some(p) = prev_id {
            check_channel_text(p, &format!("grip-instruct: {at}.prev-id"))?;
        }
        let prefix = c.prefix.is_some_and(|f| f.0);
        let name = channel_key(
            name,
            prefix,
            prev_id.is_some(),
            &format!("grip-instruct: {at}"),
        )?;
        chans.push(ChannelSpec {
            name,
            prev_id: prev_id.map(String::from),
            filters,
        });
    }
    if chans.is_empty() {
        return bad("grip-instruct: hold without channels");
    }
    let timeout = h.timeout.map_or(DEFAULT_TIMEOUT, |t| {
        u32::try_from(t.0).unwrap_or(u32::MAX).max(MIN_TIMEOUT)
    });
    let keep_alive = match h.keep_alive {
        Some(Obj(k)) => {
            let data = match (k.content, k.content_bin) {
                (Some(s), _) => s.into_bytes(),
                (None, Some(b)) => decode_keep_alive(&b.0, "base64")?,
                (None, None) => Bytes::new(),
            };
            Some(KeepAlive {
                data,
                timeout: k.timeout.map_or(DEFAULT_KEEP_ALIVE, |t| {
                    t.0.clamp(1, u64::from(u32::MAX)) as u32
                }),
                mode: k.mode.unwrap_or(KeepAliveMode::Idle),
            })
        }
        None => None,
    };
    let mut meta = match fields {
        Some(f) => set_meta_headers(f.get_all("grip-set-meta"))?,
        None => Vec::new(),
    };
    if let Some(Meta(mut entries)) = h.meta {
        // In key order, as a JSON object's members always were taken
        // (a key given twice: the last one, as before).
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in &entries {
            set_meta(&mut meta, k, v, "grip-instruct: hold.meta").map_err(GripError)?;
        }
    }
    let (next, gone) = match fields {
        Some(f) => links(f.get_all("grip-link"))?,
        None => (None, None),
    };
    Ok((
        Some(Instruct {
            hold,
            channels: chans,
            timeout,
            keep_alive,
            status: None,
            next,
            gone,
            meta,
            expose: Vec::new(),
        }),
        resp,
    ))
}

// ---------------------------------------------------------------------------
// The JSON instruction's shape, for serde. Unknown members are refused by
// name everywhere but inside `response` (whose unknown members were always
// let through).

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct RawInstruct<'a> {
    #[serde(default, borrow)]
    hold: Option<Obj<RawHold<'a>>>,
    #[serde(default, borrow)]
    response: Option<Obj<RawResponse<'a>>>,
}

#[derive(Deserialize)]
#[serde(expecting = "an object")]
struct RawResponse<'a> {
    #[serde(default)]
    code: Option<Checked<u64, StatusCode>>,
    #[serde(default, borrow)]
    reason: Option<Str<'a>>,
    #[serde(default, borrow)]
    headers: Option<Headers<'a>>,
    #[serde(default, borrow)]
    body: Option<Str<'a>>,
    #[serde(default, rename = "body-bin")]
    body_bin: Option<B64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawHold<'a> {
    #[serde(default)]
    mode: Option<HoldMode>,
    #[serde(default, borrow)]
    channels: Option<List<Obj<RawChannel<'a>>>>,
    #[serde(default)]
    timeout: Option<Checked<u64, Seconds>>,
    #[serde(default, borrow, rename = "keep-alive")]
    keep_alive: Option<Obj<RawKeepAlive<'a>>>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawChannel<'a> {
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(default, borrow, rename = "prev-id")]
    prev_id: Option<Str<'a>>,
    #[serde(default)]
    filters: Option<StrList>,
    #[serde(default)]
    prefix: Option<Flag>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawKeepAlive<'a> {
    #[serde(default, borrow)]
    content: Option<Str<'a>>,
    #[serde(default, borrow, rename = "content-bin")]
    content_bin: Option<Str<'a>>,
    #[serde(default)]
    timeout: Option<Checked<u64, Seconds>>,
    #[serde(default)]
    mode: Option<KeepAliveMode>,
}

impl<'de> Deserialize<'de> for HoldMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        json::str_with(d, "a string", |v| match v {
            "response" => Ok(HoldMode::Response),
            "stream" => Ok(HoldMode::Stream),
            other => Err(format!("unknown hold mode {other:?}")),
        })
    }
}

/// A keep-alive `mode` (the JSON instruction's and a WebSocket control
/// message's).
impl<'de> Deserialize<'de> for KeepAliveMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        json::str_with(d, "\"idle\" or \"interval\"", |v| match v {
            "idle" => Ok(KeepAliveMode::Idle),
            "interval" => Ok(KeepAliveMode::Interval),
            other => Err(format!(
                "unknown mode '{}' (idle, interval)",
                other.escape_debug()
            )),
        })
    }
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

    #[test]
    fn a_prefix_subscription_is_the_prefix_key() {
        use crate::codec::wildcard::key;
        let f = fields(
            "Grip-Hold: stream\r\nGrip-Channel: news.; prefix; filter=skip-self, news.x\r\n",
        );
        let i = from_headers(&f).expect("valid").expect("hold");
        let names: Vec<&str> = i.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [key("news.").as_str(), "news.x"]);
        assert_eq!(i.channels[0].filters.names().len(), 1);
        let (i, _) = from_json(
            br#"{"hold":{"mode":"stream","channels":[{"name":"a.","prefix":true},{"name":"b","prefix":false}]}}"#,
        )
        .expect("valid");
        let i = i.expect("hold");
        assert_eq!(i.channels[0].name, key("a."));
        assert_eq!(i.channels[1].name, "b");
        for (body, needle) in [
            (
                r#"{"hold":{"channels":[{"name":"a.","prefix":1}]}}"#,
                "hold.channels[0].prefix: must be true or false",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a.","prefix":true,"prev-id":"1"}]}}"#,
                "hold.channels[0]: channel 'a.': prev-id does not apply to a prefix subscription",
            ),
        ] {
            let e = from_json(body.as_bytes()).expect_err(body).0;
            assert!(e.contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn channel_filters_meta_and_links() {
        use crate::codec::filter::Name;
        let f = fields(concat!(
            "Grip-Hold: stream\r\n",
            "Grip-Channel: room; filter=skip-self; filter=var-subst, vip; PREV-ID=\"a,b\"\r\n",
            "Grip-Set-Meta: user=\"al\\\"ice, x\", id_format=\"%(room)s\", empty\r\n",
            "Grip-Set-Meta: user=bob\r\n",
            "Grip-Link: </n>; rel=next, </gone/1?x>; rel=gone\r\n",
        ));
        let i = from_headers(&f).expect("valid").expect("hold");
        assert_eq!(
            i.channels[0].filters.names(),
            &[Name::SkipSelf, Name::VarSubst]
        );
        assert_eq!(
            (
                i.channels[1].name.as_str(),
                i.channels[1].prev_id.as_deref()
            ),
            ("vip", Some("a,b"))
        );
        assert!(i.channels[1].filters.is_empty());
        assert_eq!(
            i.meta,
            vec![
                ("id_format".into(), "%(room)s".into()),
                ("empty".into(), "".into()),
                ("user".into(), "bob".into()),
            ]
        );
        assert_eq!(i.gone.as_deref(), Some("/gone/1?x"));
        assert_eq!(i.next.map(|n| n.url), Some("/n".into()));

        for (headers, needle) in [
            ("Grip-Channel: a; filter=nope\r\n", "Grip-Channel: unknown filter 'nope'"),
            ("Grip-Channel: a; filter=http-check\r\n", "filter 'http-check' is not supported"),
            (
                "Grip-Channel: a; filter=skip-self; filter=skip-self; filter=skip-self; filter=skip-self; filter=skip-self; filter=skip-self\r\n",
                "too many filters for channel 'a' (at most 5)",
            ),
            ("Grip-Channel: a; colour=red\r\n", "unknown parameter 'colour' (prev-id, filter, prefix)"),
            ("Grip-Channel: a; prefix=yes\r\n", "unknown parameter 'prefix' (prev-id, filter, prefix)"),
            ("Grip-Channel: a.; prefix; prev-id=1\r\n", "channel 'a.': prev-id does not apply to a prefix subscription"),
            ("Grip-Channel: a; Filter=skip-self\r\n", "unknown parameter 'Filter'"),
            ("Grip-Channel: a; prev-id=\"1\r\n", "unterminated quoted string"),
            ("Grip-Channel: a\r\nGrip-Set-Meta: a=1, , b=2\r\n", "Grip-Set-Meta: an element is empty"),
            ("Grip-Channel: a\r\nGrip-Set-Meta: a=\"1\r\n", "Grip-Set-Meta: unterminated quoted string"),
            ("Grip-Channel: a\r\nGrip-Set-Meta: a=1; b=2\r\n", "parameters after the value"),
            ("Grip-Channel: a\r\nGrip-Set-Meta: =1\r\n", "a meta name must not be empty"),
            ("Grip-Channel: a\r\nGrip-Link: </x>; rel=prev\r\n", "Grip-Link: unknown rel 'prev' (next, gone)"),
            ("Grip-Channel: a\r\nGrip-Link: </x>\r\n", "Grip-Link: </x> has no rel"),
            ("Grip-Channel: a\r\nGrip-Link: /x; rel=gone\r\n", "does not start with <URL>"),
            ("Grip-Channel: a\r\nGrip-Link: <>; rel=gone\r\n", "does not start with <URL>"),
        ] {
            let f = fields(&format!("Grip-Hold: stream\r\n{headers}"));
            let e = from_headers(&f).expect_err(headers).0;
            assert!(e.contains(needle), "{headers:?}: {e}");
        }
        let long = format!(
            "Grip-Hold: stream\r\nGrip-Channel: a\r\nGrip-Set-Meta: k={}\r\n",
            "v".repeat(MAX_META_BYTES + 1)
        );
        let e = from_headers(&fields(&long)).expect_err("long").0;
        assert!(e.contains("is 1025 bytes (at most 1024)"), "{e}");
    }

    #[test]
    fn split_list_and_params() {
        assert_eq!(
            split_list(r#"a, b="x,y", c"#),
            vec!["a", r#" b="x,y""#, " c"]
        );
        assert_eq!(split_list(r#"a="\",", b"#), vec![r#"a="\",""#, " b"]);
        assert_eq!(
            parse_params(r#" room ; filter=skip-self;x="a;b\"c" "#).expect("valid"),
            vec![
                ("room".to_string(), None),
                ("filter".to_string(), Some("skip-self".to_string())),
                ("x".to_string(), Some("a;b\"c".to_string())),
            ]
        );
        assert!(parse_params(r#"a="x" y"#).is_err());
        assert!(parse_params(r#"a=x"y"#).is_err());
    }

    #[test]
    fn json_filters_meta_and_header_companions() {
        use crate::codec::filter::Name;
        let f = fields(concat!(
            "Content-Type: application/grip-instruct\r\n",
            "Grip-Set-Meta: user=header, role=admin\r\n",
            "Grip-Link: </gone>; rel=gone, </next>; rel=next; timeout=30\r\n",
        ));
        let body = br#"{"hold":{"mode":"stream","channels":[{"name":"room","prev-id":"3","filters":["skip-self","build-id"]}],
            "meta":{"user":"json","id_format":"%(room)s"}}}"#;
        let (i, _) = from_json_response(&f, body).expect("valid");
        let i = i.expect("hold");
        assert_eq!(
            i.channels[0].filters.names(),
            &[Name::SkipSelf, Name::BuildId]
        );
        assert_eq!(
            i.meta,
            vec![
                ("role".into(), "admin".into()),
                ("id_format".into(), "%(room)s".into()),
                ("user".into(), "json".into()),
            ]
        );
        assert_eq!(i.gone.as_deref(), Some("/gone"));
        assert_eq!(
            i.next.map(|n| (n.url, n.timeout)),
            Some(("/next".into(), 30))
        );
        let six = r#"{"hold":{"channels":[{"name":"a","filters":["skip-self","skip-self","skip-self","skip-self","skip-self","skip-self"]}]}}"#;
        for (json, needle) in [
            (
                six,
                "hold.channels[0].filters: too many filters for channel 'a'",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a","filters":["nope"]}]}}"#,
                "hold.channels[0].filters: unknown filter 'nope'",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a","filters":[1]}]}}"#,
                "filters: must be a list of strings",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a","filters":"skip-self"}]}}"#,
                "filters: must be a list of strings",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a","prev-id":3}]}}"#,
                "hold.channels[0].prev-id: must be a string",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a"}],"meta":{"k":1}}}"#,
                "hold.meta.k: must be a string",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a"}],"meta":["k"]}}"#,
                "hold.meta: must be an object of strings",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a"}],"meta":{"k":"a\nb"}}}"#,
                "meta value 'k': contains CR or LF",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a"}],"timeout":-1}}"#,
                "hold.timeout: -1 is not a whole number",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a","colour":1}]}}"#,
                "hold.channels[0].colour: unknown field",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a"}],"linger":1}}"#,
                "hold.linger: unknown field",
            ),
            (
                r#"{"hold":{"channels":[{"name":"a"}]},"extra":1}"#,
                "body.extra: unknown field",
            ),
            (
                r#"{"hold":{"channels":{"name":"a"}}}"#,
                "hold.channels: must be a list",
            ),
            (
                r#"{"hold":{"channels":[{"prev-id":"1"}]}}"#,
                "hold.channels[0].name: missing",
            ),
            (r#"[]"#, "must be a JSON object"),
        ] {
            let e = from_json(json.as_bytes()).expect_err(json).0;
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
