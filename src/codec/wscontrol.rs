//! GRIP WebSocket control messages: the JSON after `c:` in a text message
//! from a backend that enabled the `grip` extension (Pushpin 1.41,
//! `wscontrolmessage.cpp`, `handlerengine.cpp`).
//!
//! Parsed into one typed [`Control`]; anything Pushpin would skip (invalid
//! JSON, an unknown type, a field of the wrong type) is an error naming the
//! field, for the connection to log. corepin also refuses unknown fields
//! and an unknown keep-alive `mode` (Pushpin reads it as idle).

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::filter::Filters;
use super::grip::{self, KeepAliveMode};
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

fn only(o: &Map<String, Value>, known: &[&str], kind: &str) -> Result<(), String> {
    match o.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => err(format!(
            "{}: unknown field for type {kind} (expected {})",
            k.escape_debug(),
            known.join(", ")
        )),
        None => Ok(()),
    }
}

fn string<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => err(format!("{key}: must be a string")),
    }
}

/// The channel of a `subscribe` or `unsubscribe`; with `"prefix": true`,
/// the key of every channel under it (see `codec::wildcard`).
fn channel(o: &Map<String, Value>) -> Result<String, String> {
    let prefix = match o.get("prefix") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return err("prefix: must be true or false"),
    };
    match string(o, "channel")? {
        Some(c) if !c.is_empty() => {
            response::check_value(c.as_bytes()).map_err(|p| format!("channel: {p}"))?;
            Ok(if prefix {
                crate::codec::wildcard::key(c)
            } else {
                c.to_string()
            })
        }
        _ => err("channel: missing or empty"),
    }
}

fn seconds(o: &Map<String, Value>, default: u32) -> Result<u32, String> {
    match o.get("timeout") {
        None | Some(Value::Null) => Ok(default),
        Some(t) => match t.as_u64() {
            Some(0) => Ok(default),
            Some(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            None => err(format!("timeout: {t} is not a whole number of seconds")),
        },
    }
}

/// The message of a `keep-alive` or `send-delayed`: `content` (text) or
/// `content-bin` (base64), sent as `message-type` (text, binary, ping,
/// pong). Without `message-type`, `content-bin` is sent binary (Pushpin
/// 1.41 sends it as text; publishes make it binary, and so does corepin).
fn message(o: &Map<String, Value>) -> Result<Option<Message>, String> {
    let content = match (string(o, "content")?, string(o, "content-bin")?) {
        (Some(_), Some(_)) => return err("give either content or content-bin, not both"),
        (Some(t), None) => Some((Bytes::copy_from_slice(t.as_bytes()), false)),
        (None, Some(b)) => Some((
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map(Bytes::from)
                .map_err(|_| "content-bin: is not valid base64".to_string())?,
            true,
        )),
        (None, None) => None,
    };
    let kind = match string(o, "message-type")? {
        None => None,
        Some("text") => Some(WsKind::Text),
        Some("binary") => Some(WsKind::Binary),
        Some("ping") => Some(WsKind::Ping),
        Some("pong") => Some(WsKind::Pong),
        Some(other) => {
            return err(format!(
                "message-type: unknown type '{}' (text, binary, ping, pong)",
                other.escape_debug()
            ))
        }
    };
    let Some((content, bin)) = content else {
        return Ok(None);
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

/// Parses one control message (the bytes after `c:`).
pub fn parse(json: &[u8]) -> Result<Control, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(o) = v else {
        return err("must be a JSON object");
    };
    let kind = match o.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => return err("type: must be a string"),
        None => return err("type: missing"),
    };
    let k = kind.as_str();
    match k {
        "subscribe" => {
            only(&o, &["type", "channel", "prefix", "filters", "last-id"], k)?;
            let channel = channel(&o)?;
            // As a `Last-Event-ID` (history::parse_resume_id): ids are
            // compared byte for byte with the published ones.
            let last_id = match string(&o, "last-id")? {
                None => None,
                Some("") => return err("last-id: empty"),
                Some(id) if id.len() > 256 => return err("last-id: over 256 bytes"),
                Some(id) if id.chars().any(char::is_control) => {
                    return err("last-id: contains a control character")
                }
                Some(_) if o.get("prefix") == Some(&Value::Bool(true)) => {
                    return err("last-id: not with prefix (history is kept per channel)")
                }
                Some(id) => Some(id.to_string()),
            };
            let names = match o.get("filters") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(l)) => l
                    .iter()
                    .map(|f| f.as_str().ok_or("filters: must be a list of strings"))
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => return err("filters: must be a list of strings"),
            };
            let filters = Filters::parse(names, &channel).map_err(|e| format!("filters: {e}"))?;
            Ok(Control::Subscribe {
                channel,
                filters,
                last_id,
            })
        }
        "unsubscribe" => {
            only(&o, &["type", "channel", "prefix"], k)?;
            Ok(Control::Unsubscribe {
                channel: channel(&o)?,
            })
        }
        "detach" => {
            only(&o, &["type"], k)?;
            Ok(Control::Detach)
        }
        "session" => {
            only(&o, &["type", "id"], k)?;
            let id = string(&o, "id")?.filter(|s| !s.is_empty());
            if let Some(id) = id {
                response::check_value(id.as_bytes()).map_err(|p| format!("id: {p}"))?;
            }
            Ok(Control::Session {
                id: id.map(String::from),
            })
        }
        "set-meta" => {
            only(&o, &["type", "name", "value"], k)?;
            let name = match string(&o, "name")? {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => return err("name: missing or empty"),
            };
            let value = string(&o, "value")?.map(String::from);
            if let Some(v) = &value {
                // The same checks as Grip-Set-Meta (var-subst puts meta
                // in clients' bytes).
                grip::set_meta(&mut Vec::new(), &name, v, "set-meta")?;
            }
            Ok(Control::SetMeta { name, value })
        }
        "keep-alive" => {
            only(
                &o,
                &["type", "content", "content-bin", "message-type", "timeout", "mode"],
                k,
            )?;
            let mode = match string(&o, "mode")? {
                None | Some("idle") => KeepAliveMode::Idle,
                Some("interval") => KeepAliveMode::Interval,
                Some(m) => {
                    return err(format!(
                        "mode: unknown mode '{}' (idle, interval)",
                        m.escape_debug()
                    ))
                }
            };
            let timeout = seconds(&o, DEFAULT_KEEP_ALIVE)?;
            Ok(Control::KeepAlive(message(&o)?.map(|m| (m, timeout, mode))))
        }
        "send-delayed" => {
            only(
                &o,
                &["type", "content", "content-bin", "message-type", "timeout"],
                k,
            )?;
            let timeout = seconds(&o, DEFAULT_DELAY)?;
            let message = message(&o)?.unwrap_or(Message {
                kind: WsKind::Text,
                content: Bytes::new(),
            });
            Ok(Control::SendDelayed { message, timeout })
        }
        "flush-delayed" => {
            only(&o, &["type"], k)?;
            Ok(Control::FlushDelayed)
        }
        other => err(format!(
            "type: unknown type '{}' (subscribe, unsubscribe, detach, session, set-meta, keep-alive, send-delayed, flush-delayed)",
            other.escape_debug()
        )),
    }
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
        ] {
            let json = json.replace("PING", &"x".repeat(126));
            let needle = needle.replace(
                "PLACEHOLDER",
                "content: is 126 bytes; a ping or pong carries at most 125",
            );
            let e = parse(json.as_bytes()).expect_err(&json);
            assert!(e.contains(&needle), "{json}: {e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }
}
