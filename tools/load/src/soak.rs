//! `corepin-load soak`: the long mixed run (benches/soak.sh drives it).
//! Subscriber slots of every kind (soak_worker.rs) open and close
//! sessions in worker processes, while one publisher sends timestamped,
//! per-channel numbered messages through the GRIP publish API at a steady
//! rate, with bursts (many small items over every channel, and big items
//! to a few hot channels) at intervals.
//!
//! The publisher logs, per channel and sequence number, when each message
//! was sent and when its publish was answered. At the end each session is
//! held against that log:
//!
//! - a stream or WebSocket session must have received every message sent
//!   after it knew it was subscribed and answered `--grace-s` before it
//!   ended; anything missing is lost;
//! - a long-poll request must be answered by the first message sent
//!   `--lp-grace-s` after the backend answered it with its hold (from the
//!   backend's `--hold-log`; the grace is the time the proxy may take to
//!   read that answer and hold; without a logged answer, from when the
//!   request was sent), not by a later one, and must not time out when
//!   such a message was answered `--grace-s` before the timeout;
//! - duplicates and out-of-order arrivals are counted for every session.
//!
//! `--tls CA_FILE` (with `--sni NAME`, `--resume yes|no`, as in the other
//! modes) puts every subscriber on TLS (https, wss) to a TLS listener,
//! trusting that CA; the publisher stays on plain HTTP to the publish API.
//!
//! These counts cover healthy subscribers; slow and never-reading ones
//! are reported apart (what they received must still have no gaps; the
//! proxy may drop them). The proxy's /metrics counters (drops by reason,
//! refusals...) are read before and after, and the difference reported.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::args::{die, Args, Ticker};
use crate::http::{Ev, ResponseReader};
use crate::net::now_ns;
use crate::record::{message, Latency};
use crate::soak_worker::{Ranges, WorkerOpts, WORKER_FLAGS};

/// One published message, by channel and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubRec {
    pub send_ns: u64,
    pub ack_ns: u64,
    /// The publish failed without an answer: it may or may not have been
    /// published. Neither expected nor counted.
    pub uncertain: bool,
}

/// Every channel's messages, in sequence order (one publisher thread, so
/// send and answer times grow with the sequence number).
#[derive(Debug, Default)]
pub struct PubLog {
    pub chans: Vec<Vec<PubRec>>,
}

impl PubLog {
    /// The first sequence number sent after `t`.
    pub fn first_sent_after(&self, ch: usize, t: u64) -> u64 {
        self.chans
            .get(ch)
            .map_or(0, |v| v.partition_point(|p| p.send_ns <= t) as u64)
    }

    /// How many of the channel's messages were answered before `t`.
    pub fn acked_before(&self, ch: usize, t: u64) -> u64 {
        self.chans
            .get(ch)
            .map_or(0, |v| v.partition_point(|p| p.ack_ns < t) as u64)
    }

    fn get(&self, ch: usize, seq: u64) -> Option<&PubRec> {
        self.chans.get(ch)?.get(seq as usize)
    }
}

/// What the accounting found, summed over sessions of one group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub sessions: u64,
    pub subscribed: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Received numbers missing between the lowest and highest received.
    pub gaps: u64,
    pub polls: u64,
    /// Long-poll requests whose hold the backend logged.
    pub holds_logged: u64,
    pub poll_timeouts: u64,
    pub dropped_seen: u64,
}

impl Tally {
    fn to_json(&self) -> Value {
        json!({
            "sessions": self.sessions, "subscribed": self.subscribed,
            "expected": self.expected, "received": self.received, "lost": self.lost,
            "duplicated": self.duplicated, "out_of_order": self.out_of_order,
            "gaps": self.gaps, "polls": self.polls, "holds_logged": self.holds_logged, "poll_timeouts": self.poll_timeouts,
            "dropped_seen": self.dropped_seen,
        })
    }
}

/// Grace periods of the accounting, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Graces {
    /// Before a session's end: what was answered later need not arrive.
    pub end: u64,
    /// After the backend answered a long-poll with its hold (or, not
    /// knowing that, after the request): the time to be held.
    pub lp: u64,
}

/// When the backend answered each long-poll request with its hold, by
/// request id (`SLOT.N`), from the grip-backend's `--hold-log` lines.
pub fn read_holds(text: &str) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for line in text.lines() {
        if let Some((id, ns)) = line.split_once(' ') {
            if let Ok(ns) = ns.trim().parse::<u64>() {
                // A request asked again (a retry) counts from its last answer.
                let e = m.entry(id.to_string()).or_insert(ns);
                *e = (*e).max(ns);
            }
        }
    }
    m
}

fn ranges_of(v: &Value) -> Ranges {
    Ranges(
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r.get(0)?.as_u64()?, r.get(1)?.as_u64()?)))
            .collect(),
    )
}

/// Holds one session record (a worker's JSON line) against the log; adds
/// to `t`; returns a description of each loss (for the report).
pub fn account(
    rec: &Value,
    log: &PubLog,
    holds: &HashMap<String, u64>,
    g: Graces,
    t: &mut Tally,
) -> Vec<String> {
    let n = |k: &str| rec.get(k).and_then(Value::as_u64).unwrap_or(0);
    let kind = rec.get("k").and_then(Value::as_str).unwrap_or("");
    let ch = n("ch") as usize;
    let got = ranges_of(rec.get("r").unwrap_or(&Value::Null));
    let mut losses = Vec::new();
    t.sessions += 1;
    t.received += got.count();
    t.duplicated += n("dup");
    t.out_of_order += n("ooo");
    t.gaps += got.gaps();
    if rec.get("dropped").and_then(Value::as_bool) == Some(true) {
        t.dropped_seen += 1;
    }
    let sub = n("sub");
    if sub == 0 {
        return losses;
    }
    t.subscribed += 1;
    let end = match n("client_end") {
        0 => n("end"),
        c => c,
    };
    if kind == "longpoll" {
        let slot = n("slot");
        for p in rec
            .get("lp")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(req), Some(resp), Some(seq)) = (
                p.get(0).and_then(Value::as_u64),
                p.get(1).and_then(Value::as_u64),
                p.get(2).and_then(Value::as_i64),
            ) else {
                continue;
            };
            t.polls += 1;
            let rid = p.get(3).and_then(Value::as_u64).unwrap_or(u64::MAX);
            let held = match holds.get(&format!("{slot}.{rid}")) {
                Some(&at) => {
                    t.holds_logged += 1;
                    at
                }
                None => req,
            };
            // The first message sent once the request surely was held.
            let mut first = log.first_sent_after(ch, held + g.lp);
            while log.get(ch, first).is_some_and(|p| p.uncertain) {
                first += 1;
            }
            let Some(due) = log.get(ch, first) else {
                if seq < 0 {
                    t.poll_timeouts += 1;
                }
                continue;
            };
            if seq < 0 {
                t.poll_timeouts += 1;
                if due.ack_ns + g.end < resp {
                    t.expected += 1;
                    t.lost += 1;
                    losses.push(format!(
                        "longpoll ch {ch}: request at {req} (held by {held}) timed out at {resp}, message {first} was answered at {}",
                        due.ack_ns
                    ));
                }
            } else if (seq as u64) > first {
                t.expected += 1;
                t.lost += 1;
                losses.push(format!(
                    "longpoll ch {ch}: request at {req} (held by {held}) answered by {seq} at {resp}, not by {first} (sent {})",
                    due.send_ns
                ));
            } else if (seq as u64) == first {
                t.expected += 1;
            }
        }
        return losses;
    }
    let a = log.first_sent_after(ch, sub);
    let b = log.acked_before(ch, end.saturating_sub(g.end));
    for s in a..b {
        if log.get(ch, s).is_some_and(|p| p.uncertain) {
            continue;
        }
        t.expected += 1;
        if !got.contains(s) {
            t.lost += 1;
            if losses.len() < 5 {
                losses.push(format!(
                    "{kind} ch {ch}: message {s} (sent {}) missing; subscribed {sub}, ended {end} ({})",
                    log.get(ch, s).map_or(0, |p| p.send_ns),
                    rec.get("why").and_then(Value::as_str).unwrap_or("")
                ));
            }
        }
    }
    losses
}

const FLAGS: &[&str] = &[
    "publish-to",
    "metrics",
    "seconds",
    "rate",
    "size",
    "burst-every",
    "burst-items",
    "burst-batch",
    "hot-items",
    "hot-size",
    "hot-batch",
    "drain-s",
    "grace-s",
    "lp-grace-s",
    "dir",
    "hold-log",
];

#[derive(Debug, Clone)]
struct PubPlan {
    to: SocketAddr,
    seconds: f64,
    rate: f64,
    size: usize,
    channels: usize,
    hot: usize,
    prefix: String,
    burst_every: f64,
    burst_items: usize,
    burst_batch: usize,
    hot_items: usize,
    hot_size: usize,
    hot_batch: usize,
}

#[derive(Default)]
struct PubStats {
    publishes: u64,
    items: u64,
    bursts: u64,
    refused: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    uncertain: u64,
    latency: Latency,
}

/// A keep-alive connection to the publish API.
struct Publisher {
    to: SocketAddr,
    conn: Option<(TcpStream, ResponseReader)>,
}

enum Sent {
    Ok,
    /// Not sent (no connection): nothing published.
    Unsent(String),
    /// Refused with this status (nothing published).
    Refused(u16),
    /// No answer: maybe published, maybe not.
    Unknown(String),
}

impl Publisher {
    fn post(&mut self, body: &str) -> Sent {
        if self.conn.is_none() {
            match TcpStream::connect(self.to) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    self.conn = Some((s, ResponseReader::new()));
                }
                Err(e) => return Sent::Unsent(format!("connect: {e}")),
            }
        }
        let Some((s, reader)) = self.conn.as_mut() else {
            return Sent::Unknown("no connection".into());
        };
        let req = format!(
            "POST /publish/ HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.to,
            body.len()
        );
        if let Err(e) = s.write_all(req.as_bytes()) {
            self.conn = None;
            return Sent::Unknown(format!("write: {e}"));
        }
        let mut buf = [0u8; 4096];
        let (mut status, mut done) = (0u16, false);
        while !done {
            let n = match s.read(&mut buf) {
                Ok(0) => {
                    self.conn = None;
                    return Sent::Unknown("publish connection closed".into());
                }
                Ok(n) => n,
                Err(e) => {
                    self.conn = None;
                    return Sent::Unknown(format!("read: {e}"));
                }
            };
            let r = reader.feed(&buf[..n], &mut |ev| match ev {
                Ev::Head(st) => status = st,
                Ev::End => done = true,
                Ev::Body(_) => {}
            });
            if let Err(e) = r {
                self.conn = None;
                return Sent::Unknown(e);
            }
        }
        if !reader.keep_alive() {
            self.conn = None;
        }
        if (200..300).contains(&status) {
            Sent::Ok
        } else {
            Sent::Refused(status)
        }
    }
}

fn item(channel: &str, seq: u64, ns: u64, size: usize) -> Value {
    let m = message(seq, ns, size);
    let sse = format!("data: {}\n\n", m.trim_end());
    json!({"channel": channel, "formats": {
        "http-stream": {"content": sse},
        "http-response": {"body": m},
        "ws-message": {"content": m.trim_end()},
    }})
}

/// Publishes one batch (channel indexes, in order) until it is accepted,
/// or its fate is unknown; logs each item. A refusal (429/503) is retried
/// after a pause, as `Retry-After` asks.
fn publish_batch(
    p: &mut Publisher,
    plan: &PubPlan,
    chans: &[usize],
    size: usize,
    log: &Mutex<PubLog>,
    st: &mut PubStats,
    stop: &AtomicBool,
) {
    let mut tries = 0;
    loop {
        tries += 1;
        let ns = now_ns();
        // Sequence numbers come from the log: a refused batch takes none.
        let seqs: Vec<u64> = {
            let l = log.lock().unwrap_or_else(|e| e.into_inner());
            let mut next: BTreeMap<usize, u64> = BTreeMap::new();
            chans
                .iter()
                .map(|&c| {
                    let e = next.entry(c).or_insert(l.chans[c].len() as u64);
                    *e += 1;
                    *e - 1
                })
                .collect()
        };
        let items: Vec<Value> = chans
            .iter()
            .zip(&seqs)
            .map(|(&c, &s)| item(&format!("{}{c}", plan.prefix), s, ns, size))
            .collect();
        let body = json!({ "items": items }).to_string();
        let sent = p.post(&body);
        let ack = now_ns();
        st.latency.record(ack.saturating_sub(ns));
        let uncertain = match sent {
            Sent::Ok => false,
            Sent::Refused(status @ (429 | 503)) => {
                *st.refused.entry(format!("status {status}")).or_default() += 1;
                if tries < 100 && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                return;
            }
            Sent::Refused(status) => {
                *st.errors.entry(format!("status {status}")).or_default() += 1;
                return;
            }
            Sent::Unsent(why) => {
                *st.errors.entry(why).or_default() += 1;
                if tries < 100 && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                return;
            }
            Sent::Unknown(why) => {
                *st.errors.entry(why).or_default() += 1;
                st.uncertain += chans.len() as u64;
                true
            }
        };
        st.publishes += 1;
        st.items += chans.len() as u64;
        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
        for &c in chans {
            l.chans[c].push(PubRec {
                send_ns: ns,
                ack_ns: ack,
                uncertain,
            });
        }
        return;
    }
}

fn publisher(
    plan: PubPlan,
    log: Arc<Mutex<PubLog>>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> PubStats {
    let mut st = PubStats::default();
    let mut p = Publisher {
        to: plan.to,
        conn: None,
    };
    let start = Instant::now();
    let mut j = 0u64;
    let mut burst_no = 0u64;
    let mut next_burst = plan.burst_every;
    let mut rr = 0usize;
    loop {
        let el = start.elapsed().as_secs_f64();
        if stop.load(Ordering::Relaxed) || el >= plan.seconds {
            break;
        }
        if plan.burst_every > 0.0 && el >= next_burst {
            next_burst += plan.burst_every;
            burst_no += 1;
            st.bursts += 1;
            // Many small items over every channel...
            let mut chans: Vec<usize> = Vec::new();
            for _ in 0..plan.burst_items {
                chans.push(rr % plan.channels);
                rr += 1;
                if chans.len() == plan.burst_batch.max(1) {
                    publish_batch(&mut p, &plan, &chans, plan.size, &log, &mut st, &stop);
                    chans.clear();
                }
            }
            if !chans.is_empty() {
                publish_batch(&mut p, &plan, &chans, plan.size, &log, &mut st, &stop);
            }
            // ... and big ones to the hot channels.
            let mut chans: Vec<usize> = Vec::new();
            for k in 0..plan.hot_items * plan.hot {
                chans.push(k % plan.hot);
                if chans.len() == plan.hot_batch.max(1) {
                    publish_batch(&mut p, &plan, &chans, plan.hot_size, &log, &mut st, &stop);
                    chans.clear();
                }
            }
            if !chans.is_empty() {
                publish_batch(&mut p, &plan, &chans, plan.hot_size, &log, &mut st, &stop);
            }
            sent.store(st.items, Ordering::Relaxed);
            let _ = burst_no;
            continue;
        }
        // The steady rate, one item a publish, round robin; slots missed
        // during a burst are skipped, not caught up.
        let due = j as f64 / plan.rate;
        if due > el {
            std::thread::sleep(Duration::from_secs_f64((due - el).min(0.05)));
            continue;
        }
        if (el - due) * plan.rate > 1.0 {
            j = (el * plan.rate) as u64;
        }
        let c = rr % plan.channels;
        rr += 1;
        publish_batch(&mut p, &plan, &[c], plan.size, &log, &mut st, &stop);
        sent.store(st.items, Ordering::Relaxed);
        j += 1;
    }
    st
}

/// The proxy's Prometheus counters, summed over cores (histogram buckets
/// left out), keyed `name{labels}`.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((key, val)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = val.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match key.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (key, ""),
        };
        if name.ends_with("_bucket") {
            continue;
        }
        let kept: Vec<&str> = labels
            .split(',')
            .filter(|l| !l.is_empty() && !l.starts_with("core="))
            .collect();
        let k = if kept.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{}}}", kept.join(","))
        };
        *out.entry(k).or_insert(0.0) += v;
    }
    out
}

fn scrape(addr: Option<SocketAddr>) -> BTreeMap<String, f64> {
    let Some(addr) = addr else {
        return BTreeMap::new();
    };
    let Ok(mut s) = TcpStream::connect(addr) else {
        return BTreeMap::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // The body is chunked or not; chunk-size lines do not parse as metrics.
    parse_metrics(body)
}

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
}

fn add_into(into: &mut Value, v: &Value) {
    match (into, v) {
        (into @ Value::Null, v) => *into = v.clone(),
        (Value::Number(a), Value::Number(b)) => {
            *a = (a.as_u64().unwrap_or(0) + b.as_u64().unwrap_or(0)).into();
        }
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                add_into(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => {}
    }
}

pub fn run(args: &[String]) {
    let mut spec = WORKER_FLAGS.to_vec();
    spec.extend(FLAGS);
    let a = Args::parse("soak", args, &spec);
    let wo = WorkerOpts::from_args(&a);
    let publish_to: SocketAddr = a
        .opt("publish-to")
        .unwrap_or_else(|| die("soak: --publish-to HOST:PORT (the publish API) is needed"));
    let metrics: Option<SocketAddr> = a.opt("metrics").or(Some(publish_to));
    let seconds = a.get("seconds", 600.0f64);
    let plan = PubPlan {
        to: publish_to,
        seconds,
        rate: a.get("rate", 100.0f64).max(0.001),
        size: a.get("size", 256usize),
        channels: wo.channels,
        hot: wo.hot,
        prefix: wo.prefix.clone(),
        burst_every: a.get("burst-every", 45.0f64),
        burst_items: a.get("burst-items", 3000usize),
        burst_batch: a.get("burst-batch", 50usize),
        hot_items: a.get("hot-items", 50usize),
        hot_size: a.get("hot-size", 32768usize),
        hot_batch: a.get("hot-batch", 5usize),
    };
    let drain = Duration::from_secs_f64(a.get("drain-s", 30.0f64));
    let g = Graces {
        end: (a.get("grace-s", 5.0f64) * 1e9) as u64,
        lp: (a.get("lp-grace-s", 2.0f64) * 1e9) as u64,
    };
    let dir: String = a
        .opt("dir")
        .unwrap_or_else(|| die("soak: --dir DIR (for the session records) is needed"));
    let _ = std::fs::create_dir_all(&dir);
    let hold_log: Option<String> = a.opt("hold-log");

    let before = scrape(metrics);
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("own path: {e}")));
    let (tx, rx) = mpsc::channel::<(usize, Option<Value>)>();
    let mut kids = Vec::new();
    for w in 0..wo.workers {
        let mut child = Command::new(&exe)
            .arg("soak-worker")
            .args(wo.flags())
            .args([
                "--index",
                &w.to_string(),
                "--records",
                &format!("{dir}/worker-{w}.jsonl"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| die(&format!("starting worker {w}: {e}")));
        let stdin = child.stdin.take();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        let _ = tx.send((w, Some(v)));
                    }
                }
                let _ = tx.send((w, None));
            });
        }
        kids.push(Kid { child, stdin });
    }

    let log = Arc::new(Mutex::new(PubLog {
        chans: vec![Vec::new(); wo.channels],
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let pub_thread = {
        let (plan, log, stop, sent) = (plan.clone(), log.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || publisher(plan, log, stop, sent))
    };
    let t0 = Instant::now();
    let mut progress = vec![Value::Null; wo.workers];
    let mut results: Vec<Option<Value>> = vec![None; wo.workers];
    let mut exited = vec![false; wo.workers];
    let mut tick = Ticker::default();
    let pump = |wait: Duration,
                progress: &mut Vec<Value>,
                results: &mut Vec<Option<Value>>,
                exited: &mut Vec<bool>| {
        let mut next = rx.recv_timeout(wait).ok();
        while let Some((w, line)) = next {
            match line {
                Some(v) if v.get("t").and_then(Value::as_str) == Some("result") => {
                    results[w] = Some(v)
                }
                Some(v) => progress[w] = v,
                None => exited[w] = true,
            }
            next = rx.try_recv().ok();
        }
    };
    let sum = |progress: &[Value], f: &str| -> u64 {
        progress
            .iter()
            .filter_map(|p| p.get(f).and_then(Value::as_u64))
            .sum()
    };
    let mut early = false;
    while !pub_thread.is_finished() {
        pump(
            Duration::from_millis(250),
            &mut progress,
            &mut results,
            &mut exited,
        );
        if tick.due() {
            let mut live = Value::Null;
            for p in &progress {
                if let Some(l) = p.get("live") {
                    add_into(&mut live, l);
                }
            }
            eprint!(
                "\r[soak {:5.0}s] published {} live {} sessions {} delivered {} errors {}   ",
                t0.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                live,
                sum(&progress, "sessions"),
                sum(&progress, "delivered"),
                sum(&progress, "errors"),
            );
        }
        if exited.iter().any(|e| *e) {
            eprintln!("\nsoak: a worker process ended early");
            stop.store(true, Ordering::Relaxed);
            early = true;
        }
    }
    let pubst = pub_thread.join().unwrap_or_default();
    let published_s = t0.elapsed().as_secs_f64();
    // Let the last deliveries arrive, then end every session: at least
    // the end grace (so every message answered before the publisher
    // stopped is due to the sessions still open), then until deliveries
    // to healthy subscribers stop for a second, for at most `--drain-s`.
    let drained = Instant::now();
    let (mut last, mut since) = (u64::MAX, Instant::now());
    while drained.elapsed() < drain {
        pump(
            Duration::from_millis(250),
            &mut progress,
            &mut results,
            &mut exited,
        );
        // Slow readers may still be working through a backlog.
        let d = sum(&progress, "delivered_healthy");
        if d != last {
            (last, since) = (d, Instant::now());
        }
        if drained.elapsed().as_nanos() > u128::from(g.end) + 500_000_000
            && since.elapsed() > Duration::from_secs(1)
        {
            break;
        }
    }
    for k in kids.iter_mut() {
        if let Some(mut s) = k.stdin.take() {
            let _ = s.write_all(b"stop\n");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while results.iter().zip(&exited).any(|(r, e)| r.is_none() && !e) && Instant::now() < deadline {
        pump(
            Duration::from_millis(250),
            &mut progress,
            &mut results,
            &mut exited,
        );
    }
    for k in kids.iter_mut() {
        if Instant::now() >= deadline {
            let _ = k.child.kill();
        }
        let _ = k.child.wait();
    }
    eprintln!();
    let after = scrape(metrics);

    // The accounting.
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    let holds = hold_log
        .as_ref()
        .map(|p| read_holds(&std::fs::read_to_string(p).unwrap_or_default()))
        .unwrap_or_default();
    let mut groups: BTreeMap<String, Tally> = BTreeMap::new();
    let mut losses: Vec<String> = Vec::new();
    let mut records = 0u64;
    for w in 0..wo.workers {
        let Ok(f) = std::fs::File::open(format!("{dir}/worker-{w}.jsonl")) else {
            continue;
        };
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            let Ok(rec) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            records += 1;
            let key = format!(
                "{}/{}",
                rec.get("c").and_then(Value::as_str).unwrap_or("?"),
                rec.get("k").and_then(Value::as_str).unwrap_or("?")
            );
            let healthy = key.starts_with("healthy/");
            let t = groups.entry(key).or_default();
            let l = account(&rec, &log, &holds, g, t);
            if healthy && losses.len() < 50 {
                losses.extend(l);
            }
        }
    }
    // The publish log, for a closer look at any loss.
    if let Ok(f) = std::fs::File::create(format!("{dir}/publish-log.jsonl")) {
        let mut f = std::io::BufWriter::new(f);
        for (c, v) in log.chans.iter().enumerate() {
            let rows: Vec<Value> = v
                .iter()
                .map(|p| json!([p.send_ns, p.ack_ns, p.uncertain]))
                .collect();
            let _ = writeln!(f, "{}", json!({"ch": c, "m": rows}));
        }
    }
    let healthy: Tally = groups
        .iter()
        .filter(|(k, _)| k.starts_with("healthy/"))
        .fold(Tally::default(), |mut acc, (_, t)| {
            acc.sessions += t.sessions;
            acc.expected += t.expected;
            acc.received += t.received;
            acc.lost += t.lost;
            acc.duplicated += t.duplicated;
            acc.out_of_order += t.out_of_order;
            acc
        });
    let mut merged = Value::Null;
    let mut latency = Latency::new();
    for r in results.iter().flatten() {
        if let Some(l) = r.get("latency") {
            latency.add_json(l);
        }
        let mut r = r.clone();
        if let Some(o) = r.as_object_mut() {
            o.remove("latency");
            o.remove("t");
            o.remove("worker");
        }
        add_into(&mut merged, &r);
    }
    let diff: Map<String, Value> = after
        .iter()
        .filter(|(k, _)| {
            ["_total", "corepin_connections", "corepin_subscriptions"]
                .iter()
                .any(|s| k.contains(s))
        })
        .map(|(k, v)| {
            let d = if k.contains("_total") {
                v - before.get(k).copied().unwrap_or(0.0)
            } else {
                *v
            };
            (k.clone(), json!(d))
        })
        .collect();
    let groups_json: Map<String, Value> = groups
        .iter()
        .map(|(k, t)| (k.clone(), t.to_json()))
        .collect();
    let result = json!({
        "mode": "soak",
        "target": wo.to.to_string(),
        "seconds": seconds,
        "published_seconds": published_s,
        "slots": wo.slots,
        "workers": wo.workers,
        "channels": wo.channels,
        "hot_channels": wo.hot,
        "ended_early": early,
        "healthy": {
            "sessions": healthy.sessions,
            "expected": healthy.expected,
            "received": healthy.received,
            "lost": healthy.lost,
            "duplicated": healthy.duplicated,
            "out_of_order": healthy.out_of_order,
        },
        "groups": groups_json,
        "records": records,
        "loss_examples": losses,
        "publish": {
            "publishes": pubst.publishes,
            "items": pubst.items,
            "bursts": pubst.bursts,
            "refused": pubst.refused,
            "errors": pubst.errors,
            "uncertain_items": pubst.uncertain,
            "request_latency_ms": pubst.latency.summary_ms(),
        },
        "workers_summary": merged,
        "healthy_latency_ms": latency.summary_ms(),
        "metrics_during_run": diff,
    });
    println!("{result}");
    if healthy.lost + healthy.duplicated + healthy.out_of_order > 0 || early {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(chan: &[(u64, u64, bool)]) -> PubLog {
        PubLog {
            chans: vec![chan
                .iter()
                .map(|&(s, a, u)| PubRec {
                    send_ns: s,
                    ack_ns: a,
                    uncertain: u,
                })
                .collect()],
        }
    }

    const G: Graces = Graces { end: 50, lp: 20 };

    #[test]
    fn a_stream_session_expects_what_was_sent_while_it_was_subscribed() {
        // Messages 0..=5 sent at 100, 200, ... and answered 10 later.
        let log = log_of(&[
            (100, 110, false),
            (200, 210, false),
            (300, 310, false),
            (400, 410, false),
            (500, 510, false),
            (600, 610, false),
        ]);
        // Subscribed at 150, ended by the client at 500: 1, 2, 3 are due
        // (4 was answered within the grace of the end).
        let rec = json!({"k": "stream", "ch": 0, "sub": 150, "end": 520, "client_end": 500,
                         "r": [[1, 3]], "dup": 0, "ooo": 0});
        let mut t = Tally::default();
        assert!(account(&rec, &log, &HashMap::new(), G, &mut t).is_empty());
        assert_eq!((t.expected, t.received, t.lost), (3, 3, 0));
        // Message 2 missing, 0 and 4 extra: one lost.
        let rec = json!({"k": "ws", "ch": 0, "sub": 150, "end": 520, "client_end": 500,
                         "r": [[0, 1], [3, 4]], "dup": 1, "ooo": 0});
        let mut t = Tally::default();
        let l = account(&rec, &log, &HashMap::new(), G, &mut t);
        assert_eq!((t.expected, t.lost, t.duplicated, t.gaps), (3, 1, 1, 1));
        assert!(l[0].contains("message 2"), "{l:?}");
        // An uncertain publish is not expected.
        let mut log2 = log_of(&[(100, 110, false), (200, 210, true), (300, 310, false)]);
        log2.chans[0].push(PubRec {
            send_ns: 400,
            ack_ns: 410,
            uncertain: false,
        });
        let rec = json!({"k": "stream", "ch": 0, "sub": 150, "end": 900, "client_end": 0,
                         "r": [[2, 3]], "dup": 0, "ooo": 1});
        let mut t = Tally::default();
        assert!(account(&rec, &log2, &HashMap::new(), G, &mut t).is_empty());
        assert_eq!((t.expected, t.lost, t.out_of_order), (2, 0, 1));
        // Never subscribed: nothing expected.
        let rec = json!({"k": "stream", "ch": 0, "sub": 0, "end": 900, "r": []});
        let mut t = Tally::default();
        assert!(account(&rec, &log, &HashMap::new(), G, &mut t).is_empty());
        assert_eq!((t.sessions, t.subscribed, t.expected), (1, 0, 0));
    }

    #[test]
    fn a_long_poll_must_get_the_first_message_sent_once_it_was_held() {
        let log = log_of(&[(100, 110, false), (200, 210, false), (300, 310, false)]);
        // Request at 150 (held by 170): 1 is due. Answered by 1: fine. By
        // 0: stale but not a loss. By 2: 1 was skipped.
        for (seq, lost) in [(1, 0), (0, 0), (2, 1)] {
            let rec = json!({"k": "longpoll", "ch": 0, "sub": 150, "end": 900,
                             "lp": [[150, 305, seq]], "r": [[seq, seq]]});
            let mut t = Tally::default();
            account(&rec, &log, &HashMap::new(), G, &mut t);
            assert_eq!((t.polls, t.lost), (1, lost), "answered by {seq}");
        }
        // Request at 190: held from 210, so 1 (sent 200) is not due; 2 is.
        let rec = json!({"k": "longpoll", "ch": 0, "sub": 190, "end": 900,
                         "lp": [[190, 305, 2]], "r": [[2, 2]]});
        let mut t = Tally::default();
        assert!(account(&rec, &log, &HashMap::new(), G, &mut t).is_empty());
        assert_eq!((t.expected, t.lost), (1, 0));
        // A timeout while 2 (answered at 310) was due: lost; a timeout
        // with nothing due: fine.
        let rec = json!({"k": "longpoll", "ch": 0, "sub": 250, "end": 900,
                         "lp": [[250, 400, -1], [400, 900, -1]], "r": []});
        let mut t = Tally::default();
        let l = account(&rec, &log, &HashMap::new(), G, &mut t);
        assert_eq!((t.polls, t.poll_timeouts, t.lost), (2, 2, 1), "{l:?}");
    }

    #[test]
    fn a_long_poll_is_due_messages_from_when_the_backend_held_it() {
        let log = log_of(&[(100, 110, false), (200, 210, false), (300, 310, false)]);
        // Slot 4's request 9, sent at 150, answered by the backend only at
        // 250 (it was down, say): 1 (sent 200) was not due, 2 was.
        let rec = json!({"k": "longpoll", "ch": 0, "slot": 4, "sub": 150, "end": 900,
                         "lp": [[150, 305, 2, 9]], "r": [[2, 2]]});
        let holds = read_holds("4.9 240\n4.9 250\n4.8 100\nbad line\n");
        assert_eq!(holds.get("4.9"), Some(&250));
        let mut t = Tally::default();
        assert!(account(&rec, &log, &holds, G, &mut t).is_empty());
        assert_eq!((t.expected, t.lost, t.holds_logged), (1, 0, 1));
        // Without the backend's word the request counts from when it was
        // sent, and 1 looks skipped.
        let mut t = Tally::default();
        assert_eq!(account(&rec, &log, &HashMap::new(), G, &mut t).len(), 1);
        assert_eq!((t.lost, t.holds_logged), (1, 0));
    }

    #[test]
    fn metrics_are_summed_over_cores() {
        let text = "# HELP x\ncorepin_subscriber_drops_total{reason=\"queue\",core=\"0\"} 2\n\
                    corepin_subscriber_drops_total{reason=\"queue\",core=\"1\"} 3\n\
                    corepin_subscriber_drops_total{reason=\"stalled\",core=\"0\"} 1\n\
                    corepin_publishes_total 7\n\
                    corepin_upstream_latency_seconds_bucket{le=\"0.1\"} 4\n";
        let m = parse_metrics(text);
        assert_eq!(
            m.get("corepin_subscriber_drops_total{reason=\"queue\"}"),
            Some(&5.0)
        );
        assert_eq!(
            m.get("corepin_subscriber_drops_total{reason=\"stalled\"}"),
            Some(&1.0)
        );
        assert_eq!(m.get("corepin_publishes_total"), Some(&7.0));
        assert_eq!(m.len(), 3);
    }
}
