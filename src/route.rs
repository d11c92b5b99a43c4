//! Routes: the Pushpin routes-line syntax parsed into typed rules, and the
//! decision `(host, path, protocol) -> route` with the path rewrite. Pure
//! policy: no bytes on the wire, no sockets.

use std::borrow::Cow;
use std::fmt;

use crate::codec::uri::normalize_path;

/// Which protocol a route condition accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Any,
    Http,
    Ws,
}

/// Where matching requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in test target (GRIP.md §5), answered locally.
    Test,
    /// An HTTP backend at `host:port`.
    Backend(Backend),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `host:port` as written; resolved when connecting.
    pub addr: String,
    /// WebSocket clients are converted to WebSocket-over-HTTP requests.
    pub over_http: bool,
    /// Host header sent to the backend instead of the client's.
    pub host: Option<String>,
    /// The target is a GRIP subscriber (`sub`): accepted for compatibility.
    pub sub: bool,
}

/// One routes line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `None` for `*`; otherwise a lower-case host name.
    pub host: Option<String>,
    pub path_beg: Option<String>,
    /// Characters removed from the start of the path before forwarding.
    pub path_rem: usize,
    /// Replacement for the matched `path_beg` prefix.
    pub replace_beg: Option<String>,
    pub proto: Proto,
    /// The Grip-Sig key, decoded once when the line is parsed
    /// (`base64:` text is decoded; anything else is used as its bytes).
    pub sig_key: Option<Vec<u8>>,
    pub sig_iss: Option<String>,
    /// Prefix added to channel names of this route's subscriptions.
    pub prefix: Option<String>,
    /// Tried in order: later ones are failovers.
    pub targets: Vec<Target>,
    /// The line as written, for logs and `check`.
    pub line: String,
}

/// A routes-line error: what was wrong, and in which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError(pub String);

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: String) -> Result<T, RouteError> {
    Err(RouteError(msg))
}

/// Splits `name=value` or a bare flag.
fn prop(token: &str) -> (&str, Option<&str>) {
    match token.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (token, None),
    }
}

fn need<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, RouteError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => err(format!("'{name}' needs a value ({name}=...)")),
    }
}

fn parse_target(token: &str) -> Result<Target, RouteError> {
    let mut parts = token.split(',');
    let addr = parts.next().unwrap_or("");
    if addr == "test" {
        if let Some(p) = parts.next() {
            return err(format!("target 'test' takes no properties (got '{p}')"));
        }
        return Ok(Target::Test);
    }
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return err(format!("target '{addr}' is not host:port or 'test'"));
    }
    let mut backend = Backend {
        addr: addr.to_string(),
        over_http: false,
        host: None,
        sub: false,
    };
    for p in parts {
        match prop(p) {
            ("over_http", None) => backend.over_http = true,
            ("sub", None) => backend.sub = true,
            ("host", v) => backend.host = Some(need("host", v)?.to_string()),
            ("ssl", _) => {
                return err(format!(
                    "target '{addr}': 'ssl' (TLS to backends) is not supported yet"
                ))
            }
            (name, _) => return err(format!("unknown target property '{name}'")),
        }
    }
    Ok(Target::Backend(backend))
}

/// Parses one routes line. Comments (`#`) and blank lines give `Ok(None)`.
pub fn parse_line(line: &str) -> Result<Option<Route>, RouteError> {
    let text = line.split('#').next().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    let mut tokens = text.split_whitespace();
    let cond = tokens.next().unwrap_or("");
    let mut parts = cond.split(',');
    let host = match parts.next().unwrap_or("") {
        "*" => None,
        "" => return err("empty route condition".into()),
        h => Some(h.to_ascii_lowercase()),
    };
    let mut route = Route {
        host,
        path_beg: None,
        path_rem: 0,
        replace_beg: None,
        proto: Proto::Any,
        sig_key: None,
        sig_iss: None,
        prefix: None,
        targets: Vec::new(),
        line: text.to_string(),
    };
    for p in parts {
        match prop(p) {
            ("path_beg", v) => {
                let v = need("path_beg", v)?;
                if !v.starts_with('/') {
                    return err(format!("path_beg '{v}' must start with '/'"));
                }
                // Requests are matched in normal form: a prefix that is not
                // in it could never match (or would match differently).
                match normalize_path(v.as_bytes()) {
                    Ok(n) if *n == *v.as_bytes() => {}
                    Ok(n) => {
                        return err(format!(
                            "path_beg '{v}' is not in normal form (requests are matched as '{}')",
                            String::from_utf8_lossy(&n)
                        ))
                    }
                    Err(e) => return err(format!("path_beg '{v}': {e}")),
                }
                route.path_beg = Some(v.to_string());
            }
            ("path_rem", v) => {
                let v = need("path_rem", v)?;
                route.path_rem = v
                    .parse()
                    .map_err(|_| RouteError(format!("path_rem '{v}' is not a number")))?;
            }
            ("replace_beg", v) => route.replace_beg = Some(need("replace_beg", v)?.to_string()),
            ("proto", Some("http")) => route.proto = Proto::Http,
            ("proto", Some("ws")) => route.proto = Proto::Ws,
            ("proto", v) => return err(format!("proto '{}' is not http or ws", v.unwrap_or(""))),
            ("sig_key", v) => {
                let key = crate::jwt::key_bytes(need("sig_key", v)?)
                    .map_err(|e| RouteError(format!("sig_key: {e}")))?;
                route.sig_key = Some(key);
            }
            ("sig_iss", v) => route.sig_iss = Some(need("sig_iss", v)?.to_string()),
            ("prefix", v) => route.prefix = Some(need("prefix", v)?.to_string()),
            (name, _) => return err(format!("unknown route property '{name}'")),
        }
    }
    if route.replace_beg.is_some() && route.path_beg.is_none() {
        return err("replace_beg needs path_beg".into());
    }
    for t in tokens {
        route.targets.push(parse_target(t)?);
    }
    if route.targets.is_empty() {
        return err(format!("route '{text}' has no target"));
    }
    Ok(Some(route))
}

/// An ordered routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// Parses every line; errors name the line number (1-based).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Routes, RouteError> {
        Self::parse_indexed(lines).map_err(|(i, e)| RouteError(format!("line {}: {e}", i + 1)))
    }

    /// Parses every line; an error comes with the index (0-based) of the
    /// line it is about, for the caller to name.
    pub fn parse_indexed<'a>(
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<Routes, (usize, RouteError)> {
        let mut routes = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            match parse_line(line) {
                Ok(Some(r)) => routes.push(r),
                Ok(None) => {}
                Err(e) => return Err((i, e)),
            }
        }
        Ok(Routes { routes })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for a request: routes naming the request's host first,
    /// then `*` routes, each group in file order.
    pub fn select(&self, host: Option<&str>, path: &str, ws: bool) -> Option<&Route> {
        let fits = |r: &&Route| {
            r.path_beg.as_deref().is_none_or(|b| path.starts_with(b))
                && match r.proto {
                    Proto::Any => true,
                    Proto::Http => !ws,
                    Proto::Ws => ws,
                }
        };
        let by_host = host.and_then(|h| {
            self.routes
                .iter()
                .filter(|r| {
                    r.host
                        .as_deref()
                        .is_some_and(|rh| rh.eq_ignore_ascii_case(h))
                })
                .find(fits)
        });
        by_host.or_else(|| self.routes.iter().filter(|r| r.host.is_none()).find(fits))
    }
}

impl Route {
    /// The path (and query) sent to the backend for a client `target` (in
    /// normal form, see `codec::uri`): the rewrite, with its path put back
    /// in normal form (cutting `path_rem` characters can leave `/./`).
    pub fn rewrite(&self, target: &str) -> String {
        let out = self.rewrite_raw(target);
        let (path, query) = out.split_at(out.find('?').unwrap_or(out.len()));
        match normalize_path(path.as_bytes()) {
            Ok(Cow::Owned(p)) => format!("{}{query}", String::from_utf8_lossy(&p)),
            _ => out,
        }
    }

    fn rewrite_raw(&self, target: &str) -> String {
        if let (Some(beg), Some(rep)) = (&self.path_beg, &self.replace_beg) {
            if let Some(rest) = target.strip_prefix(beg.as_str()) {
                return format!("{rep}{rest}");
            }
        }
        if self.path_rem > 0 {
            let cut = target
                .char_indices()
                .nth(self.path_rem)
                .map_or(target.len(), |(i, _)| i);
            let rest = &target[cut..];
            return if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            };
        }
        target.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Route {
        parse_line(line).expect("valid").expect("a route")
    }

    #[test]
    fn parses_the_documented_forms() {
        let r = one("*  127.0.0.1:8000");
        assert_eq!(r.host, None);
        assert_eq!(
            r.targets,
            vec![Target::Backend(Backend {
                addr: "127.0.0.1:8000".into(),
                over_http: false,
                host: None,
                sub: false
            })]
        );
        let r = one("api.example.com,path_beg=/events/ 127.0.0.1:8000");
        assert_eq!(r.host.as_deref(), Some("api.example.com"));
        assert_eq!(r.path_beg.as_deref(), Some("/events/"));
        let r = one("*,proto=ws 127.0.0.1:8000,over_http");
        assert_eq!(r.proto, Proto::Ws);
        assert!(matches!(&r.targets[0], Target::Backend(b) if b.over_http));
        assert_eq!(one("* test").targets, vec![Target::Test]);
        let r = one("*,sig_key=base64:c2VjcmV0,sig_iss=me,prefix=p- a:1,host=x.y b:2 # comment");
        assert_eq!(r.sig_key.as_deref(), Some(&b"secret"[..]));
        assert_eq!(
            one("*,sig_key=plain a:1").sig_key.as_deref(),
            Some(&b"plain"[..])
        );
        assert_eq!(r.sig_iss.as_deref(), Some("me"));
        assert_eq!(r.prefix.as_deref(), Some("p-"));
        assert_eq!(r.targets.len(), 2);
        assert!(matches!(&r.targets[0], Target::Backend(b) if b.host.as_deref() == Some("x.y")));
        assert_eq!(parse_line("  # only a comment"), Ok(None));
        assert_eq!(parse_line(""), Ok(None));
    }

    #[test]
    fn rejects_with_a_reason() {
        for (line, needle) in [
            ("*", "no target"),
            ("* localhost", "host:port"),
            ("* localhost:0", "host:port"),
            ("* localhost:99999", "host:port"),
            ("*,bogus=1 a:1", "unknown route property 'bogus'"),
            ("* a:1,bogus", "unknown target property 'bogus'"),
            ("*,proto=ftp a:1", "proto 'ftp'"),
            ("*,path_beg=x a:1", "must start with '/'"),
            (
                "*,path_beg=/a//b a:1",
                "normal form (requests are matched as '/a/b')",
            ),
            ("*,path_beg=/a/../b a:1", "normal form"),
            ("*,path_beg=/%61 a:1", "matched as '/a'"),
            ("*,path_beg=/a%zz a:1", "invalid percent-encoding"),
            ("*,path_rem=x a:1", "not a number"),
            ("*,replace_beg=/x a:1", "needs path_beg"),
            ("* a:1,ssl", "not supported"),
            ("* test,over_http", "no properties"),
            (
                "*,sig_key=base64:!! a:1",
                "sig_key: key after 'base64:' is not valid base64",
            ),
            ("*,sig_key= a:1", "'sig_key' needs a value"),
        ] {
            let e = parse_line(line).expect_err(line).0;
            assert!(e.contains(needle), "{line}: {e}");
        }
        let e = Routes::parse(["* a:1", "*,x=1 a:1"]).expect_err("bad line");
        assert!(e.0.starts_with("line 2:"), "{e}");
    }

    #[test]
    fn selection_prefers_host_then_order() {
        let routes = Routes::parse([
            "*,path_beg=/ws,proto=ws a:1,over_http",
            "*,path_beg=/api b:1",
            "api.example.com c:1",
            "* test",
        ])
        .expect("valid");
        let pick = |h: Option<&str>, p: &str, ws: bool| {
            routes
                .select(h, p, ws)
                .map(|r| r.line.split(' ').nth(1).unwrap_or("").to_string())
        };
        assert_eq!(
            pick(Some("API.example.com"), "/api/x", false).as_deref(),
            Some("c:1")
        );
        assert_eq!(pick(Some("other"), "/api/x", false).as_deref(), Some("b:1"));
        assert_eq!(pick(None, "/ws/1", true).as_deref(), Some("a:1,over_http"));
        assert_eq!(pick(None, "/ws/1", false).as_deref(), Some("test"));
        assert_eq!(pick(None, "/", false).as_deref(), Some("test"));
        let none = Routes::parse(["*,path_beg=/a b:1"]).expect("valid");
        assert!(none.select(None, "/b", false).is_none());
    }

    #[test]
    fn rewrites_paths() {
        let r = one("*,path_beg=/api/,replace_beg=/v2/ a:1");
        assert_eq!(r.rewrite("/api/items?x=1"), "/v2/items?x=1");
        let r = one("*,path_beg=/app,path_rem=4 a:1");
        assert_eq!(r.rewrite("/app/items"), "/items");
        assert_eq!(r.rewrite("/app"), "/");
        let r = one("* a:1");
        assert_eq!(r.rewrite("/x?y"), "/x?y");
        // Cutting characters can leave a dot-segment: put back in normal
        // form, so the backend sees what the route meant.
        let r = one("*,path_beg=/ab,path_rem=3 a:1");
        assert_eq!(r.rewrite("/ab./c?q=/./"), "/c?q=/./");
        let r = one("*,path_beg=/api/,replace_beg=/v2// a:1");
        assert_eq!(r.rewrite("/api/x"), "/v2/x");
    }
}
