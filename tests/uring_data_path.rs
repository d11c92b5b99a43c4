//! Client connections over corepin's own io_uring (`data_path = "uring"`):
//! the setting is refused by name when unknown, and a keep-alive proxy,
//! a held stream fanned out to many subscribers, a long-poll and a
//! WebSocket passthrough all work over the ring with real clients. (The
//! whole suite runs over the ring with `COREPIN_TEST_DATA_PATH=uring`.)

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use common::*;

/// Runs the binary to completion (bounded); returns (exit code, stderr).
fn run_bin(args: &[&str]) -> (Option<i32>, String) {
    run_bin_env(args, &[])
}

/// `run_bin` with extra environment variables.
fn run_bin_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corepin");
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("corepin did not exit");
        }
        thread::sleep(POLL);
    };
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    (status.code(), err)
}

#[test]
fn an_unknown_data_path_is_refused_by_name() {
    let file = write_config("data_path = \"epoll\"\n");
    let (code, err) = run_bin(&["check", "--config", &file]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(": data_path: 'epoll' is not a data path (glommio or uring)"),
        "{err}"
    );
    let (code, err) = run_bin(&["check", "--config", &file, "--data-path", "uring"]);
    assert_eq!(code, Some(0), "the flag replaces the file's value: {err}");
    let (code, err) = run_bin(&[
        "check",
        "--config",
        "config/corepin.toml",
        "--data-path",
        "Uring\r\n",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim_end(),
        "corepin: --data-path: 'Uring\\r\\n' is not a data path (glommio or uring)"
    );
    let file = write_config("data_path = \"uring\"\n");
    let (code, err) = run_bin(&["check", "--config", &file]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_fanout_trace_setting_other_than_0_or_1_is_refused_by_name() {
    let file = write_config("data_path = \"uring\"\n");
    let (code, err) = run_bin_env(&["--config", &file], &[("COREPIN_FANOUT_TRACE", "yes\r\n")]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim_end(),
        "corepin: COREPIN_FANOUT_TRACE must be 1 (trace each fan-out) or 0, not \"yes\\r\\n\""
    );
}

/// corepin on one core over the ring, routing everything to `b`.
fn on_one_ring_core(b: &Backend) -> Corepin {
    Corepin::start(&[
        "--route",
        &b.route(),
        "--data-path",
        "uring",
        "--workers",
        "1",
    ])
}

#[test]
fn keep_alive_requests_are_proxied_over_the_ring() {
    let b = Backend::fixed("through the ring");
    let cp = on_one_ring_core(&b);
    cp.wait_stderr("data path: uring");
    let mut c = Conn::open(cp.addr());
    for _ in 0..50 {
        let r = c.get("/ka");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "through the ring");
    }
    // The backend side is on the ring too: connected through it, kept
    // alive and reused (one backend connection for the 50 requests).
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(c);
    let mut cp = cp;
    cp.signal(libc::SIGTERM);
    assert_eq!(cp.wait_exit(TIMEOUT), Some(0));
    let line = cp.wait_stderr("io_uring data path:");
    assert!(line.contains(" 1 backend connects"), "{line}");
    // A large response (many provided buffers' worth) arrives whole.
    let big: &'static str = Box::leak("x".repeat(300_000).into_boxed_str());
    let b = Backend::fixed(big);
    let cp = Corepin::start(&["--route", &b.route(), "--data-path", "uring"]);
    assert_eq!(Conn::open(cp.addr()).get("/big").text().len(), 300_000);
}

#[test]
fn backend_faults_over_the_ring_are_answered() {
    // A backend that resets the connection on /reset (SO_LINGER 0, then
    // close: an RST, not a FIN) and answers everything else.
    let b = Backend::start(|req, w| {
        if req.path == "/reset" {
            let _ = socket2::SockRef::from(&*w).set_linger(Some(std::time::Duration::ZERO));
            return Reply::Done;
        }
        Reply::Bytes(ok_response("fine"))
    });
    let cp = Corepin::start(&["--route", &b.route(), "--data-path", "uring"]);
    let mut c = Conn::open(cp.addr());
    assert_eq!(c.get("/ok").text(), "fine");
    let r = c.get("/reset");
    assert_eq!(r.status, 502, "{}", r.text());
    // The client connection and the core are fine: the next request gets a
    // fresh backend connection.
    assert_eq!(c.get("/ok").text(), "fine");
    // A backend nobody listens on: refused through the ring's connect.
    let dead = dead_port();
    let cp = Corepin::start(&[
        "--route",
        &format!("* 127.0.0.1:{dead}"),
        "--data-path",
        "uring",
    ]);
    let mut c = Conn::open(cp.addr());
    let r = c.get("/");
    assert_eq!(r.status, 502);
    assert!(r.text().contains("unreachable"), "{}", r.text());
}

#[test]
fn a_publish_fans_out_to_many_streams_over_the_ring() {
    let mut cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--data-path",
        "uring",
        "--workers",
        "1",
    ]);
    let n = 200;
    let rounds = 10;
    let mut streams: Vec<Stream> = (0..n)
        .map(|_| Stream::open(cp.addr(), "/stream?channel=fan"))
        .collect();
    wait_until("every stream subscribed", || {
        metric(&cp, "corepin_subscriptions") == n
    });
    // Each publish is read by every stream before the next, so each is a
    // fan-out of its own (not coalesced with the next per connection).
    for i in 0..rounds {
        let msg = format!("message {i}\n");
        cp.publish_stream("fan", &msg);
        for s in streams.iter_mut() {
            assert_eq!(s.read_text(msg.len()), msg);
        }
    }
    drop(streams);
    // The ring's own account at exit: a fan-out's sends go to the kernel
    // together, so there are far fewer submissions than sends (without
    // batching there would be at least one per send).
    cp.signal(libc::SIGTERM);
    assert_eq!(cp.wait_exit(TIMEOUT), Some(0));
    let line = cp.wait_stderr("io_uring data path:");
    let num = |after: &str| -> u64 {
        line.split(after)
            .next()
            .and_then(|s| s.split_whitespace().last())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no count before {after:?} in {line}"))
    };
    let sends = num(" sends");
    let enters = num(" enters");
    eprintln!("{line}");
    assert!(sends >= n * rounds, "{line}");
    assert!(enters * 2 < sends, "{line}");
}

#[test]
fn a_long_poll_is_answered_over_the_ring() {
    let cp = Corepin::start_grip(&["--route", "* test", "--data-path", "uring"]);
    let addr = cp.addr();
    let held = thread::spawn(move || {
        let mut c = Conn::open(addr);
        c.get("/response?channel=lp")
    });
    wait_until("the long-poll subscribed", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    let body = r#"{"items":[{"channel":"lp","formats":{"http-response":{"body":"answered\n"}}}]}"#;
    assert_eq!(cp.publish(body).status, 200);
    let r = held.join().expect("client");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "answered\n");
}

#[test]
fn websocket_passthrough_echo_over_the_ring() {
    let b = PyBackend::start("ws_echo.py", &[]);
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("* 127.0.0.1:{}", b.port),
        "--data-path",
        "uring",
    ]);
    let url = format!("ws://127.0.0.1:{}/echo", cp.port);
    let out = Command::new(python())
        .arg(root().join("tests/clients/ws_client.py"))
        .arg(&url)
        .args([
            "--send", "hello", "--send", "wörld", "--recv", "2", "--close", "1000",
        ])
        .output()
        .expect("ws client");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("client output: {text}"));
    assert_eq!(r["status"], 101);
    assert_eq!(r["received"], serde_json::json!(["hello", "wörld"]));
    assert_eq!(r["close"][0], 1000);
}

/// The count just before `after` in the ring's exit line.
fn count_before(line: &str, after: &str) -> u64 {
    line.split(after)
        .next()
        .and_then(|s| s.split_whitespace().last())
        .and_then(|s| s.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no count before {after:?} in {line}"))
}

/// On the ring, client connections are accepted by the core's multishot
/// accept (no accept submission and no descriptor duplication per
/// connection): a new connection per request is served every time, each
/// is counted by the ring, and one armed accept serves them all.
#[test]
fn client_connections_are_accepted_through_the_ring() {
    let b = Backend::fixed("accepted by the ring");
    let mut cp = on_one_ring_core(&b);
    let n = 200;
    for _ in 0..n {
        let r = Conn::open(cp.addr()).get("/");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "accepted by the ring");
    }
    cp.signal(libc::SIGTERM);
    assert_eq!(cp.wait_exit(TIMEOUT), Some(0));
    let line = cp.wait_stderr("io_uring data path:");
    eprintln!("{line}");
    assert!(count_before(&line, " accepted") >= n, "{line}");
    assert!(count_before(&line, " accepts armed") < n / 4, "{line}");
    assert_eq!(count_before(&line, " of them one-shot"), 0, "{line}");
    assert_eq!(count_before(&line, " accept errors"), 0, "{line}");
}

/// The ring's accept at the process's file limit (`prlimit --nofile=64:64`
/// on the child): EMFILE is logged once (per 10 s, with a count), the
/// clients it has no descriptor for are refused with a 503 or a close
/// (never left hanging), /health stays reachable, and once descriptors
/// are free again new clients are served. Out of descriptors the ring
/// accepts one connection at a time (an armed multishot would take the
/// descriptor the accept loop frees from its reserve to refuse a client).
#[test]
fn at_the_file_limit_the_ring_accept_refuses_cleanly_and_recovers() {
    let started = Instant::now();
    let config = write_config("[limits]\nmax_connections = 100000\n");
    let mut cp = Corepin::start_wrapped(
        &["prlimit", "--nofile=64:64"],
        &[
            "--control-http",
            "127.0.0.1:0",
            "--route",
            "* test",
            "--data-path",
            "uring",
            "--workers",
            "1",
            "--config",
            &config,
        ],
        true,
    );
    let refused = |cp: &Corepin| -> u64 {
        let r = cp.control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n");
        metric_sum(
            &r.text(),
            "corepin_connections_refused_total{reason=\"file_limit\"",
        )
    };
    // More idle connections than descriptors.
    let held: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(cp.addr()).expect("connect"))
        .collect();
    wait_until("refusals", || refused(&cp) >= 10);
    let health = cp.control("GET /health HTTP/1.1\r\nHost: c\r\n\r\n");
    assert_eq!(health.status, 200);
    // The refused clients heard so: a 503 or the end of the stream.
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
    assert!(answered >= 10, "{answered} refused clients heard so");
    let logged = || {
        cp.stderr
            .lock()
            .expect("stderr")
            .iter()
            .filter(|l| l.contains("accept failed"))
            .count() as u64
    };
    wait_until("the file limit in the log", || logged() >= 1);
    let line = cp.wait_stderr("accept failed");
    assert!(line.contains("Too many open files"), "{line}");
    let lines = logged();
    assert!(
        lines <= 1 + started.elapsed().as_secs() / 10,
        "{lines} log lines in {:?}",
        started.elapsed()
    );
    drop(held);
    // Descriptors free again: a new client is served (a 404 from the
    // test route for an unknown path), through the ring's accept.
    wait_until("clients served again", || {
        raw(
            cp.addr(),
            b"GET /nothing-here HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .starts_with("HTTP/1.1 404")
    });
    cp.signal(libc::SIGTERM);
    assert_eq!(cp.wait_exit(TIMEOUT), Some(0));
    let line = cp.wait_stderr("io_uring data path:");
    eprintln!("{line}");
    assert!(count_before(&line, " accept errors") >= 1, "{line}");
    assert!(count_before(&line, " of them one-shot") >= 1, "{line}");
    assert!(count_before(&line, " accepted") >= 80, "{line}");
}

/// A held stream on the ring whose socket takes only a small window at a
/// time (`SO_RCVBUF` 4 KiB): a large send to it completes short, and it
/// takes whatever else is sent meanwhile only as it reads.
fn small_window_stream(addr: std::net::SocketAddr, path: &str) -> Stream {
    let s = small_window_client(addr);
    let mut conn = Conn {
        w: s.try_clone().expect("clone"),
        r: std::io::BufReader::new(s),
    };
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    let head = read_head_only(&mut conn.r).expect("stream head");
    Stream { conn, head }
}

/// Publishes `n` messages on `channel`, each `size` bytes of one letter
/// (`a`, `b`, ... `z`, `a`, ...) ending in a newline; returns them.
fn publish_letters(cp: &Corepin, channel: &str, n: usize, size: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut m = String::from(char::from(b'a' + (i % 26) as u8)).repeat(size - 1);
            m.push('\n');
            cp.publish_stream(channel, &m);
            m
        })
        .collect()
}

/// On the ring, a publish to a held stream whose task waits idle is sent
/// straight from the core's fan-out (no queue, no task woken) when the
/// core's previous delivery was not moments before, and every case that
/// is not that one falls back to the queue and the task, in order: a stream whose first large send completed short (its reader
/// takes 4 KiB at a time) gets the messages published while that send is
/// in flight through its task, behind it, and reads all of them whole and
/// in order, as do the streams that kept up.
#[test]
fn a_fan_out_sends_to_idle_streams_directly_and_in_order_past_a_short_send() {
    let config = write_config(
        "[grip]\nsubscriber_queue_bytes = 67108864\n[timeouts]\nclient_write = 60\n[publish]\nmax_body_bytes = 8388608\n",
    );
    let mut cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--data-path",
        "uring",
        "--workers",
        "1",
        "--config",
        &config,
    ]);
    let n = 8;
    let mut streams: Vec<Stream> = (0..n)
        .map(|_| Stream::open(cp.addr(), "/stream?channel=direct"))
        .collect();
    let mut slow = small_window_stream(cp.addr(), "/stream?channel=direct");
    wait_until("every stream subscribed", || {
        metric(&cp, "corepin_subscriptions") == n as u64 + 1
    });
    // Small messages, each read by the healthy streams before the next:
    // each finds every socket idle.
    let mut want = Vec::new();
    for i in 0..5 {
        let msg = format!("small {i}\n");
        cp.publish_stream("direct", &msg);
        for s in streams.iter_mut() {
            assert_eq!(s.read_text(msg.len()), msg);
        }
        want.push(msg);
    }
    // A large one while the slow stream reads nothing, more than its
    // socket's buffers hold (tcp_wmem's maximum is 4 MiB): the send to it
    // completes short and the ring sends the rest as the reader takes it;
    // meanwhile the next two find the socket busy and are queued.
    let big = 6 << 20;
    let mut bigs = publish_letters(&cp, "direct", 1, big);
    bigs.push("queued one\n".into());
    bigs.push("queued two\n".into());
    cp.publish_stream("direct", &bigs[1]);
    cp.publish_stream("direct", &bigs[2]);
    for s in streams.iter_mut() {
        for m in &bigs {
            assert!(s.read_text(m.len()) == *m, "a healthy stream's messages");
        }
    }
    want.extend(bigs);
    let total: usize = want.iter().map(String::len).sum();
    let got = slow.read_text(total);
    assert_eq!(got.len(), total);
    assert!(
        got == want.concat(),
        "the slow stream's messages, whole and in order"
    );
    // It is a stream like the others again: the next publish reaches all.
    cp.publish_stream("direct", "after\n");
    for s in streams.iter_mut().chain(std::iter::once(&mut slow)) {
        assert_eq!(s.read_text(6), "after\n");
    }
    drop(streams);
    drop(slow);
    cp.signal(libc::SIGTERM);
    assert_eq!(cp.wait_exit(TIMEOUT), Some(0));
    let line = cp.wait_stderr("io_uring data path:");
    eprintln!("{line}");
    let direct = count_before(&line, " sent straight from a fan-out");
    // The first publish went straight from the fan-out to every stream:
    // the core had delivered nothing before it and each socket was idle
    // (its head sent and read). Later ones may too, or be queued when
    // they follow the previous delivery closely (`subs::DIRECT_QUIET`).
    assert!(direct >= n as u64, "{line}");
    assert!(count_before(&line, " short)") >= 1, "{line}");
}

/// Streams reset (an RST, SO_LINGER 0) while a run of publishes fans out
/// to them over the ring: a direct send to a reset socket fails there and
/// the stream's task ends it; the other streams get every message, in
/// order, and the next publishes still reach them.
#[test]
fn streams_reset_during_a_fan_out_over_the_ring_leave_the_others_whole() {
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--data-path",
        "uring",
        "--workers",
        "1",
    ]);
    let n = 60;
    let streams: Vec<Stream> = (0..n)
        .map(|_| Stream::open(cp.addr(), "/stream?channel=rst"))
        .collect();
    wait_until("every stream subscribed", || {
        metric(&cp, "corepin_subscriptions") == n as u64
    });
    let (mut kept, reset): (Vec<_>, Vec<_>) = streams
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let rounds = 20;
    let msgs: Vec<String> = (0..rounds).map(|i| format!("rst message {i}\n")).collect();
    let publisher = {
        let msgs = msgs.clone();
        let body = |m: &str| {
            serde_json::json!({"items":[{"channel":"rst","formats":{"http-stream":{"content":m}}}]})
                .to_string()
        };
        let bodies: Vec<String> = msgs.iter().map(|m| body(m)).collect();
        let control = cp.control_addr();
        thread::spawn(move || {
            for b in bodies {
                let mut c = Conn::open(control);
                c.send(
                    format!(
                        "POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                        b.len()
                    )
                    .as_bytes(),
                );
                assert_eq!(c.read().expect("publish answered").status, 200);
            }
        })
    };
    // The resets, while the publishes fan out.
    for (_, s) in reset {
        socket2::SockRef::from(&s.conn.w)
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("linger");
        drop(s);
    }
    let want = msgs.concat();
    for (_, s) in kept.iter_mut() {
        assert_eq!(s.read_text(want.len()), want);
    }
    publisher.join().expect("publisher");
    wait_until("the reset streams unsubscribed", || {
        metric(&cp, "corepin_subscriptions") == kept.len() as u64
    });
    cp.publish_stream("rst", "still here\n");
    for (_, s) in kept.iter_mut() {
        assert_eq!(s.read_text(11), "still here\n");
    }
}

/// A subscriber that never reads, beside a healthy one, on the ring: its
/// first messages go straight from the fan-out while its socket takes
/// them, then its socket is busy, so the rest are queued and the
/// slow-subscriber policy holds as before: it is dropped once its queue
/// passes the byte limit while its socket is full, and counted; the
/// healthy one gets every message in order.
#[test]
fn a_slow_stream_on_the_ring_is_dropped_by_its_queue_limit() {
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--data-path",
        "uring",
        "--workers",
        "1",
        "--config",
        &write_config("[grip]\nsubscriber_queue_bytes = 65536\n[timeouts]\nclient_write = 60\n"),
    ]);
    let mut healthy = Stream::open(cp.addr(), "/stream?channel=slow");
    let never = small_window_stream(cp.addr(), "/stream?channel=slow");
    wait_until("two subscribers", || {
        metric(&cp, "corepin_subscriptions") == 2
    });
    // Far more than the kernel's socket buffers hold (tcp_wmem's maximum
    // is 4 MiB), so the never-reading stream's socket fills.
    let size = 64 * 1024;
    let count = 160;
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..count {
            got.push(healthy.read_text(size));
        }
        (got, healthy)
    });
    let sent = publish_letters(&cp, "slow", count, size);
    let (got, mut healthy) = reader.join().expect("reader");
    assert!(
        got == sent,
        "the healthy stream's messages, whole and in order"
    );
    wait_until("the slow subscriber dropped", || {
        metric(&cp, "corepin_subscriber_drops_total") == 1
    });
    wait_until("the healthy one left alone", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    cp.publish_stream("slow", "still here\n");
    assert_eq!(healthy.read_text(11), "still here\n");
    drop(never);
}
