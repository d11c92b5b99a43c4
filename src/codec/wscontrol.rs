//! GRIP WebSocket control messages: the JSON after `c:` in a text message
//! from a backend that enabled the `grip` extension (Pushpin 1.41,
//! `wscontrolmessage.cpp`, `handlerengine.cpp`).
//!
//! Parsed into one typed [`Control`]; anything Pushpin would skip (invalid
//! JSON, an unknown type, a field of the wrong type) is an error naming the
//! field, for the connection to log. corepin also refuses unknown fields
//! and an unknown keep-alive `mode` (Pushpin reads it as idle).

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::filter::Filters;
use super::grip::{self, KeepAliveMode};
use super::json::{self, Checked, Flag, Obj, Seconds, Str, StrList, B64};
use super::publish::WsKind;
use super::response;
use super::ws;

/// `keep-alive` timeout when none (or 0) is given, seconds.
pub const DEFAULT_KEEP_ALIVE: u32 = 55;
/// `send-delayed` timeout when none (or 0) is given, seconds.
pub const DEFAULT_DELAY: u32 = 1;

/// A message a control asks corepin to send the client later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: WsKind,
    pub content: Bytes,
}

impl Message {
    /// The message as one unmasked server frame.
    pub fn frame(&self) -> Bytes {
        let op = match self.kind {
            WsKind::Text => ws::Opcode::Text,
            WsKind::Binary => ws::Opcode::Binary,
            WsKind::Ping => ws::Opcode::Ping,
            WsKind::Pong => ws::Opcode::Pong,
        };
        let mut out = Vec::with_capacity(self.content.len() + 10);
        ws::write_frame(&mut out, true, op, &self.content, None);
        Bytes::from(out)
    }
}

/// What a control message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Subscribe to `channel` (as the backend names it) with `filters`;
    /// `last_id` (corepin's `last-id`): the id of the last item the client
    /// saw, to resume after from channel history.
    Subscribe {
        channel: String,
        filters: Filters,
        last_id: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    /// Close the backend side; the client stays, still subscribed.
    Detach,
    /// Set (`Some`) or clear the session id.
    Session {
        id: Option<String>,
    },
    /// Set (`Some`) or remove a subscription meta entry.
    SetMeta {
        name: String,
        value: Option<String>,
    },
    /// Send `message` to the client after `timeout` seconds without
    /// output (`Idle`) or every `timeout` seconds (`Interval`); `None`
    /// turns keep-alives off.
    KeepAlive(Option<(Message, u32, KeepAliveMode)>),
    /// Send `message` after `timeout` seconds, replacing (and first
    /// sending) one still pending.
    SendDelayed {
        message: Message,
        timeout: u32,
    },
    /// Send the pending delayed message now.
    FlushDelayed,
}

fn err<T>(msg: impl Into<String>) -> Result<T, String> {
    Err(msg.into())
}

/// The channel of a `subscribe` or `unsubscribe`; with `"prefix": true`,
/// the key of every channel under it (see `codec::wildcard`).
fn channel(channel: Option<Str>, prefix: Option<Flag>) -> Result<String, String> {
    match channel {
        Some(c) if !c.0.is_empty() => {
            response::check_value(c.0.as_bytes()).map_err(|p| format!("channel: {p}"))?;
            Ok(match prefix.is_some_and(|p| p.0) {
                true => crate::codec::wildcard::key(&c.0),
                false => c.into_string(),
            })
        }
        _ => err("channel: missing or empty"),
    }
}

/// `timeout` in seconds: none or 0 is `default`.
fn seconds(t: Option<Checked<u64, Seconds>>, default: u32) -> u32 {
    match t.map(|t| t.0) {
        None | Some(0) => default,
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
    }
}

/// The message of a `keep-alive` or `send-delayed`: `content` (text) or
/// `content-bin` (base64), sent as `message-type` (text, binary, ping,
/// pong). Without `message-type`, `content-bin` is sent binary (Pushpin
/// 1.41 sends it as text; publishes make it binary, and so does corepin).
fn message(
    content: Option<Str>,
    content_bin: Option<B64>,
    kind: Option<WsKind>,
) -> Result<Option<Message>, String> {
    let (content, bin) = match (content, content_bin) {
        (Some(_), Some(_)) => return err("give either content or content-bin, not both"),
        (Some(t), None) => (t.into_bytes(), false),
        (None, Some(b)) => (b.0, true),
        (None, None) => return Ok(None),
    };
    let kind = kind.unwrap_or(if bin { WsKind::Binary } else { WsKind::Text });
    if kind == WsKind::Text && std::str::from_utf8(&content).is_err() {
        return err("content: a text message must be UTF-8");
    }
    if matches!(kind, WsKind::Ping | WsKind::Pong) && content.len() > ws::MAX_CONTROL_PAYLOAD {
        return err(format!(
            "content: is {} bytes; a ping or pong carries at most {}",
            content.len(),
            ws::MAX_CONTROL_PAYLOAD
        ));
    }
    Ok(Some(Message { kind, content }))
}

/// Reads `json` as `T`, the refusal naming the field; `kind` names the
/// message type in an unknown field's refusal.
fn fields<'a, T: Deserialize<'a>>(json: &'a [u8], kind: &str) -> Result<T, String> {
    json::from_slice::<Obj<T>>(json)
        .map(|o| o.0)
        .map_err(|e| e.explain("invalid JSON: ", "", &format!(" for type {kind}")))
}

/// Parses one control message (the bytes after `c:`): its `type` first,
/// then the fields that type has (any other is refused by name).
pub fn parse(json: &[u8]) -> Result<Control, String> {
    let Tagged { kind } = fields(json, "")?;
    let Some(kind) = kind else {
        return err("type: missing");
    };
    let k = kind.0.as_ref();
    match k {
        "subscribe" => {
            let f: Subscribe = fields(json, k)?;
            // As a `Last-Event-ID` (history::parse_resume_id): ids are
            // compared byte for byte with the published ones.
            let last_id = match f.last_id.as_ref().map(|s| s.0.as_ref()) {
                None => None,
                Some("") => return err("last-id: empty"),
                Some(id) if id.len() > 256 => return err("last-id: over 256 bytes"),
                Some(id) if id.chars().any(char::is_control) => {
                    return err("last-id: contains a control character")
                }
                Some(_) if f.prefix.as_ref().is_some_and(|p| p.0) => {
                    return err("last-id: not with prefix (history is kept per channel)")
                }
                Some(id) => Some(id.to_string()),
            };
            let channel = channel(f.channel, f.prefix)?;
            let names: Vec<&str> = f.filters.as_ref().map_or(Vec::new(), |l| {
                l.0.iter().map(String::as_str).collect()
            });
            let filters = Filters::parse(names, &channel).map_err(|e| format!("filters: {e}"))?;
            Ok(Control::Subscribe {
                channel,
                filters,
                last_id,
            })
        }
        "unsubscribe" => {
            let f: Unsubscribe = fields(json, k)?;
            Ok(Control::Unsubscribe {
                channel: channel(f.channel, f.prefix)?,
            })
        }
        "detach" => {
            let _: Bare = fields(json, k)?;
            Ok(Control::Detach)
        }
        "session" => {
            let f: Session = fields(json, k)?;
            let id = f.id.map(Str::into_string).filter(|s| !s.is_empty());
            if let Some(id) = &id {
                response::check_value(id.as_bytes()).map_err(|p| format!("id: {p}"))?;
            }
            Ok(Control::Session { id })
        }
        "set-meta" => {
            let f: SetMeta = fields(json, k)?;
            let name = match f.name {
                Some(n) if !n.0.is_empty() => n.into_string(),
                _ => return err("name: missing or empty"),
            };
            let value = f.value.map(Str::into_string);
            if let Some(v) = &value {
                // The same checks as Grip-Set-Meta (var-subst puts meta
                // in clients' bytes).
                grip::set_meta(&mut Vec::new(), &name, v, "set-meta")?;
            }
            Ok(Control::SetMeta { name, value })
        }
        "keep-alive" => {
            let f: KeepAlive = fields(json, k)?;
            let mode = f.mode.unwrap_or(KeepAliveMode::Idle);
            let timeout = seconds(f.timeout, DEFAULT_KEEP_ALIVE);
            let message = message(f.content, f.content_bin, f.message_type)?;
            Ok(Control::KeepAlive(message.map(|m| (m, timeout, mode))))
        }
        "send-delayed" => {
            let f: SendDelayed = fields(json, k)?;
            let timeout = seconds(f.timeout, DEFAULT_DELAY);
            let message = message(f.content, f.content_bin, f.message_type)?.unwrap_or(Message {
                kind: WsKind::Text,
                content: Bytes::new(),
            });
            Ok(Control::SendDelayed { message, timeout })
        }
        "flush-delayed" => {
            let _: Bare = fields(json, k)?;
            Ok(Control::FlushDelayed)
        }
        other => err(format!(
            "type: unknown type '{}' (subscribe, unsubscribe, detach, session, set-meta, keep-alive, send-delayed, flush-delayed)",
            other.escape_debug()
        )),
    }
}

/// Fuzz invariant: parsing never panics; a refusal is one non-empty line;
/// an accepted channel or session id can sit in a header line (it is
/// echoed to backends), and an accepted message is valid for its frame
/// type (text is UTF-8, a ping or pong fits a control frame).
#[doc(hidden)]
pub fn check_parse_invariant(json: &[u8]) {
    let check_message = |m: &Message| {
        if m.kind == WsKind::Text {
            assert!(std::str::from_utf8(&m.content).is_ok(), "text not UTF-8");
        }
        if matches!(m.kind, WsKind::Ping | WsKind::Pong) {
            assert!(m.content.len() <= ws::MAX_CONTROL_PAYLOAD);
        }
    };
    match parse(json) {
        Err(e) => assert!(!e.is_empty() && !e.contains(['\r', '\n']), "{e:?}"),
        Ok(Control::Subscribe { channel, .. } | Control::Unsubscribe { channel }) => {
            let name = crate::codec::wildcard::as_prefix(&channel).unwrap_or(&channel);
            assert!(!name.is_empty());
            assert!(response::check_value(name.as_bytes()).is_ok());
        }
        Ok(Control::Session { id: Some(id) }) => {
            assert!(!id.is_empty() && response::check_value(id.as_bytes()).is_ok());
        }
        Ok(Control::KeepAlive(Some((m, timeout, _)))) => {
            check_message(&m);
            assert!(timeout > 0);
        }
        Ok(Control::SendDelayed { message, timeout }) => {
            check_message(&message);
            assert!(timeout > 0);
        }
        Ok(_) => {}
    }
}

// ---------------------------------------------------------------------------
// Each message type's fields, for serde. `type` is read first on its own
// (`Tagged`, which lets every other field through); each type's struct then
// refuses any field that type does not have.

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct Tagged<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct Subscribe<'a> {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(default, borrow)]
    channel: Option<Str<'a>>,
    #[serde(default)]
    prefix: Option<Flag>,
    #[serde(default)]
    filters: Option<StrList>,
    #[serde(default, borrow, rename = "last-id")]
    last_id: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct Unsubscribe<'a> {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(default, borrow)]
    channel: Option<Str<'a>>,
    #[serde(default)]
    prefix: Option<Flag>,
}

/// `detach` and `flush-delayed`: no fields but `type`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct Bare {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct Session<'a> {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct SetMeta<'a> {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    value: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct KeepAlive<'a> {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(default, borrow)]
    content: Option<Str<'a>>,
    #[serde(default, rename = "content-bin")]
    content_bin: Option<B64>,
    #[serde(default, rename = "message-type")]
    message_type: Option<WsKind>,
    #[serde(default)]
    timeout: Option<Checked<u64, Seconds>>,
    #[serde(default)]
    mode: Option<KeepAliveMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct SendDelayed<'a> {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(default, borrow)]
    content: Option<Str<'a>>,
    #[serde(default, rename = "content-bin")]
    content_bin: Option<B64>,
    #[serde(default, rename = "message-type")]
    message_type: Option<WsKind>,
    #[serde(default)]
    timeout: Option<Checked<u64, Seconds>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::filter::Name;

    fn ok(json: &str) -> Control {
        parse(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn msg(kind: WsKind, c: &str) -> Message {
        Message {
            kind,
            content: Bytes::copy_from_slice(c.as_bytes()),
        }
    }

    #[test]
    fn every_type() {
        assert_eq!(
            ok(r#"{"type":"subscribe","channel":"room","filters":["skip-self","var-subst"]}"#),
            Control::Subscribe {
                channel: "room".into(),
                filters: Filters::from_names(vec![Name::SkipSelf, Name::VarSubst]),
                last_id: None,
            }
        );
        assert_eq!(
            ok(r#"{"type":"subscribe","channel":"room","last-id":"41"}"#),
            Control::Subscribe {
                channel: "room".into(),
                filters: Filters::default(),
                last_id: Some("41".into()),
            }
        );
        assert_eq!(
            ok(r#"{"type":"unsubscribe","channel":"room"}"#),
            Control::Unsubscribe {
                channel: "room".into()
            }
        );
        // A prefix subscription is the prefix's key (codec::wildcard).
        assert_eq!(
            ok(r#"{"type":"subscribe","channel":"news.","prefix":true}"#),
            Control::Subscribe {
                channel: crate::codec::wildcard::key("news."),
                filters: Filters::default(),
                last_id: None,
            }
        );
        assert_eq!(
            ok(r#"{"type":"unsubscribe","channel":"news.","prefix":true}"#),
            Control::Unsubscribe {
                channel: crate::codec::wildcard::key("news.")
            }
        );
        assert_eq!(
            ok(r#"{"type":"unsubscribe","channel":"news.","prefix":false}"#),
            Control::Unsubscribe {
                channel: "news.".into()
            }
        );
        assert_eq!(ok(r#"{"type":"detach"}"#), Control::Detach);
        assert_eq!(
            ok(r#"{"type":"session","id":"s1"}"#),
            Control::Session {
                id: Some("s1".into())
            }
        );
        assert_eq!(
            ok(r#"{"type":"session","id":""}"#),
            Control::Session { id: None }
        );
        assert_eq!(
            ok(r#"{"type":"set-meta","name":"user","value":"alice"}"#),
            Control::SetMeta {
                name: "user".into(),
                value: Some("alice".into())
            }
        );
        assert_eq!(
            ok(r#"{"type":"set-meta","name":"user"}"#),
            Control::SetMeta {
                name: "user".into(),
                value: None
            }
        );
        assert_eq!(
            ok(r#"{"type":"keep-alive","content":"ka","timeout":1,"mode":"interval"}"#),
            Control::KeepAlive(Some((msg(WsKind::Text, "ka"), 1, KeepAliveMode::Interval)))
        );
        assert_eq!(
            ok(r#"{"type":"keep-alive","content-bin":"AAE=","timeout":0}"#),
            Control::KeepAlive(Some((
                Message {
                    kind: WsKind::Binary,
                    content: Bytes::from_static(&[0, 1])
                },
                DEFAULT_KEEP_ALIVE,
                KeepAliveMode::Idle
            )))
        );
        assert_eq!(
            ok(r#"{"type":"keep-alive","content":"","message-type":"ping"}"#),
            Control::KeepAlive(Some((msg(WsKind::Ping, ""), 55, KeepAliveMode::Idle)))
        );
        assert_eq!(ok(r#"{"type":"keep-alive"}"#), Control::KeepAlive(None));
        assert_eq!(
            ok(r#"{"type":"send-delayed","content":"typing","timeout":3}"#),
            Control::SendDelayed {
                message: msg(WsKind::Text, "typing"),
                timeout: 3
            }
        );
        assert_eq!(
            ok(r#"{"type":"send-delayed"}"#),
            Control::SendDelayed {
                message: msg(WsKind::Text, ""),
                timeout: DEFAULT_DELAY
            }
        );
        assert_eq!(ok(r#"{"type":"flush-delayed"}"#), Control::FlushDelayed);
        let frame = msg(WsKind::Ping, "hi").frame();
        assert_eq!(&frame[..], &[0x89, 2, b'h', b'i']);
    }

    #[test]
    fn refusals_name_the_field() {
        let six = r#"{"type":"subscribe","channel":"c","filters":["skip-self","skip-self","skip-self","skip-self","skip-self","skip-self"]}"#;
        for (json, needle) in [
            ("{", "invalid JSON"),
            ("[]", "must be a JSON object"),
            (r#"{"channel":"c"}"#, "type: missing"),
            (r#"{"type":5}"#, "type: must be a string"),
            (r#"{"type":"grab"}"#, "type: unknown type 'grab'"),
            (r#"{"type":"subscribe"}"#, "channel: missing or empty"),
            (
                r#"{"type":"subscribe","channel":"a.","prefix":"yes"}"#,
                "prefix: must be true or false",
            ),
            (
                r#"{"type":"subscribe","channel":""}"#,
                "channel: missing or empty",
            ),
            (
                r#"{"type":"subscribe","channel":"a\nb"}"#,
                "channel: contains CR or LF",
            ),
            (
                r#"{"type":"subscribe","channel":"c","filters":["nope"]}"#,
                "filters: unknown filter 'nope'",
            ),
            (
                r#"{"type":"subscribe","channel":"c","filters":["http-check"]}"#,
                "filter 'http-check' is not supported",
            ),
            (six, "filters: too many filters for channel 'c'"),
            (
                r#"{"type":"subscribe","channel":"c","last-id":""}"#,
                "last-id: empty",
            ),
            (
                r#"{"type":"subscribe","channel":"c","last-id":"a\r\nb"}"#,
                "last-id: contains a control character",
            ),
            (
                r#"{"type":"subscribe","channel":"c","last-id":3}"#,
                "last-id: must be a string",
            ),
            (
                r#"{"type":"subscribe","channel":"c.","prefix":true,"last-id":"3"}"#,
                "last-id: not with prefix",
            ),
            (
                r#"{"type":"subscribe","channel":"c","filters":"skip-self"}"#,
                "filters: must be a list",
            ),
            (
                r#"{"type":"subscribe","channel":"c","prev-id":"1"}"#,
                "prev-id: unknown field for type subscribe",
            ),
            (
                r#"{"type":"set-meta","value":"x"}"#,
                "name: missing or empty",
            ),
            (
                r#"{"type":"set-meta","name":"u","value":5}"#,
                "value: must be a string",
            ),
            (
                r#"{"type":"set-meta","name":"u","value":"a\r\nb"}"#,
                "set-meta: meta value 'u': contains CR or LF",
            ),
            (
                r#"{"type":"keep-alive","content":"x","mode":"often"}"#,
                "mode: unknown mode 'often'",
            ),
            (
                r#"{"type":"keep-alive","content":"x","timeout":-1}"#,
                "timeout: -1 is not a whole number",
            ),
            (
                r#"{"type":"keep-alive","content":"x","message-type":"close"}"#,
                "message-type: unknown type 'close'",
            ),
            (
                r#"{"type":"keep-alive","content":"x","content-bin":"eA=="}"#,
                "give either content or content-bin",
            ),
            (
                r#"{"type":"keep-alive","content-bin":"!!"}"#,
                "content-bin: is not valid base64",
            ),
            (
                r#"{"type":"keep-alive","content-bin":"/w==","message-type":"text"}"#,
                "must be UTF-8",
            ),
            (
                r#"{"type":"send-delayed","content":"PING","message-type":"ping"}"#,
                "PLACEHOLDER",
            ),
            (
                r#"{"type":"flush-delayed","now":true}"#,
                "now: unknown field for type flush-delayed",
            ),
            (
                r#"{"type":"detach","a\nb":1}"#,
                "a\\nb: unknown field for type detach (expected type)",
            ),
        ] {
            let json = json.replace("PING", &"x".repeat(126));
            let needle = needle.replace(
                "PLACEHOLDER",
                "content: is 126 bytes; a ping or pong carries at most 125",
            );
            let e = parse(json.as_bytes()).expect_err(&json);
            assert!(e.contains(&needle), "{json}: {e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
            check_parse_invariant(json.as_bytes());
        }
    }
}
