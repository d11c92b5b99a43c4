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
