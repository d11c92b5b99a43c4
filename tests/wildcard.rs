//! Wildcard (prefix) channels (issue 18 item 3), black-box: a backend
//! holds streams and long-polls with `Grip-Channel: news.; prefix` on two
//! cores, a WebSocket-over-HTTP backend (gripcontrol) subscribes with
//! `"prefix": true`; publishes to channels under the prefix reach them,
//! once each, with their filters, and others do not.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use common::*;

/// A GRIP backend: the path after `/` is the `Grip-Channel` value to hold
/// a stream on (`;` as `%3B`, spaces as `+`), and `user=` the meta user;
/// `/poll/...` holds a long-poll instead.
fn backend() -> Backend {
    Backend::start(|req, _| {
        let (mode, rest) = match req.path.strip_prefix("/poll/") {
            Some(r) => ("response", r),
            None => ("stream", req.path.trim_start_matches('/')),
        };
        let (chan, user) = rest.split_once("?user=").unwrap_or((rest, "nobody"));
        let chan = chan.replace("%3B", ";").replace('+', " ");
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nGrip-Hold: {mode}\r\nGrip-Channel: {chan}\r\nGrip-Set-Meta: user={user}\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes(),
        )
    })
}

fn publish(cp: &Corepin, items: serde_json::Value) {
    let r = cp.publish(&serde_json::json!({ "items": items }).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
}

fn stream_item(ch: &str, content: &str) -> serde_json::Value {
    serde_json::json!({"channel": ch, "formats": {"http-stream": {"content": content}}})
}

#[test]
fn prefix_streams_and_long_polls_on_two_cores_get_each_item_once() {
    let b = backend();
    let cp = Corepin::start_grip(&["--route", &b.route(), "--workers", "2"]);
    // Enough streams that both cores hold some (each connection goes to
    // whichever core accepts it).
    let mut all: Vec<Stream> = (0..6)
        .map(|_| Stream::open(cp.addr(), "/news.%3B+prefix"))
        .collect();
    let mut both = Stream::open(cp.addr(), "/news.a,+news.%3B+prefix,+news.a%3B+prefix");
    let mut exact = Stream::open(cp.addr(), "/news.a");
    let mut sport = Stream::open(cp.addr(), "/sport.%3B+prefix");
    let mut alice = Stream::open(cp.addr(), "/news.%3B+prefix%3B+filter=skip-self?user=alice");
    for s in all.iter().chain([&both, &exact, &sport, &alice]) {
        assert_eq!(s.head.status, 200);
    }
    wait_until("every hold subscribed", || {
        metric(&cp, "corepin_subscriptions") == 6 + 3 + 1 + 1 + 1
    });
    publish(
        &cp,
        serde_json::json!([
            stream_item("news.a", "1;"),
            stream_item("newsroom", "-;"),
            stream_item("news.b", "2;"),
            stream_item("news.a", "3;"),
            {"channel": "news.c", "meta": {"sender": "alice"},
             "formats": {"http-stream": {"content": "4;"}}},
            stream_item("news.", "5;"),
            stream_item("news", "-;"),
        ]),
    );
    // A marker on a channel each of them hears, published last: what came
    // before it is everything they get.
    publish(&cp, serde_json::json!([stream_item("news.end", "end")]));
    for s in all.iter_mut() {
        assert_eq!(s.read_text(13), "1;2;3;4;5;end", "in the order published");
    }
    assert_eq!(both.read_text(13), "1;2;3;4;5;end", "once each");
    assert_eq!(
        alice.read_text(11),
        "1;2;3;5;end",
        "skip-self still applies"
    );
    publish(
        &cp,
        serde_json::json!([stream_item("news.a", "done"), stream_item("sport.x", "s")]),
    );
    assert_eq!(exact.read_text(8), "1;3;done");
    assert_eq!(sport.read_text(1), "s");
    // Counts are per channel: the prefixes are not channels.
    let r = cp.control("GET /channels?channel=news.a HTTP/1.1\r\nHost: c\r\n\r\n");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.text()).expect("JSON");
    assert_eq!(v["channels"][0]["subscribers"], 2, "{v}");
    // A long-poll on a prefix is answered by a publish under it.
    drop((all, both, exact, sport, alice));
    wait_until("the streams to go", || {
        metric(&cp, "corepin_subscriptions") == 0
    });
    let mut poll = Conn::open(cp.addr());
    poll.send(b"GET /poll/orders.%3B+prefix HTTP/1.1\r\nHost: a\r\n\r\n");
    wait_until("the long-poll to subscribe", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    publish(
        &cp,
        serde_json::json!([{"channel": "orders.42", "formats": {"http-response": {"body": "order 42\n"}}}]),
    );
    let r = poll.read().expect("the long-poll's answer");
    assert_eq!((r.status, r.text().as_str()), (200, "order 42\n"));
}

#[test]
fn a_prefix_with_prev_id_or_a_valued_prefix_parameter_is_refused_by_name() {
    let b = backend();
    let cp = Corepin::start_grip(&["--route", &b.route(), "--workers", "1"]);
    let mut c = Conn::open(cp.addr());
    let r = c.get("/news.%3B+prefix%3B+prev-id=3");
    assert_eq!(r.status, 502, "{}", r.text());
    cp.wait_stderr("prev-id does not apply to a prefix subscription");
    let mut c = Conn::open(cp.addr());
    let r = c.get("/news.%3B+prefix=yes");
    assert_eq!(r.status, 502, "{}", r.text());
    cp.wait_stderr("unknown parameter 'prefix' (prev-id, filter, prefix)");
}

fn raw_ws(addr: std::net::SocketAddr, path: &str) -> (TcpStream, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let head = read_head_only(&mut r).expect("handshake answer");
    assert_eq!(head.status, 101);
    (s, r)
}

/// The next text frame (a server's frames are unmasked, short here).
fn next_text(r: &mut BufReader<TcpStream>) -> String {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).expect("frame header");
    assert_eq!(h[0] & 0x0f, 1, "a text frame");
    assert!(h[1] & 0x7f < 126, "short");
    let mut p = vec![0u8; usize::from(h[1] & 0x7f)];
    r.read_exact(&mut p).expect("payload");
    String::from_utf8_lossy(&p).into_owned()
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

fn ws_item(ch: &str, content: &str) -> serde_json::Value {
    serde_json::json!({"channel": ch, "formats": {"ws-message": {"content": content}}})
}

/// gripcontrol's `subscribe` control message with `"prefix": true` on a
/// WebSocket-over-HTTP session; `unsubscribe` with it ends it.
#[test]
fn websocket_control_message_subscribes_to_a_prefix() {
    let b = PyBackend::start("wsoh_control.py", &[]);
    let route = format!("* 127.0.0.1:{},over_http", b.port);
    let cp = Corepin::start_grip(&["--route", &route, "--workers", "1"]);
    let (mut a, mut ar) = raw_ws(cp.addr(), "/ws/alice");
    // The session subscribes to `room` on open; then to the prefix.
    send_text(&mut a, "psub feed.");
    send_text(&mut a, "sync");
    assert_eq!(next_text(&mut ar), "echo: sync");
    wait_until("room and the prefix", || {
        metric(&cp, "corepin_subscriptions") == 2
    });
    publish(
        &cp,
        serde_json::json!([
            ws_item("feed.1", "one"),
            ws_item("feedx", "no"),
            ws_item("feed.2", "two"),
            ws_item("room", "room"),
        ]),
    );
    assert_eq!(next_text(&mut ar), "one");
    assert_eq!(next_text(&mut ar), "two");
    assert_eq!(next_text(&mut ar), "room");
    send_text(&mut a, "punsub feed.");
    send_text(&mut a, "sync2");
    assert_eq!(next_text(&mut ar), "echo: sync2");
    wait_until("only room", || metric(&cp, "corepin_subscriptions") == 1);
    publish(
        &cp,
        serde_json::json!([ws_item("feed.3", "gone"), ws_item("room", "still")]),
    );
    assert_eq!(next_text(&mut ar), "still");
}
