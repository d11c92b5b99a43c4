//! corepin-load: a load generator for realtime proxies that speaks only
//! public protocols (HTTP streaming subscribers; GRIP or nchan publishing),
//! so it measures corepin, Pushpin and nchan the same way.
//!
//! `corepin-load fanout`: opens N stream subscribers (spread over source
//! addresses 127.0.0.2..), publishes M timestamped messages, and reports
//! delivered / lost / duplicated / out-of-order counts, delivery latency
//! percentiles and deliveries per second as JSON (a progress line goes to
//! stderr while it runs).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Debug, Clone)]
struct Opts {
    sub: SocketAddr,
    sub_path: String,
    publish: SocketAddr,
    pub_kind: String,
    pub_path: String,
    channel: String,
    subscribers: usize,
    messages: usize,
    interval_us: u64,
    timeout: Duration,
    settle: Duration,
    /// Subscribers are WebSockets (the handshake instead of a GET).
    ws: bool,
    /// Hold subscribers this long after the last delivery (memory checks).
    hold: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: corepin-load fanout --sub HOST:PORT [--sub-path /stream?channel=bench]
         --publish HOST:PORT [--pub-kind grip|nchan] [--pub-path /publish/]
         [--channel bench] [--subscribers N] [--messages M] [--interval-us U]
         [--timeout-s S] [--settle-ms MS] [--ws] [--hold-s S]
       corepin-load ws-echo --to HOST:PORT [--path /echo] [--conns C] [--seconds S]
       corepin-load echo-server [HOST:PORT]"
    );
    std::process::exit(2)
}

fn parse(args: &[String]) -> Opts {
    let mut o = Opts {
        sub: "127.0.0.1:7999".parse().unwrap_or_else(|_| usage()),
        sub_path: String::new(),
        publish: "127.0.0.1:5561".parse().unwrap_or_else(|_| usage()),
        pub_kind: "grip".into(),
        pub_path: String::new(),
        channel: "bench".into(),
        subscribers: 1000,
        messages: 100,
        interval_us: 0,
        timeout: Duration::from_secs(60),
        settle: Duration::from_millis(1000),
        ws: false,
        hold: Duration::ZERO,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--sub" => o.sub = v().parse().unwrap_or_else(|_| usage()),
            "--sub-path" => o.sub_path = v(),
            "--publish" => o.publish = v().parse().unwrap_or_else(|_| usage()),
            "--pub-kind" => o.pub_kind = v(),
            "--pub-path" => o.pub_path = v(),
            "--channel" => o.channel = v(),
            "--subscribers" => o.subscribers = v().parse().unwrap_or_else(|_| usage()),
            "--messages" => o.messages = v().parse().unwrap_or_else(|_| usage()),
            "--interval-us" => o.interval_us = v().parse().unwrap_or_else(|_| usage()),
            "--timeout-s" => {
                o.timeout = Duration::from_secs(v().parse().unwrap_or_else(|_| usage()))
            }
            "--settle-ms" => {
                o.settle = Duration::from_millis(v().parse().unwrap_or_else(|_| usage()))
            }
            "--ws" => o.ws = true,
            "--hold-s" => o.hold = Duration::from_secs(v().parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if o.sub_path.is_empty() {
        o.sub_path = if o.pub_kind == "nchan" {
            format!("/sub?channel={}", o.channel)
        } else {
            format!("/stream?channel={}", o.channel)
        };
    }
    if o.pub_path.is_empty() {
        o.pub_path = if o.pub_kind == "nchan" {
            format!("/pub?channel={}", o.channel)
        } else {
            "/publish/".into()
        };
    }
    o
}

/// One subscriber's progress.
struct Sub {
    stream: TcpStream,
    head_done: bool,
    head: Vec<u8>,
    tail: Vec<u8>,
    next: u64,
    got: u64,
    dups: u64,
    out_of_order: u64,
    last_at: u64,
}

/// Connects from 127.0.0.x to spread over source addresses.
fn connect_from(i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8);
    // SAFETY: plain socket syscalls on a descriptor this function owns
    // until it is handed to TcpStream (from_raw_fd takes ownership).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let sa = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = sa(SocketAddrV4::new(src, 0));
        let close_err = |fd| {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        };
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), 16) != 0 {
            return close_err(fd);
        }
        let SocketAddr::V4(to) = to else {
            libc::close(fd);
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        let remote = sa(to);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), 16) != 0 {
            return close_err(fd);
        }
        Ok(std::os::fd::FromRawFd::from_raw_fd(fd))
    }
}

/// Scans `data` for `M<seq>,<ns>;` records; returns (seq, ns) pairs and
/// leaves an unfinished record in `tail`.
fn scan(tail: &mut Vec<u8>, data: &[u8], out: &mut Vec<(u64, u64)>) {
    tail.extend_from_slice(data);
    let mut i = 0;
    let mut keep_from = tail.len();
    while i < tail.len() {
        if tail[i] != b'M' {
            i += 1;
            continue;
        }
        let Some(end) = tail[i..].iter().position(|&b| b == b';') else {
            keep_from = i;
            break;
        };
        let rec = &tail[i + 1..i + end];
        if let Some(comma) = rec.iter().position(|&b| b == b',') {
            let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<u64>().ok();
            if let (Some(seq), Some(ns)) = (num(&rec[..comma]), num(&rec[comma + 1..])) {
                out.push((seq, ns));
            }
        }
        i += end + 1;
    }
    tail.drain(..keep_from);
}

fn publish_connect(o: &Opts) -> TcpStream {
    let s = TcpStream::connect(o.publish).unwrap_or_else(|e| {
        eprintln!("publish: cannot connect to {}: {e}", o.publish);
        std::process::exit(1)
    });
    let _ = s.set_nodelay(true);
    s
}

/// Sends one publish request and reads its whole answer. `Err` when the
/// connection is gone; `Ok(true)` when the server will close it.
fn publish_one(s: &mut TcpStream, req: &[u8], buf: &mut [u8]) -> Result<bool, ()> {
    s.write_all(req).map_err(|_| ())?;
    let mut got = Vec::new();
    loop {
        let n = s.read(buf).map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        got.extend_from_slice(&buf[..n]);
        let Some(h) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..h]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if !head.starts_with("http/1.1 2") {
            eprintln!("publish answered: {}", head.lines().next().unwrap_or(""));
        }
        if got.len() >= h + 4 + len {
            return Ok(head.contains("connection: close") || head.starts_with("http/1.0"));
        }
    }
}

/// Publishes sequentially on a keep-alive connection, reconnecting when
/// the server closes it (Pushpin's publish endpoint does now and then).
fn publish_loop(o: Opts, sent: Arc<AtomicU64>, first_send: Arc<AtomicU64>) {
    let mut s = publish_connect(&o);
    let mut buf = vec![0u8; 4096];
    for seq in 0..o.messages as u64 {
        let t = now_ns();
        if seq == 0 {
            first_send.store(t, Ordering::Relaxed);
        }
        let msg = format!("M{seq},{t};\n");
        let body = if o.pub_kind == "nchan" {
            msg
        } else {
            serde_json::json!({"items": [{"channel": o.channel, "formats": {"http-stream": {"content": msg}, "ws-message": {"content": msg}}}]}).to_string()
        };
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            o.pub_path,
            body.len()
        );
        let close = match publish_one(&mut s, req.as_bytes(), &mut buf) {
            Ok(c) => c,
            Err(()) => {
                // The server closed between requests: once more, fresh.
                s = publish_connect(&o);
                publish_one(&mut s, req.as_bytes(), &mut buf).unwrap_or_else(|()| {
                    eprintln!("publish: connection lost");
                    std::process::exit(1)
                })
            }
        };
        if close {
            s = publish_connect(&o);
        }
        sent.fetch_add(1, Ordering::Relaxed);
        if o.interval_us > 0 {
            std::thread::sleep(Duration::from_micros(o.interval_us));
        }
    }
}

fn fanout(o: Opts) {
    EPOCH.get_or_init(Instant::now);
    // SAFETY: epoll_create1 returns a new descriptor or -1.
    let ep = unsafe { libc::epoll_create1(0) };
    assert!(ep >= 0, "epoll_create1");
    let mut subs: Vec<Sub> = Vec::with_capacity(o.subscribers);
    let req = if o.ws {
        format!("GET {} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", o.sub_path)
    } else {
        format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", o.sub_path)
    };
    for i in 0..o.subscribers {
        let mut s = match connect_from(i, o.sub) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("subscriber {i}: {e}");
                std::process::exit(1);
            }
        };
        let _ = s.write_all(req.as_bytes());
        let _ = s.set_nonblocking(true);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: registering a valid fd with a valid epoll instance.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
        subs.push(Sub {
            stream: s,
            head_done: false,
            head: Vec::new(),
            tail: Vec::new(),
            next: 0,
            got: 0,
            dups: 0,
            out_of_order: 0,
            last_at: 0,
        });
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3).unwrap_or_else(|_| usage());
    let mut buf = vec![0u8; 1 << 16];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut recs = Vec::new();
    let expected = (o.subscribers * o.messages) as u64;
    let mut delivered = 0u64;
    let mut heads = 0usize;
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let first_send = Arc::new(AtomicU64::new(0));
    let mut publisher: Option<std::thread::JoinHandle<()>> = None;
    let mut heads_at: Option<Instant> = None;
    let mut publish_started: Option<Instant> = None;
    let stop = AtomicBool::new(false);
    let mut last_progress = Instant::now();
    let mut last_delivery_ns = 0u64;
    let mut bad_status = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        if heads == o.subscribers && heads_at.is_none() {
            heads_at = Some(Instant::now());
        }
        if publisher.is_none() && heads_at.is_some_and(|t| t.elapsed() >= o.settle) {
            publish_started = Some(Instant::now());
            let (o2, s2, f2) = (o.clone(), sent.clone(), first_send.clone());
            publisher = Some(std::thread::spawn(move || publish_loop(o2, s2, f2)));
        }
        if delivered >= expected && publisher.as_ref().is_some_and(|p| p.is_finished()) {
            break;
        }
        let subscribe_stuck = publish_started.is_none() && started.elapsed() > o.timeout;
        if subscribe_stuck || publish_started.is_some_and(|t| t.elapsed() > o.timeout) {
            eprintln!("\ntimeout: stopping");
            break;
        }
        // SAFETY: events has room for its length; ep is valid.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50) };
        for ev in events.iter().take(n.max(0) as usize) {
            let i = ev.u64 as usize;
            let sub = &mut subs[i];
            loop {
                match sub.stream.read(&mut buf) {
                    Ok(0) => {
                        // SAFETY: deregistering a registered fd.
                        unsafe {
                            libc::epoll_ctl(
                                ep,
                                libc::EPOLL_CTL_DEL,
                                sub.stream.as_raw_fd(),
                                std::ptr::null_mut(),
                            )
                        };
                        break;
                    }
                    Ok(k) => {
                        let data = &buf[..k];
                        if !sub.head_done {
                            sub.head.extend_from_slice(data);
                            let Some(h) = sub.head.windows(4).position(|w| w == b"\r\n\r\n") else {
                                continue;
                            };
                            sub.head_done = true;
                            heads += 1;
                            let status =
                                String::from_utf8_lossy(&sub.head[..sub.head.len().min(12)])
                                    .into_owned();
                            if !status.starts_with("HTTP/1.1 200")
                                && !status.starts_with("HTTP/1.1 101")
                            {
                                *bad_status.entry(status).or_insert(0u64) += 1;
                            }
                            let rest = sub.head.split_off(h + 4);
                            sub.head = Vec::new();
                            let now = now_ns();
                            recs.clear();
                            scan(&mut sub.tail, &rest, &mut recs);
                            record(
                                sub,
                                &recs,
                                now,
                                &mut hist,
                                &mut delivered,
                                &mut last_delivery_ns,
                            );
                            continue;
                        }
                        let now = now_ns();
                        recs.clear();
                        scan(&mut sub.tail, data, &mut recs);
                        record(
                            sub,
                            &recs,
                            now,
                            &mut hist,
                            &mut delivered,
                            &mut last_delivery_ns,
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
        if last_progress.elapsed() > Duration::from_secs(1) {
            last_progress = Instant::now();
            eprint!(
                "\rsubscribed {heads}/{} sent {}/{} delivered {delivered}/{expected}   ",
                o.subscribers,
                sent.load(Ordering::Relaxed),
                o.messages
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!();
    if !o.hold.is_zero() {
        eprintln!("holding {heads} subscribers for {:?}", o.hold);
        std::thread::sleep(o.hold);
    }
    let dups: u64 = subs.iter().map(|s| s.dups).sum();
    let ooo: u64 = subs.iter().map(|s| s.out_of_order).sum();
    let complete = subs.iter().filter(|s| s.got == o.messages as u64).count();
    let first = first_send.load(Ordering::Relaxed);
    let span_ns = last_delivery_ns.saturating_sub(first).max(1);
    let ms = |ns: u64| ns as f64 / 1e6;
    let out = serde_json::json!({
        "mode": "fanout",
        "subscribers": o.subscribers,
        "subscribed": heads,
        "bad_status": bad_status,
        "messages": o.messages,
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "duplicated": dups,
        "out_of_order": ooo,
        "complete_subscribers": complete,
        "first_publish_to_last_delivery_ms": ms(span_ns),
        "deliveries_per_sec": delivered as f64 / (span_ns as f64 / 1e9),
        "latency_ms": {
            "p50": ms(hist.value_at_quantile(0.5)),
            "p99": ms(hist.value_at_quantile(0.99)),
            "p999": ms(hist.value_at_quantile(0.999)),
            "max": ms(hist.max()),
        },
    });
    println!("{out}");
}

fn record(
    sub: &mut Sub,
    recs: &[(u64, u64)],
    now: u64,
    hist: &mut Histogram<u64>,
    delivered: &mut u64,
    last: &mut u64,
) {
    for &(seq, ns) in recs {
        if seq < sub.next {
            sub.dups += 1;
            continue;
        }
        if seq > sub.next {
            sub.out_of_order += 1;
        }
        sub.next = seq + 1;
        sub.got += 1;
        sub.last_at = now;
        *delivered += 1;
        *last = (*last).max(now);
        let _ = hist.record(now.saturating_sub(ns).max(1));
    }
}

/// `ws-echo --url HOST:PORT --path /p --conns C --seconds S`: each
/// connection sends a timestamped text message and waits for its echo,
/// again and again; reports round trips per second and latency.
fn ws_echo(args: &[String]) {
    let mut addr: SocketAddr = "127.0.0.1:7999".parse().unwrap_or_else(|_| usage());
    let (mut path, mut conns, mut seconds) = ("/".to_string(), 50usize, 5u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--to" => addr = v().parse().unwrap_or_else(|_| usage()),
            "--path" => path = v(),
            "--conns" => conns = v().parse().unwrap_or_else(|_| usage()),
            "--seconds" => seconds = v().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    EPOCH.get_or_init(Instant::now);
    // SAFETY: epoll_create1 returns a new descriptor or -1.
    let ep = unsafe { libc::epoll_create1(0) };
    let mut socks = Vec::new();
    let mut tails: Vec<Vec<u8>> = vec![Vec::new(); conns];
    let mut heads = vec![false; conns];
    let hs = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let send = |s: &mut TcpStream, seq: u64| {
        let mut f = Vec::with_capacity(48);
        corepin::codec::ws::write_frame(
            &mut f,
            true,
            corepin::codec::ws::Opcode::Text,
            format!("M{seq},{};", now_ns()).as_bytes(),
            Some([7, 7, 7, 7]),
        );
        let _ = s.set_nonblocking(false);
        let _ = s.write_all(&f);
        let _ = s.set_nonblocking(true);
    };
    for i in 0..conns {
        let mut s = connect_from(i, addr).unwrap_or_else(|e| {
            eprintln!("ws-echo: {e}");
            std::process::exit(1)
        });
        let _ = s.set_nodelay(true);
        let _ = s.write_all(hs.as_bytes());
        let _ = s.set_nonblocking(true);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: registering a valid fd.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
        socks.push(s);
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap_or_else(|_| usage());
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    let mut buf = vec![0u8; 1 << 16];
    let mut recs = Vec::new();
    let mut seq = 0u64;
    let mut trips = 0u64;
    let mut started: Option<Instant> = None;
    let mut failed = 0usize;
    loop {
        if let Some(t) = started {
            if t.elapsed() >= Duration::from_secs(seconds) {
                break;
            }
        } else if heads.iter().all(|h| *h) {
            started = Some(Instant::now());
            for s in socks.iter_mut() {
                send(s, seq);
                seq += 1;
            }
        }
        // SAFETY: events has room for its length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in events.iter().take(n.max(0) as usize) {
            let i = ev.u64 as usize;
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        let mut data = &buf[..k];
                        if !heads[i] {
                            tails[i].extend_from_slice(data);
                            let Some(h) = tails[i].windows(4).position(|w| w == b"\r\n\r\n") else {
                                continue;
                            };
                            if !tails[i].starts_with(b"HTTP/1.1 101") {
                                failed += 1;
                            }
                            heads[i] = true;
                            let rest = tails[i].split_off(h + 4);
                            tails[i].clear();
                            recs.clear();
                            scan(&mut tails[i], &rest, &mut recs);
                            data = &[];
                        }
                        let now = now_ns();
                        recs.clear();
                        scan(&mut tails[i], data, &mut recs);
                        for &(_, ns) in &recs {
                            let _ = hist.record(now.saturating_sub(ns).max(1));
                            if started.is_some() {
                                trips += 1;
                                send(&mut socks[i], seq);
                                seq += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    let secs = started.map_or(1.0, |t| t.elapsed().as_secs_f64());
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({
            "mode": "ws-echo", "connections": conns, "handshake_failures": failed,
            "round_trips": trips, "round_trips_per_sec": trips as f64 / secs,
            "latency_ms": {"p50": ms(hist.value_at_quantile(0.5)), "p99": ms(hist.value_at_quantile(0.99)), "max": ms(hist.max())},
        })
    );
}

mod echo;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fanout") => fanout(parse(&args[1..])),
        Some("ws-echo") => ws_echo(&args[1..]),
        Some("echo-server") => echo::run(args.get(1).map_or("127.0.0.1:0", String::as_str)),
        _ => usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_records_across_framing_and_splits() {
        let stream = b"e\r\nM1,100;\n\r\ne\r\nM2,200;\n\r\n";
        for cut in 0..stream.len() {
            let mut tail = Vec::new();
            let mut out = Vec::new();
            scan(&mut tail, &stream[..cut], &mut out);
            scan(&mut tail, &stream[cut..], &mut out);
            assert_eq!(out, vec![(1, 100), (2, 200)], "cut {cut}");
        }
    }
}
