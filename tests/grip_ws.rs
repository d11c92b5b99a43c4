//! GRIP over WebSockets with the real gripcontrol library on the backend:
//! control messages set-meta, subscribe with filters, send-delayed,
//! flush-delayed and keep-alive (ping, interval), and ws-message ping
//! publishes. Frames are read raw, so pings are seen as pings.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use common::*;

fn raw_ws(addr: std::net::SocketAddr, path: &str) -> (TcpStream, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let head = read_head_only(&mut r).expect("handshake answer");
    assert_eq!(head.status, 101);
    (s, r)
}

/// One frame as (opcode, text).
fn next_frame(r: &mut BufReader<TcpStream>) -> (u8, String) {
    let (op, p) = read_frame(r);
    (op, String::from_utf8_lossy(&p).into_owned())
}

/// The next text frame (pings are skipped).
fn next_text(r: &mut BufReader<TcpStream>) -> String {
    loop {
        match next_frame(r) {
            (1, t) => return t,
            (9, _) => continue,
            (op, p) => panic!("unexpected frame {op} {p:?}"),
        }
    }
}

fn send_text(s: &mut TcpStream, text: &str) {
    let mut f = Vec::new();
    corepin::codec::ws::write_frame(
        &mut f,
        true,
        corepin::codec::ws::Opcode::Text,
        text.as_bytes(),
        Some([1, 2, 3, 4]),
    );
    s.write_all(&f).expect("send");
}

fn setup() -> (PyBackend, Corepin) {
    let b = PyBackend::start("wsoh_control.py", &[]);
    let route = format!("* 127.0.0.1:{},over_http", b.port);
    let cp = Corepin::start_grip(&["--route", &route, "--workers", "1"]);
    (b, cp)
}

/// Meta from set-meta feeds the subscription's skip-self and var-subst
/// filters (declared in the subscribe control message).
#[test]
fn set_meta_and_subscribe_filters() {
    let (_b, cp) = setup();
    let (mut a, mut ar) = raw_ws(cp.addr(), "/ws/alice");
    let (_bs, mut br) = raw_ws(cp.addr(), "/ws/bob");
    // An echo proves the session is open (its OPEN answer applied).
    send_text(&mut a, "hello");
    assert_eq!(next_text(&mut ar), "echo: hello");
    wait_until("both subscribed", || {
        metric(&cp, "corepin_subscriptions") == 2
    });
    let r = cp.publish(
        r#"{"items":[{"channel":"room","meta":{"sender":"alice"},"ws-message":{"content":"alice to %(name)s"}}]}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(next_text(&mut br), "alice to Bob");
    let r =
        cp.publish(r#"{"items":[{"channel":"room","ws-message":{"content":"all, %(name)s"}}]}"#);
    assert_eq!(r.status, 200);
    assert_eq!(next_text(&mut ar), "all, Alice", "alice's own was dropped");
    assert_eq!(next_text(&mut br), "all, Bob");
    // set-meta replaces a value the filters read.
    send_text(&mut a, "name Ally");
    send_text(&mut a, "sync");
    assert_eq!(next_text(&mut ar), "echo: sync");
    cp.publish(r#"{"items":[{"channel":"room","ws-message":{"content":"hi %(name)s"}}]}"#);
    assert_eq!(next_text(&mut ar), "hi Ally");
    // require-sub tests the connection's channels (Pushpin after 1.41).
    cp.publish(
        r#"{"items":[{"channel":"room","meta":{"require_sub":"vip"},"ws-message":{"content":"vip only"}}]}"#,
    );
    cp.publish(
        r#"{"items":[{"channel":"room","meta":{"require_sub":"room"},"ws-message":{"content":"room only"}}]}"#,
    );
    assert_eq!(next_text(&mut br), "hi Bob");
    // bob's filters do not include require-sub: both reach him.
    assert_eq!(next_text(&mut br), "vip only");
    assert_eq!(next_text(&mut br), "room only");
}

/// send-delayed waits its timeout; a second one sends the first at once;
/// flush-delayed sends the pending one now.
#[test]
fn send_delayed_and_flush_delayed() {
    let (_b, cp) = setup();
    let (mut a, mut ar) = raw_ws(cp.addr(), "/ws/alice");
    // Due in an hour: only a replacement or a flush sends it.
    send_text(&mut a, "delay 3600 first");
    send_text(&mut a, "mark");
    assert_eq!(next_text(&mut ar), "echo: mark", "not yet");
    send_text(&mut a, "delay 1 second");
    assert_eq!(next_text(&mut ar), "first", "replaced: sent at once");
    assert_eq!(next_text(&mut ar), "second", "then after its second");
    send_text(&mut a, "delay 3600 third");
    send_text(&mut a, "flush");
    assert_eq!(next_text(&mut ar), "third");
}

/// A keep-alive of pings every second (interval mode), and a published
/// ws-message of type ping, reach the client as ping frames.
#[test]
fn keep_alive_pings_and_published_pings() {
    let (_b, cp) = setup();
    let (mut a, mut ar) = raw_ws(cp.addr(), "/ws/alice");
    send_text(&mut a, "ka-ping");
    send_text(&mut a, "sync");
    assert_eq!(next_text(&mut ar), "echo: sync");
    for _ in 0..2 {
        assert_eq!(next_frame(&mut ar), (9, "ka".to_string()));
    }
    let r = cp
        .publish(r#"{"items":[{"channel":"room","ws-message":{"type":"ping","content":"pub"}}]}"#);
    assert_eq!(r.status, 200);
    loop {
        match next_frame(&mut ar) {
            (9, p) if p == "ka" => continue,
            f => {
                assert_eq!(f, (9, "pub".to_string()));
                break;
            }
        }
    }
    let r = cp.publish(&format!(
        r#"{{"items":[{{"channel":"room","ws-message":{{"type":"pong","content":"{}"}}}}]}}"#,
        "x".repeat(126)
    ));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("a ping or pong carries at most 125"));
}

/// A published `refresh` makes an idle WebSocket-over-HTTP session send
/// its backend a request now (with no events: nothing was waiting).
#[test]
fn refresh_makes_an_over_http_session_post_now() {
    let b = Backend::start(|req, _| {
        let mut body = Vec::new();
        if req.body.starts_with(b"OPEN") {
            let c = br#"c:{"type":"subscribe","channel":"room"}"#;
            body.extend_from_slice(format!("OPEN\r\nTEXT {:x}\r\n", c.len()).as_bytes());
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
        }
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/websocket-events\r\nSec-WebSocket-Extensions: grip\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        Reply::Bytes(out)
    });
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("{},over_http", b.route()),
        "--workers",
        "1",
    ]);
    let (_s, _r) = raw_ws(cp.addr(), "/ws");
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    assert_eq!(
        b.seen.lock().expect("lock").len(),
        1,
        "only the OPEN so far"
    );
    let r = cp.publish(r#"{"items":[{"channel":"room","ws-message":{"action":"refresh"}}]}"#);
    assert_eq!(r.status, 200);
    wait_until("a request after the refresh", || {
        b.seen.lock().map(|v| v.len() == 2).unwrap_or(false)
    });
    let seen = b.last();
    assert_eq!(seen.method, "POST");
    assert!(seen.body.is_empty(), "{:?}", seen.body);
    assert!(seen.header("connection-id").is_some());
}

/// A WebSocket route's targets are tried in order: a target that cannot
/// be connected to is skipped, for passthrough and WebSocket-over-HTTP
/// alike (the live backend answers; corepin relays).
#[test]
fn websocket_routes_fail_over_to_the_next_target() {
    let echo = PyBackend::start("ws_echo.py", &[]);
    let wsoh = PyBackend::start("wsoh_control.py", &[]);
    let dead = dead_port();
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("*,path_beg=/echo 127.0.0.1:{dead} 127.0.0.1:{}", echo.port),
        "--route",
        &format!(
            "*,path_beg=/ws/ 127.0.0.1:{dead},over_http 127.0.0.1:{},over_http",
            wsoh.port
        ),
    ]);
    let (mut s, mut r) = raw_ws(cp.addr(), "/echo");
    send_text(&mut s, "through");
    assert_eq!(next_text(&mut r), "through");
    let (mut s, mut r) = raw_ws(cp.addr(), "/ws/alice");
    send_text(&mut s, "over http");
    assert_eq!(next_text(&mut r), "echo: over http");
}

/// `one_event`: each WebSocket-over-HTTP request carries one event, even
/// when several client messages wait while a request is in flight.
#[test]
fn one_event_sends_one_event_per_request() {
    use std::sync::mpsc;
    use std::sync::Mutex;
    let (release, held) = mpsc::channel::<()>();
    let held = Mutex::new(held);
    let b = Backend::start(move |req, _| {
        if req.body.starts_with(b"TEXT 1\r\na") {
            // The first message's request waits until the client has sent
            // the others, so they are pending together.
            let _ = held.lock().map(|r| r.recv_timeout(TIMEOUT));
        }
        let body: &[u8] = if req.body.starts_with(b"OPEN") {
            b"OPEN\r\n"
        } else {
            b""
        };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/websocket-events\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        Reply::Bytes(out)
    });
    let cp = Corepin::start_grip(&["--route", &format!("{},over_http,one_event", b.route())]);
    let (mut s, _r) = raw_ws(cp.addr(), "/ws");
    send_text(&mut s, "a");
    wait_until("the first message's request", || {
        b.seen.lock().map(|v| v.len() == 2).unwrap_or(false)
    });
    for m in ["b", "c", "d"] {
        send_text(&mut s, m);
    }
    release.send(()).expect("release");
    wait_until("a request per message", || {
        b.seen.lock().map(|v| v.len() == 5).unwrap_or(false)
    });
    let bodies: Vec<String> = b
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(
        bodies,
        [
            "OPEN\r\n",
            "TEXT 1\r\na\r\n",
            "TEXT 1\r\nb\r\n",
            "TEXT 1\r\nc\r\n",
            "TEXT 1\r\nd\r\n"
        ]
    );
}

/// A published `refresh` that arrives while a WebSocket-over-HTTP request
/// is in flight is not lost: once the backend answers, the session sends
/// another request (Pushpin: "another one follows right after it").
#[test]
fn a_refresh_during_a_request_is_sent_after_it() {
    let gate = Gate::new();
    let g = gate.clone();
    let b = Backend::start(move |req, _| {
        let mut body = Vec::new();
        if req.body.starts_with(b"OPEN") {
            let c = br#"c:{"type":"subscribe","channel":"room"}"#;
            body.extend_from_slice(format!("OPEN\r\nTEXT {:x}\r\n", c.len()).as_bytes());
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
        } else if !req.body.is_empty() {
            // The client's message: answered only when the test says.
            g.wait();
        }
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/websocket-events\r\nSec-WebSocket-Extensions: grip\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        Reply::Bytes(out)
    });
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("{},over_http", b.route()),
        "--workers",
        "1",
    ]);
    let (mut s, mut r) = raw_ws(cp.addr(), "/ws");
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    // A masked TEXT "hi" from the client: its request waits at the gate.
    s.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .expect("send");
    let count = || b.seen.lock().map(|v| v.len()).unwrap_or(0);
    wait_until("the message's request", || count() == 2);
    let p = cp.publish(r#"{"items":[{"channel":"room","ws-message":{"action":"refresh"}}]}"#);
    assert_eq!(p.status, 200);
    // A message published after the refresh reaches the client while the
    // request is still in flight: the session has taken the refresh too.
    let p = cp.publish(r#"{"items":[{"channel":"room","ws-message":{"content":"marker"}}]}"#);
    assert_eq!(p.status, 200);
    assert_eq!(next_text(&mut r), "marker");
    assert_eq!(count(), 2, "no request yet: the first is still in flight");
    gate.open();
    wait_until("the refresh's own request after the answer", || {
        count() == 3
    });
    let seen = b.last();
    assert_eq!(seen.method, "POST");
    assert!(seen.body.is_empty(), "{:?}", seen.body);
}

/// The next close frame's code and reason (other frames are skipped).
fn close_of(r: &mut BufReader<TcpStream>) -> (u16, String) {
    loop {
        let mut h = [0u8; 2];
        r.read_exact(&mut h).expect("frame header");
        let mut p = vec![0u8; usize::from(h[1] & 0x7f)];
        r.read_exact(&mut p).expect("payload");
        if h[0] & 0x0f == 8 {
            let code = u16::from_be_bytes([p[0], p[1]]);
            return (code, String::from_utf8_lossy(&p[2..]).into_owned());
        }
    }
}

/// An events answer: `events` with extra header lines.
fn events_answer(events: &[u8], extra: &str) -> Reply {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/websocket-events\r\n{extra}Content-Length: {}\r\n\r\n",
        events.len()
    )
    .into_bytes();
    out.extend_from_slice(events);
    Reply::Bytes(out)
}

/// `Content-Bytes-Accepted` (Pushpin 1.41): the backend takes only the
/// first N bytes of what a request offered; the rest is not lost but
/// offered again, ahead of newer messages, by the next request, which says
/// so with `Content-Bytes-Replayed`. Accepting more than was offered is a
/// broken session: the client gets a close 1011. The GRIP route's requests
/// also offer `Sec-WebSocket-Extensions: grip`, as Pushpin's do.
#[test]
fn content_bytes_accepted_keeps_back_the_rest() {
    let b = Backend::start(|req, _| match &req.body[..] {
        b"OPEN\r\n" => events_answer(b"OPEN\r\n", ""),
        b"TEXT 5\r\nhello\r\n" => events_answer(b"", "Content-Bytes-Accepted: 2\r\n"),
        b"TEXT 3\r\nllo\r\nTEXT 5\r\nworld\r\n" => events_answer(b"TEXT 2\r\nok\r\n", ""),
        b"TEXT 1\r\nx\r\n" => events_answer(b"TEXT 3\r\nall\r\n", "Content-Bytes-Accepted: 1\r\n"),
        b"TEXT 4\r\nmore\r\n" => events_answer(b"", "Content-Bytes-Accepted: 5\r\n"),
        _ => events_answer(b"", ""),
    });
    let cp = Corepin::start_grip(&["--route", &format!("{},over_http", b.route())]);
    let (mut s, mut r) = raw_ws(cp.addr(), "/ws");
    let count = || b.seen.lock().map(|v| v.len()).unwrap_or(0);
    send_text(&mut s, "hello");
    wait_until("the first message's request", || count() == 2);
    assert_eq!(b.last().header("content-bytes-replayed"), None);
    // "llo" was kept back: it goes first in the next request.
    send_text(&mut s, "world");
    assert_eq!(next_text(&mut r), "ok");
    let seen = b.last();
    assert_eq!(
        String::from_utf8_lossy(&seen.body),
        "TEXT 3\r\nllo\r\nTEXT 5\r\nworld\r\n"
    );
    assert_eq!(seen.header("content-bytes-replayed"), Some("3"));
    assert_eq!(seen.header("sec-websocket-extensions"), Some("grip"));
    // Everything accepted: nothing replayed.
    send_text(&mut s, "x");
    assert_eq!(next_text(&mut r), "all");
    assert_eq!(b.last().header("content-bytes-replayed"), None);
    send_text(&mut s, "more");
    assert_eq!(close_of(&mut r).0, 1011);
    cp.wait_stderr("Content-Bytes-Accepted 5 is more than the 4 bytes offered");
}

/// What a backend kept back goes out at its keep-alive interval even when
/// the client sends nothing more (no new message to carry it). The
/// minimum interval is lowered to 2 s (`timeouts.ws_keep_alive_min`).
#[test]
fn content_kept_back_is_offered_again_at_the_keep_alive() {
    let b = Backend::start(|req, _| match &req.body[..] {
        b"OPEN\r\n" => events_answer(b"OPEN\r\n", "Keep-Alive-Interval: 2\r\n"),
        b"TEXT 5\r\nhello\r\n" => events_answer(b"", "Content-Bytes-Accepted: 4\r\n"),
        b"TEXT 1\r\no\r\n" => events_answer(b"TEXT 3\r\ngot\r\n", ""),
        _ => events_answer(b"", ""),
    });
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("{},over_http", b.route()),
        "--config",
        &write_config("[timeouts]\nws_keep_alive_min = 2\n"),
    ]);
    let (mut s, mut r) = raw_ws(cp.addr(), "/ws");
    send_text(&mut s, "hello");
    assert_eq!(next_text(&mut r), "got");
    let seen = b.seen.lock().expect("lock").clone();
    let bodies: Vec<String> = seen
        .iter()
        .map(|q| String::from_utf8_lossy(&q.body).into_owned())
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(
        bodies,
        ["OPEN\r\n", "TEXT 5\r\nhello\r\n", "TEXT 1\r\no\r\n"]
    );
    let last = seen.last().expect("a request");
    assert_eq!(last.header("content-bytes-replayed"), Some("1"));
}

/// A GRIP route offers a WebSocket backend the `grip` extension (the
/// client's own extensions never go); a `no_grip` route does not.
#[test]
fn websocket_backends_are_offered_the_grip_extension() {
    let b = Backend::start(|_, _| {
        Reply::Close(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec())
    });
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("*,path_beg=/plain,no_grip {}", b.addr),
        "--route",
        &b.route(),
    ]);
    for (path, want) in [("/ws", Some("grip")), ("/plain", None)] {
        let mut s = TcpStream::connect(cp.addr()).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n").as_bytes()).expect("write");
        let mut r = BufReader::new(s);
        assert_eq!(read_head_only(&mut r).expect("answer").status, 403);
        let seen = b.last();
        assert_eq!(seen.path, path);
        assert_eq!(seen.header("sec-websocket-extensions"), want, "{path}");
    }
}

/// A filter that fails on a message (var-subst, an unknown variable): on
/// a `debug` route the WebSocket is closed 1011 with the reason, as
/// streams and long-polls report it there; elsewhere only that message is
/// dropped for that client and the connection goes on.
#[test]
fn websocket_filter_errors_close_1011_on_debug_routes() {
    let b = PyBackend::start("wsoh_control.py", &[]);
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("*,path_beg=/ws/d/,debug 127.0.0.1:{},over_http", b.port),
        "--route",
        &format!("* 127.0.0.1:{},over_http", b.port),
    ]);
    let (mut d, mut dr) = raw_ws(cp.addr(), "/ws/d/dave");
    let (mut p, mut pr) = raw_ws(cp.addr(), "/ws/paula");
    for (s, r) in [(&mut d, &mut dr), (&mut p, &mut pr)] {
        send_text(s, "sync");
        assert_eq!(next_text(r), "echo: sync");
    }
    wait_until("both subscribed", || {
        metric(&cp, "corepin_subscriptions") == 2
    });
    let r = cp.publish(r#"{"items":[{"channel":"room","ws-message":{"content":"%(nope)s"}}]}"#);
    assert_eq!(r.status, 200);
    let r =
        cp.publish(r#"{"items":[{"channel":"room","ws-message":{"content":"after, %(name)s"}}]}"#);
    assert_eq!(r.status, 200);
    assert_eq!(
        close_of(&mut dr),
        (
            1011,
            "filter error: var-subst: no such variable 'nope' at position 7".to_string()
        )
    );
    assert_eq!(next_text(&mut pr), "after, Paula");
}
