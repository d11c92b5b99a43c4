//! corepin's route parsing, selection and request rewriting against
//! Pushpin's own answers: tests/pushpin/routes.table was recorded by
//! running tests/pushpin/routes.cases through Pushpin 1.36 with a distinct
//! local backend per target (tests/pushpin/record_routes.py regenerates
//! it). For every case this test checks that corepin refuses exactly the
//! lines Pushpin skipped, and that each request goes to the backend Pushpin
//! chose, with the path, Host and `header=` fields Pushpin sent. Where
//! corepin differs on purpose, the difference is listed below with its
//! reason (and in the README's "Moving from Pushpin").

use std::net::SocketAddr;
use std::path::Path;

use corepin::codec::heads::Purpose;
use corepin::codec::http1::{parse_request, HeadLimits, RequestHead};
use corepin::config::{Config, Overrides};
use corepin::route::{parse_line_in, Route, Routes, Target};

const TABLE: &str = include_str!("pushpin/routes.table");

/// Lines Pushpin loads that corepin refuses: (case, 1-based line, why).
const REFUSED_BY_COREPIN: &[(&str, usize, &str)] = &[
    (
        "host-in-capitals-in-route",
        1,
        "Pushpin matches hosts in lower case, so it never matches this line",
    ),
    (
        "host-with-port-in-route",
        1,
        "Pushpin matches the host without its port, so it never matches this line",
    ),
    (
        "no-host-condition",
        1,
        "a line without a host is reached only through the Pushpin-Route header",
    ),
    (
        "no-host-condition",
        2,
        "a line without a host is reached only through the Pushpin-Route header",
    ),
    (
        "quoted-values",
        2,
        "a path_beg holding a space never matches a request path (always encoded)",
    ),
    (
        "rewrite-replace-beg",
        2,
        "path_rem beside replace_beg has no effect in Pushpin, so corepin refuses the pair",
    ),
    (
        "options-that-do-not-change-selection",
        2,
        "unknown properties are refused, not ignored (and insecure/trust_connect_host need ssl)",
    ),
    (
        "options-that-do-not-change-selection",
        3,
        "a flag with a value (over_http=yes) is refused, not read as the flag",
    ),
];

/// Lines Pushpin 1.36 skips that corepin reads as Pushpin 1.41 does.
const READ_AS_PUSHPIN_1_41: &[(&str, usize, &str)] = &[(
    "ipv6-target",
    1,
    "Pushpin 1.41 reads [v6]:port targets; the 1.36 recording skips them",
)];

/// Requests corepin answers otherwise: (case, host, path, why).
const ANSWERED_DIFFERENTLY: &[(&str, &str, &str, &str)] = &[
    (
        "path-forms",
        "example.com",
        "/x/../api/y",
        "corepin routes the path's normal form (/api/y), so ../ cannot step around a path_beg",
    ),
    (
        "path-forms",
        "example.com",
        "//api/z",
        "corepin routes the path's normal form (/api/z): repeated slashes are one",
    ),
    (
        "host-match-details",
        "example.com.",
        "/",
        "corepin ignores one trailing dot of the Host (example.com. is example.com)",
    ),
    (
        "rewrite-path-rem",
        "example.com",
        "/two/x",
        "where path_rem leaves no leading '/', Pushpin answers 502 and corepin adds the '/'",
    ),
    (
        "rewrite-path-rem",
        "example.com",
        "/abc",
        "where path_rem leaves no leading '/', Pushpin answers 502 and corepin adds the '/'",
    ),
    (
        "ipv6-target",
        "example.com",
        "/v6",
        "the [v6]:port line the 1.36 recording skipped is a route in corepin (Pushpin 1.41)",
    ),
];

struct Request {
    kind: String,
    host: String,
    path: String,
    headers: Vec<(String, String)>,
    seen: serde_json::Value,
}

struct Case {
    name: String,
    routes: Vec<String>,
    skipped: Vec<(usize, String)>,
    requests: Vec<Request>,
}

fn cases() -> Vec<Case> {
    let mut out: Vec<Case> = Vec::new();
    for line in TABLE.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (kind, rest) = line.split_once('\t').expect("tab-separated");
        if kind == "case" {
            out.push(Case {
                name: rest.to_string(),
                routes: Vec::new(),
                skipped: Vec::new(),
                requests: Vec::new(),
            });
            continue;
        }
        let case = out.last_mut().expect("a case first");
        match kind {
            "route" => case.routes.push(rest.to_string()),
            "skipped" => {
                let (n, why) = rest.split_once('\t').unwrap_or((rest, ""));
                case.skipped
                    .push((n.parse().expect("line number"), why.to_string()));
            }
            "request" => {
                let f: Vec<&str> = rest.splitn(6, '\t').collect();
                assert_eq!(f.len(), 6, "{line}");
                assert_eq!(f[4], "=>", "{line}");
                let headers = if f[3] == "-" {
                    Vec::new()
                } else {
                    f[3].split(' ')
                        .map(|h| {
                            let (n, v) = h.split_once(':').expect("NAME:VALUE");
                            (n.to_string(), v.to_string())
                        })
                        .collect()
                };
                case.requests.push(Request {
                    kind: f[0].to_string(),
                    host: f[1].to_string(),
                    path: f[2].to_string(),
                    headers,
                    seen: serde_json::from_str(f[5]).expect("JSON"),
                });
            }
            other => panic!("routes.table: unknown line kind {other}"),
        }
    }
    out
}

fn listed(list: &[(&str, usize, &str)], case: &str, line: usize) -> bool {
    list.iter().any(|(c, l, _)| *c == case && *l == line)
}

/// The request bytes the recorder sent, parsed as corepin parses them.
fn head(r: &Request) -> RequestHead {
    let extra: String = r
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let raw = if r.host == "-" {
        format!("GET {} HTTP/1.0\r\n{extra}\r\n", r.path)
    } else if r.kind == "ws" {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
            r.path, r.host
        )
    } else {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra}\r\n",
            r.path, r.host
        )
    };
    let limits = HeadLimits {
        max_head_bytes: 16384,
        max_headers: 100,
        max_uri_bytes: 8192,
    };
    match parse_request(raw.as_bytes(), &limits) {
        Ok(Some((_, h))) => h,
        other => panic!("{raw:?} does not parse: {other:?}"),
    }
}

/// Which case-file backend (`127.0.0.1:N`) a route sends to first.
fn backend_name(r: &Route) -> String {
    match &r.targets[0] {
        Target::Backend(b) => b
            .addr
            .strip_prefix("127.0.0.1:")
            .unwrap_or(&b.addr)
            .to_string(),
        Target::Test => "test".into(),
    }
}

/// What corepin sends upstream for `h` on `r`: (path, Host, X-Test* and
/// X-Remove* fields), read back from the request head it encodes.
fn sent(
    r: &Route,
    h: &RequestHead,
) -> (String, String, serde_json::Map<String, serde_json::Value>) {
    let Target::Backend(b) = &r.targets[0] else {
        panic!("not a backend")
    };
    let fwd = Config::default_with(&Overrides::default())
        .expect("default config")
        .forwarding;
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let mut out = Vec::new();
    let (path, peer_ip) = (r.rewrite(h.target()), peer.ip().to_string());
    b.request(
        h,
        Purpose::Proxy,
        &path,
        &peer_ip,
        fwd.policy(peer.ip()),
        None,
    )
    .write(&mut out);
    let text = String::from_utf8(out).expect("ASCII head");
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let mut host = String::new();
    let mut headers = serde_json::Map::new();
    for l in lines {
        let Some((n, v)) = l.split_once(": ") else {
            continue;
        };
        let n = n.to_ascii_lowercase();
        if n == "host" {
            host = v.to_string();
        } else if n.starts_with("x-test") || n.starts_with("x-remove") {
            headers.insert(n, serde_json::Value::from(v));
        }
    }
    (path, host, headers)
}

#[test]
fn the_table_covers_what_the_brief_asks() {
    let all = cases();
    assert!(all.len() >= 30, "routes.table has {} cases", all.len());
    let requests: usize = all.iter().map(|c| c.requests.len()).sum();
    assert!(requests >= 90, "routes.table has {requests} requests");
}

#[test]
fn corepin_refuses_exactly_the_lines_pushpin_skips() {
    for case in cases() {
        let mut kept: Vec<(usize, Route)> = Vec::new();
        for (i, line) in case.routes.iter().enumerate() {
            let n = i + 1;
            let refused = match parse_line_in(line, Path::new(".")) {
                Ok(None) => false,
                Ok(Some(r)) => {
                    let mut with = kept.clone();
                    with.push((i, r.clone()));
                    match Routes::build(with) {
                        Ok(_) => {
                            kept.push((i, r));
                            false
                        }
                        Err(_) => true,
                    }
                }
                Err(_) => true,
            };
            let skipped = case.skipped.iter().any(|(s, _)| *s == n);
            if refused && !skipped {
                assert!(
                    listed(REFUSED_BY_COREPIN, &case.name, n),
                    "{}: line {n} {line:?}: Pushpin loads it, corepin refuses it",
                    case.name
                );
            } else if skipped && !refused {
                assert!(
                    listed(READ_AS_PUSHPIN_1_41, &case.name, n),
                    "{}: line {n} {line:?}: Pushpin skips it, corepin loads it",
                    case.name
                );
            } else {
                assert!(
                    !listed(REFUSED_BY_COREPIN, &case.name, n)
                        && !listed(READ_AS_PUSHPIN_1_41, &case.name, n),
                    "{}: line {n} is listed as a difference but corepin agrees",
                    case.name
                );
            }
        }
    }
}

#[test]
fn corepin_routes_every_request_where_pushpin_did() {
    let mut compared = 0;
    for case in cases() {
        let parsed: Vec<(usize, Route)> = case
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                parse_line_in(l, Path::new("."))
                    .ok()
                    .flatten()
                    .map(|r| (i, r))
            })
            .filter(|(i, _)| {
                !case.skipped.iter().any(|(s, _)| *s == i + 1)
                    || listed(READ_AS_PUSHPIN_1_41, &case.name, i + 1)
            })
            .collect();
        let routes = Routes::build(parsed).expect("the lines Pushpin kept build");
        for r in &case.requests {
            let key = format!("{} {} {} {}", case.name, r.kind, r.host, r.path);
            let differs = ANSWERED_DIFFERENTLY
                .iter()
                .any(|(c, h, p, _)| *c == case.name && *h == r.host && *p == r.path);
            let want = r.seen["target"].as_str().expect("target");
            // A route corepin refuses (listed above) cannot be compared.
            let want_line = case.routes.iter().position(|l| {
                l.split(' ')
                    .any(|t| t.split(',').next() == Some(&format!("127.0.0.1:{want}")))
            });
            if want_line.is_some_and(|i| listed(REFUSED_BY_COREPIN, &case.name, i + 1)) {
                continue;
            }
            let h = head(r);
            let ws = h.is_upgrade();
            let got = routes.select(h.host(), h.path(), ws);
            let agrees = match (want, got) {
                ("none", None) => {
                    let body = r.seen["body"].as_str().unwrap_or("");
                    assert!(
                        body.starts_with("No route") || differs,
                        "{key}: Pushpin failed otherwise ({body}); list the difference"
                    );
                    true
                }
                ("none", Some(_)) | (_, None) => false,
                (want, Some(route)) => {
                    if backend_name(route) != want {
                        false
                    } else {
                        let (path, host, headers) = sent(route, &h);
                        let same_host = match route.targets.first() {
                            Some(Target::Backend(b)) if b.send_host().is_some() => {
                                host == r.seen["host"].as_str().unwrap_or("")
                            }
                            _ => true,
                        };
                        let same = path == r.seen["path"].as_str().unwrap_or("")
                            && same_host
                            && serde_json::Value::Object(headers.clone()) == r.seen["headers"];
                        assert!(
                            same || differs,
                            "{key}: corepin sends path {path} host {host} headers {headers:?}; Pushpin sent {}",
                            r.seen
                        );
                        same
                    }
                }
            };
            if differs {
                assert!(!agrees, "{key}: listed as a difference, but corepin agrees");
            } else {
                assert!(
                    agrees,
                    "{key}: Pushpin chose {want}, corepin {:?}",
                    got.map(backend_name)
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 80, "only {compared} requests compared");
}
