//! The browser's own EventSource resuming through corepin's channel
//! history (issue 18): a page in headless Chromium holds an SSE stream
//! (a GRIP hold from a real backend), corepin cuts that stream twice
//! while events are published — once with a published `close` action,
//! once by destroying its TCP connection (`ss -K`) — and the browser
//! reconnects by itself with `Last-Event-ID`. Every event must reach the
//! page exactly once, in order.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const TOTAL: u64 = 30;

/// Publishes SSE events `ns` (id n, data mN) on `feed` over one control
/// connection.
fn publish_events(cp: &Corepin, ns: std::ops::RangeInclusive<u64>) {
    let mut c = Conn::open(cp.control_addr());
    for n in ns {
        let body = serde_json::json!({"items":[{
            "channel": "feed",
            "id": n.to_string(),
            "formats": {"http-stream": {"content": format!("id: {n}\ndata: m{n}\n\n")}}
        }]})
        .to_string();
        c.send(
            format!(
                "POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        assert_eq!(c.read().expect("publish answer").status, 200);
    }
}

/// The Last-Event-ID of each /events request the backend saw.
fn stream_requests(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn chromium_eventsource_resumes_after_server_side_cuts_without_loss_or_repeats() {
    let version = Command::new("chromium").arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "chromium is missing: tests/run.sh installs it (apt-get install chromium)"
    );
    let dir = TempDir::new("esbrowser");
    let report = dir.path().join("report.json");
    let log = dir.path().join("streams.log");
    std::fs::write(&log, "").expect("log");
    let app = PyBackend::start(
        "eventsource_app.py",
        &[&report.display().to_string(), &log.display().to_string()],
    );
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("* 127.0.0.1:{}", app.port),
        "--workers",
        "2",
        "--history-messages",
        "1000",
    ]);
    let url = cp.url(&format!("/page.html?total={TOTAL}"));
    let mut browser = start_chromium(&url, dir.path());

    wait_until("the page's stream to be held", || {
        subscriptions_at(cp.control_addr()) == 1
    });
    publish_events(&cp, 1..=5);
    // Cut 1: a published close action ends the stream (after 1..5, in
    // order); 6..10 go out at once (while the browser waits its one
    // second retry delay, unless this thread is slower than that), and
    // 11..15 once it has asked again.
    let r = cp.publish(r#"{"items":[{"channel":"feed","http-stream":{"action":"close"}}]}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    publish_events(&cp, 6..=10);
    wait_until("the browser to reconnect after the close", || {
        stream_requests(&log).len() >= 2
    });
    publish_events(&cp, 11..=15);
    // The resume is counted when the new stream subscribes.
    wait_until("the resumed stream to be held", || {
        metric(&cp, "corepin_history_replays_total") == 1
    });
    // Cut 2: the stream's TCP connection destroyed under corepin (the
    // browser sees a reset), whatever of 11..15 was still in flight lost
    // with it.
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
    // It listed what it closed: a header, then at least the stream.
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.lines().count() >= 2,
        "ss -K closed nothing: {listed}"
    );
    publish_events(&cp, 16..=20);
    wait_until("the browser to reconnect after the reset", || {
        stream_requests(&log).len() >= 3
    });
    publish_events(&cp, 21..=TOTAL);

    // The page reports once it has seen the last event; the deadline
    // only turns a hang into a failure.
    let r = page_report(&mut browser, &report, dir.path(), Duration::from_secs(120));
    let seen = seen_events(&r);
    let want: Vec<(String, String)> = (1..=TOTAL)
        .map(|n| (n.to_string(), format!("m{n}")))
        .collect();
    assert_eq!(seen, want, "every event once, in order");
    // The browser saw both cuts.
    assert!(r["errors"].as_u64().is_some_and(|e| e >= 2), "{r}");
    // It came back with the last id it had seen, each time: 5 after the
    // close; after the reset, whatever of 5..15 it had got.
    let asked = stream_requests(&log);
    assert!(asked.len() >= 3, "{asked:?}");
    assert_eq!(asked[0], serde_json::Value::Null);
    assert_eq!(asked[1], "5", "the close came after 5");
    let ids: Vec<u64> = asked[1..]
        .iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .expect("a numeric Last-Event-ID")
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] <= w[1]), "{asked:?}");
    assert!((5..=15).contains(&ids[ids.len() - 1]), "{asked:?}");
    // Each reconnect was resumed from history, none a gap.
    assert_eq!(
        metric(&cp, "corepin_history_replays_total"),
        asked.len() as u64 - 1
    );
    assert_eq!(metric(&cp, "corepin_history_gaps_total"), 0);
}
