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
