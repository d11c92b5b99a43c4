//! Typed netstrings (tnetstrings.info), the encoding of Pushpin's ZeroMQ
//! interfaces: `LENGTH:PAYLOAD TYPE`, with `LENGTH` the payload's size in
//! ASCII decimal and `TYPE` one of `,` (bytes), `#` (integer), `^` (float),
//! `!` (`true`/`false`), `~` (null, empty), `]` (list of values) and `}`
//! (map: byte-string keys alternating with values).
//!
//! [`parse`] reads one value from the front of a buffer (`Ok(None)` while
//! it is short); [`decode`] reads a whole message that must hold exactly
//! one value. Values borrow from the input. Refused, with the offset and
//! the reason: a length of more than 9 digits, a missing or unknown type,
//! an integer outside `i64`, a float that is not finite, a bool other than
//! `true`/`false`, a non-empty null, a map key that is not a byte string or
//! appears twice, and nesting deeper than [`MAX_DEPTH`].

use std::borrow::Cow;

/// Deepest nesting of lists and maps accepted.
pub const MAX_DEPTH: usize = 32;
/// Most digits of a length (the spec's limit: below a gigabyte).
pub const MAX_LENGTH_DIGITS: usize = 9;

/// A tnetstring value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Bytes(Cow<'a, [u8]>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    List(Vec<Value<'a>>),
    /// Entries in the order written; keys are unique.
    Map(Vec<(Cow<'a, [u8]>, Value<'a>)>),
}

/// Why input is not a tnetstring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Offset of the offending element in the input.
    pub at: usize,
    pub what: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid tnetstring at byte {}: {}", self.at, self.what)
    }
}

fn err<T>(at: usize, what: impl Into<String>) -> Result<T, Error> {
    Err(Error {
        at,
        what: what.into(),
    })
}

impl<'a> Value<'a> {
    pub fn bytes(b: impl Into<Cow<'a, [u8]>>) -> Value<'a> {
        Value::Bytes(b.into())
    }

    pub fn str(s: &'a str) -> Value<'a> {
        Value::Bytes(Cow::Borrowed(s.as_bytes()))
    }

    /// The name of this value's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Bytes(_) => "a byte string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Null => "null",
            Value::List(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    /// A map's value for `key`.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Map(m) => m
                .iter()
                .find(|(k, _)| k.as_ref() == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Appends this value's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        self.write(out);
    }

    /// The encoding as a new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    fn payload_len(&self) -> usize {
        match self {
            Value::Bytes(b) => b.len(),
            Value::Int(i) => digits_i64(*i),
            Value::Float(f) => float_text(*f).len(),
            Value::Bool(true) => 4,
            Value::Bool(false) => 5,
            Value::Null => 0,
            Value::List(l) => l.iter().map(Value::encoded_len).sum(),
            Value::Map(m) => m
                .iter()
                .map(|(k, v)| framed_len(k.len()) + v.encoded_len())
                .sum(),
        }
    }

    /// Bytes this value takes encoded.
    pub fn encoded_len(&self) -> usize {
        framed_len(self.payload_len())
    }

    fn write(&self, out: &mut Vec<u8>) {
        let n = self.payload_len();
        out.extend_from_slice(n.to_string().as_bytes());
        out.push(b':');
        let tag = match self {
            Value::Bytes(b) => {
                out.extend_from_slice(b);
                b','
            }
            Value::Int(i) => {
                out.extend_from_slice(i.to_string().as_bytes());
                b'#'
            }
            Value::Float(f) => {
                out.extend_from_slice(float_text(*f).as_bytes());
                b'^'
            }
            Value::Bool(b) => {
                out.extend_from_slice(if *b { b"true" } else { b"false" });
                b'!'
            }
            Value::Null => b'~',
            Value::List(l) => {
                for v in l {
                    v.write(out);
                }
                b']'
            }
            Value::Map(m) => {
                for (k, v) in m {
                    Value::Bytes(Cow::Borrowed(k)).write(out);
                    v.write(out);
                }
                b'}'
            }
        };
        out.push(tag);
    }
}

/// `LENGTH:` + payload + tag.
fn framed_len(payload: usize) -> usize {
    let mut digits = 1;
    let mut n = payload;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits + 1 + payload + 1
}

fn digits_i64(i: i64) -> usize {
    i.to_string().len()
}

/// A finite float as text that reads back to the same value.
fn float_text(f: f64) -> String {
    // `{:?}` is the shortest text that reads back to the same value (it
    // keeps `.0` on whole numbers, and uses an exponent when shorter).
    format!("{f:?}")
}

/// Reads the value at the front of `b`: `Ok(None)` while `b` is a prefix
/// of one; otherwise the bytes it took and the value.
pub fn parse(b: &[u8]) -> Result<Option<(usize, Value<'_>)>, Error> {
    parse_at(b, 0, 0)
}

/// Reads a whole message: exactly one value, nothing after it.
pub fn decode(b: &[u8]) -> Result<Value<'_>, Error> {
    match parse(b)? {
        None if b.is_empty() => err(0, "empty message"),
        None => err(0, "the message ends inside a value"),
        Some((n, _)) if n != b.len() => err(n, "bytes after the value"),
        Some((_, v)) => Ok(v),
    }
}

/// `base` is the offset of `b` in the whole input (for errors).
fn parse_at(b: &[u8], base: usize, depth: usize) -> Result<Option<(usize, Value<'_>)>, Error> {
    let mut len: usize = 0;
    let mut i = 0;
    loop {
        match b.get(i) {
            None => return Ok(None),
            Some(b':') if i > 0 => break,
            Some(d) if d.is_ascii_digit() && i < MAX_LENGTH_DIGITS => {
                len = len * 10 + usize::from(d - b'0');
                i += 1;
            }
            Some(d) if d.is_ascii_digit() => {
                return err(
                    base,
                    format!("a length of more than {MAX_LENGTH_DIGITS} digits"),
                )
            }
            Some(_) => return err(base + i, "expected a length (digits, then ':')"),
        }
    }
    let start = i + 1;
    let Some(end) = start.checked_add(len) else {
        return err(base, "length overflows");
    };
    let Some(&tag) = b.get(end) else {
        return Ok(None);
    };
    let payload = &b[start..end];
    let at = base + start;
    let value = match tag {
        b',' => Value::Bytes(Cow::Borrowed(payload)),
        b'#' => Value::Int(int(payload, at)?),
        b'^' => Value::Float(float(payload, at)?),
        b'!' => match payload {
            b"true" => Value::Bool(true),
            b"false" => Value::Bool(false),
            _ => return err(at, "a boolean must be true or false"),
        },
        b'~' if payload.is_empty() => Value::Null,
        b'~' => return err(at, "a null must be empty"),
        b']' | b'}' => {
            if depth >= MAX_DEPTH {
                return err(base, format!("nested deeper than {MAX_DEPTH}"));
            }
            let items = elements(payload, at, depth + 1)?;
            if tag == b']' {
                Value::List(items.into_iter().map(|(_, v)| v).collect())
            } else {
                map(items, at)?
            }
        }
        other => {
            return err(
                base + end,
                format!("unknown type '{}'", other.escape_ascii()),
            )
        }
    };
    Ok(Some((end + 1, value)))
}

/// The values filling a list's or map's payload, each with its offset.
fn elements(payload: &[u8], base: usize, depth: usize) -> Result<Vec<(usize, Value<'_>)>, Error> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < payload.len() {
        match parse_at(&payload[i..], base + i, depth)? {
            Some((n, v)) => {
                out.push((base + i, v));
                i += n;
            }
            None => return err(base + i, "an element runs past the end of its container"),
        }
    }
    Ok(out)
}

fn map(items: Vec<(usize, Value<'_>)>, at: usize) -> Result<Value<'_>, Error> {
    if !items.len().is_multiple_of(2) {
        return err(at, "a map key has no value");
    }
    let mut out: Vec<(Cow<[u8]>, Value)> = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some((kat, k)), Some((_, v))) = (it.next(), it.next()) {
        let Value::Bytes(k) = k else {
            return err(
                kat,
                format!("a map key must be a byte string, not {}", k.kind()),
            );
        };
        if out.iter().any(|(seen, _)| *seen == k) {
            return err(kat, format!("map key '{}' appears twice", k.escape_ascii()));
        }
        out.push((k, v));
    }
    Ok(Value::Map(out))
}

fn int(p: &[u8], at: usize) -> Result<i64, Error> {
    let digits = p.strip_prefix(b"-").unwrap_or(p);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return err(at, "an integer must be digits with an optional '-'");
    }
    std::str::from_utf8(p)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or_else(|| err(at, "an integer outside 64 bits"), Ok)
}

fn float(p: &[u8], at: usize) -> Result<f64, Error> {
    let ok = !p.is_empty()
        && p.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'));
    let v = std::str::from_utf8(p)
        .ok()
        .filter(|_| ok)
        .and_then(|s| s.parse::<f64>().ok());
    match v {
        Some(f) if f.is_finite() => Ok(f),
        Some(_) => err(at, "a float must be finite"),
        None => err(at, "not a decimal float"),
    }
}

/// The fuzz target's invariant: `parse` never panics; a value it accepts
/// re-encodes to bytes that decode to the same value; every prefix of an
/// accepted value is `Ok(None)` or the same error class (never a value);
/// and `decode` agrees with `parse` on whole input.
pub fn check_invariant(data: &[u8]) {
    match parse(data) {
        Ok(Some((n, v))) => {
            assert!(n <= data.len() && n > 0);
            let again = v.to_vec();
            assert_eq!(again.len(), v.encoded_len());
            assert_eq!(decode(&again).as_ref(), Ok(&v));
            if n == data.len() {
                assert_eq!(decode(data).as_ref(), Ok(&v));
            } else {
                assert!(decode(data).is_err());
            }
            for cut in [0, n / 2, n.saturating_sub(1)] {
                if cut < n {
                    assert!(!matches!(parse(&data[..cut]), Ok(Some(_))), "prefix {cut}");
                }
            }
        }
        Ok(None) => assert!(decode(data).is_err()),
        Err(e) => {
            assert!(!e.what.is_empty());
            assert!(decode(data).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value<'_> {
        Value::str(s)
    }

    #[test]
    fn table() {
        let cases: Vec<(&[u8], Value)> = vec![
            (b"0:,", b("")),
            (b"5:hello,", b("hello")),
            (b"3:a:b,", b("a:b")),
            (b"2:42#", Value::Int(42)),
            (b"3:-17#", Value::Int(-17)),
            (b"19:9223372036854775807#", Value::Int(i64::MAX)),
            (b"3:1.5^", Value::Float(1.5)),
            (b"4:-2e3^", Value::Float(-2000.0)),
            (b"4:true!", Value::Bool(true)),
            (b"5:false!", Value::Bool(false)),
            (b"0:~", Value::Null),
            (b"0:]", Value::List(vec![])),
            (b"0:}", Value::Map(vec![])),
            (
                b"11:1:a,1:1#0:~]",
                Value::List(vec![b("a"), Value::Int(1), Value::Null]),
            ),
            (
                b"26:7:channel,4:news,2:id,1:1#}",
                Value::Map(vec![
                    (Cow::Borrowed(&b"channel"[..]), b("news")),
                    (Cow::Borrowed(&b"id"[..]), Value::Int(1)),
                ]),
            ),
            (
                b"4:\x00\xff\r\n,",
                Value::Bytes(Cow::Borrowed(&b"\x00\xff\r\n"[..])),
            ),
        ];
        for (wire, want) in &cases {
            let got = decode(wire).unwrap_or_else(|e| panic!("{wire:?}: {e}"));
            assert_eq!(&got, want, "{:?}", wire.escape_ascii().to_string());
            let again = got.to_vec();
            assert_eq!(decode(&again).as_ref(), Ok(want), "round trip {again:?}");
            assert_eq!(got.encoded_len(), again.len());
        }
        // The encoder writes what the spec's examples show.
        assert_eq!(b("hello").to_vec(), b"5:hello,");
        assert_eq!(Value::Int(-3).to_vec(), b"2:-3#");
        assert_eq!(Value::Bool(true).to_vec(), b"4:true!");
        assert_eq!(
            Value::Map(vec![(Cow::Borrowed(&b"k"[..]), Value::List(vec![b("v")]))]).to_vec(),
            b"11:1:k,4:1:v,]}"
        );
    }

    #[test]
    fn bad_input_has_a_reason() {
        for (wire, needle) in [
            (&b""[..], "empty message"),
            (b"5:abc", "ends inside a value"),
            (b"x:,", "expected a length"),
            (b":,", "expected a length"),
            (b"1234567890:", "more than 9 digits"),
            (b"1:a?", "unknown type '?'"),
            (b"1:a,x", "bytes after the value"),
            (b"2:4a#", "an integer must be digits"),
            (b"0:#", "an integer must be digits"),
            (b"20:99999999999999999999#", "outside 64 bits"),
            (b"3:inf^", "not a decimal float"),
            (b"5:1e999^", "must be finite"),
            (b"3:yes!", "true or false"),
            (b"1:x~", "null must be empty"),
            (b"4:1:a,}", "key has no value"),
            (b"8:1:1#1:a,}", "key must be a byte string, not an integer"),
            (b"16:1:a,1:1#1:a,1:2#}", "map key 'a' appears twice"),
            (b"4:9:a,]", "runs past the end"),
        ] {
            let e = decode(wire).expect_err(&wire.escape_ascii().to_string());
            assert!(e.what.contains(needle), "{:?}: {e}", wire.escape_ascii());
        }
        let deep = {
            let mut v = Value::Null;
            for _ in 0..=MAX_DEPTH {
                v = Value::List(vec![v]);
            }
            v.to_vec()
        };
        assert!(decode(&deep).expect_err("deep").what.contains("deeper"));
        let ok = {
            let mut v = Value::Null;
            for _ in 0..MAX_DEPTH {
                v = Value::List(vec![v]);
            }
            v.to_vec()
        };
        assert!(decode(&ok).is_ok());
    }

    #[test]
    fn split_at_every_offset() {
        let whole: &[u8] = b"65:7:channel,4:news,7:formats,34:11:http-stream,15:7:content,2:hi,}}}";
        let (n, v) = parse(whole).expect("valid").expect("complete");
        assert_eq!(n, whole.len());
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        // Two values back to back: the first is taken alone.
        let mut two = whole.to_vec();
        two.extend_from_slice(b"0:~");
        assert_eq!(parse(&two), Ok(Some((n, v))));
    }

    #[test]
    fn floats_round_trip() {
        for f in [0.0, -0.5, 1e-300, 123456.789, f64::MAX, f64::MIN_POSITIVE] {
            let wire = Value::Float(f).to_vec();
            assert_eq!(decode(&wire), Ok(Value::Float(f)), "{f}");
        }
    }

    /// The fuzz target's invariant, checked on a few inputs here too.
    #[test]
    fn invariant_holds_on_samples() {
        for s in [&b"3:abc,"[..], b"0:", b"9:1:a,1:b,}", b"1:", b"00:~"] {
            check_invariant(s);
        }
    }
}
