//! Publish items (GRIP.md §2): JSON `{"items":[...]}` parsed into typed
//! items, with the formats either under `"formats"` or directly on the
//! item. Errors name the offending field, e.g. `items[0].channel`.
//!
//! Parsing builds no JSON tree. A small scanner walks the root object and
//! finds each element of `items`; serde then parses that element straight
//! into the item types (strings borrowed from the body where they have no
//! escapes). The scanner hands out one item at a time ([`Parser`]), so a
//! caller on an executor can parse a huge publish in slices and let other
//! work run between them. Only when something is wrong is the input parsed
//! again, with path tracking, to name the field.
//!
//! Together the scanner and serde accept exactly the JSON documents serde
//! accepts: the scanner checks the root object's punctuation and the list's
//! commas, and every value it skips over is handed to serde whole (an item
//! is parsed as an item, any other root member's value is validated), so a
//! malformed value cannot pass unnoticed.

use std::borrow::Cow;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

// Validation of what reaches clients lives in codec::response (response
// heads) and codec::ws (close frames); the parsing here calls it at the
// points marked `VALIDATE:`.
use super::bodypatch::BodyPatch;
use super::filter::Name as FilterName;
use super::json::{self, Check, Checked, Headers, Meta, Obj, StatusCode, Str, B64};
use super::response::{self, Head};
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
    /// `body-patch`: the body is each long-poll's held body, patched
    /// (`body` is then empty).
    pub patch: Option<BodyPatch>,
    /// `content-filters`: the content filters the body was written for.
    pub content_filters: Option<Vec<FilterName>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpStream {
    pub action: Action,
    pub content: Bytes,
    /// `content-filters`: the content filters the content was written for.
    pub content_filters: Option<Vec<FilterName>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsKind {
    Text,
    Binary,
    /// A ping frame (its payload at most 125 bytes).
    Ping,
    /// An unsolicited pong frame (its payload at most 125 bytes).
    Pong,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsMessage {
    pub action: Action,
    pub kind: WsKind,
    pub content: Bytes,
    /// Close code and reason for `action: close`.
    pub code: Option<u16>,
    pub reason: String,
    /// `content-filters`: the content filters the content was written for.
    pub content_filters: Option<Vec<FilterName>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Item {
    pub channel: String,
    pub id: Option<String>,
    pub prev_id: Option<String>,
    pub no_seq: bool,
    /// Item metadata (`sender`, `skip_users`, `require_sub`), read by the
    /// subscribers' filters.
    pub meta: Vec<(String, String)>,
    pub http_response: Option<HttpResponse>,
    pub http_stream: Option<HttpStream>,
    pub ws_message: Option<WsMessage>,
}

impl Item {
    /// True when this item's delivery depends on the subscriber beyond its
    /// kind: a `content-filters` list, or a `body-patch` of each held body.
    pub fn per_subscriber(&self) -> bool {
        self.http_response
            .as_ref()
            .is_some_and(|r| r.patch.is_some() || r.content_filters.is_some())
            || self
                .http_stream
                .as_ref()
                .is_some_and(|s| s.content_filters.is_some())
            || self
                .ws_message
                .as_ref()
                .is_some_and(|w| w.content_filters.is_some())
    }

    /// The payload bytes this item carries (content of every format), used
    /// to account for the memory a publish holds.
    pub fn payload_len(&self) -> usize {
        let r = self
            .http_response
            .as_ref()
            // The head's fields are bounded; 256 bytes stands for them.
            .map_or(0, |r| {
                r.body.len() + 256 + r.patch.as_ref().map_or(0, BodyPatch::cost)
            });
        let s = self.http_stream.as_ref().map_or(0, |s| s.content.len());
        let w = self
            .ws_message
            .as_ref()
            .map_or(0, |w| w.content.len() + w.reason.len());
        let meta: usize = self.meta.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.channel.len()
            + self.id.as_ref().map_or(0, String::len)
            + self.prev_id.as_ref().map_or(0, String::len)
            + meta
            + r
            + s
            + w
    }
}

/// A publish body that cannot be accepted; the text is the 400 reason.
pub use super::Invalid as PublishError;

fn bad<T>(path: &str, msg: &str) -> Result<T, PublishError> {
    Err(PublishError(format!("{path}: {msg}")))
}

// ---------------------------------------------------------------------------
// The scanner: byte offsets of JSON values, without validating them.

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end (one past the closing quote) of the string starting at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    None
}

/// The end of the value starting at `i` (which is not whitespace). Only
/// strings and bracket depth are tracked; serde checks the value itself.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// Where the scanner is in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first member of the root object.
    Open,
    /// After a member of the root object: `,` or `}` next.
    Member,
    /// Inside `items`, before its first element.
    ItemsOpen,
    /// Inside `items`, after an element: `,` or `]` next.
    Items,
    Done,
}

/// Why a publish body could not be scanned or parsed.
enum Failure {
    /// The JSON itself is malformed: the whole body is re-read by serde for
    /// an exact message.
    Syntax(&'static str, usize),
    /// Well-formed JSON that is not a valid publish.
    Invalid(PublishError),
}

impl From<PublishError> for Failure {
    fn from(e: PublishError) -> Self {
        Failure::Invalid(e)
    }
}

/// A publish body, item by item. `next_item` returns items in order; once
/// it has returned `Ok(None)`, the whole body was valid.
pub struct Parser<'a> {
    body: &'a [u8],
    /// Root members allowed besides `items` (the control socket's `method`).
    extra: &'static [&'static str],
    pos: usize,
    state: State,
    /// Items returned so far.
    index: usize,
    seen_items: bool,
}

impl<'a> Parser<'a> {
    /// A parser over `body`, whose root object may hold `items` and the
    /// members named in `extra`.
    pub fn new(body: &'a [u8], extra: &'static [&'static str]) -> Result<Parser<'a>, PublishError> {
        let start = skip_ws(body, 0);
        if body.get(start) != Some(&b'{') {
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Err(e) => PublishError(format!("invalid JSON: {e}")),
                Ok(_) => PublishError("body: must be an object".into()),
            });
        }
        Ok(Parser {
            body,
            extra,
            pos: start + 1,
            state: State::Open,
            index: 0,
            seen_items: false,
        })
    }

    /// Items parsed so far.
    pub fn count(&self) -> usize {
        self.index
    }

    /// Bytes of the body scanned so far (for pacing a caller's slices).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The next item, or `Ok(None)` at the end of a valid body.
    pub fn next_item(&mut self) -> Result<Option<Item>, PublishError> {
        match self.step() {
            Ok(v) => Ok(v),
            Err(Failure::Invalid(e)) => {
                self.state = State::Done;
                Err(e)
            }
            Err(Failure::Syntax(what, at)) => {
                self.state = State::Done;
                Err(match serde_json::from_slice::<IgnoredAny>(self.body) {
                    Err(e) => PublishError(format!("invalid JSON: {e}")),
                    // Not reached for input serde accepts; kept as a plain
                    // answer rather than a panic.
                    Ok(_) => PublishError(format!("invalid JSON: {what} at byte {at}")),
                })
            }
        }
    }

    fn step(&mut self) -> Result<Option<Item>, Failure> {
        let b = self.body;
        loop {
            self.pos = skip_ws(b, self.pos);
            match self.state {
                State::Done => return Ok(None),
                State::Open | State::Member => {
                    match (self.state, b.get(self.pos)) {
                        (_, Some(b'}')) => {
                            self.pos = skip_ws(b, self.pos + 1);
                            if self.pos != b.len() {
                                return Err(Failure::Syntax("trailing characters", self.pos));
                            }
                            self.state = State::Done;
                            if !self.seen_items {
                                return Err(PublishError("items: missing".into()).into());
                            }
                            return Ok(None);
                        }
                        (State::Member, Some(b',')) => {
                            self.pos = skip_ws(b, self.pos + 1);
                        }
                        (State::Member, _) => {
                            return Err(Failure::Syntax("expected `,` or `}`", self.pos))
                        }
                        _ => {}
                    }
                    self.member()?;
                }
                State::ItemsOpen | State::Items => {
                    match (self.state, b.get(self.pos)) {
                        (State::ItemsOpen, Some(b']')) => {
                            self.state = State::Done;
                            return Err(PublishError("items: must not be empty".into()).into());
                        }
                        (State::Items, Some(b']')) => {
                            self.pos += 1;
                            self.state = State::Member;
                            continue;
                        }
                        (State::Items, Some(b',')) => {
                            self.pos = skip_ws(b, self.pos + 1);
                        }
                        (State::Items, _) => {
                            return Err(Failure::Syntax("expected `,` or `]`", self.pos))
                        }
                        _ => {}
                    }
                    let start = self.pos;
                    let end =
                        value_end(b, start).ok_or(Failure::Syntax("expected a value", start))?;
                    let item = parse_item(&b[start..end], self.index)?;
                    self.pos = end;
                    self.index += 1;
                    self.state = State::Items;
                    return Ok(Some(item));
                }
            }
        }
    }

    /// Reads one root member's key and `:`; enters `items`, or checks and
    /// skips any other allowed member.
    fn member(&mut self) -> Result<(), Failure> {
        let b = self.body;
        let start = self.pos;
        if b.get(start) != Some(&b'"') {
            return Err(Failure::Syntax("expected a key", start));
        }
        let end = string_end(b, start).ok_or(Failure::Syntax("unterminated key", start))?;
        let key: Cow<str> = serde_json::from_slice::<Str>(&b[start..end])
            .map_err(|_| Failure::Syntax("invalid key", start))?
            .0;
        self.pos = skip_ws(b, end);
        if b.get(self.pos) != Some(&b':') {
            return Err(Failure::Syntax("expected `:`", self.pos));
        }
        self.pos = skip_ws(b, self.pos + 1);
        let vstart = self.pos;
        if key == "items" {
            if self.seen_items {
                return Err(PublishError("items: given twice".into()).into());
            }
            self.seen_items = true;
            if b.get(vstart) == Some(&b'[') {
                self.pos = vstart + 1;
                self.state = State::ItemsOpen;
                return Ok(());
            }
            let vend = value_end(b, vstart).ok_or(Failure::Syntax("expected a value", vstart))?;
            return match serde_json::from_slice::<IgnoredAny>(&b[vstart..vend]) {
                Ok(_) => Err(PublishError("items: must be a list".into()).into()),
                Err(_) => Err(Failure::Syntax("invalid value", vstart)),
            };
        }
        let vend = value_end(b, vstart).ok_or(Failure::Syntax("expected a value", vstart))?;
        if serde_json::from_slice::<IgnoredAny>(&b[vstart..vend]).is_err() {
            return Err(Failure::Syntax("invalid value", vstart));
        }
        if !self.extra.contains(&key.as_ref()) {
            let mut known = String::from("items");
            for k in self.extra {
                known.push_str(", ");
                known.push_str(k);
            }
            return Err(PublishError(format!("{key}: unknown field (expected {known})")).into());
        }
        self.pos = vend;
        self.state = State::Member;
        Ok(())
    }
}

/// The raw text of the value of `key` in a JSON object's root, found by
/// the scanner without parsing or validating anything (so a caller can
/// route on, say, a `method` before parsing the rest).
pub fn root_member<'a>(body: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(body, i + 1);
    loop {
        if body.get(i) != Some(&b'"') {
            return None;
        }
        let kend = string_end(body, i)?;
        let k = &body[i + 1..kend - 1];
        i = skip_ws(body, kend);
        if body.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(body, i + 1);
        let vend = value_end(body, i)?;
        if k == key.as_bytes() {
            return Some(&body[i..vend]);
        }
        i = skip_ws(body, vend);
        match body.get(i) {
            Some(b',') => i = skip_ws(body, i + 1),
            _ => return None,
        }
    }
}

/// Parses a whole publish body whose root holds only `items`.
pub fn parse(body: &[u8]) -> Result<Vec<Item>, PublishError> {
    parse_with(body, &[])
}

/// Parses a whole publish body whose root may also hold `extra` members.
pub fn parse_with(body: &[u8], extra: &'static [&'static str]) -> Result<Vec<Item>, PublishError> {
    let mut p = Parser::new(body, extra)?;
    let mut items = Vec::new();
    while let Some(item) = p.next_item()? {
        items.push(item);
    }
    Ok(items)
}

/// Fuzz invariant: parsing never panics; a body it accepts is JSON that
/// serde accepts, with a non-empty `items` list of exactly the items
/// returned, each with a channel and a format; item by item and whole
/// agree; every refusal has a reason.
#[doc(hidden)]
pub fn check_parse_invariant(body: &[u8]) {
    let whole = parse(body);
    let mut one_by_one = Vec::new();
    let stepped = Parser::new(body, &[]).and_then(|mut p| {
        while let Some(item) = p.next_item()? {
            one_by_one.push(item);
        }
        Ok(())
    });
    match (&whole, stepped) {
        (Ok(items), Ok(())) => {
            assert_eq!(items, &one_by_one);
            let v: serde_json::Value =
                serde_json::from_slice(body).expect("accepted a body serde rejects");
            let list = v
                .get("items")
                .and_then(serde_json::Value::as_array)
                .expect("accepted a body without an items list");
            assert_eq!(list.len(), items.len());
            assert!(!items.is_empty());
            for it in items {
                assert!(!it.channel.is_empty());
                assert!(
                    it.http_response.is_some()
                        || it.http_stream.is_some()
                        || it.ws_message.is_some()
                );
            }
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, &b);
            assert!(!a.0.is_empty());
        }
        (a, b) => panic!("whole and stepped disagree: {a:?} / {b:?}"),
    }
}

// ---------------------------------------------------------------------------
// One item: serde into borrowed raw types, then checks across fields.

fn parse_item(span: &[u8], index: usize) -> Result<Item, Failure> {
    match super::json::from_slice::<Obj<RawItem>>(span) {
        Ok(raw) => Ok(raw.0.into_item(index)?),
        Err(super::json::Refusal::Syntax(_)) => Err(Failure::Syntax("invalid item", 0)),
        Err(e) => Err(Failure::Invalid(PublishError(e.explain(
            "",
            &format!("items[{index}]"),
            "",
        )))),
    }
}

/// An id: a string, or a number compared as its text (Pushpin accepts
/// numeric ids).
struct Id(String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
                Ok(Id(serde_json::Number::from_f64(v)
                    .map_or_else(|| v.to_string(), |n| n.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        json::str_with(d, "a string", |v| match v {
            "send" => Ok(Action::Send),
            "close" => Ok(Action::Close),
            "hint" => Ok(Action::Hint),
            "refresh" => Ok(Action::Refresh),
            other => Err(format!(
                "unknown action '{}' (send, close, hint, refresh)",
                other.escape_debug()
            )),
        })
    }
}

impl<'de> Deserialize<'de> for WsKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        json::str_with(d, "a string", |v| match v {
            "text" => Ok(WsKind::Text),
            "binary" => Ok(WsKind::Binary),
            "ping" => Ok(WsKind::Ping),
            "pong" => Ok(WsKind::Pong),
            other => Err(format!(
                "unknown type '{}' (text, binary, ping, pong)",
                other.escape_debug()
            )),
        })
    }
}

/// A `content-filters` entry: a filter that may rewrite content.
struct ContentFilter(FilterName);

impl<'de> Deserialize<'de> for ContentFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        json::str_with(d, "a string", |v| match FilterName::parse(v) {
            Ok(n) if n.rewrites() => Ok(ContentFilter(n)),
            Ok(n) => Err(format!(
                "'{}' does not change content (build-id, var-subst do)",
                n.as_str()
            )),
            Err(e) => Err(e),
        })
    }
}

/// `ws-message.code`: a code a close frame may carry.
enum CloseCode {}

impl Check for CloseCode {
    type Out = u16;
    fn check(n: Result<u64, String>) -> Result<u16, String> {
        // VALIDATE: close codes a frame may carry (codec::ws).
        match n {
            Ok(c) => ws::check_close_code(c),
            Err(text) => Err(format!("{text} is not a close code")),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawItem<'a> {
    #[serde(borrow)]
    channel: Str<'a>,
    #[serde(default)]
    id: Option<Id>,
    #[serde(default, rename = "prev-id")]
    prev_id: Option<Id>,
    #[serde(default, rename = "no-seq")]
    no_seq: Option<bool>,
    #[serde(default)]
    meta: Option<Meta>,
    /// Not a publish field: refused with a pointer to where filters go.
    #[serde(default)]
    filters: Option<IgnoredAny>,
    /// Pushpin paces deliveries by it (`message_rate`); corepin does not.
    #[serde(default)]
    size: Option<IgnoredAny>,
    #[serde(default, borrow)]
    formats: Option<Obj<RawFormats<'a>>>,
    #[serde(default, borrow, rename = "http-response")]
    http_response: Option<Obj<RawResponse<'a>>>,
    #[serde(default, borrow, rename = "http-stream")]
    http_stream: Option<Obj<RawStream<'a>>>,
    #[serde(default, borrow, rename = "ws-message")]
    ws_message: Option<Obj<RawWs<'a>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawFormats<'a> {
    #[serde(default, borrow, rename = "http-response")]
    http_response: Option<Obj<RawResponse<'a>>>,
    #[serde(default, borrow, rename = "http-stream")]
    http_stream: Option<Obj<RawStream<'a>>>,
    #[serde(default, borrow, rename = "ws-message")]
    ws_message: Option<Obj<RawWs<'a>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawResponse<'a> {
    #[serde(default)]
    action: Option<Action>,
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
    #[serde(default, rename = "body-patch")]
    body_patch: Option<serde_json::Value>,
    #[serde(default, rename = "content-filters")]
    content_filters: Option<Vec<ContentFilter>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawStream<'a> {
    #[serde(default)]
    action: Option<Action>,
    #[serde(default, borrow)]
    content: Option<Str<'a>>,
    #[serde(default, rename = "content-bin")]
    content_bin: Option<B64>,
    #[serde(default, rename = "content-filters")]
    content_filters: Option<Vec<ContentFilter>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawWs<'a> {
    #[serde(default)]
    action: Option<Action>,
    #[serde(default, rename = "type")]
    kind: Option<WsKind>,
    #[serde(default, borrow)]
    content: Option<Str<'a>>,
    #[serde(default, rename = "content-bin")]
    content_bin: Option<B64>,
    #[serde(default)]
    code: Option<Checked<u16, CloseCode>>,
    #[serde(default, borrow)]
    reason: Option<Str<'a>>,
    #[serde(default, rename = "content-filters")]
    content_filters: Option<Vec<ContentFilter>>,
}

/// Where a format sits in the body (`items[3].formats.http-stream`),
/// turned into text only for an error message.
#[derive(Clone, Copy)]
struct At {
    index: usize,
    formats: bool,
    format: &'static str,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "items[{}]", self.index)?;
        if self.formats {
            f.write_str(".formats")?;
        }
        if !self.format.is_empty() {
            write!(f, ".{}", self.format)?;
        }
        Ok(())
    }
}

impl At {
    fn of(self, format: &'static str) -> At {
        At { format, ..self }
    }
}

/// A text payload or its base64 twin; absent means empty.
fn payload(text: Option<Str>, bin: Option<B64>, at: At, key: &str) -> Result<Bytes, PublishError> {
    match (text, bin) {
        (Some(_), Some(_)) => bad(
            &at.to_string(),
            &format!("give either {key} or {key}-bin, not both"),
        ),
        (Some(t), None) => Ok(t.into_bytes()),
        (None, Some(b)) => Ok(b.0),
        (None, None) => Ok(Bytes::new()),
    }
}

/// Checks an action against what a format supports. Pushpin accepts and
/// ignores a few combinations (close on a long-poll, refresh outside
/// WebSockets, hint on a WebSocket); corepin refuses them by name.
fn check_action(action: Action, path: At, allowed: &[Action]) -> Result<Action, PublishError> {
    if allowed.contains(&action) {
        return Ok(action);
    }
    let name = match action {
        Action::Send => "send",
        Action::Close => "close",
        Action::Hint => "hint",
        Action::Refresh => "refresh",
    };
    let why = match (path.format, action) {
        ("http-response", Action::Close) => {
            "a long-poll cannot be closed without an answer (Pushpin ignores it)"
        }
        (_, Action::Refresh) => {
            "refresh is for ws-message (WebSocket-over-HTTP sessions; Pushpin ignores it here)"
        }
        ("ws-message", Action::Hint) => "WebSockets have nothing to re-fetch (Pushpin ignores it)",
        _ => "not supported",
    };
    bad(
        &format!("{path}.action"),
        &format!("'{name}' is not supported for {}: {why}", path.format),
    )
}

/// `content-filters`, which only a `send` can carry.
fn content_filters(
    list: Option<Vec<ContentFilter>>,
    action: Action,
    path: At,
) -> Result<Option<Vec<FilterName>>, PublishError> {
    match list {
        Some(_) if action != Action::Send => bad(
            &format!("{path}.content-filters"),
            "is only for action send",
        ),
        Some(l) => Ok(Some(l.into_iter().map(|c| c.0).collect())),
        None => Ok(None),
    }
}

impl RawResponse<'_> {
    fn build(self, path: At) -> Result<HttpResponse, PublishError> {
        let action = check_action(
            self.action.unwrap_or(Action::Send),
            path,
            &[Action::Send, Action::Hint],
        )?;
        if self.body_patch.is_some() && (self.body.is_some() || self.body_bin.is_some()) {
            return bad(
                &path.to_string(),
                "give one of body, body-bin or body-patch, not several",
            );
        }
        let patch = match self.body_patch {
            Some(_) if action != Action::Send => {
                return bad(&format!("{path}.body-patch"), "is only for action send")
            }
            Some(v) => Some(BodyPatch::parse(v).map_err(|e| {
                let sep = if e.starts_with('[') { "" } else { ": " };
                PublishError(format!("{path}.body-patch{sep}{e}"))
            })?),
            None => None,
        };
        let content_filters = content_filters(self.content_filters, action, path)?;
        let body = payload(self.body, self.body_bin, path, "body")?;
        // VALIDATE: status range, reason, header names and values, managed
        // fields, bodiless statuses (codec::response).
        let fields = self.headers.map(|h| h.0).unwrap_or_default();
        let head = Head::from_parts(
            self.code.map(|c| c.0),
            self.reason.as_ref().map(|r| r.0.as_ref()),
            fields
                .iter()
                .map(|(at, n, v)| (*at, n.0.as_bytes(), v.0.as_bytes())),
            &body,
        )
        .map_err(|e| PublishError(e.at(&path.to_string())))?;
        if patch.is_some() && !head.status().has_body() {
            return bad(
                &format!("{path}.body-patch"),
                &format!("a {} response has no body to patch", head.status().code()),
            );
        }
        Ok(HttpResponse {
            action,
            head,
            body,
            patch,
            content_filters,
        })
    }
}

impl RawStream<'_> {
    fn build(self, path: At) -> Result<HttpStream, PublishError> {
        let action = check_action(
            self.action.unwrap_or(Action::Send),
            path,
            &[Action::Send, Action::Close, Action::Hint],
        )?;
        Ok(HttpStream {
            action,
            content: payload(self.content, self.content_bin, path, "content")?,
            content_filters: content_filters(self.content_filters, action, path)?,
        })
    }
}

impl RawWs<'_> {
    fn build(self, path: At) -> Result<WsMessage, PublishError> {
        let kind = match self.kind {
            Some(k) => k,
            None if self.content_bin.is_some() => WsKind::Binary,
            None => WsKind::Text,
        };
        let action = check_action(
            self.action.unwrap_or(Action::Send),
            path,
            &[Action::Send, Action::Close, Action::Refresh],
        )?;
        let content = payload(self.content, self.content_bin, path, "content")?;
        if kind == WsKind::Text && std::str::from_utf8(&content).is_err() {
            return bad(&format!("{path}.content"), "text messages must be UTF-8");
        }
        if matches!(kind, WsKind::Ping | WsKind::Pong) && content.len() > ws::MAX_CONTROL_PAYLOAD {
            return bad(
                &format!("{path}.content"),
                &format!(
                    "is {} bytes; a ping or pong carries at most {} (RFC 6455 §5.5)",
                    content.len(),
                    ws::MAX_CONTROL_PAYLOAD
                ),
            );
        }
        if let Some(r) = &self.reason {
            // VALIDATE: the close frame's reason fits its payload (codec::ws).
            ws::check_close_reason(&r.0).or_else(|e| bad(&format!("{path}.reason"), &e))?;
        }
        if action != Action::Close {
            if self.code.is_some() {
                return bad(&format!("{path}.code"), "is only for action close");
            }
            if self.reason.is_some() {
                return bad(&format!("{path}.reason"), "is only for action close");
            }
        }
        Ok(WsMessage {
            action,
            kind,
            content,
            code: self.code.map(|c| c.0),
            reason: self.reason.map(Str::into_string).unwrap_or_default(),
            content_filters: content_filters(self.content_filters, action, path)?,
        })
    }
}

impl RawItem<'_> {
    fn into_item(self, index: usize) -> Result<Item, PublishError> {
        let mut at = At {
            index,
            formats: false,
            format: "",
        };
        if self.channel.0.is_empty() {
            return bad(&format!("{at}.channel"), "must not be empty");
        }
        if self.filters.is_some() {
            return bad(
                &format!("{at}.filters"),
                "not a publish field: subscribers declare filters (Grip-Channel: c; filter=skip-self), a publish gives them meta (sender, skip_users, require_sub)",
            );
        }
        if self.size.is_some() {
            return bad(
                &format!("{at}.size"),
                "not supported: Pushpin paces deliveries by it (message_rate), corepin does not pace deliveries",
            );
        }
        let direct =
            self.http_response.is_some() || self.http_stream.is_some() || self.ws_message.is_some();
        let (response, stream, ws) = match self.formats {
            Some(_) if direct => {
                return bad(
                    &at.to_string(),
                    "give the formats under formats or on the item, not both",
                )
            }
            Some(Obj(f)) => {
                at.formats = true;
                (f.http_response, f.http_stream, f.ws_message)
            }
            None => (self.http_response, self.http_stream, self.ws_message),
        };
        if response.is_none() && stream.is_none() && ws.is_none() {
            return bad(
                &format!("items[{index}]"),
                "no format (http-response, http-stream or ws-message)",
            );
        }
        // VALIDATE: the channel and ids go back to backends inside `Grip-Last`
        // header lines, so they must be header-value text (codec::response).
        for (key, v) in [
            ("channel", Some(self.channel.0.as_ref())),
            ("id", self.id.as_ref().map(|i| i.0.as_str())),
            ("prev-id", self.prev_id.as_ref().map(|i| i.0.as_str())),
        ] {
            if let Some(v) = v {
                response::check_value(v.as_bytes())
                    .map_err(|p| PublishError(format!("items[{index}].{key}: {p}")))?;
            }
        }
        Ok(Item {
            channel: self.channel.into_string(),
            id: self.id.map(|i| i.0),
            prev_id: self.prev_id.map(|i| i.0),
            no_seq: self.no_seq.unwrap_or(false),
            meta: self.meta.map(|m| m.0).unwrap_or_default(),
            http_response: response
                .map(|Obj(r)| r.build(at.of("http-response")))
                .transpose()?,
            http_stream: stream
                .map(|Obj(s)| s.build(at.of("http-stream")))
                .transpose()?,
            ws_message: ws.map(|Obj(w)| w.build(at.of("ws-message"))).transpose()?,
        })
    }
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
    fn ids_meta_filters_nulls_and_escapes() {
        let it = one(
            r#"{"items":[{"channel":"c\u00e9","id":12,"prev-id":1.5,"meta":{"sender":"a","users":"a,b"},
            "http-stream":{"content":"a\"b\n","action":null},
            "ws-message":{"content":"x","code":null,"reason":null,"type":null}}]}"#,
        );
        assert_eq!(it.channel, "cé");
        assert_eq!(
            (it.id.as_deref(), it.prev_id.as_deref()),
            (Some("12"), Some("1.5"))
        );
        assert_eq!(
            it.meta,
            vec![
                ("sender".into(), "a".into()),
                ("users".into(), "a,b".into())
            ]
        );
        assert_eq!(
            it.http_stream.map(|s| s.content),
            Some(Bytes::from_static(b"a\"b\n"))
        );
        let w = it.ws_message.expect("ws");
        assert_eq!(
            (w.kind, w.code, w.reason.as_str()),
            (WsKind::Text, None, "")
        );
    }

    #[test]
    fn many_items_in_order_and_other_root_members() {
        let body = br#" { "method" : "publish" , "items" : [ {"channel":"a","http-stream":{"content":"1"}} ,
            {"channel":"b","http-stream":{"content":"2"}} ] , "method2": [1, {"x": "]"}] } "#;
        assert!(
            parse(body).is_err(),
            "method is not allowed on the HTTP API"
        );
        let err = parse_with(body, &["method"]).expect_err("method2 is unknown");
        assert_eq!(err.0, "method2: unknown field (expected items, method)");
        let body = br#"{"method":"publish","items":[{"channel":"a","http-stream":{"content":"1"}},{"channel":"b","http-stream":{"content":"2"}}]}"#;
        let items = parse_with(body, &["method"]).expect("valid");
        let channels: Vec<&str> = items.iter().map(|i| i.channel.as_str()).collect();
        assert_eq!(channels, ["a", "b"]);
        let mut p = Parser::new(body, &["method"]).expect("object");
        assert_eq!(
            p.next_item().expect("first").map(|i| i.channel),
            Some("a".into())
        );
        assert_eq!(p.count(), 1);
        assert!(p.next_item().expect("second").is_some());
        assert_eq!(p.next_item().expect("end"), None);
        assert_eq!(p.position(), body.len());
    }

    #[test]
    fn bad_input_has_a_reason() {
        for (json, needle) in [
            ("{", "invalid JSON"),
            ("", "invalid JSON"),
            ("[]", "body: must be an object"),
            ("{}", "items: missing"),
            (r#"{"items":{}}"#, "items: must be a list"),
            (r#"{"items":[]}"#, "items: must not be empty"),
            (r#"{"items":[ ] }"#, "items: must not be empty"),
            (
                r#"{"items":[{"channel":"c","http-stream":{}}],"items":[]}"#,
                "items: given twice",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{}}]} x"#,
                "invalid JSON: trailing characters",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{}}}"#,
                "invalid JSON",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{}},]}"#,
                "invalid JSON",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{}} {"channel":"d"}]}"#,
                "invalid JSON",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{"content":"x}}]}"#,
                "invalid JSON",
            ),
            (r#"{"items" [1]}"#, "invalid JSON"),
            (
                r#"{"items":[1}"#,
                "items[0]: must be an object, not integer `1`",
            ),
            (
                r#"{"other":1,"items":[{"channel":"c","http-stream":{}}]}"#,
                "other: unknown field (expected items)",
            ),
            (
                r#"{"items":[{"http-stream":{"content":"x"}}]}"#,
                "items[0].channel: missing",
            ),
            (
                r#"{"items":[{"channel":5,"http-stream":{}}]}"#,
                "items[0].channel: must be a string",
            ),
            (
                r#"{"items":[{"channel":"","http-stream":{}}]}"#,
                "items[0].channel: must not be empty",
            ),
            (r#"{"items":[{"channel":"c"}]}"#, "items[0]: no format"),
            (
                r#"{"items":[{"channel":"c","http-stream":{"content":5}}]}"#,
                "items[0].http-stream.content: must be a string",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{"content":"a"}},{"channel":"c","formats":{"http-stream":{"content":5}}}]}"#,
                "items[1].formats.http-stream.content: must be a string",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{"content-bin":"!!"}}]}"#,
                "items[0].http-stream.content-bin: is not valid base64",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{"content":"a","content-bin":"YQ=="}}]}"#,
                "items[0].http-stream: give either content or content-bin, not both",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{"action":"boom"}}]}"#,
                "items[0].http-stream.action: unknown action 'boom'",
            ),
            (
                r#"{"items":[{"channel":"c","http-response":{"code":"200"}}]}"#,
                "items[0].http-response.code: must be a number",
            ),
            (
                r#"{"items":[{"channel":"c","http-response":{"code":99}}]}"#,
                "items[0].http-response.code: 99 is not a final status code (200-599)",
            ),
            (
                r#"{"items":[{"channel":"c","http-response":{"headers":[["A"]]}}]}"#,
                "items[0].http-response.headers[0]: must be a [name, value] pair of strings",
            ),
            (
                r#"{"items":[{"channel":"c","http-response":{"headers":[["A","b","c"]]}}]}"#,
                "items[0].http-response.headers[0]",
            ),
            (
                r#"{"items":[{"channel":"c","http-response":{"headers":{"A":"x\r\nB: y"}}}]}"#,
                "items[0].http-response.headers.A: contains CR or LF",
            ),
            (
                r#"{"items":[{"channel":"c","formats":[]}]}"#,
                "items[0].formats: must be an object, not sequence",
            ),
            (
                r#"{"items":[["c",null,null,null,null,null,null,null,{}]]}"#,
                "items[0]: must be an object, not sequence",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":[]}]}"#,
                "items[0].http-stream: must be an object",
            ),
            (
                r#"{"items":[{"channel":"c","formats":{"http-stream":{}},"ws-message":{}}]}"#,
                "items[0]: give the formats under formats or on the item, not both",
            ),
            (
                r#"{"items":[{"channel":"c","ws-message":{"content-bin":"/w==","type":"text"}}]}"#,
                "items[0].ws-message.content: text messages must be UTF-8",
            ),
            (
                r#"{"items":[{"channel":"c","ws-message":{"type":"blob"}}]}"#,
                "items[0].ws-message.type: unknown type 'blob'",
            ),
            (
                r#"{"items":[{"channel":"c","ws-message":{"action":"close","code":999}}]}"#,
                "items[0].ws-message.code: 999 is not a close code",
            ),
            (
                r#"{"items":[{"channel":"c","colour":"red","http-stream":{}}]}"#,
                "items[0].colour: unknown field",
            ),
            (
                r#"{"items":[{"channel":"c","http-stream":{"contents":"x"}}]}"#,
                "items[0].http-stream.contents: unknown field",
            ),
            (
                r#"{"items":[{"channel":"c","formats":{"http-streams":{}}}]}"#,
                "items[0].formats.http-streams: unknown field",
            ),
            (
                r#"{"items":[{"channel":"c","meta":{"a":1},"http-stream":{}}]}"#,
                "items[0].meta.a: must be a string",
            ),
            (
                r#"{"items":[{"channel":"c","filters":["skip-self"],"http-stream":{}}]}"#,
                "items[0].filters: not a publish field: subscribers declare filters",
            ),
            (
                r#"{"items":[{"channel":"c","size":10,"http-stream":{}}]}"#,
                "items[0].size: not supported",
            ),
            (
                r#"{"items":[{"channel":"c","no-seq":"yes","http-stream":{}}]}"#,
                "items[0].no-seq: must be a boolean",
            ),
            (
                r#"{"items":[{"channel":"c","id":{},"http-stream":{}}]}"#,
                "items[0].id: must be a string",
            ),
        ] {
            let e = parse(json.as_bytes()).expect_err(json).0;
            assert!(e.contains(needle), "{json}: {e}");
        }
        let not_utf8 = b"{\"items\":[{\"channel\":\"c\xff\",\"http-stream\":{}}]}";
        let e = parse(not_utf8).expect_err("not UTF-8").0;
        assert!(e.starts_with("invalid JSON"), "{e}");
    }

    #[test]
    fn root_member_finds_raw_values() {
        let body = br#" {"items": [{"a": "}"}], "method" : "publish" } "#;
        assert_eq!(root_member(body, "method"), Some(&br#""publish""#[..]));
        assert_eq!(root_member(body, "items"), Some(&br#"[{"a": "}"}]"#[..]));
        assert_eq!(root_member(body, "nope"), None);
        assert_eq!(root_member(b"[1]", "method"), None);
        assert_eq!(root_member(br#"{"method" "x"}"#, "method"), None);
    }

    /// The scanner finds each value's end exactly where serde does, for
    /// every shape of value, nested brackets inside strings included.
    #[test]
    fn value_end_agrees_with_serde() {
        for v in [
            r#""a""#,
            r#""a\"]}""#,
            r#""\\""#,
            "12",
            "-1.5e3",
            "true",
            "null",
            r#"{"a":[1,{"b":"}"}],"c":"]"}"#,
            "[[],[[]],{}]",
        ] {
            let text = format!("{v} ,");
            assert_eq!(value_end(text.as_bytes(), 0), Some(v.len()), "{v}");
            assert!(serde_json::from_str::<serde_json::Value>(v).is_ok());
        }
        for v in ["", ",", "]", r#""open"#, "[1,2", "{\"a\":\"}"] {
            assert_eq!(value_end(v.as_bytes(), 0), None, "{v}");
        }
    }

    /// Whatever the body, the parser agrees with serde on whether it is
    /// JSON at all: a body serde rejects is never accepted.
    #[test]
    fn never_accepts_what_serde_rejects() {
        let good = r#"{"items":[{"channel":"c","http-stream":{"content":"a\"b"}},{"channel":"d","formats":{"ws-message":{"content":"x"}}}]}"#;
        assert!(parse(good.as_bytes()).is_ok());
        // Every truncation, and every single-byte change to a structural
        // byte, is either rejected or still valid JSON.
        for cut in 0..good.len() {
            let body = &good.as_bytes()[..cut];
            assert!(parse(body).is_err(), "accepted a truncation at {cut}");
        }
        for i in 0..good.len() {
            for b in [b'{', b'}', b'[', b']', b',', b':', b'"', b' ', b'\\', b'x'] {
                let mut body = good.as_bytes().to_vec();
                body[i] = b;
                check_parse_invariant(&body);
                if parse(&body).is_ok() {
                    assert!(
                        serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
                        "accepted invalid JSON: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
    }

    #[test]
    fn content_filters_patches_pings_and_actions() {
        use crate::codec::filter::Name;
        let it = one(r#"{"items":[{"channel":"c","formats":{
            "http-response":{"body-patch":[{"op":"add","path":"/a","value":1}],"content-filters":["var-subst"]},
            "http-stream":{"content":"x","content-filters":[]},
            "ws-message":{"type":"ping","content":"hi","content-filters":["build-id","var-subst"]}}}]}"#);
        assert!(it.per_subscriber());
        let r = it.http_response.expect("response");
        assert_eq!(r.content_filters, Some(vec![Name::VarSubst]));
        assert_eq!(&r.patch.expect("patch").apply(b"{}\n")[..], b"{\"a\":1}\n");
        assert_eq!(
            it.http_stream.expect("stream").content_filters,
            Some(vec![])
        );
        let w = it.ws_message.expect("ws");
        assert_eq!((w.kind, &w.content[..]), (WsKind::Ping, &b"hi"[..]));
        assert_eq!(w.content_filters, Some(vec![Name::BuildId, Name::VarSubst]));
        let it = one(r#"{"items":[{"channel":"c","ws-message":{"type":"pong"}}]}"#);
        assert_eq!(
            it.ws_message.map(|w| (w.kind, w.content.len())),
            Some((WsKind::Pong, 0))
        );
        assert!(
            !one(r#"{"items":[{"channel":"c","ws-message":{"content":"x"}}]}"#).per_subscriber()
        );
        let it = one(r#"{"items":[{"channel":"c","ws-message":{"action":"refresh"}}]}"#);
        assert_eq!(it.ws_message.map(|w| w.action), Some(Action::Refresh));
        for (item, needle) in [
            (r#"{"http-response":{"action":"close"}}"#, "items[0].http-response.action: 'close' is not supported for http-response"),
            (r#"{"http-response":{"action":"refresh"}}"#, "http-response.action: 'refresh' is not supported for http-response: refresh is for ws-message"),
            (r#"{"http-stream":{"action":"refresh"}}"#, "items[0].http-stream.action: 'refresh' is not supported"),
            (r#"{"ws-message":{"action":"hint"}}"#, "items[0].ws-message.action: 'hint' is not supported for ws-message"),
            (r#"{"http-stream":{"content-filters":["nope"]}}"#, "http-stream.content-filters[0]: unknown filter 'nope'"),
            (r#"{"http-stream":{"content-filters":["http-modify"]}}"#, "filter 'http-modify' is not supported"),
            (r#"{"http-stream":{"content-filters":["skip-self"]}}"#, "'skip-self' does not change content"),
            (r#"{"http-stream":{"content-filters":"var-subst"}}"#, "http-stream.content-filters: must be a sequence"),
            (r#"{"http-stream":{"action":"close","content-filters":[]}}"#, "http-stream.content-filters: is only for action send"),
            (r#"{"http-response":{"body":"x","body-patch":[]}}"#, "http-response: give one of body, body-bin or body-patch"),
            (r#"{"http-response":{"body-patch":{}}}"#, "http-response.body-patch: must be a list"),
            (r#"{"http-response":{"body-patch":[{"op":"remove","path":""}]}}"#, "http-response.body-patch[0].path: \"\": a path must start with '/'"),
            (r#"{"http-response":{"code":204,"body-patch":[]}}"#, "a 204 response has no body to patch"),
            (r#"{"http-response":{"action":"hint","body-patch":[]}}"#, "body-patch: is only for action send"),
            (r#"{"ws-message":{"type":"ping","content":"PAYLOAD"}}"#, "PLACEHOLDER"),
        ] {
            let item = item.replace("PAYLOAD", &"x".repeat(126));
            let needle = needle.replace(
                "PLACEHOLDER",
                "items[0].ws-message.content: is 126 bytes; a ping or pong carries at most 125",
            );
            let json = format!(r#"{{"items":[{{"channel":"c",{}}}]}}"#, &item[1..item.len() - 1]);
            let e = parse(json.as_bytes()).expect_err(&json).0;
            assert!(e.contains(&needle), "{json}: {e}");
        }
    }
}
