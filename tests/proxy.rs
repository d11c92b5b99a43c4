//! Black-box tests of the HTTP/1.1 reverse proxy: the real binary on port 0
//! in front of real backends, driven by raw sockets and curl.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn get_passes_through_with_forwarding_headers() {
    let b = Backend::start(|req, _| {
        let body = format!("{} {}", req.method, req.path);
        Reply::Bytes(
            format!("HTTP/1.1 200 OK\r\nX-Backend: yes\r\nConnection: X-Secret\r\nX-Secret: 1\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .into_bytes(),
        )
    });
    let cp = Corepin::start(&["--route", &b.route()]);
    let mut c = Conn::open(cp.addr());
    c.send(b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Hop\r\nX-Hop: drop me\r\nKeep-Alive: 5\r\nTE: trailers\r\nGrip-Sig: forged\r\nGrip-Hold: stream\r\nX-Forwarded-For: 10.0.0.1\r\nVia: 1.0 edge\r\nX-Keep: kept\r\n\r\n");
    let r = c.read().expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "GET /a/b?c=d");
    assert_eq!(r.header("x-backend"), Some("yes"));
    assert_eq!(
        r.header("x-secret"),
        None,
        "fields named in Connection are hop-by-hop"
    );
    assert!(r.header("via").is_some_and(|v| v.ends_with("1.1 corepin")));
    let seen = b.last();
    assert_eq!(
        seen.header("host"),
        Some("example.com"),
        "Host passes through"
    );
    assert_eq!(seen.header("x-keep"), Some("kept"));
    for gone in ["x-hop", "keep-alive", "te", "grip-hold", "connection"] {
        assert_eq!(seen.header(gone), None, "{gone} must not reach the backend");
    }
    // The client's Grip-Sig is replaced by corepin's own, signed as
    // Pushpin signs by default.
    let sig = seen.header("grip-sig").expect("corepin's Grip-Sig");
    assert!(corepin::jwt::verify(sig, b"changeme", Some("pushpin"), corepin::jwt::now()).is_ok());
    // The client's own entry is not believed by default ([forwarding]).
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("via"), Some("1.0 edge, 1.1 corepin"));
    cp.wait_stdout("\"GET /a/b?c=d\" 200 12");
}

#[test]
fn post_with_content_length_and_curl() {
    let b = Backend::start(|req, _| {
        Reply::Bytes(ok_response(&format!("got {} bytes", req.body.len())))
    });
    let cp = Corepin::start(&["--route", &b.route()]);
    let out = Command::new("curl")
        .args(["-sS", "--data-binary", "hello world", &cp.url("/post")])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got 11 bytes");
    assert_eq!(b.last().body, b"hello world");
    assert_eq!(b.last().header("content-length"), Some("11"));
}

#[test]
fn chunked_request_body_is_relayed_chunked() {
    let b = Backend::start(|req, _| Reply::Bytes(ok_response(&String::from_utf8_lossy(&req.body))));
    let cp = Corepin::start(&["--route", &b.route()]);
    let mut c = Conn::open(cp.addr());
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    let r = c.read().expect("response");
    assert_eq!(r.text(), "hello world");
    assert_eq!(b.last().header("transfer-encoding"), Some("chunked"));
    // And through curl, streaming from stdin (chunked upload).
    let mut child = Command::new("curl")
        .args(["-sS", "-T", "-", "-X", "POST", &cp.url("/up")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&vec![b'x'; 100_000])
        .expect("write");
    let out = child.wait_with_output().expect("curl");
    assert_eq!(out.stdout.len(), 100_000);
}

#[test]
fn chunked_response_is_relayed_and_decoded_for_http10() {
    let b = Backend::start(|_, _| {
        Reply::Bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\nTrailer: 1\r\n\r\n".to_vec())
    });
    let cp = Corepin::start(&["--route", &b.route()]);
    let mut c = Conn::open(cp.addr());
    let r = c.get("/");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "abcdefg");
    let r = c.get("/");
    assert_eq!(r.text(), "abcdefg", "same connection is reused");
    let text = raw(cp.addr(), b"GET / HTTP/1.0\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("chunked"), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert!(text.ends_with("\r\n\r\nabcdefg"), "{text}");
}

#[test]
fn reason_phrase_with_obs_text_gets_the_canonical_one() {
    // RFC 9112 allows obs-text (bytes 0x80-0xFF) in a reason phrase; it used
    // to panic the head parser. The client gets the status with its
    // canonical reason, and the core goes on serving.
    let b = Backend::start(|_, _| {
        Reply::Bytes(b"HTTP/1.1 404 Pas trouv\xe9\r\nContent-Length: 4\r\n\r\ngone".to_vec())
    });
    let cp = Corepin::start(&["--route", &b.route(), "--workers", "1"]);
    let mut c = Conn::open(cp.addr());
    for _ in 0..2 {
        let r = c.get("/");
        assert_eq!((r.status, r.text().as_str()), (404, "gone"));
    }
    let text = raw(
        cp.addr(),
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
}

#[test]
fn close_delimited_response_becomes_chunked() {
    let b = Backend::start(|_, _| {
        Reply::Close(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close".to_vec())
    });
    let cp = Corepin::start(&["--route", &b.route()]);
    let mut c = Conn::open(cp.addr());
    let r = c.get("/");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "until close");
    assert_eq!(
        c.get("/").text(),
        "until close",
        "client connection survives"
    );
}

#[test]
fn keep_alive_reuses_backend_connections() {
    let b = Backend::fixed("ok");
    let cp = Corepin::start(&["--route", &b.route(), "--workers", "1"]);
    let mut c = Conn::open(cp.addr());
    for _ in 0..20 {
        assert_eq!(c.get("/").text(), "ok");
    }
    assert_eq!(
        b.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one pooled upstream connection"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = Backend::start(|req, _| Reply::Bytes(ok_response(&req.path)));
    let cp = Corepin::start(&["--route", &b.route()]);
    let mut c = Conn::open(cp.addr());
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    batch.extend_from_slice(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /last HTTP/1.1\r\nHost: a\r\n\r\n");
    c.send(&batch);
    for i in 0..10 {
        assert_eq!(c.read().expect("response").text(), format!("/{i}"));
    }
    assert_eq!(c.read().expect("response").text(), "/p");
    assert_eq!(c.read().expect("response").text(), "/last");
}

#[test]
fn expect_continue_is_answered_before_the_body() {
    let b = Backend::start(|req, _| Reply::Bytes(ok_response(&format!("{}", req.body.len()))));
    let cp = Corepin::start(&["--route", &b.route()]);
    let mut c = Conn::open(cp.addr());
    c.send(b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut c.r, &mut line).expect("interim");
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    std::io::BufRead::read_line(&mut c.r, &mut line).expect("blank");
    c.send(b"data");
    assert_eq!(c.read().expect("final").text(), "4");
    assert_eq!(b.last().header("expect"), None);
}

#[test]
fn large_body_streams_with_flat_memory_and_backpressure() {
    const SIZE: u64 = 1 << 30;
    // Set when a write of the backend's finds its socket full: corepin has
    // stopped taking the body (the client reads nothing yet), or it would
    // be buffering it all and the backend would get to the end instead.
    let blocked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let b = {
        let blocked = blocked.clone();
        Backend::start(move |_, w| {
            let _ = w
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes());
            let block = vec![b'z'; 1 << 20];
            let _ = w.set_nonblocking(true);
            let (mut left, mut at) = (SIZE, 0usize);
            while left > 0 {
                let n = (block.len() - at).min(left as usize);
                match w.write(&block[at..at + n]) {
                    Ok(k) => {
                        left -= k as u64;
                        at = (at + k) % block.len();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        blocked.store(true, std::sync::atomic::Ordering::Relaxed);
                        let _ = w.set_nonblocking(false);
                    }
                    Err(_) => break,
                }
            }
            blocked.store(true, std::sync::atomic::Ordering::Relaxed);
            Reply::Done
        })
    };
    let cp = Corepin::start(&["--route", &b.route(), "--workers", "1"]);
    let base = cp.rss_kib();
    let mut s = TcpStream::connect(cp.addr()).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("write");
    // A slow start: the client reads nothing until the backend is held
    // back (or, were corepin buffering, has written everything).
    wait_until("the backend to be held back", || {
        blocked.load(std::sync::atomic::Ordering::Relaxed)
    });
    let stalled = cp.rss_kib();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut peak = 0;
    while total < SIZE + 38 {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early at {total}");
        total += n as u64;
        if total % (64 << 20) < n as u64 {
            peak = peak.max(cp.rss_kib());
        }
    }
    assert!(
        stalled < base + 8 * 1024,
        "stalled client grew corepin by {} KiB",
        stalled - base
    );
    assert!(
        peak < base + 8 * 1024,
        "streaming grew corepin from {base} to {peak} KiB"
    );
}

#[test]
fn bad_requests_get_specific_answers() {
    let b = Backend::fixed("ok");
    let cp = Corepin::start(&[
        "--route", &b.route(),
        "--config", &write_config("[limits]\nmax_head_bytes = 2048\nmax_uri_bytes = 512\nmax_headers = 20\nmax_request_body_bytes = 1000\n"),
    ]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), "HTTP/1.1 400 "),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n".to_vec(), "HTTP/1.1 413 "),
        (format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{}\r\n", "x".repeat(2000)).into_bytes(), "HTTP/1.1 413 "),
        (format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(600)).into_bytes(), "HTTP/1.1 414 "),
        (format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "h".repeat(3000)).into_bytes(), "HTTP/1.1 431 "),
        ((0..30).fold(b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec(), |mut v, i| { v.extend_from_slice(format!("X-{i}: v\r\n").as_bytes()); v.extend_from_slice(if i == 29 { b"\r\n" } else { b"" }); v }), "HTTP/1.1 431 "),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), "HTTP/1.1 501 "),
    ];
    for (req, want) in cases {
        let text = raw(cp.addr(), &req);
        assert!(
            text.starts_with(want),
            "{:?} answered {text:?}",
            String::from_utf8_lossy(&req[..req.len().min(80)])
        );
        assert!(text.contains("Connection: close"), "{text}");
        assert!(
            text.ends_with('\n') && text.contains("\r\n\r\n"),
            "short text body: {text}"
        );
    }
    // None of that disturbed a well-behaved connection.
    let mut c = Conn::open(cp.addr());
    assert_eq!(c.get("/").text(), "ok");
}

#[test]
fn no_route_is_404() {
    let b = Backend::fixed("ok");
    let cp = Corepin::start(&["--route", &format!("*,path_beg=/api {}", b.addr)]);
    let mut c = Conn::open(cp.addr());
    assert_eq!(c.get("/other").status, 404);
    assert_eq!(c.get("/api/x").text(), "ok", "404 keeps the connection");
}

#[test]
fn route_rewrites_and_host_override() {
    let b = Backend::start(|req, _| Reply::Bytes(ok_response(&req.path)));
    let cp = Corepin::start(&[
        "--route",
        &format!(
            "*,path_beg=/old/,replace_beg=/new/ {},host=backend.internal",
            b.addr
        ),
        "--route",
        &format!("*,path_beg=/strip,path_rem=6 {}", b.addr),
    ]);
    let mut c = Conn::open(cp.addr());
    assert_eq!(c.get("/old/x?y=1").text(), "/new/x?y=1");
    assert_eq!(b.last().header("host"), Some("backend.internal"));
    assert_eq!(c.get("/strip/a").text(), "/a");
}

#[test]
fn unreachable_backend_is_502_and_failover_works() {
    let dead = dead_port();
    let cp = Corepin::start(&["--route", &format!("* 127.0.0.1:{dead}")]);
    let mut c = Conn::open(cp.addr());
    let r = c.get("/");
    assert_eq!(r.status, 502);
    assert!(r.text().contains("unreachable"), "{}", r.text());
    assert_eq!(c.get("/").status, 502, "connection kept after a 502");
    drop(cp);

    let b = Backend::fixed("second");
    let cp = Corepin::start(&["--route", &format!("* 127.0.0.1:{dead} {}", b.addr)]);
    assert_eq!(Conn::open(cp.addr()).get("/").text(), "second");
}

#[test]
fn garbage_from_backend_is_502() {
    for garbage in [
        &b"SSH-2.0-OpenSSH_9.2\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"",
    ] {
        let g = garbage.to_vec();
        let b = Backend::start(move |_, _| Reply::Close(g.clone()));
        let cp = Corepin::start(&["--route", &b.route()]);
        let r = Conn::open(cp.addr()).get("/");
        assert_eq!(r.status, 502, "for {:?}", String::from_utf8_lossy(garbage));
    }
}

#[test]
fn slow_backend_is_504() {
    // The backend answers only once the test has its 504: the timeout, not
    // the backend, ended the exchange.
    let gate = Gate::new();
    let b = {
        let gate = gate.clone();
        Backend::start(move |_, _| {
            gate.wait();
            Reply::Bytes(ok_response("late"))
        })
    };
    let cp = Corepin::start(&[
        "--route",
        &b.route(),
        "--config",
        &write_config("[timeouts]\nupstream_read = 0.5\n"),
    ]);
    let started = Instant::now();
    let r = Conn::open(cp.addr()).get("/");
    let waited = started.elapsed();
    gate.open();
    assert_eq!(r.status, 504);
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
}

#[test]
fn stale_pooled_connection_is_retried_for_idempotent_requests() {
    // The backend answers the first request on each connection, then reads
    // the second and closes without a word: the pooled connection passes the
    // liveness check, and dies only once the request is on it.
    let served = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let b = Backend::start(move |req, w| {
        let peer = w.peer_addr().expect("peer");
        if served.lock().expect("lock").insert(peer) {
            Reply::Bytes(ok_response(&req.path))
        } else {
            Reply::Done
        }
    });
    let cp = Corepin::start(&["--route", &b.route(), "--workers", "1"]);
    let mut c = Conn::open(cp.addr());
    for i in 0..5 {
        assert_eq!(c.get(&format!("/{i}")).text(), format!("/{i}"));
    }
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::Relaxed), 5);
    // A POST is not replayed: the client gets 502.
    c.send(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(c.read().expect("response").status, 502);
}

/// A client that trickles its head is answered 408 once the header
/// timeout passes, however long it would go on; an idle keep-alive
/// connection is closed after the idle timeout. Both are waited for as
/// facts; the clock is checked only as a lower bound (a loaded machine can
/// delay an answer, never bring it forward). That the configured 1 s, not
/// a default (10 s and 60 s), is what acts is told by the answers coming
/// within TIMEOUT for the 408 under trickling, and for the idle close by
/// the default being longer than TIMEOUT.
#[test]
fn slowloris_gets_408_and_idle_connections_close() {
    let b = Backend::fixed("ok");
    let cp = Corepin::start(&[
        "--route",
        &b.route(),
        "--config",
        &write_config("[timeouts]\nclient_header = 1.0\nclient_idle = 1.0\n"),
    ]);
    let mut slow = TcpStream::connect(cp.addr()).expect("connect");
    let started = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .expect("write");
    // One more byte of the header value every 100 ms until corepin answers
    // (the read timeout is the pacing; the answer is the fact waited for).
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        assert!(started.elapsed() < TIMEOUT, "no answer to a slowloris");
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if slow.write_all(b"a").is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let answered = started.elapsed();
    slow.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let _ = slow.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(answered >= Duration::from_secs(1), "408 after {answered:?}");

    // Meanwhile, and after, other clients are served.
    let sent = Instant::now();
    let mut c = Conn::open(cp.addr());
    assert_eq!(c.get("/").text(), "ok");
    assert!(
        c.closed_within(TIMEOUT),
        "idle keep-alive connection closed"
    );
    let t = sent.elapsed();
    assert!(t >= Duration::from_secs(1), "closed after {t:?}");
}

#[test]
fn head_and_304_keep_declared_length() {
    let b = Backend::start(|req, _| {
        if req.path == "/304" {
            Reply::Bytes(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n".to_vec())
        } else {
            Reply::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec())
        }
    });
    let cp = Corepin::start(&["--route", &b.route()]);
    let mut c = Conn::open(cp.addr());
    c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = read_response(&mut c.r, true).expect("head response");
    assert_eq!(r.header("content-length"), Some("1234"));
    let r = c.get("/304");
    assert_eq!(r.status, 304);
    assert_eq!(c.get("/304").status, 304, "still in sync");
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    // The backend answers once corepin is draining (its /health says so);
    // one core, so the client's core is the one that answered /health.
    let gate = Gate::new();
    let b = {
        let gate = gate.clone();
        Backend::start(move |_, _| {
            gate.wait();
            Reply::Bytes(ok_response("finished"))
        })
    };
    let mut cp = Corepin::start_grip(&["--route", &b.route(), "--workers", "1"]);
    let idle = Conn::open(cp.addr());
    let addr = cp.addr();
    let in_flight = thread::spawn(move || {
        let mut c = Conn::open(addr);
        c.get("/slow")
    });
    wait_until("the request at the backend", || b.requests() >= 1);
    cp.signal(libc::SIGTERM);
    wait_until("corepin draining", || {
        cp.control("GET /health HTTP/1.1\r\nHost: c\r\n\r\n").status == 503
    });
    gate.open();
    let r = in_flight.join().expect("client thread");
    assert_eq!(r.text(), "finished");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(cp.wait_exit(TIMEOUT), Some(0));
    drop(idle);
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

#[test]
fn bad_flags_and_config_exit_2_with_one_line() {
    let bin = env!("CARGO_BIN_EXE_corepin");
    for (args, needle) in [
        (vec!["--workers", "zero"], "--workers"),
        (vec!["--listen", "nowhere"], "--listen"),
        (vec!["--route", "* nope"], "--route"),
        (vec!["--frobnicate"], "--frobnicate"),
        (vec!["--config", "/nonexistent.toml"], "--config"),
        (
            vec!["check", "--config", &write_config("lisen = []")],
            "unknown field `lisen`",
        ),
        (vec!["--log-level", "loud"], "--log-level"),
    ] {
        let out = Command::new(bin).args(&args).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = Command::new(bin)
        .args(["check", "--config", "config/corepin.toml"])
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("route: * test"));
}
