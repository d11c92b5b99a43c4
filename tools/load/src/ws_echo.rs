//! `corepin-load ws-echo`: WebSocket round trips. Each connection sends a
//! timestamped text message, waits for its echo and sends the next;
//! reports round trips per second and their latency. `--tls CA_FILE`
//! (with `--sni`, `--resume`, as in `proxy`) makes it wss.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corepin::codec::ws::{self, Opcode, Reader, Received, Role};
use serde_json::json;

use crate::args::{die, Args};
use crate::http::{ws_events, Ev, ResponseReader};
use crate::net::{now_ns, Poller};
use crate::record::{message, scan, Latency};
use crate::tls::{Stream, Tls, TLS_FLAGS};

struct Conn {
    s: Stream,
    http: ResponseReader,
    ws: Option<Reader>,
    pending: Vec<u8>,
    tail: Vec<u8>,
    failed: bool,
}

fn send(s: &mut Stream, seq: u64, size: usize) -> bool {
    let mut f = Vec::with_capacity(size + 16);
    let m = message(seq, now_ns(), size);
    ws::write_frame(&mut f, true, Opcode::Text, m.as_bytes(), Some([7, 7, 7, 7]));
    s.write_all(&f).is_ok()
}

pub fn run(args: &[String]) {
    let mut spec = vec!["to", "path", "conns", "seconds", "size"];
    spec.extend(TLS_FLAGS);
    let a = Args::parse("ws-echo", args, &spec);
    let tls = Tls::from_args("ws-echo", &a);
    let to: SocketAddr = a.get(
        "to",
        "127.0.0.1:7999".parse().unwrap_or_else(|_| die("address")),
    );
    let path = a.string("path", "/");
    let conns = a.get("conns", 50usize).max(1);
    let seconds = a.get("seconds", 5.0f64);
    let size = a.get("size", 0usize);
    let mut poller = Poller::new();
    let hs = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let mut cs = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut s = Stream::connect(i, to, tls.as_ref())
            .unwrap_or_else(|e| die(&format!("ws-echo: connect {to}: {e}")));
        if let Err(e) = s.write_all(hs.as_bytes()) {
            die(&format!("ws-echo: {e}"));
        }
        poller.add(&s, i);
        cs.push(Conn {
            s,
            http: ResponseReader::new(),
            ws: None,
            pending: Vec::new(),
            tail: Vec::new(),
            failed: false,
        });
    }
    let mut latency = Latency::new();
    let mut tls_errors = std::collections::BTreeMap::new();
    let mut ready = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut recs = Vec::new();
    let (mut seq, mut trips) = (0u64, 0u64);
    let mut started: Option<Instant> = None;
    let handshake_deadline = Instant::now() + Duration::from_secs(30);
    let mut last_progress = Instant::now();
    loop {
        let answered = cs.iter().filter(|c| c.ws.is_some() || c.failed).count();
        match started {
            Some(t) if t.elapsed().as_secs_f64() >= seconds => break,
            Some(_) => {}
            None if answered == conns || Instant::now() > handshake_deadline => {
                started = Some(Instant::now());
                for c in cs.iter_mut().filter(|c| c.ws.is_some()) {
                    c.failed |= !send(&mut c.s, seq, size);
                    seq += 1;
                }
            }
            None => {}
        }
        if last_progress.elapsed() > Duration::from_millis(500) {
            last_progress = Instant::now();
            eprint!("\r[ws-echo] open {answered}/{conns} round trips {trips}   ");
        }
        poller.wait(50, &mut ready);
        for &token in &ready {
            let c = &mut cs[token];
            if c.failed {
                continue;
            }
            loop {
                let n = match c.s.read(&mut buf) {
                    Ok(0) => {
                        c.failed = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            // A TLS failure, said once per kind.
                            *tls_errors.entry(e.to_string()).or_insert(0u64) += 1;
                        }
                        c.failed = true;
                        break;
                    }
                };
                let mut data = &buf[..n];
                if c.ws.is_none() {
                    // Bytes after the 101 head are the first frames.
                    let (mut status, pending) = (0, &mut c.pending);
                    let r = c.http.feed(data, &mut |ev| match ev {
                        Ev::Head(s) => status = s,
                        Ev::Body(b) => pending.extend_from_slice(b),
                        Ev::End => {}
                    });
                    if r.is_err() || (status != 0 && status != 101) {
                        c.failed = true;
                        break;
                    }
                    if status == 101 {
                        c.ws = Some(Reader::new(Role::Client, 16 << 20));
                    }
                    data = &[];
                }
                let Some(reader) = c.ws.as_mut() else {
                    continue;
                };
                let (tail, s, failed) = (&mut c.tail, &mut c.s, &mut c.failed);
                let r = ws_events(reader, &mut c.pending, data, &mut |ev| {
                    match ev {
                        Received::Message(_, m) => {
                            recs.clear();
                            scan(tail, &m, &mut recs);
                            let now = now_ns();
                            for &(_, ns) in &recs {
                                latency.record(now.saturating_sub(ns));
                                if started.is_some() {
                                    trips += 1;
                                    *failed |= !send(s, seq, size);
                                    seq += 1;
                                }
                            }
                        }
                        Received::Close(..) => *failed = true,
                        _ => {}
                    }
                    !*failed
                });
                c.failed |= r.is_err();
            }
            if c.failed {
                // Level-triggered: a closed socket would be ready forever.
                poller.remove(&c.s);
            }
        }
    }
    eprintln!();
    let secs = started.map_or(1.0, |t| t.elapsed().as_secs_f64());
    let failed = cs.iter().filter(|c| c.ws.is_none()).count();
    println!(
        "{}",
        json!({
            "mode": "ws-echo", "target": to.to_string(), "path": path,
            "connections": conns, "handshake_failures": failed,
            "closed": cs.iter().filter(|c| c.failed && c.ws.is_some()).count(),
            "round_trips": trips, "round_trips_per_sec": trips as f64 / secs,
            "tls": tls.is_some(), "errors": tls_errors,
            "latency_ms": latency.summary_ms(),
        })
    );
    if trips == 0 {
        std::process::exit(1);
    }
}
