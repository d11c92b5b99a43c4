//! `corepin-load soak-worker` (started by `soak`, internal): holds every
//! W-th subscriber slot of a soak run. Each slot opens a session of its
//! kind (HTTP stream, long-poll, WebSocket with the GRIP extension,
//! WebSocket-over-HTTP), keeps it for a random lifetime, closes it, waits
//! a little and opens the next, on a random channel. A slot's class says
//! how it reads: healthy (at once), slow (a little now and then, from a
//! small receive buffer) or never (not at all once subscribed).
//!
//! Every session that ends is written as one JSON line to the worker's
//! record file: when it was subscribed and ended, which sequence numbers
//! it received (as ranges), duplicates and late arrivals, and, for a
//! long-poll, each request with the message that answered it. The parent
//! (soak.rs) holds these against its publish log. Progress and a summary
//! (counts and errors by kind) go to stdout as JSON lines.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corepin::codec::ws::{self, Opcode, Received, Role};
use serde_json::{json, Value};

use crate::args::{die, Args};
use crate::http::{ws_events, Ev, ResponseReader};
use crate::net::{now_ns, Poller};
use crate::record::{scan, Latency, Track};
use crate::tls::{Stream, Tls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SKind {
    Stream,
    LongPoll,
    Ws,
    WsOverHttp,
}

pub const KINDS: [SKind; 4] = [SKind::Stream, SKind::LongPoll, SKind::Ws, SKind::WsOverHttp];

impl SKind {
    pub fn name(self) -> &'static str {
        match self {
            SKind::Stream => "stream",
            SKind::LongPoll => "longpoll",
            SKind::Ws => "ws",
            SKind::WsOverHttp => "ws_over_http",
        }
    }

    fn path(self) -> &'static str {
        match self {
            SKind::Stream => "/stream",
            SKind::LongPoll => "/response",
            SKind::Ws => "/wsp",
            SKind::WsOverHttp => "/wsoh",
        }
    }

    fn is_ws(self) -> bool {
        matches!(self, SKind::Ws | SKind::WsOverHttp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Healthy,
    Slow,
    Never,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Healthy => "healthy",
            Class::Slow => "slow",
            Class::Never => "never",
        }
    }
}

/// Flags shared by `soak` and its workers.
pub const WORKER_FLAGS: &[&str] = &[
    "to",
    "slots",
    "workers",
    "channels",
    "hot-channels",
    "channel-prefix",
    "slow-share",
    "never-share",
    "lifetime-s",
    "slow-lifetime-s",
    "slow-read-bytes",
    "slow-read-ms",
    "small-rcvbuf",
    "ramp-s",
    "discard-every",
    "tls",
    "sni",
    "resume",
];

#[derive(Debug, Clone)]
pub struct WorkerOpts {
    pub to: SocketAddr,
    pub slots: usize,
    pub workers: usize,
    pub channels: usize,
    /// Channels 0..hot get the big bursts; slow and never-reading slots
    /// pick one of them half of the time.
    pub hot: usize,
    pub prefix: String,
    pub slow_share: f64,
    pub never_share: f64,
    /// Lifetime range of a healthy session, seconds.
    pub lifetime: (f64, f64),
    /// Lifetime range of a slow or never-reading session.
    pub slow_lifetime: (f64, f64),
    /// A slow reader takes this many bytes every `slow_read_ms`.
    pub slow_read_bytes: usize,
    pub slow_read_ms: u64,
    /// SO_RCVBUF of slow and never-reading subscribers.
    pub small_rcvbuf: usize,
    /// Slots open their first sessions spread over this many seconds.
    pub ramp: f64,
    /// For checking the accounting only: healthy subscribers ignore every
    /// N-th message they receive, as if it had been lost (0: none).
    pub discard_every: u64,
    /// `--tls CA_FILE` (with `--sni`, `--resume`): subscribers connect over
    /// TLS (https, wss), as in `subscribe`.
    pub tls: Option<Tls>,
}

fn range_flag(a: &Args, name: &str, default: (f64, f64)) -> (f64, f64) {
    let Some(v) = a.opt::<String>(name) else {
        return default;
    };
    let parsed = v
        .split_once('-')
        .and_then(|(lo, hi)| Some((lo.parse::<f64>().ok()?, hi.parse::<f64>().ok()?)))
        .filter(|(lo, hi)| *lo > 0.0 && hi >= lo);
    parsed.unwrap_or_else(|| die(&format!("--{name}: '{v}' is not MIN-MAX seconds")))
}

impl WorkerOpts {
    pub fn from_args(a: &Args) -> WorkerOpts {
        let o = WorkerOpts {
            to: a.get(
                "to",
                "127.0.0.1:7999".parse().unwrap_or_else(|_| die("address")),
            ),
            slots: a.get("slots", 4000usize),
            workers: a.get("workers", 4usize).max(1),
            channels: a.get("channels", 300usize).max(1),
            hot: a.get("hot-channels", 4usize),
            prefix: a.string("channel-prefix", "soak"),
            slow_share: a.get("slow-share", 0.05f64),
            never_share: a.get("never-share", 0.05f64),
            lifetime: range_flag(a, "lifetime-s", (5.0, 120.0)),
            slow_lifetime: range_flag(a, "slow-lifetime-s", (120.0, 400.0)),
            slow_read_bytes: a.get("slow-read-bytes", 16384usize),
            slow_read_ms: a.get("slow-read-ms", 1000u64).max(1),
            small_rcvbuf: a.get("small-rcvbuf", 4096usize),
            ramp: a.get("ramp-s", 10.0f64).max(0.0),
            discard_every: a.get("discard-every", 0u64),
            tls: Tls::from_args("soak", a),
        };
        if o.hot > o.channels {
            die("--hot-channels: more than --channels");
        }
        if o.slots.div_ceil(o.workers) > 15_000 {
            die("more than 15,000 slots per worker: use more --workers (20,000 open files per process)");
        }
        o
    }

    pub fn flags(&self) -> Vec<String> {
        let f = |x: (f64, f64)| format!("{}-{}", x.0, x.1);
        [
            ("to", self.to.to_string()),
            ("slots", self.slots.to_string()),
            ("workers", self.workers.to_string()),
            ("channels", self.channels.to_string()),
            ("hot-channels", self.hot.to_string()),
            ("channel-prefix", self.prefix.clone()),
            ("slow-share", self.slow_share.to_string()),
            ("never-share", self.never_share.to_string()),
            ("lifetime-s", f(self.lifetime)),
            ("slow-lifetime-s", f(self.slow_lifetime)),
            ("slow-read-bytes", self.slow_read_bytes.to_string()),
            ("slow-read-ms", self.slow_read_ms.to_string()),
            ("small-rcvbuf", self.small_rcvbuf.to_string()),
            ("ramp-s", self.ramp.to_string()),
            ("discard-every", self.discard_every.to_string()),
        ]
        .into_iter()
        .chain(self.tls.iter().flat_map(Tls::flags))
        .flat_map(|(k, v)| [format!("--{k}"), v])
        .collect()
    }

    /// Slot `s`'s kind: the four kinds in turn.
    pub fn kind_of(&self, s: usize) -> SKind {
        KINDS[s % KINDS.len()]
    }

    /// Slot `s`'s class: long-polls are always healthy (a long-poll takes
    /// one message per request whatever its reader does).
    pub fn class_of(&self, s: usize) -> Class {
        if self.kind_of(s) == SKind::LongPoll {
            return Class::Healthy;
        }
        // A fixed spread over the slots, the same in every run.
        let u = (mix(s as u64) % 1_000_000) as f64 / 1e6;
        if u < self.never_share {
            Class::Never
        } else if u < self.never_share + self.slow_share {
            Class::Slow
        } else {
            Class::Healthy
        }
    }
}

/// SplitMix64: a fixed scramble of a number.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small deterministic random source (per worker).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.draw() % 1_000_000) as f64 / 1e6 * (hi - lo)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.draw() % n.max(1) as u64) as usize
    }
}

/// Sequence numbers received, as sorted disjoint inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(pub Vec<(u64, u64)>);

impl Ranges {
    pub fn insert(&mut self, s: u64) {
        let v = &mut self.0;
        if let Some(last) = v.last_mut() {
            if s == last.1 + 1 {
                last.1 = s;
                return;
            }
            if s >= last.0 && s <= last.1 {
                return;
            }
        }
        // Out of the common order: find its place.
        let i = v.partition_point(|r| r.1 < s);
        if i < v.len() && v[i].0 <= s {
            return;
        }
        let joins_left = i > 0 && v[i - 1].1 + 1 == s;
        let joins_right = i < v.len() && v[i].0 == s + 1;
        match (joins_left, joins_right) {
            (true, true) => {
                v[i - 1].1 = v[i].1;
                v.remove(i);
            }
            (true, false) => v[i - 1].1 = s,
            (false, true) => v[i].0 = s,
            (false, false) => v.insert(i, (s, s)),
        }
    }

    pub fn contains(&self, s: u64) -> bool {
        let i = self.0.partition_point(|r| r.1 < s);
        i < self.0.len() && self.0[i].0 <= s
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|r| r.1 - r.0 + 1).sum()
    }

    /// Numbers between the lowest and highest received that were not.
    pub fn gaps(&self) -> u64 {
        match (self.0.first(), self.0.last()) {
            (Some(a), Some(b)) => (b.1.saturating_sub(a.0) + 1).saturating_sub(self.count()),
            _ => 0,
        }
    }
}

/// One subscriber session's protocol state and what it received.
struct Session {
    kind: SKind,
    class: Class,
    channel: usize,
    open_ns: u64,
    /// When the client knew it was subscribed (0: not yet).
    sub_ns: u64,
    end_at: Instant,
    /// The client sent a WebSocket close at this time.
    closing: Option<Instant>,
    /// When the client decided to end (its lifetime), if it did.
    client_end_ns: u64,
    reader: ResponseReader,
    ws: Option<Box<ws::Reader>>,
    ws_pending: Vec<u8>,
    tail: Vec<u8>,
    reply: Vec<u8>,
    got: Ranges,
    track: Track,
    /// Long-poll: (request sent, answered, seq or -1 for the timeout,
    /// request id).
    polls: Vec<(u64, u64, i64, u64)>,
    req_ns: u64,
    req_id: u64,
    poll_seq: i64,
    poll_records: u32,
    repoll: bool,
    /// Why the session ended; empty while it goes on.
    end: String,
    /// Whether the reason is an error (as opposed to an ordinary end).
    error: bool,
    /// A never-reading subscriber found closed or reset by the server
    /// when it finally looked.
    dropped: bool,
    /// `--discard-every` (testing the accounting).
    discard_every: u64,
}

struct Slot {
    id: usize,
    kind: SKind,
    class: Class,
    idle_until: Instant,
    conn: Option<Stream>,
    sess: Option<Session>,
    next_read: Instant,
    /// Connections opened by this slot (for the source address).
    opened: u64,
}

#[derive(Default)]
struct Stats {
    opened: BTreeMap<&'static str, u64>,
    subscribed: BTreeMap<&'static str, u64>,
    live: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    server_ends: BTreeMap<String, u64>,
    sessions: u64,
    delivered: u64,
    delivered_healthy: u64,
    /// Messages seen by healthy subscribers (for `--discard-every`).
    seen: u64,
    latency: Latency,
}

fn bump<K: Ord>(m: &mut BTreeMap<K, u64>, k: K) {
    *m.entry(k).or_default() += 1;
}

fn set_rcvbuf(s: &TcpStream, bytes: usize) {
    let v = bytes as libc::c_int;
    // SAFETY: setsockopt on an open socket with a c_int option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Request `rid` of slot `slot` (long-polls say which, so the backend's
/// hold log can tell when the proxy could hold it).
fn request(o: &WorkerOpts, kind: SKind, channel: usize, slot: usize, rid: u64) -> String {
    let mut path = format!("{}?channel={}{channel}", kind.path(), o.prefix);
    if kind == SKind::LongPoll {
        path.push_str(&format!("&r={slot}.{rid}"));
    }
    if kind.is_ws() {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            o.to
        )
    } else {
        format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", o.to)
    }
}

impl Session {
    fn ended(&mut self, why: String, error: bool) {
        if self.end.is_empty() {
            self.end = why;
            self.error = error;
        }
    }

    fn on_event(&mut self, ev: Ev<'_>, stats: &mut Stats) {
        match ev {
            Ev::Head(status) => {
                let want = if self.kind.is_ws() { 101 } else { 200 };
                if status != want {
                    self.ended(format!("status {status}"), true);
                    return;
                }
                match self.kind {
                    SKind::Stream => self.subscribed(stats),
                    SKind::LongPoll => {
                        self.poll_seq = -1;
                        self.poll_records = 0;
                    }
                    _ => self.ws = Some(Box::new(ws::Reader::new(Role::Client, 16 << 20))),
                }
            }
            Ev::Body(data) => {
                if self.kind.is_ws() {
                    self.ws_input(data, stats);
                } else {
                    self.records(data, stats);
                }
            }
            Ev::End => match self.kind {
                SKind::LongPoll => {
                    let now = now_ns();
                    self.polls
                        .push((self.req_ns, now, self.poll_seq, self.req_id));
                    if self.sub_ns == 0 {
                        self.sub_ns = self.req_ns;
                    }
                    self.repoll = true;
                }
                _ => self.ended("server ended the response".into(), false),
            },
        }
    }

    fn subscribed(&mut self, stats: &mut Stats) {
        if self.sub_ns == 0 {
            self.sub_ns = now_ns();
            bump(&mut stats.subscribed, self.kind.name());
        }
    }

    fn records(&mut self, data: &[u8], stats: &mut Stats) {
        let mut recs = Vec::new();
        scan(&mut self.tail, data, &mut recs);
        let now = now_ns();
        for (seq, sent) in recs {
            if self.discard_every > 0 && self.class == Class::Healthy {
                stats.seen += 1;
                if stats.seen.is_multiple_of(self.discard_every) {
                    continue;
                }
            }
            if self.kind == SKind::LongPoll {
                self.poll_records += 1;
                if self.poll_records > 1 {
                    self.ended("long-poll answer with more than one message".into(), true);
                }
                self.poll_seq = seq as i64;
            }
            self.got.insert(seq);
            if self.track.record(seq) {
                stats.delivered += 1;
                if self.class == Class::Healthy {
                    stats.delivered_healthy += 1;
                    stats.latency.record(now.saturating_sub(sent));
                }
            }
        }
    }

    fn ws_input(&mut self, data: &[u8], stats: &mut Stats) {
        let Some(reader) = self.ws.as_mut() else {
            return;
        };
        let mut msgs = Vec::new();
        let mut close: Option<u16> = None;
        let reply = &mut self.reply;
        let r = ws_events(reader, &mut self.ws_pending, data, &mut |ev| {
            match ev {
                Received::Message(_, m) => msgs.push(m),
                Received::Ping(p) => {
                    ws::write_frame(reply, true, Opcode::Pong, &p, Some([7, 7, 7, 7]))
                }
                Received::Close(code, _) => close = Some(code),
                Received::Pong(_) => {}
            }
            close.is_none()
        });
        for m in msgs {
            if m == crate::grip_backend::WELCOME {
                self.subscribed(stats);
            } else {
                self.records(&m, stats);
            }
        }
        if let Err(e) = r {
            self.ended(format!("websocket: {}", e.reason), true);
        } else if let Some(code) = close {
            let ours = self.closing.is_some();
            self.ended(
                if ours {
                    "closed by client".into()
                } else {
                    format!("close {code}")
                },
                false,
            );
        }
    }

    fn record(&self, slot: usize, end_ns: u64) -> Value {
        json!({
            "slot": slot,
            "k": self.kind.name(),
            "c": self.class.name(),
            "ch": self.channel,
            "open": self.open_ns,
            "sub": self.sub_ns,
            "end": end_ns,
            "client_end": self.client_end_ns,
            "why": self.end,
            "err": self.error,
            "r": self.got.0,
            "dup": self.track.duplicated,
            "ooo": self.track.out_of_order,
            "lp": self.polls,
            "dropped": self.dropped,
        })
    }
}

struct Worker<'a> {
    o: &'a WorkerOpts,
    index: usize,
    poller: Poller,
    slots: Vec<Slot>,
    stats: Stats,
    rng: Rng,
    out: BufWriter<std::fs::File>,
    buf: Vec<u8>,
    /// Requests sent, for long-poll request ids.
    requests: u64,
}

impl Worker<'_> {
    fn open(&mut self, i: usize) {
        let o = self.o;
        let slot = &mut self.slots[i];
        let (kind, class) = (slot.kind, slot.class);
        let channel = if class != Class::Healthy && o.hot > 0 && self.rng.draw().is_multiple_of(2) {
            self.rng.below(o.hot)
        } else {
            self.rng.below(o.channels)
        };
        let life = if class == Class::Healthy {
            o.lifetime
        } else {
            o.slow_lifetime
        };
        let now = Instant::now();
        let sess = Session {
            kind,
            class,
            channel,
            open_ns: now_ns(),
            sub_ns: 0,
            end_at: now + Duration::from_secs_f64(self.rng.range(life.0, life.1)),
            closing: None,
            client_end_ns: 0,
            reader: ResponseReader::new(),
            ws: None,
            ws_pending: Vec::new(),
            tail: Vec::new(),
            reply: Vec::new(),
            got: Ranges::default(),
            track: Track::default(),
            polls: Vec::new(),
            req_ns: now_ns(),
            req_id: self.requests,
            poll_seq: -1,
            poll_records: 0,
            repoll: false,
            end: String::new(),
            error: false,
            dropped: false,
            discard_every: o.discard_every,
        };
        bump(&mut self.stats.opened, kind.name());
        slot.next_read = now;
        self.requests += 1;
        match connect(
            o,
            slot.id,
            &mut slot.opened,
            class,
            &request(o, kind, channel, slot.id, sess.req_id),
        ) {
            Ok(s) => {
                self.poller.add(&s, i);
                slot.conn = Some(s);
                bump(&mut self.stats.live, kind.name());
                slot.sess = Some(sess);
            }
            Err(e) => {
                bump(
                    &mut self.stats.errors,
                    format!("{}: connect: {e}", kind.name()),
                );
                slot.idle_until = now + Duration::from_secs(1);
            }
        }
    }

    /// Reads what the slot's socket has (at most `limit` bytes) and
    /// handles it.
    fn read(&mut self, i: usize, limit: usize) {
        let slot = &mut self.slots[i];
        let (Some(conn), Some(sess)) = (slot.conn.as_mut(), slot.sess.as_mut()) else {
            return;
        };
        let mut taken = 0;
        let mut gone: Option<String> = None;
        while taken < limit && sess.end.is_empty() {
            let want = (limit - taken).min(self.buf.len());
            match conn.read(&mut self.buf[..want]) {
                Ok(0) => {
                    gone = Some("eof".into());
                    break;
                }
                Ok(n) => {
                    taken += n;
                    let stats = &mut self.stats;
                    let mut reader = std::mem::take(&mut sess.reader);
                    let r = reader.feed(&self.buf[..n], &mut |ev| {
                        if sess.end.is_empty() {
                            sess.on_event(ev, stats);
                        }
                    });
                    sess.reader = reader;
                    if let Err(e) = r {
                        sess.ended(format!("bad response: {e}"), true);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    gone = Some(format!("read: {}", e.kind()));
                    break;
                }
            }
        }
        if !sess.reply.is_empty() {
            let _ = conn.write_all(&sess.reply);
            sess.reply.clear();
        }
        if sess.repoll && sess.end.is_empty() {
            sess.repoll = false;
            sess.req_id = self.requests;
            self.requests += 1;
            let req = request(self.o, sess.kind, sess.channel, slot.id, sess.req_id);
            sess.req_ns = now_ns();
            let again = gone.is_none()
                && sess.reader.keep_alive()
                && conn.write_all(req.as_bytes()).is_ok();
            if !again {
                // A fresh connection for the next request.
                self.poller.remove(conn);
                slot.conn = None;
                sess.req_ns = now_ns();
                match connect(self.o, slot.id, &mut slot.opened, sess.class, &req) {
                    Ok(s) => {
                        self.poller.add(&s, i);
                        slot.conn = Some(s);
                    }
                    Err(e) => sess.ended(format!("reconnect: {e}"), true),
                }
                return;
            }
        }
        if let Some(g) = gone {
            if sess.closing.is_some() {
                sess.ended("closed by client".into(), false);
            } else {
                sess.ended(g, false);
            }
        }
        // A slow or never-reading subscriber is read on its own schedule
        // once subscribed.
        if sess.class != Class::Healthy && sess.sub_ns != 0 && sess.end.is_empty() {
            if let Some(c) = slot.conn.as_ref() {
                self.poller.remove(c);
            }
        }
    }

    /// Ends slot `i`'s session: writes its record and frees the slot.
    fn finish(&mut self, i: usize, end_ns: u64) {
        let slot = &mut self.slots[i];
        if let Some(c) = slot.conn.take() {
            self.poller.remove(&c);
        }
        let Some(sess) = slot.sess.take() else {
            return;
        };
        self.stats.sessions += 1;
        if let Some(l) = self.stats.live.get_mut(sess.kind.name()) {
            *l = l.saturating_sub(1);
        }
        let what = format!("{}: {}", sess.kind.name(), sess.end);
        if sess.error {
            bump(&mut self.stats.errors, what);
        } else if sess.client_end_ns == 0 {
            bump(
                &mut self.stats.server_ends,
                format!("{what} ({})", sess.class.name()),
            );
        }
        let _ = writeln!(self.out, "{}", sess.record(slot.id, end_ns));
        let pause = self.rng.range(0.1, 2.0);
        slot.idle_until = Instant::now() + Duration::from_secs_f64(pause);
    }

    /// The client's own end of a session at its lifetime.
    fn end_by_client(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let (Some(conn), Some(sess)) = (slot.conn.as_mut(), slot.sess.as_mut()) else {
            return;
        };
        sess.client_end_ns = now_ns();
        if sess.class == Class::Never {
            // Did the server give up on it? Drain what is there and look
            // for the end of the connection.
            let _ = conn.s.set_nonblocking(true);
            let mut left = 64 << 20;
            loop {
                match conn.read(&mut self.buf) {
                    Ok(0) => {
                        sess.dropped = true;
                        break;
                    }
                    Ok(n) if n < left => left -= n,
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        sess.dropped = true;
                        break;
                    }
                }
            }
        }
        if sess.kind.is_ws() && sess.ws.is_some() && sess.class == Class::Healthy && !sess.dropped {
            let mut f = Vec::new();
            ws::write_close(&mut f, 1000, "bye", Some([1, 2, 3, 4]));
            if conn.write_all(&f).is_ok() {
                sess.closing = Some(Instant::now());
                return;
            }
        }
        sess.ended("closed by client".into(), false);
    }
}

fn connect(
    o: &WorkerOpts,
    id: usize,
    opened: &mut u64,
    class: Class,
    req: &str,
) -> std::io::Result<Stream> {
    *opened += 1;
    // Source addresses spread over 127.0.0.2-254 per slot and connection.
    let n = id.wrapping_mul(7919).wrapping_add(*opened as usize);
    // Non-blocking, TCP_NODELAY; over TLS the request goes once the
    // handshake (driven by the reads) is done.
    let mut s = Stream::connect(n, o.to, o.tls.as_ref())?;
    if class != Class::Healthy {
        set_rcvbuf(&s.s, o.small_rcvbuf);
    }
    s.write_all(req.as_bytes())?;
    Ok(s)
}

fn progress(w: &Worker) -> Value {
    json!({"t": "progress", "opened": w.stats.opened, "subscribed": w.stats.subscribed,
           "live": w.stats.live, "sessions": w.stats.sessions, "delivered": w.stats.delivered,
           "delivered_healthy": w.stats.delivered_healthy,
           "errors": w.stats.errors.values().sum::<u64>()})
}

pub fn run(args: &[String]) {
    let mut spec = WORKER_FLAGS.to_vec();
    spec.extend(["index", "records"]);
    let a = Args::parse("soak-worker", args, &spec);
    let o = WorkerOpts::from_args(&a);
    let index: usize = a.get("index", 0);
    let path: String = a
        .opt("records")
        .unwrap_or_else(|| die("soak-worker: --records FILE is needed"));
    let file = std::fs::File::create(&path).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 && line.trim() != "stop" {
            line.clear();
        }
        s2.store(true, Ordering::Relaxed);
    });
    let start = Instant::now();
    let mut rng = Rng::new(0x50a4 + index as u64);
    // Slots start spread over the ramp.
    let slots: Vec<Slot> = (index..o.slots)
        .step_by(o.workers)
        .map(|id| Slot {
            id,
            kind: o.kind_of(id),
            class: o.class_of(id),
            idle_until: start + Duration::from_secs_f64(rng.range(0.0, o.ramp)),
            conn: None,
            sess: None,
            next_read: start,
            opened: 0,
        })
        .collect();
    let mut w = Worker {
        o: &o,
        index,
        poller: Poller::new(),
        slots,
        stats: Stats::default(),
        rng,
        out: BufWriter::new(file),
        buf: vec![0u8; 1 << 16],
        requests: 0,
    };
    let mut ready = Vec::new();
    let mut last_report = Instant::now();
    let mut stdout = std::io::stdout().lock();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for i in 0..w.slots.len() {
            let slot = &w.slots[i];
            let Some(sess) = slot.sess.as_ref() else {
                if now >= slot.idle_until {
                    w.open(i);
                }
                continue;
            };
            if !sess.end.is_empty() {
                w.finish(i, now_ns());
                continue;
            }
            if let Some(t) = sess.closing {
                if now.duration_since(t) > Duration::from_secs(2) {
                    if let Some(s) = w.slots[i].sess.as_mut() {
                        s.ended("closed by client".into(), false);
                    }
                    w.finish(i, now_ns());
                }
                continue;
            }
            if now >= sess.end_at {
                w.end_by_client(i);
                continue;
            }
            if sess.class == Class::Slow && sess.sub_ns != 0 && now >= slot.next_read {
                w.slots[i].next_read = now + Duration::from_millis(o.slow_read_ms);
                w.read(i, o.slow_read_bytes);
            }
        }
        w.poller.wait(20, &mut ready);
        for &t in &ready {
            w.read(t, usize::MAX);
        }
        if last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            let _ = writeln!(stdout, "{}", progress(&w));
            let _ = stdout.flush();
        }
    }
    // The end of the run: every open session ends here (a never-reading
    // one first looks whether the server dropped it).
    let end = now_ns();
    for i in 0..w.slots.len() {
        let live = w.slots[i].sess.as_ref().is_some_and(|s| s.end.is_empty());
        if live
            && w.slots[i]
                .sess
                .as_ref()
                .is_some_and(|s| s.class == Class::Never)
        {
            w.end_by_client(i);
        }
        if let Some(s) = w.slots[i].sess.as_mut() {
            if live {
                s.client_end_ns = end;
                s.end.clear();
                s.ended("end of run".into(), false);
            }
            w.finish(i, end);
        }
    }
    let _ = w.out.flush();
    let summary = json!({
        "t": "result",
        "worker": w.index,
        "opened": w.stats.opened,
        "subscribed": w.stats.subscribed,
        "sessions": w.stats.sessions,
        "delivered": w.stats.delivered,
        "errors": w.stats.errors,
        "server_ends": w.stats.server_ends,
        "latency": w.stats.latency.to_json(),
    });
    let _ = writeln!(stdout, "{summary}");
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_in_any_order() {
        let mut r = Ranges::default();
        for s in [0, 1, 2, 5, 4, 9, 3, 2, 7, 8] {
            r.insert(s);
        }
        assert_eq!(r.0, vec![(0, 5), (7, 9)]);
        assert_eq!((r.count(), r.gaps()), (9, 1));
        assert!(r.contains(4) && !r.contains(6) && r.contains(9) && !r.contains(10));
        r.insert(6);
        assert_eq!(r.0, vec![(0, 9)]);
        let mut r = Ranges::default();
        for s in [10, 5, 7, 6] {
            r.insert(s);
        }
        assert_eq!(r.0, vec![(5, 7), (10, 10)]);
    }

    #[test]
    fn slots_get_every_kind_and_the_shares_asked() {
        let a = Args::parse(
            "t",
            &[
                "--slots",
                "10000",
                "--slow-share",
                "0.1",
                "--never-share",
                "0.05",
            ]
            .map(String::from),
            WORKER_FLAGS,
        );
        let o = WorkerOpts::from_args(&a);
        let mut by = BTreeMap::new();
        for s in 0..o.slots {
            *by.entry((o.kind_of(s), o.class_of(s))).or_insert(0u32) += 1;
        }
        assert_eq!(by.get(&(SKind::LongPoll, Class::Healthy)), Some(&2500));
        assert_eq!(by.get(&(SKind::LongPoll, Class::Slow)), None);
        for k in [SKind::Stream, SKind::Ws, SKind::WsOverHttp] {
            let slow = by.get(&(k, Class::Slow)).copied().unwrap_or(0);
            let never = by.get(&(k, Class::Never)).copied().unwrap_or(0);
            assert!((180..320).contains(&slow), "{k:?} slow {slow}");
            assert!((70..180).contains(&never), "{k:?} never {never}");
        }
        let back = Args::parse("t", &o.flags(), WORKER_FLAGS);
        assert_eq!(
            format!("{:?}", WorkerOpts::from_args(&back)),
            format!("{o:?}")
        );
    }
}
