//! GRIP lifecycle, as Pushpin 1.41 runs it: a stream that falls behind a
//! channel's ids fetches its next link (`Grip-Last` says where it was), and
//! its answer continues the stream.

mod common;

use common::*;

fn seen_paths(b: &Backend) -> Vec<String> {
    b.seen
        .lock()
        .map(|v| v.iter().map(|s| s.path.clone()).collect())
        .unwrap_or_default()
}

/// A stream held with `prev-id` follows the channel's ids: an item whose
/// prev-id is its last id is delivered; one that skips ids is not, and the
/// stream fetches its next link with `Grip-Last` instead, whose body
/// continues the stream and whose prev-id it then follows.
#[test]
fn a_stream_behind_on_prev_id_fetches_its_next_link() {
    let b = Backend::start(|req, _| {
        let (channel, body) = if req.path == "/next" {
            ("c; prev-id=9", "caught-up\n")
        } else {
            ("c; prev-id=1", "start\n")
        };
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nGrip-Hold: stream\r\nGrip-Channel: {channel}\r\nGrip-Link: </next>; rel=next; timeout=120\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let cp = Corepin::start_grip(&["--route", &b.route(), "--workers", "1"]);
    let mut s = Stream::open(cp.addr(), "/s");
    assert_eq!(s.read_text(6), "start\n");
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    let item = |id: u32, prev: u32, text: &str| {
        format!(
            r#"{{"items":[{{"channel":"c","id":"{id}","prev-id":"{prev}","no-seq":true,"http-stream":{{"content":"{text}\n"}}}}]}}"#
        )
    };
    assert_eq!(cp.publish(&item(2, 1, "two")).status, 200);
    assert_eq!(s.read_text(4), "two\n");
    assert_eq!(cp.publish(&item(9, 5, "nine")).status, 200);
    assert_eq!(
        s.read_text(10),
        "caught-up\n",
        "not nine: the next link's body"
    );
    let next = b
        .seen
        .lock()
        .expect("lock")
        .iter()
        .find(|r| r.path == "/next")
        .cloned()
        .expect("next link fetched");
    assert_eq!(next.method, "GET");
    assert_eq!(next.header("grip-last"), Some("c; last-id=2"));
    assert_eq!(seen_paths(&b), ["/s", "/next"]);
    // The next link's hold set prev-id 9: 10 follows on.
    assert_eq!(cp.publish(&item(10, 9, "ten")).status, 200);
    assert_eq!(s.read_text(4), "ten\n");
}

/// `POST /recover` on the control port (and `recover` on the control
/// socket): a stream with a next link fetches it, a long-poll re-requests
/// the backend.
#[test]
fn recover_refetches_streams_and_long_polls() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let polls = std::sync::Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let b = Backend::start(move |req, _| {
        let hold = |headers: &str, body: &str| {
            Reply::Bytes(
                format!(
                    "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        };
        match req.path.as_str() {
            "/s" => hold(
                "Grip-Hold: stream\r\nGrip-Channel: s\r\nGrip-Link: </next>; rel=next; timeout=120\r\n",
                "start\n",
            ),
            "/next" => hold(
                "Grip-Hold: stream\r\nGrip-Channel: s\r\nGrip-Link: </next>; rel=next; timeout=120\r\n",
                "recovered\n",
            ),
            _ if p.fetch_add(1, Ordering::SeqCst) == 0 => {
                hold("Grip-Hold: response\r\nGrip-Channel: lp\r\n", "timeout\n")
            }
            _ => hold("", "fresh\n"),
        }
    });
    let dir = std::env::temp_dir().join(format!("corepin-recover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("c.sock");
    let sock_s = sock.display().to_string();
    let cp = Corepin::start_grip(&["--route", &b.route(), "--control-socket", &sock_s]);
    let mut s = Stream::open(cp.addr(), "/s");
    assert_eq!(s.read_text(6), "start\n");
    let addr = cp.addr();
    let poll = std::thread::spawn(move || Conn::open(addr).get("/lp"));
    wait_until("both held", || metric(&cp, "corepin_subscriptions") == 2);

    let r = cp.control("GET /recover HTTP/1.1\r\nHost: c\r\n\r\n");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = cp.control("POST /recover HTTP/1.1\r\nHost: c\r\nContent-Length: 0\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "Updated\n"));
    assert_eq!(s.read_text(10), "recovered\n");
    let r = poll.join().expect("poll");
    assert_eq!(r.text(), "fresh\n", "the long-poll asked the backend again");
    assert_eq!(polls.load(Ordering::SeqCst), 2);

    // The control socket's recover: the stream fetches its link again.
    use std::io::{BufRead, Write};
    let u = std::os::unix::net::UnixStream::connect(&sock).expect("control socket");
    u.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    (&u).write_all(b"{\"method\":\"recover\"}\n")
        .expect("write");
    let mut line = String::new();
    std::io::BufReader::new(&u)
        .read_line(&mut line)
        .expect("answer");
    assert_eq!(line.trim(), r#"{"ok":true}"#);
    assert_eq!(s.read_text(10), "recovered\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checks a Grip-Sig with gripcontrol's validate_sig and Pushpin's default
/// key, as a backend library would.
fn gripcontrol_accepts(token: &str) -> bool {
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import sys; from gripcontrol import validate_sig; sys.exit(0 if validate_sig(sys.argv[1], 'changeme') else 1)",
            token,
        ])
        .output()
        .unwrap_or_else(|e| panic!("python (run tests/run.sh): {e}"));
    out.status.success()
}

/// `Grip-Link: <...>; rel=gone`: when a held request ends (the client
/// leaves, or its long-poll is answered) corepin POSTs the link, empty,
/// without the client's fields, signed.
#[test]
fn gone_links_are_posted_when_held_requests_end() {
    let b = Backend::start(|req, _| {
        let body = match req.path.as_str() {
            p if p.starts_with("/gone/") => return Reply::Bytes(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
            "/stream" => "HTTP/1.1 200 OK\r\nGrip-Hold: stream\r\nGrip-Channel: g\r\nGrip-Link: </gone/stream>; rel=gone\r\nContent-Length: 3\r\n\r\nhi\n",
            _ => "HTTP/1.1 200 OK\r\nGrip-Hold: response\r\nGrip-Channel: gl\r\nGrip-Link: </gone/poll>; rel=gone\r\nContent-Length: 0\r\n\r\n",
        };
        Reply::Bytes(body.as_bytes().to_vec())
    });
    let cp = Corepin::start_grip(&["--route", &b.route(), "--workers", "1"]);
    let gone = |path: &str| {
        b.seen
            .lock()
            .ok()
            .and_then(|v| v.iter().find(|r| r.path == path).cloned())
    };
    let mut s = Stream::open_with(cp.addr(), "/stream", "Cookie: session=secret\r\n");
    assert_eq!(s.read_text(3), "hi\n");
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    assert!(gone("/gone/stream").is_none(), "not while held");
    drop(s);
    wait_until("gone POSTed", || gone("/gone/stream").is_some());
    let g = gone("/gone/stream").expect("gone");
    assert_eq!(g.method, "POST");
    assert!(g.body.is_empty());
    assert_eq!(g.header("content-length"), Some("0"));
    assert_eq!(g.header("cookie"), None, "none of the client's fields");
    assert!(gripcontrol_accepts(g.header("grip-sig").expect("Grip-Sig")));

    // A long-poll answered by a publish: its session ends, gone follows.
    let addr = cp.addr();
    let poll = std::thread::spawn(move || Conn::open(addr).get("/poll"));
    wait_until("long-poll held", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    cp.publish(r#"{"items":[{"channel":"gl","http-response":{"body":"done\n"}}]}"#);
    assert_eq!(poll.join().expect("poll").text(), "done\n");
    wait_until("gone POSTed", || gone("/gone/poll").is_some());
}
