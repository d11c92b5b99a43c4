//! Publish items (GRIP.md §2): JSON `{"items":[...]}` parsed into typed
//! items, with the formats either under `"formats"` or directly on the
//! item. Errors name the offending field, e.g. `items[0].channel`.

use bytes::Bytes;
use serde_json::{Map, Value};

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
    pub code: u16,
    pub reason: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
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

/// Headers as an object or a list of `[name, value]` pairs.
fn headers(v: Option<&Value>, path: &str) -> Result<Vec<(String, Vec<u8>)>, PublishError> {
    let valid = |name: &str, value: &str| {
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            && !value.bytes().any(|b| b == b'\r' || b == b'\n')
    };
    let mut out = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Value::String(s) = v else {
                    return bad(&format!("{path}.{k}"), "must be a string");
                };
                if !valid(k, s) {
                    return bad(&format!("{path}.{k}"), "is not a valid header");
                }
                out.push((k.clone(), s.clone().into_bytes()));
            }
        }
        Some(Value::Array(list)) => {
            for (i, pair) in list.iter().enumerate() {
                match pair.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), Value::String(s)]) if valid(k, s) => {
                        out.push((k.clone(), s.clone().into_bytes()))
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
        None | Some(Value::Null) => 200,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(c @ 100..=999) => c as u16,
            _ => return bad(&format!("{path}.code"), "must be a status code (100-999)"),
        },
        Some(_) => return bad(&format!("{path}.code"), "must be a number"),
    };
    Ok(HttpResponse {
        action: action(o, path)?,
        code,
        reason: opt_str(o, "reason", path)?,
        headers: headers(o.get("headers"), &format!("{path}.headers"))?,
        body: payload(o, "body", path)?,
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
    let code = match o.get("code") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(c @ 1000..=4999) => Some(c as u16),
            _ => return bad(&format!("{path}.code"), "must be a close code (1000-4999)"),
        },
        Some(_) => return bad(&format!("{path}.code"), "must be a number"),
    };
    Ok(WsMessage {
        action: action(o, path)?,
        kind,
        content,
        code,
        reason: opt_str(o, "reason", path)?.unwrap_or_default(),
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
            (r.code, r.reason.as_deref(), &r.body[..]),
            (404, Some("Nope"), &b"hi"[..])
        );
        assert_eq!(
            r.headers,
            vec![("X-A".into(), b"1".to_vec()), ("X-B".into(), b"2".to_vec())]
        );
        let w = it.ws_message.expect("ws");
        assert_eq!((w.kind, &w.content[..]), (WsKind::Binary, &[0u8, 1][..]));
        let it = one(r#"{"items":[{"channel":"c","http-response":{"headers":{"X-A":"1"}}}]}"#);
        let r = it.http_response.expect("response");
        assert_eq!((r.code, r.body.len()), (200, 0));
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
                "not a valid header",
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
