//! Limits a careless or hostile peer runs into, black-box: slow
//! subscribers bounded in bytes and in time, the file limit and
//! `max_connections`, the control socket's threads, a backend that
//! answers before it has read the request body, and in-flight requests
//! at shutdown.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// Reads a few bytes every `every` until the server ends the connection
/// (or `TIMEOUT` passes); returns the bytes read.
fn trickle(mut s: TcpStream, chunk: usize, every: Duration) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut buf = vec![0u8; chunk];
        let mut total = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < TIMEOUT {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
            thread::sleep(every);
        }
        total
    })
}

/// `corepin_subscriber_drops_total{reason=...}` summed over cores.
fn drops(cp: &Corepin, reason: &str) -> u64 {
    let r = cp.control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n");
    r.text()
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "corepin_subscriber_drops_total{{reason=\"{reason}\""
            ))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Publishes `body` on a kept-alive control connection.
fn post_publish(c: &mut Conn, body: &str) {
    c.send(
        format!(
            "POST /publish HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let r = c.read().expect("publish answer");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Samples corepin's resident memory until stopped; yields the peak (KiB).
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler { stop, peak, handle }
    }

    fn peak_kib(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        self.peak.load(Ordering::Relaxed)
    }
}

/// A message of about 4 KB that carries its sequence number.
fn numbered(seq: usize) -> String {
    format!("{seq:08}:{}|", "x".repeat(4000))
}

/// Checks that `text` is exactly `numbered(0..n)` in order.
fn check_in_order(text: &str, n: usize) {
    let got: Vec<&str> = text.split_terminator('|').collect();
    assert_eq!(got.len(), n, "message count");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(&m[..8], format!("{i:08}"), "message {i} out of order");
    }
}

const BATCHES: usize = 300;
const PER_BATCH: usize = 50;

/// Publishes BATCHES publishes of PER_BATCH numbered items on `channel`,
/// in `format` (`http-stream` or `ws-message`): about 60 MB in all.
fn publish_batches(cp: &Corepin, channel: &str, format: &str) {
    let mut c = Conn::open(cp.control_addr());
    for b in 0..BATCHES {
        let items: Vec<String> = (0..PER_BATCH)
            .map(|i| {
                format!(
                    r#"{{"channel":"{channel}","formats":{{"{format}":{{"content":"{}"}}}}}}"#,
                    numbered(b * PER_BATCH + i)
                )
            })
            .collect();
        post_publish(&mut c, &format!(r#"{{"items":[{}]}}"#, items.join(",")));
    }
}

/// A never-reading and a trickle-reading stream subscriber, beside a
/// healthy one on the same channel, while about 60 MB is published in
/// batches (each core joins a batch into one message per subscriber, the
/// case a message-count limit did not bound): both slow ones are dropped
/// and counted, corepin's memory stays far below what it published, and
/// the healthy subscriber gets every message in order.
#[test]
fn slow_stream_subscribers_are_dropped_and_memory_stays_bounded() {
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--workers",
        "1",
        "--config",
        &write_config("[grip]\nsubscriber_queue_bytes = 262144\n[timeouts]\nclient_write = 3\n"),
    ]);
    let mut healthy = Stream::open(cp.addr(), "/stream?channel=s");
    let request = b"GET /stream?channel=s HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut never = small_window_client(cp.addr());
    never.write_all(request).expect("write");
    let mut slow = small_window_client(cp.addr());
    slow.write_all(request).expect("write");
    wait_until("three subscribers", || {
        metric(&cp, "corepin_subscriptions") == 3
    });
    let slow = trickle(slow, 1024, Duration::from_millis(200));
    let total = BATCHES * PER_BATCH;
    let reader = thread::spawn(move || {
        let want = total * numbered(0).len();
        healthy.read_text(want)
    });
    let baseline = cp.rss_kib();
    let sampler = RssSampler::start(cp.child.id());
    publish_batches(&cp, "s", "http-stream");
    let text = reader.join().expect("reader");
    let peak = sampler.peak_kib();
    check_in_order(&text, total);
    let published_kib = (total * numbered(0).len() / 1024) as u64;
    eprintln!("RSS {baseline} -> {peak} KiB; {published_kib} KiB published");
    assert!(
        peak.saturating_sub(baseline) < published_kib / 3,
        "RSS grew from {baseline} to {peak} KiB while {published_kib} KiB were published"
    );
    wait_until("both slow subscribers dropped", || {
        metric(&cp, "corepin_subscriber_drops_total") == 2
    });
    let _ = slow.join();
    drop(never);
}

/// The same for WebSockets on the test target: a never-reading and a
/// trickle-reading one are dropped, the healthy one gets every message.
#[test]
fn slow_websocket_subscribers_are_dropped_and_memory_stays_bounded() {
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--workers",
        "1",
        "--config",
        &write_config("[grip]\nsubscriber_queue_bytes = 262144\n[timeouts]\nclient_write = 3\n"),
    ]);
    let upgrade = b"GET /ws?channel=w HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let open = |s: &mut TcpStream| {
        s.write_all(upgrade).expect("write");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        assert_eq!(read_head_only(&mut r).expect("101").status, 101);
        r
    };
    let mut h = TcpStream::connect(cp.addr()).expect("connect");
    h.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut healthy = open(&mut h);
    let mut never = small_window_client(cp.addr());
    let _never_r = open(&mut never);
    let mut slow = small_window_client(cp.addr());
    let slow_r = open(&mut slow);
    wait_until("three subscribers", || {
        metric(&cp, "corepin_subscriptions") == 3
    });
    drop(slow_r);
    let slow = trickle(slow, 1024, Duration::from_millis(200));
    let total = BATCHES * PER_BATCH;
    let reader = thread::spawn(move || {
        let mut text = String::new();
        for _ in 0..total {
            let (_, p) = read_frame(&mut healthy);
            text.push_str(&String::from_utf8_lossy(&p));
        }
        text
    });
    let baseline = cp.rss_kib();
    let sampler = RssSampler::start(cp.child.id());
    publish_batches(&cp, "w", "ws-message");
    let text = reader.join().expect("reader");
    let peak = sampler.peak_kib();
    check_in_order(&text, total);
    let published_kib = (total * numbered(0).len() / 1024) as u64;
    eprintln!("RSS {baseline} -> {peak} KiB; {published_kib} KiB published");
    assert!(
        peak.saturating_sub(baseline) < published_kib / 3,
        "RSS grew from {baseline} to {peak} KiB while {published_kib} KiB were published"
    );
    wait_until("both slow subscribers dropped", || {
        metric(&cp, "corepin_subscriber_drops_total") == 2
    });
    let _ = slow.join();
    drop(never);
}

/// A write to a held connection must finish within `timeouts.client_write`
/// however the client trickles its reads: a stream and a long-poll that
/// take a few bytes now and then are dropped as stalled once their socket
/// is full (a few MB: the kernel's send buffer grows to take a good part
/// first), with a queue limit too large to be involved; a healthy
/// subscriber is untouched.
#[test]
fn a_trickling_reader_is_dropped_at_the_write_deadline() {
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--workers",
        "1",
        "--config",
        &write_config(
            "[grip]\nsubscriber_queue_bytes = 1073741824\n[timeouts]\nclient_write = 2\n[publish]\nmax_body_bytes = 16777216\n",
        ),
    ]);
    let mut healthy = Stream::open(cp.addr(), "/stream?channel=t");
    let mut stream = small_window_client(cp.addr());
    stream
        .write_all(b"GET /stream?channel=t HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut poll = small_window_client(cp.addr());
    poll.write_all(b"GET /response?channel=t HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    wait_until("three subscribers", || {
        metric(&cp, "corepin_subscriptions") == 3
    });
    let stream = trickle(stream, 512, Duration::from_millis(100));
    let poll = trickle(poll, 512, Duration::from_millis(100));
    let chunk = "z".repeat(1 << 20);
    let response = "r".repeat(6 << 20);
    // The healthy subscriber reads while the test publishes: 6 MiB do not
    // fit its socket, and a reader that waited for the publishing to end
    // would itself be a stalled one once that took over 2 s (it did, on a
    // loaded machine).
    let reader = thread::spawn(move || {
        let got = healthy.read_text(6 << 20).len();
        (healthy, got)
    });
    let mut c = Conn::open(cp.control_addr());
    post_publish(
        &mut c,
        &format!(
            r#"{{"items":[{{"channel":"t","formats":{{"http-stream":{{"content":"{chunk}"}},"http-response":{{"body":"{response}"}}}}}}]}}"#
        ),
    );
    for _ in 0..5 {
        cp.publish_stream("t", &chunk);
    }
    let (mut healthy, got) = reader.join().expect("healthy reader");
    assert_eq!(got, 6 * chunk.len());
    wait_until("both trickling readers dropped as stalled", || {
        drops(&cp, "stalled") == 2
    });
    assert_eq!(drops(&cp, "queue"), 0);
    assert!(stream.join().expect("stream") < 6 * chunk.len() as u64);
    assert!(poll.join().expect("poll") < response.len() as u64);
    cp.publish_stream("t", "still here\n");
    assert_eq!(healthy.read_text(11), "still here\n");
}

/// `corepin_connections_refused_total{reason=...}` summed over cores.
fn refused(cp: &Corepin, reason: &str) -> u64 {
    let r = cp.control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n");
    r.text()
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "corepin_connections_refused_total{{reason=\"{reason}\""
            ))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// What a new client connection gets: the response's status line, or
/// how the connection ended without one. Never a hang.
fn first_answer(addr: SocketAddr) -> String {
    use std::io::BufRead;
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let _ = s.write_all(b"GET /health-check HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut line = String::new();
    match BufReader::new(s).read_line(&mut line) {
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            "hang".into()
        }
        Err(e) => format!("error: {e}"),
        Ok(0) => "closed".into(),
        Ok(_) => line.trim_end().to_string(),
    }
}

/// Over `limits.max_connections` (all cores together) a new client gets a
/// 503 and the connection ends; it is counted; once a connection closes, a
/// new one is served again.
#[test]
fn max_connections_refuses_new_clients_with_503_and_counts_them() {
    let b = Backend::fixed("ok");
    let cp = Corepin::start_grip(&[
        "--route",
        &b.route(),
        "--workers",
        "2",
        "--config",
        &write_config("[limits]\nmax_connections = 3\n"),
    ]);
    let mut held: Vec<Conn> = (0..3).map(|_| Conn::open(cp.addr())).collect();
    for c in &mut held {
        assert_eq!(c.get("/").status, 200);
    }
    let mut extra = Conn::open(cp.addr());
    extra.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = extra.read().expect("an answer");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("max_connections"), "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    assert!(extra.closed_within(TIMEOUT));
    wait_until("the refusal counted", || {
        refused(&cp, "max_connections") == 1
    });
    // The log line may reach the test's stderr reader after the count
    // reaches /metrics: wait for it rather than look once.
    cp.wait_stderr("max_connections (3) reached");
    drop(held.pop());
    wait_until("a slot to free up", || {
        metric(&cp, "corepin_connections{kind=\"http\"") == 2
    });
    assert_eq!(Conn::open(cp.addr()).get("/").status, 200);
}

/// Started under a low file limit (`prlimit --nofile=64:64`), corepin
/// keeps /health answering and refuses the clients it has no descriptor
/// for at once (instead of leaving them unaccepted), logs the condition
/// once per 10 s with a count (not ~80 lines a second), and serves again
/// once descriptors are free. Both with an explicit `max_connections`
/// above what the file limit allows (the descriptors run out) and with
/// the default (a cap below the file limit: 503s before they run out).
#[test]
fn at_the_file_limit_health_stays_reachable_and_clients_are_refused_cleanly() {
    for (config, reason) in [
        ("[limits]\nmax_connections = 100000\n", "file_limit"),
        ("", "max_connections"),
    ] {
        let started = std::time::Instant::now();
        let cp = Corepin::start_wrapped(
            &["prlimit", "--nofile=64:64"],
            &[
                "--control-http",
                "127.0.0.1:0",
                "--route",
                "* test",
                "--workers",
                "1",
                "--config",
                &write_config(config),
            ],
            true,
        );
        // More idle connections than descriptors.
        let held: Vec<TcpStream> = (0..80)
            .map(|_| TcpStream::connect(cp.addr()).expect("connect"))
            .collect();
        wait_until("refusals", || refused(&cp, reason) >= 20);
        let health = cp.control("GET /health HTTP/1.1\r\nHost: c\r\n\r\n");
        assert_eq!(health.status, 200, "{reason}: /health");
        // The clients refused so far got a 503 or a close, not silence.
        let mut answered = 0;
        for s in &held {
            s.set_nonblocking(true).expect("nonblocking");
            let mut buf = [0u8; 12];
            match (&*s).read(&mut buf) {
                Ok(n) if buf[..n].starts_with(b"HTTP/1.1 503") => answered += 1,
                Ok(0) => answered += 1,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => answered += 1,
                _ => {}
            }
        }
        assert!(
            answered >= 20,
            "{reason}: {answered} refused clients heard so"
        );
        // A new client is answered at once: refused, or served when a
        // descriptor happens to be free (a control request just ended).
        let answer = first_answer(cp.addr());
        assert_ne!(answer, "hang", "{reason}: a new client was left waiting");
        // corepin's stderr reaches the test through a reader thread: the
        // refusal's line may still be on its way.
        let logged = || {
            cp.stderr
                .lock()
                .expect("stderr")
                .iter()
                .filter(|l| l.contains("accept failed") || l.contains("max_connections ("))
                .count() as u64
        };
        wait_until("the refusal in the log", || logged() >= 1);
        let lines = logged();
        assert!(
            lines >= 1 && lines <= 1 + started.elapsed().as_secs() / 10,
            "{reason}: {lines} log lines in {:?}",
            started.elapsed()
        );
        drop(held);
        wait_until("clients served again", || {
            first_answer(cp.addr()).starts_with("HTTP/1.1 404")
        });
    }
}

/// The threads of a process, from /proc/PID/status.
fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A thousand control socket connections at once: corepin serves 64 (one
/// thread each) and answers the others with an error line and a close; its
/// threads stay within the bound, and once connections close, new ones are
/// served.
#[test]
fn control_socket_connections_are_bounded() {
    use std::io::BufRead;
    use std::os::unix::net::UnixStream;
    const BOUND: usize = 64;
    let dir = std::env::temp_dir().join(format!("corepin-ctl-many-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("control.sock");
    let cp = Corepin::start(&[
        "--route",
        "* test",
        "--workers",
        "2",
        "--control-socket",
        path.to_str().expect("path"),
    ]);
    let pid = cp.child.id();
    let conns: Vec<UnixStream> = (0..1000)
        .map(|_| {
            let s = UnixStream::connect(&path).expect("connect");
            s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            s
        })
        .collect();
    // Every connection gets an answer to a request: served or refused.
    let mut served = 0;
    let mut refused = 0;
    for mut s in conns.iter() {
        let _ = s.write_all(b"{\"method\":\"stats\"}\n");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("an answer");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        if v["ok"] == true {
            served += 1;
        } else {
            assert!(
                v["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("too many control socket connections"),
                "{line}"
            );
            refused += 1;
        }
    }
    assert_eq!((served, refused), (BOUND, 1000 - BOUND));
    // Threads serving control connections are named corepin-ctl-conn
    // (comm keeps 15 characters); the others are corepin's own.
    let serving = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "corepin-ctl-con")
        .count();
    let during = threads(pid);
    assert_eq!(serving, BOUND, "one thread per served connection");
    assert!(
        during <= 16 + BOUND as u64,
        "{during} threads with 1000 connections open"
    );
    drop(conns);
    wait_until("a new connection to be served", || {
        let Ok(mut s) = UnixStream::connect(&path) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(TIMEOUT));
        let _ = s.write_all(b"{\"method\":\"stats\"}\n");
        let mut line = String::new();
        let _ = BufReader::new(&s).read_line(&mut line);
        line.contains("\"ok\":true")
    });
}

/// A backend that answers 413 (or 501) before reading a large request
/// body, then resets or closes the connection while corepin is still
/// sending the body: the client gets the backend's answer, as from nginx,
/// not a 502; the connection is then closed (the rest of the body is
/// still on its way). A backend that reads the body after answering
/// (`drain`) was already fine, and stays so.
#[test]
fn an_early_answer_from_the_backend_reaches_the_client() {
    for (mode, status) in [
        ("reset", 413),
        ("close", 413),
        ("drain", 413),
        ("reset", 501),
    ] {
        let b = PyBackend::start("early_answer.py", &[mode, &status.to_string()]);
        let cp = Corepin::start(&["--route", &format!("* 127.0.0.1:{}", b.port)]);
        let body_len = 8 << 20;
        let s = TcpStream::connect(cp.addr()).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut w = s.try_clone().expect("clone");
        let writer = thread::spawn(move || {
            let _ = w.write_all(
                format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {body_len}\r\n\r\n")
                    .as_bytes(),
            );
            let chunk = vec![b'u'; 64 * 1024];
            for _ in 0..body_len / chunk.len() {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r, false).expect("a response");
        assert_eq!(resp.status, status, "{mode}: {}", resp.text());
        assert_eq!(resp.text(), "refused by the backend\n", "{mode}");
        if mode != "drain" {
            // The rest of the body was never sent on: the connection ends.
            assert_eq!(resp.header("connection"), Some("close"), "{mode}");
        }
        let _ = writer.join();
    }
}

/// At SIGTERM, a request whose response has not started when the grace
/// period ends gets a 503 rather than a bare close, and corepin exits 0.
#[test]
fn a_request_still_waiting_at_the_end_of_the_grace_period_gets_503() {
    let release = Arc::new(AtomicBool::new(false));
    let r2 = release.clone();
    let b = Backend::start(move |_, _| {
        let started = std::time::Instant::now();
        while !r2.load(Ordering::Relaxed) && started.elapsed() < TIMEOUT {
            thread::sleep(Duration::from_millis(10));
        }
        Reply::Close(ok_response("too late"))
    });
    let mut cp = Corepin::start(&[
        "--route",
        &b.route(),
        "--config",
        &write_config("[timeouts]\nshutdown_grace = 1\n"),
    ]);
    let addr = cp.addr();
    let waiting = thread::spawn(move || Conn::open(addr).get("/slow"));
    wait_until("the request to reach the backend", || {
        !b.seen.lock().expect("seen").is_empty()
    });
    cp.signal(libc::SIGTERM);
    let r = waiting.join().expect("client");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.text(), "server shutting down\n");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(cp.wait_exit(TIMEOUT), Some(0));
    release.store(true, Ordering::Relaxed);
}
