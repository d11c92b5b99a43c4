//! Operations as a Pushpin deployment knows them: Pushpin's Prometheus
//! metric names in /metrics (after `metrics.pushpin_prefix`, Pushpin's
//! `prometheus_prefix`), and the access log's client address and
//! User-Agent (`log_from`, `log_user_agent`).

mod common;

use std::thread;

use common::*;

/// A metric's value (no labels) in a /metrics text.
fn value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn pushpin_metric_names_count_what_pushpin_counts() {
    let config = write_config("routes = [\"* test\"]\n[metrics]\npushpin_prefix = \"pp_\"\n");
    let cp = Corepin::start_grip(&["--config", &config, "--workers", "2"]);
    let addr = cp.addr();
    let poll = thread::spawn(move || Conn::open(addr).get("/response?channel=m"));
    wait_until("the long-poll", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    let text = cp
        .control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
        .text();
    assert_eq!(value(&text, "pp_connection_connected"), Some(1), "{text}");
    for (kind, name) in [
        ("counter", "pp_request_received"),
        ("gauge", "pp_connection_connected"),
        ("counter", "pp_message_received"),
        ("counter", "pp_message_sent"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}: {text}"
        );
    }
    cp.publish(r#"{"items":[{"channel":"m","formats":{"http-response":{"body":"x"}}}]}"#);
    assert_eq!(poll.join().expect("poll").text(), "x");
    wait_until("the counters", || {
        let t = cp
            .control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
            .text();
        value(&t, "pp_message_received") == Some(1)
            && value(&t, "pp_message_sent") == Some(1)
            && value(&t, "pp_request_received") >= Some(1)
    });
    // Without a prefix the names are Pushpin's own.
    let plain = Corepin::start_grip(&["--route", "* test", "--workers", "1"]);
    let t = plain
        .control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
        .text();
    assert!(value(&t, "message_sent").is_some(), "{t}");
    // A prefix that cannot start a metric name is refused by name.
    let bad = write_config("[metrics]\npushpin_prefix = \"1x\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(["check", "--config", &bad])
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics.pushpin_prefix: '1x'"));
}

#[test]
fn the_access_log_shows_the_client_and_user_agent_as_configured() {
    let config = write_config(
        "routes = [\"* test\"]\n[log]\naccess_log_client = false\naccess_log_user_agent = true\n",
    );
    let cp = Corepin::start(&["--config", &config, "--workers", "1"]);
    let mut c = Conn::open(cp.addr());
    c.send(b"GET /other HTTP/1.1\r\nHost: t\r\nUser-Agent: probe/1.0 \"q\"\r\nConnection: close\r\n\r\n");
    drop(c.read());
    let line = cp.wait_stdout("GET /other");
    assert!(line.contains(" client=- "), "{line}");
    assert!(line.ends_with(r#" ua="probe/1.0 \"q\"""#), "{line}");

    let cp = Corepin::start(&["--route", "* test", "--workers", "1"]);
    let mut c = Conn::open(cp.addr());
    c.send(b"GET /other HTTP/1.1\r\nHost: t\r\nUser-Agent: probe/1.0\r\nConnection: close\r\n\r\n");
    drop(c.read());
    let line = cp.wait_stdout("GET /other");
    assert!(line.contains(" client=127.0.0.1:"), "{line}");
    assert!(!line.contains("ua="), "{line}");
}
