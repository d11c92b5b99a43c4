//! The built-in test target's `/stream` as an SSE endpoint: it answers
//! `text/event-stream` to a client that asks for it by name (a browser's
//! EventSource, which refuses any other type), `text/plain` otherwise (as
//! Pushpin's test target does), and with channel history on the browser's
//! own reconnect after a TCP reset resumes with `Last-Event-ID`, no event
//! lost or repeated.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The response head of a `/stream` request with these extra fields.
fn stream_head(cp: &Corepin, fields: &str) -> String {
    let mut s = TcpStream::connect(cp.addr()).expect("connect");
    s.write_all(format!("GET /stream?channel=h HTTP/1.1\r\nHost: x\r\n{fields}\r\n").as_bytes())
        .expect("request");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("read"), 1, "{head:?}");
        head.push(b[0]);
    }
    String::from_utf8(head)
        .expect("head text")
        .to_ascii_lowercase()
}

#[test]
fn stream_is_event_stream_for_eventsource_and_plain_text_for_others() {
    let cp = Corepin::start_grip(&["--route", "* test"]);
    for (fields, want) in [
        ("", "content-type: text/plain\r\n"),
        ("Accept: */*\r\n", "content-type: text/plain\r\n"),
        (
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n",
            "content-type: text/event-stream\r\n",
        ),
    ] {
        let head = stream_head(&cp, fields);
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        assert!(head.contains(want), "{fields:?}: {head}");
    }
}

/// Publishes SSE events `ns` (id n, data mN) on `feed`.
fn publish_events(cp: &Corepin, ns: std::ops::RangeInclusive<u64>) {
    for n in ns {
        let body = serde_json::json!({"items":[{
            "channel": "feed",
            "id": n.to_string(),
            "formats": {"http-stream": {"content": format!("id: {n}\ndata: m{n}\n\n")}}
        }]})
        .to_string();
        let r = cp.publish(&body);
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[test]
fn chromium_eventsource_on_the_test_target_resumes_after_a_reset() {
    let version = Command::new("chromium").arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "chromium is missing: tests/run.sh installs it (apt-get install chromium)"
    );
    let dir = TempDir::new("ttsse");
    let report = dir.path().join("report.json");
    let log = dir.path().join("streams.log");
    std::fs::write(&log, "").expect("log");
    // The backend serves the page and takes its report; the stream itself
    // is the test target's.
    let app = PyBackend::start(
        "eventsource_app.py",
        &[&report.display().to_string(), &log.display().to_string()],
    );
    let cp = Corepin::start_grip(&[
        "--route",
        "*,path_beg=/stream test",
        "--route",
        &format!("* 127.0.0.1:{}", app.port),
        "--history-messages",
        "100",
    ]);
    let total = 12;
    let url = cp.url(&format!(
        "/page.html?total={total}&src=%2Fstream%3Fchannel%3Dfeed"
    ));
    let mut browser = start_chromium(&url, dir.path());
    wait_until("the page's stream to be held", || {
        subscriptions_at(cp.control_addr()) == 1
    });
    publish_events(&cp, 1..=4);
    // The stream's TCP connection destroyed under corepin: the browser
    // sees a reset and reconnects by itself (after its retry delay) with
    // the last id it saw; 5..8 are published while it is away.
    let port = cp.addr().port();
    let out = Command::new("ss")
        .args(["-K", "-t", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss (iproute2; tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "ss -K (needs root and CONFIG_INET_DIAG_DESTROY): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    publish_events(&cp, 5..=8);
    wait_until("the browser to come back and be resumed", || {
        metric(&cp, "corepin_history_replays_total") == 1
    });
    publish_events(&cp, 9..=total);
    let r = page_report(&mut browser, &report, dir.path(), Duration::from_secs(120));
    let seen = seen_events(&r);
    let want: Vec<(String, String)> = (1..=total)
        .map(|n| (n.to_string(), format!("m{n}")))
        .collect();
    assert_eq!(seen, want, "every event once, in order");
    assert_eq!(r["opens"], 2, "opened, reset, opened again: {r}");
    assert_eq!(metric(&cp, "corepin_history_gaps_total"), 0);
}
