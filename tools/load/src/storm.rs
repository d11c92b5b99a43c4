//! `corepin-load storm`: the reconnect storm (benches/storm.sh). N SSE
//! subscribers hold one channel while a publisher sends numbered items at
//! a steady rate; then every subscriber's connection is reset at once (a
//! TCP RST, as a network blip or a restarting load balancer gives) and
//! each comes back at once with `Last-Event-ID` naming the last item it
//! saw, as a browser's EventSource does. Measured: items lost, duplicated
//! and out of order per subscriber, the time until every subscriber is
//! connected again and until each has caught up, and (with `--backend`,
//! a `corepin-load storm-backend`) the requests the storm cost the
//! backend.
//!
//! Items are numbered from 1 (item 0, published before anyone
//! subscribes, only gives the channel a last id); item N is the SSE event
//! `id: N` whose data is the load tool's record `M<N>,<ns>;`, published
//! with `id` N and `prev-id` N-1, stored first in the backend (`POST
//! /log`) when there is one, as an application writes to its database
//! before it publishes.
//!
//! Subscribers live in `storm-worker` processes (the per-process open-file
//! limit), connecting from 127.0.0.2-254 with non-blocking connects. The
//! parent talks to them over stdin (`drop SEQ NS`, `final SEQ`, `stop`)
//! and reads JSON lines from their stdout.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use polling::{Event, Events, PollMode, Poller};
use serde_json::{json, Value};
use socket2::{Domain, SockRef, Socket, Type};

use crate::args::{die, Args, Ticker};
use crate::http::{Ev, ResponseReader};
use crate::net::{now_ns, source_addr};
use crate::record::{message, scan, Latency, Track};

/// Subscribers per worker process by default.
const PER_WORKER: usize = 2500;

/// Connects started per worker per turn of its loop, so reading goes on
/// while thousands reconnect.
const CONNECT_BATCH: usize = 256;

/// After a failed connect, an error status or a stream the server ended,
/// a subscriber tries again this much later, as EventSource does (its
/// default is about 3 s; shorter here so the run ends sooner). Only the
/// storm itself, the reset, is answered by coming back at once.
const RETRY: Duration = Duration::from_secs(1);

/// A subscriber closed by the server this often gives up.
const MAX_RECONNECTS: u32 = 50;

/// The SSE text of item `seq`: its id line and the record as data.
pub fn event(seq: u64, ns: u64, size: usize) -> String {
    let rec = message(seq, ns, size);
    format!("id: {seq}\ndata: {}\n\n", rec.trim_end())
}

/// The publish request body for item `seq` of `channel`.
pub fn publish_body(channel: &str, seq: u64, content: &str) -> String {
    let mut item = json!({"channel": channel, "id": seq.to_string(),
        "formats": {"http-stream": {"content": content}}});
    if seq > 0 {
        item["prev-id"] = json!((seq - 1).to_string());
    }
    json!({ "items": [item] }).to_string()
}

// ---------------------------------------------------------------- worker

enum Conn {
    /// Non-blocking connect under way (registered for writability).
    Connecting(TcpStream),
    /// Request sent; reading the response.
    Open(TcpStream, ResponseReader),
}

struct Sub {
    index: usize,
    conn: Option<Conn>,
    tail: Vec<u8>,
    track: Track,
    /// Every item number received (a bit each), for counting exactly
    /// which of 1..=final are missing.
    seen: Vec<u64>,
    max_seq: u64,
    /// The current connection's head said 200.
    head: bool,
    /// Nanoseconds after the drop at which it was answered again / had
    /// caught up (0: not yet).
    back_ns: u64,
    caught_ns: u64,
    /// Reconnects the server caused (it closed the stream).
    closes: u32,
    retry_at: Option<Instant>,
    gave_up: bool,
}

#[derive(Default)]
struct WStats {
    connect_errors: u64,
    status: BTreeMap<String, u64>,
    closes: u64,
    /// Set by `drop`: the last item published before it and when.
    dropped: Option<(u64, u64)>,
    final_seq: Option<u64>,
    back: Latency,
    caught: Latency,
}

/// Records item `seq` in a bit set (items are numbered densely from 1;
/// a number past a million is not a storm item and is not kept).
fn mark(seen: &mut Vec<u64>, seq: u64) {
    if seq >= 1 << 20 {
        return;
    }
    let (word, bit) = ((seq / 64) as usize, seq % 64);
    if seen.len() <= word {
        seen.resize(word + 1, 0);
    }
    seen[word] |= 1 << bit;
}

/// How many of items 1..=last are not in the set.
fn missing(seen: &[u64], last: u64) -> u64 {
    (1..=last)
        .filter(|&q| {
            seen.get((q / 64) as usize)
                .is_none_or(|w| w & (1 << (q % 64)) == 0)
        })
        .count() as u64
}

fn start_connect(i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    if let SocketAddr::V4(v4) = to {
        if v4.ip().is_loopback() {
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((source_addr(i), 0)).into())?;
        }
    }
    match s.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

struct Worker {
    to: SocketAddr,
    path: String,
    poller: Poller,
    subs: Vec<Sub>,
    queue: VecDeque<usize>,
    st: WStats,
}

impl Worker {
    fn request(&self, sub: &Sub) -> String {
        let resume = if sub.max_seq > 0 {
            format!("Last-Event-ID: {}\r\n", sub.max_seq)
        } else {
            String::new()
        };
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n{resume}\r\n",
            self.path, self.to
        )
    }

    fn close(&mut self, slot: usize, reset: bool) {
        let Some(c) = self.subs[slot].conn.take() else {
            return;
        };
        let s = match c {
            Conn::Connecting(s) | Conn::Open(s, _) => s,
        };
        let _ = self.poller.delete(&s);
        if reset {
            // Close with a RST, as a dropped network path looks to the
            // server once it writes.
            let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        self.subs[slot].head = false;
    }

    fn connect(&mut self, slot: usize) {
        let sub = &mut self.subs[slot];
        sub.retry_at = None;
        sub.tail.clear();
        match start_connect(sub.index, self.to) {
            Ok(s) => {
                // SAFETY: the socket is deleted from the poller before it
                // is dropped (`close`), as `polling` requires.
                let r = unsafe {
                    self.poller
                        .add_with_mode(&s, Event::writable(slot), PollMode::Level)
                };
                if let Err(e) = r {
                    die(&format!("storm-worker: epoll add: {e}"));
                }
                sub.conn = Some(Conn::Connecting(s));
            }
            Err(e) => {
                *self.st.status.entry(format!("connect: {e}")).or_default() += 1;
                self.st.connect_errors += 1;
                sub.retry_at = Some(Instant::now() + RETRY);
            }
        }
    }

    /// The connection failed or ended: try again after `RETRY`.
    fn lost(&mut self, slot: usize, answered: bool) {
        self.close(slot, false);
        let sub = &mut self.subs[slot];
        if answered {
            sub.closes += 1;
            self.st.closes += 1;
            if sub.closes > MAX_RECONNECTS {
                sub.gave_up = true;
                return;
            }
        } else {
            self.st.connect_errors += 1;
        }
        sub.retry_at = Some(Instant::now() + RETRY);
    }

    fn writable(&mut self, slot: usize) {
        let Some(Conn::Connecting(s)) = self.subs[slot].conn.take() else {
            return;
        };
        let failed = match s.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => None,
        };
        let req = self.request(&self.subs[slot]);
        let mut s = s;
        let sent = match failed {
            Some(e) => Err(e),
            None => crate::net::write_all(&mut s, req.as_bytes()),
        };
        match sent {
            Ok(()) => {
                if let Err(e) =
                    self.poller
                        .modify_with_mode(&s, Event::readable(slot), PollMode::Level)
                {
                    die(&format!("storm-worker: epoll modify: {e}"));
                }
                self.subs[slot].conn = Some(Conn::Open(s, ResponseReader::new()));
            }
            Err(e) => {
                *self.st.status.entry(format!("connect: {e}")).or_default() += 1;
                self.subs[slot].conn = Some(Conn::Connecting(s));
                self.lost(slot, false);
            }
        }
    }

    fn readable(&mut self, slot: usize, buf: &mut [u8], recs: &mut Vec<(u64, u64)>) {
        let mut ended = None;
        {
            let sub = &mut self.subs[slot];
            let Some(Conn::Open(s, reader)) = sub.conn.as_mut() else {
                return;
            };
            loop {
                let n = match s.read(buf) {
                    Ok(0) => {
                        ended = Some(sub.head);
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        ended = Some(sub.head);
                        break;
                    }
                };
                let (tail, track, seen, head, max) = (
                    &mut sub.tail,
                    &mut sub.track,
                    &mut sub.seen,
                    &mut sub.head,
                    &mut sub.max_seq,
                );
                let mut bad = None;
                let mut done = false;
                let fed = reader.feed(&buf[..n], &mut |ev| match ev {
                    Ev::Head(200) => *head = true,
                    Ev::Head(code) => bad = Some(format!("status {code}")),
                    Ev::Body(data) => {
                        recs.clear();
                        scan(tail, data, recs);
                        for &(seq, _) in recs.iter() {
                            if track.record(seq) {
                                *max = (*max).max(seq);
                                mark(seen, seq);
                            }
                        }
                    }
                    Ev::End => done = true,
                });
                if let Err(e) = fed {
                    bad = Some(e);
                }
                if let Some(why) = bad {
                    *self.st.status.entry(why).or_default() += 1;
                    ended = Some(false);
                    break;
                }
                if done {
                    // The stream ended (the server closed it cleanly).
                    ended = Some(true);
                    break;
                }
            }
        }
        self.check_caught(slot);
        if let Some(answered) = ended {
            self.lost(slot, answered);
        }
    }

    fn check_caught(&mut self, slot: usize) {
        let Some((seq, at)) = self.st.dropped else {
            return;
        };
        let sub = &mut self.subs[slot];
        if !sub.head {
            return;
        }
        let now = now_ns().saturating_sub(at).max(1);
        if sub.back_ns == 0 {
            sub.back_ns = now;
            self.st.back.record(now);
        }
        // Caught up: an item published after the drop has arrived, and
        // nothing is missing before it.
        if sub.caught_ns == 0 && sub.max_seq > seq && sub.track.got == sub.max_seq {
            sub.caught_ns = now;
            self.st.caught.record(now);
        }
    }

    fn drop_all(&mut self, seq: u64, at: u64) {
        self.st.dropped = Some((seq, at));
        for slot in 0..self.subs.len() {
            self.close(slot, true);
            self.subs[slot].retry_at = None;
            if !self.subs[slot].gave_up {
                self.queue.push_back(slot);
            }
        }
    }

    fn progress(&self) -> Value {
        let f = self.st.final_seq.unwrap_or(u64::MAX);
        let count = |p: &dyn Fn(&Sub) -> bool| self.subs.iter().filter(|s| p(s)).count();
        json!({"t": "progress", "subs": self.subs.len(),
            "live": count(&|s| s.head),
            "have_item": count(&|s| s.max_seq > 0),
            "back": count(&|s| s.back_ns > 0),
            "caught": count(&|s| s.caught_ns > 0),
            "done": count(&|s| s.max_seq >= f),
            "gave_up": count(&|s| s.gave_up),
            "closes": self.st.closes,
            "connect_errors": self.st.connect_errors})
    }

    fn result(&self) -> Value {
        let f = self.st.final_seq.unwrap_or(0);
        let lost: Vec<u64> = self.subs.iter().map(|s| missing(&s.seen, f)).collect();
        json!({"t": "result", "subs": self.subs.len(),
            "lost": lost.iter().sum::<u64>(),
            "subs_with_loss": lost.iter().filter(|l| **l > 0).count(),
            "max_lost": lost.iter().max().copied().unwrap_or(0),
            "duplicated": self.subs.iter().map(|s| s.track.duplicated).sum::<u64>(),
            "subs_with_duplicates": self.subs.iter().filter(|s| s.track.duplicated > 0).count(),
            "max_duplicated": self.subs.iter().map(|s| s.track.duplicated).max().unwrap_or(0),
            "out_of_order": self.subs.iter().map(|s| s.track.out_of_order).sum::<u64>(),
            "received": self.subs.iter().map(|s| s.track.got).sum::<u64>(),
            "not_back": self.subs.iter().filter(|s| s.back_ns == 0).count(),
            "not_caught": self.subs.iter().filter(|s| s.caught_ns == 0).count(),
            "back_max_ns": self.subs.iter().map(|s| s.back_ns).max().unwrap_or(0),
            "caught_max_ns": self.subs.iter().map(|s| s.caught_ns).max().unwrap_or(0),
            "gave_up": self.subs.iter().filter(|s| s.gave_up).count(),
            "closes": self.st.closes,
            "connect_errors": self.st.connect_errors,
            "errors": self.st.status,
            "back": self.st.back.to_json(),
            "caught": self.st.caught.to_json()})
    }
}

enum Cmd {
    Drop(u64, u64),
    Final(u64),
    Stop,
}

fn parse_cmd(line: &str) -> Option<Cmd> {
    let mut w = line.split_whitespace();
    match (w.next()?, w.next(), w.next()) {
        ("drop", Some(s), Some(t)) => Some(Cmd::Drop(s.parse().ok()?, t.parse().ok()?)),
        ("final", Some(s), None) => Some(Cmd::Final(s.parse().ok()?)),
        ("stop", None, None) => Some(Cmd::Stop),
        _ => None,
    }
}

/// `corepin-load storm-worker` (internal): holds subscribers
/// `index, index + workers, ...` below `subscribers`.
pub fn worker(args: &[String]) {
    let a = Args::parse(
        "storm-worker",
        args,
        &["to", "path", "subscribers", "workers", "index", "open-rate"],
    );
    let to: SocketAddr = a.get(
        "to",
        "127.0.0.1:7999".parse().unwrap_or_else(|_| die("address")),
    );
    let (n, workers, index) = (
        a.get("subscribers", 0usize),
        a.get("workers", 1usize).max(1),
        a.get("index", 0usize),
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(c) = parse_cmd(&line) {
                let _ = tx.send(c);
            }
            line.clear();
        }
        let _ = tx.send(Cmd::Stop);
    });
    let mut w = Worker {
        to,
        path: a.string("path", "/stream?channel=storm"),
        poller: Poller::new().unwrap_or_else(|e| die(&format!("epoll: {e}"))),
        subs: (index..n)
            .step_by(workers)
            .map(|i| Sub {
                index: i,
                conn: None,
                tail: Vec::new(),
                track: Track::default(),
                seen: Vec::new(),
                max_seq: 0,
                head: false,
                back_ns: 0,
                caught_ns: 0,
                closes: 0,
                retry_at: None,
                gave_up: false,
            })
            .collect(),
        queue: VecDeque::new(),
        st: WStats::default(),
    };
    w.queue.extend(0..w.subs.len());
    // The first connections are opened at this rate (per worker): setting
    // up is not the storm.
    let open_rate: f64 = a.get("open-rate", 0.0);
    let (started, mut opened) = (Instant::now(), 0usize);
    let mut events = Events::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut recs = Vec::new();
    let mut last_report = Instant::now();
    let mut out = std::io::stdout().lock();
    loop {
        match rx.try_recv() {
            Ok(Cmd::Drop(seq, at)) => w.drop_all(seq, at),
            Ok(Cmd::Final(seq)) => w.st.final_seq = Some(seq),
            Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let mut batch = CONNECT_BATCH;
        if w.st.dropped.is_none() && open_rate > 0.0 {
            let due = (started.elapsed().as_secs_f64() * open_rate) as usize + 1;
            batch = batch.min(due.saturating_sub(opened));
        }
        for _ in 0..batch {
            let Some(slot) = w.queue.pop_front() else {
                break;
            };
            opened += 1;
            w.connect(slot);
        }
        let now = Instant::now();
        for slot in 0..w.subs.len() {
            if w.subs[slot].retry_at.is_some_and(|t| t <= now) && w.queue.len() < CONNECT_BATCH {
                w.subs[slot].retry_at = None;
                w.queue.push_back(slot);
            }
        }
        events.clear();
        let wait = if w.queue.is_empty() || batch == 0 {
            5
        } else {
            0
        };
        let _ = w
            .poller
            .wait(&mut events, Some(Duration::from_millis(wait)));
        let ready: Vec<(usize, bool)> = events.iter().map(|e| (e.key, e.writable)).collect();
        for (slot, writable) in ready {
            if slot >= w.subs.len() {
                continue;
            }
            match w.subs[slot].conn {
                Some(Conn::Connecting(_)) if writable => w.writable(slot),
                Some(Conn::Open(..)) => w.readable(slot, &mut buf, &mut recs),
                _ => {}
            }
        }
        if last_report.elapsed() >= Duration::from_millis(250) {
            last_report = Instant::now();
            let _ = writeln!(out, "{}", w.progress());
            let _ = out.flush();
        }
    }
    let _ = writeln!(out, "{}", w.progress());
    let _ = writeln!(out, "{}", w.result());
    let _ = out.flush();
}

// ---------------------------------------------------------------- driver

/// A keep-alive HTTP/1.1 client for the publisher: one request at a time.
struct Http {
    to: SocketAddr,
    conn: Option<(TcpStream, ResponseReader)>,
    last_used: Instant,
}

impl Http {
    fn new(to: SocketAddr) -> Http {
        Http {
            to,
            conn: None,
            last_used: Instant::now(),
        }
    }

    /// Sends a request; the status and body, or why it failed.
    fn request(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, Vec<u8>), String> {
        // A connection left idle (while thousands of subscribers open) may
        // have been closed by the server: a publish is not retried, so
        // it goes out on a fresh one.
        if self.last_used.elapsed() > Duration::from_secs(2) {
            self.conn = None;
        }
        self.last_used = Instant::now();
        if self.conn.is_none() {
            let s = TcpStream::connect(self.to).map_err(|e| format!("{}: {e}", self.to))?;
            let _ = s.set_nodelay(true);
            // Long: a proxy busy with a storm may answer a publish late,
            // and the run reports how late (`slowest_publish_ms`).
            let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
            self.conn = Some((s, ResponseReader::new()));
        }
        let Some((s, reader)) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.to,
            body.len()
        );
        let r = (|| {
            s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
            let (mut status, mut data, mut done) = (0u16, Vec::new(), false);
            let mut buf = [0u8; 8192];
            while !done {
                let n = match s.read(&mut buf) {
                    Ok(0) => return Err("connection closed".to_string()),
                    Ok(n) => n,
                    Err(e) => return Err(e.to_string()),
                };
                reader.feed(&buf[..n], &mut |ev| match ev {
                    Ev::Head(st) => status = st,
                    Ev::Body(b) => data.extend_from_slice(b),
                    Ev::End => done = true,
                })?;
            }
            Ok((status, data, reader.keep_alive()))
        })();
        match r {
            Ok((status, data, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok((status, data))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

struct Publisher {
    channel: String,
    size: usize,
    publish_path: String,
    proxy: Http,
    backend: Option<Http>,
}

impl Publisher {
    /// Stores item `seq` in the backend, then publishes it to the proxy.
    fn item(&mut self, seq: u64) -> Result<(), String> {
        let content = if seq == 0 {
            "id: 0\ndata: start\n\n".to_string()
        } else {
            event(seq, now_ns(), self.size)
        };
        if let Some(b) = self.backend.as_mut() {
            let (st, body) = b.request(
                "POST",
                &format!("/log?channel={}&id={seq}", self.channel),
                &content,
            )?;
            if st != 204 {
                return Err(format!(
                    "backend /log: {st} {}",
                    String::from_utf8_lossy(&body).trim()
                ));
            }
        }
        let (st, body) = self.proxy.request(
            "POST",
            &self.publish_path,
            &publish_body(&self.channel, seq, &content),
        )?;
        if !(200..300).contains(&st) {
            return Err(format!(
                "publish: {st} {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        Ok(())
    }
}

struct Kids {
    kids: Vec<(Child, Option<ChildStdin>)>,
    rx: Receiver<(usize, Option<Value>)>,
    progress: Vec<Value>,
    results: Vec<Option<Value>>,
    exited: Vec<bool>,
}

impl Kids {
    fn spawn(to: SocketAddr, path: &str, n: usize, workers: usize, open_rate: f64) -> Kids {
        let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("own path: {e}")));
        let (tx, rx) = mpsc::channel();
        let mut kids = Vec::new();
        for w in 0..workers {
            let mut child = Command::new(&exe)
                .args(["storm-worker", "--to", &to.to_string(), "--path", path])
                .args([
                    "--subscribers",
                    &n.to_string(),
                    "--workers",
                    &workers.to_string(),
                ])
                .args(["--index", &w.to_string()])
                .args(["--open-rate", &(open_rate / workers as f64).to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| die(&format!("starting storm worker {w}: {e}")));
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
        Kids {
            kids,
            rx,
            progress: vec![Value::Null; workers],
            results: vec![None; workers],
            exited: vec![false; workers],
        }
    }

    fn pump(&mut self, wait: Duration) {
        let mut next = self.rx.recv_timeout(wait).ok();
        while let Some((w, line)) = next {
            match line {
                Some(v) if v.get("t").and_then(Value::as_str) == Some("result") => {
                    self.results[w] = Some(v)
                }
                Some(v) => self.progress[w] = v,
                None => self.exited[w] = true,
            }
            next = self.rx.try_recv().ok();
        }
    }

    fn sum(&self, field: &str) -> u64 {
        self.progress
            .iter()
            .filter_map(|p| p.get(field).and_then(Value::as_u64))
            .sum()
    }

    fn dead(&self) -> bool {
        self.exited.iter().any(|e| *e)
    }

    fn tell(&mut self, line: &str) {
        for (_, stdin) in self.kids.iter_mut() {
            if let Some(s) = stdin.as_mut() {
                let _ = s.write_all(line.as_bytes());
                let _ = s.flush();
            }
        }
    }

    fn finish(mut self) -> Vec<Value> {
        self.tell("stop\n");
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
        for (child, stdin) in self.kids.iter_mut() {
            drop(stdin.take());
            if Instant::now() >= deadline {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.results.into_iter().flatten().collect()
    }
}

fn backend_stats(b: Option<SocketAddr>) -> Option<Value> {
    let (st, body) = Http::new(b?).request("GET", "/stats", "").ok()?;
    (st == 200).then(|| serde_json::from_slice(&body).ok())?
}

/// `after - before`, field by field.
fn delta(after: &Option<Value>, before: &Option<Value>) -> Value {
    let (Some(Value::Object(a)), Some(Value::Object(b))) = (after, before) else {
        return Value::Null;
    };
    Value::Object(
        a.iter()
            .map(|(k, v)| {
                let d = v
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(b.get(k).and_then(Value::as_u64).unwrap_or(0));
                (k.clone(), json!(d))
            })
            .collect(),
    )
}

pub const USAGE: &str = "\
  storm       the reconnect storm: --subscribers N on one --channel held
      through --to HOST:PORT --path P (default /stream?channel={channel}),
      items published at --rate PER_S to --publish-to HOST:PORT
      (--publish-path, default /publish/) and first stored in --backend
      HOST:PORT (a storm-backend) if given; after --before-s S every
      connection is reset and comes back with Last-Event-ID; publishing
      goes on --after-s S after all caught up. --workers W, --size BYTES,
      --timeout-s S, --label NAME, --open-rate PER_S (first connections,
      default 1000/s; 0: at once)
  storm-backend [HOST:PORT] --mode hold|replay --link-timeout S
      the storm's counting GRIP backend (tools/load/src/storm_backend.rs)
";

pub fn run(args: &[String]) {
    let a = Args::parse(
        "storm",
        args,
        &[
            "to",
            "path",
            "channel",
            "publish-to",
            "publish-path",
            "backend",
            "subscribers",
            "workers",
            "rate",
            "size",
            "before-s",
            "after-s",
            "timeout-s",
            "label",
            "open-rate",
        ],
    );
    let addr = |flag: &str, default: &str| -> SocketAddr {
        a.string(flag, default)
            .parse()
            .unwrap_or_else(|_| die(&format!("--{flag}: not HOST:PORT")))
    };
    let to = addr("to", "127.0.0.1:7999");
    let publish_to = addr("publish-to", "127.0.0.1:5561");
    let backend: Option<SocketAddr> = a.opt::<String>("backend").map(|b| {
        b.parse()
            .unwrap_or_else(|_| die("--backend: not HOST:PORT"))
    });
    let channel = a.string("channel", "storm");
    if channel.is_empty()
        || !channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        die("--channel: letters, digits, - and _ only");
    }
    let path = a
        .string("path", "/stream?channel={channel}")
        .replace("{channel}", &channel);
    let n: usize = a.get("subscribers", 10_000);
    let workers = a.get("workers", n.div_ceil(PER_WORKER)).max(1);
    let rate: f64 = a.get("rate", 10.0);
    if !(rate > 0.0 && rate <= 10_000.0) {
        die("--rate: between 0 and 10000 per second");
    }
    let before = Duration::from_secs_f64(a.get("before-s", 5.0));
    let after = Duration::from_secs_f64(a.get("after-s", 3.0));
    let timeout = Duration::from_secs_f64(a.get("timeout-s", 120.0));
    let label = a.string("label", "storm");
    let mut publisher = Publisher {
        channel: channel.clone(),
        size: a.get("size", 64),
        publish_path: a.string("publish-path", "/publish/"),
        proxy: Http::new(publish_to),
        backend: backend.map(Http::new),
    };
    // Item 0: the channel's last id before anyone subscribes.
    if let Err(e) = publisher.item(0) {
        die(&format!("storm: first publish: {e}"));
    }

    let mut kids = Kids::spawn(to, &path, n, workers, a.get("open-rate", 1000.0));
    let t0 = Instant::now();
    let mut tick = Ticker::default();
    loop {
        kids.pump(Duration::from_millis(250));
        let live = kids.sum("live");
        if tick.due() || live >= n as u64 {
            eprint!(
                "\r[{label} {:5.1}s] subscribed {live}/{n}   ",
                t0.elapsed().as_secs_f64()
            );
        }
        if live >= n as u64 || kids.dead() || t0.elapsed() > timeout {
            break;
        }
    }
    eprintln!();
    let open_s = t0.elapsed().as_secs_f64();
    let live_before = kids.sum("live");
    // Let the last holds settle before the first item.
    std::thread::sleep(Duration::from_secs(1));

    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pub_thread = {
        let (published, stop) = (published.clone(), stop.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut slowest = Duration::ZERO;
            let mut seq = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64((seq - 1) as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait.min(Duration::from_millis(50)));
                    continue;
                }
                let asked = Instant::now();
                let r = publisher.item(seq);
                slowest = slowest.max(asked.elapsed());
                match r {
                    Ok(()) => {
                        published.store(seq, Ordering::SeqCst);
                        seq += 1;
                    }
                    Err(e) => {
                        // The item may be stored at the backend already:
                        // stop rather than leave a hole in the ids.
                        *errors.entry(e).or_default() += 1;
                        break;
                    }
                }
            }
            (errors, slowest)
        })
    };
    // Every subscriber has an id to come back with before the clock for
    // the steady part starts (one with none would come back as a new
    // subscriber, as EventSource does, and rightly miss the past).
    let t_first = Instant::now();
    while kids.sum("have_item") < live_before && !kids.dead() && t_first.elapsed() < timeout {
        kids.pump(Duration::from_millis(100));
    }
    let first_item_s = t_first.elapsed().as_secs_f64();
    let steady0 = backend_stats(backend);
    let t_steady = Instant::now();
    while t_steady.elapsed() < before {
        kids.pump(Duration::from_millis(100));
    }
    let steady1 = backend_stats(backend);
    let steady_s = t_steady.elapsed().as_secs_f64();
    let seq_at_drop = published.load(Ordering::SeqCst);
    let t_drop = now_ns();
    kids.tell(&format!("drop {seq_at_drop} {t_drop}\n"));
    eprintln!("[{label}] reset {n} connections after item {seq_at_drop}");
    // Wait until every one is back and caught up.
    let (mut all_back_s, mut all_caught_s) = (None, None);
    let t_storm = Instant::now();
    loop {
        kids.pump(Duration::from_millis(100));
        let (back, caught) = (kids.sum("back"), kids.sum("caught"));
        let s = t_storm.elapsed().as_secs_f64();
        if all_back_s.is_none() && back >= live_before {
            all_back_s = Some(s);
        }
        if all_caught_s.is_none() && caught >= live_before {
            all_caught_s = Some(s);
        }
        if tick.due() {
            eprint!("\r[{label} storm {s:5.1}s] back {back}/{live_before} caught up {caught}   ");
        }
        if all_caught_s.is_some() || kids.dead() || t_storm.elapsed() > timeout {
            break;
        }
    }
    eprintln!();
    let t_after = Instant::now();
    while t_after.elapsed() < after {
        kids.pump(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (pub_errors, pub_slowest) = pub_thread.join().unwrap_or_default();
    let final_seq = published.load(Ordering::SeqCst);
    kids.tell(&format!("final {final_seq}\n"));
    let t_final = Instant::now();
    while kids.sum("done") < live_before
        && !kids.dead()
        && t_final.elapsed() < Duration::from_secs(20)
    {
        kids.pump(Duration::from_millis(100));
    }
    let storm_end = backend_stats(backend);
    let results = kids.finish();
    let total = |k: &str| -> u64 { results.iter().filter_map(|r| r.get(k)?.as_u64()).sum() };
    let max = |k: &str| -> u64 {
        results
            .iter()
            .filter_map(|r| r.get(k)?.as_u64())
            .max()
            .unwrap_or(0)
    };
    let (mut back, mut caught) = (Latency::new(), Latency::new());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in &results {
        if let Some(v) = r.get("back") {
            back.add_json(v);
        }
        if let Some(v) = r.get("caught") {
            caught.add_json(v);
        }
        if let Some(Value::Object(m)) = r.get("errors") {
            for (k, v) in m {
                *errors.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }
    let out = json!({
        "mode": "storm",
        "label": label,
        "target": to.to_string(),
        "path": path,
        "subscribers": n,
        "workers": workers,
        "subscribed_before": live_before,
        "open_seconds": open_s,
        "rate": rate,
        "seq_at_drop": seq_at_drop,
        "first_item_everywhere_s": first_item_s,
        "final_seq": final_seq,
        "publish_errors": pub_errors,
        "slowest_publish_ms": pub_slowest.as_secs_f64() * 1e3,
        "lost": total("lost"),
        "subscribers_with_loss": total("subs_with_loss"),
        "max_lost_per_subscriber": max("max_lost"),
        "duplicated": total("duplicated"),
        "subscribers_with_duplicates": total("subs_with_duplicates"),
        "max_duplicated_per_subscriber": max("max_duplicated"),
        "out_of_order": total("out_of_order"),
        "received": total("received"),
        "expected": final_seq * results.iter().filter_map(|r| r.get("subs")?.as_u64()).sum::<u64>(),
        "all_back_s": all_back_s,
        "all_caught_up_s": all_caught_s,
        "not_back": total("not_back"),
        "not_caught_up": total("not_caught"),
        "back_ms": back.summary_ms(),
        "caught_up_ms": caught.summary_ms(),
        "server_closes": total("closes"),
        "connect_errors": total("connect_errors"),
        "gave_up": total("gave_up"),
        "errors": errors,
        "backend_steady_per_s": match delta(&steady1, &steady0) {
            Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| {
                (k, json!(v.as_u64().unwrap_or(0) as f64 / steady_s))
            }).collect()),
            v => v,
        },
        "backend_storm": delta(&storm_end, &steady1),
        "missing_workers": workers - results.len(),
    });
    println!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_sse_events_carrying_a_record() {
        let e = event(7, 123, 40);
        assert!(e.starts_with("id: 7\ndata: M7,123;"), "{e}");
        assert!(e.ends_with(".\n\n"), "{e}");
        let (mut tail, mut recs) = (Vec::new(), Vec::new());
        scan(&mut tail, e.as_bytes(), &mut recs);
        assert_eq!(recs, vec![(7, 123)]);
        let v: Value = serde_json::from_str(&publish_body("c", 7, &e)).unwrap();
        assert_eq!(v["items"][0]["id"], "7");
        assert_eq!(v["items"][0]["prev-id"], "6");
        assert_eq!(
            v["items"][0]["formats"]["http-stream"]["content"],
            e.as_str()
        );
        let first: Value = serde_json::from_str(&publish_body("c", 0, "x")).unwrap();
        assert!(first["items"][0].get("prev-id").is_none());
    }

    #[test]
    fn missing_items_are_counted_exactly() {
        let mut seen = Vec::new();
        for q in [1, 2, 4, 64, 65, 130, 5_000_000] {
            mark(&mut seen, q);
        }
        assert_eq!(missing(&seen, 0), 0);
        assert_eq!(missing(&seen, 2), 0);
        assert_eq!(missing(&seen, 4), 1);
        // 3, 5..=63, 66..=129: 1 + 59 + 64; 131 and 132 were never seen.
        assert_eq!(missing(&seen, 132), 1 + 59 + 64 + 2);
        assert_eq!(missing(&[], 3), 3);
    }

    #[test]
    fn worker_commands() {
        assert!(matches!(
            parse_cmd("drop 12 345\n"),
            Some(Cmd::Drop(12, 345))
        ));
        assert!(matches!(parse_cmd("final 9"), Some(Cmd::Final(9))));
        assert!(matches!(parse_cmd("stop\n"), Some(Cmd::Stop)));
        for bad in ["", "drop 1", "drop x 2", "final", "stop now", "go"] {
            assert!(parse_cmd(bad).is_none(), "{bad}");
        }
    }
}
