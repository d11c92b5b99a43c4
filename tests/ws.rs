//! WebSockets through corepin with real clients (Python `websockets`,
//! wscat) and real backends (a Python `websockets` server; a
//! WebSocket-over-HTTP backend built on gripcontrol's WebSocketContext).

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn client(url: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(root().join("tests/clients/ws_client.py"))
        .arg(url)
        .args(args)
        .output()
        .expect("ws client");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "client output: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A `ws_client.py` run in the background, its interpreter up.
struct Running {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

/// Starts `ws_client.py` with `args` and returns once it says `ready`
/// (its interpreter and imports are up, it is about to connect), so what
/// the test then waits for is corepin's work, not a Python start on a
/// loaded machine.
fn spawn_client(url: &str, args: &[&str]) -> Running {
    use std::io::BufRead;
    let mut child = Command::new(python())
        .arg(root().join("tests/clients/ws_client.py"))
        .arg(url)
        .arg("--ready")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("ws client");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    assert_eq!(line.trim(), "ready", "ws_client.py did not start");
    Running { child, out }
}

impl Running {
    /// Waits for the client to finish; its JSON output.
    fn join(mut self) -> serde_json::Value {
        let mut text = String::new();
        let _ = self.out.read_to_string(&mut text);
        let _ = self.child.wait();
        serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("client output: {text}"))
    }
}

/// Runs wscat; its stdin stays open until it exits (wscat quits at the
/// end of its input, before a slow handshake completes).
fn wscat(url: &str, args: &[&str]) -> String {
    let mut child = Command::new("node")
        .arg(root().join("tests/clients/node_modules/wscat/bin/wscat"))
        .args(["--no-color", "-c", url])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wscat");
    let stdin = child.stdin.take();
    let mut out = String::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out);
    let _ = child.wait();
    drop(stdin);
    out
}

/// Opens a raw WebSocket (handshake done) for protocol-violation tests.
fn raw_ws(addr: std::net::SocketAddr, path: &str) -> (TcpStream, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let head = read_head_only(&mut r).expect("handshake answer");
    assert_eq!(head.status, 101);
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    (s, r)
}

/// Reads frames until a close frame; returns its code.
fn close_code(r: &mut BufReader<TcpStream>) -> u16 {
    loop {
        let (op, p) = read_frame(r);
        if op == 8 {
            return u16::from_be_bytes([p[0], p[1]]);
        }
    }
}

fn masked(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    corepin::codec::ws::write_frame(
        &mut f,
        true,
        match op {
            1 => corepin::codec::ws::Opcode::Text,
            _ => corepin::codec::ws::Opcode::Binary,
        },
        payload,
        Some([1, 2, 3, 4]),
    );
    f
}

#[test]
fn passthrough_echo_with_python_and_wscat() {
    let b = PyBackend::start("ws_echo.py", &[]);
    let cp = Corepin::start_grip(&["--route", &format!("* 127.0.0.1:{}", b.port)]);
    let url = format!("ws://127.0.0.1:{}/echo", cp.port);
    let r = client(
        &url,
        &[
            "--send", "hello", "--send", "wörld", "--recv", "2", "--close", "1000",
        ],
    );
    assert_eq!(r["status"], 101);
    assert_eq!(r["received"], serde_json::json!(["hello", "wörld"]));
    assert_eq!(r["close"][0], 1000);
    let out = wscat(&url, &["-x", "from wscat", "-w", "1"]);
    assert!(out.contains("from wscat"), "{out}");
}

#[test]
fn passthrough_grip_extension_control_and_publish() {
    let b = PyBackend::start("ws_echo.py", &[]);
    let cp = Corepin::start_grip(&["--route", &format!("* 127.0.0.1:{}", b.port)]);
    let url = format!("ws://127.0.0.1:{}/grip", cp.port);
    let control = cp.control_addr();
    let publisher = publish_when_subscribed(
        control,
        1,
        r#"{"items":[{"channel":"g","formats":{"ws-message":{"content":"published"}}}]}"#,
    );
    let r = client(
        &url,
        &["--send", "ping me", "--recv", "3", "--close", "1000"],
    );
    assert_eq!(publisher.join().expect("publisher"), 200);
    // m: prefixes stripped, c: messages consumed, unprefixed dropped. The
    // backend subscribes before its welcome, and the publish goes out once
    // the subscription is counted: it is not ordered with the welcome or
    // the echo.
    let mut received: Vec<String> = r["received"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    received.sort();
    assert_eq!(received, ["ping me", "published", "welcome"], "{r}");
}

#[test]
fn backend_close_and_backend_gone() {
    let b = PyBackend::start("ws_echo.py", &[]);
    let cp = Corepin::start_grip(&["--route", &format!("* 127.0.0.1:{}", b.port)]);
    let r = client(&format!("ws://127.0.0.1:{}/bye", cp.port), &[]);
    assert_eq!(r["close"][0], 4001);
    let (mut s, mut rd) = raw_ws(cp.addr(), "/echo");
    drop(b);
    s.write_all(&masked(1, b"anyone?")).ok();
    let code = close_code(&mut rd);
    assert!(code == 1011 || code == 1001, "{code}");
}

#[test]
fn protocol_violations_get_close_codes() {
    let cp = Corepin::start_grip(&["--route", "* test"]);
    // Unmasked client frame: 1002.
    let (mut s, mut r) = raw_ws(cp.addr(), "/ws");
    s.write_all(&[0x81, 0x02, b'h', b'i']).expect("write");
    assert_eq!(close_code(&mut r), 1002);
    // Invalid UTF-8 in a text message: 1007.
    let (mut s, mut r) = raw_ws(cp.addr(), "/ws");
    s.write_all(&masked(1, &[0xc3, 0x28])).expect("write");
    assert_eq!(close_code(&mut r), 1007);
    // Oversize message: 1009.
    let (mut s, mut r) = raw_ws(cp.addr(), "/ws");
    let mut big = vec![0x82u8, 0xff];
    big.extend_from_slice(&(2u64 << 20).to_be_bytes());
    big.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&big).expect("write");
    assert_eq!(close_code(&mut r), 1009);
    // Garbage after the handshake (reserved bits, unknown opcode): 1002.
    let (mut s, mut r) = raw_ws(cp.addr(), "/ws");
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    assert_eq!(close_code(&mut r), 1002);
    // Bad handshakes.
    let text = raw(cp.addr(), b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
    assert!(
        text.starts_with("HTTP/1.1 426") && text.contains("Sec-WebSocket-Version: 13"),
        "{text}"
    );
    let text = raw(cp.addr(), b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // Others are unharmed.
    let r = client(
        &format!("ws://127.0.0.1:{}/ws?channel=x", cp.port),
        &["--close", "1000"],
    );
    assert_eq!(r["close"][0], 1000);
}

#[test]
fn ws_messages_reach_subscribers_on_all_cores() {
    let cp = Corepin::start_grip(&["--route", "* test", "--workers", "2"]);
    let url = format!("ws://127.0.0.1:{}/ws?channel=all", cp.port);
    // Twenty connections from one Python process (twenty interpreters take
    // longer to start than any wait here on a loaded machine).
    let clients = spawn_client(&url, &["--clients", "20", "--recv", "3"]);
    // Every client has connected and subscribed before the first publish.
    wait_until("20 subscribers", || {
        metric(&cp, "corepin_subscriptions") == 20
    });
    for body in [
        r#"{"items":[{"channel":"all","formats":{"ws-message":{"content":"one"}}}]}"#,
        r#"{"items":[{"channel":"all","formats":{"ws-message":{"content-bin":"AAE="}}}]}"#,
        r#"{"items":[{"channel":"all","formats":{"ws-message":{"content":"three"}}}]}"#,
        r#"{"items":[{"channel":"all","formats":{"ws-message":{"action":"close","code":4000,"reason":"bye"}}}]}"#,
    ] {
        assert_eq!(cp.publish(body).status, 200);
    }
    let all = clients.join();
    let all = all.as_array().expect("a list of 20");
    assert_eq!(all.len(), 20);
    for r in all {
        assert_eq!(
            r["received"],
            serde_json::json!(["one", "bin:0001", "three"])
        );
        assert_eq!(r["close"], serde_json::json!([4000, "bye"]));
    }
}

fn read_log(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn websocket_over_http_with_gripcontrol_backend() {
    let log = std::env::temp_dir().join(format!("corepin-wsoh-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let b = PyBackend::start("wsoh_backend.py", &[&log.display().to_string()]);
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("* 127.0.0.1:{},over_http", b.port),
        "--config",
        &{
            let p = std::env::temp_dir().join(format!("corepin-wsoh-{}.toml", std::process::id()));
            std::fs::write(&p, "[grip]\nsig_key = \"wskey\"\n").expect("config");
            p.display().to_string()
        },
    ]);
    let url = format!("ws://127.0.0.1:{}/chat", cp.port);

    // Without the key the backend's 403 and JSON body reach the client.
    let r = client(&url, &[]);
    assert_eq!(r["status"], 403);
    assert!(r["body"]
        .as_str()
        .unwrap_or("")
        .contains("Invalid authentication credentials"));

    // With it: echo, publish to the subscribed channel, server-side close.
    // The publisher waits for the subscription from the moment the client's
    // interpreter is up.
    let running = spawn_client(
        &url,
        &[
            "-H",
            "Auth-Key: supersecret",
            "--send",
            "hi",
            "--send",
            "there",
            "--recv",
            "3",
            "--send",
            "close me",
        ],
    );
    let publisher = publish_when_subscribed(
        cp.control_addr(),
        1,
        r#"{"items":[{"channel":"room","formats":{"ws-message":{"content":"to the room"}}}]}"#,
    );
    let r = running.join();
    assert_eq!(
        r["close"][0], 4002,
        "the backend's CLOSE event closes the client: {r}"
    );
    assert_eq!(publisher.join().expect("publisher"), 200);
    let got: Vec<String> = r["received"]
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        got.contains(&"echo: hi".to_string())
            && got.contains(&"echo: there".to_string())
            && got.contains(&"to the room".to_string()),
        "{got:?}"
    );

    // A client that vanishes: DISCONNECT reaches the backend.
    let (s, _) = {
        let mut s = TcpStream::connect(cp.addr()).expect("connect");
        s.write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nAuth-Key: supersecret\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("write");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        assert_eq!(read_head_only(&mut r).expect("101").status, 101);
        (s, r)
    };
    drop(s);
    wait_until("DISCONNECT at the backend", || {
        read_log(&log)
            .iter()
            .any(|e| e["events"] == serde_json::json!(["DISCONNECT"]))
    });

    let entries = read_log(&log);
    let accepted: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["auth_key"] == "supersecret")
        .collect();
    assert!(accepted.len() >= 3, "{entries:?}");
    for e in &accepted {
        assert_eq!(e["content_type"], "application/websocket-events");
        assert!(e["connection_id"].as_str().is_some_and(|c| !c.is_empty()));
        let sig = e["grip_sig"].as_str().expect("Grip-Sig on every request");
        assert!(corepin::jwt::verify(sig, b"wskey", Some("pushpin"), corepin::jwt::now()).is_ok());
    }
    assert_eq!(accepted[0]["events"], serde_json::json!(["OPEN"]));
    // Later requests of the session echo the meta the backend set.
    let cid = accepted[0]["connection_id"].clone();
    assert!(
        accepted
            .iter()
            .filter(|e| e["connection_id"] == cid)
            .skip(1)
            .all(|e| e["meta"]["user"] == "alice"),
        "{accepted:?}"
    );
    // Client messages arrive in order.
    let texts: Vec<String> = accepted
        .iter()
        .filter(|e| e["connection_id"] == cid)
        .flat_map(|e| e["contents"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c.as_str().map(String::from))
        .filter(|c| !c.is_empty())
        .collect();
    let pos = |m: &str| texts.iter().position(|t| t == m);
    assert!(
        pos("hi") < pos("there") && pos("there") < pos("close me"),
        "{texts:?}"
    );
}

#[test]
fn websocket_over_http_backend_gone_closes_1011() {
    let log = std::env::temp_dir().join(format!("corepin-wsoh-gone-{}.jsonl", std::process::id()));
    let b = PyBackend::start("wsoh_backend.py", &[&log.display().to_string()]);
    let cp = Corepin::start_grip(&["--route", &format!("* 127.0.0.1:{},over_http", b.port)]);
    let mut s = TcpStream::connect(cp.addr()).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nAuth-Key: supersecret\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    assert_eq!(read_head_only(&mut r).expect("101").status, 101);
    drop(b);
    s.write_all(&masked(1, b"hello?")).expect("write");
    assert_eq!(close_code(&mut r), 1011);
}

/// `Keep-Alive-Interval` below the minimum is raised to it, and an empty
/// request goes out after that long without one. The minimum is lowered
/// to 2 s here (`timeouts.ws_keep_alive_min`; 20 s by default) so the test
/// does not wait 20 s; the backend asks for 1 s.
#[test]
fn websocket_over_http_keep_alive_interval_sends_empty_requests() {
    let log = std::env::temp_dir().join(format!("corepin-wsoh-ka-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let b = PyBackend::start("wsoh_backend.py", &[&log.display().to_string()]);
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("* 127.0.0.1:{},over_http", b.port),
        "--config",
        &write_config("[timeouts]\nws_keep_alive_min = 2\n"),
    ]);
    cp.wait_stderr("timeouts.ws_keep_alive_min = 2: WebSocket-over-HTTP backends may ask");
    let mut s = TcpStream::connect(cp.addr()).expect("connect");
    // Before the session's first request: its keep-alive cannot be due
    // earlier than 2 s after this.
    let before = std::time::Instant::now();
    s.write_all(b"GET /chat?ka=1 HTTP/1.1\r\nHost: t\r\nAuth-Key: supersecret\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    assert_eq!(read_head_only(&mut r).expect("101").status, 101);
    wait_until("a keep-alive request", || read_log(&log).len() >= 2);
    let waited = before.elapsed();
    let entries = read_log(&log);
    assert_eq!(
        entries[1]["events"],
        serde_json::json!([]),
        "an empty request: {entries:?}"
    );
    assert_eq!(entries[1]["connection_id"], entries[0]["connection_id"]);
    assert!(
        waited >= Duration::from_secs(2),
        "nothing before the 2 s minimum (1 s was asked): {waited:?}"
    );
}

/// A published close reaches every WebSocket-over-HTTP client as a close
/// frame *and* the end of the connection, without waiting for the
/// backend's answer to the session's last event. The backend here holds
/// its answers to CLOSE until every client has reported; corepin used to
/// keep each connection open until that answer came, so a client (which
/// waits for the server to end the TCP connection, as RFC 6455 asks) saw
/// its close late or, with a backend slow enough, not at all.
#[test]
fn published_close_reaches_every_over_http_client_while_the_backend_is_slow() {
    use std::io::BufRead;
    const CLIENTS: usize = 50;
    let dir = std::env::temp_dir().join(format!("corepin-wsoh-close-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let release = dir.join("release");
    let b = PyBackend::start(
        "wsoh_backend.py",
        &[
            &dir.join("log.jsonl").display().to_string(),
            "--hold",
            &release.display().to_string(),
        ],
    );
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("* 127.0.0.1:{},over_http", b.port),
        "--workers",
        "2",
    ]);
    for round in 0..5 {
        let _ = std::fs::remove_file(&release);
        let mut child = Command::new(python())
            .arg(root().join("tests/clients/ws_many.py"))
            .arg(format!("ws://127.0.0.1:{}/chat?channel=r{round}", cp.port))
            .arg(CLIENTS.to_string())
            .args(["-H", "Auth-Key: supersecret"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("ws_many.py");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let mut next_line = || {
            line.clear();
            out.read_line(&mut line).expect("client output");
            line.trim().to_string()
        };
        assert_eq!(next_line(), "open");
        wait_until("every client subscribed", || {
            metric(&cp, "corepin_subscriptions") == CLIENTS as u64
        });
        let hello = format!(
            r#"{{"items":[{{"channel":"r{round}","formats":{{"ws-message":{{"content":"hello"}}}}}}]}}"#
        );
        assert_eq!(cp.publish(&hello).status, 200);
        assert_eq!(next_line(), "received");
        let close = format!(
            r#"{{"items":[{{"channel":"r{round}","formats":{{"ws-message":{{"action":"close","code":4000,"reason":"bye"}}}}}}]}}"#
        );
        assert_eq!(cp.publish(&close).status, 200);
        let report: serde_json::Value = serde_json::from_str(&next_line()).expect("client report");
        std::fs::write(&release, b"").expect("release the backend");
        let _ = child.wait();
        let closes = report["closes"].as_array().expect("closes");
        let missed = closes
            .iter()
            .filter(|c| **c != serde_json::json!([4000, "bye"]))
            .count();
        assert_eq!(
            missed, 0,
            "round {round}: {missed} of {CLIENTS} clients missed the close: {report}"
        );
        assert!(report["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .all(|m| m == "hello"));
        // The sessions end once the backend has their CLOSE.
        wait_until("the sessions to end", || {
            metric(&cp, "corepin_subscriptions") == 0
        });
    }
}

/// While a session's request is in flight to a slow backend, publishes
/// still reach the client, and a published close ends the connection at
/// once; the backend hears of the close once it has answered.
#[test]
fn publishes_and_close_reach_an_over_http_client_while_its_request_is_in_flight() {
    let dir = std::env::temp_dir().join(format!("corepin-wsoh-inflight-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (log, release) = (dir.join("log.jsonl"), dir.join("release"));
    let b = PyBackend::start(
        "wsoh_backend.py",
        &[
            &log.display().to_string(),
            "--hold",
            &release.display().to_string(),
        ],
    );
    let cp = Corepin::start_grip(&["--route", &format!("* 127.0.0.1:{},over_http", b.port)]);
    let mut s = TcpStream::connect(cp.addr()).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(b"GET /chat?channel=busy HTTP/1.1\r\nHost: t\r\nAuth-Key: supersecret\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    assert_eq!(read_head_only(&mut r).expect("101").status, 101);
    wait_until("the session to subscribe", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    s.write_all(&masked(1, b"hold")).expect("write");
    wait_until("the backend to hold the request", || {
        read_log(&log)
            .iter()
            .any(|e| e["contents"] == serde_json::json!(["hold"]))
    });
    for body in [
        r#"{"items":[{"channel":"busy","formats":{"ws-message":{"content":"meanwhile"}}}]}"#,
        r#"{"items":[{"channel":"busy","formats":{"ws-message":{"action":"close","code":4000,"reason":"bye"}}}]}"#,
    ] {
        assert_eq!(cp.publish(body).status, 200);
    }
    assert_eq!(read_frame(&mut r), (1, b"meanwhile".to_vec()));
    let (op, payload) = read_frame(&mut r);
    assert_eq!((op, &payload[..2]), (8, &4000u16.to_be_bytes()[..]));
    let mut rest = Vec::new();
    assert_eq!(
        r.read_to_end(&mut rest).expect("the connection ends"),
        0,
        "nothing after the close"
    );
    std::fs::write(&release, b"").expect("release the backend");
    wait_until("the backend to hear of the close", || {
        read_log(&log)
            .iter()
            .any(|e| e["events"] == serde_json::json!(["CLOSE"]))
    });
}
