//! Request targets and authorities: the forms of RFC 9112 §3.2 reduced to
//! the one corepin routes on and forwards (an origin-form path in normal
//! form, the query untouched, and the authority of an absolute-form target),
//! and the syntax of a Host value (RFC 3986 §3.2.2). Pure functions over
//! bytes; every refusal is a 400 with the reason given here.
//!
//! Normal form of a path, which is what routes are matched on and what the
//! backend receives (so the two always agree):
//! - percent-encodings of unreserved characters are decoded (`%2e` is `.`,
//!   `%61` is `a`), every other percent-encoding is kept with upper-case hex
//!   (`%2f` becomes `%2F`: an encoded slash is data, never a separator);
//! - bytes a URI may not carry literally (non-ASCII, `"`, `<`, `{`...) are
//!   percent-encoded; a literal backslash is refused (some servers treat it
//!   as a separator, so it cannot be routed unambiguously);
//! - dot-segments are removed (RFC 3986 §5.2.4; `..` never climbs above the
//!   root) and repeated slashes merged; a trailing slash is kept;
//! - a segment that is a dot-segment followed by `;parameters` (`..;x`) is
//!   refused, because some servers strip the parameters and climb.

use std::borrow::Cow;

/// Why a request target or a Host value was refused (the body of the 400).
pub type UriError = &'static str;

/// A request target as corepin routes and forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Origin form: the normal-form path, then `?query` as sent.
    pub path_and_query: Cow<'a, [u8]>,
    /// The authority (`host[:port]`, validated) of an absolute-form target;
    /// it replaces the Host header (RFC 9112 §3.2.2).
    pub authority: Option<&'a [u8]>,
}

/// RFC 3986 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 sub-delims.
fn sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// A byte a path may carry literally (pchar without `%`, and `/`).
fn path_literal(b: u8) -> bool {
    unreserved(b) || sub_delim(b) || matches!(b, b':' | b'@' | b'/')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_encoded(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// A segment that is `.` or `..`, alone or before `;parameters`.
fn dot_segment(seg: &[u8]) -> Option<bool> {
    let (name, has_params) = match seg.iter().position(|&b| b == b';') {
        Some(i) => (&seg[..i], true),
        None => (seg, false),
    };
    match name {
        b"." | b".." => Some(has_params),
        _ => None,
    }
}

/// True when `path` is already in normal form, so it can be used as is.
fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    // Literal bytes, and percent-encodings in canonical form (upper-case
    // hex, never of an unreserved character).
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'%' => {
                let canonical =
                    |b: Option<&u8>| b.is_some_and(|&b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
                if !(canonical(path.get(i + 1)) && canonical(path.get(i + 2))) {
                    return false;
                }
                let v = hex_val(path[i + 1]).unwrap_or(0) << 4 | hex_val(path[i + 2]).unwrap_or(0);
                if unreserved(v) {
                    return false;
                }
                i += 3;
            }
            b if path_literal(b) => i += 1,
            _ => return false,
        }
    }
    // Segments after the leading slash: none empty (except a trailing
    // one), none a dot-segment.
    let mut segs = path[1..].split(|&b| b == b'/').peekable();
    while let Some(s) = segs.next() {
        let last = segs.peek().is_none();
        if (s.is_empty() && !last) || dot_segment(s).is_some() {
            return false;
        }
    }
    true
}

/// The normal form of a path (which must start with `/`): see the module
/// documentation. Borrowed when `path` already is in normal form.
pub fn normalize_path(path: &[u8]) -> Result<Cow<'_, [u8]>, UriError> {
    if path.first() != Some(&b'/') {
        return Err("request path must start with '/'");
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Canonical encoding.
    let mut canon = Vec::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                path.get(i + 1).copied().and_then(hex_val),
                path.get(i + 2).copied().and_then(hex_val),
            ) else {
                return Err("invalid percent-encoding in request path");
            };
            let v = h << 4 | l;
            if unreserved(v) {
                canon.push(v);
            } else {
                push_encoded(&mut canon, v);
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            return Err("backslash in request path");
        }
        if path_literal(b) {
            canon.push(b);
        } else {
            push_encoded(&mut canon, b);
        }
        i += 1;
    }
    // 2. Dot-segments and empty segments; the last segment decides
    // whether the path ends with a slash.
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    let segs: Vec<&[u8]> = canon[1..].split(|&b| b == b'/').collect();
    let last = segs.len() - 1;
    for (n, seg) in segs.iter().enumerate() {
        match dot_segment(seg) {
            Some(true) => return Err("dot-segment with parameters in request path"),
            Some(false) => {
                if seg.len() == 2 {
                    kept.pop();
                }
                trailing = n == last;
            }
            None if seg.is_empty() => trailing = n == last,
            None => {
                kept.push(seg);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(canon.len());
    for seg in &kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if out.is_empty() || trailing {
        out.push(b'/');
    }
    Ok(Cow::Owned(out))
}

/// Parses a request target (any form but authority-form, which only
/// CONNECT uses, and asterisk-form, which corepin does not serve) into the
/// origin form corepin routes and forwards.
pub fn normalize_target(raw: &[u8]) -> Result<Target<'_>, UriError> {
    if raw.contains(&b'#') {
        return Err("fragment in request target");
    }
    let (authority, rest) = if raw.first() == Some(&b'/') {
        (None, raw)
    } else if raw == b"*" {
        return Err("asterisk-form request target is not supported");
    } else {
        let after = strip_scheme(raw).ok_or("request target must be a path or an http URI")?;
        let end = after
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(after.len());
        let auth = &after[..end];
        if auth.contains(&b'@') {
            return Err("userinfo in request target");
        }
        if auth.is_empty() || !valid_authority(auth) {
            return Err("invalid host in request target");
        }
        (Some(auth), &after[end..])
    };
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(q) => (&rest[..q], &rest[q..]),
        None => (rest, &rest[rest.len()..]),
    };
    let norm = if path.is_empty() {
        // `http://host` and `http://host?q` mean the root.
        Cow::Borrowed(&b"/"[..])
    } else {
        normalize_path(path)?
    };
    let path_and_query = match norm {
        Cow::Borrowed(p) if p.len() == path.len() && authority.is_none() => Cow::Borrowed(raw),
        p => {
            let mut v = Vec::with_capacity(p.len() + query.len());
            v.extend_from_slice(&p);
            v.extend_from_slice(query);
            Cow::Owned(v)
        }
    };
    Ok(Target {
        path_and_query,
        authority,
    })
}

/// The part of an absolute `http://` or `https://` URI after `://`.
fn strip_scheme(raw: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if raw.len() >= scheme.len() && raw[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&raw[scheme.len()..]);
        }
    }
    None
}

/// True when `v` is `host [":" port]` (RFC 3986 §3.2.2–3.2.3) with `host`
/// an IP-literal (`[v6]`, no zone), an IPv4 address or a reg-name. Stricter
/// than RFC 3986 in two ways: a reg-name may not be percent-encoded (a DNS
/// name never needs it, and routes compare names literally), and a port has
/// at most five digits and is at most 65535. An empty value is accepted
/// (RFC 9110 §7.2 allows an empty Host).
pub fn valid_authority(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let Ok(text) = std::str::from_utf8(&rest[..close]) else {
            return false;
        };
        if text.parse::<core::net::Ipv6Addr>().is_err() {
            return false;
        }
        match &rest[close + 1..] {
            [] => (None, None),
            [b':', port @ ..] => (None, Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (Some(&v[..i]), Some(&v[i + 1..])),
            None => (Some(v), None),
        }
    };
    if let Some(h) = host {
        if !h.iter().all(|&b| unreserved(b) || sub_delim(b)) {
            return false;
        }
    }
    match port {
        None => true,
        Some(p) => {
            p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && p.iter()
                    .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'))
                    <= 65535
        }
    }
}

/// Fuzz invariant of the normaliser: for any bytes, it never panics; an
/// accepted target is in origin form, its path starts with `/`, contains no
/// `//`, no `.` or `..` segment (literal or encoded), no byte a path may
/// not carry literally, and normalising it again changes nothing
/// (idempotence); an authority it returns is itself a valid Host value.
#[doc(hidden)]
pub fn check_uri_invariants(data: &[u8]) {
    let _ = valid_authority(data);
    let Ok(t) = normalize_target(data) else {
        return;
    };
    let pq = &t.path_and_query[..];
    let path = pq.split(|&b| b == b'?').next().unwrap_or(b"");
    assert!(path.starts_with(b"/"), "not origin form: {pq:?}");
    assert!(
        !path.windows(2).any(|w| w == b"//"),
        "repeated slash: {pq:?}"
    );
    for seg in path.split(|&b| b == b'/') {
        assert!(dot_segment(seg).is_none(), "dot-segment left: {pq:?}");
    }
    assert!(
        !path.windows(3).any(|w| w.eq_ignore_ascii_case(b"%2e")),
        "encoded dot left: {pq:?}"
    );
    assert!(
        path.iter().all(|&b| path_literal(b) || b == b'%'),
        "raw byte left: {pq:?}"
    );
    let again = normalize_target(pq).expect("a normal target is accepted");
    assert_eq!(&again.path_and_query[..], pq, "not idempotent");
    assert_eq!(again.authority, None);
    if let Some(a) = t.authority {
        assert!(valid_authority(a));
    }
}

#[cfg(test)]
mod tests;
