//! What corepin's /metrics says. Each core copies its counters for
//! /metrics a few times a second, so a scrape may show an earlier state:
//! tests wait until a scrape shows what they expect (`wait_until`), never
//! for a guessed refresh period.

use std::net::SocketAddr;
use std::thread;

use super::{wait_until, Conn, Corepin};

/// A metric's value summed over its label sets, from one scrape; `name`
/// may include the start of a label set (`corepin_connections{kind="http"`).
pub fn metric(cp: &Corepin, name: &str) -> u64 {
    metric_at(cp.control_addr(), name)
}

/// The same, from the control address `control`.
pub fn metric_at(control: SocketAddr, name: &str) -> u64 {
    let mut c = Conn::open(control);
    c.send(b"GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n");
    let text = c.read().map(|r| r.text()).unwrap_or_default();
    metric_sum(&text, name)
}

/// A metric's value in a /metrics text, summed over its label sets.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The subscriptions corepin holds, read from `/metrics` on `control`.
pub fn subscriptions_at(control: SocketAddr) -> u64 {
    metric_at(control, "corepin_subscriptions")
}

/// Publishes `body` to `control` on a thread once corepin holds
/// `subscriptions` subscriptions (the client about to connect has
/// subscribed; the caller counts the ones it already holds), so a slow
/// client start cannot miss the message. No subscription may be ending
/// meanwhile (a scrape could still count it). The join handle yields the
/// publish answer's status.
pub fn publish_when_subscribed(
    control: SocketAddr,
    subscriptions: u64,
    body: &'static str,
) -> thread::JoinHandle<u16> {
    thread::spawn(move || {
        wait_until("the client to subscribe", || {
            subscriptions_at(control) >= subscriptions
        });
        let mut c = Conn::open(control);
        c.send(
            format!(
                "POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        c.read().expect("publish answer").status
    })
}
