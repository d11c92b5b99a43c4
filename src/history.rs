//! Channel history: the most recent items published with an `id` on each
//! channel, so that a subscriber coming back with the last id it saw (an
//! SSE client's `Last-Event-ID`, a long-poll's `prev-id`) is given what it
//! missed from here instead of sending every reconnecting client back to
//! the backend at once.
//!
//! One history per node, not per core: it lives beside the bus's
//! sequencer, under the same lock that every item with an id already
//! takes, so keeping it costs no extra lock and each item once (the items
//! are the `Arc`s the cores deliver; nothing is copied). A per-core copy
//! would cost the same item on every core and still need the cross-core
//! order the sequencer gives. benches/history.rs measures the two
//! (CPU per publish, bytes per kept item, publishing while 10,000 clients
//! resume); PERFORMANCE.md, "History: per core or per node", has what
//! was measured so far.
//!
//! Each channel's history is bounded by count (`[history] messages`), age
//! (`seconds`) and bytes (`max_bytes`, counted as the bus counts an
//! item's memory). Only items with an id are kept: an id is what a
//! client resumes from.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::Encoded;

/// The longest id a client may resume from (a `Last-Event-ID`).
pub const MAX_RESUME_ID: usize = 256;

/// How much history each channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Items kept per channel; 0 turns history off.
    pub messages: usize,
    /// Items older than this are forgotten (`None`: no age limit).
    pub max_age: Option<Duration>,
    /// Bytes kept per channel (item memory as the bus counts it); the
    /// newest item is always kept.
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            messages: 0,
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: 1 << 20,
        }
    }
}

/// What history holds after a client's last id.
#[derive(Debug)]
pub enum Replay {
    /// The items after it that were routed no later than the subscriber's
    /// mark, oldest first (possibly none: the client is up to date).
    Items(Vec<Arc<Encoded>>),
    /// History no longer holds that id (or never did): what came after it
    /// cannot be told.
    Gap,
    /// History is off.
    Off,
}

#[derive(Default)]
struct Ring {
    items: VecDeque<(Instant, Arc<Encoded>)>,
    bytes: usize,
}

/// Every channel's history.
pub struct History {
    limits: HistoryLimits,
    channels: HashMap<String, Ring>,
    bytes: usize,
    items: usize,
}

impl Default for History {
    fn default() -> Self {
        History::new(HistoryLimits::default())
    }
}

impl History {
    pub fn new(limits: HistoryLimits) -> History {
        History {
            limits,
            channels: HashMap::new(),
            bytes: 0,
            items: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.limits.messages > 0
    }

    /// Bytes held, all channels together.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Items held, all channels together.
    pub fn items(&self) -> usize {
        self.items
    }

    /// Channels with history.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// Keeps `e` (an item just routed) if it has an id.
    pub fn record(&mut self, e: &Arc<Encoded>, now: Instant) {
        if !self.enabled() || e.item.id.is_none() {
            return;
        }
        let ring = self.channels.entry(e.item.channel.clone()).or_default();
        ring.items.push_back((now, e.clone()));
        ring.bytes += e.cost();
        self.bytes += e.cost();
        self.items += 1;
        let (limits, channel) = (self.limits, e.item.channel.as_str());
        let (mut bytes, mut items) = (self.bytes, self.items);
        if let Some(ring) = self.channels.get_mut(channel) {
            while ring.items.len() > 1
                && (ring.items.len() > limits.messages || ring.bytes > limits.max_bytes)
            {
                if let Some((_, old)) = ring.items.pop_front() {
                    ring.bytes -= old.cost();
                    bytes -= old.cost();
                    items -= 1;
                }
            }
        }
        (self.bytes, self.items) = (bytes, items);
        self.expire_channel(channel, now);
    }

    /// Forgets items past their age on one channel (and the channel when
    /// none is left).
    fn expire_channel(&mut self, channel: &str, now: Instant) {
        let Some(max) = self.limits.max_age else {
            return;
        };
        let Some(ring) = self.channels.get_mut(channel) else {
            return;
        };
        while let Some((t, _)) = ring.items.front() {
            if now.saturating_duration_since(*t) < max {
                break;
            }
            if let Some((_, old)) = ring.items.pop_front() {
                ring.bytes -= old.cost();
                self.bytes -= old.cost();
                self.items -= 1;
            }
        }
        if ring.items.is_empty() {
            self.channels.remove(channel);
        }
    }

    /// Forgets every item past its age (called periodically).
    pub fn expire(&mut self, now: Instant) {
        if self.limits.max_age.is_none() || self.channels.is_empty() {
            return;
        }
        let channels: Vec<String> = self.channels.keys().cloned().collect();
        for ch in channels {
            self.expire_channel(&ch, now);
        }
    }

    /// What `channel` published after the item with id `last`, up to and
    /// including the item routed at `mark` (a subscriber's `Bus::joined`
    /// mark: what was routed after it reaches the subscriber live).
    /// `newest` is the channel's last id as the sequencer knows it: a
    /// client that has seen it has missed nothing even when history has
    /// aged it out.
    pub fn since(
        &mut self,
        channel: &str,
        last: &str,
        mark: u64,
        newest: Option<&str>,
        now: Instant,
    ) -> Replay {
        if !self.enabled() {
            return Replay::Off;
        }
        self.expire_channel(channel, now);
        let found = self.channels.get(channel).and_then(|ring| {
            ring.items
                .iter()
                .rposition(|(_, e)| e.item.id.as_deref() == Some(last))
                .map(|at| (ring, at))
        });
        match found {
            Some((ring, at)) => Replay::Items(
                ring.items
                    .iter()
                    .skip(at + 1)
                    .filter(|(_, e)| e.seq() <= mark)
                    .map(|(_, e)| e.clone())
                    .collect(),
            ),
            None if newest == Some(last) => Replay::Items(Vec::new()),
            None => Replay::Gap,
        }
    }
}

/// Why a client's resume id was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeIdError {
    Empty,
    TooLong(usize),
    /// Not UTF-8, or a control character (CR, LF, NUL...).
    Invalid,
}

impl std::fmt::Display for ResumeIdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResumeIdError::Empty => write!(f, "empty"),
            ResumeIdError::TooLong(n) => {
                write!(f, "{n} bytes (at most {MAX_RESUME_ID})")
            }
            ResumeIdError::Invalid => write!(f, "not UTF-8 text without control characters"),
        }
    }
}

/// A client's resume id (a `Last-Event-ID` value), as given: ids are
/// compared byte for byte with the published ones.
pub fn parse_resume_id(raw: &[u8]) -> Result<&str, ResumeIdError> {
    if raw.is_empty() {
        return Err(ResumeIdError::Empty);
    }
    if raw.len() > MAX_RESUME_ID {
        return Err(ResumeIdError::TooLong(raw.len()));
    }
    let s = std::str::from_utf8(raw).map_err(|_| ResumeIdError::Invalid)?;
    if s.chars().any(char::is_control) {
        return Err(ResumeIdError::Invalid);
    }
    Ok(s)
}

/// For the fuzz target: for any bytes, `parse_resume_id` never panics
/// and accepts exactly non-empty UTF-8 of at most `MAX_RESUME_ID` bytes
/// without control characters, returned unchanged; and a history fed
/// items whose ids are cut from the bytes keeps its counts and bounds
/// and replays, for any id, only items after it, in order.
pub fn check_resume_invariants(data: &[u8]) {
    match parse_resume_id(data) {
        Ok(id) => {
            assert_eq!(id.as_bytes(), data);
            assert!(!data.is_empty() && data.len() <= MAX_RESUME_ID);
            assert!(!id.chars().any(char::is_control));
        }
        Err(ResumeIdError::Empty) => assert!(data.is_empty()),
        Err(ResumeIdError::TooLong(n)) => assert!(n == data.len() && n > MAX_RESUME_ID),
        Err(ResumeIdError::Invalid) => {
            assert!(std::str::from_utf8(data).map_or(true, |s| s.chars().any(char::is_control)))
        }
    }
    let messages = 1 + usize::from(data.first().copied().unwrap_or(0) % 8);
    let mut h = History::new(HistoryLimits {
        messages,
        max_age: None,
        max_bytes: 4096,
    });
    let now = Instant::now();
    let mut fed = Vec::new();
    for (n, piece) in data.chunks(3).enumerate() {
        let id = String::from_utf8_lossy(&piece[..piece.len().min(2)]).into_owned();
        let e = Arc::new(Encoded::new(crate::codec::publish::Item {
            channel: if piece.len() == 3 && piece[2] % 2 == 1 {
                "b"
            } else {
                "a"
            }
            .into(),
            id: Some(id),
            ..Default::default()
        }));
        e.set_seq(n as u64 + 1);
        h.record(&e, now);
        fed.push(e);
        let held: usize = h.channels.values().map(|r| r.items.len()).sum();
        let bytes: usize = h.channels.values().map(|r| r.bytes).sum();
        assert_eq!((held, bytes), (h.items(), h.bytes()));
        assert!(h.channels.values().all(|r| r.items.len() <= messages));
    }
    for e in &fed {
        let (ch, id) = (e.item.channel.as_str(), e.item.id.as_deref().unwrap_or(""));
        if let Replay::Items(items) = h.since(ch, id, u64::MAX, None, now) {
            let seqs: Vec<u64> = items.iter().map(|i| i.seq()).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
            assert!(items.iter().all(|i| i.item.channel == ch));
            assert!(
                items.iter().all(|i| i.item.id.as_deref() != Some(id)),
                "only what came after the id's last appearance"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::publish::Item;

    fn item(ch: &str, id: Option<&str>, seq: u64) -> Arc<Encoded> {
        let e = Arc::new(Encoded::new(Item {
            channel: ch.into(),
            id: id.map(String::from),
            ..Item::default()
        }));
        e.set_seq(seq);
        e
    }

    fn ids(r: Replay) -> Option<Vec<String>> {
        match r {
            Replay::Items(v) => Some(
                v.iter()
                    .map(|e| e.item.id.clone().unwrap_or_default())
                    .collect(),
            ),
            Replay::Gap => None,
            Replay::Off => panic!("history is on"),
        }
    }

    fn limits(messages: usize) -> HistoryLimits {
        HistoryLimits {
            messages,
            max_age: None,
            max_bytes: usize::MAX,
        }
    }

    #[test]
    fn replays_after_the_last_id_up_to_the_mark() {
        let mut h = History::new(limits(10));
        let now = Instant::now();
        for (n, id) in ["a", "b", "c", "d"].iter().enumerate() {
            h.record(&item("ch", Some(id), n as u64 + 1), now);
        }
        h.record(&item("ch", None, 5), now);
        h.record(&item("other", Some("x"), 6), now);
        assert_eq!(h.items(), 5, "items without an id are not kept");
        assert_eq!(ids(h.since("ch", "b", 100, None, now)).unwrap(), ["c", "d"]);
        assert_eq!(
            ids(h.since("ch", "b", 3, None, now)).unwrap(),
            ["c"],
            "d comes live"
        );
        assert_eq!(
            ids(h.since("ch", "d", 100, Some("d"), now)).unwrap(),
            Vec::<String>::new()
        );
        assert!(ids(h.since("ch", "zz", 100, Some("d"), now)).is_none());
        assert!(ids(h.since("none", "a", 100, None, now)).is_none());
        assert_eq!(
            ids(h.since("none", "a", 100, Some("a"), now)).unwrap(),
            Vec::<String>::new(),
            "the channel's newest id needs nothing even when aged out"
        );
        let mut off = History::new(limits(0));
        off.record(&item("ch", Some("a"), 1), now);
        assert!(matches!(off.since("ch", "a", 9, None, now), Replay::Off));
        assert_eq!(off.items(), 0);
    }

    #[test]
    fn count_bytes_and_age_bound_each_channel() {
        let now = Instant::now();
        let mut h = History::new(limits(3));
        for n in 0..5u64 {
            h.record(&item("c", Some(&n.to_string()), n + 1), now);
        }
        assert_eq!(h.items(), 3);
        assert!(ids(h.since("c", "1", 99, None, now)).is_none(), "1 is gone");
        assert_eq!(ids(h.since("c", "2", 99, None, now)).unwrap(), ["3", "4"]);
        let one = item("c", Some("x"), 1).cost();
        assert_eq!(h.bytes(), 3 * one);

        let mut h = History::new(HistoryLimits {
            max_bytes: 2 * one,
            ..limits(10)
        });
        for n in 0..5u64 {
            h.record(&item("c", Some(&n.to_string()), n + 1), now);
        }
        assert_eq!((h.items(), h.bytes()), (2, 2 * one));
        let mut tiny = History::new(HistoryLimits {
            max_bytes: 1,
            ..limits(10)
        });
        tiny.record(&item("c", Some("big"), 1), now);
        assert_eq!(tiny.items(), 1, "the newest item is always kept");

        let mut h = History::new(HistoryLimits {
            max_age: Some(Duration::from_secs(10)),
            ..limits(10)
        });
        h.record(&item("c", Some("old"), 1), now);
        h.record(&item("c", Some("new"), 2), now + Duration::from_secs(6));
        h.expire(now + Duration::from_secs(11));
        assert_eq!(h.items(), 1);
        assert!(ids(h.since("c", "old", 9, None, now + Duration::from_secs(11))).is_none());
        h.expire(now + Duration::from_secs(17));
        assert_eq!((h.items(), h.bytes(), h.channels()), (0, 0, 0));
    }

    #[test]
    fn the_fuzz_invariants_hold_for_every_prefix_of_samples() {
        let samples: [&[u8]; 4] = [
            b"a1b2c3a1\x01b2a1",
            "\u{e9}\u{e9}x\u{e9}".as_bytes(),
            b"\xff\xfe\r\n\0abcdefabcdefabcdef",
            &[7u8; 300],
        ];
        for s in samples {
            for end in 0..=s.len() {
                check_resume_invariants(&s[..end]);
            }
        }
    }

    #[test]
    fn resume_ids() {
        let table: &[(&[u8], Result<&str, ResumeIdError>)] = &[
            (b"42", Ok("42")),
            (b"a b/c:d", Ok("a b/c:d")),
            ("\u{e9}t\u{e9}".as_bytes(), Ok("\u{e9}t\u{e9}")),
            (b"", Err(ResumeIdError::Empty)),
            (b"a\rb", Err(ResumeIdError::Invalid)),
            (b"a\nb", Err(ResumeIdError::Invalid)),
            (b"a\0b", Err(ResumeIdError::Invalid)),
            (b"\xff", Err(ResumeIdError::Invalid)),
        ];
        for (raw, want) in table {
            assert_eq!(&parse_resume_id(raw), want, "{raw:?}");
        }
        let long = vec![b'x'; MAX_RESUME_ID + 1];
        assert_eq!(
            parse_resume_id(&long),
            Err(ResumeIdError::TooLong(MAX_RESUME_ID + 1))
        );
        assert!(parse_resume_id(&long[1..]).is_ok());
    }
}
