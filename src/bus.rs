//! The publish bus: items from any source (the HTTP publish API, the
//! control socket, later a broker) are sequenced once (dedup of
//! (channel, id) within 60 s, `prev-id` reordering with a bounded wait),
//! encoded once per format into shared `Bytes`, and handed to every core
//! over its own crossbeam channel, with a wake byte on the core's wake
//! socket when the core is not already due to look.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::codec::chunked;
use crate::codec::publish::{Action, Item};
use crate::codec::response;

/// How long a (channel, id) pair is remembered for dedup.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(60);
/// How long an out-of-order item waits for its predecessor.
pub const REORDER_WAIT: Duration = Duration::from_secs(5);
/// Items held for reordering per channel; past this the oldest goes out.
pub const REORDER_MAX: usize = 100;

/// A published item with its formats encoded for the wire.
#[derive(Debug)]
pub struct Encoded {
    pub item: Item,
    /// `http-stream` content as one chunk (empty content: empty bytes).
    pub stream_chunk: Bytes,
    /// `http-stream` content as is (for HTTP/1.0 streams).
    pub stream_raw: Bytes,
    /// The whole `http-response` message: status line, headers without the
    /// final blank line (so exposed headers can follow), and the body.
    pub response_head: Bytes,
    pub response_body: Bytes,
    /// `ws-message` as one unmasked server frame (empty for a close).
    pub ws_frame: Bytes,
}

fn encode(item: Item) -> Encoded {
    let (mut stream_chunk, mut stream_raw) = (Bytes::new(), Bytes::new());
    if let Some(s) = &item.http_stream {
        if s.action == Action::Send && !s.content.is_empty() {
            let mut out = Vec::with_capacity(s.content.len() + 12);
            chunked::write_chunk(&mut out, &s.content);
            stream_chunk = Bytes::from(out);
            stream_raw = s.content.clone();
        }
    }
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
    let mut ws_frame = Bytes::new();
    if let Some(w) = &item.ws_message {
        if w.action == Action::Send {
            let op = match w.kind {
                crate::codec::publish::WsKind::Text => crate::codec::ws::Opcode::Text,
                crate::codec::publish::WsKind::Binary => crate::codec::ws::Opcode::Binary,
            };
            let mut out = Vec::with_capacity(w.content.len() + 10);
            crate::codec::ws::write_frame(&mut out, true, op, &w.content, None);
            ws_frame = Bytes::from(out);
        }
    }
    Encoded {
        item,
        ws_frame,
        stream_chunk,
        stream_raw,
        response_head,
        response_body,
    }
}

/// One publish as delivered to a core: items in order.
pub type Batch = Vec<Arc<Encoded>>;

/// Global counters of the publish path (read by stats and metrics).
#[derive(Default)]
pub struct BusStats {
    pub publishes: AtomicU64,
    pub items: AtomicU64,
    pub deduplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub reorder_timeouts: AtomicU64,
}

/// The per-channel sequencing state.
#[derive(Default)]
struct Sequencer {
    seen: HashMap<(String, String), Instant>,
    seen_order: VecDeque<(Instant, (String, String))>,
    last_id: HashMap<String, String>,
    held: HashMap<String, VecDeque<(Instant, Arc<Encoded>)>>,
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

/// A core's end of the bus.
pub struct CoreInbox {
    pub rx: Receiver<Arc<Batch>>,
    pending: Arc<AtomicBool>,
}

impl CoreInbox {
    /// Called before draining: the next publish must wake the core again.
    pub fn rearm(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

struct CoreLink {
    tx: Sender<Arc<Batch>>,
    wake: UnixStream,
    pending: Arc<AtomicBool>,
}

/// The wake byte that means "publishes are waiting".
pub const WAKE_PUBLISH: u8 = b'P';

pub struct Bus {
    cores: Vec<CoreLink>,
    seq: Mutex<Sequencer>,
    pub stats: BusStats,
}

impl Bus {
    /// A bus for cores whose wake sockets are `wakes`; returns the bus and
    /// one inbox per core, in the same order.
    pub fn new(wakes: Vec<UnixStream>) -> (Arc<Bus>, Vec<CoreInbox>) {
        let mut cores = Vec::new();
        let mut inboxes = Vec::new();
        for wake in wakes {
            let (tx, rx) = crossbeam_channel::unbounded();
            let pending = Arc::new(AtomicBool::new(false));
            cores.push(CoreLink {
                tx,
                wake,
                pending: pending.clone(),
            });
            inboxes.push(CoreInbox { rx, pending });
        }
        let bus = Arc::new(Bus {
            cores,
            seq: Mutex::new(Sequencer::default()),
            stats: BusStats::default(),
        });
        let weak = Arc::downgrade(&bus);
        // Held out-of-order items are released by time: a small thread
        // looks every 100 ms, and only takes the lock when items are held.
        let _ = std::thread::Builder::new()
            .name("corepin-sequencer".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(100));
                let Some(bus) = weak.upgrade() else { break };
                bus.flush_expired();
            });
        (bus, inboxes)
    }

    fn flush_expired(&self) {
        let Ok(mut seq) = self.seq.lock() else { return };
        if !seq.holding() {
            return;
        }
        let mut out = Vec::new();
        seq.flush_expired(Instant::now(), &self.stats, &mut out);
        if !out.is_empty() {
            self.send(out);
        }
    }

    /// Publishes items (already validated). Returns the number accepted for
    /// delivery now (dedup and reordering may hold some back).
    pub fn publish(&self, items: Vec<Item>) -> usize {
        self.stats.publishes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .items
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        let encoded: Vec<Arc<Encoded>> = items.into_iter().map(|i| Arc::new(encode(i))).collect();
        let now = Instant::now();
        // Sequencing and sending happen under one lock, so every core sees
        // publishes in the same order.
        let Ok(mut seq) = self.seq.lock() else {
            return 0;
        };
        seq.expire_seen(now);
        let mut out = Vec::with_capacity(encoded.len());
        for e in encoded {
            seq.accept(e, now, &self.stats, &mut out);
        }
        let n = out.len();
        if n > 0 {
            self.send(out);
        }
        n
    }

    fn send(&self, batch: Batch) {
        let batch = Arc::new(batch);
        for core in &self.cores {
            if core.tx.send(batch.clone()).is_err() {
                continue;
            }
            if !core.pending.swap(true, Ordering::AcqRel) {
                let _ = (&core.wake).write_all(&[WAKE_PUBLISH]);
            }
        }
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
        Arc::new(encode(Item {
            channel: ch.into(),
            id: id.map(String::from),
            prev_id: prev.map(String::from),
            http_stream: Some(HttpStream {
                action: Action::Send,
                content: Bytes::from(format!("{}\n", id.unwrap_or("-"))),
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
        s.accept(Arc::new(encode(no_seq)), now, &stats, &mut out);
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
    fn encoding_is_done_once() {
        let e = item("c", Some("7"), None);
        assert_eq!(&e.stream_chunk[..], b"2\r\n7\n\r\n");
        assert_eq!(&e.stream_raw[..], b"7\n");
    }
}
