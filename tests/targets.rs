//! Per-connection targets (issue 18 item 4), black-box: held connections
//! of every kind — WebSocket-over-HTTP sessions (gripcontrol backend),
//! HTTP streams and long-polls held by a GRIP backend, and WebSockets
//! passed through to a GRIP WebSocket backend — reached by the
//! Connection-Id their backend was told, over the control socket's
//! `connection` method, the control API's `POST /connection` and the
//! `corepin connection` CLI.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::*;

/// Opens a WebSocket through the over_http route; returns the client and
/// the Connection-Id the backend saw.
fn open_ws(cp: &Corepin, log: &std::path::Path, nth: usize) -> (TcpStream, String) {
    let mut s = TcpStream::connect(cp.addr()).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nAuth-Key: supersecret\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("101");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let ids = || -> Vec<String> {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut ids: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["connection_id"].as_str().map(String::from))
            .collect();
        ids.dedup();
        ids
    };
    wait_until("the backend saw the OPEN", || ids().len() > nth);
    let id = ids()[nth].clone();
    (s, id)
}

#[test]
fn publish_to_and_close_one_websocket_by_connection_id() {
    let log = std::env::temp_dir().join(format!("corepin-targets-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let backend = PyBackend::start("wsoh_backend.py", &[&log.display().to_string()]);
    let path = control_socket_path("targets");
    let sock = path.to_str().expect("path").to_string();
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("* 127.0.0.1:{},over_http", backend.port),
        "--workers",
        "2",
        "--control-socket",
        &sock,
    ]);
    let (mut a, id_a) = open_ws(&cp, &log, 0);
    let (mut b, id_b) = open_ws(&cp, &log, 1);
    assert_ne!(id_a, id_b);

    // A message to A only.
    let r = ask_control(
        &path,
        &format!(
            r#"{{"method":"connection","id":"{id_a}","ws-message":{{"content":"just you"}}}}"#
        ),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(read_frame(&mut a), (1, b"just you".to_vec()));
    // Then one to B with the CLI: B's first frame is its own.
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args([
            "connection",
            &id_b,
            "--message",
            "only b",
            "--socket",
            &sock,
        ])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read_frame(&mut b), (1, b"only b".to_vec()));

    // Close A with the CLI: a close frame with code 4000, B still open.
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args([
            "connection",
            &id_a,
            "--close",
            "--code",
            "4000",
            "--socket",
            &sock,
        ])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{out:?}");
    let (op, payload) = read_frame(&mut a);
    assert_eq!(op, 8);
    assert_eq!(&payload[..2], &4000u16.to_be_bytes());
    let r = ask_control(
        &path,
        &format!(
            r#"{{"method":"connection","id":"{id_b}","ws-message":{{"content":"still here"}}}}"#
        ),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(read_frame(&mut b), (1, b"still here".to_vec()));

    // Unknown ids are answered with the id.
    let r = ask_control(
        &path,
        r#"{"method":"connection","id":"nope","action":"close"}"#,
    );
    assert_eq!(r["ok"], false);
    assert_eq!(r["id"], "nope");
    assert!(r["error"]
        .as_str()
        .expect("error")
        .contains("no connection with Connection-Id 'nope'"));
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(["connection", "nope", "--close", "--socket", &sock])
        .output()
        .expect("cli");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'nope'"));

    // Bad requests are refused by name.
    for (line, why) in [
        (r#"{"method":"connection","id":"x"}"#, "needs a format"),
        (
            r#"{"method":"connection","action":"close"}"#,
            "\"id\" must be",
        ),
        (
            r#"{"method":"connection","id":"x","action":"close","code":1005}"#,
            "close code 1005",
        ),
        (
            r#"{"method":"connection","id":"x","action":"open"}"#,
            "unknown action",
        ),
        (
            r#"{"method":"connection","id":"x","channel":"c","action":"close"}"#,
            "unknown member 'channel'",
        ),
        (
            r#"{"method":"connection","id":"x","ws-message":{"content":"a","colour":"b"}}"#,
            "connection: ws-message.colour: unknown field",
        ),
        (
            r#"{"method":"connection","id":"x","http-response":{"reason":"a\r\nb"}}"#,
            "connection: http-response.reason: contains CR or LF",
        ),
    ] {
        let r = ask_control(&path, line);
        assert_eq!(r["ok"], false, "{line}: {r}");
        assert!(
            r["error"].as_str().expect("error").contains(why),
            "{line}: {r}"
        );
    }
}

/// `curl` POSTing `body` to the control API's `/connection`: (status, body).
fn curl_connection(cp: &Corepin, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "--data-binary",
            body,
        ])
        .arg(format!("http://{}/connection", cp.control_addr()))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.parse().expect("status"), body.to_string())
}

/// The same targets over the control HTTP API: `POST /connection` on
/// whichever core answers reaches a session on either core; an unknown id
/// is a 404 naming it; a bad body a 400 naming the member.
#[test]
fn the_http_api_publishes_to_and_closes_one_connection() {
    let log =
        std::env::temp_dir().join(format!("corepin-targets-http-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let backend = PyBackend::start("wsoh_backend.py", &[&log.display().to_string()]);
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("* 127.0.0.1:{},over_http", backend.port),
        "--workers",
        "2",
    ]);
    let (mut a, id_a) = open_ws(&cp, &log, 0);
    let (mut b, id_b) = open_ws(&cp, &log, 1);
    // Several requests, so both cores' control listeners answer some.
    for i in 0..4 {
        let (status, body) = curl_connection(
            &cp,
            &format!(r#"{{"id":"{id_a}","ws-message":{{"content":"to a {i}"}}}}"#),
        );
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            (v["ok"].clone(), v["id"].clone()),
            (true.into(), id_a.clone().into())
        );
        assert_eq!(read_frame(&mut a), (1, format!("to a {i}").into_bytes()));
        let (status, body) = curl_connection(
            &cp,
            &format!(r#"{{"id":"{id_b}","ws-message":{{"content":"to b {i}"}}}}"#),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(read_frame(&mut b), (1, format!("to b {i}").into_bytes()));
    }
    let (status, body) = curl_connection(&cp, &format!(r#"{{"id":"{id_a}","action":"close"}}"#));
    assert_eq!(status, 200, "{body}");
    assert_eq!(read_frame(&mut a).0, 8, "a close frame");
    let (status, body) = curl_connection(&cp, r#"{"id":"gone-1","action":"close"}"#);
    assert_eq!(status, 404, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["id"], "gone-1");
    assert!(v["error"]
        .as_str()
        .expect("error")
        .contains("no connection with Connection-Id 'gone-1'"));
    for (bad, why) in [
        (r#"{"id":"x","colour":"red"}"#, "unknown member 'colour'"),
        (r#"{"id":"x"}"#, "connection: needs"),
        ("not json", "invalid JSON"),
    ] {
        let (status, body) = curl_connection(&cp, bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains(why), "{bad}: {body}");
    }
    let r = cp.control("GET /connection HTTP/1.1\r\nHost: c\r\n\r\n");
    assert_eq!(r.status, 405);
}

/// A GRIP backend: `/stream...` is held as a stream on channel `s` (body
/// `start`), anything else as a long-poll on `p` (answered `timed out` at
/// its timeout). Each request's Connection-Id is in `seen`.
fn grip_backend() -> Backend {
    Backend::start(|req, _| {
        let (hold, channel, body) = if req.path.starts_with("/stream") {
            ("stream", "s", "start\n")
        } else {
            ("response", "p", "timed out\n")
        };
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nGrip-Hold: {hold}\r\nGrip-Channel: {channel}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    })
}

/// The Connection-Id corepin sent with the request for `path`.
fn cid_of(b: &Backend, path: &str) -> String {
    let find = || {
        b.seen.lock().ok().and_then(|s| {
            s.iter()
                .find(|r| r.path == path)
                .and_then(|r| r.header("connection-id").map(String::from))
        })
    };
    wait_until(
        &format!("the backend saw {path} with a Connection-Id"),
        || find().is_some(),
    );
    find().unwrap_or_default()
}

/// `curl_connection`, parsed: (status, JSON answer).
fn target(cp: &Corepin, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = curl_connection(cp, &body.to_string());
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// Opens a WebSocket to `path` (passed through to the GRIP WebSocket
/// backend); returns the client, after the 101.
fn open_passthrough(cp: &Corepin, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(cp.addr()).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("101");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Streams, long-polls and passed-through WebSockets held by GRIP
/// backends are targets too: each is sent its own message in its own
/// format, closed alone, and a request without its kind's format is
/// answered 409 naming the kind; the ids go to the core that holds them
/// (two cores), and once a hold ends its id is unknown (404).
#[test]
fn streams_long_polls_and_websockets_held_by_backends_are_targets() {
    let http = grip_backend();
    let ws = PyBackend::start("ws_echo.py", &[]);
    let path = control_socket_path("targets-kinds");
    let sock = path.to_str().expect("path").to_string();
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("*,path_beg=/gripcid 127.0.0.1:{}", ws.port),
        "--route",
        &format!("* {}", http.addr),
        "--workers",
        "2",
        "--control-socket",
        &sock,
    ]);

    // Two streams: one message each, in the http-stream format.
    let mut s1 = Stream::open(cp.addr(), "/stream/1");
    let mut s2 = Stream::open(cp.addr(), "/stream/2");
    assert_eq!(s1.read_text(6), "start\n");
    assert_eq!(s2.read_text(6), "start\n");
    let (id1, id2) = (cid_of(&http, "/stream/1"), cid_of(&http, "/stream/2"));
    assert_ne!(id1, id2);
    let r = ask_control(
        &path,
        &serde_json::json!({"method": "connection", "id": id1,
            "http-stream": {"content": "to one\n"}})
        .to_string(),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(s1.read_text(7), "to one\n");
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(["connection", &id2, "--message", "to two", "--socket", &sock])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(s2.read_text(7), "to two\n");
    // A stream takes http-stream only: a ws-message alone is refused.
    let (status, v) = target(
        &cp,
        serde_json::json!({"id": id1, "ws-message": {"content": "x"}}),
    );
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("is an HTTP stream: the request has no http-stream")),
        "{v}"
    );
    // Close stream 1 alone: its body ends; stream 2 still gets publishes.
    let (status, v) = target(&cp, serde_json::json!({"id": id1, "action": "close"}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(s1.chunk(), None, "stream 1 ended");
    cp.publish_stream("s", "all\n");
    assert_eq!(s2.read_text(4), "all\n");
    // Its id is gone with it.
    let (status, v) = target(&cp, serde_json::json!({"id": id1, "action": "close"}));
    assert_eq!(status, 404, "{v}");

    // Two long-polls: one answered with its own response, one closed
    // (answered as at its timeout).
    let mut p1 = Conn::open(cp.addr());
    p1.send(b"GET /poll/1 HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut p2 = Conn::open(cp.addr());
    p2.send(b"GET /poll/2 HTTP/1.1\r\nHost: t\r\n\r\n");
    let (pid1, pid2) = (cid_of(&http, "/poll/1"), cid_of(&http, "/poll/2"));
    // The backend has answered; the hold starts when corepin has read it.
    let to_p1 = serde_json::json!({"id": pid1,
        "http-response": {"code": 201, "headers": {"X-For": "p1"}, "body": "for p1\n"}});
    wait_until("long-poll 1 is a target", || {
        target(&cp, to_p1.clone()).0 == 200
    });
    let r = p1.read().expect("p1 answered");
    assert_eq!(
        (r.status, r.header("x-for"), r.text().as_str()),
        (201, Some("p1"), "for p1\n")
    );
    wait_until("long-poll 2 is a target", || {
        let (status, v) = target(
            &cp,
            serde_json::json!({"id": pid2, "http-stream": {"content": "x"}}),
        );
        status == 409
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("is a long-poll: the request has no http-response"))
    });
    let r = ask_control(
        &path,
        &serde_json::json!({"method": "connection", "id": pid2, "action": "close"}).to_string(),
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = p2.read().expect("p2 answered");
    assert_eq!((r.status, r.text().as_str()), (200, "timed out\n"));
    let (status, v) = target(&cp, serde_json::json!({"id": pid1, "action": "close"}));
    assert_eq!(status, 404, "an answered long-poll is no target: {v}");

    // Two WebSockets passed through to a GRIP WebSocket backend, which
    // was told each one's Connection-Id with the handshake.
    let mut w1 = open_passthrough(&cp, "/gripcid/1");
    let mut w2 = open_passthrough(&cp, "/gripcid/2");
    let cid = |w: &mut TcpStream| {
        let (op, p) = read_frame(w);
        assert_eq!(op, 1);
        let text = String::from_utf8(p).expect("text");
        assert_eq!(read_frame(w), (1, b"welcome".to_vec()));
        text.strip_prefix("cid=").expect("cid=").to_string()
    };
    let (wid1, wid2) = (cid(&mut w1), cid(&mut w2));
    assert!(!wid1.is_empty() && wid1 != wid2, "{wid1} {wid2}");
    let (status, v) = target(
        &cp,
        serde_json::json!({"id": wid1, "ws-message": {"content": "just you"},
            "http-stream": {"content": "not this"}}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(read_frame(&mut w1), (1, b"just you".to_vec()));
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args([
            "connection",
            &wid2,
            "--close",
            "--code",
            "4000",
            "--http",
            &format!("http://{}", cp.control_addr()),
        ])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{out:?}");
    let (op, payload) = read_frame(&mut w2);
    assert_eq!(op, 8);
    assert_eq!(&payload[..2], &4000u16.to_be_bytes());
    // WebSocket 1 is still subscribed: a publish to `g` reaches it.
    let r =
        cp.publish(r#"{"items":[{"channel":"g","formats":{"ws-message":{"content":"to g"}}}]}"#);
    assert_eq!(r.status, 200);
    assert_eq!(read_frame(&mut w1), (1, b"to g".to_vec()));

    // Ids that are not corepin's, or of no held connection, are 404s
    // naming the id.
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(["connection", "18a-1-1", "--message", "x", "--http"])
        .arg(format!("http://{}", cp.control_addr()))
        .output()
        .expect("cli");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("'18a-1-1'"));
    for id in ["nope", "18a-0-1", "18a-7-1"] {
        let (status, v) = target(&cp, serde_json::json!({"id": id, "action": "close"}));
        assert_eq!(status, 404, "{id}: {v}");
        assert_eq!(v["id"], id);
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("no connection with Connection-Id '{id}'"))),
            "{v}"
        );
    }
}
