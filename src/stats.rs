//! Per-core counters and their cross-core view. Counters are plain `Cell`s
//! owned by their core and bumped on the request path with no atomics;
//! each core copies them into its own snapshot slot four times a second
//! (and when it stops), and a scrape sums the slots.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::codec::counts::Query;

/// One core's subscriber count per channel, as last copied.
pub type ChannelCounts = Arc<HashMap<String, u64>>;

/// Upper bounds (ms) of the upstream latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// A core's live counters.
#[derive(Default)]
pub struct Counters {
    pub accepted: Cell<u64>,
    /// Client connections refused at `limits.max_connections`.
    pub refused_max_connections: Cell<u64>,
    /// Client connections accepted and closed at once for want of file
    /// descriptors.
    pub refused_file_limit: Cell<u64>,
    /// Requests answered, by status class 1xx..5xx.
    pub by_class: [Cell<u64>; 5],
    pub upstream_errors: Cell<u64>,
    /// Connection tasks ended by a panic (see `shard::contained`).
    pub panics: Cell<u64>,
    /// Time to the upstream response head, per bucket (+Inf last).
    pub upstream_latency: [Cell<u64>; 13],
    pub upstream_latency_sum_ms: Cell<f64>,
    /// TLS connections that never got past the handshake, by
    /// [`TLS_FAILURES`] reason.
    pub tls_failures: [Cell<u64>; TLS_FAILURES.len()],
}

/// Reasons a connection on a TLS listener ends before its handshake
/// completes: `HandshakeError::reason`'s labels, then `plain_http` (a
/// plaintext request, answered 400).
pub const TLS_FAILURES: [&str; 9] = [
    "timeout",
    "not_tls",
    "no_certificate",
    "alpn_mismatch",
    "alert",
    "bad_handshake",
    "closed",
    "io",
    "plain_http",
];

impl Counters {
    pub fn request(&self, status: u16) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[i].set(self.by_class[i].get() + 1);
    }

    pub fn requests(&self) -> u64 {
        self.by_class.iter().map(Cell::get).sum()
    }

    /// Counts one TLS connection ended before its handshake completed.
    pub fn tls_failure(&self, reason: &str) {
        let i = TLS_FAILURES
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(TLS_FAILURES.len() - 2);
        self.tls_failures[i].set(self.tls_failures[i].get() + 1);
    }

    pub fn upstream_latency(&self, ms: f64) {
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.upstream_latency[i].set(self.upstream_latency[i].get() + 1);
        self.upstream_latency_sum_ms
            .set(self.upstream_latency_sum_ms.get() + ms);
    }
}

/// One core's counters as last copied.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    pub core: usize,
    pub connections: u64,
    pub streams: u64,
    pub long_polls: u64,
    pub websockets: u64,
    pub subscriptions: u64,
    pub accepted: u64,
    pub refused_max_connections: u64,
    pub refused_file_limit: u64,
    pub requests_by_class: [u64; 5],
    pub upstream_errors: u64,
    pub panics: u64,
    pub upstream_latency: [u64; 13],
    pub upstream_latency_sum_ms: f64,
    pub deliveries: u64,
    /// Subscribers dropped for a queue over its limits.
    pub drops: u64,
    /// Subscribers dropped for a write stalled past `timeouts.client_write`.
    pub stalls: u64,
    pub idle_upstream: u64,
    pub tls_failures: [u64; TLS_FAILURES.len()],
}

/// Every core's snapshot slot.
#[derive(Default)]
pub struct Board {
    slots: Vec<Mutex<Snapshot>>,
    /// Each core's channel counts, replaced (not edited) when they change.
    channels: Vec<Mutex<ChannelCounts>>,
}

impl Board {
    pub fn new(cores: usize) -> Arc<Board> {
        Arc::new(Board {
            slots: (0..cores)
                .map(|core| {
                    Mutex::new(Snapshot {
                        core,
                        ..Snapshot::default()
                    })
                })
                .collect(),
            channels: (0..cores).map(|_| Mutex::default()).collect(),
        })
    }

    /// Replaces core `core`'s channel counts.
    pub fn store_channels(&self, core: usize, counts: ChannelCounts) {
        if let Some(Ok(mut g)) = self.channels.get(core).map(Mutex::lock) {
            *g = counts;
        }
    }

    /// Subscriber counts summed over cores, as `query` asks: one channel
    /// (listed even at 0), or the most subscribed channels under a prefix,
    /// most first (ties by name). The cores' maps are only cloned (an
    /// `Arc`) under their locks.
    pub fn channel_counts(&self, query: &Query) -> Vec<(String, u64)> {
        let maps: Vec<ChannelCounts> = self
            .channels
            .iter()
            .filter_map(|m| m.lock().ok().map(|g| g.clone()))
            .collect();
        match query {
            Query::Channel(c) => {
                let n = maps.iter().filter_map(|m| m.get(c)).sum();
                vec![(c.clone(), n)]
            }
            Query::Top { prefix, top } => {
                let mut sum: HashMap<&str, u64> = HashMap::new();
                for m in &maps {
                    for (c, n) in m.iter().filter(|(c, _)| c.starts_with(prefix.as_str())) {
                        *sum.entry(c.as_str()).or_default() += n;
                    }
                }
                let mut all: Vec<(&str, u64)> = sum.into_iter().filter(|(_, n)| *n > 0).collect();
                all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                all.truncate(*top);
                all.into_iter().map(|(c, n)| (c.to_string(), n)).collect()
            }
        }
    }

    pub fn store(&self, s: Snapshot) {
        if let Some(slot) = self.slots.get(s.core) {
            if let Ok(mut g) = slot.lock() {
                *g = s;
            }
        }
    }

    pub fn all(&self) -> Vec<Snapshot> {
        self.slots
            .iter()
            .filter_map(|s| s.lock().ok().map(|g| g.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failure_labels_are_the_handshake_reasons_and_plain_http() {
        let reasons = crate::tls::HandshakeError::REASONS;
        assert_eq!(&TLS_FAILURES[..reasons.len()], &reasons[..]);
        assert_eq!(TLS_FAILURES[reasons.len()..], ["plain_http"]);
        let c = Counters::default();
        c.tls_failure("plain_http");
        c.tls_failure("timeout");
        c.tls_failure("timeout");
        assert_eq!(c.tls_failures[8].get(), 1);
        assert_eq!(c.tls_failures[0].get(), 2);
    }

    #[test]
    fn channel_counts_sum_over_cores() {
        let b = Board::new(2);
        let map =
            |v: &[(&str, u64)]| Arc::new(v.iter().map(|(c, n)| (c.to_string(), *n)).collect());
        b.store_channels(0, map(&[("a", 2), ("room.1", 1), ("room.2", 5)]));
        b.store_channels(1, map(&[("a", 3), ("room.1", 4), ("b", 1)]));
        b.store_channels(7, map(&[("a", 100)]));
        assert_eq!(
            b.channel_counts(&Query::Channel("a".into())),
            [("a".into(), 5)]
        );
        assert_eq!(
            b.channel_counts(&Query::Channel("z".into())),
            [("z".into(), 0)]
        );
        let top = |p: &str, n| Query::Top {
            prefix: p.into(),
            top: n,
        };
        assert_eq!(
            b.channel_counts(&top("room.", 10)),
            [("room.1".to_string(), 5), ("room.2".to_string(), 5)]
        );
        assert_eq!(b.channel_counts(&top("", 1)), [("a".to_string(), 5)]);
        assert_eq!(b.channel_counts(&top("", 10)).len(), 4);
    }
}
