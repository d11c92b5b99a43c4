//! Pushpin's ZeroMQ interfaces, driven as Pushpin's peers drive them:
//! pyzmq sockets (PUSH, XPUB, REQ, DEALER, SUB) and the pubcontrol and
//! gripcontrol libraries' ZeroMQ publishing (tests/clients/zmq_client.py;
//! tests/run.sh installs pyzmq and tnetstring3 in the venv).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

use serde_json::{json, Value};

use common::*;

/// A fresh folder for ipc:// endpoints (short: a socket path is at most
/// 107 bytes).
fn ipc_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "cpz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("ipc dir");
    d
}

fn uri(dir: &Path, name: &str) -> String {
    format!("ipc://{}/{name}", dir.display())
}

/// corepin with every ZeroMQ interface on ipc:// endpoints in `dir`, the
/// test target and a control port; `extra` is added to `[zmq]`.
fn start(dir: &Path, extra: &str, args: &[&str]) -> Corepin {
    let config = write_config(&format!(
        "routes = [\"* test\"]\n[zmq]\npush_in_spec = \"{}\"\npush_in_sub_specs = [\"{}\"]\ncommand_spec = \"{}\"\nstats_spec = \"{}\"\n{extra}\n",
        uri(dir, "pull"),
        uri(dir, "sub"),
        uri(dir, "cmd"),
        uri(dir, "stats"),
    ));
    let mut all = vec!["--config", config.as_str(), "--workers", "2"];
    all.extend_from_slice(args);
    Corepin::start_grip(&all)
}

/// Runs zmq_client.py to completion; returns its stdout.
fn client(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/clients/zmq_client.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run zmq_client.py (run tests/run.sh): {e}"));
    assert!(
        out.status.success(),
        "zmq_client.py {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's answer.
fn command(dir: &Path, request: &str) -> Value {
    let out = client(&["cmd", &uri(dir, "cmd"), request]);
    serde_json::from_str(out.trim()).expect("answer JSON")
}

/// zmq_client.py running alongside the test, its stdout read line by line.
struct Live {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Live {
    fn start(args: &[&str]) -> Live {
        let mut child = Command::new(python())
            .arg(root().join("tests/clients/zmq_client.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start zmq_client.py (run tests/run.sh)");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Live { child, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(TIMEOUT)
            .expect("a line from zmq_client.py")
    }

    /// The next stats message matching `f` (others are skipped).
    fn stat(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let l = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("timed out waiting for stats: {what}"));
            let v: Value = serde_json::from_str(&l).expect("stats JSON");
            if f(&v) {
                return v;
            }
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a stream on the test target and waits until corepin counts its
/// subscription. No test here ends a subscription before opening the next
/// stream, so the count read first is exact.
fn subscribed_stream(cp: &Corepin, channel: &str) -> Stream {
    let before = subscriptions_at(cp.control_addr());
    let s = Stream::open(cp.addr(), &format!("/stream?channel={channel}"));
    wait_until("the stream's subscription", || {
        subscriptions_at(cp.control_addr()) > before
    });
    s
}

#[test]
fn push_takes_tnetstring_and_json_items() {
    let dir = ipc_dir();
    let cp = start(&dir, "", &[]);
    let mut s = subscribed_stream(&cp, "zp");
    let pull = uri(&dir, "pull");
    for (content, enc) in [("one\n", "tnet"), ("two\n", "tnet-T"), ("three\n", "json")] {
        client(&["push", &pull, "zp", content, enc]);
        assert_eq!(s.read_text(content.len()), content, "{enc}");
    }
    // A bad item is refused by name in the log; the next one still arrives.
    client(&["push", &pull, "", "x", "tnet"]);
    cp.wait_stderr("zmq.push_in_spec: item refused: item.channel: must not be empty");
    client(&["push", &pull, "zp", "four\n", "tnet"]);
    assert_eq!(s.read_text(5), "four\n");
}

#[test]
fn the_sub_socket_subscribes_to_channels_with_subscribers() {
    let dir = ipc_dir();
    let cp = start(&dir, "", &[]);
    // The publisher's XPUB hears corepin subscribe once a client holds
    // the channel, publishes with the channel as topic, and hears the
    // unsubscription when the client leaves.
    let xpub = Live::start(&["xpub", &uri(&dir, "sub"), "zs", "by topic\n"]);
    let mut s = subscribed_stream(&cp, "zs");
    assert_eq!(xpub.line(), "sub zs");
    assert_eq!(s.read_text(9), "by topic\n");
    drop(s);
    assert_eq!(xpub.line(), "unsub zs");
}

#[test]
fn the_sub_socket_connects_to_publishers_with_push_in_sub_connect() {
    let dir = ipc_dir();
    let publisher = uri(&dir, "publisher");
    let config = write_config(&format!(
        "routes = [\"* test\"]\n[zmq]\npush_in_sub_specs = [\"{publisher}\"]\npush_in_sub_connect = true\n"
    ));
    let cp = Corepin::start_grip(&["--config", &config, "--workers", "2"]);
    cp.wait_stderr(&format!(
        "connecting to {publisher} (ZeroMQ SUB: publishes)"
    ));
    // The publisher binds (after corepin started: libzmq connects when it
    // can), hears the subscription, and publishes.
    let xpub = Live::start(&["xpub-bind", &publisher, "zk", "connected\n"]);
    let mut s = subscribed_stream(&cp, "zk");
    assert_eq!(xpub.line(), "sub zk");
    assert_eq!(s.read_text(10), "connected\n");
    drop(s);
    assert_eq!(xpub.line(), "unsub zk");
}

#[test]
fn commands_are_answered_as_pushpin_answers_them() {
    let dir = ipc_dir();
    let cp = start(&dir, "", &[]);
    let uris = command(&dir, r#"{"id":"1","method":"get-zmq-uris"}"#);
    assert_eq!(
        uris,
        json!({"id": "1", "success": true, "value": {
            "command": uri(&dir, "cmd"),
            "publish-pull": uri(&dir, "pull"),
            "publish-sub": uri(&dir, "sub"),
        }})
    );
    for (req, want) in [
        (
            r#"{"id":"2","method":"conncheck","args":{"ids":["nobody"]}}"#,
            json!({"id": "2", "success": true, "value": []}),
        ),
        (
            r#"{"method":"conncheck","args":{"ids":"x"}}"#,
            json!({"success": false, "condition": "bad-request"}),
        ),
        (
            r#"{"method":"recover"}"#,
            json!({"success": true, "value": null}),
        ),
        (
            r#"{"method":"refresh","args":{"cid":"nobody"}}"#,
            json!({"success": false, "condition": "item-not-found"}),
        ),
        (
            r#"{"method":"refresh","args":{}}"#,
            json!({"success": false, "condition": "bad-request"}),
        ),
        (
            r#"{"method":"refresh","args":{"channel":"nobody"}}"#,
            json!({"success": true, "value": null}),
        ),
        (
            r#"{"method":"get-zombies"}"#,
            json!({"success": false, "condition": "method-not-found"}),
        ),
        (
            r#"{"method":"publish","args":{}}"#,
            json!({"success": false, "condition": "bad-request",
                   "value": "Invalid format: object does not contain 'items'"}),
        ),
    ] {
        assert_eq!(command(&dir, req), want, "{req}");
    }
    // A request Pushpin would skip silently is answered with the reason.
    let bad = command(&dir, "@raw:3:abc");
    assert_eq!(bad["condition"], "bad-format");
    assert!(
        bad["value"]
            .as_str()
            .unwrap_or("")
            .contains("ends inside a value"),
        "{bad}"
    );

    // `publish` delivers, from REQ and from DEALER clients alike.
    let mut s = subscribed_stream(&cp, "zc");
    let publish = |content: &str| {
        json!({"method": "publish", "args": {"items": [
            {"channel": "zc", "formats": {"http-stream": {"content": content}}}
        ]}})
        .to_string()
    };
    assert_eq!(
        command(&dir, &publish("by command\n")),
        json!({"success": true, "value": null})
    );
    assert_eq!(s.read_text(11), "by command\n");
    let out = client(&["cmd", &uri(&dir, "cmd"), &publish("by dealer\n"), "dealer"]);
    assert_eq!(out.trim(), r#"{"success": true, "value": null}"#);
    assert_eq!(s.read_text(10), "by dealer\n");
    let refused = command(
        &dir,
        r#"{"method":"publish","args":{"items":[{"channel":"zc","http-stream":{"content-bin":"eA=="}}]}}"#,
    );
    assert_eq!(refused["condition"], "bad-request");
    assert!(
        refused["value"]
            .as_str()
            .unwrap_or("")
            .starts_with("Invalid format: items[0].http-stream.content-bin: base64 is for JSON"),
        "{refused}"
    );
}

#[test]
fn conncheck_and_refresh_reach_websocket_over_http_sessions() {
    let log = std::env::temp_dir().join(format!("corepin-zmq-wsoh-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let backend = PyBackend::start("wsoh_backend.py", &[&log.display().to_string()]);
    let dir = ipc_dir();
    let route = format!("* 127.0.0.1:{},over_http", backend.port);
    let cp = start(&dir, "", &["--route", &route]);
    let mut s = std::net::TcpStream::connect(cp.addr()).expect("connect");
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nAuth-Key: supersecret\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    assert_eq!(read_head_only(&mut r).expect("101").status, 101);
    let requests = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("log JSON"))
            .collect::<Vec<_>>()
    };
    let id = requests()[0]["connection_id"]
        .as_str()
        .expect("id")
        .to_string();
    let check = format!(r#"{{"method":"conncheck","args":{{"ids":["{id}","gone"]}}}}"#);
    assert_eq!(command(&dir, &check)["value"], json!([id]));
    // A refresh makes the session send a request (no events) now.
    let refresh = format!(r#"{{"method":"refresh","args":{{"cid":"{id}"}}}}"#);
    assert_eq!(
        command(&dir, &refresh),
        json!({"success": true, "value": null})
    );
    wait_until("the refresh request", || requests().len() == 2);
    // By channel: every session subscribed to it (the backend puts its
    // sessions in `room`).
    assert_eq!(
        command(&dir, r#"{"method":"refresh","args":{"channel":"room"}}"#),
        json!({"success": true, "value": null})
    );
    wait_until("the channel refresh request", || requests().len() == 3);
    drop(r);
    drop(s);
    wait_until("the session to end", || {
        command(&dir, &check)["value"] == json!([])
    });
}

#[test]
fn stats_follow_subscriptions_and_report_counts() {
    let dir = ipc_dir();
    let cp = start(
        &dir,
        "stats_report_interval = 1\nsubscription_linger = 1\n",
        &[],
    );
    let stats = Live::start(&["stats", &uri(&dir, "stats")]);
    // A second reader for the counters, which come in any order with the
    // subscription messages.
    let counts = Live::start(&["stats", &uri(&dir, "stats")]);
    assert_eq!(stats.line(), "ready");
    assert_eq!(counts.line(), "ready");
    // A PUB socket drops what is sent before the subscriber is connected:
    // wait for the first report, which says the SUB side is in place.
    stats.stat("a report", |v| v["type"] == "report");
    counts.stat("a report", |v| v["type"] == "report");
    let is_sub = |mode: &'static str, n: i64| {
        move |v: &Value| {
            v["type"] == "sub"
                && v["fields"]["channel"] == "zt"
                && v["fields"]["mode"] == mode
                && v["fields"]["subscribers"] == n
        }
    };
    let a = subscribed_stream(&cp, "zt");
    let first = stats.stat("sub stream 1", is_sub("stream", 1));
    assert_eq!(first["enc"], "tnetstring");
    assert_eq!(first["fields"]["ttl"], 60);
    assert!(first["fields"]["from"]
        .as_str()
        .unwrap_or("")
        .starts_with("corepin_"));
    let b = subscribed_stream(&cp, "zt");
    stats.stat("sub stream 2", is_sub("stream", 2));
    drop(a);
    stats.stat("sub stream 1 again", is_sub("stream", 1));
    drop(b);
    let gone = |mode: &'static str| {
        move |v: &Value| {
            v["type"] == "sub"
                && v["fields"]["channel"] == "zt"
                && v["fields"]["mode"] == mode
                && v["fields"]["unavailable"] == true
        }
    };
    stats.stat("stream unsubscribed", gone("stream"));
    // A long-poll's channel lingers (1 s here) before its unsubscription.
    let addr = cp.addr();
    let poll = thread::spawn(move || Conn::open(addr).get("/response?channel=zt"));
    stats.stat("sub response 1", is_sub("response", 1));
    cp.publish(r#"{"items":[{"channel":"zt","formats":{"http-response":{"body":"done\n"}}}]}"#);
    assert_eq!(poll.join().expect("poll").text(), "done\n");
    let unsub_at = std::time::Instant::now();
    stats.stat("response unsubscribed", gone("response"));
    assert!(unsub_at.elapsed() >= std::time::Duration::from_millis(500));
    // Requests and deliveries are counted.
    counts.stat("activity", |v| {
        v["type"] == "activity" && v["fields"]["count"].as_i64() > Some(0)
    });
    counts.stat("counts", |v| {
        v["type"] == "counts" && v["fields"]["requests-received"].as_i64() > Some(0)
    });
    // One item published, delivered once: the reports (each covering
    // about a second) add up to that, whichever report each falls in.
    let (mut received, mut sent) = (0, 0);
    while received < 1 || sent < 1 {
        let r = counts.stat("a report", |v| v["type"] == "report");
        let f = &r["fields"];
        assert!(f["duration"].as_i64() >= Some(900), "{r}");
        received += f["received"].as_i64().expect("received");
        sent += f["sent"].as_i64().expect("sent");
    }
    assert_eq!((received, sent), (1, 1));
}

#[test]
fn stats_in_json() {
    let dir = ipc_dir();
    let cp = start(
        &dir,
        "stats_format = \"json\"\nstats_report_interval = 1\n",
        &[],
    );
    let stats = Live::start(&["stats", &uri(&dir, "stats")]);
    assert_eq!(stats.line(), "ready");
    stats.stat("a report", |v| v["type"] == "report" && v["enc"] == "json");
    let _s = subscribed_stream(&cp, "zj");
    let v = stats.stat("sub", |v| {
        v["type"] == "sub" && v["fields"]["channel"] == "zj"
    });
    assert_eq!(v["enc"], "json");
    assert_eq!(v["fields"]["mode"], "stream");
}

/// `message`, `conn-max` and the whole `report` in one encoding, with
/// Pushpin's field names.
fn message_and_report_stats(extra: &str, enc: &str) {
    let dir = ipc_dir();
    let cp = start(
        &dir,
        &format!("{extra}stats_report_interval = 1\nsubscription_linger = 1\n"),
        &[],
    );
    let stats = Live::start(&["stats", &uri(&dir, "stats")]);
    let reports = Live::start(&["stats", &uri(&dir, "stats")]);
    assert_eq!(stats.line(), "ready");
    assert_eq!(reports.line(), "ready");
    let r = stats.stat("a report", |v| v["type"] == "report");
    reports.stat("a report", |v| v["type"] == "report");
    assert_eq!(r["enc"], enc);
    for field in [
        "from",
        "connections",
        "minutes",
        "received",
        "sent",
        "http-response-sent",
        "duration",
    ] {
        assert!(r["fields"].get(field).is_some(), "{field} missing: {r}");
    }
    let m = stats.stat("conn-max", |v| v["type"] == "conn-max");
    assert_eq!(m["enc"], enc);
    assert!(m["fields"]["max"].as_i64() >= Some(0), "{m}");
    assert!(m["fields"]["ttl"].as_i64() >= Some(60), "{m}");
    // Two streams on one channel: one `message` with a count of 2.
    let mut a = subscribed_stream(&cp, "zm");
    let mut b = subscribed_stream(&cp, "zm");
    stats.stat("sub stream 2", |v| {
        v["type"] == "sub" && v["fields"]["channel"] == "zm" && v["fields"]["subscribers"] == 2
    });
    cp.publish(
        r#"{"items":[{"channel":"zm","id":"m1","formats":{"http-stream":{"content":"one\n"}}}]}"#,
    );
    assert_eq!(a.read_text(4), "one\n");
    assert_eq!(b.read_text(4), "one\n");
    let v = stats.stat("message", |v| v["type"] == "message");
    assert_eq!(v["enc"], enc);
    let f = &v["fields"];
    assert_eq!(f["channel"], "zm", "{v}");
    assert_eq!(f["item-id"], "m1", "{v}");
    assert_eq!(f["count"], 2, "{v}");
    assert_eq!(f["transport"], "http-stream", "{v}");
    assert!(f.get("blocks").is_none(), "{v}");
    // A long-poll answered by a publish: transport `http-response`, and
    // the reports count it in `http-response-sent`.
    let addr = cp.addr();
    let poll = thread::spawn(move || Conn::open(addr).get("/response?channel=zr"));
    stats.stat("sub response", |v| {
        v["type"] == "sub" && v["fields"]["channel"] == "zr" && v["fields"]["subscribers"] == 1
    });
    cp.publish(r#"{"items":[{"channel":"zr","formats":{"http-response":{"body":"done\n"}}}]}"#);
    assert_eq!(poll.join().expect("poll").text(), "done\n");
    let v = stats.stat("message", |v| {
        v["type"] == "message" && v["fields"]["channel"] == "zr"
    });
    assert_eq!(v["fields"]["transport"], "http-response", "{v}");
    assert_eq!(v["fields"]["count"], 1, "{v}");
    assert!(v["fields"].get("item-id").is_none(), "{v}");
    let mut http_response_sent = 0;
    while http_response_sent < 1 {
        let r = reports.stat("a report", |v| v["type"] == "report");
        http_response_sent += r["fields"]["http-response-sent"]
            .as_i64()
            .expect("http-response-sent");
    }
    assert_eq!(http_response_sent, 1);
    // A channel nobody here listens to gets no `message`.
    cp.publish(r#"{"items":[{"channel":"nobody","formats":{"http-stream":{"content":"x"}}}]}"#);
    cp.publish(
        r#"{"items":[{"channel":"zm","id":"m2","formats":{"http-stream":{"content":"two\n"}}}]}"#,
    );
    assert_eq!(a.read_text(4), "two\n");
    let v = stats.stat("message", |v| v["type"] == "message");
    assert_eq!(v["fields"]["item-id"], "m2", "{v}");
}

#[test]
fn message_and_report_stats_in_tnetstring() {
    message_and_report_stats("", "tnetstring");
}

#[test]
fn message_and_report_stats_in_json() {
    message_and_report_stats("stats_format = \"json\"\n", "json");
}

#[test]
fn pubcontrol_and_gripcontrol_publish_over_zeromq() {
    let dir = ipc_dir();
    let cp = start(&dir, "", &[]);
    let mut s = subscribed_stream(&cp, "zl");
    // PUSH, as pubcontrol's zmq_push_uri does.
    let lib = Live::start(&["grip-push", &uri(&dir, "pull"), "zl", "pushed\n"]);
    assert_eq!(lib.line(), "ok");
    assert_eq!(s.read_text(7), "pushed\n");
    drop(lib);
    // gripcontrol's control_zmq_uri: get-zmq-uris, then PUSH.
    let lib = Live::start(&["grip-discover", &uri(&dir, "cmd"), "zl", "discovered\n"]);
    assert_eq!(lib.line(), "ok");
    assert_eq!(s.read_text(11), "discovered\n");
    drop(lib);
    // require_subscribers: pubcontrol's XPUB sees the subscription first.
    let lib = Live::start(&["grip-sub", &uri(&dir, "sub"), "zl", "watched\n"]);
    assert_eq!(lib.line(), "sub zl");
    assert_eq!(s.read_text(8), "watched\n");
    drop(s);
    assert_eq!(lib.line(), "unsub zl");
}

#[test]
fn tcp_endpoints_and_bad_specs() {
    // tcp:// with `*` for the port binds a free one, which the log and
    // get-zmq-uris name.
    let config =
        write_config("routes = [\"* test\"]\n[zmq]\ncommand_spec = \"tcp://127.0.0.1:*\"\n");
    let cp = Corepin::start_grip(&["--config", &config, "--workers", "1"]);
    let line = cp.wait_stderr("(ZeroMQ commands)");
    let endpoint = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("endpoint")
        .to_string();
    assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{line}");
    let out = client(&["cmd", &endpoint, r#"{"method":"get-zmq-uris"}"#]);
    let v: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["value"], json!({"command": endpoint}));

    // Config errors exit 2 before anything is bound; a spec that cannot
    // be bound stops start-up like a busy listen address (exit 1).
    for (zmq, needle, code) in [
        (
            "push_in_spec = \"udp://1.2.3.4:5\"",
            "zmq.push_in_spec: 'udp://1.2.3.4:5' is not a ZeroMQ endpoint corepin serves",
            2,
        ),
        (
            "command_spec = \"tcp://nohost\"",
            "zmq.command_spec: 'tcp://nohost' is not tcp://HOST:PORT",
            2,
        ),
        (
            "stats_format = \"xml\"",
            "zmq.stats_format: 'xml' is not tnetstring or json",
            2,
        ),
        ("colour = \"red\"", "unknown field `colour`", 2),
        (
            "ipc_file_mode = \"rw\"",
            "zmq.ipc_file_mode: 'rw' is not an octal file mode",
            2,
        ),
        (
            &format!("command_spec = \"{endpoint}\""),
            "zmq.command_spec: cannot bind",
            1,
        ),
    ] {
        let config = write_config(&format!("[zmq]\n{zmq}\n"));
        let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
            .args(["run", "--config", &config, "--listen", "127.0.0.1:0"])
            .args(["--control-http", "", "--control-socket", ""])
            .output()
            .expect("run corepin");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{zmq}: {err}");
        assert!(err.contains(needle), "{zmq}: {err}");
    }
}

#[test]
fn ipc_file_mode_sets_the_socket_files_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = ipc_dir();
    let _cp = start(&dir, "ipc_file_mode = \"600\"", &[]);
    for name in ["pull", "sub", "cmd", "stats"] {
        let mode = std::fs::metadata(dir.join(name))
            .expect("socket file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `conn` messages, as Pushpin's stats send them (`stats_connection_send`,
/// on by default): one when a request or WebSocket starts (`id`, `type`,
/// `peer-address`, `ttl`), the same again every 3/4 of the ttl while it
/// lasts, and one with `unavailable` when it ends.
#[test]
fn conn_stats_follow_requests_and_websockets() {
    let dir = ipc_dir();
    let cp = start(
        &dir,
        "stats_report_interval = 1\nstats_connection_ttl = 2\n",
        &[],
    );
    let stats = Live::start(&["stats", &uri(&dir, "stats")]);
    assert_eq!(stats.line(), "ready");
    stats.stat("a report", |v| v["type"] == "report");
    // A held stream: announced, refreshed after 1.5 s, gone when closed.
    let s = subscribed_stream(&cp, "zc");
    let open = stats.stat("conn http", |v| {
        v["type"] == "conn" && v["fields"]["type"] == "http"
    });
    let f = &open["fields"];
    let id = f["id"].as_str().expect("an id").to_string();
    assert_eq!(f["peer-address"], "127.0.0.1");
    assert_eq!(f["ttl"], 2);
    assert!(
        f.get("ssl").is_none() && f.get("unavailable").is_none(),
        "{open}"
    );
    assert!(f["from"].as_str().unwrap_or("").starts_with("corepin_"));
    let again = stats.stat("conn refreshed", |v| {
        v["type"] == "conn" && v["fields"]["id"] == id.as_str()
    });
    assert_eq!(again["fields"]["type"], "http", "{again}");
    drop(s);
    let gone = stats.stat("conn gone", |v| {
        v["type"] == "conn"
            && v["fields"]["id"] == id.as_str()
            && v["fields"]["unavailable"] == true
    });
    assert!(gone["fields"].get("type").is_none(), "{gone}");
    // A WebSocket handshake is a `ws` connection.
    let mut c = Conn::open(cp.addr());
    c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let ws = stats.stat("conn ws", |v| {
        v["type"] == "conn" && v["fields"]["type"] == "ws"
    });
    let ws_id = ws["fields"]["id"].as_str().expect("an id").to_string();
    assert_ne!(ws_id, id);
    drop(c);
    stats.stat("ws conn gone", |v| {
        v["type"] == "conn"
            && v["fields"]["id"] == ws_id.as_str()
            && v["fields"]["unavailable"] == true
    });
}

/// `stats_connection_send = false` sends none.
#[test]
fn conn_stats_can_be_turned_off() {
    let dir = ipc_dir();
    let cp = start(
        &dir,
        "stats_report_interval = 1\nstats_connection_send = false\n",
        &[],
    );
    let stats = Live::start(&["stats", &uri(&dir, "stats")]);
    assert_eq!(stats.line(), "ready");
    stats.stat("a report", |v| v["type"] == "report");
    let _s = subscribed_stream(&cp, "zoff");
    // The stream's `sub` comes after its request started: had a `conn`
    // been sent, it would come first.
    let first = stats.stat("conn or sub", |v| v["type"] == "conn" || v["type"] == "sub");
    assert_eq!(first["type"], "sub", "{first}");
}
