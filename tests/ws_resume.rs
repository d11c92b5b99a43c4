//! WebSocket resume from channel history (issue 18), black-box: the test
//! target's `/ws?channel=X` with `Last-Event-ID` on the upgrade request
//! (the python `websockets` client), or `?last-event-id=` (what a browser,
//! which cannot set headers on a WebSocket, sends); and a client that
//! drops and resumes over and over while publishes race it, which must see
//! every id exactly once, in order.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;

/// A ws-message item with id `n` and content `m<n>`.
fn ws_item(channel: &str, n: u64) -> String {
    serde_json::json!({"items":[{
        "channel": channel,
        "id": n.to_string(),
        "formats": {"ws-message": {"content": format!("m{n}")}}
    }]})
    .to_string()
}

fn publish_ws(cp: &Corepin, channel: &str, n: u64) {
    let r = cp.publish(&ws_item(channel, n));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_websockets_client_resuming_gets_what_it_missed_then_live_messages() {
    let cp = Corepin::start_grip(&["--route", "* test", "--history-messages", "100"]);
    for n in 1..=5 {
        publish_ws(&cp, "feed", n);
    }
    let url = format!("ws://{}/ws?channel=feed", cp.addr());
    let child = Command::new(python())
        .arg(root().join("tests/clients/ws_client.py"))
        .args([
            &url,
            "-H",
            "Last-Event-ID: 2",
            "--recv",
            "4",
            "--close",
            "1000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python websockets client");
    // Live once it is subscribed (what was missed is queued by then).
    wait_until("the client to subscribe", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    publish_ws(&cp, "feed", 6);
    let out = child.wait_with_output().expect("client output");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["status"], 101, "{v}");
    assert_eq!(
        v["received"],
        serde_json::json!(["m3", "m4", "m5", "m6"]),
        "{v}"
    );
    assert_eq!(metric(&cp, "corepin_history_replays_total"), 1);
}

/// Opens `/ws?channel=feed&last-event-id=ID` raw; returns the socket and
/// the 101's `Corepin-Resume` value.
fn resume_raw(cp: &Corepin, last: Option<u64>) -> (BufReader<TcpStream>, Option<String>) {
    let mut s = TcpStream::connect(cp.addr()).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let q = last.map_or(String::new(), |n| format!("&last-event-id={n}"));
    s.write_all(format!("GET /ws?channel=feed{q} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).expect("write");
    let mut r = BufReader::new(s);
    let head = read_head_only(&mut r).expect("101");
    assert_eq!(head.status, 101);
    let note = head.header("corepin-resume").map(String::from);
    (r, note)
}

/// The id of the next text frame `m<id>`.
fn next_id(cp: &Corepin, r: &mut BufReader<TcpStream>) -> u64 {
    let mut h = [0u8; 2];
    if let Err(e) = r.read_exact(&mut h) {
        // A stall (no frame for the timeout) says where things stood.
        let port = r.get_ref().local_addr().map_or(0, |a| a.port());
        panic!(
            "frame header: {e}\nits socket (/proc/net/tcp):\n{}\ncorepin's threads:\n{}",
            tcp_lines(port),
            threads(cp.child.id())
        );
    }
    assert_eq!(h[0] & 0x0f, 1, "a text frame");
    let mut p = vec![0u8; usize::from(h[1] & 0x7f)];
    r.read_exact(&mut p).expect("payload");
    let text = String::from_utf8(p).expect("text");
    text.strip_prefix('m')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected message {text:?}"))
}

#[test]
fn resuming_again_and_again_while_publishes_race_loses_and_repeats_nothing() {
    const LAST: u64 = 400;
    let cp = Arc::new(Corepin::start_grip(&[
        "--route",
        "* test",
        "--history-messages",
        "1000",
        "--workers",
        "2",
    ]));
    // The first connection is live before anything is published.
    let (mut r, note) = resume_raw(&cp, None);
    assert_eq!(note, None);
    wait_until("the first subscriber", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (cp, done) = (cp.clone(), done.clone());
        thread::spawn(move || {
            for n in 1..=LAST {
                publish_ws(&cp, "feed", n);
            }
            done.store(true, Ordering::Release);
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut resumes = 0;
    while seen.last() != Some(&LAST) {
        // A few messages, then drop the connection and resume from the
        // last id seen (on whichever core the new connection lands).
        for _ in 0..7 {
            seen.push(next_id(&cp, &mut r));
            if seen.last() == Some(&LAST) {
                break;
            }
        }
        if seen.last() == Some(&LAST) {
            break;
        }
        drop(r);
        let (again, note) = resume_raw(&cp, seen.last().copied());
        let note = note.expect("a Corepin-Resume answer");
        assert!(note.starts_with("replayed="), "{note}");
        r = again;
        resumes += 1;
    }
    publisher.join().expect("publisher");
    assert!(done.load(Ordering::Acquire));
    let want: Vec<u64> = (1..=LAST).collect();
    assert_eq!(seen, want, "every id once, in order");
    assert!(resumes > 10, "{resumes} resumes");
}
