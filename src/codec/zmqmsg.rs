//! The messages of Pushpin's ZeroMQ interfaces, without sockets:
//!
//! - **Publishes** on `push_in_spec` (one part) and `push_in_sub_specs`
//!   (two parts: the channel as topic, then the item): an item as JSON
//!   after a `J`, or as a tnetstring (after an optional `T`), parsed into
//!   the same [`Item`]s as the HTTP publish API with the same checks.
//!   tnetstring items carry bytes where JSON carries text: `body` and
//!   `content` are raw bytes, `ws-message.content-bin` is raw bytes (JSON:
//!   base64), and `body-bin`/`http-stream.content-bin` are refused (JSON
//!   only; Pushpin ignores them in tnetstring).
//! - **Commands** on `command_spec` (Pushpin's zrpc): a tnetstring map
//!   `{id, from, method, args}` answered by `{id, success, value}` or
//!   `{id, success: false, condition}`.
//! - **Stats** on `stats_spec`: `TYPE T<tnetstring>` or `TYPE J<json>`.

use std::borrow::Cow;

use base64::Engine;
use serde_json::{Map, Value as Json};

use super::publish::{self, Item, PublishError};
use super::tnetstring::{self, Value};

/// Publishes arriving on a SUB socket name their channel in the topic.
/// Reads one publish message: `topic` is the SUB socket's first part.
pub fn publish_item(msg: &[u8], topic: Option<&[u8]>) -> Result<Item, PublishError> {
    let topic = match topic {
        Some(t) => Some(
            std::str::from_utf8(t)
                .map_err(|_| PublishError("topic: the channel is not UTF-8".into()))?,
        ),
        None => None,
    };
    let body = match msg.first() {
        Some(b'J') => json_body(&msg[1..], topic)?,
        Some(b'T') => tnet_body(&msg[1..], topic)?,
        Some(_) => tnet_body(msg, topic)?,
        None => return Err(PublishError("empty message".into())),
    };
    let mut items = publish::parse(&body).map_err(|e| PublishError(rename(&e.0)))?;
    match (items.pop(), items.is_empty()) {
        (Some(item), true) => Ok(item),
        _ => Err(PublishError("item: must be one publish item".into())),
    }
}

/// Errors name `item` rather than `items[0]` (a ZeroMQ message is one item).
fn rename(e: &str) -> String {
    match e.strip_prefix("items[0]") {
        Some(rest) => format!("item{rest}"),
        None => e.to_string(),
    }
}

/// A JSON item (after `J`), checked to be one object, with the topic as
/// its channel.
fn json_body(json: &[u8], topic: Option<&str>) -> Result<Vec<u8>, PublishError> {
    let v: Json = serde_json::from_slice(json)
        .map_err(|e| PublishError(format!("item: invalid JSON: {e}")))?;
    let Json::Object(mut obj) = v else {
        return Err(PublishError("item: must be a JSON object".into()));
    };
    with_topic(&mut obj, topic)?;
    Ok(wrap(obj))
}

fn with_topic(obj: &mut Map<String, Json>, topic: Option<&str>) -> Result<(), PublishError> {
    let Some(topic) = topic else { return Ok(()) };
    match obj.get("channel") {
        None => {
            obj.insert("channel".into(), Json::String(topic.into()));
            Ok(())
        }
        Some(Json::String(c)) if c == topic => Ok(()),
        Some(_) => Err(PublishError(format!(
            "item.channel: differs from the topic '{}' it was published on",
            topic.escape_debug()
        ))),
    }
}

fn wrap(obj: Map<String, Json>) -> Vec<u8> {
    let mut root = Map::new();
    root.insert("items".into(), Json::Array(vec![Json::Object(obj)]));
    serde_json::to_vec(&Json::Object(root)).unwrap_or_default()
}

/// A tnetstring item, turned into the JSON item the HTTP API takes.
fn tnet_body(wire: &[u8], topic: Option<&str>) -> Result<Vec<u8>, PublishError> {
    let v = tnetstring::decode(wire).map_err(|e| PublishError(format!("item: {e}")))?;
    let Value::Map(entries) = v else {
        return Err(PublishError(format!(
            "item: must be a map, not {}",
            v.kind()
        )));
    };
    let mut obj = Map::new();
    for (k, v) in &entries {
        let key = text(k, "item")?;
        let path = format!("item.{key}");
        let j = match key {
            "formats" => formats(v, &path)?,
            "http-response" | "http-stream" | "ws-message" => format(key, v, &path)?,
            _ => to_json(v, &path)?,
        };
        obj.insert(key.to_string(), j);
    }
    with_topic(&mut obj, topic)?;
    Ok(wrap(obj))
}

fn formats(v: &Value, path: &str) -> Result<Json, PublishError> {
    let Value::Map(entries) = v else {
        return to_json(v, path);
    };
    let mut obj = Map::new();
    for (k, v) in entries {
        let key = text(k, path)?;
        let p = format!("{path}.{key}");
        obj.insert(key.to_string(), format(key, v, &p)?);
    }
    Ok(Json::Object(obj))
}

/// One format object: its payload bytes mapped to the JSON fields that
/// carry the same bytes.
fn format(name: &str, v: &Value, path: &str) -> Result<Json, PublishError> {
    let Value::Map(entries) = v else {
        return to_json(v, path);
    };
    let b64 = |b: &[u8]| Json::String(base64::engine::general_purpose::STANDARD.encode(b));
    let payload = match name {
        "http-response" => "body",
        _ => "content",
    };
    let mut obj = Map::new();
    let mut ws_text_bytes = false;
    // Two fields that land on one JSON field (`content` as non-UTF-8
    // bytes, and `content-bin`) are refused, not merged.
    let put = |obj: &mut Map<String, Json>, k: String, v: Json| {
        if obj.contains_key(&k) {
            return Err(PublishError(format!(
                "{path}: give either {payload} or {payload}-bin, not both"
            )));
        }
        obj.insert(k, v);
        Ok(())
    };
    for (k, v) in entries {
        let key = text(k, path)?;
        let p = format!("{path}.{key}");
        match (key, v) {
            (k, Value::Bytes(b)) if k == payload => match std::str::from_utf8(b) {
                Ok(s) => put(&mut obj, k.to_string(), Json::String(s.into()))?,
                Err(_) => {
                    put(&mut obj, format!("{k}-bin"), b64(b))?;
                    ws_text_bytes = name == "ws-message";
                }
            },
            ("content-bin", Value::Bytes(b)) if name == "ws-message" => {
                put(&mut obj, "content-bin".into(), b64(b))?
            }
            ("body-bin" | "content-bin", _) => {
                return Err(PublishError(format!(
                    "{p}: base64 is for JSON publishes; in a tnetstring give {payload} as bytes"
                )))
            }
            _ => put(&mut obj, key.to_string(), to_json(v, &p)?)?,
        }
    }
    if ws_text_bytes && !obj.contains_key("type") {
        // Bytes given as `content` are a text message, as in Pushpin:
        // refused below unless they are UTF-8.
        obj.insert("type".into(), Json::String("text".into()));
    }
    Ok(Json::Object(obj))
}

fn text<'a>(b: &'a [u8], path: &str) -> Result<&'a str, PublishError> {
    std::str::from_utf8(b)
        .map_err(|_| PublishError(format!("{path}: key '{}' is not UTF-8", b.escape_ascii())))
}

/// A tnetstring value as JSON: bytes must be UTF-8 text here.
fn to_json(v: &Value, path: &str) -> Result<Json, PublishError> {
    Ok(match v {
        Value::Bytes(b) => Json::String(
            std::str::from_utf8(b)
                .map_err(|_| PublishError(format!("{path}: is not UTF-8 text")))?
                .to_string(),
        ),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Bool(b) => Json::Bool(*b),
        Value::Null => Json::Null,
        Value::List(l) => Json::Array(
            l.iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(m) => {
            let mut obj = Map::new();
            for (k, v) in m {
                let key = text(k, path)?;
                obj.insert(key.to_string(), to_json(v, &format!("{path}.{key}"))?);
            }
            Json::Object(obj)
        }
    })
}

/// A command (zrpc request) on `command_spec`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    pub id: Option<Cow<'a, [u8]>>,
    pub method: String,
    /// A map (empty when the request has no `args`).
    pub args: Value<'a>,
}

/// A command that could not be read; `id` when one was found (to answer
/// it with `bad-format`).
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest<'a> {
    pub id: Option<Cow<'a, [u8]>>,
    pub why: String,
}

/// Reads a command as Pushpin does: a tnetstring map with a byte-string
/// `method`, and optional byte-string `id` and `from` and map `args`.
pub fn request(wire: &[u8]) -> Result<Request<'_>, BadRequest<'_>> {
    fn bad(id: Option<Cow<'_, [u8]>>, why: String) -> BadRequest<'_> {
        BadRequest { id, why }
    }
    let v = tnetstring::decode(wire).map_err(|e| bad(None, e.to_string()))?;
    let Value::Map(entries) = v else {
        return Err(bad(
            None,
            format!("a request must be a map, not {}", v.kind()),
        ));
    };
    let (mut id, mut method, mut args) = (None, None, Value::Map(Vec::new()));
    for (k, v) in &entries {
        if let (b"id", Value::Bytes(b)) = (k.as_ref(), v) {
            id = Some(b.clone());
        }
    }
    for (k, v) in entries {
        match (k.as_ref(), v) {
            (b"id", Value::Bytes(_)) | (b"from", Value::Bytes(_)) => {}
            (b"method", Value::Bytes(m)) => match String::from_utf8(m.into_owned()) {
                Ok(m) => method = Some(m),
                Err(_) => return Err(bad(id, "method: is not UTF-8".into())),
            },
            (b"args", a @ Value::Map(_)) => args = a,
            (key @ (b"id" | b"from" | b"method"), v) => {
                return Err(bad(
                    id,
                    format!(
                        "{}: must be a byte string, not {}",
                        key.escape_ascii(),
                        v.kind()
                    ),
                ))
            }
            (b"args", v) => return Err(bad(id, format!("args: must be a map, not {}", v.kind()))),
            (other, _) => {
                return Err(bad(
                    id,
                    format!(
                        "unknown field '{}' (id, from, method, args)",
                        other.escape_ascii()
                    ),
                ))
            }
        }
    }
    match method {
        Some(method) => Ok(Request { id, method, args }),
        None => Err(bad(id, "method: missing".into())),
    }
}

/// A command's answer, encoded: `Ok(value)` as `{success: true, value}`,
/// `Err((condition, value))` as `{success: false, condition[, value]}`.
pub fn response(
    id: Option<&[u8]>,
    result: Result<Value<'_>, (&str, Option<Value<'_>>)>,
) -> Vec<u8> {
    let mut m: Vec<(Cow<[u8]>, Value)> = Vec::with_capacity(4);
    if let Some(id) = id {
        m.push((Cow::Borrowed(&b"id"[..]), Value::bytes(id)));
    }
    match result {
        Ok(v) => {
            m.push((Cow::Borrowed(&b"success"[..]), Value::Bool(true)));
            m.push((Cow::Borrowed(&b"value"[..]), v));
        }
        Err((condition, v)) => {
            m.push((Cow::Borrowed(&b"success"[..]), Value::Bool(false)));
            m.push((
                Cow::Borrowed(&b"condition"[..]),
                Value::bytes(condition.as_bytes()),
            ));
            if let Some(v) = v {
                m.push((Cow::Borrowed(&b"value"[..]), v));
            }
        }
    }
    Value::Map(m).to_vec()
}

/// The encoding of the stats socket (`stats_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsFormat {
    TnetString,
    Json,
}

/// One stats message: its type (`sub`, `report`, ...) and its fields.
pub fn stats_message(format: StatsFormat, kind: &str, fields: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(kind.len() + 2 + fields.encoded_len());
    out.extend_from_slice(kind.as_bytes());
    match format {
        StatsFormat::TnetString => {
            out.extend_from_slice(b" T");
            fields.encode(&mut out);
        }
        StatsFormat::Json => {
            out.extend_from_slice(b" J");
            let _ = serde_json::to_writer(&mut out, &json_of(fields));
        }
    }
    out
}

/// A value as Pushpin writes it in JSON: bytes as (lossy UTF-8) text.
fn json_of(v: &Value) -> Json {
    match v {
        Value::Bytes(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Bool(b) => Json::Bool(*b),
        Value::Null => Json::Null,
        Value::List(l) => Json::Array(l.iter().map(json_of).collect()),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), json_of(v)))
                .collect(),
        ),
    }
}

/// The fuzz target's invariant: reading a publish message never panics,
/// and an accepted one is exactly one item on a non-empty channel (the
/// topic, when there is one); a refusal has a reason.
pub fn check_publish_invariant(data: &[u8]) {
    let (topic, msg) = match data.iter().position(|&b| b == 0) {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    match publish_item(msg, topic) {
        Ok(item) => {
            assert!(!item.channel.is_empty());
            if let Some(t) = topic {
                assert_eq!(item.channel.as_bytes(), t);
            }
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
    let _ = request(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::publish::{Action, WsKind};

    fn t(v: &Value) -> Vec<u8> {
        v.to_vec()
    }

    fn map<'a>(entries: Vec<(&'a str, Value<'a>)>) -> Value<'a> {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_bytes()), v))
                .collect(),
        )
    }

    #[test]
    fn tnetstring_items_carry_bytes() {
        let item = map(vec![
            ("channel", Value::str("news")),
            ("id", Value::str("7")),
            (
                "formats",
                map(vec![
                    (
                        "http-stream",
                        map(vec![("content", Value::bytes(&b"\xff\x00hi\n"[..]))]),
                    ),
                    (
                        "http-response",
                        map(vec![
                            ("code", Value::Int(201)),
                            (
                                "headers",
                                Value::List(vec![Value::List(vec![
                                    Value::str("X-A"),
                                    Value::str("1"),
                                ])]),
                            ),
                            ("body", Value::str("done\n")),
                        ]),
                    ),
                    (
                        "ws-message",
                        map(vec![("content-bin", Value::bytes(&b"\x01\x02"[..]))]),
                    ),
                ]),
            ),
        ]);
        for wire in [t(&item), [&b"T"[..], &t(&item)].concat()] {
            let it = publish_item(&wire, None).expect("valid");
            assert_eq!(it.channel, "news");
            assert_eq!(it.id.as_deref(), Some("7"));
            let s = it.http_stream.expect("stream");
            assert_eq!(&s.content[..], b"\xff\x00hi\n");
            let r = it.http_response.expect("response");
            assert_eq!(&r.body[..], b"done\n");
            assert_eq!(r.head.status().code(), 201);
            let w = it.ws_message.expect("ws");
            assert_eq!((w.kind, &w.content[..]), (WsKind::Binary, &b"\x01\x02"[..]));
        }
    }

    #[test]
    fn the_topic_is_the_channel() {
        let item = map(vec![(
            "ws-message",
            map(vec![("content", Value::str("hi"))]),
        )]);
        let it = publish_item(&t(&item), Some(b"room")).expect("valid");
        assert_eq!(it.channel, "room");
        let w = it.ws_message.expect("ws");
        assert_eq!((w.kind, w.action), (WsKind::Text, Action::Send));
        let j = br#"J{"http-stream":{"content":"x"}}"#;
        assert_eq!(publish_item(j, Some(b"a")).expect("json").channel, "a");
        let same = br#"J{"channel":"a","http-stream":{"content":"x"}}"#;
        assert!(publish_item(same, Some(b"a")).is_ok());
        let other = br#"J{"channel":"b","http-stream":{"content":"x"}}"#;
        let e = publish_item(other, Some(b"a")).expect_err("differs");
        assert!(
            e.0.contains("item.channel: differs from the topic 'a'"),
            "{e}"
        );
    }

    #[test]
    fn bad_messages_have_a_reason() {
        let body_bin = map(vec![
            ("channel", Value::str("c")),
            ("http-response", map(vec![("body-bin", Value::str("aGk="))])),
        ]);
        let text_bytes = map(vec![
            ("channel", Value::str("c")),
            (
                "ws-message",
                map(vec![("content", Value::bytes(&b"\xff"[..]))]),
            ),
        ]);
        let bad_channel = map(vec![
            ("channel", Value::bytes(&b"\xff"[..])),
            ("http-stream", map(vec![("content", Value::str("x"))])),
        ]);
        let unknown = map(vec![
            ("channel", Value::str("c")),
            ("colour", Value::str("red")),
            ("http-stream", map(vec![("content", Value::str("x"))])),
        ]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "empty message"),
            (b"J".to_vec(), "item: invalid JSON"),
            (b"J[1]".to_vec(), "item: must be a JSON object"),
            (br#"J{"a":1} {"b":2}"#.to_vec(), "invalid JSON"),
            (
                b"5:hello,".to_vec(),
                "item: must be a map, not a byte string",
            ),
            (b"3:abc".to_vec(), "ends inside a value"),
            (
                br#"J{"http-stream":{"content":"x"}}"#.to_vec(),
                "item.channel: missing",
            ),
            (
                t(&body_bin),
                "item.http-response.body-bin: base64 is for JSON",
            ),
            (t(&text_bytes), "text messages must be UTF-8"),
            (t(&bad_channel), "item.channel: is not UTF-8"),
            (t(&unknown), "item.colour: unknown field"),
        ];
        for (wire, needle) in cases {
            let e = publish_item(&wire, None).expect_err(needle);
            assert!(e.0.contains(needle), "{needle}: {e}");
            assert!(!e.0.contains('\n'));
        }
        let e =
            publish_item(br#"J{"http-stream":{"content":"x"}}"#, Some(b"\xff")).expect_err("topic");
        assert!(e.0.contains("topic"), "{e}");
    }

    #[test]
    fn publish_messages_split_at_every_offset_are_refused_not_misread() {
        let item = map(vec![
            ("channel", Value::str("c")),
            ("http-stream", map(vec![("content", Value::str("hello"))])),
        ]);
        let wire = t(&item);
        assert!(publish_item(&wire, None).is_ok());
        for cut in 0..wire.len() {
            assert!(publish_item(&wire[..cut], None).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn commands_as_pushpin_reads_them() {
        let req = map(vec![
            ("id", Value::str("r1")),
            ("from", Value::str("me")),
            ("method", Value::str("conncheck")),
            (
                "args",
                map(vec![("ids", Value::List(vec![Value::str("a")]))]),
            ),
        ]);
        let wire = t(&req);
        let r = request(&wire).expect("valid");
        assert_eq!(r.method, "conncheck");
        assert_eq!(r.id.as_deref(), Some(&b"r1"[..]));
        assert!(r.args.get("ids").is_some());
        let bare = t(&map(vec![("method", Value::str("recover"))]));
        let r = request(&bare).expect("valid");
        assert_eq!((r.id, r.args), (None, Value::Map(vec![])));
        for (v, needle) in [
            (map(vec![("id", Value::str("x"))]), "method: missing"),
            (
                map(vec![("id", Value::str("x")), ("method", Value::Int(1))]),
                "method: must be a byte string",
            ),
            (
                map(vec![("method", Value::str("m")), ("args", Value::Int(1))]),
                "args: must be a map",
            ),
            (
                map(vec![("method", Value::str("m")), ("x", Value::Null)]),
                "unknown field 'x'",
            ),
            (Value::List(vec![]), "must be a map"),
        ] {
            let wire = t(&v);
            let e = request(&wire).expect_err(needle);
            assert!(e.why.contains(needle), "{needle}: {}", e.why);
        }
        let wire = t(&map(vec![("id", Value::str("q"))]));
        let e = request(&wire).expect_err("no method");
        assert_eq!(e.id.as_deref(), Some(&b"q"[..]));
    }

    #[test]
    fn answers_as_pushpin_writes_them() {
        let ok = response(Some(b"r1"), Ok(Value::Null));
        assert_eq!(ok, b"38:2:id,2:r1,7:success,4:true!5:value,0:~}");
        let v = tnetstring::decode(&ok).expect("valid");
        assert_eq!(v.get("success"), Some(&Value::Bool(true)));
        let err = response(None, Err(("method-not-found", None)));
        let v = tnetstring::decode(&err).expect("valid");
        assert_eq!(v.get("success"), Some(&Value::Bool(false)));
        assert_eq!(
            v.get("condition").and_then(Value::as_bytes),
            Some(&b"method-not-found"[..])
        );
        assert_eq!(v.get("value"), None);
    }

    #[test]
    fn stats_messages_in_both_formats() {
        let fields = map(vec![
            ("from", Value::str("corepin_1")),
            ("mode", Value::str("stream")),
            ("channel", Value::str("news")),
            ("ttl", Value::Int(60)),
            ("subscribers", Value::Int(2)),
        ]);
        let t = stats_message(StatsFormat::TnetString, "sub", &fields);
        assert!(t.starts_with(b"sub T"));
        assert_eq!(tnetstring::decode(&t[5..]).as_ref(), Ok(&fields));
        let j = stats_message(StatsFormat::Json, "sub", &fields);
        assert!(j.starts_with(b"sub J{"));
        let v: Json = serde_json::from_slice(&j[5..]).expect("json");
        assert_eq!(v["channel"], "news");
        assert_eq!(v["subscribers"], 2);
    }

    #[test]
    fn invariant_holds_on_samples() {
        for s in [
            &b""[..],
            b"J{}",
            b"room\0J{\"http-stream\":{\"content\":\"x\"}}",
            b"0:}",
            b"\0\0",
        ] {
            check_publish_invariant(s);
        }
    }
}
