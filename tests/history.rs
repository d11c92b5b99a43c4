//! Channel history and resume (issue 18), black-box: corepin started with
//! `--history-messages`, SSE clients (curl, raw sockets) coming back with
//! `Last-Event-ID`, long-polls whose `prev-id` is behind.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;

/// An SSE event with id `n`, published on `channel`.
fn sse_item(channel: &str, n: u64) -> String {
    serde_json::json!({"items":[{
        "channel": channel,
        "id": n.to_string(),
        "formats": {"http-stream": {"content": format!("id: {n}\ndata: m{n}\n\n")}}
    }]})
    .to_string()
}

fn publish_sse(cp: &Corepin, channel: &str, n: u64) {
    let r = cp.publish(&sse_item(channel, n));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The ids of the SSE events in `text`, in order.
fn ids_in(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .filter_map(|v| v.parse().ok())
        .collect()
}

#[test]
fn curl_resuming_with_last_event_id_gets_what_it_missed_then_live_events() {
    let cp = Corepin::start_grip(&["--route", "* test", "--history-messages", "100"]);
    for n in 1..=5 {
        publish_sse(&cp, "feed", n);
    }
    let mut curl = Command::new("curl")
        .args(["-sN", "-D", "-", "-H", "Last-Event-ID: 2"])
        .arg(cp.url("/stream?channel=feed"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut out = BufReader::new(curl.stdout.take().expect("stdout"));
    let mut seen = String::new();
    let mut line = String::new();
    // Replayed: 3, 4, 5, before anything live.
    while ids_in(&seen).len() < 3 {
        line.clear();
        assert!(out.read_line(&mut line).expect("read") > 0, "{seen}");
        seen.push_str(&line);
    }
    assert!(
        seen.to_ascii_lowercase()
            .contains("corepin-resume: replayed=3"),
        "{seen}"
    );
    publish_sse(&cp, "feed", 6);
    while ids_in(&seen).len() < 4 {
        line.clear();
        assert!(out.read_line(&mut line).expect("read") > 0, "{seen}");
        seen.push_str(&line);
    }
    assert_eq!(ids_in(&seen), [3, 4, 5, 6], "{seen}");
    assert!(seen.contains("data: m3\n"));
    let _ = curl.kill();
    let _ = curl.wait();
    assert_eq!(metric(&cp, "corepin_history_replays_total"), 1);
    assert_eq!(metric(&cp, "corepin_history_items"), 6);
    assert!(metric(&cp, "corepin_history_bytes") > 6 * 6);
}

#[test]
fn an_id_history_no_longer_holds_is_a_gap_and_a_bad_one_is_refused() {
    let cp = Corepin::start_grip(&["--route", "* test", "--history-messages", "3"]);
    for n in 1..=6 {
        publish_sse(&cp, "g", n);
    }
    // 1..3 fell out of a history of 3.
    let s = Stream::open_with(cp.addr(), "/stream?channel=g", "Last-Event-ID: 2\r\n");
    assert_eq!(s.head.header("corepin-resume"), Some("gap"));
    assert_eq!(metric(&cp, "corepin_history_gaps_total"), 1);
    assert_eq!(metric(&cp, "corepin_history_items"), 3);
    // Up to date: nothing to replay.
    let s = Stream::open_with(cp.addr(), "/stream?channel=g", "Last-Event-ID: 6\r\n");
    assert_eq!(s.head.header("corepin-resume"), Some("replayed=0"));
    let long = "x".repeat(300);
    let s = Stream::open_with(
        cp.addr(),
        "/stream?channel=g",
        &format!("Last-Event-ID: {long}\r\n"),
    );
    assert_eq!(s.head.header("corepin-resume"), Some("invalid-id"));
    // Without the header, nothing is said.
    let s = Stream::open(cp.addr(), "/stream?channel=g");
    assert_eq!(s.head.header("corepin-resume"), None);
}

#[test]
fn without_history_last_event_id_is_not_answered() {
    let cp = Corepin::start_grip(&["--route", "* test"]);
    publish_sse(&cp, "n", 1);
    let s = Stream::open_with(cp.addr(), "/stream?channel=n", "Last-Event-ID: 1\r\n");
    assert_eq!(s.head.header("corepin-resume"), None);
}

/// Subscribers that drop their connection every few events and come back
/// with the last id they saw, while a publisher keeps publishing: each
/// sees every event exactly once, in order.
#[test]
fn reconnecting_subscribers_lose_nothing_and_see_nothing_twice() {
    const TOTAL: u64 = 400;
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--workers",
        "2",
        "--history-messages",
        "1000",
    ]);
    let addr = cp.addr();
    let clients: Vec<_> = (0..4)
        .map(|c| {
            thread::spawn(move || {
                let mut got: Vec<u64> = Vec::new();
                let mut round = 0;
                while got.last().copied() != Some(TOTAL) {
                    round += 1;
                    let headers = match got.last() {
                        Some(last) => format!("Last-Event-ID: {last}\r\n"),
                        None => String::new(),
                    };
                    let mut s = Stream::open_with(addr, "/stream?channel=storm", &headers);
                    // Stay for a few events (more in later rounds), then
                    // drop the connection mid-stream.
                    let stay = 3 + (round + c) % 7;
                    let before = got.len();
                    let mut text = String::new();
                    while got.len() < before + stay && got.last().copied() != Some(TOTAL) {
                        let Some(chunk) = s.chunk() else {
                            panic!("client {c}: the stream ended")
                        };
                        text.push_str(&String::from_utf8_lossy(&chunk));
                        // Events arrive whole in one chunk or several.
                        while let Some(end) = text.find("\n\n") {
                            let event: String = text.drain(..end + 2).collect();
                            got.extend(ids_in(&event));
                        }
                    }
                }
                got
            })
        })
        .collect();
    // The first subscribers are in before the first publish, so every
    // client's sequence starts at 1.
    wait_until("the clients to subscribe", || {
        subscriptions_at(cp.control_addr()) >= 4
    });
    let publisher = {
        let control = cp.control_addr();
        thread::spawn(move || {
            let mut c = Conn::open(control);
            for n in 1..=TOTAL {
                let body = sse_item("storm", n);
                c.send(
                    format!(
                        "POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
                assert_eq!(c.read().expect("answer").status, 200);
            }
        })
    };
    publisher.join().expect("publisher");
    let want: Vec<u64> = (1..=TOTAL).collect();
    for (c, t) in clients.into_iter().enumerate() {
        let got = t.join().expect("client");
        assert_eq!(got, want, "client {c}");
    }
    assert!(metric(&cp, "corepin_history_replays_total") > 0);
    assert_eq!(metric(&cp, "corepin_history_gaps_total"), 0);
}

/// A long-poll whose prev-id is behind is answered from history, without
/// a second request to the backend; one history cannot serve goes back.
#[test]
fn a_long_poll_behind_is_answered_from_history() {
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = calls.clone();
    let b = Backend::start(move |req, _| {
        seen.lock().expect("lock").push(req.path.clone());
        let prev = if req.path.contains("old") { "0" } else { "1" };
        Reply::Bytes(format!("HTTP/1.1 200 OK\r\nGrip-Hold: response\r\nGrip-Channel: lp; prev-id={prev}\r\nContent-Length: 0\r\n\r\n").into_bytes())
    });
    let cp = Corepin::start_grip(&[
        "--route",
        &b.route(),
        "--workers",
        "1",
        "--history-messages",
        "10",
    ]);
    for (id, prev, body) in [
        ("1", None, "one"),
        ("2", Some("1"), "two"),
        ("3", Some("2"), "three"),
    ] {
        let mut item =
            serde_json::json!({"channel":"lp","id":id,"formats":{"http-response":{"body":body}}});
        if let Some(p) = prev {
            item["prev-id"] = p.into();
        }
        let r = cp.publish(&serde_json::json!({ "items": [item] }).to_string());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = Conn::open(cp.addr()).get("/poll");
    assert_eq!(r.text(), "two", "the item after prev-id 1");
    assert_eq!(
        calls.lock().expect("lock").len(),
        1,
        "the backend asked once"
    );
    // prev-id 0 was never published: history cannot tell what followed
    // it, so the backend is asked again (Pushpin's behaviour).
    let before = calls.lock().expect("lock").len();
    let mut c = Conn::open(cp.addr());
    c.send(b"GET /old HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the backend to be asked again", || {
        calls.lock().expect("lock").len() >= before + 2
    });
}

/// A GRIP backend holding `/s?ch=C&prev=P` as a stream on C with
/// `prev-id=P` and a next link, `/next?ch=C` again on C after id 4; every
/// request's path and `Grip-Last` are recorded.
/// Requests a backend saw: path and `Grip-Last`.
type Calls = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn prev_id_stream_backend(calls: Calls) -> Backend {
    Backend::start(move |req, _| {
        calls
            .lock()
            .expect("lock")
            .push((req.path.clone(), req.header("grip-last").map(String::from)));
        let query = |k: &str| {
            req.path
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        };
        let ch = query("ch");
        let (prev, body) = if req.path.starts_with("/next") {
            ("4".to_string(), "caught up\n")
        } else {
            (query("prev"), "hello\n")
        };
        Reply::Bytes(format!("HTTP/1.1 200 OK\r\nGrip-Hold: stream\r\nGrip-Channel: {ch}; prev-id={prev}\r\nGrip-Link: </next?ch={ch}>; rel=next\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes())
    })
}

/// Publishes http-stream item `n` on `channel`, with prev-id `n - 1`.
fn publish_chained(cp: &Corepin, channel: &str, n: u64) {
    let mut item = serde_json::json!({"channel": channel, "id": n.to_string(),
        "formats": {"http-stream": {"content": format!("m{n}\n")}}});
    if n > 1 {
        item["prev-id"] = (n - 1).to_string().into();
    }
    let r = cp.publish(&serde_json::json!({ "items": [item] }).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A stream whose prev-id is behind the channel's last id is given what it
/// missed from history, in order, then live items, and its backend is not
/// asked again; when history no longer holds the prev-id, the stream
/// fetches its next link at once, saying where it was in `Grip-Last`
/// (Pushpin's way to catch up).
#[test]
fn a_stream_behind_is_replayed_from_history_or_fetches_its_next_link() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let b = prev_id_stream_backend(calls.clone());
    let cp = Corepin::start_grip(&[
        "--route",
        &b.route(),
        "--workers",
        "1",
        "--history-messages",
        "2",
    ]);
    for n in 1..=3 {
        publish_chained(&cp, "c", n);
    }
    // History holds 2 and 3; the stream saw 2.
    let mut s = Stream::open(cp.addr(), "/s?ch=c&prev=2");
    assert_eq!(s.head.header("corepin-resume"), Some("replayed=1"));
    assert_eq!(s.read_text(9), "hello\nm3\n");
    publish_chained(&cp, "c", 4);
    assert_eq!(s.read_text(3), "m4\n");
    assert_eq!(
        calls.lock().expect("lock").len(),
        1,
        "the backend was asked once"
    );

    // History holds 3 and 4 of `d`; the stream saw 1: a gap.
    for n in 1..=4 {
        publish_chained(&cp, "d", n);
    }
    let mut s = Stream::open(cp.addr(), "/s?ch=d&prev=1");
    assert_eq!(s.head.header("corepin-resume"), None);
    assert_eq!(s.read_text(16), "hello\ncaught up\n");
    let next = calls.lock().expect("lock").last().cloned();
    assert_eq!(
        next,
        Some(("/next?ch=d".to_string(), Some("d; last-id=1".to_string())))
    );
    // The stream goes on live from the next link's prev-id 4 (in place
    // before its body reached the client).
    publish_chained(&cp, "d", 5);
    assert_eq!(s.read_text(3), "m5\n");
    assert_eq!(metric(&cp, "corepin_history_gaps_total"), 1);
}

/// A raw WebSocket client: connects, sends the upgrade for `path` with
/// `headers`, reads the 101.
fn ws_open(cp: &Corepin, path: &str, headers: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(cp.addr()).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n").as_bytes()).expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("101");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// The next text message from the server (pings and pongs skipped).
fn ws_text(s: &mut std::net::TcpStream) -> String {
    loop {
        let (op, p) = read_frame(s);
        match op {
            1 => return String::from_utf8(p).expect("text"),
            9 | 10 => continue,
            op => panic!("opcode {op}: {}", String::from_utf8_lossy(&p)),
        }
    }
}

fn ws_send(s: &mut std::net::TcpStream, text: &str) {
    use std::io::Write;
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

/// A ws-message item `m<n>` with id `n` on `channel`.
fn publish_ws(cp: &Corepin, channel: &str, n: u64) {
    let body = serde_json::json!({"items":[{"channel": channel, "id": n.to_string(),
        "formats": {"ws-message": {"content": format!("m{n}")}}}]});
    let r = cp.publish(&body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
}

/// WebSockets held by backends resume too: a `subscribe` control message
/// with `last-id` (sent by a WebSocket-over-HTTP backend through
/// gripcontrol, or by a WebSocket backend that passes on the client's
/// Last-Event-ID) is given what the channel published after that id from
/// history, in order, before live messages; an id history no longer
/// holds replays nothing (a gap, counted) but still subscribes.
#[test]
fn websockets_held_by_backends_resume_with_last_id() {
    let wsoh = PyBackend::start("wsoh_control.py", &[]);
    let echo = PyBackend::start("ws_echo.py", &[]);
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("*,path_beg=/gripresume 127.0.0.1:{}", echo.port),
        "--route",
        &format!("* 127.0.0.1:{},over_http", wsoh.port),
        "--workers",
        "2",
        "--history-messages",
        "3",
    ]);
    for n in 1..=5 {
        publish_ws(&cp, "r", n);
    }
    // WebSocket-over-HTTP: the client tells its backend where it was.
    let mut a = ws_open(&cp, "/ws/alice", "");
    ws_send(&mut a, "resume r 3");
    assert_eq!(ws_text(&mut a), "m4");
    assert_eq!(ws_text(&mut a), "m5");
    publish_ws(&cp, "r", 6);
    assert_eq!(ws_text(&mut a), "m6");
    assert_eq!(metric(&cp, "corepin_history_replays_total"), 1);

    // Passed through: the backend reads the client's Last-Event-ID.
    // (The backend's own message after its subscribe and the replayed
    // m6 may come in either order.)
    let mut b = ws_open(&cp, "/gripresume", "Last-Event-ID: 5\r\n");
    let mut first = [ws_text(&mut b), ws_text(&mut b)];
    first.sort();
    assert_eq!(first, ["m6", "subscribed"]);
    publish_ws(&cp, "r", 7);
    assert_eq!(ws_text(&mut b), "m7");
    assert_eq!(ws_text(&mut a), "m7");

    // History holds 5..7: after 2 is a gap. Nothing is replayed; the
    // subscription is live (the echo after it comes back first, then m8).
    let mut c = ws_open(&cp, "/ws/carol", "");
    ws_send(&mut c, "resume r 2");
    wait_until("the gap is counted", || {
        metric(&cp, "corepin_history_gaps_total") == 1
    });
    ws_send(&mut c, "hello");
    assert_eq!(ws_text(&mut c), "echo: hello");
    publish_ws(&cp, "r", 8);
    assert_eq!(ws_text(&mut c), "m8");
}
