//! Publish items (GRIP.md §2): JSON `{"items":[...]}` parsed into typed
//! items, with the formats either under `"formats"` or directly on the
//! item. Errors name the offending field, e.g. `items[0].channel`.

use bytes::Bytes;
use serde_json::{Map, Value};

// Validation of what reaches clients lives in codec::response (response
// heads) and codec::ws (close frames); the parsing here calls it at the
// points marked `VALIDATE:`.
use super::response::{self, At, Head};
use super::ws;

/// What a format asks subscribers to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Send,
    Close,
    /// Re-fetch from the backend (next link, or the original request).
    Hint,
    Refresh,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub action: Action,
    /// Status and headers, validated by `codec::response`.
    pub head: Head,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpStream {
    pub action: Action,
    pub content: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsKind {
    Text,
    Binary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsMessage {
    pub action: Action,
    pub kind: WsKind,
    pub content: Bytes,
    /// Close code and reason for `action: close`.
    pub code: Option<u16>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Item {
    pub channel: String,
    pub id: Option<String>,
    pub prev_id: Option<String>,
    pub no_seq: bool,
    /// Item metadata, compared with subscription metadata by filters.
    pub meta: Vec<(String, String)>,
    /// Delivery filters, e.g. `skip-self`.
    pub filters: Vec<String>,
    pub http_response: Option<HttpResponse>,
    pub http_stream: Option<HttpStream>,
    pub ws_message: Option<WsMessage>,
}

/// A publish body that cannot be accepted; the text is the 400 reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError(pub String);

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad<T>(path: &str, msg: &str) -> Result<T, PublishError> {
    Err(PublishError(format!("{path}: {msg}")))
}

fn opt_str(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, PublishError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // Pushpin accepts numeric ids; they are compared as text.
        Some(Value::Number(n)) if key.ends_with("id") => Ok(Some(n.to_string())),
        Some(_) => bad(&format!("{path}.{key}"), "must be a string"),
    }
}

fn base64_field(v: &Value, path: &str) -> Result<Bytes, PublishError> {
    use base64::Engine;
    let Value::String(s) = v else {
        return bad(path, "must be a base64 string");
    };
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map(Bytes::from)
        .or_else(|_| bad(path, "is not valid base64"))
}

/// A text field or its `-bin` (base64) twin; absent means empty.
fn payload(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Bytes, PublishError> {
    let bin = format!("{key}-bin");
    match (obj.get(key), obj.get(&bin)) {
        (Some(_), Some(_)) => bad(path, &format!("give either {key} or {bin}, not both")),
        (Some(Value::String(s)), None) => Ok(Bytes::from(s.clone().into_bytes())),
        (Some(_), None) => bad(&format!("{path}.{key}"), "must be a string"),
        (None, Some(v)) => base64_field(v, &format!("{path}.{bin}")),
        (None, None) => Ok(Bytes::new()),
    }
}

fn action(obj: &Map<String, Value>, path: &str) -> Result<Action, PublishError> {
    match obj.get("action") {
        None | Some(Value::Null) => Ok(Action::Send),
        Some(Value::String(s)) => match s.as_str() {
            "send" => Ok(Action::Send),
            "close" => Ok(Action::Close),
            "hint" => Ok(Action::Hint),
            "refresh" => Ok(Action::Refresh),
            other => bad(
                &format!("{path}.action"),
                &format!("unknown action '{other}'"),
            ),
        },
        Some(_) => bad(&format!("{path}.action"), "must be a string"),
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, PublishError> {
    v.as_object()
        .ok_or_else(|| PublishError(format!("{path}: must be an object")))
}

/// Headers as an object or a list of `[name, value]` pairs (shape only:
/// names and values are checked by `codec::response`).
fn headers<'a>(
    v: Option<&'a Value>,
    path: &str,
) -> Result<Vec<(At, &'a str, &'a str)>, PublishError> {
    let mut out = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Value::String(s) = v else {
                    return bad(&format!("{path}.{}", k.escape_debug()), "must be a string");
                };
                out.push((At::Key, k.as_str(), s.as_str()));
            }
        }
        Some(Value::Array(list)) => {
            for (i, pair) in list.iter().enumerate() {
                match pair.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), Value::String(s)]) => {
                        out.push((At::Index(i), k.as_str(), s.as_str()))
                    }
                    _ => {
                        return bad(
                            &format!("{path}[{i}]"),
                            "must be a [name, value] pair of strings",
                        )
                    }
                }
            }
        }
        Some(_) => return bad(path, "must be an object or a list of [name, value] pairs"),
    }
    Ok(out)
}

fn http_response(v: &Value, path: &str) -> Result<HttpResponse, PublishError> {
    let o = object(v, path)?;
    let code = match o.get("code") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(c) => Some(c),
            None => {
                return bad(
                    &format!("{path}.code"),
                    &format!(
                        "{n} is not a final status code ({}-{})",
                        response::MIN_STATUS,
                        response::MAX_STATUS
                    ),
                )
            }
        },
        Some(_) => return bad(&format!("{path}.code"), "must be a number"),
    };
    let reason = opt_str(o, "reason", path)?;
    let fields = headers(o.get("headers"), &format!("{path}.headers"))?;
    let body = payload(o, "body", path)?;
    // VALIDATE: status range, reason, header names and values, managed
    // fields, bodiless statuses (codec::response).
    let fields = fields
        .into_iter()
        .map(|(at, n, v)| (at, n.as_bytes(), v.as_bytes()));
    let head = Head::from_parts(code, reason.as_deref(), fields, &body)
        .map_err(|e| PublishError(e.at(path)))?;
    Ok(HttpResponse {
        action: action(o, path)?,
        head,
        body,
    })
}

fn http_stream(v: &Value, path: &str) -> Result<HttpStream, PublishError> {
    let o = object(v, path)?;
    Ok(HttpStream {
        action: action(o, path)?,
        content: payload(o, "content", path)?,
    })
}

fn ws_message(v: &Value, path: &str) -> Result<WsMessage, PublishError> {
    let o = object(v, path)?;
    let kind = match (
        o.get("type").and_then(Value::as_str),
        o.contains_key("content-bin"),
    ) {
        (Some("binary"), _) | (None, true) => WsKind::Binary,
        (Some("text"), _) | (None, false) => WsKind::Text,
        (Some(other), _) => {
            return bad(&format!("{path}.type"), &format!("unknown type '{other}'"))
        }
    };
    let content = payload(o, "content", path)?;
    if kind == WsKind::Text && std::str::from_utf8(&content).is_err() {
        return bad(&format!("{path}.content"), "text messages must be UTF-8");
    }
    let action = action(o, path)?;
    let code = match o.get("code") {
        None | Some(Value::Null) => None,
        // VALIDATE: close codes a frame may carry (codec::ws).
        Some(Value::Number(n)) => match n.as_u64().map(ws::check_close_code) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return bad(&format!("{path}.code"), &e),
            None => return bad(&format!("{path}.code"), &format!("{n} is not a close code")),
        },
        Some(_) => return bad(&format!("{path}.code"), "must be a number"),
    };
    let reason = opt_str(o, "reason", path)?;
    if let Some(r) = &reason {
        // VALIDATE: the close frame's reason fits its payload (codec::ws).
        ws::check_close_reason(r).or_else(|e| bad(&format!("{path}.reason"), &e))?;
    }
    if action != Action::Close {
        if code.is_some() {
            return bad(&format!("{path}.code"), "is only for action close");
        }
        if reason.is_some() {
            return bad(&format!("{path}.reason"), "is only for action close");
        }
    }
    Ok(WsMessage {
        action,
        kind,
        content,
        code,
        reason: reason.unwrap_or_default(),
    })
}

fn item(v: &Value, path: &str) -> Result<Item, PublishError> {
    let o = object(v, path)?;
    let channel = match o.get("channel") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return bad(&format!("{path}.channel"), "must not be empty"),
        Some(_) => return bad(&format!("{path}.channel"), "must be a string"),
        None => return bad(&format!("{path}.channel"), "missing"),
    };
    let formats = match o.get("formats") {
        Some(f) => object(f, &format!("{path}.formats"))?,
        None => o,
    };
    let fpath = if o.contains_key("formats") {
        format!("{path}.formats")
    } else {
        path.to_string()
    };
    let sub = |key: &str| formats.get(key).map(|v| (v, format!("{fpath}.{key}")));
    let mut it = Item {
        channel,
        id: opt_str(o, "id", path)?,
        prev_id: opt_str(o, "prev-id", path)?,
        no_seq: o.get("no-seq").and_then(Value::as_bool).unwrap_or(false),
        ..Item::default()
    };
    // VALIDATE: the channel and ids go back to backends inside `Grip-Last`
    // header lines, so they must be header-value text (codec::response).
    for (key, v) in [
        ("channel", Some(&it.channel)),
        ("id", it.id.as_ref()),
        ("prev-id", it.prev_id.as_ref()),
    ] {
        if let Some(v) = v {
            response::check_value(v.as_bytes())
                .map_err(|p| PublishError(format!("{path}.{key}: {p}")))?;
        }
    }
    if let Some(Value::Object(m)) = o.get("meta") {
        it.meta = m
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
            .collect();
    }
    if let Some(Value::Array(f)) = o.get("filters") {
        it.filters = f
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
    }
    if let Some((v, p)) = sub("http-response") {
        it.http_response = Some(http_response(v, &p)?);
    }
    if let Some((v, p)) = sub("http-stream") {
        it.http_stream = Some(http_stream(v, &p)?);
    }
    if let Some((v, p)) = sub("ws-message") {
        it.ws_message = Some(ws_message(v, &p)?);
    }
    if it.http_response.is_none() && it.http_stream.is_none() && it.ws_message.is_none() {
        return bad(path, "no format (http-response, http-stream or ws-message)");
    }
    Ok(it)
}

/// Parses a publish body.
pub fn parse(body: &[u8]) -> Result<Vec<Item>, PublishError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| PublishError(format!("invalid JSON: {e}")))?;
    let root = object(&v, "body")?;
    let Some(items) = root.get("items") else {
        return bad("items", "missing");
    };
    let Value::Array(items) = items else {
        return bad("items", "must be a list");
    };
    if items.is_empty() {
        return bad("items", "must not be empty");
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| item(v, &format!("items[{i}]")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(json: &str) -> Item {
        let mut v = parse(json.as_bytes()).expect("valid");
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn both_item_shapes() {
        let a = one(
            r#"{"items":[{"channel":"c","id":"2","prev-id":"1","formats":{"http-stream":{"content":"hi\n"}}}]}"#,
        );
        let b = one(
            r#"{"items":[{"channel":"c","id":"2","prev-id":"1","http-stream":{"content":"hi\n"}}]}"#,
        );
        assert_eq!(a, b);
        assert_eq!(
            a.http_stream.as_ref().map(|s| &s.content[..]),
            Some(&b"hi\n"[..])
        );
        assert_eq!(
            (a.id.as_deref(), a.prev_id.as_deref()),
            (Some("2"), Some("1"))
        );
    }

    #[test]
    fn formats_and_options() {
        let it = one(r#"{"items":[{"channel":"c","no-seq":true,"formats":{
            "http-response":{"code":404,"reason":"Nope","headers":[["X-A","1"],["X-B","2"]],"body-bin":"aGk="},
            "ws-message":{"content-bin":"AAE=","action":"send"}}}]}"#);
        assert!(it.no_seq);
        let r = it.http_response.expect("response");
        assert_eq!(
            (
                r.head.status().code(),
                r.head.status().reason(),
                &r.body[..]
            ),
            (404, "Nope", &b"hi"[..])
        );
        assert_eq!(
            (r.head.get("x-a"), r.head.get("x-b")),
            (Some(&b"1"[..]), Some(&b"2"[..]))
        );
        let w = it.ws_message.expect("ws");
        assert_eq!((w.kind, &w.content[..]), (WsKind::Binary, &[0u8, 1][..]));
        let it = one(r#"{"items":[{"channel":"c","http-response":{"headers":{"X-A":"1"}}}]}"#);
        let r = it.http_response.expect("response");
        assert_eq!((r.head.status().code(), r.body.len()), (200, 0));
        let it = one(r#"{"items":[{"channel":"c","http-stream":{"action":"close"}}]}"#);
        assert_eq!(it.http_stream.map(|s| s.action), Some(Action::Close));
        let it = one(
            r#"{"items":[{"channel":"c","ws-message":{"action":"close","code":4001,"reason":"bye"}}]}"#,
        );
        let w = it.ws_message.expect("ws");
        assert_eq!(
            (w.action, w.code, w.reason.as_str()),
            (Action::Close, Some(4001), "bye")
        );
    }

    #[test]
    fn responses_and_closes_that_would_break_the_wire() {
        for (item, needle) in [
            (
                r#"{"http-response":{"reason":"OK\r\nSet-Cookie: a=b"}}"#,
                "items[0].http-response.reason: contains CR or LF",
            ),
            (
                r#"{"formats":{"http-response":{"reason":"OK\nX: y"}}}"#,
                "items[0].formats.http-response.reason: contains CR or LF",
            ),
            (
                r#"{"http-response":{"code":0}}"#,
                "items[0].http-response.code: 0 is not a final status code (200-599)",
            ),
            (
                r#"{"http-response":{"code":65535}}"#,
                "http-response.code: 65535 is not",
            ),
            (r#"{"http-response":{"code":100}}"#, "code: 100 is not"),
            (r#"{"http-response":{"code":-5}}"#, "code: -5 is not"),
            (r#"{"http-response":{"code":2.5}}"#, "code: 2.5 is not"),
            (
                r#"{"http-response":{"headers":[["X-A","1"],["Set-Cookie\r\nX","2"]]}}"#,
                "items[0].http-response.headers[1][0]: is not a header name",
            ),
            (
                r#"{"http-response":{"headers":[["X-A","1\u0000"]]}}"#,
                "items[0].http-response.headers[0][1]: contains NUL",
            ),
            (
                r#"{"http-response":{"code":304,"body":"x"}}"#,
                "items[0].http-response.body: must be empty: a 304 response has no body",
            ),
            (
                r#"{"ws-message":{"action":"close","code":1005}}"#,
                "items[0].ws-message.code: 1005 must never be sent",
            ),
            (
                r#"{"ws-message":{"action":"close","code":1006}}"#,
                "ws-message.code: 1006 must never be sent",
            ),
            (
                r#"{"ws-message":{"action":"close","code":1015}}"#,
                "ws-message.code: 1015 must never be sent",
            ),
            (
                r#"{"ws-message":{"action":"close","code":1004}}"#,
                "1004 is reserved",
            ),
            (
                r#"{"ws-message":{"action":"close","code":999}}"#,
                "999 is not a close code",
            ),
            (
                r#"{"ws-message":{"action":"close","code":2000}}"#,
                "2000 is reserved",
            ),
            (
                r#"{"ws-message":{"action":"close","code":5000}}"#,
                "5000 is not a close code",
            ),
            (
                r#"{"ws-message":{"action":"close","code":-1}}"#,
                "-1 is not a close code",
            ),
            (
                r#"{"ws-message":{"action":"close","code":4000,"reason":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#,
                "items[0].ws-message.reason: is 124 bytes; a close reason is at most 123",
            ),
            (
                r#"{"ws-message":{"content":"x","code":4000}}"#,
                "items[0].ws-message.code: is only for action close",
            ),
            (
                r#"{"ws-message":{"content":"x","reason":"r"}}"#,
                "items[0].ws-message.reason: is only for action close",
            ),
        ] {
            let json = format!(
                r#"{{"items":[{{"channel":"c",{}}}]}}"#,
                &item[1..item.len() - 1]
            );
            let e = parse(json.as_bytes()).expect_err(&json).0;
            assert!(e.contains(needle), "{json}: {e}");
            assert!(!e.contains(['\r', '\n']), "one clean line: {e:?}");
        }
        for (json, needle) in [
            (
                r#"{"items":[{"channel":"a\nb","http-stream":{"content":"x"}}]}"#,
                "items[0].channel: contains CR or LF",
            ),
            (
                r#"{"items":[{"channel":"c","id":"1\r\nX: y","http-stream":{"content":"x"}}]}"#,
                "items[0].id: contains CR or LF",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{}},{"channel":"c","prev-id":"\u0000","http-stream":{}}]}"#,
                "items[1].prev-id: contains NUL",
            ),
        ] {
            let e = parse(json.as_bytes()).expect_err(json).0;
            assert!(e.contains(needle), "{json}: {e}");
        }
        // Within the rules: a 3000-4999 close with a 123-byte reason, a 204
        // without a body, framing fields left to corepin.
        let it = one(&format!(
            r#"{{"items":[{{"channel":"c","ws-message":{{"action":"close","code":4999,"reason":"{}"}}}}]}}"#,
            "r".repeat(123)
        ));
        assert_eq!(it.ws_message.and_then(|w| w.code), Some(4999));
        let it = one(
            r#"{"items":[{"channel":"c","http-response":{"code":204,"headers":{"Content-Length":"5","X":"y"}}}]}"#,
        );
        let r = it.http_response.expect("response");
        assert_eq!(
            (
                r.head.status().code(),
                r.head.get("content-length"),
                r.head.get("x")
            ),
            (204, None, Some(&b"y"[..]))
        );
    }

    #[test]
    fn bad_input_has_a_reason() {
        for (json, needle) in [
            ("{", "invalid JSON"),
            ("[]", "body: must be an object"),
            ("{}", "items: missing"),
            (r#"{"items":{}}"#, "items: must be a list"),
            (r#"{"items":[]}"#, "must not be empty"),
            (
                r#"{"items":[{"http-stream":{"content":"x"}}]}"#,
                "items[0].channel: missing",
            ),
            (
                r#"{"items":[{"channel":5,"http-stream":{}}]}"#,
                "items[0].channel: must be a string",
            ),
            (r#"{"items":[{"channel":"c"}]}"#, "no format"),
            (
                r#"{"items":[{"channel":"c","http-stream":{"content":5}}]}"#,
                "items[0].http-stream.content: must be a string",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{"content-bin":"!!"}}]}"#,
                "not valid base64",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{"action":"boom"}}]}"#,
                "unknown action",
            ),
            (
                r#"{"items":[{"channel":"c","http-response":{"code":"200"}}]}"#,
                "code: must be a number",
            ),
            (
                r#"{"items":[{"channel":"c","http-response":{"headers":[["A"]]}}]}"#,
                "headers[0]",
            ),
            (
                r#"{"items":[{"channel":"c","http-response":{"headers":{"A":"x\r\nB: y"}}}]}"#,
                "items[0].http-response.headers.A: contains CR or LF",
            ),
            (
                r#"{"items":[{"channel":"c","formats":[]}]}"#,
                "items[0].formats: must be an object",
            ),
            (
                r#"{"items":[{"channel":"c","ws-message":{"content-bin":"/w==","type":"text"}}]}"#,
                "UTF-8",
            ),
        ] {
            let e = parse(json.as_bytes()).expect_err(json).0;
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
