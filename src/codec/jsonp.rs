//! JSON-P as Pushpin does it on routes with automatic cross-origin: a GET
//! whose query names a callback is rewritten (`_method`, `_headers`, the
//! callback removed from the query) and its answer is wrapped as a script,
//! `/**/CALLBACK(...);`, always `200 OK`, `application/javascript`.
//!
//! Two wrappings, as Pushpin's two code paths write them: a proxied (or
//! locally answered) response is wrapped "code first, spaced", a held
//! long-poll's final response "sorted, compact". The callback is stricter
//! than Pushpin's: a JavaScript identifier path (`a`, `a.b`, `_jp.a1$`),
//! 1 to [`MAX_CALLBACK`] bytes, so no request can put script of its own
//! into the answer.

use super::http1::{
    parse_request, parse_response, HeadLimits, RequestHead, Version, MAX_HEADERS_CEILING,
};

/// Longest callback accepted.
pub const MAX_CALLBACK: usize = 128;

/// A route's JSON-P options (defaults: `extended`, `callback`).
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub basic: bool,
    /// The callback's query parameter (`jsonp_cb`).
    pub callback_param: &'a str,
    /// `jsonp_defmethod`.
    pub default_method: Option<&'a str>,
    /// `jsonp_body`: the query parameter holding the request body (sent
    /// as `application/json`); without it, `_body` is read instead.
    pub body_param: Option<&'a str>,
    /// `jsonp_defcb`: the callback when the query names none, used only
    /// for a request carrying the `jsonp_body` parameter (as in Pushpin).
    pub default_callback: Option<&'a str>,
}

impl Default for Settings<'_> {
    fn default() -> Self {
        Settings {
            basic: false,
            callback_param: "callback",
            default_method: None,
            body_param: None,
            default_callback: None,
        }
    }
}

/// A JSON-P request: what goes upstream, and how its answer is wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub callback: String,
    pub extended: bool,
    /// The method sent upstream.
    pub method: String,
    /// Fields from `_headers`, sent first (`Host` and `Accept` skipped).
    pub headers: Vec<(String, String)>,
    /// The query left once the JSON-P parameters are removed (`None`: no
    /// `?` at all).
    pub query: Option<String>,
    /// The request body taken from the query (`jsonp_body` or `_body`).
    pub body: Option<Vec<u8>>,
}

/// Why a JSON-P request is refused (400, Pushpin's messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Callback,
    Method,
    Headers,
    /// The `jsonp_body` parameter is empty or badly encoded.
    Body,
    /// The `_body` parameter is empty or badly encoded.
    UnderscoreBody,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Callback => "Invalid callback parameter.",
            Refusal::Method => "Invalid _method parameter.",
            Refusal::Headers => "Invalid _headers parameter.",
            Refusal::Body => "Invalid body parameter.",
            Refusal::UnderscoreBody => "Invalid _body parameter.",
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Strict percent-decoding: `%` needs two hex digits; `+` stays `+`.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A JavaScript identifier path: identifiers (`[A-Za-z_$][A-Za-z0-9_$]*`)
/// joined by dots, 1 to `MAX_CALLBACK` bytes.
pub fn valid_callback(cb: &[u8]) -> bool {
    let ident = |s: &[u8]| {
        s.first()
            .is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_' || c == b'$')
            && s.iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
    };
    !cb.is_empty() && cb.len() <= MAX_CALLBACK && cb.split(|&c| c == b'.').all(ident)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field value corepin writes upstream: no control but tab.
fn clean_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

/// The JSON-P reading of a request, or `None` when it is not one (not a
/// GET, or no callback and no default). `query` is the raw query string.
pub fn plan(s: &Settings<'_>, method: &str, query: Option<&str>) -> Result<Option<Plan>, Refusal> {
    if method != "GET" {
        return Ok(None);
    }
    let pairs: Vec<(&str, &str)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let first = |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    // Pushpin: a callback in the query, or else `jsonp_defcb` for a
    // request that carries the `jsonp_body` parameter.
    let raw_body = s.body_param.and_then(first);
    let callback = match (first(s.callback_param), s.default_callback) {
        (Some(raw), _) => percent_decode(raw).ok_or(Refusal::Callback)?,
        (None, Some(def)) if raw_body.is_some() => def.as_bytes().to_vec(),
        (None, _) => return Ok(None),
    };
    if !valid_callback(&callback) {
        return Err(Refusal::Callback);
    }
    let callback = String::from_utf8(callback).map_err(|_| Refusal::Callback)?;
    let method = match first("_method") {
        Some(raw) => {
            let m = percent_decode(raw).ok_or(Refusal::Method)?;
            if m.is_empty() || !m.iter().all(|&b| is_tchar(b)) {
                return Err(Refusal::Method);
            }
            String::from_utf8(m).map_err(|_| Refusal::Method)?
        }
        None => s
            .default_method
            .unwrap_or(if s.basic { "POST" } else { "GET" })
            .to_string(),
    };
    let mut headers = Vec::new();
    if let Some(raw) = first("_headers") {
        let text = percent_decode(raw).ok_or(Refusal::Headers)?;
        let v: serde_json::Value = serde_json::from_slice(&text).map_err(|_| Refusal::Headers)?;
        let obj = v.as_object().ok_or(Refusal::Headers)?;
        for (name, value) in obj {
            let value = value.as_str().ok_or(Refusal::Headers)?;
            if name.is_empty() || !name.bytes().all(is_tchar) || !clean_value(value) {
                return Err(Refusal::Headers);
            }
            // corepin frames the request itself: a body's length in
            // `_headers` would have the backend wait for bytes never sent.
            if FRAMING.iter().any(|f| name.eq_ignore_ascii_case(f)) {
                return Err(Refusal::Headers);
            }
            if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("accept") {
                continue;
            }
            headers.push((name.clone(), value.trim().to_string()));
        }
    }
    // The body: `jsonp_body`'s parameter (then `Content-Type:
    // application/json` replaces one from `_headers`), or else `_body`.
    let body_name = s.body_param.unwrap_or("_body");
    let body = match (s.body_param, raw_body, first("_body")) {
        (Some(_), Some(raw), _) => {
            let b = percent_decode(raw)
                .filter(|b| !b.is_empty())
                .ok_or(Refusal::Body)?;
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
            headers.push(("Content-Type".into(), "application/json".into()));
            Some(b)
        }
        (None, _, Some(raw)) => Some(
            percent_decode(raw)
                .filter(|b| !b.is_empty())
                .ok_or(Refusal::UnderscoreBody)?,
        ),
        _ => None,
    };
    let removed = [s.callback_param, "_method", "_headers", body_name];
    let rest: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !removed.contains(&name)
        })
        .collect();
    Ok(Some(Plan {
        callback,
        extended: !s.basic,
        method,
        headers,
        query: (!rest.is_empty()).then(|| rest.join("&")),
        body,
    }))
}

/// Request fields that frame a body: corepin writes them, `_headers`
/// may not.
const FRAMING: &[&str] = &["content-length", "transfer-encoding"];

/// The request sent upstream for a JSON-P request `head` (a GET on
/// `path`): Pushpin's order of fields, `_headers` first, then `Host`,
/// `Accept: */*`, then the client's own but `Host` and `Accept`. `None`
/// when the result is not a valid request head.
pub fn upstream_head(p: &Plan, head: &RequestHead, path: &str) -> Option<RequestHead> {
    let version = if head.version == Version::Http10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut raw = format!("{} {path}", p.method);
    if let Some(q) = &p.query {
        raw.push('?');
        raw.push_str(q);
    }
    raw.push(' ');
    raw.push_str(version);
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    let mut field = |n: &[u8], v: &[u8]| {
        raw.extend_from_slice(n);
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(v);
        raw.extend_from_slice(b"\r\n");
    };
    for (n, v) in &p.headers {
        field(n.as_bytes(), v.as_bytes());
    }
    if let Some(b) = &p.body {
        field(b"Content-Length", b.len().to_string().as_bytes());
    }
    if let Some(h) = head.fields.get("host") {
        field(b"Host", h);
    }
    field(b"Accept", b"*/*");
    for (n, v) in head.fields.iter() {
        let framing = FRAMING.iter().any(|f| n.eq_ignore_ascii_case(f.as_bytes()));
        if !n.eq_ignore_ascii_case(b"host") && !n.eq_ignore_ascii_case(b"accept") && !framing {
            field(n, v);
        }
    }
    raw.extend_from_slice(b"\r\n");
    let limits = HeadLimits {
        max_head_bytes: raw.len() + 1,
        max_headers: MAX_HEADERS_CEILING,
        max_uri_bytes: raw.len(),
    };
    match parse_request(&raw, &limits) {
        Ok(Some((n, h))) if n == raw.len() => Some(h),
        _ => None,
    }
}

fn json_str(b: &[u8]) -> String {
    serde_json::Value::String(String::from_utf8_lossy(b).into_owned()).to_string()
}

/// One trailing CRLF or LF removed (basic mode).
fn trim_newline(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r\n")
        .or_else(|| b.strip_suffix(b"\n"))
        .unwrap_or(b)
}

/// Fields dropped from an extended envelope's `headers` on the proxied
/// path (Pushpin removes them before wrapping), and corepin's framing.
const NOT_IN_ENVELOPE: &[&str] = &[
    "connection",
    "keep-alive",
    "content-encoding",
    "transfer-encoding",
];

/// The script for a proxied response: extended
/// `/**/CB({"code": C, "reason": "R", "headers": {...}, "body": "B"});`
/// (headers sorted, each name's first value) or basic `/**/CB(BODY);`.
pub fn script_proxied(
    p: &Plan,
    status: u16,
    reason: &str,
    fields: &[(&[u8], &[u8])],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("/**/{}(", p.callback).into_bytes();
    if p.extended {
        let mut h = serde_json::Map::new();
        for (n, v) in fields {
            let n = String::from_utf8_lossy(n).into_owned();
            if NOT_IN_ENVELOPE.iter().any(|x| n.eq_ignore_ascii_case(x)) || h.contains_key(&n) {
                continue;
            }
            h.insert(n, String::from_utf8_lossy(v).into_owned().into());
        }
        let headers = serde_json::Value::Object(h).to_string();
        out.extend_from_slice(
            format!(
                "{{\"code\": {status}, \"reason\": {}, \"headers\": {headers}, \"body\": {}}}",
                json_str(reason.as_bytes()),
                json_str(body)
            )
            .as_bytes(),
        );
    } else {
        out.extend_from_slice(trim_newline(body));
    }
    out.extend_from_slice(b");\n");
    out
}

/// The script for a held long-poll's final response: extended
/// `/**/CB({"body":…,"code":…,"headers":{…},"reason":…});` (compact, keys
/// sorted, names merged ignoring case with values joined by `, `) or basic.
pub fn script_held(
    p: &Plan,
    status: u16,
    reason: &str,
    fields: &[(&[u8], &[u8])],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("/**/{}(", p.callback).into_bytes();
    if p.extended {
        let mut merged: Vec<(String, String)> = Vec::new();
        for (n, v) in fields {
            let n = String::from_utf8_lossy(n).into_owned();
            if n.eq_ignore_ascii_case("content-length")
                || NOT_IN_ENVELOPE.iter().any(|x| n.eq_ignore_ascii_case(x))
            {
                continue;
            }
            let v = String::from_utf8_lossy(v).into_owned();
            match merged.iter_mut().find(|(m, _)| m.eq_ignore_ascii_case(&n)) {
                Some((_, all)) => {
                    all.push_str(", ");
                    all.push_str(&v);
                }
                None => merged.push((n, v)),
            }
        }
        let h: serde_json::Map<String, serde_json::Value> =
            merged.into_iter().map(|(n, v)| (n, v.into())).collect();
        let env = serde_json::json!({
            "body": String::from_utf8_lossy(body),
            "code": status,
            "headers": h,
            "reason": reason,
        });
        out.extend_from_slice(env.to_string().as_bytes());
    } else {
        out.extend_from_slice(trim_newline(body));
    }
    out.extend_from_slice(b");\n");
    out
}

/// Rewrites the complete response `resp` (head and whole body, as corepin
/// wrote it) into its JSON-P form: `200 OK`, `application/javascript`, the
/// script as body. A proxied response keeps only `Cache-Control`; a held
/// one keeps its fields but `Content-Length` and `Content-Type`. Either
/// keeps the `Connection` field corepin wrote. `None` when `resp` is not
/// one complete response.
pub fn wrap_response(p: &Plan, held: bool, resp: &[u8]) -> Option<Vec<u8>> {
    let limits = HeadLimits {
        max_head_bytes: resp.len().max(1),
        max_headers: MAX_HEADERS_CEILING,
        max_uri_bytes: 16,
    };
    let (n, head) = parse_response(resp, &limits, false).ok()??;
    let body = &resp[n..];
    let fields: Vec<(&[u8], &[u8])> = head.fields.iter().collect();
    let script = if held {
        script_held(p, head.status, head.reason(), &fields, body)
    } else {
        script_proxied(p, head.status, head.reason(), &fields, body)
    };
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/javascript\r\n".to_vec();
    for (name, value) in &fields {
        let keep = if name.eq_ignore_ascii_case(b"connection") {
            true
        } else if held {
            !name.eq_ignore_ascii_case(b"content-length")
                && !name.eq_ignore_ascii_case(b"content-type")
        } else {
            name.eq_ignore_ascii_case(b"cache-control")
        };
        if keep {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", script.len()).as_bytes());
    out.extend_from_slice(&script);
    Some(out)
}

/// Fuzz invariant: whatever the query, a plan's method and header names
/// are tokens, its values hold no CR, LF or NUL, and its callback is a
/// valid identifier path; wrapping any response then yields one response
/// whose body starts `/**/CALLBACK(`.
#[doc(hidden)]
pub fn check_invariants(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (query, resp) = text.split_once('\u{0}').unwrap_or((&text, ""));
    for basic in [false, true] {
        let s = Settings {
            basic,
            body_param: basic.then_some("b"),
            default_callback: basic.then_some("dcb"),
            ..Settings::default()
        };
        let Ok(Some(p)) = plan(&s, "GET", Some(query)) else {
            continue;
        };
        assert!(valid_callback(p.callback.as_bytes()));
        assert!(!p.method.is_empty() && p.method.bytes().all(is_tchar));
        for (n, v) in &p.headers {
            assert!(n.bytes().all(is_tchar));
            assert!(!v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
            assert!(!FRAMING.iter().any(|f| n.eq_ignore_ascii_case(f)));
        }
        assert!(p.body.as_ref().is_none_or(|b| !b.is_empty()));
        if let Some(out) = wrap_response(&p, basic, resp.as_bytes()) {
            let prefix = format!("/**/{}(", p.callback);
            let split = out.windows(4).position(|w| w == b"\r\n\r\n");
            assert!(split.is_some_and(|i| out[i + 4..].starts_with(prefix.as_bytes())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Settings<'static> {
        Settings::default()
    }

    #[test]
    fn plans() {
        let p = plan(&s(), "GET", Some("a=1&callback=cb.x&b=2&callback=other"))
            .expect("valid")
            .expect("jsonp");
        assert_eq!(p.callback, "cb.x");
        assert_eq!(p.method, "GET");
        assert_eq!(p.query.as_deref(), Some("a=1&b=2"));
        assert!(p.extended);
        let p = plan(
            &s(),
            "GET",
            Some("callback=f&_method=DELETE&_headers=%7B%22X-A%22%3A%221%22%2C%22Host%22%3A%22h%22%7D"),
        )
        .expect("valid")
        .expect("jsonp");
        assert_eq!(p.method, "DELETE");
        assert_eq!(p.headers, vec![("X-A".to_string(), "1".to_string())]);
        assert_eq!(p.query, None);
        // Basic mode defaults to POST; jsonp_defmethod overrides it.
        let basic = Settings {
            basic: true,
            callback_param: "cb",
            ..s()
        };
        let p = plan(&basic, "GET", Some("cb=f"))
            .expect("ok")
            .expect("jsonp");
        assert_eq!((p.method.as_str(), p.extended), ("POST", false));
        let def = Settings {
            default_method: Some("PUT"),
            ..basic
        };
        assert_eq!(
            plan(&def, "GET", Some("cb=f"))
                .expect("ok")
                .expect("jsonp")
                .method,
            "PUT"
        );
        // Not JSON-P: another method, or no callback.
        assert_eq!(plan(&s(), "POST", Some("callback=f")), Ok(None));
        assert_eq!(plan(&s(), "GET", Some("cb=f")), Ok(None));
        assert_eq!(plan(&s(), "GET", None), Ok(None));
    }

    #[test]
    fn bodies_from_the_query() {
        let b = Settings {
            basic: true,
            body_param: Some("bp"),
            default_callback: Some("jpcb"),
            ..s()
        };
        // `jsonp_body` without a callback: `jsonp_defcb`, the body as JSON
        // (replacing a `_headers` Content-Type), the parameter removed.
        let p = plan(
            &b,
            "GET",
            Some("x=1&bp=%7B%22a%22%3A1%7D&_headers=%7B%22content-type%22%3A%22text%2Fplain%22%7D"),
        )
        .expect("ok")
        .expect("jsonp");
        assert_eq!(p.callback, "jpcb");
        assert_eq!(p.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(
            p.headers,
            vec![("Content-Type".to_string(), "application/json".to_string())]
        );
        assert_eq!(p.query.as_deref(), Some("x=1"));
        // A query callback wins over the default.
        let p = plan(&b, "GET", Some("callback=f&bp=1"))
            .expect("ok")
            .expect("jsonp");
        assert_eq!(p.callback, "f");
        // Neither a callback nor the body parameter: not JSON-P.
        assert_eq!(plan(&b, "GET", Some("x=1")), Ok(None));
        // With jsonp_body set, `_body` is an ordinary parameter.
        let p = plan(&b, "GET", Some("callback=f&_body=z"))
            .expect("ok")
            .expect("jsonp");
        assert_eq!((p.body, p.query.as_deref()), (None, Some("_body=z")));
        for q in ["bp=", "bp=%zz", "callback=f&bp="] {
            assert_eq!(plan(&b, "GET", Some(q)), Err(Refusal::Body), "{q}");
        }
        // Without jsonp_body, `_body` is the body, no Content-Type added;
        // `jsonp_defcb` alone does nothing.
        let d = Settings {
            default_callback: Some("jpcb"),
            ..s()
        };
        assert_eq!(plan(&d, "GET", Some("_body=x")), Ok(None));
        let p = plan(&d, "GET", Some("callback=f&_body=a%20b"))
            .expect("ok")
            .expect("jsonp");
        assert_eq!((p.body.as_deref(), p.headers.len()), (Some(&b"a b"[..]), 0));
        assert_eq!(p.query, None);
    }

    #[test]
    fn upstream_head_carries_the_body_length() {
        let limits = HeadLimits {
            max_head_bytes: 4096,
            max_headers: 32,
            max_uri_bytes: 1024,
        };
        let raw = b"GET /j?bp=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nX-C: 1\r\n\r\n";
        let (_, head) = parse_request(raw, &limits).expect("ok").expect("head");
        let p = Plan {
            body: Some(b"[1,2]".to_vec()),
            headers: vec![("Content-Type".into(), "application/json".into())],
            ..p(false)
        };
        let up = upstream_head(&p, &head, "/j").expect("head");
        let names: Vec<String> = up
            .fields
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "Content-Type=application/json",
                "Content-Length=5",
                "Host=h",
                "Accept=*/*",
                "X-C=1"
            ]
        );
        assert_eq!(up.body, super::super::http1::BodyKind::Length(5));
    }

    #[test]
    fn refusals() {
        for (q, r) in [
            ("callback=", Refusal::Callback),
            ("callback=%zz", Refusal::Callback),
            ("callback=alert(1)", Refusal::Callback),
            ("callback=a%0d%0ab", Refusal::Callback),
            ("callback=a%00", Refusal::Callback),
            ("callback=1a", Refusal::Callback),
            ("callback=a..b", Refusal::Callback),
            ("callback=a.", Refusal::Callback),
            ("callback=a[0]", Refusal::Callback),
            ("callback=f&_method=", Refusal::Method),
            ("callback=f&_method=GE%20T", Refusal::Method),
            ("callback=f&_method=G%0D", Refusal::Method),
            ("callback=f&_headers=[]", Refusal::Headers),
            ("callback=f&_headers=%7B%22a%22%3A1%7D", Refusal::Headers),
            (
                "callback=f&_headers=%7B%22a%22%3A%22x%5Cr%5Cny%22%7D",
                Refusal::Headers,
            ),
            (
                "callback=f&_headers=%7B%22a%20b%22%3A%22x%22%7D",
                Refusal::Headers,
            ),
            ("callback=f&_body=", Refusal::UnderscoreBody),
            ("callback=f&_body=%4", Refusal::UnderscoreBody),
            (
                "callback=f&_headers=%7B%22Content-Length%22%3A%225%22%7D",
                Refusal::Headers,
            ),
            (
                "callback=f&_headers=%7B%22transfer-encoding%22%3A%22chunked%22%7D",
                Refusal::Headers,
            ),
        ] {
            assert_eq!(plan(&s(), "GET", Some(q)), Err(r), "{q}");
        }
        let long = format!("callback={}", "a".repeat(MAX_CALLBACK + 1));
        assert_eq!(plan(&s(), "GET", Some(&long)), Err(Refusal::Callback));
        let ok = format!("callback={}", "a".repeat(MAX_CALLBACK));
        assert!(plan(&s(), "GET", Some(&ok)).is_ok_and(|p| p.is_some()));
        assert!(valid_callback(b"_jp.a123$"));
    }

    fn p(extended: bool) -> Plan {
        Plan {
            callback: "cb".into(),
            extended,
            method: "GET".into(),
            headers: Vec::new(),
            query: None,
            body: None,
        }
    }

    const RESP: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nX-B: 1\r\nx-b: 2\r\nCache-Control: no-cache\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{\"a\":1}\n";

    #[test]
    fn proxied_wrapping() {
        let out = wrap_response(&p(true), false, RESP).expect("wrapped");
        let body = "/**/cb({\"code\": 404, \"reason\": \"Not Found\", \"headers\": {\"Cache-Control\":\"no-cache\",\"Content-Length\":\"8\",\"Content-Type\":\"application/json\",\"X-B\":\"1\",\"x-b\":\"2\"}, \"body\": \"{\\\"a\\\":1}\\n\"});\n";
        let want = format!("HTTP/1.1 200 OK\r\nContent-Type: application/javascript\r\nCache-Control: no-cache\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        assert_eq!(String::from_utf8_lossy(&out), want);
        let out = wrap_response(&p(false), false, RESP).expect("wrapped");
        assert!(out.ends_with(b"\r\n\r\n/**/cb({\"a\":1});\n"));
    }

    #[test]
    fn held_wrapping() {
        let out = wrap_response(&p(true), true, RESP).expect("wrapped");
        let body = "/**/cb({\"body\":\"{\\\"a\\\":1}\\n\",\"code\":404,\"headers\":{\"Cache-Control\":\"no-cache\",\"Content-Type\":\"application/json\",\"X-B\":\"1, 2\"},\"reason\":\"Not Found\"});\n";
        let want = format!("HTTP/1.1 200 OK\r\nContent-Type: application/javascript\r\nX-B: 1\r\nx-b: 2\r\nCache-Control: no-cache\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        assert_eq!(String::from_utf8_lossy(&out), want);
    }

    #[test]
    fn incomplete_response_is_not_wrapped() {
        assert_eq!(wrap_response(&p(true), false, b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn decode_split_at_every_offset() {
        // The decoder over every prefix: a cut inside an escape is an
        // error, never a panic or a wrong byte.
        let q = "a%41%4a+%2B";
        for i in 0..=q.len() {
            let part = &q[..i];
            match percent_decode(part) {
                Some(v) => assert!(b"aAJ++".starts_with(&v), "{part}"),
                None => assert!(part[part.len().saturating_sub(2)..].contains('%'), "{part}"),
            }
        }
        assert_eq!(percent_decode(q).as_deref(), Some(&b"aAJ++"[..]));
    }

    #[test]
    fn upstream_request() {
        let raw = b"GET /j/x?callback=f&_method=PUT&z=1&_headers=%7B%22X-A%22%3A%221%22%7D HTTP/1.1\r\nAccept: text/html\r\nHost: h:1\r\nX-A: 0\r\n\r\n";
        let Ok(Some((_, head))) = parse_request(raw, &HeadLimits::default()) else {
            panic!("test request");
        };
        let p = plan(&s(), head.method(), head.query())
            .expect("ok")
            .expect("jsonp");
        let up = upstream_head(&p, &head, head.path()).expect("valid");
        assert_eq!((up.method(), up.target()), ("PUT", "/j/x?z=1"));
        let fields: Vec<(&[u8], &[u8])> = up.fields.iter().collect();
        assert_eq!(
            fields,
            vec![
                (&b"X-A"[..], &b"1"[..]),
                (b"Host", b"h:1"),
                (b"Accept", b"*/*"),
                (b"X-A", b"0"),
            ]
        );
    }

    #[test]
    fn invariants_hold_on_samples() {
        for d in [
            &b"callback=a&_headers=%7B%7D\0HTTP/1.1 200 OK\r\n\r\nx"[..],
            b"callback=\xff",
            b"\0",
            b"callback=a.b\0HTTP/1.1 200 OK\r\nA: \xff\r\nContent-Length: 1\r\n\r\n\xff",
        ] {
            check_invariants(d);
        }
    }
}
