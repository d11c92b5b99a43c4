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
