//! Per-connection targets (issue 18 item 4), black-box: a WebSocket client
//! through a WebSocket-over-HTTP route (gripcontrol backend), reached by
//! its Connection-Id with the control socket's `connection` method and
//! the `corepin connection` CLI.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::*;

/// Reads one unmasked server frame: (opcode, payload).
fn frame(r: &mut impl Read) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).expect("frame head");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            r.read_exact(&mut l).expect("len");
            usize::from(u16::from_be_bytes(l))
        }
        n => usize::from(n),
    };
    let mut p = vec![0u8; len];
    r.read_exact(&mut p).expect("payload");
    (h[0] & 0x0f, p)
}

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
    assert_eq!(frame(&mut a), (1, b"just you".to_vec()));
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
    assert_eq!(frame(&mut b), (1, b"only b".to_vec()));

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
    let (op, payload) = frame(&mut a);
    assert_eq!(op, 8);
    assert_eq!(&payload[..2], &4000u16.to_be_bytes());
    let r = ask_control(
        &path,
        &format!(
            r#"{{"method":"connection","id":"{id_b}","ws-message":{{"content":"still here"}}}}"#
        ),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(frame(&mut b), (1, b"still here".to_vec()));

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
        (
            r#"{"method":"connection","id":"x"}"#,
            "needs \"ws-message\"",
        ),
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
            r#"{"method":"connection","id":"x","ws-message":{"content":"a","type":"b"}}"#,
            "unknown ws-message member 'type'",
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
        assert_eq!(frame(&mut a), (1, format!("to a {i}").into_bytes()));
        let (status, body) = curl_connection(
            &cp,
            &format!(r#"{{"id":"{id_b}","ws-message":{{"content":"to b {i}"}}}}"#),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(frame(&mut b), (1, format!("to b {i}").into_bytes()));
    }
    let (status, body) = curl_connection(&cp, &format!(r#"{{"id":"{id_a}","action":"close"}}"#));
    assert_eq!(status, 200, "{body}");
    assert_eq!(frame(&mut a).0, 8, "a close frame");
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
