//! corepin at the edge in front of an API gateway (and the other order),
//! end to end on loopback. The gateway is tests/gateway: nginx + Lua
//! reproducing Kong's key-auth and tcp-log (Kong itself cannot be
//! installed here); config/kong/kong.yml is the real-Kong recipe.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;

/// The stand-in gateway, stopped on drop.
struct Gateway {
    child: Child,
    port: u16,
}

impl Gateway {
    fn start(upstream: SocketAddr, log_port: u16) -> Gateway {
        let port = dead_port();
        let dir = std::env::temp_dir().join(format!("corepin-gw-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("gateway dir");
        let conf = std::fs::read_to_string(root().join("tests/gateway/nginx.conf.in"))
            .expect("template")
            .replace("@PREFIX@", &dir.display().to_string())
            .replace("@PORT@", &port.to_string())
            .replace("@UPSTREAM@", &upstream.to_string())
            .replace("@LOG_PORT@", &log_port.to_string())
            .replace("@DIR@", &dir.display().to_string());
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("write conf");
        // nginx's workers (user nobody when started as root) read the Lua
        // from the gateway's own directory, not from the checkout, which
        // may sit under a directory only its owner can read.
        std::fs::copy(root().join("tests/gateway/kong.lua"), dir.join("kong.lua"))
            .expect("copy kong.lua");
        let child = Command::new("nginx")
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                &path.display().to_string(),
            ])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx (tests/run.sh installs nginx and libnginx-mod-http-lua)");
        wait_until("gateway listening", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Gateway { child, port }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let _ = self.child.wait();
    }
}

/// A TCP sink for the gateway's tcp-log: one JSON object per line.
struct Sink {
    port: u16,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Sink {
    fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").expect("sink");
        let port = l.local_addr().expect("addr").port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let store = lines.clone();
        thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let store = store.clone();
                thread::spawn(move || {
                    for line in BufReader::new(s).lines().map_while(Result::ok) {
                        if let Ok(v) = serde_json::from_str(&line) {
                            store.lock().expect("lock").push(v);
                        }
                    }
                });
            }
        });
        Sink { port, lines }
    }

    fn entries(&self) -> Vec<serde_json::Value> {
        self.lines.lock().expect("lock").clone()
    }
}

fn grip_stream_backend() -> Backend {
    Backend::start(|_, _| {
        Reply::Bytes(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nGrip-Hold: stream\r\nGrip-Channel: news\r\nContent-Length: 8\r\n\r\nwelcome\n".to_vec())
    })
}

fn client_ws(url: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(root().join("tests/clients/ws_client.py"))
        .arg(url)
        .args(args)
        .output()
        .expect("ws client");
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("client JSON")
}

#[test]
fn corepin_in_front_of_the_gateway_http_stream() {
    let sink = Sink::start();
    let backend = grip_stream_backend();
    let gw = Gateway::start(backend.addr, sink.port);
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("* {}", gw.addr()),
        "--config",
        &write_config("[grip]\nsig_key = \"edge-key\"\nsig_iss = \"corepin\"\n"),
    ]);

    // No key: the gateway's 401 JSON reaches the client unchanged.
    let r = Conn::open(cp.addr()).get("/stream");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.text().trim(),
        r#"{"message":"No API key found in request"}"#
    );
    assert_eq!(r.header("www-authenticate"), Some(r#"Key realm="kong""#));
    let mut c = Conn::open(cp.addr());
    c.send(b"GET /stream HTTP/1.1\r\nHost: api\r\nAuth-Key: wrong\r\n\r\n");
    let r = c.read().expect("response");
    assert_eq!(
        (r.status, r.text().trim()),
        (401, r#"{"message":"Invalid authentication credentials"}"#)
    );

    // With the key: held, and publishes arrive.
    let mut s = Stream::open_with(cp.addr(), "/stream", "Auth-Key: supersecret\r\n");
    assert_eq!(s.head.status, 200);
    assert!(
        s.head.header("via").is_some_and(|v| v.contains("kong/")),
        "{:?}",
        s.head.headers
    );
    assert_eq!(s.read_text(8), "welcome\n");
    cp.publish_stream("news", "breaking\n");
    assert_eq!(s.read_text(9), "breaking\n");

    // The query-string key works too.
    let mut q = Stream::open(cp.addr(), "/stream?apikey=supersecret");
    assert_eq!(q.head.status, 200);
    assert_eq!(q.read_text(8), "welcome\n");

    // Behind the gateway the backend learns the consumer and checks Grip-Sig.
    let seen = backend.last();
    assert_eq!(seen.header("x-consumer-username"), Some("alice"));
    assert!(
        seen.header("x-consumer-id").is_some() && seen.header("x-credential-identifier").is_some()
    );
    assert!(
        seen.header("via")
            .is_some_and(|v| v.contains("1.1 corepin") && v.contains("kong/")),
        "{:?}",
        seen.header("via")
    );
    let sig = seen
        .header("grip-sig")
        .expect("Grip-Sig through the gateway");
    assert!(corepin::jwt::verify(sig, b"edge-key", Some("corepin"), corepin::jwt::now()).is_ok());

    wait_until("tcp-log lines", || sink.entries().len() >= 4);
    let log = sink.entries();
    assert!(log
        .iter()
        .any(|e| e["response"]["status"] == 401 && e["consumer"].is_null()));
    assert!(log
        .iter()
        .any(|e| e["response"]["status"] == 200 && e["consumer"]["username"] == "alice"));
}

#[test]
fn corepin_in_front_of_the_gateway_websocket_over_http() {
    let sink = Sink::start();
    let log = std::env::temp_dir().join(format!("corepin-kong-ws-{}.jsonl", std::process::id()));
    let backend = PyBackend::start("wsoh_backend.py", &[&log.display().to_string()]);
    let port = backend.port;
    let gw = Gateway::start(SocketAddr::from(([127, 0, 0, 1], port)), sink.port);
    let cp = Corepin::start_grip(&["--route", &format!("* {},over_http", gw.addr())]);
    let url = format!("ws://127.0.0.1:{}/chat", cp.port);

    // Without a key the WebSocket handshake fails with the gateway's answer.
    let r = client_ws(&url, &[]);
    assert_eq!(r["status"], 401);
    assert!(r["body"]
        .as_str()
        .unwrap_or("")
        .contains("No API key found in request"));

    // With the key: echo, and ws-message publishes arrive.
    let control = cp.control_addr();
    let publisher = publish_when_subscribed(
        control,
        1,
        r#"{"items":[{"channel":"room","formats":{"ws-message":{"content":"to the room"}}}]}"#,
    );
    let r = client_ws(
        &url,
        &[
            "-H",
            "Auth-Key: supersecret",
            "--send",
            "hello",
            "--recv",
            "2",
            "--close",
            "1000",
        ],
    );
    assert_eq!(publisher.join().expect("publisher"), 200);
    // The publish goes out once the session is subscribed, which may be
    // before or after the echo of "hello": the two are not ordered.
    let mut received: Vec<String> = r["received"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    received.sort();
    assert_eq!(received, ["echo: hello", "to the room"]);

    // Every WebSocket event crossed the gateway as an HTTP POST it logged,
    // with the consumer.
    wait_until("events logged", || {
        sink.entries()
            .iter()
            .filter(|e| e["request"]["method"] == "POST" && e["consumer"]["username"] == "alice")
            .count()
            >= 3
    });
    let posts: Vec<serde_json::Value> = sink
        .entries()
        .into_iter()
        .filter(|e| e["request"]["method"] == "POST")
        .collect();
    for e in posts.iter().filter(|e| e["response"]["status"] == 200) {
        assert_eq!(
            e["request"]["headers"]["content-type"],
            "application/websocket-events"
        );
        assert!(e["request"]["headers"]["connection-id"].is_string());
        assert_eq!(e["consumer"]["username"], "alice");
    }
}

#[test]
fn gateway_in_front_of_corepin() {
    let sink = Sink::start();
    let cp = Corepin::start_grip(&["--route", "* test"]);
    let gw = Gateway::start(cp.addr(), sink.port);

    // HTTP streaming passes through the gateway (proxy_buffering off).
    let mut s = Stream::open_with(gw.addr(), "/stream?channel=k", "Auth-Key: supersecret\r\n");
    assert_eq!(s.head.status, 200);
    assert_eq!(s.head.header("transfer-encoding"), Some("chunked"));
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    cp.publish_stream("k", "through the gateway\n");
    assert_eq!(s.read_text(20), "through the gateway\n");

    // WebSocket upgrades pass too (the Upgrade/Connection headers are set).
    let url = format!("ws://127.0.0.1:{}/ws?channel=kw", gw.port);
    let control = cp.control_addr();
    let publisher = publish_when_subscribed(
        control,
        2,
        r#"{"items":[{"channel":"kw","formats":{"ws-message":{"content":"via gateway"}}}]}"#,
    );
    let r = client_ws(
        &url,
        &[
            "-H",
            "Auth-Key: supersecret",
            "--recv",
            "1",
            "--close",
            "1000",
        ],
    );
    assert_eq!(publisher.join().expect("publisher"), 200);
    assert_eq!(r["received"], serde_json::json!(["via gateway"]));
    let r = client_ws(&url, &[]);
    assert_eq!(r["status"], 401);

    // The gateway sees the connections, but never the publishes (they go
    // to corepin's control address) nor the messages inside a WebSocket.
    let _ = s.conn.w.shutdown(std::net::Shutdown::Both);
    wait_until("connections logged", || sink.entries().len() >= 3);
    let log = sink.entries();
    assert!(
        log.iter().all(|e| !e["request"]["uri"]
            .as_str()
            .unwrap_or("")
            .contains("publish")),
        "{log:?}"
    );
    assert!(log
        .iter()
        .any(|e| e["request"]["uri"] == "/ws?channel=kw" && e["response"]["status"] == 101));
    let mut raw = TcpStream::connect(gw.addr()).expect("connect");
    raw.write_all(b"GET /stream?channel=z HTTP/1.1\r\nHost: g\r\n\r\n")
        .expect("write");
    let mut first = [0u8; 12];
    raw.read_exact(&mut first).expect("answer");
    assert_eq!(&first, b"HTTP/1.1 401");
}

#[test]
fn the_edge_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args([
            "check",
            "--config",
            &root().join("config/kong-edge.toml").display().to_string(),
        ])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("over_http"), "{text}");
}
