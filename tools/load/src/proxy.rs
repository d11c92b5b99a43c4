//! `corepin-load proxy`: keep-alive request throughput and latency for
//! HTTP or HTTPS. C connections spread over T threads, each sending one
//! GET, reading the whole response, and sending the next; a closed
//! connection is reopened and counted.
//!
//! `--tls CA_FILE`: HTTPS, trusting the CA certificates in that PEM file,
//! with `--sni NAME` (default `localhost`) as the name sent and verified;
//! rustls with corepin's client configuration (TLS 1.3 or 1.2, ALPN
//! http/1.1). `--per-conn N` closes each connection after N requests and
//! opens a new one (with `--per-conn 1`, one handshake per request);
//! `--resume no` turns session resumption off, so every handshake is a
//! full one. Reconnects are then the point, and not counted as such;
//! `handshakes` and `resumed` say how many of each were made.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use serde_json::json;

use crate::args::{die, Args};
use crate::http::{Ev, ResponseReader};
use crate::net::{self, now_ns, Poller};
use crate::record::Latency;
use crate::tls::{flush as flush_tls, Tls};

struct Opts {
    to: SocketAddr,
    request: Vec<u8>,
    conns: usize,
    threads: usize,
    warmup: Duration,
    duration: Duration,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// Requests per connection before it is closed and reopened (0: no
    /// limit).
    per_conn: u64,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    bytes: u64,
    status: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    reconnects: u64,
    handshakes: u64,
    resumed: u64,
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
        self.handshakes += o.handshakes;
        self.resumed += o.resumed;
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
    tls: Option<ClientConnection>,
    /// The handshake was counted.
    counted: bool,
    served: u64,
    reader: ResponseReader,
    sent_at: u64,
}

/// Sends the request on a connection (through TLS when it has it).
fn send(o: &Opts, s: &mut TcpStream, tls: Option<&mut ClientConnection>) -> std::io::Result<()> {
    match tls {
        None => net::write_all(s, &o.request),
        Some(t) => {
            t.writer().write_all(&o.request)?;
            flush_tls(t, s)
        }
    }
}

pub fn run(args: &[String]) {
    let a = Args::parse(
        "proxy",
        args,
        &[
            "to", "path", "host", "conns", "threads", "seconds", "warmup-s", "tls", "sni",
            "per-conn", "resume",
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
        tls: Tls::from_args("proxy", &a).map(|t| (t.config, t.name)),
        per_conn: a.get("per-conn", 0u64),
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
            "tls": o.tls.is_some(),
            "per_conn": o.per_conn,
            "handshakes": total.handshakes,
            "resumed": total.resumed,
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

type Opened = (TcpStream, Option<ClientConnection>);

fn connect(o: &Opts, i: usize, poller: &Poller, slot: usize) -> std::io::Result<Opened> {
    let mut s = net::connect_from(i, o.to)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    let mut tls = match &o.tls {
        None => None,
        Some((config, name)) => Some(
            ClientConnection::new(config.clone(), name.clone()).map_err(std::io::Error::other)?,
        ),
    };
    // On TLS the request waits in rustls until the handshake is done.
    send(o, &mut s, tls.as_mut())?;
    poller.add(&s, slot);
    Ok((s, tls))
}

fn thread_loop(o: &Opts, t: usize, measure_from: Instant, end: Instant) -> Tally {
    let mut poller = Poller::new();
    let mine: Vec<usize> = (t..o.conns).step_by(o.threads).collect();
    let mut tally = Tally::default();
    let mut conns: Vec<Conn> = Vec::with_capacity(mine.len());
    for (slot, &i) in mine.iter().enumerate() {
        let (s, tls) = match connect(o, i, &poller, slot) {
            Ok((s, tls)) => (Some(s), tls),
            Err(e) => {
                tally.error(format!("connect: {e}"));
                (None, None)
            }
        };
        conns.push(Conn {
            s,
            tls,
            counted: false,
            served: 0,
            reader: ResponseReader::new(),
            sent_at: now_ns(),
        });
    }
    let mut plain = vec![0u8; 1 << 16];
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
            let reader = &mut c.reader;
            let mut feed = |bytes: &[u8], tally: &mut Tally| {
                let r = reader.feed(bytes, &mut |ev| match ev {
                    Ev::Head(st) => status = st,
                    Ev::Body(b) => body += b.len() as u64,
                    Ev::End => done += 1,
                });
                r.map_err(|e| tally.error(e)).is_ok()
            };
            loop {
                let got = match c.tls.as_mut() {
                    None => s.read(&mut buf),
                    Some(t) => t.read_tls(s),
                };
                match got {
                    Ok(0) => {
                        lost = true;
                        break;
                    }
                    Ok(n) => {
                        let Some(t) = c.tls.as_mut() else {
                            if !feed(&buf[..n], &mut tally) {
                                lost = true;
                                break;
                            }
                            continue;
                        };
                        if let Err(e) = t.process_new_packets() {
                            tally.error(format!("TLS: {e}"));
                            lost = true;
                            break;
                        }
                        if !c.counted && !t.is_handshaking() {
                            c.counted = true;
                            if measuring {
                                tally.handshakes += 1;
                                if t.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                                    tally.resumed += 1;
                                }
                            }
                        }
                        loop {
                            match t.reader().read(&mut plain) {
                                Ok(0) => {
                                    lost = true;
                                    break;
                                }
                                Ok(m) => {
                                    if !feed(&plain[..m], &mut tally) {
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
                        // The handshake's last flight and the request
                        // rustls held until then.
                        if lost || flush_tls(t, s).is_err() {
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
                c.served += done as u64;
                let renew = o.per_conn > 0 && c.served >= o.per_conn;
                if !lost && !renew && c.reader.keep_alive() {
                    c.sent_at = now_ns();
                    if send(o, s, c.tls.as_mut()).is_err() {
                        lost = true;
                    }
                } else {
                    lost = true;
                    // A planned close is not a reconnect.
                    if renew && c.reader.keep_alive() {
                        c.served = u64::MAX;
                    }
                }
            }
            if lost {
                poller.remove(s);
                c.s = None;
                if measuring && c.served != u64::MAX {
                    tally.reconnects += 1;
                }
                c.served = 0;
                c.counted = false;
                c.tls = None;
                c.reader = ResponseReader::new();
                c.sent_at = now_ns();
                match connect(o, mine[slot], &poller, slot) {
                    Ok((s, tls)) => {
                        c.s = Some(s);
                        c.tls = tls;
                    }
                    Err(e) => tally.error(format!("connect: {e}")),
                }
            }
        }
    }
    tally
}
