//! Subscribers: `corepin-load subscribe` holds N of them (HTTP stream,
//! long-poll, WebSocket or a mix), opened at a given rate from source
//! addresses 127.0.0.2–254, in several worker processes so N can pass the
//! per-process open-file limit. `fanout` uses the same workers.
//!
//! The parent starts `corepin-load worker` children, each holding every
//! W-th subscriber. A worker prints one JSON progress line to its stdout
//! every 250 ms and a JSON result line when it reads `stop` (or EOF) on
//! its stdin; the parent sums them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corepin::codec::ws::{self, Opcode, Received, Role};
use serde_json::{json, Map, Value};

use crate::args::{die, Args, Ticker};
use crate::http::{ws_events, Ev, ResponseReader};
use crate::net::{now_ns, Poller};
use crate::record::{per_channel, scan, Latency, Track};
use crate::tls::{Stream, Tls};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stream,
    LongPoll,
    Ws,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::LongPoll => "longpoll",
            Kind::Ws => "ws",
        }
    }

    /// `stream`, `longpoll`, `ws`, `mix` (all three), or a comma list.
    fn parse_list(s: &str) -> Vec<Kind> {
        if s == "mix" {
            return vec![Kind::Stream, Kind::LongPoll, Kind::Ws];
        }
        s.split(',')
            .map(|k| match k {
                "stream" => Kind::Stream,
                "longpoll" | "long-poll" => Kind::LongPoll,
                "ws" | "websocket" => Kind::Ws,
                _ => die(&format!("--kind: '{k}' is not stream, longpoll, ws or mix")),
            })
            .collect()
    }
}

/// Flags shared by `subscribe`, `fanout` and the worker processes.
pub const SUB_FLAGS: &[&str] = &[
    "to",
    "kind",
    "path",
    "stream-path",
    "longpoll-path",
    "ws-path",
    "channels",
    "channel-prefix",
    "subscribers",
    "rate",
    "workers",
    "tls",
    "sni",
    "resume",
];

#[derive(Debug, Clone)]
pub struct SubOpts {
    pub to: SocketAddr,
    pub kinds: Vec<Kind>,
    /// Path templates for stream, long-poll and WebSocket subscribers;
    /// `{channel}` is replaced by the subscriber's channel.
    pub paths: [String; 3],
    pub channels: usize,
    pub prefix: String,
    pub subscribers: usize,
    /// Subscribers opened per second over all workers (0: at once).
    pub rate: f64,
    pub workers: usize,
    /// Messages the publisher will send (round-robin over the channels),
    /// for counting what each subscriber should receive; 0 in `subscribe`.
    pub messages: usize,
    /// `--tls CA_FILE`: subscribers connect over TLS (https, wss).
    pub tls: Option<Tls>,
}

/// Most subscribers one worker holds: well under the 20,000 open files a
/// process may have here.
const PER_WORKER: usize = 15_000;

impl SubOpts {
    pub fn from_args(a: &Args) -> SubOpts {
        let kinds = Kind::parse_list(&a.string("kind", "stream"));
        let all = a.opt::<String>("path");
        let path = |flag: &str, default: &str| {
            a.opt::<String>(flag)
                .or_else(|| all.clone())
                .unwrap_or_else(|| default.to_string())
        };
        let subscribers = a.get("subscribers", 1000usize);
        let auto = subscribers.div_ceil(PER_WORKER).max(1);
        let o = SubOpts {
            to: a.get(
                "to",
                "127.0.0.1:7999".parse().unwrap_or_else(|_| die("address")),
            ),
            kinds,
            paths: [
                path("stream-path", "/stream?channel={channel}"),
                path("longpoll-path", "/response?channel={channel}"),
                path("ws-path", "/ws?channel={channel}"),
            ],
            channels: a.get("channels", 1usize).max(1),
            prefix: a.string("channel-prefix", "bench"),
            subscribers,
            rate: a.get("rate", 0.0f64),
            workers: a.get("workers", auto).max(1),
            messages: a.get("messages", 0usize),
            tls: Tls::from_args("subscribe", a),
        };
        if o.subscribers.div_ceil(o.workers) > PER_WORKER + 2000 {
            die(&format!(
                "{} subscribers over {} workers is more open files per process than this host allows; use --workers {} or more",
                o.subscribers, o.workers, auto
            ));
        }
        o
    }

    /// The same options as flags, for a worker process.
    fn worker_args(&self, index: usize) -> Vec<String> {
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        let mut v = vec![
            ("to", self.to.to_string()),
            ("kind", kinds.join(",")),
            ("stream-path", self.paths[0].clone()),
            ("longpoll-path", self.paths[1].clone()),
            ("ws-path", self.paths[2].clone()),
            ("channels", self.channels.to_string()),
            ("channel-prefix", self.prefix.clone()),
            ("subscribers", self.subscribers.to_string()),
            ("rate", self.rate.to_string()),
            ("workers", self.workers.to_string()),
            ("messages", self.messages.to_string()),
            ("index", index.to_string()),
        ]
        .into_iter()
        .chain(self.tls.iter().flat_map(Tls::flags))
        .flat_map(|(k, v)| [format!("--{k}"), v])
        .collect::<Vec<_>>();
        v.insert(0, "worker".into());
        v
    }

    fn kind_of(&self, i: usize) -> Kind {
        self.kinds[i % self.kinds.len()]
    }

    fn channel_index(&self, i: usize) -> usize {
        (i / self.kinds.len()) % self.channels
    }

    /// Channel `c`'s name: the prefix alone when there is one channel.
    pub fn channel_name(prefix: &str, channels: usize, c: usize) -> String {
        if channels <= 1 {
            prefix.to_string()
        } else {
            format!("{prefix}{c}")
        }
    }

    fn request(&self, i: usize) -> String {
        let kind = self.kind_of(i);
        let channel = Self::channel_name(&self.prefix, self.channels, self.channel_index(i));
        let path = self.paths[kind as usize].replace("{channel}", &channel);
        match kind {
            Kind::Ws => format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                self.to
            ),
            _ => format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.to),
        }
    }

    /// Messages subscriber `i` should receive in a fan-out.
    pub fn expected_for(&self, i: usize) -> u64 {
        per_channel(self.messages, self.channels, self.channel_index(i))
    }

    /// Long-poll subscribers on each channel.
    pub fn long_polls_per_channel(&self) -> Vec<u64> {
        let mut per = vec![0u64; self.channels];
        for i in (0..self.subscribers).filter(|&i| self.kind_of(i) == Kind::LongPoll) {
            per[self.channel_index(i)] += 1;
        }
        per
    }

    pub fn expected_total(&self) -> u64 {
        (0..self.subscribers).map(|i| self.expected_for(i)).sum()
    }
}

/// Counters one worker keeps (and the parent sums).
#[derive(Default)]
struct Stats {
    opened: u64,
    subscribed: u64,
    failed: u64,
    fail_reasons: BTreeMap<String, u64>,
    closed: u64,
    delivered: u64,
    /// TLS handshakes finished, and how many of them resumed a session.
    handshakes: u64,
    resumed: u64,
    first_ns: u64,
    last_ns: u64,
    latency: Latency,
    /// Deliveries per 10 ms of latency (the last bin takes the rest): when
    /// this worker read them, as a timeline from each message's send.
    bins: Vec<u64>,
    window: Window,
}

/// Latency bins kept per worker (10 ms each).
const BINS: usize = 300;

/// How a worker spent the time from its first delivering turn to its last:
/// on the CPU, waiting in `epoll_wait`, or neither (runnable but not
/// running: the machine's cores were busy elsewhere). Tells whether the
/// readers, rather than the server, set the time to the last delivery.
#[derive(Default)]
struct Window {
    /// Loop turns that read at least one delivery.
    rounds: u64,
    wall_start: u64,
    wall_end: u64,
    cpu_start: u64,
    cpu_end: u64,
    /// Time in `epoll_wait` since the first delivering turn, up to the last.
    wait_ns: u64,
    /// Waits since the last delivering turn (counted if another comes).
    pending_wait_ns: u64,
}

impl Window {
    /// One loop turn: its wait (`before`..`after`), then handling, which
    /// read `read` deliveries.
    fn turn(&mut self, before: u64, after: u64, cpu_after_wait: u64, read: u64) {
        if self.rounds > 0 {
            self.pending_wait_ns += after.saturating_sub(before);
        }
        if read == 0 {
            return;
        }
        if self.rounds == 0 {
            self.wall_start = after;
            self.cpu_start = cpu_after_wait;
        }
        self.rounds += 1;
        self.wait_ns += std::mem::take(&mut self.pending_wait_ns);
        self.wall_end = now_ns();
        self.cpu_end = crate::net::thread_cpu_ns();
    }

    fn to_json(&self) -> Value {
        let ms = |ns: u64| ns as f64 / 1e6;
        let wall = self.wall_end.saturating_sub(self.wall_start);
        let cpu = self.cpu_end.saturating_sub(self.cpu_start);
        json!({"rounds": self.rounds, "wall_ms": ms(wall), "cpu_ms": ms(cpu),
               "wait_ms": ms(self.wait_ns),
               "not_running_ms": ms(wall.saturating_sub(cpu + self.wait_ns))})
    }
}

impl Stats {
    fn fail(&mut self, reason: String) {
        self.failed += 1;
        *self.fail_reasons.entry(reason).or_default() += 1;
    }

    fn deliver(&mut self, track: &mut Track, seq: u64, sent_ns: u64, now: u64) {
        if track.record(seq) {
            self.delivered += 1;
            let lat = now.saturating_sub(sent_ns);
            self.latency.record(lat);
            if self.bins.is_empty() {
                self.bins = vec![0; BINS];
            }
            self.bins[((lat / 10_000_000) as usize).min(BINS - 1)] += 1;
            if self.first_ns == 0 {
                self.first_ns = now;
            }
            self.last_ns = self.last_ns.max(now);
        }
    }
}

/// One subscriber's protocol state (kept after its connection is gone).
struct SubState {
    index: usize,
    kind: Kind,
    tail: Vec<u8>,
    track: Track,
    ws: Option<Box<ws::Reader>>,
    ws_pending: Vec<u8>,
    /// Output to write after the input is handled (pongs).
    reply: Vec<u8>,
    /// The long-poll response is complete: ask again.
    repoll: bool,
    /// Stop reading: failed, ended, or closed by the server.
    finished: bool,
}

struct Sub {
    conn: Option<(Stream, ResponseReader)>,
    /// This connection's TLS handshake was counted.
    handshake_counted: bool,
    st: SubState,
}

impl SubState {
    fn on_event(&mut self, ev: Ev<'_>, stats: &mut Stats, recs: &mut Vec<(u64, u64)>) {
        match ev {
            Ev::Head(status) => {
                let ok = match self.kind {
                    Kind::Ws => status == 101,
                    _ => status == 200,
                };
                if !ok {
                    if self.kind == Kind::LongPoll {
                        // It was counted as subscribed when its request went out.
                        stats.subscribed = stats.subscribed.saturating_sub(1);
                    }
                    stats.fail(format!("status {status}"));
                    self.finished = true;
                } else if self.kind == Kind::Ws {
                    stats.subscribed += 1;
                    self.ws = Some(Box::new(ws::Reader::new(Role::Client, 16 << 20)));
                } else if self.kind == Kind::Stream {
                    stats.subscribed += 1;
                }
            }
            Ev::Body(data) if !self.finished => {
                if self.kind == Kind::Ws {
                    self.ws_input(data, stats, recs);
                } else {
                    self.records(data, stats, recs);
                }
            }
            Ev::Body(_) => {}
            Ev::End => match self.kind {
                Kind::LongPoll if !self.finished => self.repoll = true,
                _ if !self.finished => {
                    stats.closed += 1;
                    self.finished = true;
                }
                _ => {}
            },
        }
    }

    fn records(&mut self, data: &[u8], stats: &mut Stats, recs: &mut Vec<(u64, u64)>) {
        count_records(&mut self.tail, &mut self.track, data, stats, recs);
    }

    fn ws_input(&mut self, data: &[u8], stats: &mut Stats, recs: &mut Vec<(u64, u64)>) {
        let Some(reader) = self.ws.as_mut() else {
            return;
        };
        let (tail, track, reply) = (&mut self.tail, &mut self.track, &mut self.reply);
        let mut closed = false;
        let r = ws_events(reader, &mut self.ws_pending, data, &mut |ev| {
            match ev {
                Received::Message(_, m) => count_records(tail, track, &m, stats, recs),
                Received::Ping(p) => {
                    ws::write_frame(reply, true, Opcode::Pong, &p, Some([1, 2, 3, 4]))
                }
                Received::Close(..) => closed = true,
                Received::Pong(_) => {}
            }
            !closed
        });
        if let Err(e) = r {
            stats.fail(format!("websocket: {}", e.reason));
            self.finished = true;
        } else if closed {
            stats.closed += 1;
            self.finished = true;
        }
    }
}

/// Scans received bytes for messages and counts each new one.
fn count_records(
    tail: &mut Vec<u8>,
    track: &mut Track,
    data: &[u8],
    stats: &mut Stats,
    recs: &mut Vec<(u64, u64)>,
) {
    recs.clear();
    scan(tail, data, recs);
    let now = now_ns();
    for &(seq, ns) in recs.iter() {
        stats.deliver(track, seq, ns, now);
    }
}

/// `corepin-load worker`: holds every W-th subscriber (internal).
pub fn worker(args: &[String]) {
    let mut spec = SUB_FLAGS.to_vec();
    spec.extend(["messages", "index"]);
    let a = Args::parse("worker", args, &spec);
    let o = SubOpts::from_args(&a);
    let index: usize = a.get("index", 0);
    let mine: Vec<usize> = (index..o.subscribers).step_by(o.workers).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || {
        // "stop" or the parent going away (EOF) ends the worker.
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 && line.trim() != "stop" {
            line.clear();
        }
        s2.store(true, Ordering::Relaxed);
    });
    let rate = o.rate / o.workers as f64;
    let mut poller = Poller::new();
    let mut subs: Vec<Sub> = Vec::with_capacity(mine.len());
    let mut stats = Stats::default();
    let mut ready = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut recs = Vec::new();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut out = std::io::stdout().lock();
    while !stop.load(Ordering::Relaxed) {
        let due = if rate > 0.0 {
            mine.len()
                .min((started.elapsed().as_secs_f64() * rate) as usize + 1)
        } else {
            mine.len()
        };
        // Open a bounded batch per turn so deliveries keep being read.
        let batch_end = due.min(subs.len() + 256);
        while subs.len() < batch_end {
            let i = mine[subs.len()];
            let slot = subs.len();
            subs.push(open(&o, i, slot, &poller, &mut stats));
        }
        let wait = if subs.len() < mine.len() { 1 } else { 50 };
        let before = now_ns();
        poller.wait(wait, &mut ready);
        let after = now_ns();
        let cpu = crate::net::thread_cpu_ns();
        let delivered = stats.delivered;
        for &token in &ready {
            let sub = &mut subs[token];
            read_ready(sub, &o, token, &poller, &mut stats, &mut buf, &mut recs);
        }
        let read = stats.delivered - delivered;
        stats.window.turn(before, after, cpu, read);
        if last_report.elapsed() >= Duration::from_millis(250) {
            last_report = Instant::now();
            let _ = writeln!(out, "{}", progress_json(&stats));
            let _ = out.flush();
        }
    }
    let _ = writeln!(out, "{}", result_json(&o, &subs, &stats));
    let _ = out.flush();
}

fn open(o: &SubOpts, i: usize, slot: usize, poller: &Poller, stats: &mut Stats) -> Sub {
    let kind = o.kind_of(i);
    let mut st = SubState {
        index: i,
        kind,
        tail: Vec::new(),
        track: Track::default(),
        ws: None,
        ws_pending: Vec::new(),
        reply: Vec::new(),
        repoll: false,
        finished: false,
    };
    stats.opened += 1;
    let conn = connect(o, i, slot, poller);
    match conn {
        Ok(c) => {
            if kind == Kind::LongPoll {
                // A held long-poll answers nothing until a publish: it
                // counts as subscribed once its request is sent.
                stats.subscribed += 1;
            }
            Sub {
                conn: Some(c),
                handshake_counted: false,
                st,
            }
        }
        Err(e) => {
            stats.fail(format!("connect: {e}"));
            st.finished = true;
            Sub {
                conn: None,
                handshake_counted: false,
                st,
            }
        }
    }
}

fn connect(
    o: &SubOpts,
    i: usize,
    slot: usize,
    poller: &Poller,
) -> std::io::Result<(Stream, ResponseReader)> {
    let mut s = Stream::connect(i, o.to, o.tls.as_ref())?;
    s.write_all(o.request(i).as_bytes())?;
    poller.add(&s, slot);
    Ok((s, ResponseReader::new()))
}

fn read_ready(
    sub: &mut Sub,
    o: &SubOpts,
    token: usize,
    poller: &Poller,
    stats: &mut Stats,
    buf: &mut [u8],
    recs: &mut Vec<(u64, u64)>,
) {
    let Some((stream, reader)) = sub.conn.as_mut() else {
        return;
    };
    let mut gone = false;
    loop {
        match stream.read(buf) {
            Ok(0) => {
                gone = true;
                break;
            }
            Ok(n) => {
                let st = &mut sub.st;
                if let Err(e) = reader.feed(&buf[..n], &mut |ev| st.on_event(ev, stats, recs)) {
                    stats.fail(e);
                    st.finished = true;
                }
                if st.finished {
                    break;
                }
                // A short read on a plain socket took all it had: the
                // poller is level-triggered, so anything arriving later is
                // reported again. Reading on to EWOULDBLOCK would cost
                // every delivery a second, empty, syscall on the cores the
                // server under test shares (TLS may hold decrypted bytes
                // the poller cannot see: read it to the end).
                if n < buf.len() && stream.tls.is_none() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                // A TLS failure: the certificate refused, an alert. A
                // long-poll counted as subscribed when its request went
                // out (into rustls, waiting for the handshake).
                if sub.st.kind == Kind::LongPoll && !sub.handshake_counted {
                    stats.subscribed = stats.subscribed.saturating_sub(1);
                }
                stats.fail(e.to_string());
                sub.st.finished = true;
                break;
            }
            Err(_) => {
                gone = true;
                break;
            }
        }
    }
    if !sub.handshake_counted && stream.tls.is_some() && stream.handshaken() {
        sub.handshake_counted = true;
        stats.handshakes += 1;
        stats.resumed += u64::from(stream.resumed());
    }
    let st = &mut sub.st;
    if !st.reply.is_empty() {
        let _ = stream.write_all(&st.reply);
        st.reply.clear();
    }
    if st.repoll && !st.finished {
        // Ask again: on this connection while it stays open, else on a new
        // one (the server closed after a complete long-poll response).
        st.repoll = false;
        let again = !gone
            && reader.keep_alive()
            && stream.write_all(o.request(st.index).as_bytes()).is_ok();
        if !again {
            poller.remove(stream);
            sub.conn = None;
            sub.handshake_counted = false;
            match connect(o, st.index, token, poller) {
                Ok(c) => sub.conn = Some(c),
                Err(e) => {
                    stats.fail(format!("reconnect: {e}"));
                    st.finished = true;
                }
            }
        }
    } else if gone && !st.finished {
        stats.closed += 1;
        st.finished = true;
    }
    if st.finished {
        if let Some((s, _)) = sub.conn.take() {
            poller.remove(&s);
        }
    }
}

/// The bins up to the last non-empty one.
fn trim_bins(bins: &[u64]) -> Vec<u64> {
    let end = bins.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1);
    bins[..end].to_vec()
}

fn progress_json(s: &Stats) -> Value {
    json!({"t": "progress", "opened": s.opened, "subscribed": s.subscribed,
           "failed": s.failed, "closed": s.closed, "delivered": s.delivered,
           "handshakes": s.handshakes, "resumed": s.resumed})
}

fn result_json(o: &SubOpts, subs: &[Sub], s: &Stats) -> Value {
    let mut by_kind = Map::new();
    for k in &o.kinds {
        let mine = subs.iter().filter(|x| x.st.kind == *k);
        let (mut n, mut delivered, mut expected) = (0u64, 0u64, 0u64);
        for x in mine {
            n += 1;
            delivered += x.st.track.got;
            expected += o.expected_for(x.st.index);
        }
        by_kind.insert(
            k.name().into(),
            json!({"subscribers": n, "delivered": delivered, "expected": expected}),
        );
    }
    let complete = subs
        .iter()
        .filter(|x| {
            let e = o.expected_for(x.st.index);
            e > 0 && x.st.track.got >= e
        })
        .count();
    json!({
        "t": "result",
        "opened": s.opened,
        "subscribed": s.subscribed,
        "failed": s.failed,
        "fail_reasons": s.fail_reasons,
        "closed": s.closed,
        "delivered": s.delivered,
        "handshakes": s.handshakes,
        "resumed": s.resumed,
        "duplicated": subs.iter().map(|x| x.st.track.duplicated).sum::<u64>(),
        "out_of_order": subs.iter().map(|x| x.st.track.out_of_order).sum::<u64>(),
        "complete_subscribers": complete,
        "first_delivery_ns": s.first_ns,
        "last_delivery_ns": s.last_ns,
        "window": s.window.to_json(),
        "lat_10ms": trim_bins(&s.bins),
        "by_kind": by_kind,
        "latency": s.latency.to_json(),
    })
}

/// The parent's handle on its worker processes.
pub struct Workers {
    kids: Vec<(Child, Option<ChildStdin>)>,
    rx: Receiver<(usize, Option<Value>)>,
    progress: Vec<Value>,
    results: Vec<Option<Value>>,
    exited: Vec<bool>,
}

/// Sums of the workers' results, plus the merged latency histogram.
pub struct Merged {
    pub totals: Map<String, Value>,
    pub latency: Latency,
    pub first_ns: u64,
    pub last_ns: u64,
    pub missing_workers: usize,
    /// Each worker's own timing: first and last delivery, its window
    /// (`Window`) and its latency bins.
    pub per_worker: Vec<Value>,
}

impl Workers {
    pub fn spawn(o: &SubOpts) -> Workers {
        let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("own path: {e}")));
        let (tx, rx) = mpsc::channel();
        let mut kids = Vec::new();
        for w in 0..o.workers {
            let mut child = Command::new(&exe)
                .args(o.worker_args(w))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| die(&format!("starting worker {w}: {e}")));
            let stdin = child.stdin.take();
            if let Some(stdout) = child.stdout.take() {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                        if let Ok(v) = serde_json::from_str::<Value>(&line) {
                            let _ = tx.send((w, Some(v)));
                        }
                    }
                    let _ = tx.send((w, None));
                });
            }
            kids.push((child, stdin));
        }
        Workers {
            kids,
            rx,
            progress: vec![Value::Null; o.workers],
            results: vec![None; o.workers],
            exited: vec![false; o.workers],
        }
    }

    /// Takes in what the workers reported, waiting up to `wait` for the
    /// first line.
    pub fn pump(&mut self, wait: Duration) {
        let mut next = self.rx.recv_timeout(wait).ok();
        while let Some((w, line)) = next {
            match line {
                Some(v) if v.get("t").and_then(Value::as_str) == Some("result") => {
                    self.progress[w] = v.clone();
                    self.results[w] = Some(v);
                }
                Some(v) => self.progress[w] = v,
                None => self.exited[w] = true,
            }
            next = self.rx.try_recv().ok();
        }
    }

    /// A progress counter summed over the workers.
    pub fn sum(&self, field: &str) -> u64 {
        self.progress
            .iter()
            .filter_map(|p| p.get(field).and_then(Value::as_u64))
            .sum()
    }

    /// Workers that ended before they were asked to.
    pub fn dead(&self) -> usize {
        self.exited.iter().filter(|e| **e).count()
    }

    /// Asks every worker for its result and sums them.
    pub fn finish(mut self) -> Merged {
        for (_, stdin) in self.kids.iter_mut() {
            if let Some(mut s) = stdin.take() {
                let _ = s.write_all(b"stop\n");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .results
            .iter()
            .zip(&self.exited)
            .any(|(r, e)| r.is_none() && !e)
            && Instant::now() < deadline
        {
            self.pump(Duration::from_millis(100));
        }
        for (child, _) in self.kids.iter_mut() {
            if Instant::now() >= deadline {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        merge(&self.results)
    }
}

fn merge(results: &[Option<Value>]) -> Merged {
    let mut totals = Map::new();
    let mut latency = Latency::new();
    let (mut first_ns, mut last_ns) = (u64::MAX, 0u64);
    for r in results.iter().flatten() {
        let Some(obj) = r.as_object() else { continue };
        for (k, v) in obj {
            match k.as_str() {
                "t" | "window" | "lat_10ms" => {}
                "latency" => latency.add_json(v),
                "first_delivery_ns" => {
                    if let Some(n) = v.as_u64().filter(|n| *n > 0) {
                        first_ns = first_ns.min(n);
                    }
                }
                "last_delivery_ns" => last_ns = last_ns.max(v.as_u64().unwrap_or(0)),
                _ => add_into(totals.entry(k.clone()).or_insert(Value::Null), v),
            }
        }
    }
    Merged {
        totals,
        latency,
        first_ns: if first_ns == u64::MAX { 0 } else { first_ns },
        last_ns,
        missing_workers: results.iter().filter(|r| r.is_none()).count(),
        per_worker: results
            .iter()
            .flatten()
            .map(|r| {
                json!({
                    "delivered": r.get("delivered"),
                    "first_delivery_ns": r.get("first_delivery_ns"),
                    "last_delivery_ns": r.get("last_delivery_ns"),
                    "window": r.get("window"),
                    "lat_10ms": r.get("lat_10ms"),
                })
            })
            .collect(),
    }
}

/// Adds `v` into `into`: numbers are summed, objects merged key by key.
fn add_into(into: &mut Value, v: &Value) {
    match (into, v) {
        (into @ Value::Null, v) => *into = v.clone(),
        (Value::Number(a), Value::Number(b)) => {
            let sum = a.as_u64().unwrap_or(0) + b.as_u64().unwrap_or(0);
            *a = sum.into();
        }
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                add_into(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => {}
    }
}

impl Merged {
    pub fn get(&self, k: &str) -> u64 {
        self.totals.get(k).and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn field(&self, k: &str) -> Value {
        self.totals.get(k).cloned().unwrap_or(json!({}))
    }
}

/// Opens the workers and waits until every subscriber has an answer
/// (subscribed, failed or closed) or `timeout` passes; prints progress.
pub fn open_all(o: &SubOpts, timeout: Duration, label: &str) -> (Workers, f64) {
    let mut w = Workers::spawn(o);
    let t0 = Instant::now();
    let n = o.subscribers as u64;
    let mut tick = Ticker::default();
    loop {
        w.pump(Duration::from_millis(250));
        let answered = w.sum("subscribed") + w.sum("failed") + w.sum("closed");
        let last = answered >= n;
        if tick.due() || last {
            eprint!(
                "\r[{label} {:5.1}s] opened {}/{n} subscribed {} failed {}   ",
                t0.elapsed().as_secs_f64(),
                w.sum("opened"),
                w.sum("subscribed"),
                w.sum("failed")
            );
        }
        if last {
            break;
        }
        if t0.elapsed() > timeout {
            eprintln!("\n{label}: not every subscriber answered within {timeout:?}");
            break;
        }
        if w.dead() > 0 {
            eprintln!("\n{label}: a worker process ended early");
            break;
        }
    }
    eprintln!();
    (w, t0.elapsed().as_secs_f64())
}

pub fn run(args: &[String]) {
    let mut spec = SUB_FLAGS.to_vec();
    spec.extend(["hold-s", "ready-file", "timeout-s"]);
    let a = Args::parse("subscribe", args, &spec);
    let o = SubOpts::from_args(&a);
    let hold = Duration::from_secs_f64(a.get("hold-s", 0.0f64));
    let timeout = Duration::from_secs_f64(a.get("timeout-s", 120.0f64));
    let (mut w, open_s) = open_all(&o, timeout, "subscribe");
    if let Some(f) = a.opt::<String>("ready-file") {
        if let Err(e) = std::fs::write(&f, format!("{}\n", w.sum("subscribed"))) {
            eprintln!("corepin-load: --ready-file {f}: {e}");
        }
    }
    let held_from = Instant::now();
    if !hold.is_zero() {
        eprintln!("holding {} subscribers for {hold:?}", w.sum("subscribed"));
    }
    while held_from.elapsed() < hold {
        w.pump(Duration::from_millis(250));
        if w.dead() > 0 {
            break;
        }
    }
    let still_open = w.sum("subscribed") - w.sum("closed").min(w.sum("subscribed"));
    let m = w.finish();
    let kinds: Vec<&str> = o.kinds.iter().map(|k| k.name()).collect();
    println!(
        "{}",
        json!({
            "mode": "subscribe",
            "target": o.to.to_string(),
            "kinds": kinds,
            "subscribers": o.subscribers,
            "workers": o.workers,
            "opened": m.get("opened"),
            "subscribed": m.get("subscribed"),
            "failed": m.get("failed"),
            "fail_reasons": m.field("fail_reasons"),
            "closed": m.get("closed"),
            "held_at_end": still_open,
            "open_seconds": open_s,
            "opens_per_sec": m.get("opened") as f64 / open_s.max(1e-9),
            "held_seconds": held_from.elapsed().as_secs_f64(),
            "delivered": m.get("delivered"),
            "tls": o.tls.is_some(),
            "handshakes": m.get("handshakes"),
            "resumed": m.get("resumed"),
            "by_kind": m.field("by_kind"),
            "latency_ms": m.latency.summary_ms(),
            "missing_workers": m.missing_workers,
        })
    );
    if m.get("subscribed") == 0 {
        std::process::exit(1);
    }
}
