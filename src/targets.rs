//! Per-connection targets (issue 18 item 4): one held connection — an HTTP
//! stream, a long-poll, or a WebSocket of any kind — reached by its
//! Connection-Id, to send it one message or to close it.
//!
//! The request (`connection` on the control socket, `POST /connection` on
//! the HTTP API, `corepin connection` from a shell) carries the message in
//! the formats of a publish item (`ws-message`, `http-stream`,
//! `http-response`, parsed and checked by `codec::publish` exactly as a
//! published item's are), or `"action": "close"`. The connection takes the
//! format of its kind; a request without that format is answered so.
//!
//! Ids name their core (`Shard::next_connection_id`: `TIME-CORE-N`), so a
//! request goes to that core alone, and an id that is not one of corepin's
//! is answered at once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use crate::bus::Encoded;
use crate::codec::json::{self, Check, Checked, Str};
use crate::codec::publish::Action;
use crate::subs::{HoldKind, Msg, Registry, Sub};

/// Longest Connection-Id accepted in a request.
pub const MAX_ID: usize = 256;

/// What a `connection` request does to its connection.
#[derive(Debug, Clone)]
pub enum Target {
    /// One message, in the formats given (the connection takes its own).
    Item(Arc<Encoded>),
    /// Close: a WebSocket with this code, a stream ends cleanly, a
    /// long-poll is answered as at its timeout.
    Close(u16),
}

/// How a core applied a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// No connection with that id here.
    NotHere,
    /// Queued (through the connection's queue, with its usual limits).
    Done,
    /// The connection is of this kind and the request has no format for
    /// it: (kind, format).
    NoFormat(&'static str, &'static str),
}

/// A connection kind's name and the publish format it takes.
fn kind_format(kind: HoldKind) -> (&'static str, &'static str) {
    match kind {
        HoldKind::Stream => ("an HTTP stream", "http-stream"),
        HoldKind::Response => ("a long-poll", "http-response"),
        HoldKind::Ws => ("a WebSocket", "ws-message"),
    }
}

impl Target {
    /// Queues this target's message on `sub` (with the core's queue
    /// limits), as the publish path would for an item of its kind.
    pub fn apply(&self, sub: &Sub, subs: &Registry) -> Applied {
        let msgs: Vec<Msg> = match self {
            Target::Close(code) => vec![match sub.kind() {
                HoldKind::Ws => Msg::WsClose(*code, String::new()),
                HoldKind::Stream => Msg::Close,
                HoldKind::Response => Msg::Timeout,
            }],
            Target::Item(e) => match msgs_for(sub, e) {
                Some(m) => m,
                None => {
                    let (kind, format) = kind_format(sub.kind());
                    return Applied::NoFormat(kind, format);
                }
            },
        };
        for m in msgs {
            sub.push(m, subs.limits, &subs.stats);
        }
        Applied::Done
    }
}

/// The messages `e` makes for `sub`, or `None` when it has no format for
/// the subscriber's kind.
fn msgs_for(sub: &Sub, e: &Arc<Encoded>) -> Option<Vec<Msg>> {
    let it = &e.item;
    Some(match sub.kind() {
        HoldKind::Stream => {
            let s = it.http_stream.as_ref()?;
            match s.action {
                Action::Send if sub.chunked() => vec![Msg::Data(e.stream_chunk().clone())],
                Action::Send => vec![Msg::Data(e.stream_raw())],
                Action::Close => vec![Msg::Close],
                Action::Hint | Action::Refresh => vec![Msg::Refetch],
            }
        }
        HoldKind::Ws => {
            let w = it.ws_message.as_ref()?;
            match w.action {
                Action::Send => vec![Msg::Data(e.ws_frame().clone())],
                Action::Close => vec![Msg::WsClose(w.code.unwrap_or(1000), w.reason.clone())],
                Action::Refresh => vec![Msg::Refresh],
                // Refused when parsed (a hint is for HTTP subscribers).
                Action::Hint => Vec::new(),
            }
        }
        HoldKind::Response => {
            let r = it.http_response.as_ref()?;
            match r.action {
                Action::Send => vec![Msg::Response(e.clone())],
                Action::Hint => vec![Msg::Refetch],
                // Refused when parsed.
                Action::Close | Action::Refresh => Vec::new(),
            }
        }
    })
}

/// The `connection` request: `id` (a Connection-Id) and either one or
/// more formats (`ws-message`, `http-stream`, `http-response`, as in a
/// publish item) or `"action": "close"` (with an optional `"code"`, 1000
/// by default); any other member refused by name.
pub fn request(v: &Value) -> Result<(String, Target), String> {
    if !v.is_object() {
        return Err("a request is a JSON object".into());
    }
    let bad_id = || format!("connection: \"id\" must be a Connection-Id (1 to {MAX_ID} bytes)");
    let r: Request = json::from_value(v).map_err(|e| match e.unknown_field() {
        Some(("", k)) => format!(
            "connection: unknown member '{}' (id, ws-message, http-stream, http-response, action, code)",
            k.escape_debug()
        ),
        _ if matches!(&e, json::Refusal::Data { path, .. } if path == "id") => bad_id(),
        _ => format!("connection: {}", e.explain("", "", "")),
    })?;
    let id = match r.id {
        Some(s) if !s.0.is_empty() && s.0.len() <= MAX_ID => s.into_string(),
        _ => return Err(bad_id()),
    };
    let formats = [
        ("ws-message", r.ws_message),
        ("http-stream", r.http_stream),
        ("http-response", r.http_response),
    ];
    let given = formats.iter().any(|(_, f)| f.is_some());
    let target = match (given, r.action) {
        (true, None) => {
            if r.code.is_some() {
                return Err("connection: \"code\" goes with \"action\": \"close\"".into());
            }
            Target::Item(Arc::new(Encoded::new(item(&formats)?)))
        }
        (false, Some(a)) if a.0 == "close" => Target::Close(r.code.map_or(1000, |c| c.0)),
        (false, Some(a)) => {
            return Err(format!(
                "connection: unknown action \"{}\" (close)",
                a.0.escape_debug()
            ))
        }
        (true, Some(_)) => {
            return Err(
                "connection: give formats (ws-message, http-stream, http-response) or \"action\", not both"
                    .into(),
            )
        }
        (false, None) => {
            return Err(
                "connection: needs a format (ws-message, http-stream, http-response) or \"action\": \"close\""
                    .into(),
            )
        }
    };
    Ok((id, target))
}

/// A `connection` request's members (`method` is the control socket's);
/// the formats stay JSON for the publish parser (`item`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct Request<'a> {
    #[serde(default, rename = "method")]
    _method: Option<IgnoredAny>,
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    action: Option<Str<'a>>,
    #[serde(default)]
    code: Option<Checked<u16, CloseCode>>,
    #[serde(default, rename = "ws-message")]
    ws_message: Option<Value>,
    #[serde(default, rename = "http-stream")]
    http_stream: Option<Value>,
    #[serde(default, rename = "http-response")]
    http_response: Option<Value>,
}

/// The close codes a `connection` close may send.
enum CloseCode {}

impl Check for CloseCode {
    type Out = u16;
    fn check(n: Result<u64, String>) -> Result<u16, String> {
        match n {
            Ok(c @ (1000 | 1001 | 1008 | 1011 | 3000..=4999)) => Ok(c as u16),
            Ok(c) => Err(c.to_string()),
            Err(text) => Err(text),
        }
        .map_err(|c| format!("close code {c} not allowed (1000, 1001, 1008, 1011, 3000-4999)"))
    }
}

/// The formats parsed as one publish item's (every check a published
/// item gets), errors named from `connection` rather than `items[0]`.
fn item(formats: &[(&str, Option<Value>)]) -> Result<crate::codec::publish::Item, String> {
    let mut one = serde_json::Map::new();
    one.insert("channel".into(), Value::from("-"));
    for (name, v) in formats {
        if let Some(v) = v {
            one.insert((*name).to_string(), v.clone());
        }
    }
    let body = serde_json::json!({ "items": [one] }).to_string();
    let rename = |e: String| format!("connection: {}", e.strip_prefix("items[0].").unwrap_or(&e));
    let mut items = crate::codec::publish::parse(body.as_bytes()).map_err(|e| rename(e.0))?;
    let Some(it) = items.pop() else {
        return Err("connection: no format".into());
    };
    // What only makes sense for a channel's subscribers.
    if let Some(r) = &it.http_response {
        if r.patch.is_some() {
            return Err("connection: http-response.body-patch: not for one connection (it patches a channel's held bodies); send a body".into());
        }
        if r.content_filters.is_some() {
            return Err("connection: http-response.content-filters: not for one connection (filters are a channel subscription's)".into());
        }
        if matches!(r.action, Action::Close | Action::Refresh) {
            return Err("connection: http-response.action: close and refresh are not for a long-poll (send or hint)".into());
        }
    }
    if it
        .http_stream
        .as_ref()
        .is_some_and(|s| s.content_filters.is_some())
    {
        return Err("connection: http-stream.content-filters: not for one connection (filters are a channel subscription's)".into());
    }
    if let Some(w) = &it.ws_message {
        if w.content_filters.is_some() {
            return Err("connection: ws-message.content-filters: not for one connection (filters are a channel subscription's)".into());
        }
        if w.action == Action::Hint {
            return Err("connection: ws-message.action: hint is not for a WebSocket (send, close or refresh)".into());
        }
    }
    Ok(it)
}

/// What a request answers for an id no core holds.
pub fn no_connection(id: &str) -> String {
    format!(
        "no connection with Connection-Id '{}' (not connected, or not held: only held streams, long-polls and WebSockets have one)",
        id.escape_debug()
    )
}

/// The core that made `id` (`TIME-CORE-N`, all but CORE in hex), if it is
/// one of corepin's ids for a core below `cores`.
pub fn owner(id: &str, cores: usize) -> Option<usize> {
    let mut parts = id.split('-');
    let (t, core, n) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(t) || !hex(n) || core.is_empty() || !core.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    core.parse::<usize>().ok().filter(|&c| c < cores)
}

/// A held connection this core answers targets for, by Connection-Id,
/// for as long as this lives (whichever way the hold ends).
pub struct Registered<'a> {
    map: &'a RefCell<HashMap<String, Rc<Sub>>>,
    id: String,
}

impl<'a> Registered<'a> {
    pub fn new(map: &'a RefCell<HashMap<String, Rc<Sub>>>, id: String, sub: &Rc<Sub>) -> Self {
        map.borrow_mut().insert(id.clone(), sub.clone());
        Registered { map, id }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.map.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_name_their_core() {
        assert_eq!(owner("18a2b3c4d5e6f-1-2a", 2), Some(1));
        assert_eq!(owner("18a2b3c4d5e6f-0-0", 1), Some(0));
        for bad in [
            "",
            "x",
            "18a-2-1",
            "18a-1",
            "18a-1-2-3",
            "18a--1",
            "zz-0-1",
            "18a-0-zz",
            "18a-+0-1",
            "-0-1",
            "18a-99999999999999999999999-1",
        ] {
            assert_eq!(owner(bad, 2), None, "{bad}");
        }
    }

    #[test]
    fn requests_take_publish_formats_or_a_close() {
        let (id, t) = request(&json!({"id": "a", "ws-message": {"content": "hi"}})).expect("ok");
        assert_eq!(id, "a");
        let Target::Item(e) = t else { panic!("item") };
        assert_eq!(
            e.item.ws_message.as_ref().map(|w| w.content.clone()),
            Some(bytes::Bytes::from_static(b"hi"))
        );
        let (_, t) = request(&json!({"id": "a", "http-stream": {"content": "x\n"},
            "http-response": {"code": 201, "body": "y"}}))
        .expect("ok");
        let Target::Item(e) = t else { panic!("item") };
        assert!(e.item.http_stream.is_some() && e.item.http_response.is_some());
        assert!(matches!(
            request(&json!({"id": "a", "action": "close", "code": 4000})),
            Ok((_, Target::Close(4000)))
        ));
        assert!(matches!(
            request(&json!({"method": "connection", "id": "a", "action": "close"})),
            Ok((_, Target::Close(1000)))
        ));
    }

    #[test]
    fn bad_requests_are_refused_by_name() {
        for (v, why) in [
            (json!([]), "a request is a JSON object"),
            (json!({"id": "a"}), "needs a format"),
            (json!({"action": "close"}), "\"id\" must be"),
            (json!({"id": "", "action": "close"}), "\"id\" must be"),
            (
                json!({"id": "x".repeat(257), "action": "close"}),
                "\"id\" must be",
            ),
            (json!({"id": 3, "action": "close"}), "\"id\" must be"),
            (
                json!({"id": "a", "action": "close", "code": 1005}),
                "close code 1005",
            ),
            (json!({"id": "a", "action": "open"}), "unknown action"),
            (
                json!({"id": "a", "channel": "c"}),
                "unknown member 'channel'",
            ),
            (
                json!({"id": "a", "ws-message": {"content": "x"}, "action": "close"}),
                "not both",
            ),
            (
                json!({"id": "a", "ws-message": {"content": "x"}, "code": 1000}),
                "\"code\" goes with",
            ),
            (
                json!({"id": "a", "ws-message": {"content": "x", "colour": 1}}),
                "connection: ws-message.colour: unknown field",
            ),
            (
                json!({"id": "a", "http-response": {"reason": "a\r\nb"}}),
                "connection: http-response.reason: contains CR or LF",
            ),
            (
                json!({"id": "a", "http-response": {"headers": {"X-A": "a\u{0}"}}}),
                "contains NUL",
            ),
            (
                json!({"id": "a", "ws-message": {"action": "close", "code": 1005}}),
                "1005",
            ),
            (
                json!({"id": "a", "http-response": {"body-patch": []}}),
                "body-patch: not for one connection",
            ),
            (
                json!({"id": "a", "http-stream": {"content": "x", "content-filters": ["build-id"]}}),
                "content-filters: not for one connection",
            ),
            (
                json!({"id": "a", "http-response": {"action": "close"}}),
                "http-response.action",
            ),
        ] {
            match request(&v) {
                Ok(_) => panic!("{v} accepted"),
                Err(e) => assert!(e.contains(why), "{v}: {e}"),
            }
        }
    }
}
