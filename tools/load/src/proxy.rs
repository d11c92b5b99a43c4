//! `corepin-load proxy`: keep-alive request throughput and latency for
//! plain HTTP. C connections spread over T threads, each sending one GET,
//! reading the whole response, and sending the next; a closed connection
//! is reopened and counted.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::{die, Args};
use crate::http::{Ev, ResponseReader};
use crate::net::{self, now_ns, Poller};
use crate::record::Latency;

struct Opts {
    to: SocketAddr,
    request: Vec<u8>,
    conns: usize,
    threads: usize,
    warmup: Duration,
    duration: Duration,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    bytes: u64,
    status: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    reconnects: u64,
    latency: Latency,
}

impl Tally {
    fn error(&mut self, e: String) {
        *self.errors.entry(e).or_default() += 1;
    }

    fn add(&mut self, o: Tally) {
        self.requests += o.requests;
        self.bytes += o.bytes;
        self.reconnects += o.reconnects;
        for (k, v) in o.status {
            *self.status.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.latency.add(&o.latency);
    }
}

struct Conn {
    s: Option<TcpStream>,
    reader: ResponseReader,
    sent_at: u64,
}

pub fn run(args: &[String]) {
    let a = Args::parse(
        "proxy",
        args,
        &[
            "to", "path", "host", "conns", "threads", "seconds", "warmup-s",
        ],
    );
    let to: SocketAddr = a.get(
        "to",
        "127.0.0.1:7999".parse().unwrap_or_else(|_| die("address")),
    );
    let path = a.string("path", "/");
    let host = a.string("host", &to.to_string());
    let o = Opts {
        to,
        request: format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
        conns: a.get("conns", 100usize).max(1),
        threads: a.get("threads", 2usize).max(1),
        warmup: Duration::from_secs_f64(a.get("warmup-s", 1.0f64)),
        duration: Duration::from_secs_f64(a.get("seconds", 5.0f64)),
    };
    if o.conns > 18_000 {
        die("proxy: --conns above 18000 passes this host's open-file limit");
    }
    let start = Instant::now();
    let measure_from = start + o.warmup;
    let end = measure_from + o.duration;
    let total = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..o.threads)
            .map(|t| {
                let o = &o;
                scope.spawn(move || thread_loop(o, t, measure_from, end))
            })
            .collect();
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(500));
            let phase = if Instant::now() < measure_from {
                "warm-up"
            } else {
                "measuring"
            };
            eprint!(
                "\r[proxy {:5.1}s] {phase}   ",
                start.elapsed().as_secs_f64()
            );
        }
        eprintln!();
        let mut total = Tally::default();
        for h in handles {
            if let Ok(t) = h.join() {
                total.add(t);
            }
        }
        total
    });
    let secs = o.duration.as_secs_f64();
    let ok: u64 = total
        .status
        .iter()
        .filter(|(s, _)| (200..400).contains(*s))
        .map(|(_, n)| n)
        .sum();
    println!(
        "{}",
        json!({
            "mode": "proxy",
            "target": o.to.to_string(),
            "connections": o.conns,
            "threads": o.threads,
            "seconds": secs,
            "requests": total.requests,
            "requests_per_sec": total.requests as f64 / secs,
            "ok_responses": ok,
            "status": total.status,
            "errors": total.errors,
            "reconnects": total.reconnects,
            "body_bytes": total.bytes,
            "latency_ms": total.latency.summary_ms(),
        })
    );
    if total.requests == 0 {
        std::process::exit(1);
    }
}

fn connect(o: &Opts, i: usize, poller: &Poller, slot: usize) -> std::io::Result<TcpStream> {
    let mut s = net::connect_from(i, o.to)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    net::write_all(&mut s, &o.request)?;
    poller.add(&s, slot);
    Ok(s)
}

fn thread_loop(o: &Opts, t: usize, measure_from: Instant, end: Instant) -> Tally {
    let mut poller = Poller::new();
    let mine: Vec<usize> = (t..o.conns).step_by(o.threads).collect();
    let mut tally = Tally::default();
    let mut conns: Vec<Conn> = Vec::with_capacity(mine.len());
    for (slot, &i) in mine.iter().enumerate() {
        let s = match connect(o, i, &poller, slot) {
            Ok(s) => Some(s),
            Err(e) => {
                tally.error(format!("connect: {e}"));
                None
            }
        };
        conns.push(Conn {
            s,
            reader: ResponseReader::new(),
            sent_at: now_ns(),
        });
    }
    let mut ready = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while Instant::now() < end {
        poller.wait(10, &mut ready);
        let measuring = Instant::now() >= measure_from;
        for &token in &ready {
            let slot = token;
            let c = &mut conns[slot];
            let Some(s) = c.s.as_mut() else { continue };
            let (mut done, mut status, mut body, mut lost) = (0u32, 0u16, 0u64, false);
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        lost = true;
                        break;
                    }
                    Ok(n) => {
                        let r = c.reader.feed(&buf[..n], &mut |ev| match ev {
                            Ev::Head(st) => status = st,
                            Ev::Body(b) => body += b.len() as u64,
                            Ev::End => done += 1,
                        });
                        if let Err(e) = r {
                            tally.error(e);
                            lost = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tally.error(e.to_string());
                        lost = true;
                        break;
                    }
                }
            }
            if done > 0 {
                if measuring {
                    tally.requests += 1;
                    tally.bytes += body;
                    *tally.status.entry(status).or_default() += 1;
                    tally.latency.record(now_ns().saturating_sub(c.sent_at));
                }
                if !lost && c.reader.keep_alive() {
                    c.sent_at = now_ns();
                    if net::write_all(s, &o.request).is_err() {
                        lost = true;
                    }
                } else {
                    lost = true;
                }
            }
            if lost {
                poller.remove(s);
                c.s = None;
                if measuring {
                    tally.reconnects += 1;
                }
                c.reader = ResponseReader::new();
                c.sent_at = now_ns();
                match connect(o, mine[slot], &poller, slot) {
                    Ok(s) => c.s = Some(s),
                    Err(e) => tally.error(format!("connect: {e}")),
                }
            }
        }
    }
    tally
}
