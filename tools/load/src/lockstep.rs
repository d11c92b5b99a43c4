//! `fanout --lockstep CONTROL`: publish each message only once the corepin
//! whose control API is at CONTROL holds every subscriber, read from its
//! /metrics. Without it a fan-out is timed by the clock, and long-polling
//! loses by design: a long-poll subscriber asks again only after each
//! answer, and a message published before its next request is held is not
//! its to get. With it, every subscriber is owed every message of its
//! channel, so `lost` means lost, however slow the machine.
//!
//! Corepin copies each core's counters to /metrics a few times a second,
//! each core's copy whole (`Snapshot`), so a scrape may be older than what
//! happened. The wait is read from two of a core's numbers taken together:
//! `corepin_requests_total{class="2xx"}` counts a long-poll once its
//! answer has gone out and its subscription has ended; once the sum over
//! cores reaches every answer the published messages called for, each
//! core's copy is newer than its last answer, and its
//! `corepin_subscriptions` can only count the polls asked since. When
//! that sum is every subscriber, all of them are held.
//!
//! It counts corepin's answered requests, so it is meant for a corepin
//! that only this run uses (as the tests and benchmarks start it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What to wait for before each publish.
#[derive(Debug, Clone)]
pub struct Lockstep {
    /// corepin's control HTTP address (its /metrics).
    pub control: SocketAddr,
    /// Subscriptions held when every subscriber is (one each).
    pub subscriptions: u64,
    /// Long-poll subscribers per channel: the answers a message on that
    /// channel calls for.
    pub long_polls: Vec<u64>,
    /// 2xx answers counted before the first publish.
    pub base_2xx: u64,
}

/// The two numbers of one scrape, summed over cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub subscriptions: u64,
    pub answered_2xx: u64,
}

/// Sums a /metrics text's subscriptions and 2xx answers.
pub fn parse(text: &str) -> Held {
    let sum = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok())
            .sum()
    };
    Held {
        subscriptions: sum("corepin_subscriptions{"),
        answered_2xx: sum("corepin_requests_total{class=\"2xx\""),
    }
}

/// One scrape of `control`'s /metrics (a connection each, closed by us).
pub fn scrape(control: SocketAddr) -> Result<Held, String> {
    let mut s = TcpStream::connect(control).map_err(|e| format!("{control}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: corepin\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{control}: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("{control}: {e}"))?;
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{control}/metrics answered {:?}",
            text.lines().next().unwrap_or("")
        ));
    }
    Ok(parse(&text))
}

impl Lockstep {
    /// Long-poll answers owed for the messages published so far, `seqs[c]`
    /// of them on channel `c`.
    pub fn answers(&self, seqs: &[u64]) -> u64 {
        seqs.iter()
            .zip(&self.long_polls)
            .map(|(n, per)| n * per)
            .sum()
    }

    /// Waits until a scrape shows every subscriber held after `answers`
    /// long-poll answers; false when `stop` is set or a scrape fails.
    pub fn wait(&self, answers: u64, stop: &AtomicBool) -> bool {
        let mut last_error = None;
        while !stop.load(Ordering::Relaxed) {
            match scrape(self.control) {
                Ok(h) => {
                    if h.answered_2xx >= self.base_2xx + answers
                        && h.subscriptions >= self.subscriptions
                    {
                        return true;
                    }
                }
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        eprintln!("\nlockstep: {e}");
                    }
                    last_error = Some(e);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// Waits (up to `timeout`, or until `stop`) for `control` to hold
/// `subscriptions`, before anything is published: the count only grows
/// until then, so an older copy never shows too many. Returns the 2xx
/// count of that scrape, the base for the answers that follow.
pub fn first(
    control: SocketAddr,
    subscriptions: u64,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let h = scrape(control)?;
        if h.subscriptions >= subscriptions {
            return Ok(h.answered_2xx);
        }
        if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
            return Err(format!(
                "corepin holds {} of {subscriptions} subscriptions",
                h.subscriptions
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_cores_and_ignores_other_series() {
        let text = "\
# HELP corepin_subscriptions Channel subscriptions held.
corepin_subscriptions{core=\"0\"} 3
corepin_subscriptions{core=\"1\"} 4
corepin_requests_total{class=\"2xx\",core=\"0\"} 10
corepin_requests_total{class=\"2xx\",core=\"1\"} 5
corepin_requests_total{class=\"4xx\",core=\"0\"} 99
corepin_subscriber_drops_total{reason=\"queue\",core=\"0\"} 7
";
        assert_eq!(
            parse(text),
            Held {
                subscriptions: 7,
                answered_2xx: 15
            }
        );
        let l = Lockstep {
            control: SocketAddr::from(([127, 0, 0, 1], 1)),
            subscriptions: 7,
            long_polls: vec![2, 0, 5],
            base_2xx: 0,
        };
        assert_eq!(l.answers(&[3, 9, 1]), 3 * 2 + 5);
    }
}
