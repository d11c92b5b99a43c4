//! `corepin-load publish`: publishes timestamped messages at a rate, size
//! and channel count, through the GRIP HTTP publish API (corepin's control
//! port, Pushpin's publish port), corepin's control socket, or nchan's
//! publisher endpoint. `fanout` runs the same publisher.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::args::{die, Args};
use crate::http::{Ev, ResponseReader};
use crate::lockstep::Lockstep;
use crate::net::{now_ns, CpuClock};
use crate::record::{message, Latency};
use crate::subscribe::SubOpts;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST {"items": [...]}` to a GRIP publish endpoint.
    Http,
    /// `{"method":"publish","items":[...]}` lines on corepin's control socket.
    Socket,
    /// The message as the body of a POST to nchan's publisher location.
    Nchan,
}

pub const PUB_FLAGS: &[&str] = &[
    "via",
    "socket",
    "publish-path",
    "messages",
    "seconds",
    "rate",
    "size",
    "channels",
    "channel-prefix",
    "auth",
    "conns",
    "cpu-pids",
];

#[derive(Debug, Clone)]
pub struct PubOpts {
    pub via: Via,
    pub to: SocketAddr,
    /// More publish endpoints: each message goes to `to` and to every one
    /// of these (Pushpin instances have no broker; their publisher sends
    /// to each), and counts as published once all accepted it.
    pub also: Vec<SocketAddr>,
    pub socket: PathBuf,
    /// Request path; `{channel}` is replaced (nchan takes it in the URL).
    pub path: String,
    /// Stop after this many (0: only `seconds` limits).
    pub messages: usize,
    /// Stop after this long (0: only `messages` limits).
    pub seconds: f64,
    /// Messages per second (0: one after another, as fast as answered).
    pub rate: f64,
    pub size: usize,
    pub channels: usize,
    pub prefix: String,
    /// An `Authorization` header value for the publish API.
    pub auth: Option<String>,
    /// Publishers in parallel, each on its own keep-alive connection and
    /// owning every `conns`-th channel (so each channel stays in order).
    pub conns: usize,
    /// Server processes whose CPU time the run reports (per publish).
    pub cpu_pids: Vec<u32>,
    /// `fanout --lockstep`: wait before each publish until corepin holds
    /// every subscriber again (long-polls ask again after each answer).
    pub lockstep: Option<Lockstep>,
}

impl PubOpts {
    /// `to_flag` names the flag holding the publish address (`to` in
    /// `publish`, `publish-to` in `fanout`).
    pub fn from_args(a: &Args, to_flag: &str) -> PubOpts {
        let socket = a.opt::<String>("socket");
        let via = match a
            .string("via", if socket.is_some() { "socket" } else { "http" })
            .as_str()
        {
            "http" | "grip" => Via::Http,
            "socket" => Via::Socket,
            "nchan" => Via::Nchan,
            v => die(&format!("--via: '{v}' is not http, socket or nchan")),
        };
        let default_path = if via == Via::Nchan {
            "/pub?channel={channel}"
        } else {
            "/publish/"
        };
        let seconds = a.get("seconds", 0.0f64);
        // A comma-separated list: the message goes to each.
        let mut addrs: Vec<SocketAddr> = a
            .string(to_flag, "127.0.0.1:5561")
            .split(',')
            .map(|t| {
                t.trim()
                    .parse()
                    .unwrap_or_else(|_| die(&format!("--{to_flag}: '{t}' is not HOST:PORT")))
            })
            .collect();
        let to = addrs.remove(0);
        PubOpts {
            via,
            to,
            also: addrs,
            socket: PathBuf::from(socket.unwrap_or_else(|| "/tmp/corepin.sock".into())),
            path: a.string("publish-path", default_path),
            messages: a.get("messages", if seconds > 0.0 { 0 } else { 100 }),
            seconds,
            rate: a.get("rate", 0.0f64),
            size: a.get("size", 0usize),
            channels: a.get("channels", 1usize).max(1),
            prefix: a.string("channel-prefix", "bench"),
            auth: a.opt("auth"),
            conns: a.get("conns", 1usize).max(1),
            cpu_pids: a
                .opt::<String>("cpu-pids")
                .map(|l| {
                    crate::net::parse_pids(&l)
                        .unwrap_or_else(|| die(&format!("--cpu-pids: '{l}' is not a list of pids")))
                })
                .unwrap_or_default(),
            lockstep: None,
        }
    }
}

enum Link {
    /// One keep-alive connection per publish endpoint (`to`, then `also`).
    Tcp(Vec<(TcpStream, ResponseReader, SocketAddr)>),
    Unix(BufReader<UnixStream>),
}

impl Link {
    fn open(o: &PubOpts) -> Result<Link, String> {
        match o.via {
            Via::Socket => UnixStream::connect(&o.socket)
                .map(|s| Link::Unix(BufReader::new(s)))
                .map_err(|e| format!("control socket {}: {e}", o.socket.display())),
            _ => {
                let mut conns = Vec::new();
                for &addr in std::iter::once(&o.to).chain(&o.also) {
                    let s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    conns.push((s, ResponseReader::new(), addr));
                }
                Ok(Link::Tcp(conns))
            }
        }
    }

    /// Sends one publish and waits for its answer. `Ok(false)` means the
    /// server will close this connection; `Err((reason, retry))` says why
    /// it failed and whether the connection was lost.
    fn publish(
        &mut self,
        o: &PubOpts,
        channel: &str,
        content: &str,
    ) -> Result<bool, (String, bool)> {
        let item = json!({"channel": channel, "formats": {
            "http-stream": {"content": content},
            "http-response": {"body": content},
            "ws-message": {"content": content},
        }});
        match self {
            Link::Unix(r) => {
                let line = json!({"method": "publish", "items": [item]}).to_string() + "\n";
                r.get_mut()
                    .write_all(line.as_bytes())
                    .map_err(|e| (e.to_string(), true))?;
                let mut answer = String::new();
                match r.read_line(&mut answer) {
                    Ok(0) | Err(_) => return Err(("control socket closed".into(), true)),
                    Ok(_) => {}
                }
                let v: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
                if v.get("ok") == Some(&Value::Bool(true)) {
                    Ok(true)
                } else {
                    let e = v
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("bad answer");
                    Err((e.to_string(), false))
                }
            }
            Link::Tcp(conns) => {
                let (body, ctype) = if o.via == Via::Nchan {
                    (content.to_string(), "text/plain")
                } else {
                    (json!({"items": [item]}).to_string(), "application/json")
                };
                let auth = o
                    .auth
                    .as_ref()
                    .map(|a| format!("Authorization: {a}\r\n"))
                    .unwrap_or_default();
                // Sent to every endpoint first, then every answer read: the
                // endpoints work on it at the same time.
                for (s, _, addr) in conns.iter_mut() {
                    let req = format!(
                        "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                        o.path.replace("{channel}", channel),
                        body.len()
                    );
                    s.write_all(req.as_bytes())
                        .map_err(|e| (e.to_string(), true))?;
                }
                let mut keep = true;
                for (s, reader, addr) in conns.iter_mut() {
                    let mut buf = [0u8; 4096];
                    let (mut status, mut done) = (0u16, false);
                    while !done {
                        let n = match s.read(&mut buf) {
                            Ok(0) => return Err(("publish connection closed".into(), true)),
                            Ok(n) => n,
                            Err(e) => return Err((e.to_string(), true)),
                        };
                        reader
                            .feed(&buf[..n], &mut |ev| match ev {
                                Ev::Head(st) => status = st,
                                Ev::End => done = true,
                                Ev::Body(_) => {}
                            })
                            .map_err(|e| (e, true))?;
                    }
                    if !(200..300).contains(&status) {
                        let which = if o.also.is_empty() {
                            String::new()
                        } else {
                            format!(" from {addr}")
                        };
                        return Err((format!("status {status}{which}"), !reader.keep_alive()));
                    }
                    keep &= reader.keep_alive();
                }
                Ok(keep)
            }
        }
    }
}

/// What one publisher thread did.
struct Part {
    errors: u64,
    reasons: BTreeMap<String, u64>,
    latency: Latency,
    first_send: u64,
}

/// Publishes as `o` says; counts into `sent` as it goes; stops early when
/// `stop` is set. Returns the JSON result. With `conns` > 1, that many
/// threads publish at once, thread `t` taking the messages of every
/// channel `c` with `c % conns == t`, on the shared schedule.
pub fn publish(o: &PubOpts, sent: &AtomicU64, stop: &AtomicBool) -> Value {
    let cpu = CpuClock::new(o.cpu_pids.clone());
    let cpu_before = cpu.seconds();
    let started = Instant::now();
    let parts: Vec<Part> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..o.conns)
            .map(|t| scope.spawn(move || publish_part(o, t, started, sent, stop)))
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let cpu_s = cpu.seconds() - cpu_before;
    let mut latency = Latency::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let (mut errors, mut first_send) = (0u64, 0u64);
    for p in &parts {
        latency.add(&p.latency);
        errors += p.errors;
        for (k, v) in &p.reasons {
            *reasons.entry(k.clone()).or_default() += v;
        }
        if p.first_send != 0 && (first_send == 0 || p.first_send < first_send) {
            first_send = p.first_send;
        }
    }
    let published = sent.load(Ordering::Relaxed);
    let mut out = json!({
        "published": published,
        "errors": errors,
        "error_reasons": reasons,
        "seconds": secs,
        "publishes_per_sec": published as f64 / secs,
        "conns": o.conns,
        "first_send_ns": first_send,
        "request_latency_ms": latency.summary_ms(),
    });
    if !cpu.is_empty() {
        out["server_cpu_seconds"] = json!(cpu_s);
        out["server_cpu_us_per_publish"] = json!(cpu_s * 1e6 / (published.max(1) as f64));
    }
    out
}

fn publish_part(
    o: &PubOpts,
    t: usize,
    started: Instant,
    sent: &AtomicU64,
    stop: &AtomicBool,
) -> Part {
    let mut link: Option<Link> = None;
    let mut seqs = vec![0u64; o.channels];
    let mut part = Part {
        errors: 0,
        reasons: BTreeMap::new(),
        latency: Latency::new(),
        first_send: 0,
    };
    let mut j = 0usize;
    loop {
        let elapsed = started.elapsed().as_secs_f64();
        if (o.messages > 0 && j >= o.messages)
            || (o.seconds > 0.0 && elapsed >= o.seconds)
            || stop.load(Ordering::Relaxed)
        {
            break;
        }
        let c = j % o.channels;
        if c % o.conns != t {
            j += 1;
            continue;
        }
        if let Some(l) = o
            .lockstep
            .as_ref()
            .filter(|l| l.long_polls.iter().any(|n| *n > 0))
        {
            // (Only with one publisher thread: `seqs` is then every
            // channel's count.)
            if !l.wait(l.answers(&seqs), stop) {
                break;
            }
        }
        if o.rate > 0.0 {
            let due = j as f64 / o.rate;
            if due > elapsed {
                std::thread::sleep(Duration::from_secs_f64(due - elapsed));
            }
        }
        let channel = SubOpts::channel_name(&o.prefix, o.channels, c);
        let t0 = now_ns();
        if part.first_send == 0 {
            part.first_send = t0;
        }
        let content = message(seqs[c], t0, o.size);
        // One retry on a fresh connection when the old one was lost
        // (Pushpin's publish endpoint closes keep-alive connections now
        // and then).
        let mut outcome = Err((String::new(), true));
        for _ in 0..2 {
            if link.is_none() {
                match Link::open(o) {
                    Ok(l) => link = Some(l),
                    Err(e) => {
                        outcome = Err((e, false));
                        break;
                    }
                }
            }
            let Some(l) = link.as_mut() else { break };
            outcome = l.publish(o, &channel, &content);
            match &outcome {
                Ok(true) => break,
                Ok(false) => {
                    link = None;
                    break;
                }
                Err((_, lost)) => {
                    if *lost {
                        link = None;
                        continue;
                    }
                    break;
                }
            }
        }
        part.latency.record(now_ns().saturating_sub(t0));
        match outcome {
            Ok(_) => {
                seqs[c] += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Err((reason, _)) => {
                part.errors += 1;
                *part.reasons.entry(reason).or_default() += 1;
                // A refused publish does not take a sequence number, so
                // subscribers do not count it as lost.
                if part.errors >= 100 && sent.load(Ordering::Relaxed) == 0 {
                    eprintln!(
                        "\npublish: 100 errors and no success, giving up: {:?}",
                        part.reasons
                    );
                    break;
                }
            }
        }
        j += 1;
    }
    part
}

pub fn run(args: &[String]) {
    let mut spec = PUB_FLAGS.to_vec();
    spec.push("to");
    let a = Args::parse("publish", args, &spec);
    let o = PubOpts::from_args(&a, "to");
    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let h = scope.spawn(|| publish(&o, &sent, &stop));
        let t0 = Instant::now();
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(250));
            eprint!(
                "\r[publish {:5.1}s] published {}   ",
                t0.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed)
            );
        }
        eprintln!();
        h.join().unwrap_or(Value::Null)
    });
    let mut out = json!({
        "mode": "publish",
        "via": format!("{:?}", o.via).to_lowercase(),
        "channels": o.channels,
        "size": o.size,
        "rate": o.rate,
    });
    if let (Some(m), Some(r)) = (out.as_object_mut(), result.as_object()) {
        m.extend(r.clone());
    }
    println!("{out}");
    if result.get("published").and_then(Value::as_u64) == Some(0) {
        std::process::exit(1);
    }
}
