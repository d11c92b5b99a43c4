//! The timestamped messages the load tool publishes and looks for, and the
//! per-subscriber bookkeeping and latency histogram built from them.
//!
//! A message is `M<seq>,<send ns>;` padded with `.` to the requested size
//! and ended with a newline; `seq` counts per channel from 0. Transports
//! may split or join messages anywhere, so the scanner keeps an unfinished
//! record for the next read.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// One message for channel sequence `seq`, sent at `ns`, at least `size`
/// bytes long (the record itself plus a newline is the minimum).
pub fn message(seq: u64, ns: u64, size: usize) -> String {
    let mut m = format!("M{seq},{ns};");
    while m.len() + 1 < size {
        m.push('.');
    }
    m.push('\n');
    m
}

/// The longest record: `M`, two u64s in decimal, `,` and `;`. An `M`
/// without a `;` this far on starts no record, so `tail` stays short
/// whatever a server sends.
const MAX_RECORD: usize = 1 + 20 + 1 + 20 + 1;

/// Appends `data` to `tail`, pushes every complete `(seq, ns)` record to
/// `out` and keeps an unfinished record in `tail`.
pub fn scan(tail: &mut Vec<u8>, data: &[u8], out: &mut Vec<(u64, u64)>) {
    tail.extend_from_slice(data);
    let mut i = 0;
    let mut keep_from = tail.len();
    while i < tail.len() {
        if tail[i] != b'M' {
            i += 1;
            continue;
        }
        let window = &tail[i..tail.len().min(i + MAX_RECORD)];
        let Some(end) = window.iter().position(|&b| b == b';') else {
            if window.len() < MAX_RECORD {
                keep_from = i;
                break;
            }
            i += 1;
            continue;
        };
        let rec = &tail[i + 1..i + end];
        if let Some(comma) = rec.iter().position(|&b| b == b',') {
            let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<u64>().ok();
            if let (Some(seq), Some(ns)) = (num(&rec[..comma]), num(&rec[comma + 1..])) {
                out.push((seq, ns));
            }
        }
        i += end + 1;
    }
    tail.drain(..keep_from);
}

/// Panics unless scanning `input` whole and split at `cut` (modulo the
/// length + 1) finds the same records and keeps the same tail, and the
/// tail is shorter than a record. The unit tests and the fuzz target
/// check this.
pub fn check_scan_split_invariant(input: &[u8], cut: usize) {
    let cut = cut % (input.len() + 1);
    let (mut whole_tail, mut whole) = (Vec::new(), Vec::new());
    scan(&mut whole_tail, input, &mut whole);
    let (mut tail, mut split) = (Vec::new(), Vec::new());
    scan(&mut tail, &input[..cut], &mut split);
    assert!(tail.len() < MAX_RECORD, "tail of {} bytes", tail.len());
    scan(&mut tail, &input[cut..], &mut split);
    assert_eq!((&whole, &whole_tail), (&split, &tail), "split at {cut}");
    assert!(tail.len() < MAX_RECORD, "tail of {} bytes", tail.len());
}

/// Sequence numbers remembered behind the highest one seen, to tell a
/// late (out-of-order) delivery from a duplicate.
const WINDOW: u64 = 1024;

/// What one subscriber has received of its channel's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// Highest sequence number seen.
    max: Option<u64>,
    /// Seen flags for `max - WINDOW + 1 ..= max`, indexed by seq % WINDOW.
    seen: [u64; (WINDOW / 64) as usize],
    /// Distinct messages received.
    pub got: u64,
    /// Messages received again (or too late to tell: older than the window).
    pub duplicated: u64,
    /// Messages that arrived after a later one of the same channel.
    pub out_of_order: u64,
}

impl Default for Track {
    fn default() -> Self {
        Track {
            max: None,
            seen: [0; (WINDOW / 64) as usize],
            got: 0,
            duplicated: 0,
            out_of_order: 0,
        }
    }
}

impl Track {
    fn bit(&mut self, seq: u64) -> (&mut u64, u64) {
        let i = seq % WINDOW;
        (&mut self.seen[(i / 64) as usize], 1 << (i % 64))
    }

    /// Counts sequence number `seq`; true when it is a new delivery.
    pub fn record(&mut self, seq: u64) -> bool {
        match self.max {
            Some(max) if seq <= max => {
                if seq.saturating_add(WINDOW) <= max {
                    self.duplicated += 1;
                    return false;
                }
                let (word, mask) = self.bit(seq);
                if *word & mask != 0 {
                    self.duplicated += 1;
                    return false;
                }
                *word |= mask;
                self.out_of_order += 1;
            }
            _ => {
                // A new highest: forget what falls out of the window.
                let from = self.max.map_or(0, |m| m + 1);
                if seq - from >= WINDOW || self.max.is_none() {
                    self.seen = [0; (WINDOW / 64) as usize];
                } else {
                    for s in from..=seq {
                        let (word, mask) = self.bit(s);
                        *word &= !mask;
                    }
                }
                let (word, mask) = self.bit(seq);
                *word |= mask;
                self.max = Some(seq);
            }
        }
        self.got += 1;
        true
    }
}

/// Panics unless [`Track`] counts `seqs` as a model that remembers every
/// sequence number would under the same window rule: a number is new when
/// it is above the highest so far, or within the window below it and not
/// seen before; anything else is a duplicate.
pub fn check_track_against_model(seqs: &[u64]) {
    let mut track = Track::default();
    let mut seen = std::collections::HashSet::new();
    let mut max: Option<u64> = None;
    let (mut got, mut duplicated, mut out_of_order) = (0, 0, 0);
    for &seq in seqs {
        let new = match max {
            Some(m) if seq <= m => {
                let fresh = seq.saturating_add(WINDOW) > m && !seen.contains(&seq);
                out_of_order += u64::from(fresh);
                fresh
            }
            _ => {
                max = Some(seq);
                true
            }
        };
        if new {
            seen.insert(seq);
            got += 1;
        } else {
            duplicated += 1;
        }
        assert_eq!(track.record(seq), new, "sequence number {seq}");
    }
    assert_eq!(
        (track.got, track.duplicated, track.out_of_order),
        (got, duplicated, out_of_order)
    );
}

/// How many of `messages` (sent round-robin over `channels`) go to
/// channel number `c`.
pub fn per_channel(messages: usize, channels: usize, c: usize) -> u64 {
    let k = channels.max(1);
    (messages / k + usize::from(c < messages % k)) as u64
}

/// Latency in nanoseconds, 1 ns to 10 minutes at 3 significant digits.
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        // Bounds are constants that hdrhistogram accepts.
        Latency(
            Histogram::new_with_bounds(1, 600_000_000_000, 3)
                .unwrap_or_else(|e| crate::args::die(&format!("histogram: {e}"))),
        )
    }

    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The recorded values as `[[value, count], ...]`, for a worker process
    /// to hand its histogram to the parent.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.0
                .iter_recorded()
                .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
                .collect(),
        )
    }

    pub fn add_json(&mut self, v: &Value) {
        for pair in v.as_array().into_iter().flatten() {
            if let (Some(value), Some(count)) = (
                pair.get(0).and_then(Value::as_u64),
                pair.get(1).and_then(Value::as_u64),
            ) {
                let _ = self.0.record_n(value.max(1), count);
            }
        }
    }

    /// p50/p99/p99.9/max in milliseconds (null when nothing was recorded).
    pub fn summary_ms(&self) -> Value {
        if self.0.is_empty() {
            return json!({"p50": null, "p99": null, "p999": null, "max": null, "count": 0});
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        json!({
            "p50": ms(self.0.value_at_quantile(0.5)),
            "p99": ms(self.0.value_at_quantile(0.99)),
            "p999": ms(self.0.value_at_quantile(0.999)),
            "max": ms(self.0.max()),
            "count": self.0.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_records_across_any_split() {
        let stream = b"e\r\nM1,100;\n\r\ne\r\nM2,200;\n\r\nM3,3;....\n";
        for cut in 0..=stream.len() {
            let mut tail = Vec::new();
            let mut out = Vec::new();
            scan(&mut tail, &stream[..cut], &mut out);
            scan(&mut tail, &stream[cut..], &mut out);
            assert_eq!(out, vec![(1, 100), (2, 200), (3, 3)], "cut {cut}");
            check_scan_split_invariant(stream, cut);
        }
    }

    #[test]
    fn scan_skips_malformed_records() {
        let mut tail = Vec::new();
        let mut out = Vec::new();
        scan(&mut tail, b"Mx,1;M2;M3,4;M", &mut out);
        assert_eq!(out, vec![(3, 4)]);
        assert_eq!(tail, b"M");
        // "Mozilla" and the like start no record: nothing piles up.
        let text = format!("Mozilla {} M5,6;", "x".repeat(100));
        for cut in 0..=text.len() {
            check_scan_split_invariant(text.as_bytes(), cut);
        }
        let (mut tail, mut out) = (Vec::new(), Vec::new());
        scan(&mut tail, text.as_bytes(), &mut out);
        assert_eq!((out, tail.len()), (vec![(5, 6)], 0));
    }

    #[test]
    fn message_has_the_requested_size_and_scans_back() {
        for size in [0, 5, 20, 100, 4096] {
            let m = message(42, 123_456_789, size);
            assert!(m.len() >= size && m.ends_with('\n'), "{size}: {m:?}");
            assert!(size < 20 || m.len() == size, "{size}: {}", m.len());
            let (mut tail, mut out) = (Vec::new(), Vec::new());
            scan(&mut tail, m.as_bytes(), &mut out);
            assert_eq!(out, vec![(42, 123_456_789)]);
        }
    }

    #[test]
    fn track_tells_gaps_late_arrivals_and_duplicates_apart() {
        let mut t = Track::default();
        let news: Vec<bool> = [0, 1, 1, 3, 2, 4, 2, 0]
            .iter()
            .map(|&s| t.record(s))
            .collect();
        assert_eq!(news, [true, true, false, true, true, true, false, false]);
        // 2 came after 3: one out of order; 1, 2 and 0 again: duplicates.
        assert_eq!((t.got, t.duplicated, t.out_of_order), (5, 3, 1));
    }

    #[test]
    fn track_window_forgets_old_sequence_numbers() {
        let mut t = Track::default();
        t.record(5);
        t.record(5 + WINDOW + 10);
        // 6 was never seen, but it is older than the window: not counted new.
        assert!(!t.record(6));
        // Within the window, after a jump: a late arrival, counted once.
        assert!(t.record(WINDOW + 14));
        assert!(!t.record(WINDOW + 14));
        assert_eq!((t.got, t.duplicated, t.out_of_order), (3, 2, 1));
    }

    #[test]
    fn track_matches_the_model_at_the_edges() {
        check_track_against_model(&[0, 1, 1, 3, 2, 4, 2, 0]);
        check_track_against_model(&[5, 5 + WINDOW + 10, 6, WINDOW + 14, WINDOW + 14]);
        check_track_against_model(&[u64::MAX, 3, u64::MAX - 1, u64::MAX, 0]);
        check_track_against_model(&[WINDOW, 0, 1, WINDOW - 1, 2 * WINDOW, WINDOW + 1]);
    }

    #[test]
    fn per_channel_splits_round_robin() {
        assert_eq!(
            (0..3).map(|c| per_channel(10, 3, c)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!(per_channel(5, 0, 0), 5);
    }

    #[test]
    fn latency_survives_the_trip_through_json() {
        let mut a = Latency::new();
        for v in [1_000, 2_000_000, 3_000_000_000] {
            a.record(v);
        }
        let mut b = Latency::new();
        b.add_json(&a.to_json());
        assert_eq!(b.count(), 3);
        assert_eq!(a.summary_ms(), b.summary_ms());
    }
}
