//! The publish path, black-box: publishes reach only the cores holding
//! subscribers on their channels (and never miss a subscriber that was
//! there first), pipelined publishes on one connection, and the bounds
//! that keep a huge or excessive publish from starving clients or growing
//! memory (429 / 503 with a clear body).

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;

/// `name{core="N"} value` lines of one /metrics scrape, by core.
fn per_core(cp: &Corepin, name: &str) -> Vec<u64> {
    let text = cp
        .control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
        .text();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&format!("{name}{{core=\"")) else {
            continue;
        };
        let (core, value) = rest.split_once("\"} ").expect("a per-core line");
        let core: usize = core.parse().expect("core index");
        if out.len() <= core {
            out.resize(core + 1, 0);
        }
        out[core] = value.trim().parse().expect("a number");
    }
    out
}

/// One metric's value with a given label (`reason="busy"`).
fn labelled(cp: &Corepin, name: &str, label: &str) -> u64 {
    let text = cp
        .control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
        .text();
    let prefix = format!("{name}{{{label}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
}

fn publish_request(body: &str, extra: &str) -> String {
    format!(
        "POST /publish/ HTTP/1.1\r\nHost: c\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn stream_item(channel: &str, content: &str) -> String {
    serde_json::json!({"items":[{"channel":channel,"http-stream":{"content":content}}]}).to_string()
}

#[test]
fn a_publish_wakes_only_the_core_that_holds_a_subscriber_on_its_channel() {
    let cp = Corepin::start_grip(&["--route", "* test", "--workers", "2"]);
    let mut s = Stream::open(cp.addr(), "/stream?channel=solo");
    // Which core holds the subscriber: the one whose gauge reads 1 (each
    // core refreshes its figures a few times a second).
    let holder = std::cell::Cell::new(None);
    wait_until("the subscription to show on one core", || {
        let subs = per_core(&cp, "corepin_subscriptions");
        holder.set(subs.iter().position(|&n| n == 1));
        subs.iter().sum::<u64>() == 1 && holder.get().is_some()
    });
    let holder = holder.get().expect("a core holds the subscriber");
    let other = 1 - holder;
    let before = per_core(&cp, "corepin_publish_wakes_total");
    let mut c = Conn::open(cp.control_addr());
    let mut want = String::new();
    for i in 0..30 {
        let content = format!("<{i}>");
        want.push_str(&content);
        c.send(publish_request(&stream_item("solo", &content), "").as_bytes());
        assert_eq!(c.read().expect("answer").status, 200);
        // Nobody listens here: no core is woken for it.
        c.send(publish_request(&stream_item("nobody-here", "x"), "").as_bytes());
        assert_eq!(c.read().expect("answer").status, 200);
    }
    assert_eq!(s.read_text(want.len()), want, "every publish, in order");
    let after = per_core(&cp, "corepin_publish_wakes_total");
    assert_eq!(
        after[other], before[other],
        "the core without subscribers was never woken"
    );
    // The holder is woken at most once per publish (never when the publish
    // was made on the holder itself, which kicks its delivery directly).
    assert!(after[holder] - before[holder] <= 30, "{before:?} {after:?}");
}

/// The ordering the interest table must keep: a subscriber whose head has
/// reached its client (so the subscription is registered on its core) gets
/// a publish sent after that, whichever core holds it and whichever core
/// takes the publish. Each thread keeps one subscriber on its channel for
/// the whole run and churns others on the same channel and on a channel
/// sharing its interest slot: every churned subscriber that leaves turns
/// its core's count for the slot down (and the bit off when it was the
/// last), racing the other threads' subscribes and publishes, and the kept
/// subscriber must still get every publish.
#[test]
fn a_subscriber_added_right_before_a_publish_on_any_core_gets_it() {
    use corepin::bus::Interest;
    let cp = Corepin::start_grip(&["--route", "* test", "--workers", "2"]);
    let (addr, control) = (cp.addr(), cp.control_addr());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                let kept = format!("race-{t}");
                let twin = (0..)
                    .map(|n| format!("twin-{t}-{n}"))
                    .find(|c| Interest::slot(c) == Interest::slot(&kept))
                    .expect("a channel in the same slot");
                let mut anchor = Stream::open(addr, &format!("/stream?channel={kept}"));
                let mut c = Conn::open(control);
                for i in 0..150 {
                    let channel = if i % 2 == 0 { &kept } else { &twin };
                    let mut s = Stream::open(addr, &format!("/stream?channel={channel}"));
                    let content = format!("[{t}:{i}]");
                    c.send(publish_request(&stream_item(channel, &content), "").as_bytes());
                    assert_eq!(c.read().expect("answer").status, 200);
                    assert_eq!(
                        s.read_text(content.len()),
                        content,
                        "thread {t}, iteration {i}: the new subscriber got the publish"
                    );
                    if channel == &kept {
                        assert_eq!(
                            anchor.read_text(content.len()),
                            content,
                            "thread {t}, iteration {i}: the kept subscriber got the publish"
                        );
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a racing thread");
    }
}

#[test]
fn pipelined_publishes_are_all_answered_in_order() {
    let cp = Corepin::start_grip(&["--route", "* test"]);
    let mut s = Stream::open(cp.addr(), "/stream?channel=pipe");
    let mut wire = String::new();
    let mut want = String::new();
    let mut statuses = Vec::new();
    for i in 0..40 {
        let last = i == 39;
        let close = if last { "Connection: close\r\n" } else { "" };
        if i % 10 == 5 {
            wire.push_str(&publish_request(r#"{"items":[{"http-stream":{}}]}"#, close));
            statuses.push(400);
        } else {
            let content = format!("<{i}>");
            want.push_str(&content);
            let accept = if i == 7 {
                "Accept: application/json\r\n"
            } else {
                ""
            };
            wire.push_str(&publish_request(
                &stream_item("pipe", &content),
                &format!("{accept}{close}"),
            ));
            statuses.push(200);
        }
    }
    let mut c = Conn::open(cp.control_addr());
    c.send(wire.as_bytes());
    for (i, status) in statuses.iter().enumerate() {
        let r = c.read().expect("an answer for every request");
        assert_eq!(r.status, *status, "request {i}: {}", r.text());
        match (status, i) {
            (400, _) => assert_eq!(r.text(), "items[0].channel: missing\n"),
            (_, 7) => assert_eq!(r.header("content-type"), Some("application/json")),
            _ => assert_eq!(r.text(), "Published\n"),
        }
    }
    assert!(
        c.closed_within(TIMEOUT),
        "closed after the request that asked"
    );
    assert_eq!(s.read_text(want.len()), want);
}

/// Issue 11, item 8: a publish of 100,000 items, parsed and handed out on
/// the same core that serves a keep-alive client, does not stop that
/// client's requests from being answered meanwhile.
#[test]
fn a_huge_publish_does_not_stall_client_requests_on_its_core() {
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--workers",
        "1",
        "--config",
        &write_config("[publish]\nmax_body_bytes = 67108864\n"),
    ]);
    let mut sub = Stream::open(cp.addr(), "/stream?channel=huge");
    // 20,000 items are 79 slices of 256: enough for the client to be
    // served many times over, little enough that a debug build on a
    // loaded machine parses them well within the read timeout (100,000
    // took over 20 s at a load average of 25).
    const N: usize = 20_000;
    let mut body = String::with_capacity(N * 64);
    body.push_str(r#"{"items":["#);
    for i in 0..N {
        if i > 0 {
            body.push(',');
        }
        // Every 100th item to the subscriber, the rest to empty rooms.
        let channel = if i % 100 == 0 {
            "huge".to_string()
        } else {
            format!("room-{}", i % 5000)
        };
        body.push_str(&format!(
            r#"{{"channel":"{channel}","formats":{{"http-stream":{{"content":"{i};"}}}}}}"#
        ));
    }
    body.push_str("]}");
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (answered, stop, addr) = (answered.clone(), stop.clone(), cp.addr());
        thread::spawn(move || {
            let mut c = Conn::open(addr);
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(c.get("/elsewhere").status, 404);
                answered.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let reader = thread::spawn(move || {
        let want: String = (0..N).step_by(100).map(|i| format!("{i};")).collect();
        sub.read_text(want.len()) == want
    });
    wait_until("the client to be served", || {
        answered.load(Ordering::Relaxed) > 0
    });
    let mut c = Conn::open(cp.control_addr());
    c.send(publish_request(&body, "").as_bytes());
    // From here corepin parses and hands out the items; the client is
    // served between slices.
    let at_sent = answered.load(Ordering::Relaxed);
    let r = c.read().expect("the publish answer");
    let at_answer = answered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        at_answer - at_sent >= 10,
        "client requests answered while the publish was parsed: {}",
        at_answer - at_sent
    );
    assert!(
        reader.join().expect("reader"),
        "the subscriber got its items"
    );
}

/// Over the in-flight budget, a publish is refused with 429 and a body
/// that says why, and the connection stays usable; once the budget is
/// free again the same publish goes through.
#[test]
fn a_publish_over_the_in_flight_budget_gets_429() {
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--config",
        &write_config("[publish]\nmax_inflight_bytes = 100000\n"),
    ]);
    // A publish whose body is still arriving holds its share (its
    // Content-Length) of the budget.
    let slow = stream_item("slow", &"s".repeat(90_000));
    let (first, rest) = slow.split_at(1000);
    let mut holder = Conn::open(cp.control_addr());
    holder.send(
        format!(
            "POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{first}",
            slow.len()
        )
        .as_bytes(),
    );
    wait_until("the slow publish to hold its budget", || {
        metric(&cp, "corepin_publish_inflight_bytes") >= slow.len() as u64
    });
    // 12 kB: alone it fits, on top of the slow one it does not. The
    // connection stays usable when the body came with the head; either
    // way the answer is 429.
    let other = stream_item("other", &"o".repeat(12_000));
    let mut c = Conn::open(cp.control_addr());
    c.send(publish_request(&other, "").as_bytes());
    let r = c.read().expect("an answer");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.text().starts_with("too many publishes in progress"),
        "{}",
        r.text()
    );
    holder.send(rest.as_bytes());
    assert_eq!(holder.read().expect("the slow publish").status, 200);
    let mut c = Conn::open(cp.control_addr());
    c.send(publish_request(&other, "").as_bytes());
    assert_eq!(c.read().expect("after the budget is free").status, 200);
    assert_eq!(metric(&cp, "corepin_publish_inflight_bytes"), 0);
    assert_eq!(
        labelled(&cp, "corepin_publishes_refused_total", "reason=\"busy\""),
        1
    );
}

/// While a core has more undelivered items queued than its bound, a
/// publish is refused with 503 and a body that says so; once the core has
/// delivered, publishes are taken again. One core, and the second publish
/// pipelined behind the first in one write: it is handled before the core
/// gets to deliver the first, so the backlog is there to be seen.
#[test]
fn a_publish_while_a_core_is_behind_gets_503() {
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--workers",
        "1",
        "--config",
        &write_config("[publish]\nmax_backlog_bytes = 1024\n"),
    ]);
    let mut s = Stream::open(cp.addr(), "/stream?channel=b");
    let three = r#"{"items":[{"channel":"b","http-stream":{"content":"1"}},{"channel":"b","http-stream":{"content":"2"}},{"channel":"b","http-stream":{"content":"3"}}]}"#;
    let mut c = Conn::open(cp.control_addr());
    let mut wire = publish_request(three, "");
    wire.push_str(&publish_request(&stream_item("b", "late"), ""));
    c.send(wire.as_bytes());
    assert_eq!(c.read().expect("first").status, 200);
    let r = c.read().expect("second");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.text().starts_with("delivery backlog full"),
        "{}",
        r.text()
    );
    assert_eq!(s.read_text(3), "123");
    // Delivered: the backlog is empty again and publishes are taken.
    wait_until("the backlog to drain", || {
        per_core(&cp, "corepin_publish_backlog_bytes") == [0]
    });
    c.send(publish_request(&stream_item("b", "4"), "").as_bytes());
    assert_eq!(c.read().expect("third").status, 200);
    assert_eq!(s.read_text(1), "4");
    assert_eq!(
        labelled(&cp, "corepin_publishes_refused_total", "reason=\"backlog\""),
        1
    );
}

/// The control socket takes the same publishes, with errors that name the
/// item and field, and many lines on one connection.
#[test]
fn control_socket_publishes_line_after_line() {
    let dir = std::env::temp_dir().join(format!("corepin-pubsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("c.sock");
    let sock_s = sock.display().to_string();
    let cp = Corepin::start_grip(&["--route", "* test", "--control-socket", &sock_s]);
    let mut s = Stream::open(cp.addr(), "/stream?channel=line");
    let conn = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    let mut w = conn.try_clone().expect("clone");
    let mut lines = String::new();
    for i in 0..20 {
        lines.push_str(&format!(
            "{{\"method\":\"publish\",\"items\":[{{\"channel\":\"line\",\"http-stream\":{{\"content\":\"{i};\"}}}}]}}\n"
        ));
    }
    lines.push_str(
        "{\"items\":[{\"channel\":\"line\",\"http-stream\":{}},{\"channel\":\"\"}],\"method\":\"publish\"}\n",
    );
    lines.push_str("{\"method\":\"publish\",\"items\":[],\"extra\":1}\n");
    w.write_all(lines.as_bytes()).expect("write");
    let mut r = std::io::BufReader::new(conn);
    for i in 0..22 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).expect("answer");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON answer");
        match i {
            20 => assert_eq!(v["error"], "items[1].channel: must not be empty", "{line}"),
            21 => assert_eq!(v["error"], "items: must not be empty", "{line}"),
            _ => assert_eq!(v, serde_json::json!({"ok": true, "published": 1})),
        }
    }
    let want: String = (0..20).map(|i| format!("{i};")).collect();
    assert_eq!(s.read_text(want.len()), want);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}
