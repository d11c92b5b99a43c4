//! The serde pieces every JSON input of corepin is read with (publish
//! items, the JSON GRIP instruction, WebSocket control messages, control
//! socket requests): field types whose refusals read as corepin's errors
//! (`must be a string`, `is not valid base64`), structs that must be
//! written as objects, and [`explain`], which turns a serde error and the
//! path `serde_path_to_error` tracked into one line naming the field
//! (`items[0].formats.http-stream.content: must be a string, not ...`).
//!
//! The input types derive `Deserialize` (with `deny_unknown_fields` where
//! corepin refuses unknown fields) in the module that owns the format; only
//! what they share lives here.

use std::borrow::Cow;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::response;

/// Why a JSON document did not become the type asked for.
#[derive(Debug)]
pub enum Refusal {
    /// Not JSON at all (serde_json's message, with the position).
    Syntax(serde_json::Error),
    /// JSON of the wrong shape: where (`serde_path_to_error`'s path, `.`
    /// for the root) and serde's message, without the position.
    Data { path: String, msg: String },
}

impl Refusal {
    /// The refusal as one line: a syntax error as `syntax` prefixes it, a
    /// data error through [`explain`] with `base` before the path.
    pub fn explain(&self, syntax: &str, base: &str, whose: &str) -> String {
        match self {
            Refusal::Syntax(e) => format!("{syntax}{e}"),
            Refusal::Data { path, msg } => explain(base, path, msg, whose),
        }
    }

    /// True for a data error about an unknown field of the root object.
    pub fn unknown_at_root(&self) -> bool {
        self.unknown_field()
            .is_some_and(|(parent, _)| parent.is_empty())
    }

    /// For a data error about an unknown field: the path of the object
    /// holding it (empty for the root) and the field's name.
    pub fn unknown_field(&self) -> Option<(&str, &str)> {
        let Refusal::Data { path, msg } = self else {
            return None;
        };
        let (name, _) = unknown_name(msg)?;
        // The path may or may not end at the unknown key already.
        let parent = match path.as_str() {
            "." => "",
            p if p == name => "",
            p => p
                .strip_suffix(name)
                .and_then(|p| p.strip_suffix('.'))
                .unwrap_or(p),
        };
        Some((parent, name))
    }
}

/// The name and the expected list in serde's `unknown field` message
/// (the name as the input spelled it: it may hold any character).
fn unknown_name(msg: &str) -> Option<(&str, &str)> {
    let rest = msg.strip_prefix("unknown field `")?;
    if let Some((name, expected)) = rest.rsplit_once("`, expected ") {
        return Some((name, expected));
    }
    Some((rest.strip_suffix("`, there are no fields")?, ""))
}

/// Parses `json` into `T`. The common case (valid input) runs serde
/// alone; only a data error is parsed again with path tracking, to name
/// the field.
pub fn from_slice<'de, T: Deserialize<'de>>(json: &'de [u8]) -> Result<T, Refusal> {
    match serde_json::from_slice::<T>(json) {
        Ok(v) => Ok(v),
        Err(e) if e.is_syntax() || e.is_eof() || e.is_io() => Err(Refusal::Syntax(e)),
        Err(e) => {
            let mut de = serde_json::Deserializer::from_slice(json);
            Err(match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Err(pe) => Refusal::Data {
                    path: pe.path().to_string(),
                    msg: pe.into_inner().to_string(),
                },
                Ok(_) => Refusal::Data {
                    path: ".".into(),
                    msg: e.to_string(),
                },
            })
        }
    }
}

/// Reads a JSON tree already parsed into `T`, the path kept for errors
/// (for requests whose tree is needed anyway, such as a control socket's
/// line, whose `method` picks the type).
pub fn from_value<'de, T: Deserialize<'de>>(v: &'de serde_json::Value) -> Result<T, Refusal> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|pe| Refusal::Data {
        path: pe.path().to_string(),
        msg: pe.into_inner().to_string(),
    })
}

/// Turns serde's message `msg` about the value at `path` (`.` for the
/// root) into a line naming the field under `base` (which may be empty):
/// `items[0].channel: must be a string, not integer `5``, `hold.name:
/// missing`, `extra: unknown field (expected hold, response)` (`whose`,
/// such as ` for type detach`, goes after `unknown field`).
pub fn explain(base: &str, path: &str, msg: &str, whose: &str) -> String {
    // serde_json appends the position; the path says more.
    let msg = msg.rsplit_once(" at line ").map_or(msg, |(m, _)| m);
    // Keys in the path (and an unknown field's name) are the input's own:
    // escaped, so the refusal stays one line.
    let mut at = base.to_string();
    if path != "." {
        if !at.is_empty() && !path.starts_with('[') {
            at.push('.');
        }
        at.extend(path.escape_debug());
    }
    let under = |at: &str, name: &str| match at.is_empty() {
        true => name.to_string(),
        false => format!("{at}.{name}"),
    };
    let line = |at: &str, rest: &str| match at.is_empty() {
        true => rest.to_string(),
        false => format!("{at}: {rest}"),
    };
    if let Some(rest) = msg.strip_prefix("missing field ") {
        let name = rest.split('`').nth(1).unwrap_or_default();
        return format!("{}: missing", under(&at, name));
    }
    if let Some((name, expected)) = unknown_name(msg) {
        let name = name.escape_debug().to_string();
        let expected = match expected {
            "" => String::new(),
            e => {
                let e = e.strip_prefix("one of ").unwrap_or(e);
                format!(" (expected {})", e.replace('`', ""))
            }
        };
        // The path already ends at the unknown key.
        if at != name && !at.ends_with(&format!(".{name}")) {
            at = under(&at, &name);
        }
        return line(&at, &format!("unknown field{whose}{expected}"));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((got, want)) = msg
            .strip_prefix(prefix)
            .and_then(|r| r.split_once(", expected "))
        {
            return line(&at, &format!("must be {want}, not {got}"));
        }
    }
    line(&at, msg)
}

/// A string borrowed from the body when it has no escapes.
pub struct Str<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl Str<'_> {
    pub fn into_string(self) -> String {
        self.0.into_owned()
    }

    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            Cow::Borrowed(s) => Bytes::copy_from_slice(s.as_bytes()),
            Cow::Owned(s) => Bytes::from(s.into_bytes()),
        }
    }
}

/// Deserializes a JSON string through `parse`, whose refusal is the error
/// (`expecting` names what was wanted when the value is not a string): the
/// one visitor behind the codecs' string-valued enums and checked strings.
pub fn str_with<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T, F>(&'static str, F, std::marker::PhantomData<T>);
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for V<T, F> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.1)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(expecting, parse, std::marker::PhantomData))
}

/// Base64 (`body-bin`, `content-bin`), decoded.
pub struct B64(pub Bytes);

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        str_with(d, "a base64 string", |v| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .map(|b| B64(Bytes::from(b)))
                .map_err(|_| "is not valid base64".to_string())
        })
    }
}

/// A number checked by `check`, which is given the number as an integer
/// (`Ok`) or, when it is not a non-negative integer, as its text (`Err`):
/// status codes and close codes, whose range checks live with the wire
/// formats (codec::response, codec::ws).
pub struct Checked<T, F>(pub T, std::marker::PhantomData<F>);

/// How a `Checked` number is judged.
pub trait Check {
    type Out;
    fn check(n: Result<u64, String>) -> Result<Self::Out, String>;
}

impl<'de, F: Check> Deserialize<'de> for Checked<F::Out, F> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<F>(std::marker::PhantomData<F>);
        impl<F: Check> Visitor<'_> for V<F> {
            type Value = Checked<F::Out, F>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                F::check(Ok(v))
                    .map(|c| Checked(c, std::marker::PhantomData))
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(
                        F::check(Err(v.to_string())).err().unwrap_or_default(),
                    )),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                let text = serde_json::Number::from_f64(v)
                    .map_or_else(|| v.to_string(), |n| n.to_string());
                Err(E::custom(F::check(Err(text)).err().unwrap_or_default()))
            }
        }
        d.deserialize_any(V::<F>(std::marker::PhantomData))
    }
}

/// `http-response.code`: kept as given, checked with the rest of the head.
pub enum StatusCode {}

impl Check for StatusCode {
    type Out = u64;
    fn check(n: Result<u64, String>) -> Result<u64, String> {
        n.map_err(|text| {
            format!(
                "{text} is not a final status code ({}-{})",
                response::MIN_STATUS,
                response::MAX_STATUS
            )
        })
    }
}

/// `meta`: an object of strings, kept in order.
pub struct Meta(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Meta;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Meta, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Str, Str>()? {
                    out.push((k.into_string(), v.into_string()));
                }
                Ok(Meta(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Headers as an object or a list of `[name, value]` pairs, with how each
/// was listed (for naming it in an error). Shape only: names and values
/// are checked by `codec::response`.
pub struct Headers<'a>(pub Vec<(response::At, Str<'a>, Str<'a>)>);

/// One `[name, value]` pair of a header list.
struct Pair<'a>(Str<'a>, Str<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for Pair<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pair<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [name, value] pair of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Pair<'de>, A::Error> {
                let pair = || de::Error::custom("must be a [name, value] pair of strings");
                let name = s.next_element::<Str>()?.ok_or_else(pair)?;
                let value = s.next_element::<Str>()?.ok_or_else(pair)?;
                if s.next_element::<IgnoredAny>()?.is_some() {
                    return Err(pair());
                }
                Ok(Pair(name, value))
            }
        }
        d.deserialize_seq(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Headers<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Headers<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object or a list of [name, value] pairs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Headers<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Str, Str>()? {
                    out.push((response::At::Key, k, v));
                }
                Ok(Headers(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Headers<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(Pair(k, v)) = s.next_element::<Pair>()? {
                    out.push((response::At::Index(out.len()), k, v));
                }
                Ok(Headers(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A struct that must be written as a JSON object (serde's derived
/// structs also take a list of field values, which no publisher means).
pub struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(MapOnly(d)).map(Obj)
    }
}

/// A deserializer that reads a struct only from a map.
struct MapOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(v)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// `true` or `false` (a refusal says so in those words).
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
        }
        d.deserialize_bool(V)
    }
}

/// A list of `T` (a refusal calls it a list).
pub struct List<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<List<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = s.next_element::<T>()? {
                    out.push(v);
                }
                Ok(List(out))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// A list of strings, refused as a whole (`must be a list of strings`)
/// when any element is not one (filter names).
pub struct StrList(pub Vec<String>);

impl<'de> Deserialize<'de> for StrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Any JSON value, kept only when it is a string.
        struct AnyStr(Option<String>);
        impl<'de> Deserialize<'de> for AnyStr {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match serde_json::Value::deserialize(d)? {
                    serde_json::Value::String(s) => Ok(AnyStr(Some(s))),
                    _ => Ok(AnyStr(None)),
                }
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<StrList, A::Error> {
                let mut out = Vec::new();
                while let Some(AnyStr(v)) = s.next_element::<AnyStr>()? {
                    match v {
                        Some(v) => out.push(v),
                        None => return Err(de::Error::custom("must be a list of strings")),
                    }
                }
                Ok(StrList(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Whole seconds, kept as given (callers apply their defaults and
/// bounds); anything else is `N is not a whole number of seconds`.
pub enum Seconds {}

impl Check for Seconds {
    type Out = u64;
    fn check(n: Result<u64, String>) -> Result<u64, String> {
        n.map_err(|text| format!("{text} is not a whole number of seconds"))
    }
}

/// A number, kept as its JSON text (for checks that read it as text and
/// say what was wrong with it, such as a `top` of `-3`).
pub struct NumText(pub String);

impl<'de> Deserialize<'de> for NumText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumText, E> {
                Ok(NumText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumText, E> {
                Ok(NumText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumText, E> {
                Ok(NumText(
                    serde_json::Number::from_f64(v)
                        .map_or_else(|| v.to_string(), |n| n.to_string()),
                ))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, expecting = "an object")]
    #[allow(dead_code)]
    struct Inner {
        name: String,
        #[serde(default)]
        on: Option<Flag>,
        #[serde(default)]
        tags: Option<StrList>,
        #[serde(default)]
        wait: Option<Checked<u64, Seconds>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, expecting = "a JSON object")]
    #[allow(dead_code)]
    struct Outer {
        #[serde(default)]
        list: Option<List<Obj<Inner>>>,
    }

    #[test]
    fn refusals_name_the_field_in_one_line() {
        for (json, line) in [
            (r#"[]"#, "must be a JSON object, not sequence"),
            (r#"{"list":{}}"#, "list: must be a list, not map"),
            (
                r#"{"list":[[]]}"#,
                "list[0]: must be an object, not sequence",
            ),
            (r#"{"list":[{}]}"#, "list[0].name: missing"),
            (
                r#"{"list":[{"name":"a","on":"yes"}]}"#,
                "list[0].on: must be true or false, not string \"yes\"",
            ),
            (
                r#"{"list":[{"name":"a","tags":["x",1]}]}"#,
                "list[0].tags: must be a list of strings",
            ),
            (
                r#"{"list":[{"name":"a","wait":-1}]}"#,
                "list[0].wait: -1 is not a whole number of seconds",
            ),
            (
                r#"{"list":[{"name":"a","colour":1}]}"#,
                "list[0].colour: unknown field (expected name, on, tags, wait)",
            ),
            (r#"{"extra":1}"#, "extra: unknown field (expected list)"),
        ] {
            let e = from_slice::<Obj<Outer>>(json.as_bytes()).err().expect(json);
            assert_eq!(e.explain("", "", ""), line, "{json}");
        }
        let e = from_slice::<Obj<Outer>>(br#"{"extra":1}"#)
            .err()
            .expect("unknown");
        assert!(e.unknown_at_root());
        assert_eq!(e.unknown_field(), Some(("", "extra")));
        assert_eq!(
            e.explain("", "body", " here"),
            "body.extra: unknown field here (expected list)"
        );
        let e = from_slice::<Obj<Outer>>(br#"{"list":[{"name":"a","x":1}]}"#)
            .err()
            .expect("unknown");
        assert_eq!(e.unknown_field(), Some(("list[0]", "x")));
        assert!(!e.unknown_at_root());
        let e = from_slice::<Obj<Outer>>(br#"{"list":[{"name":"a","x`\ny":1}]}"#)
            .err()
            .expect("unknown");
        assert_eq!(e.unknown_field(), Some(("list[0]", "x`\ny")));
        assert_eq!(
            e.explain("", "", ""),
            "list[0].x`\\ny: unknown field (expected name, on, tags, wait)"
        );
        let e = from_slice::<Obj<Outer>>(b"{").err().expect("syntax");
        assert!(matches!(e, Refusal::Syntax(_)));
        assert!(e
            .explain("invalid JSON: ", "", "")
            .starts_with("invalid JSON: EOF"));
        // A tree already parsed reads the same way.
        let v: serde_json::Value = serde_json::from_str(r#"{"list":[{"name":5}]}"#).expect("json");
        let e = from_value::<Obj<Outer>>(&v).err().expect("type");
        assert_eq!(
            e.explain("", "", ""),
            "list[0].name: must be a string, not integer `5`"
        );
    }
}
