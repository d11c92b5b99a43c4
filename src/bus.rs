//! The publish bus: items from any source (the HTTP publish API, the
//! control socket, later a broker) go to the cores that have a subscriber
//! on their channel, and only to those, over each core's own crossbeam
//! channel, with at most one wake-up per core per batch.
//!
//! Three things keep a publish cheap:
//!
//! - **Interest.** Each core marks, per channel hash, whether it holds a
//!   subscriber there ([`Interest`]: one bit per core per slot, each core
//!   writing only its own bit). A publish reads one word per item and
//!   wakes no core whose bit is clear; a publish nobody listens to costs
//!   its parse and nothing else.
//! - **No lock in the common path.** Only items that need sequencing (an
//!   `id` to deduplicate, or a `prev-id` to order by) take the sequencer's
//!   lock, and are handed to the cores under it so that every core sees
//!   them in the same order. Other items go straight to the cores.
//! - **Encoding on demand.** The wire forms of `http-stream` and
//!   `ws-message` are made once, by the first core that delivers them to a
//!   subscriber of that kind, and shared by every other core.
//!
//! Memory is bounded twice: [`Bus::reserve`] holds back publishes whose
//! parsed form would exceed the in-flight budget, and [`Bus::admit`] refuses
//! publishes while any core's undelivered backlog is over its bound; both
//! say so to the publisher (429 / 503) rather than queue without limit.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use once_cell::race::OnceBox;

use crate::codec::chunked;
use crate::codec::publish::{Action, Item, WsKind};
use crate::codec::response;
use crate::codec::wildcard;
use crate::history::{History, HistoryLimits, Replay};

/// How long a (channel, id) pair is remembered for dedup.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(60);
/// How long an out-of-order item waits for its predecessor.
pub const REORDER_WAIT: Duration = Duration::from_secs(5);
/// Items held for reordering per channel; past this the oldest goes out.
pub const REORDER_MAX: usize = 100;
/// Slots of the interest table (channel hashes). Two channels sharing a
/// slot only cost a needless wake-up, never a lost message.
pub const INTEREST_SLOTS: usize = 1 << 16;
/// Bytes an item costs besides its payload (the item, its `Arc`, queue
/// entries), for the memory bounds.
pub const ITEM_OVERHEAD: usize = 512;

/// A published item, with its wire forms made when first needed.
#[derive(Debug)]
pub struct Encoded {
    pub item: Item,
    /// The whole `http-response` message: status line, headers without the
    /// final blank line (so exposed headers can follow), and the body.
    pub response_head: Bytes,
    pub response_body: Bytes,
    /// What this item counts against the memory bounds.
    cost: usize,
    /// Its place in the order of routed items (see [`Bus::joined`]); 0
    /// until it is routed.
    seq: AtomicU64,
    /// Made by the first core to need them; cores racing to make one each
    /// make it, the first stored wins, and none waits for another.
    stream_chunk: OnceBox<Bytes>,
    ws_frame: OnceBox<Bytes>,
}

impl Encoded {
    pub fn new(item: Item) -> Encoded {
        let cost = ITEM_OVERHEAD + item.payload_len();
        let (mut response_head, mut response_body) = (Bytes::new(), Bytes::new());
        if let Some(r) = &item.http_response {
            // The head was validated when the item was parsed
            // (codec::response); only the framing is added here.
            let mut h = Vec::with_capacity(128);
            r.head.write(&mut h, None);
            response::write_length(&mut h, r.head.status(), r.body.len());
            response_head = Bytes::from(h);
            response_body = r.body.clone();
        }
        Encoded {
            item,
            response_head,
            response_body,
            cost,
            seq: AtomicU64::new(0),
            stream_chunk: OnceBox::new(),
            ws_frame: OnceBox::new(),
        }
    }

    /// The `http-response` head framed for a body of `len` bytes (a body
    /// patched or rewritten for one subscriber).
    pub fn response_head_for(&self, len: usize) -> Vec<u8> {
        let mut h = Vec::with_capacity(128);
        if let Some(r) = &self.item.http_response {
            r.head.write(&mut h, None);
            response::write_length(&mut h, r.head.status(), len);
        }
        h
    }

    /// `http-stream` content as one chunk (empty when there is none, or
    /// the action is not `send`).
    pub fn stream_chunk(&self) -> &Bytes {
        self.stream_chunk.get_or_init(|| {
            Box::new(match &self.item.http_stream {
                Some(s) if s.action == Action::Send && !s.content.is_empty() => {
                    let mut out = Vec::with_capacity(s.content.len() + 12);
                    chunked::write_chunk(&mut out, &s.content);
                    Bytes::from(out)
                }
                _ => Bytes::new(),
            })
        })
    }

    /// `http-stream` content as is (for HTTP/1.0 streams); empty exactly
    /// when `stream_chunk` is.
    pub fn stream_raw(&self) -> Bytes {
        match &self.item.http_stream {
            Some(s) if s.action == Action::Send => s.content.clone(),
            _ => Bytes::new(),
        }
    }

    /// `ws-message` as one unmasked server frame (empty for a close).
    pub fn ws_frame(&self) -> &Bytes {
        self.ws_frame.get_or_init(|| {
            Box::new(match &self.item.ws_message {
                Some(w) if w.action == Action::Send => ws_frame_of(w.kind, &w.content),
                _ => Bytes::new(),
            })
        })
    }

    /// What this item counts against the memory bounds.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Its place in the order of routed items: a subscriber that joined a
    /// channel at [`Bus::joined`] `j` is given exactly the items with a
    /// `seq` above `j`. 0 for an item never routed.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Sets `seq` (for tests and fuzzing of what consumes it; the bus
    /// sets it when it routes the item).
    pub(crate) fn set_seq(&self, seq: u64) {
        self.seq.store(seq, Ordering::Release);
    }
}

/// `content` as one chunk of a chunked body (for content a filter
/// rewrote for one subscriber).
pub fn chunk_of(content: &[u8]) -> Bytes {
    if content.is_empty() {
        return Bytes::new();
    }
    let mut out = Vec::with_capacity(content.len() + 12);
    chunked::write_chunk(&mut out, content);
    Bytes::from(out)
}

/// `content` as one unmasked server frame of `kind`.
pub fn ws_frame_of(kind: WsKind, content: &[u8]) -> Bytes {
    use crate::codec::ws::Opcode;
    let op = match kind {
        WsKind::Text => Opcode::Text,
        WsKind::Binary => Opcode::Binary,
        WsKind::Ping => Opcode::Ping,
        WsKind::Pong => Opcode::Pong,
    };
    let mut out = Vec::with_capacity(content.len() + 10);
    crate::codec::ws::write_frame(&mut out, true, op, content, None);
    Bytes::from(out)
}

/// Global counters of the publish path (read by stats and metrics).
#[derive(Default)]
pub struct BusStats {
    pub publishes: AtomicU64,
    pub items: AtomicU64,
    pub deduplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub reorder_timeouts: AtomicU64,
    /// Publishes refused because the in-flight budget was spent (429).
    pub refused_busy: AtomicU64,
    /// Publishes refused because a core's backlog was over its bound (503).
    pub refused_backlog: AtomicU64,
    /// Per core: wake-ups sent to it (one per batch, not per item).
    pub wakes: Box<[AtomicU64]>,
    /// Per core: estimated bytes of items queued and not yet delivered.
    pub backlog: Box<[AtomicUsize]>,
    /// Per core: items by how long they waited to be delivered
    /// (`LAG_BUCKETS`, then the rest).
    pub lag: Box<[[AtomicU64; LAG_BUCKETS.len() + 1]]>,
    /// Per core: the waits summed, in microseconds.
    pub lag_sum_us: Box<[AtomicU64]>,
    /// Estimated bytes of publishes being read and parsed (the in-flight
    /// budget in use).
    pub inflight: AtomicUsize,
    /// Channel history: bytes and items kept, channels with any.
    pub history_bytes: AtomicUsize,
    pub history_items: AtomicUsize,
    pub history_channels: AtomicUsize,
    /// Resumes served from history, and those history could not serve.
    pub history_replays: AtomicU64,
    pub history_gaps: AtomicU64,
}

impl BusStats {
    fn for_cores(n: usize) -> BusStats {
        BusStats {
            wakes: (0..n).map(|_| AtomicU64::new(0)).collect(),
            backlog: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            lag: (0..n).map(|_| Default::default()).collect(),
            lag_sum_us: (0..n).map(|_| AtomicU64::new(0)).collect(),
            ..BusStats::default()
        }
    }
}

/// Which cores hold a subscriber on a channel, by channel hash.
///
/// One bit per core per slot. A core sets its bit when its first
/// subscription on a channel hashing to the slot appears and clears it when
/// its last one there goes (see `subs::Registry`); it never touches another
/// core's bit. Publishers only read.
///
/// Why a subscriber cannot be missed: the guarantee corepin gives is that
/// a publish that *happens after* a subscription is delivered to it. For a
/// publish to happen after a subscription on core B, something B did after
/// subscribing must have been observed by whoever published (B wrote the
/// response head to the client, or copied its counters for `/metrics`,
/// and the client then sent the publish): a chain of release/acquire
/// steps (the kernel's socket locks, the board's mutex) from B's `fetch_or`
/// to the publisher's load. By write-read coherence the load then returns
/// B's `fetch_or` or a later write to the word; later writes by other cores
/// touch other bits, and B clears its bit only after its last subscription
/// in the slot is gone. So the publisher sees B's bit, pushes the item to
/// B's queue, and B's drain, which reads that queue entry, runs after the
/// subscription (it happens after the push, which happens after the
/// subscription) and finds the subscriber. A subscription with no such
/// chain to the publish is concurrent with it, and may or may not get it,
/// as before. The stress test in tests/grip.rs exercises this ordering.
pub struct Interest {
    /// `u64` words per slot: one bit per core.
    words: usize,
    bits: Box<[AtomicU64]>,
}

impl Interest {
    fn new(cores: usize) -> Interest {
        let words = cores.div_ceil(64).max(1);
        Interest {
            words,
            bits: (0..INTEREST_SLOTS * words)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// The slot of a channel: FNV-1a, folded to the table size.
    pub fn slot(channel: &str) -> usize {
        Interest::fold(wildcard::fnv(channel.as_bytes()))
    }

    /// The slot of a subscription key: a channel's own, a prefix
    /// subscription's the slot of its prefix (see [`Prefixes`]).
    pub fn key_slot(key: &str) -> usize {
        Interest::slot(wildcard::as_prefix(key).unwrap_or(key))
    }

    fn fold(h: u64) -> usize {
        ((h ^ (h >> 32)) as usize) & (INTEREST_SLOTS - 1)
    }

    /// Calls `f` with the slot of `channel` and, when any core holds a
    /// prefix subscription, the slot of each prefix of it whose length
    /// some prefix subscription has: one pass over the name.
    fn slots(&self, channel: &str, prefixes: &Prefixes, mut f: impl FnMut(usize)) {
        if !prefixes.any() {
            return f(Interest::slot(channel));
        }
        let n = channel.len();
        wildcard::each_prefix(channel, |len, h| {
            if len == n || prefixes.has_len(len) {
                f(Interest::fold(h));
            }
        });
    }

    /// Whether any core holds a subscriber `channel` reaches.
    fn wanted(&self, channel: &str, prefixes: &Prefixes) -> bool {
        let mut any = false;
        self.slots(channel, prefixes, |slot| any = any || self.any(slot));
        any
    }

    /// Calls `f` once with each core holding a subscriber `channel`
    /// reaches, by its own name or a prefix.
    fn each_core(&self, channel: &str, prefixes: &Prefixes, mut f: impl FnMut(usize)) {
        if !prefixes.any() {
            return self.for_each(Interest::slot(channel), f);
        }
        let mut small = [0u64; 4];
        let mut big = Vec::new();
        let mask: &mut [u64] = if self.words <= small.len() {
            &mut small[..self.words]
        } else {
            big.resize(self.words, 0);
            &mut big
        };
        self.slots(channel, prefixes, |slot| {
            for (i, m) in mask.iter_mut().enumerate() {
                *m |= self.bits[slot * self.words + i].load(Ordering::Acquire);
            }
        });
        for (i, &w) in mask.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                f(i * 64 + b);
            }
        }
    }

    fn word(&self, slot: usize, core: usize) -> (&AtomicU64, u64) {
        (
            &self.bits[slot * self.words + core / 64],
            1u64 << (core % 64),
        )
    }

    /// Marks `core` as holding a subscriber in `slot` (called by that core).
    pub fn set(&self, slot: usize, core: usize) {
        let (w, bit) = self.word(slot, core);
        w.fetch_or(bit, Ordering::Release);
    }

    /// Marks `core` as holding none in `slot` (called by that core).
    pub fn clear(&self, slot: usize, core: usize) {
        let (w, bit) = self.word(slot, core);
        w.fetch_and(!bit, Ordering::Release);
    }

    /// Whether any core has a subscriber in `slot`.
    fn any(&self, slot: usize) -> bool {
        (0..self.words).any(|i| self.bits[slot * self.words + i].load(Ordering::Acquire) != 0)
    }

    /// Calls `f` with each core that has a subscriber in `slot`.
    fn for_each(&self, slot: usize, mut f: impl FnMut(usize)) {
        for i in 0..self.words {
            let mut w = self.bits[slot * self.words + i].load(Ordering::Acquire);
            while w != 0 {
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                f(i * 64 + b);
            }
        }
    }
}

/// Which lengths prefix subscriptions have, over every core, so a publish
/// looks up only those prefixes of its channel (and none at all while no
/// core holds one).
///
/// A core counts a prefix here (`add`) before it sets the prefix's
/// interest bit and uncounts it after clearing the bit, so the argument
/// of [`Interest`] carries over: a publisher that must see the bit sees
/// the count, which was written before it.
pub struct Prefixes {
    /// Prefixes held, over all cores (each core counts each of its
    /// distinct prefixes once).
    total: AtomicU64,
    /// Prefixes held by length, modulo the table's size: two lengths
    /// sharing an entry only cost a needless slot look-up.
    by_len: [AtomicU64; PREFIX_LENS],
}

/// Entries of [`Prefixes::by_len`].
const PREFIX_LENS: usize = 64;

impl Prefixes {
    fn new() -> Prefixes {
        Prefixes {
            total: AtomicU64::new(0),
            by_len: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// A core holds a new prefix of `len` bytes.
    pub fn add(&self, len: usize) {
        self.by_len[len % PREFIX_LENS].fetch_add(1, Ordering::AcqRel);
        self.total.fetch_add(1, Ordering::AcqRel);
    }

    /// A core no longer holds a prefix of `len` bytes.
    pub fn remove(&self, len: usize) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        self.by_len[len % PREFIX_LENS].fetch_sub(1, Ordering::AcqRel);
    }

    fn any(&self) -> bool {
        self.total.load(Ordering::Acquire) != 0
    }

    fn has_len(&self, len: usize) -> bool {
        self.by_len[len % PREFIX_LENS].load(Ordering::Acquire) != 0
    }
}

/// The cores a batch was queued for, kept on the stack. Cores past 256 (a
/// machine bigger than any seen here) share one flag: all of them are
/// checked for wake-up when any of them was given items.
#[derive(Default)]
struct Touched {
    bits: [u64; 4],
    beyond: bool,
}

impl Touched {
    fn add(&mut self, core: usize) {
        match self.bits.get_mut(core / 64) {
            Some(w) => *w |= 1 << (core % 64),
            None => self.beyond = true,
        }
    }

    fn has(&self, core: usize) -> bool {
        match self.bits.get(core / 64) {
            Some(w) => w & (1 << (core % 64)) != 0,
            None => self.beyond,
        }
    }
}

/// The per-channel sequencing state.
#[derive(Default)]
struct Sequencer {
    seen: HashMap<(String, String), Instant>,
    seen_order: VecDeque<(Instant, (String, String))>,
    last_id: HashMap<String, String>,
    held: HashMap<String, VecDeque<(Instant, Arc<Encoded>)>>,
    /// Items kept for resuming subscribers (their order is the one the
    /// sequencer hands out, under the same lock).
    history: History,
}

impl Sequencer {
    fn expire_seen(&mut self, now: Instant) {
        while let Some((t, _)) = self.seen_order.front() {
            if now.duration_since(*t) < DEDUP_WINDOW {
                break;
            }
            if let Some((t, key)) = self.seen_order.pop_front() {
                if self.seen.get(&key) == Some(&t) {
                    self.seen.remove(&key);
                }
            }
        }
    }

    /// Marks a released item: its id becomes the channel's last id, and
    /// held items waiting for it follow.
    fn release(&mut self, e: Arc<Encoded>, out: &mut Vec<Arc<Encoded>>) {
        let mut next = Some(e);
        while let Some(e) = next.take() {
            let channel = e.item.channel.clone();
            if let Some(id) = &e.item.id {
                self.last_id.insert(channel.clone(), id.clone());
            }
            out.push(e);
            let Some(last) = self.last_id.get(&channel).cloned() else {
                break;
            };
            if let Some(q) = self.held.get_mut(&channel) {
                if let Some(pos) = q
                    .iter()
                    .position(|(_, h)| h.item.prev_id.as_deref() == Some(&last))
                {
                    next = q.remove(pos).map(|(_, h)| h);
                }
                if q.is_empty() {
                    self.held.remove(&channel);
                }
            }
        }
    }

    /// Takes one item; returns what may be delivered now, in order.
    fn accept(
        &mut self,
        e: Arc<Encoded>,
        now: Instant,
        stats: &BusStats,
        out: &mut Vec<Arc<Encoded>>,
    ) {
        let it = &e.item;
        if let Some(id) = &it.id {
            let key = (it.channel.clone(), id.clone());
            if self.seen.contains_key(&key) {
                stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.seen.insert(key.clone(), now);
            self.seen_order.push_back((now, key));
        }
        let in_order = match (&it.prev_id, it.no_seq) {
            (Some(prev), false) => match self.last_id.get(&it.channel) {
                Some(last) => last == prev,
                // Nothing known about the channel yet: nothing to wait for.
                None => true,
            },
            _ => true,
        };
        if in_order {
            self.release(e, out);
            return;
        }
        stats.reordered.fetch_add(1, Ordering::Relaxed);
        let q = self.held.entry(it.channel.clone()).or_default();
        q.push_back((now, e));
        if q.len() > REORDER_MAX {
            if let Some((_, oldest)) = q.pop_front() {
                self.release(oldest, out);
            }
        }
    }

    /// Releases held items whose wait is over, oldest first.
    fn flush_expired(&mut self, now: Instant, stats: &BusStats, out: &mut Vec<Arc<Encoded>>) {
        let channels: Vec<String> = self.held.keys().cloned().collect();
        for ch in channels {
            loop {
                let expired = self
                    .held
                    .get(&ch)
                    .and_then(|q| q.front())
                    .is_some_and(|(t, _)| now.duration_since(*t) >= REORDER_WAIT);
                if !expired {
                    break;
                }
                let e = self.held.get_mut(&ch).and_then(VecDeque::pop_front);
                if self.held.get(&ch).is_some_and(VecDeque::is_empty) {
                    self.held.remove(&ch);
                }
                if let Some((_, e)) = e {
                    stats.reorder_timeouts.fetch_add(1, Ordering::Relaxed);
                    self.release(e, out);
                }
            }
        }
    }

    fn holding(&self) -> bool {
        !self.held.is_empty()
    }
}

/// True when an item must go through the sequencer: it has an id to
/// deduplicate (and to become its channel's last id), or a `prev-id` to
/// wait for.
fn needs_sequencing(it: &Item) -> bool {
    it.id.is_some() || (it.prev_id.is_some() && !it.no_seq)
}

/// Upper bounds (seconds) of the histogram of how long items wait in a
/// core's inbox before the core delivers them.
pub const LAG_BUCKETS: [f64; 7] = [0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0];
/// An item waiting longer than this is logged (at most every 10 s a core).
const LAG_WARN: Duration = Duration::from_secs(1);

/// An item queued for a core, with when it was queued.
type Queued = (Arc<Encoded>, Instant);

/// A core's end of the bus.
pub struct CoreInbox {
    rx: Receiver<Queued>,
    pending: Arc<AtomicBool>,
    bus: std::sync::Weak<Bus>,
    core: usize,
    /// When a long wait was last logged.
    warned: std::cell::Cell<Option<Instant>>,
}

impl CoreInbox {
    /// Called before draining: the next publish must wake the core again.
    /// A swap, not a store: reading the publisher's `true` makes every item
    /// it queued before setting the flag visible to the drain that follows.
    pub fn rearm(&self) {
        self.pending.swap(false, Ordering::AcqRel);
    }

    /// Takes up to `max` queued items into `out`, oldest first, for the
    /// caller to deliver now: their cost leaves the core's backlog, and
    /// how long each waited goes into the lag histogram (a wait over a
    /// second is also logged). Returns how many were taken.
    pub fn take(&self, max: usize, out: &mut Vec<Arc<Encoded>>) -> usize {
        let (mut n, mut cost) = (0, 0);
        let mut buckets = [0u64; LAG_BUCKETS.len() + 1];
        let (mut longest, mut sum) = (Duration::ZERO, Duration::ZERO);
        let now = Instant::now();
        while n < max {
            let Ok((e, queued)) = self.rx.try_recv() else {
                break;
            };
            let waited = now.saturating_duration_since(queued);
            longest = longest.max(waited);
            sum += waited;
            let secs = waited.as_secs_f64();
            let b = LAG_BUCKETS
                .iter()
                .position(|&le| secs <= le)
                .unwrap_or(LAG_BUCKETS.len());
            buckets[b] += 1;
            cost += e.cost;
            out.push(e);
            n += 1;
        }
        if n == 0 {
            return 0;
        }
        if let Some(bus) = self.bus.upgrade() {
            bus.stats.backlog[self.core].fetch_sub(cost, Ordering::Relaxed);
            bus.stats.lag_sum_us[self.core].fetch_add(sum.as_micros() as u64, Ordering::Relaxed);
            for (slot, c) in bus.stats.lag[self.core].iter().zip(buckets) {
                if c > 0 {
                    slot.fetch_add(c, Ordering::Relaxed);
                }
            }
        }
        if longest > LAG_WARN
            && self
                .warned
                .get()
                .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            self.warned.set(Some(now));
            warn!(
                "core {}: published items waited {:.1} s to be delivered (more publishes than this core can deliver; see corepin_publish_delivery_lag_seconds)",
                self.core,
                longest.as_secs_f64()
            );
        }
        n
    }
}

struct CoreLink {
    tx: Sender<Queued>,
    wake: UnixStream,
    pending: Arc<AtomicBool>,
}

/// The memory bounds of the publish path.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Estimated bytes of publishes being parsed and handed out at once.
    pub inflight: usize,
    /// Estimated bytes of items queued for one core and not yet delivered;
    /// past it, publishes are refused until the core catches up.
    pub backlog: usize,
    /// What each channel's history keeps (off by default).
    pub history: HistoryLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            inflight: 256 << 20,
            backlog: 64 << 20,
            history: HistoryLimits::default(),
        }
    }
}

/// Why a publish was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The in-flight budget is spent: try again shortly (429).
    Busy { inflight: usize, limit: usize },
    /// A core has more undelivered items queued than its bound (503).
    Backlog {
        core: usize,
        queued: usize,
        limit: usize,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Busy { inflight, limit } => write!(
                f,
                "too many publishes in progress ({} MiB of {} MiB in flight); retry shortly",
                inflight >> 20,
                limit >> 20
            ),
            Refused::Backlog {
                core,
                queued,
                limit,
            } => write!(
                f,
                "delivery backlog full (core {core} has {} MiB queued, limit {} MiB); retry when subscribers have caught up",
                queued >> 20,
                limit >> 20
            ),
        }
    }
}

/// Part of the in-flight budget, given back when dropped.
pub struct Reservation<'a> {
    bus: &'a Bus,
    bytes: usize,
}

impl Reservation<'_> {
    /// Reserves `more` bytes on top (once the item count is known).
    pub fn grow(&mut self, more: usize) -> Result<(), Refused> {
        self.bus.take_budget(more, self.bytes)?;
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.bus
            .stats
            .inflight
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What one call to [`Bus::publish`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Items handed to at least one core, or to none because no core has a
    /// subscriber (dedup and reordering may hold some back).
    pub items: usize,
    /// The caller's own core was given items and must be kicked locally
    /// (no wake byte was written to it).
    pub local: bool,
}

pub struct Bus {
    cores: Vec<CoreLink>,
    interest: Interest,
    prefixes: Prefixes,
    seq: Mutex<Sequencer>,
    limits: Limits,
    pub stats: BusStats,
    /// Who hears of subscriptions coming and going (the ZeroMQ thread,
    /// when configured); set once at start-up.
    watch: std::sync::OnceLock<SubWatch>,
    /// Bumped by each `recover` command; every core's sweep acts on a
    /// change (a command, not a publish: no wake-up is needed).
    recover: AtomicU64,
    /// The `seq` of the newest routed item.
    routed: AtomicU64,
}

/// A change in how many subscribers of one kind a channel has on a core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubEvent {
    /// `response`, `stream` or `ws` (Pushpin's subscription modes).
    pub mode: &'static str,
    pub channel: String,
    /// +1 or -1.
    pub delta: i32,
}

/// The receiving end's side of subscription events: a channel, and a wake
/// socket written once per batch (the receiver clears `pending` before
/// draining), so a core pays one queue push per change and at most one
/// write per batch.
pub struct SubWatch {
    /// Subscription changes and routed items share one queue, so the
    /// receiver sees them in the order they happened (an item routed after
    /// a subscription comes after it, an unsubscription caused by the
    /// item's delivery after the item).
    pub tx: Sender<Watched>,
    pub pending: Arc<AtomicBool>,
    pub wake: UnixStream,
    /// Whether routed items are announced (for the `message` stats, when
    /// a stats socket wants them); without, the publish path pays one
    /// branch.
    pub published: bool,
    /// Whether requests and WebSockets are announced (`conn` stats).
    pub conns: bool,
}

/// What a `SubWatch` hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    Sub(SubEvent),
    Item(Published),
    Conn(ConnEvent),
}

/// A request or WebSocket starting (`open`) or ending, as the `conn`
/// stats describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnEvent {
    pub id: String,
    pub open: Option<ConnOpen>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnOpen {
    pub ws: bool,
    pub peer: std::net::IpAddr,
    pub ssl: bool,
}

/// An item routed to the cores, as the `message` stats describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub channel: String,
    pub id: Option<String>,
    /// Which formats the item carries: `http-response`, `http-stream`,
    /// `ws-message` (Pushpin's transport names), in that order.
    pub formats: [bool; 3],
}

impl SubWatch {
    pub fn send(&self, e: SubEvent) {
        if self.tx.send(Watched::Sub(e)).is_ok() {
            self.wake();
        }
    }

    /// Announces a request or WebSocket starting or ending (callers check
    /// `conns` first).
    pub fn conn(&self, e: ConnEvent) {
        if self.tx.send(Watched::Conn(e)).is_ok() {
            self.wake();
        }
    }

    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = (&self.wake).write_all(b"s");
        }
    }

    /// Announces a routed item (nothing when no one asked).
    fn published(&self, item: &Item) {
        if !self.published {
            return;
        }
        let p = Published {
            channel: item.channel.clone(),
            id: item.id.clone(),
            formats: [
                item.http_response.is_some(),
                item.http_stream.is_some(),
                item.ws_message.is_some(),
            ],
        };
        if self.tx.send(Watched::Item(p)).is_ok() {
            self.wake();
        }
    }
}

impl Bus {
    /// A bus for cores whose wake sockets are `wakes`; returns the bus and
    /// one inbox per core, in the same order.
    pub fn new(wakes: Vec<UnixStream>, limits: Limits) -> (Arc<Bus>, Vec<CoreInbox>) {
        let n = wakes.len();
        let mut cores = Vec::new();
        let mut parts = Vec::new();
        for wake in wakes {
            let (tx, rx) = crossbeam_channel::unbounded();
            let pending = Arc::new(AtomicBool::new(false));
            cores.push(CoreLink {
                tx,
                wake,
                pending: pending.clone(),
            });
            parts.push((rx, pending));
        }
        let bus = Arc::new(Bus {
            cores,
            interest: Interest::new(n),
            prefixes: Prefixes::new(),
            seq: Mutex::new(Sequencer {
                history: History::new(limits.history),
                ..Sequencer::default()
            }),
            limits,
            stats: BusStats::for_cores(n),
            watch: std::sync::OnceLock::new(),
            recover: AtomicU64::new(0),
            routed: AtomicU64::new(0),
        });
        let inboxes = parts
            .into_iter()
            .enumerate()
            .map(|(core, (rx, pending))| CoreInbox {
                rx,
                pending,
                bus: Arc::downgrade(&bus),
                core,
                warned: std::cell::Cell::new(None),
            })
            .collect();
        let weak = Arc::downgrade(&bus);
        // Held out-of-order items are released by time: a small thread
        // looks every 100 ms, and only takes the lock when items are held.
        let _ = std::thread::Builder::new()
            .name("corepin-sequencer".into())
            .spawn(move || {
                for tick in 0u64.. {
                    std::thread::sleep(Duration::from_millis(100));
                    let Some(bus) = weak.upgrade() else { break };
                    bus.flush_expired();
                    if tick % 10 == 0 {
                        bus.expire_history();
                    }
                }
            });
        (bus, inboxes)
    }

    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// The lengths of prefix subscriptions (kept by the cores).
    pub fn prefixes(&self) -> &Prefixes {
        &self.prefixes
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes `bytes` of the in-flight budget for a publish that already
    /// holds `own` of it.
    fn take_budget(&self, bytes: usize, own: usize) -> Result<(), Refused> {
        let limit = self.limits.inflight;
        let mut cur = self.stats.inflight.load(Ordering::Relaxed);
        loop {
            // One publish alone is always let through (its size is bounded
            // by the body limit), so a budget below one body cannot wedge.
            if cur > own && cur + bytes > limit {
                self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Busy {
                    inflight: cur,
                    limit,
                });
            }
            match self.stats.inflight.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    /// Reserves `bytes` of the in-flight budget for a publish being read
    /// and parsed; refused when the budget is spent.
    pub fn reserve(&self, bytes: usize) -> Result<Reservation<'_>, Refused> {
        self.take_budget(bytes, 0)?;
        Ok(Reservation { bus: self, bytes })
    }

    /// Whether a publish may be taken now: refused while any core has more
    /// undelivered items queued than the backlog bound.
    pub fn admit(&self) -> Result<(), Refused> {
        let limit = self.limits.backlog;
        for (core, b) in self.stats.backlog.iter().enumerate() {
            let queued = b.load(Ordering::Relaxed);
            if queued > limit {
                self.stats.refused_backlog.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Backlog {
                    core,
                    queued,
                    limit,
                });
            }
        }
        Ok(())
    }

    /// Sends subscription changes to `w` from now on (once; a second watch
    /// is refused).
    pub fn set_watch(&self, w: SubWatch) -> Result<(), String> {
        self.watch
            .set(w)
            .map_err(|_| "a subscription watch is already set".to_string())
    }

    /// Where subscription changes go, if anywhere.
    pub fn watch(&self) -> Option<&SubWatch> {
        self.watch.get()
    }

    /// Pushpin's `recover`: forgets every channel's last id, so that the
    /// next item is taken whatever its `prev-id`, releases the items held
    /// waiting for a predecessor, and asks every core to update its held
    /// HTTP subscribers (streams fetch their next link, long-polls
    /// re-request the backend). Returns how many held items were released.
    pub fn recover(&self) -> usize {
        let Ok(mut seq) = self.seq.lock() else {
            return 0;
        };
        seq.last_id.clear();
        let mut held: Vec<(Instant, Arc<Encoded>)> =
            seq.held.drain().flat_map(|(_, q)| q).collect();
        held.sort_by_key(|(t, _)| *t);
        let n = held.len();
        let mut touched = Touched::default();
        let now = Instant::now();
        for (_, e) in held {
            if let Some(id) = &e.item.id {
                seq.last_id.insert(e.item.channel.clone(), id.clone());
            }
            self.route_kept(&mut seq, e, now, &mut touched);
        }
        self.history_gauges(&seq.history);
        drop(seq);
        self.wake(&touched, None);
        self.recover.fetch_add(1, Ordering::Release);
        n
    }

    /// How many `recover` commands there have been.
    pub fn recoveries(&self) -> u64 {
        self.recover.load(Ordering::Acquire)
    }

    /// Whether any core's undelivered backlog is over its bound (as
    /// [`Bus::admit`] checks, without counting a refusal): a source that
    /// can wait, such as a broker's stream, waits.
    pub fn over_backlog(&self) -> bool {
        let limit = self.limits.backlog;
        self.stats
            .backlog
            .iter()
            .any(|b| b.load(Ordering::Relaxed) > limit)
    }

    /// The last id published on `channel` (for a long-poll's `prev-id`).
    pub fn last_id(&self, channel: &str) -> Option<String> {
        self.seq.lock().ok()?.last_id.get(channel).cloned()
    }

    fn flush_expired(&self) {
        let Ok(mut seq) = self.seq.lock() else { return };
        if !seq.holding() {
            return;
        }
        let mut out = Vec::new();
        let now = Instant::now();
        seq.flush_expired(now, &self.stats, &mut out);
        let mut touched = Touched::default();
        for e in out {
            self.route_kept(&mut seq, e, now, &mut touched);
        }
        self.history_gauges(&seq.history);
        self.wake(&touched, None);
    }

    /// Forgets history past its age.
    fn expire_history(&self) {
        let Ok(mut seq) = self.seq.lock() else { return };
        if seq.history.items() == 0 {
            return;
        }
        seq.history.expire(Instant::now());
        self.history_gauges(&seq.history);
    }

    fn history_gauges(&self, h: &History) {
        let s = &self.stats;
        s.history_bytes.store(h.bytes(), Ordering::Relaxed);
        s.history_items.store(h.items(), Ordering::Relaxed);
        s.history_channels.store(h.channels(), Ordering::Relaxed);
    }

    /// Whether channels keep history.
    pub fn history_on(&self) -> bool {
        self.limits.history.messages > 0
    }

    /// What `channel` published after id `last` that a subscriber whose
    /// `joined` mark is `mark` did not and will not get live (see
    /// [`History::since`]). Counted as a replay or a gap.
    pub fn replay(&self, channel: &str, last: &str, mark: u64) -> Replay {
        let Ok(mut guard) = self.seq.lock() else {
            return Replay::Off;
        };
        let seq = &mut *guard;
        let newest = seq.last_id.get(channel).map(String::as_str);
        let r = seq
            .history
            .since(channel, last, mark, newest, Instant::now());
        drop(guard);
        match &r {
            Replay::Items(_) => self.stats.history_replays.fetch_add(1, Ordering::Relaxed),
            Replay::Gap => self.stats.history_gaps.fetch_add(1, Ordering::Relaxed),
            Replay::Off => 0,
        };
        r
    }

    /// Routes a sequenced item and keeps it in history.
    fn route_kept(
        &self,
        seq: &mut Sequencer,
        e: Arc<Encoded>,
        now: Instant,
        touched: &mut Touched,
    ) {
        self.route(e.clone(), touched);
        seq.history.record(&e, now);
    }

    /// Counts one publish request (however many `publish` calls carry its
    /// items).
    pub fn count_publish(&self) {
        self.stats.publishes.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands out items (already validated), in order. `from` is the calling
    /// core, if the caller is one: that core is not sent a wake byte, and
    /// `Sent::local` tells the caller to kick its own delivery instead.
    pub fn publish(&self, items: Vec<Item>, from: Option<usize>) -> Sent {
        self.stats
            .items
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        let mut touched = Touched::default();
        let mut n = items.len();
        if items.iter().any(needs_sequencing) {
            let now = Instant::now();
            // Sequencing and sending happen under one lock, so every core
            // sees sequenced items in the same order.
            let Ok(mut seq) = self.seq.lock() else {
                return Sent::default();
            };
            seq.expire_seen(now);
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                seq.accept(Arc::new(Encoded::new(item)), now, &self.stats, &mut out);
            }
            n = out.len();
            for e in out {
                self.route_kept(&mut seq, e, now, &mut touched);
            }
            if seq.history.enabled() {
                self.history_gauges(&seq.history);
            }
        } else {
            for item in items {
                // An item no core listens to is not even encoded.
                if self.interest.wanted(&item.channel, &self.prefixes) {
                    self.route(Arc::new(Encoded::new(item)), &mut touched);
                }
            }
        }
        Sent {
            items: n,
            local: self.wake(&touched, from),
        }
    }

    /// Where the order of routed items stands: a subscriber that records
    /// this after subscribing gets the items routed after it and none
    /// routed before.
    ///
    /// Why this is needed: a core drains its inbox when it gets to it, so
    /// an item routed to it before a subscription (because another
    /// subscriber there, perhaps one already leaving, shares the channel
    /// or its interest slot) may still be queued when the new subscriber
    /// arrives. Without the cut the late drain would hand the newcomer a
    /// publish that happened before it subscribed.
    ///
    /// Why it is exact: a publish that happens after the subscription
    /// takes its `seq` with a `fetch_add` that happens after this load, so
    /// by read-write coherence its `seq` is above the value read; a
    /// publish that happened before the subscription took its `seq` with a
    /// `fetch_add` this load sees (write-read coherence), so its `seq` is
    /// at most the value read.
    pub fn joined(&self) -> u64 {
        self.routed.load(Ordering::Acquire)
    }

    /// Queues `e` for every core with a subscriber on its channel, after
    /// giving it the next `seq`.
    fn route(&self, e: Arc<Encoded>, touched: &mut Touched) {
        let seq = self.routed.fetch_add(1, Ordering::AcqRel) + 1;
        e.seq.store(seq, Ordering::Release);
        if let Some(w) = self.watch.get() {
            w.published(&e.item);
        }
        let mut now = None;
        self.interest
            .each_core(&e.item.channel, &self.prefixes, |core| {
                if let Some(link) = self.cores.get(core) {
                    self.stats.backlog[core].fetch_add(e.cost, Ordering::Relaxed);
                    let at = *now.get_or_insert_with(Instant::now);
                    if link.tx.send((e.clone(), at)).is_ok() {
                        touched.add(core);
                    } else {
                        self.stats.backlog[core].fetch_sub(e.cost, Ordering::Relaxed);
                    }
                }
            });
    }

    /// Wakes each touched core not already due to look; returns whether
    /// `from` itself needs a (local) kick.
    fn wake(&self, touched: &Touched, from: Option<usize>) -> bool {
        let mut local = false;
        for (i, core) in self.cores.iter().enumerate() {
            if !touched.has(i) || core.pending.swap(true, Ordering::AcqRel) {
                continue;
            }
            if from == Some(i) {
                local = true;
            } else {
                self.stats.wakes[i].fetch_add(1, Ordering::Relaxed);
                let _ = (&core.wake).write_all(&[crate::wake::PUBLISH]);
            }
        }
        local
    }

    pub fn cores(&self) -> usize {
        self.cores.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::publish::{HttpStream, Item};

    fn item(ch: &str, id: Option<&str>, prev: Option<&str>) -> Arc<Encoded> {
        Arc::new(Encoded::new(Item {
            channel: ch.into(),
            id: id.map(String::from),
            prev_id: prev.map(String::from),
            http_stream: Some(HttpStream {
                action: Action::Send,
                content: Bytes::from(format!("{}\n", id.unwrap_or("-"))),
                content_filters: None,
            }),
            ..Item::default()
        }))
    }

    fn ids(out: &[Arc<Encoded>]) -> Vec<String> {
        out.iter()
            .map(|e| e.item.id.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn dedup_and_reorder() {
        let stats = BusStats::default();
        let mut s = Sequencer::default();
        let now = Instant::now();
        let mut out = Vec::new();
        s.accept(item("c", Some("1"), None), now, &stats, &mut out);
        s.accept(item("c", Some("1"), None), now, &stats, &mut out);
        assert_eq!(ids(&out), vec!["1"]);
        s.accept(item("c", Some("3"), Some("2")), now, &stats, &mut out);
        s.accept(item("c", Some("4"), Some("3")), now, &stats, &mut out);
        assert_eq!(ids(&out), vec!["1"], "3 and 4 wait for 2");
        s.accept(item("c", Some("2"), Some("1")), now, &stats, &mut out);
        assert_eq!(ids(&out), vec!["1", "2", "3", "4"]);
        assert_eq!(stats.deduplicated.load(Ordering::Relaxed), 1);

        s.accept(item("c", Some("9"), Some("8")), now, &stats, &mut out);
        s.flush_expired(now + Duration::from_secs(1), &stats, &mut out);
        assert_eq!(out.len(), 4);
        s.flush_expired(now + REORDER_WAIT, &stats, &mut out);
        assert_eq!(
            ids(&out).last().map(String::as_str),
            Some("9"),
            "released after the wait"
        );

        let mut no_seq = item("c", Some("20"), Some("19")).item.clone();
        no_seq.no_seq = true;
        s.accept(Arc::new(Encoded::new(no_seq)), now, &stats, &mut out);
        assert_eq!(ids(&out).last().map(String::as_str), Some("20"));
    }

    #[test]
    fn dedup_window_expires() {
        let stats = BusStats::default();
        let mut s = Sequencer::default();
        let now = Instant::now();
        let mut out = Vec::new();
        s.accept(item("c", Some("1"), None), now, &stats, &mut out);
        s.expire_seen(now + DEDUP_WINDOW);
        s.accept(
            item("c", Some("1"), None),
            now + DEDUP_WINDOW,
            &stats,
            &mut out,
        );
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn encoding_is_done_once_on_demand() {
        let e = item("c", Some("7"), None);
        assert!(e.stream_chunk.get().is_none(), "not made until asked");
        assert_eq!(&e.stream_chunk()[..], b"2\r\n7\n\r\n");
        let first = e.stream_chunk().as_ptr();
        assert_eq!(e.stream_chunk().as_ptr(), first, "made once");
        assert_eq!(&e.stream_raw()[..], b"7\n");
        assert!(e.ws_frame().is_empty(), "no ws-message format");
    }

    #[test]
    fn response_head_is_written_with_its_length() {
        let mut it = Item {
            channel: "c".into(),
            ..Item::default()
        };
        let fields = [
            (response::At::Key, &b"X-A"[..], &b"1"[..]),
            (response::At::Key, &b"Content-Length"[..], &b"99"[..]),
        ];
        it.http_response = Some(crate::codec::publish::HttpResponse {
            action: Action::Send,
            head: response::Head::from_parts(Some(404), None, fields, b"hi").expect("valid"),
            body: Bytes::from_static(b"hi"),
            patch: None,
            content_filters: None,
        });
        let e = Encoded::new(it);
        assert_eq!(
            &e.response_head[..],
            b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nContent-Length: 2\r\n"
        );
    }

    fn bus(cores: usize) -> (Arc<Bus>, Vec<CoreInbox>, Vec<UnixStream>) {
        let (ours, theirs): (Vec<_>, Vec<_>) = (0..cores)
            .map(|_| UnixStream::pair().expect("socketpair"))
            .unzip();
        for t in &theirs {
            t.set_nonblocking(true).expect("nonblocking");
        }
        let (bus, inboxes) = Bus::new(ours, Limits::default());
        (bus, inboxes, theirs)
    }

    fn plain(ch: &str) -> Item {
        Item {
            channel: ch.into(),
            http_stream: Some(HttpStream {
                action: Action::Send,
                content: Bytes::from_static(b"x"),
                content_filters: None,
            }),
            ..Item::default()
        }
    }

    #[test]
    fn recover_forgets_last_ids_and_releases_held_items() {
        let (bus, inboxes, _theirs) = bus(1);
        bus.interest().set(Interest::slot("c"), 0);
        let with = |id: &str, prev: Option<&str>| Item {
            id: Some(id.into()),
            prev_id: prev.map(String::from),
            ..plain("c")
        };
        bus.publish(vec![with("1", None)], None);
        // Waits for "2", which never comes.
        bus.publish(vec![with("3", Some("2"))], None);
        assert_eq!(bus.last_id("c").as_deref(), Some("1"));
        assert_eq!(bus.recover(), 1);
        assert_eq!(bus.last_id("c").as_deref(), Some("3"));
        let mut out = Vec::new();
        inboxes[0].take(16, &mut out);
        assert_eq!(ids(&out), vec!["1", "3"]);
        // Nothing is known any more: any prev-id is taken at once.
        assert_eq!(bus.recover(), 0);
        assert_eq!(bus.last_id("c"), None);
        bus.publish(vec![with("9", Some("8"))], None);
        out.clear();
        inboxes[0].take(16, &mut out);
        assert_eq!(ids(&out), vec!["9"]);
    }

    #[test]
    fn a_watch_hears_changes_with_one_wake_per_batch() {
        let (bus, _inboxes, _theirs) = bus(1);
        let (ours, theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        let (tx, rx) = crossbeam_channel::unbounded();
        let pending = Arc::new(AtomicBool::new(false));
        bus.set_watch(SubWatch {
            tx,
            pending: pending.clone(),
            wake: theirs,
            published: false,
            conns: false,
        })
        .expect("first watch");
        let ev = |delta| SubEvent {
            mode: "stream",
            channel: "c".into(),
            delta,
        };
        let w = bus.watch().expect("set");
        w.send(ev(1));
        w.send(ev(-1));
        assert_eq!(wake_bytes(&ours), 1);
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec![Watched::Sub(ev(1)), Watched::Sub(ev(-1))]
        );
        pending.store(false, Ordering::Release);
        w.send(ev(1));
        assert_eq!(wake_bytes(&ours), 1);
        let (_, other) = UnixStream::pair().expect("pair");
        let again = SubWatch {
            tx: crossbeam_channel::unbounded().0,
            pending,
            wake: other,
            published: false,
            conns: false,
        };
        assert!(bus.set_watch(again).is_err());
    }

    fn wake_bytes(s: &UnixStream) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok(k) = std::io::Read::read(&mut &*s, &mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    }

    #[test]
    fn only_interested_cores_get_items_and_one_wake_per_batch() {
        let (bus, inboxes, wakes) = bus(3);
        let slot = Interest::slot("a");
        bus.interest().set(slot, 2);
        let sent = bus.publish(vec![plain("a"), plain("b"), plain("a")], Some(0));
        assert_eq!(
            sent,
            Sent {
                items: 3,
                local: false
            }
        );
        assert_eq!(inboxes[0].rx.len() + inboxes[1].rx.len(), 0);
        assert_eq!(inboxes[2].rx.len(), 2, "both items on channel a");
        let mut got = Vec::new();
        assert_eq!(wake_bytes(&wakes[2]), 1, "one wake for the batch");
        assert_eq!(wake_bytes(&wakes[0]) + wake_bytes(&wakes[1]), 0);
        // Not drained yet: a second publish wakes no one again.
        bus.publish(vec![plain("a")], None);
        assert_eq!(wake_bytes(&wakes[2]), 0);
        assert!(bus.stats.backlog[2].load(Ordering::Relaxed) > 3 * ITEM_OVERHEAD);
        inboxes[2].rearm();
        assert_eq!(inboxes[2].take(2, &mut got), 2, "at most as many as asked");
        assert_eq!(inboxes[2].take(10, &mut got), 1);
        let channels: Vec<&str> = got.iter().map(|e| e.item.channel.as_str()).collect();
        assert_eq!(channels, ["a", "a", "a"], "in order");
        assert_eq!(bus.stats.backlog[2].load(Ordering::Relaxed), 0);
        let waited: u64 = bus.stats.lag[2]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        assert_eq!(waited, 3, "every item's wait is counted");
        // The publishing core itself is kicked locally, not woken.
        bus.interest().set(slot, 0);
        let sent = bus.publish(vec![plain("a")], Some(0));
        assert!(sent.local);
        assert_eq!(wake_bytes(&wakes[0]), 0);
        assert_eq!(wake_bytes(&wakes[2]), 1);
        bus.interest().clear(slot, 0);
        bus.interest().clear(slot, 2);
        inboxes[0].rearm();
        inboxes[2].rearm();
        let before = (inboxes[0].rx.len(), inboxes[2].rx.len());
        bus.publish(vec![plain("a")], None);
        assert_eq!((inboxes[0].rx.len(), inboxes[2].rx.len()), before);
    }

    #[test]
    fn a_prefix_reaches_the_cores_holding_it_once_each() {
        let (bus, inboxes, _w) = bus(3);
        // Core 1 holds the prefix `a.` and the channel `a.b`; core 2 the
        // prefix `a.b.`: a publish to `a.b.c` reaches both, core 1 once.
        bus.prefixes().add(2);
        bus.interest()
            .set(Interest::key_slot(&wildcard::key("a.")), 1);
        bus.interest().set(Interest::slot("a.b"), 1);
        bus.prefixes().add(4);
        bus.interest()
            .set(Interest::key_slot(&wildcard::key("a.b.")), 2);
        for ch in ["a.b.c", "a.b", "x"] {
            bus.publish(vec![plain(ch)], None);
        }
        let got = |core: usize| {
            let mut out = Vec::new();
            inboxes[core].take(usize::MAX, &mut out);
            out.iter()
                .map(|e| e.item.channel.clone())
                .collect::<Vec<_>>()
        };
        assert!(got(0).is_empty());
        assert_eq!(got(1), ["a.b.c", "a.b"]);
        assert_eq!(got(2), ["a.b.c"]);
        // Many cores: the union of the slots' words, each core once.
        let i = Interest::new(130);
        let p = Prefixes::new();
        p.add(1);
        i.set(Interest::key_slot(&wildcard::key("a")), 129);
        i.set(Interest::key_slot(&wildcard::key("a")), 3);
        i.set(Interest::slot("ab"), 129);
        let mut cores = Vec::new();
        i.each_core("ab", &p, |c| cores.push(c));
        assert_eq!(cores, [3, 129]);
        assert!(i.wanted("ab", &p) && i.wanted("ax", &p) && !i.wanted("b", &p));
    }

    #[test]
    fn interest_bits_for_many_cores() {
        let i = Interest::new(130);
        let slot = Interest::slot("x");
        for c in [0, 63, 64, 129] {
            i.set(slot, c);
        }
        let mut got = Vec::new();
        i.for_each(slot, |c| got.push(c));
        assert_eq!(got, [0, 63, 64, 129]);
        i.clear(slot, 64);
        got.clear();
        i.for_each(slot, |c| got.push(c));
        assert_eq!(got, [0, 63, 129]);
    }

    #[test]
    fn budget_and_backlog_bounds() {
        let (ours, _theirs): (Vec<_>, Vec<_>) = (0..1)
            .map(|_| UnixStream::pair().expect("socketpair"))
            .unzip();
        let (bus, inboxes) = Bus::new(
            ours,
            Limits {
                inflight: 1000,
                backlog: 2 * ITEM_OVERHEAD,
                ..Limits::default()
            },
        );
        let a = bus.reserve(600).expect("first");
        assert!(matches!(bus.reserve(600), Err(Refused::Busy { .. })));
        drop(a);
        let mut a = bus.reserve(2000).expect("alone, even over the budget");
        assert!(bus.reserve(1).is_err());
        a.grow(5000).expect("alone, it may grow past the budget");
        drop(a);
        let mut a = bus.reserve(400).expect("first");
        let b = bus.reserve(400).expect("second");
        assert!(
            a.grow(300).is_err(),
            "growing past the budget beside another"
        );
        drop(b);
        a.grow(300).expect("alone again");
        drop(a);
        assert_eq!(bus.stats.inflight.load(Ordering::Relaxed), 0);
        bus.interest().set(Interest::slot("c"), 0);
        assert!(bus.admit().is_ok());
        bus.publish(vec![plain("c"), plain("c"), plain("c")], None);
        let e = bus.admit().expect_err("backlog over the bound");
        assert!(e.to_string().contains("delivery backlog full"), "{e}");
        inboxes[0].take(usize::MAX, &mut Vec::new());
        assert!(bus.admit().is_ok());
        assert_eq!(bus.stats.refused_backlog.load(Ordering::Relaxed), 1);
    }
}
