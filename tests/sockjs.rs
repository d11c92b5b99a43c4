//! SockJS (route option `sockjs=`), black-box: raw HTTP and real
//! WebSocket clients against corepin on two cores, in front of a real
//! WebSocket-over-HTTP backend (gripcontrol's WebSocketContext) and a
//! real WebSocket backend (Python `websockets`). Every request of an HTTP
//! session goes on a new connection, so SO_REUSEPORT spreads them over
//! both cores and the owner-core forwarding is on the path.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::thread;

use common::*;

/// One request on a new connection; the whole response.
fn req(addr: SocketAddr, method: &str, path: &str, fields: &str, body: &str) -> Response {
    let mut c = Conn::open(addr);
    c.send(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{fields}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    c.read().expect("a response")
}

fn post(addr: SocketAddr, path: &str, body: &str) -> Response {
    req(addr, "POST", path, "Content-Type: text/plain\r\n", body)
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The WebSocket-over-HTTP backend and its request log (one JSON line
/// per events request).
struct Wsoh {
    _b: PyBackend,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl Wsoh {
    fn start() -> Wsoh {
        let dir = TempDir::new("sockjs");
        let log = dir.path().join("events.log");
        std::fs::write(&log, "").expect("log");
        let b = PyBackend::start("wsoh_backend.py", &[&log.display().to_string()]);
        Wsoh {
            _b: b,
            log,
            _dir: dir,
        }
    }

    fn port(&self) -> u16 {
        self._b.port
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every event the backend saw, in order, with its content.
    fn events(&self) -> Vec<(String, String)> {
        self.lines()
            .iter()
            .flat_map(|l| {
                let evs = l["events"].as_array().cloned().unwrap_or_default();
                let cs = l["contents"].as_array().cloned().unwrap_or_default();
                evs.into_iter()
                    .zip(cs)
                    .map(|(e, c)| {
                        (
                            e.as_str().unwrap_or("").to_string(),
                            c.as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn corepin(route: &str) -> Corepin {
    Corepin::start_grip(&["--workers", "2", "--route", route])
}

fn wsoh_route(b: &Wsoh, extra: &str) -> String {
    format!(
        "*,path_beg=/sj,sockjs=/sj{extra},header=Auth-Key:supersecret 127.0.0.1:{},over_http",
        b.port()
    )
}

#[test]
fn info_options_iframe_and_unknown_urls() {
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    let a = cp.addr();
    let r = req(
        a,
        "GET",
        "/sj/info?t=1",
        "Origin: http://page.example\r\n",
        "",
    );
    assert_eq!(r.status, 200);
    let info: serde_json::Value = serde_json::from_slice(&r.body).expect("info JSON");
    assert_eq!(info["websocket"], true);
    assert_eq!(info["cookie_needed"], false);
    assert_eq!(info["origins"], serde_json::json!(["*:*"]));
    assert!(info["entropy"].is_u64());
    // Credentialed cross-origin for the page's exact origin; no caching.
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://page.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r
        .header("cache-control")
        .is_some_and(|c| c.contains("no-store")));
    let r = req(a, "GET", "/sj/info", "", "");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = req(a, "OPTIONS", "/sj/000/abc/xhr", "Origin: http://p\r\n", "");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://p"));
    // The iframe page loads sockjs_url; its ETag answers a revalidation.
    let r = req(a, "GET", "/sj/iframe-1.6.1.html", "", "");
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("sockjs-client@1.6.1/dist/sockjs.min.js"));
    let etag = r.header("etag").expect("etag").to_string();
    let r = req(
        a,
        "GET",
        "/sj/iframe.html",
        &format!("If-None-Match: {etag}\r\n"),
        "",
    );
    assert_eq!((r.status, r.body.len()), (304, 0));
    // Not SockJS URLs, wrong methods, or transports not served: 404, and the
    // client falls back to the next transport.
    for (m, p) in [
        ("GET", "/sj"),
        ("GET", "/sj/"),
        ("GET", "/sj/000/abc/xhr_streaming"),
        ("POST", "/sj/000/abc/eventsource"),
        ("POST", "/sj/000/abc/htmlfile?c=x"),
        ("POST", "/sj//abc/xhr"),
        ("POST", "/sj/000/a.b/xhr"),
        ("GET", "/sj/000/abc/websocket"),
        ("GET", "/sjfoo"),
    ] {
        let r = req(a, m, p, "Content-Type: text/plain\r\n", "");
        assert_eq!(r.status, 404, "{m} {p}: {}", text(&r));
    }
    let r = post(a, "/sj/000/nosuch/xhr_send", "[\"x\"]");
    assert_eq!(r.status, 404, "a send to no session");
    assert!(b.lines().is_empty(), "nothing reached the backend");
}

#[test]
fn xhr_polling_is_a_websocket_session_toward_the_backend() {
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    let a = cp.addr();
    let origin = "Origin: http://page.example\r\nCookie: who=me\r\n";
    let r = req(a, "POST", "/sj/000/s1/xhr?t=17", origin, "");
    assert_eq!((r.status, text(&r).as_str()), (200, "o\n"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://page.example")
    );
    // The backend saw one WebSocket opening: the prefix as path with the
    // first request's query, and that request's fields.
    let open = &b.lines()[0];
    assert_eq!(open["events"], serde_json::json!(["OPEN"]));
    assert_eq!(open["path"], "/sj?t=17");
    assert_eq!(open["origin"], "http://page.example");
    // Messages both ways, batched for the poll.
    let r = post(a, "/sj/000/s1/xhr_send?t=18", r#"["hi","h\u00e9 \"q\""]"#);
    assert_eq!((r.status, text(&r).as_str()), (200, "ok"));
    let r = post(a, "/sj/000/s1/xhr?t=19", "");
    assert_eq!(text(&r), "a[\"echo: hi\",\"echo: h\u{e9} \\\"q\\\"\"]\n");
    // A publish to the channel the backend subscribed the session to
    // reaches the held poll.
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    // Two polls at once: one is held, the other turned away at once
    // (whichever came second), the session kept.
    let (tx, rx) = mpsc::channel();
    for _ in 0..2 {
        let tx = tx.clone();
        thread::spawn(move || {
            let _ = tx.send(text(&post(a, "/sj/000/s1/xhr", "")));
        });
    }
    let first = rx.recv().expect("a poll answered");
    assert_eq!(first, "c[2010,\"Another connection still open\"]\n");
    let r = cp.publish(r#"{"items":[{"channel":"room","ws-message":{"content":"news"}}]}"#);
    assert_eq!(r.status, 200);
    assert_eq!(rx.recv().expect("the held poll"), "a[\"news\"]\n");
    // The backend closes (code 4002): the next poll gets the close frame,
    // and so does every later request for a while.
    let r = post(a, "/sj/000/s1/xhr_send", r#"["close me"]"#);
    assert_eq!(r.status, 200);
    let r = post(a, "/sj/000/s1/xhr", "");
    assert_eq!(text(&r), "c[4002,\"Connection closed\"]\n");
    let r = post(a, "/sj/000/s1/xhr", "");
    assert_eq!(text(&r), "c[4002,\"Connection closed\"]\n");
    let evs = b.events();
    assert!(evs.contains(&("TEXT".into(), "hi".into())), "{evs:?}");
}

/// Opens a streaming SockJS request (chunked response) on a new
/// connection.
fn open_stream(addr: SocketAddr, method: &str, path: &str, fields: &str) -> Stream {
    let mut conn = Conn::open(addr);
    conn.send(
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{fields}Content-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    let head = read_head_only(&mut conn.r).expect("stream head");
    Stream { conn, head }
}

/// Reads the stream's chunks into `got` until it ends with `tail`;
/// false when the response ends first.
fn read_until(s: &mut Stream, got: &mut String, tail: &str) -> bool {
    while !got.ends_with(tail) {
        match s.chunk() {
            Some(c) => got.push_str(&String::from_utf8_lossy(&c)),
            None => return false,
        }
    }
    true
}

/// The rest of the stream, to its last chunk.
fn read_to_end(s: &mut Stream) -> String {
    let mut got = String::new();
    while let Some(c) = s.chunk() {
        got.push_str(&String::from_utf8_lossy(&c));
    }
    got
}

#[test]
fn xhr_streaming_sends_frames_on_one_response_until_the_limit() {
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    let a = cp.addr();
    let origin = "Origin: http://page.example\r\n";
    let mut s = open_stream(a, "POST", "/sj/000/x1/xhr_streaming?t=1", origin);
    assert_eq!(s.head.status, 200);
    assert!(s
        .head
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/javascript")));
    assert_eq!(
        s.head.header("access-control-allow-origin"),
        Some("http://page.example")
    );
    assert_eq!(s.head.header("transfer-encoding"), Some("chunked"));
    // The prelude (2048 `h` and a newline), then the open frame.
    let mut got = String::new();
    assert!(read_until(&mut s, &mut got, "o\n"), "{got}");
    assert_eq!(got, format!("{}\no\n", "h".repeat(2048)));
    assert_eq!(b.lines()[0]["path"], "/sj?t=1");
    // A second receiving request while the stream is open: the 2010 close
    // frame, for a stream and a poll alike; the stream is unharmed.
    let mut other = open_stream(a, "POST", "/sj/000/x1/xhr_streaming", "");
    assert_eq!(
        read_to_end(&mut other),
        format!(
            "{}\nc[2010,\"Another connection still open\"]\n",
            "h".repeat(2048)
        )
    );
    assert_eq!(
        text(&post(a, "/sj/000/x1/xhr", "")),
        "c[2010,\"Another connection still open\"]\n"
    );
    // Messages both ways, and a publish, each a line on the same response.
    assert_eq!(text(&post(a, "/sj/000/x1/xhr_send", "[\"hi\"]")), "ok");
    got.clear();
    assert!(read_until(&mut s, &mut got, "a[\"echo: hi\"]\n"), "{got}");
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    let r = cp.publish(r#"{"items":[{"channel":"room","ws-message":{"content":"news"}}]}"#);
    assert_eq!(r.status, 200);
    got.clear();
    assert!(read_until(&mut s, &mut got, "a[\"news\"]\n"), "{got}");
    // Past 128 KiB the response ends (the last chunk) and the client
    // reconnects to the same session, which kept what came meanwhile.
    let big = "x".repeat(45_000);
    let mut ended = false;
    for i in 0..3 {
        let msg = format!("{i}{big}");
        let r = post(a, "/sj/000/x1/xhr_send", &format!("[\"{msg}\"]"));
        assert_eq!(text(&r), "ok");
        got.clear();
        let line = format!("a[\"echo: {msg}\"]\n");
        assert!(read_until(&mut s, &mut got, &line), "frame {i}");
        if i == 2 {
            ended = s.chunk().is_none();
        }
    }
    assert!(ended, "the response ended past the limit");
    assert_eq!(text(&post(a, "/sj/000/x1/xhr_send", "[\"after\"]")), "ok");
    let mut s = open_stream(a, "POST", "/sj/000/x1/xhr_streaming", "");
    got.clear();
    assert!(
        read_until(&mut s, &mut got, "a[\"echo: after\"]\n"),
        "{got}"
    );
    assert!(!got.contains("o\n"), "no second open frame: {got}");
    // The backend closes: the close frame ends the response.
    assert_eq!(
        text(&post(a, "/sj/000/x1/xhr_send", "[\"close me\"]")),
        "ok"
    );
    assert_eq!(read_to_end(&mut s), "c[4002,\"Connection closed\"]\n");
    let opens = b
        .lines()
        .iter()
        .filter(|l| l["events"][0] == "OPEN")
        .count();
    assert_eq!(opens, 1, "one session toward the backend");
}

#[test]
fn eventsource_sends_frames_as_events() {
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    let a = cp.addr();
    let mut s = open_stream(a, "GET", "/sj/000/e1/eventsource", "Origin: http://p\r\n");
    assert_eq!(s.head.status, 200);
    assert!(s
        .head
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    assert_eq!(
        s.head.header("access-control-allow-origin"),
        Some("http://p")
    );
    let mut got = String::new();
    assert!(read_until(&mut s, &mut got, "\r\n\r\n"), "{got}");
    assert_eq!(got, "\r\ndata: o\r\n\r\n");
    // A message with a newline in it stays one event (JSON escapes it);
    // `%` is percent-encoded (the client decodes each event).
    let r = post(a, "/sj/000/e1/xhr_send", r#"["two\nlines %41"]"#);
    assert_eq!(text(&r), "ok");
    got.clear();
    assert!(read_until(&mut s, &mut got, "\r\n\r\n"), "{got}");
    assert_eq!(got, "data: a[\"echo: two\\nlines %2541\"]\r\n\r\n");
    assert_eq!(
        text(&post(a, "/sj/000/e1/xhr", "")),
        "c[2010,\"Another connection still open\"]\n"
    );
    assert_eq!(
        text(&post(a, "/sj/000/e1/xhr_send", "[\"close me\"]")),
        "ok"
    );
    assert_eq!(
        read_to_end(&mut s),
        "data: c[4002,\"Connection closed\"]\r\n\r\n"
    );
}

/// `htmlfile` (sockjs-node serves it; Pushpin 1.41 does not): a page for
/// the client's hidden iframe naming its callback, padded past 1 KiB,
/// then each frame as a script calling `p` with the frame as a JS string
/// in which `<`, `>` and `&` are escaped (a message cannot end the script).
#[test]
fn htmlfile_sends_frames_as_scripts() {
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    let a = cp.addr();
    // The callback is required, and checked.
    let r = req(a, "GET", "/sj/000/h0/htmlfile", "", "");
    assert_eq!(
        (r.status, text(&r).as_str()),
        (400, "\"callback\" parameter required\n")
    );
    let r = req(a, "GET", "/sj/000/h0/htmlfile?c=a%3Cb", "", "");
    assert_eq!(
        (r.status, text(&r).as_str()),
        (400, "invalid \"callback\" parameter\n")
    );
    let mut s = open_stream(a, "GET", "/sj/000/h1/htmlfile?c=_jp.cb1", "");
    assert_eq!(s.head.status, 200);
    assert_eq!(
        s.head.header("content-type"),
        Some("text/html; charset=UTF-8")
    );
    let mut got = String::new();
    assert!(read_until(&mut s, &mut got, "</script>\r\n"), "{got}");
    let (page, first) = got.split_once("\r\n\r\n").expect("page, then frames");
    assert!(page.len() >= 1024, "padded: {}", page.len());
    assert!(page.contains("var c = parent._jp.cb1;"), "{page}");
    let page_script = page.split("<script>").nth(1).expect("the page's script");
    assert!(page_script.contains("c.start();") && page_script.contains("c.message(d)"));
    assert_eq!(first, "<script>\np(\"o\");\n</script>\r\n");
    let r = post(a, "/sj/000/h1/xhr_send", r#"["</script><b>&"]"#);
    assert_eq!(text(&r), "ok");
    got.clear();
    assert!(read_until(&mut s, &mut got, "</script>\r\n"), "{got}");
    assert_eq!(
        got,
        "<script>\np(\"a[\\\"echo: \\u003c/script\\u003e\\u003cb\\u003e\\u0026\\\"]\");\n</script>\r\n"
    );
    assert_eq!(
        text(&post(a, "/sj/000/h1/xhr_send", "[\"close me\"]")),
        "ok"
    );
    assert_eq!(
        read_to_end(&mut s),
        "<script>\np(\"c[4002,\\\"Connection closed\\\"]\");\n</script>\r\n"
    );
}

#[test]
fn a_stream_whose_client_leaves_ends_the_session() {
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    let a = cp.addr();
    let mut s = open_stream(a, "GET", "/sj/000/g1/eventsource", "");
    let mut got = String::new();
    assert!(read_until(&mut s, &mut got, "data: o\r\n\r\n"), "{got}");
    drop(s);
    // The backend sees its client go (a close, as for an abandoned poll),
    // and late requests get the close frame.
    wait_until("CLOSE or DISCONNECT", || {
        b.events()
            .iter()
            .any(|(e, _)| e == "CLOSE" || e == "DISCONNECT")
    });
    assert_eq!(
        text(&post(a, "/sj/000/g1/xhr", "")),
        "c[3000,\"Client already closed connection\"]\n"
    );
}

#[test]
fn jsonp_polling_takes_form_encoded_sends() {
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    let a = cp.addr();
    let r = req(a, "GET", "/sj/000/j1/jsonp?c=_jp.a1", "", "");
    assert_eq!(text(&r), "/**/_jp.a1(\"o\");\n");
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/javascript")));
    // sockjs-client's jsonp sender posts a form: `+` is a space.
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let r = req(
        a,
        "POST",
        "/sj/000/j1/jsonp_send?i=x",
        form,
        "d=%5B%22a+b%2Bc%22%5D",
    );
    assert_eq!((r.status, text(&r).as_str()), (200, "ok"));
    let r = req(a, "GET", "/sj/000/j1/jsonp?c=_jp.a2", "", "");
    assert_eq!(text(&r), "/**/_jp.a2(\"a[\\\"echo: a b+c\\\"]\");\n");
    // The callback is required and checked (it goes into a script).
    let r = req(a, "GET", "/sj/000/j2/jsonp", "", "");
    assert_eq!(r.status, 400);
    for cb in ["a(1)", "a%0Ab", "x;alert"] {
        let r = req(a, "GET", &format!("/sj/000/j2/jsonp?c={cb}"), "", "");
        assert_eq!(r.status, 400, "{cb}");
    }
    assert!(!b
        .lines()
        .iter()
        .any(|l| l["path"].as_str().is_some_and(|p| p.contains("j2"))));
}

#[test]
fn bad_sends_are_refused_by_name() {
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    let a = cp.addr();
    assert_eq!(text(&post(a, "/sj/000/e1/xhr", "")), "o\n");
    for (body, why) in [
        ("", "Payload expected."),
        ("[\"a\"", "Broken JSON encoding."),
        ("[1]", "Broken JSON encoding."),
        ("{}", "Broken JSON encoding."),
    ] {
        let r = post(a, "/sj/000/e1/xhr_send", body);
        assert_eq!((r.status, text(&r).trim_end()), (400, why), "{body}");
    }
    let big = format!("[\"{}\"]", "x".repeat(100_001));
    let r = post(a, "/sj/000/e1/xhr_send", &big);
    assert_eq!((r.status, text(&r).trim_end()), (400, "Request too large."));
    // The session is unharmed.
    assert_eq!(text(&post(a, "/sj/000/e1/xhr_send", "[\"still\"]")), "ok");
    assert_eq!(text(&post(a, "/sj/000/e1/xhr", "")), "a[\"echo: still\"]\n");
}

#[test]
fn a_session_without_polls_ends_and_the_backend_sees_it_go() {
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    assert_eq!(text(&post(cp.addr(), "/sj/000/t1/xhr", "")), "o\n");
    // No poll within 5 s: the backend gets the client's disconnect.
    wait_until("DISCONNECT", || {
        b.events().iter().any(|(e, _)| e == "DISCONNECT")
    });
}

/// Runs a Python `websockets` client script with corepin's address.
fn ws_script(cp: &Corepin, script: &str) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(format!("ws://{}", cp.addr()))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const WS_CLIENT: &str = r#"
import sys
from websockets.sync.client import connect
u = sys.argv[1]
with connect(u + "/sj/000/w1/websocket", additional_headers={"Origin": "http://page"}) as ws:
    assert ws.recv(timeout=20) == "o"
    ws.send('["hi","y"]')
    print(ws.recv(timeout=20))
    print(ws.recv(timeout=20))
    ws.send("")
    ws.send('["close me"]')
    try:
        print(ws.recv(timeout=20))
    except Exception:
        print("closed", ws.close_code)
with connect(u + "/sj/000/w2/websocket") as ws:
    assert ws.recv(timeout=20) == "o"
    ws.send("not json")
    try:
        print(ws.recv(timeout=20))
    except Exception:
        print("closed", ws.close_code)
with connect(u + "/sj/websocket") as ws:
    ws.send("raw")
    print(ws.recv(timeout=20))
"#;

#[test]
fn websocket_transports_framed_and_raw() {
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    let out = ws_script(&cp, WS_CLIENT);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "a[\"echo: hi\"]",
            "a[\"echo: y\"]",
            // The backend's close is the WebSocket's close, code and all.
            "closed 4002",
            // Broken SockJS framing ends the session.
            "closed 1002",
            // The raw `/websocket`: no framing at all.
            "echo: raw"
        ]
    );
    let paths: Vec<String> = b
        .lines()
        .iter()
        .filter(|l| l["events"][0] == "OPEN")
        .filter_map(|l| l["path"].as_str().map(str::to_string))
        .collect();
    assert_eq!(paths, ["/sj/websocket"; 3]);
}

#[test]
fn plain_websocket_backend_with_sockjs_as_path() {
    let ws = PyBackend::start("ws_echo.py", &[]);
    let cp = corepin(&format!(
        "*,path_beg=/sj,sockjs=/sj,sockjs_as_path=/echo 127.0.0.1:{}",
        ws.port
    ));
    let a = cp.addr();
    // An HTTP session over a plain WebSocket backend.
    assert_eq!(text(&post(a, "/sj/000/p1/xhr", "")), "o\n");
    assert_eq!(text(&post(a, "/sj/000/p1/xhr_send", "[\"one\"]")), "ok");
    assert_eq!(text(&post(a, "/sj/000/p1/xhr", "")), "a[\"one\"]\n");
    // And a framed WebSocket one.
    let out = ws_script(
        &cp,
        r#"
import sys
from websockets.sync.client import connect
with connect(sys.argv[1] + "/sj/1/2/websocket") as ws:
    assert ws.recv(timeout=20) == "o"
    ws.send('["two"]')
    print(ws.recv(timeout=20))
"#,
    );
    assert_eq!(out.trim(), "a[\"two\"]");
}

#[test]
fn sockjs_options_are_checked() {
    for (line, needle) in [
        ("*,sockjs a:1", "sockjs"),
        ("*,sockjs=nopath a:1", "is not a path"),
        ("*,sockjs_as_path=/x a:1", "needs sockjs"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
            .args([
                "check",
                "--config",
                &write_config(&format!("routes = [\"{line}\"]\n")),
            ])
            .output()
            .expect("corepin check");
        assert!(!out.status.success(), "{line}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{line}: {err}");
    }
}

/// sockjs-client 1.6.1 (npm) in headless Chromium, from a page on another
/// origin, over each transport corepin serves (websocket, xhr-polling,
/// jsonp-polling, xhr-streaming, eventsource): it must open on the
/// transport asked for, get its message echoed unchanged by the
/// WebSocket-over-HTTP backend, and see the backend's close code.
#[test]
fn sockjs_client_in_headless_chromium() {
    let version = Command::new("chromium").arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "chromium is missing: tests/run.sh installs it (apt-get install chromium)"
    );
    assert!(
        root()
            .join("tests/clients/node_modules/sockjs-client/dist/sockjs.min.js")
            .exists(),
        "sockjs-client is missing: tests/run.sh installs it (npm, tests/clients)"
    );
    let b = Wsoh::start();
    let cp = corepin(&wsoh_route(&b, ""));
    let dir = TempDir::new("browser");
    let report = dir.path().join("report.json");
    let page = PyBackend::start("sockjs_page.py", &[&report.display().to_string()]);
    let url = format!(
        "http://127.0.0.1:{}/page.html?server=http://127.0.0.1:{}/sj",
        page.port,
        cp.addr().port()
    );
    let text = chromium_report(&url, &dir, &report);
    let results: serde_json::Value = serde_json::from_str(&text).expect("report JSON");
    let results = results.as_array().expect("one result per transport");
    assert_eq!(results.len(), 5, "{text}");
    for r in results {
        assert_eq!(r["transport"], r["asked"], "{r}");
        assert_eq!(r["echoed"], true, "{r}");
        assert_eq!(r["code"], 4002, "{r}");
    }
    // The backend saw each session open with the first request's fields:
    // the page's origin for the WebSocket and the XHR (a JSON-P script
    // load carries no Origin), on the paths Pushpin gives.
    let page_origin = format!("http://127.0.0.1:{}", page.port);
    let opens: Vec<serde_json::Value> = b
        .lines()
        .into_iter()
        .filter(|l| l["events"][0] == "OPEN")
        .collect();
    assert_eq!(opens.len(), 5, "{opens:?}");
    let path = |i: usize| opens[i]["path"].as_str().unwrap_or("").to_string();
    assert_eq!(path(0), "/sj/websocket");
    assert!(path(1).starts_with("/sj?t="), "{}", path(1));
    assert!(path(2).starts_with("/sj?c=_jp."), "{}", path(2));
    assert_eq!(opens[0]["origin"], page_origin.as_str());
    assert_eq!(opens[1]["origin"], page_origin.as_str());
    for i in [3, 4] {
        assert!(path(i).starts_with("/sj"), "{}", path(i));
        assert_eq!(opens[i]["origin"], page_origin.as_str());
    }
    let sent = b
        .events()
        .into_iter()
        .filter(|(e, c)| e == "TEXT" && c.starts_with('h'))
        .count();
    assert_eq!(sent, 5);
}

/// sockjs-client's `iframe-htmlfile` transport in headless Chromium: the
/// client loads corepin's iframe page (which loads sockjs-client from
/// `sockjs_url`, here the page server's copy), and that page streams over
/// `htmlfile`: it must open, get its message echoed and see the close.
#[test]
fn sockjs_client_over_htmlfile_in_headless_chromium() {
    assert!(
        root()
            .join("tests/clients/node_modules/sockjs-client/dist/sockjs.min.js")
            .exists(),
        "sockjs-client is missing: tests/run.sh installs it (npm, tests/clients)"
    );
    let b = Wsoh::start();
    let dir = TempDir::new("browser-htmlfile");
    let report = dir.path().join("report.json");
    let page = PyBackend::start("sockjs_page.py", &[&report.display().to_string()]);
    let config = write_config(&format!(
        "sockjs_url = \"http://127.0.0.1:{}/sockjs.min.js\"\nroutes = [\"{}\"]\n",
        page.port,
        wsoh_route(&b, "")
    ));
    let cp = Corepin::start_grip(&["--workers", "2", "--config", &config]);
    let url = format!(
        "http://127.0.0.1:{}/page.html?transports=iframe-htmlfile&server=http://127.0.0.1:{}/sj",
        page.port,
        cp.addr().port()
    );
    let text = chromium_report(&url, &dir, &report);
    let results: serde_json::Value = serde_json::from_str(&text).expect("report JSON");
    let r = &results[0];
    assert_eq!(r["transport"], "iframe-htmlfile", "{text}");
    assert_eq!(r["echoed"], true, "{text}");
    assert_eq!(r["code"], 4002, "{text}");
}

/// Opens `url` in headless Chromium and waits for the page to write its
/// report (the file `report` in `dir`); returns the report.
fn chromium_report(url: &str, dir: &TempDir, report: &std::path::Path) -> String {
    let mut browser = start_chromium(url, dir.path());
    // The page reports once it has run everything; the deadline only
    // turns a hang into a failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(report) {
            break Some(t);
        }
        if std::time::Instant::now() > deadline || browser.try_wait().ok().flatten().is_some() {
            break None;
        }
        thread::sleep(POLL);
    };
    kill_browser(&mut browser);
    text.unwrap_or_else(|| {
        panic!(
            "no report from the page; chromium said:\n{}",
            std::fs::read_to_string(dir.path().join("chromium.log")).unwrap_or_default()
        )
    })
}

/// Automatic cross-origin (`aco`) as a real browser judges it: a page on
/// another origin reads corepin's answers to a simple fetch, a
/// credentialed XMLHttpRequest and a preflighted PUT with a custom header
/// (the browser sends its OPTIONS preflight first and goes on only when
/// the answer allows the method and header).
#[test]
fn aco_satisfies_a_real_browser() {
    let b = Backend::start(|req, _| {
        let body = format!("{} {}", req.method, req.path);
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Custom: 1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let cp = Corepin::start(&["--route", &format!("*,path_beg=/c,aco {}", b.addr)]);
    let dir = TempDir::new("browser");
    let report = dir.path().join("report.json");
    let page = PyBackend::start("sockjs_page.py", &[&report.display().to_string()]);
    let url = format!(
        "http://127.0.0.1:{}/cors.html?server=http://127.0.0.1:{}",
        page.port,
        cp.addr().port()
    );
    let text = chromium_report(&url, &dir, &report);
    let r: serde_json::Value = serde_json::from_str(&text).expect("report JSON");
    assert_eq!(r["simple"]["status"], 200, "{text}");
    assert_eq!(r["simple"]["body"], "GET /c/simple", "{text}");
    // The backend's own field is exposed to the page.
    assert_eq!(r["simple"]["custom"], "1", "{text}");
    assert_eq!(r["xhr"]["body"], "GET /c/xhr", "{text}");
    assert_eq!(r["preflighted"]["status"], 200, "{text}");
    assert_eq!(r["preflighted"]["body"], "PUT /c/put", "{text}");
}
