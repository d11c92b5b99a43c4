//! Operations: the control socket, the publish/stats CLI, Prometheus
//! metrics, health, and route reloads.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::thread;

use common::*;

fn sock_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("corepin-{tag}-{}.sock", std::process::id()))
}

/// Sends lines on one control-socket connection; returns the answers.
fn ask(path: &std::path::Path, lines: &[&str]) -> Vec<serde_json::Value> {
    let s = UnixStream::connect(path).expect("connect control socket");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    lines
        .iter()
        .map(|l| {
            w.write_all(format!("{l}\n").as_bytes()).expect("write");
            let mut a = String::new();
            r.read_line(&mut a).expect("answer");
            serde_json::from_str(&a).expect("JSON answer")
        })
        .collect()
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(args)
        .output()
        .expect("run corepin")
}

#[test]
fn control_socket_answers_and_survives_bad_lines() {
    let path = sock_path("ctl");
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--control-socket",
        path.to_str().expect("path"),
    ]);
    let mode = std::fs::metadata(&path)
        .expect("socket file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let mut s = Stream::open(cp.addr(), "/stream?channel=sock");
    let answers = ask(
        &path,
        &[
            "this is not json",
            r#"{"method":"fly"}"#,
            r#"{"method":"publish","items":[{"channel":"sock"}]}"#,
            r#"{"method":"publish","items":[{"channel":"sock","formats":{"http-stream":{"content":"via socket\n"}}}]}"#,
            r#"{"method":"conncheck","ids":["nope"]}"#,
            r#"{"method":"stats"}"#,
            r#"{"method":"conncheck","ids":["a",7]}"#,
        ],
    );
    assert_eq!(answers[0]["ok"], false);
    assert!(answers[0]["error"]
        .as_str()
        .unwrap_or("")
        .contains("invalid JSON"));
    assert!(answers[1]["error"]
        .as_str()
        .unwrap_or("")
        .contains("unknown method"));
    assert!(answers[2]["error"]
        .as_str()
        .unwrap_or("")
        .contains("no format"));
    assert_eq!(answers[3], serde_json::json!({"ok": true, "published": 1}));
    assert_eq!(answers[4], serde_json::json!({"ok": true, "ids": []}));
    assert_eq!(answers[5]["ok"], true);
    // An id that is not a string is refused, not skipped.
    assert_eq!(answers[6]["ok"], false);
    assert!(answers[6]["error"]
        .as_str()
        .unwrap_or("")
        .contains("conncheck: ids: must be a list of strings"));
    assert_eq!(s.read_text(11), "via socket\n");
    wait_until("stats see the stream", || {
        ask(&path, &[r#"{"method":"stats"}"#])[0]["streams"] == 1
    });
    let st = &ask(&path, &[r#"{"method":"stats"}"#])[0];
    assert!(st["publishes"].as_u64() >= Some(1));
    assert!(st["cores"].as_array().is_some_and(|c| !c.is_empty()));
}

#[test]
fn cli_publish_and_stats() {
    let path = sock_path("cli");
    let sock = path.to_str().expect("path").to_string();
    let cp = Corepin::start_grip(&["--route", "* test", "--control-socket", &sock]);
    let mut s = Stream::open(cp.addr(), "/stream?channel=cli");
    let out = cli(&[
        "publish",
        "cli",
        "hello from the shell",
        "--socket",
        &sock,
        "--id",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.read_text(21), "hello from the shell\n");
    let url = format!("http://{}", cp.control_addr());
    let out = cli(&["publish", "cli", "over http", "--http", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.read_text(10), "over http\n");
    let out = cli(&["publish", "cli", "--close", "--socket", &sock]);
    assert!(out.status.success());
    assert_eq!(s.chunk(), None);
    // The counters reach `stats` with each core's next snapshot.
    wait_until("stats to count the 3 publishes", || {
        let out = cli(&["stats", "--socket", &sock]);
        let text = String::from_utf8_lossy(&out.stdout);
        out.status.success() && text.contains("publishes 3") && text.contains("core 0")
    });

    for args in [
        vec!["stats", "--socket", "/nonexistent/corepin.sock"],
        vec!["publish", "c", "x", "--socket", "/nonexistent/corepin.sock"],
    ] {
        let out = cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("not running"), "{err}");
    }
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_refused() {
    let path = sock_path("stale");
    let _ = std::fs::remove_file(&path);
    drop(std::os::unix::net::UnixListener::bind(&path).expect("make a stale socket"));
    assert!(path.exists());
    let sock = path.to_str().expect("path").to_string();
    let cp = Corepin::start_grip(&["--route", "* test", "--control-socket", &sock]);
    assert_eq!(ask(&path, &[r#"{"method":"stats"}"#])[0]["ok"], true);
    let out = cli(&[
        "--listen",
        "127.0.0.1:0",
        "--control-http",
        "",
        "--control-socket",
        &sock,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("another corepin is running"), "{err}");
    drop(cp);
}

#[test]
fn a_port_already_listened_on_is_refused() {
    // Another program on the port, and another corepin (its own control
    // socket, so only the port collides): both refused, not shared.
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = other.local_addr().expect("addr").to_string();
    let cp = Corepin::start_grip(&["--route", "* test"]);
    for (addr, tag) in [(busy, "port"), (cp.addr().to_string(), "corepin")] {
        let sock = sock_path(tag).display().to_string();
        let out = cli(&[
            "--listen",
            &addr,
            "--control-http",
            "",
            "--control-socket",
            &sock,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tag}: {err}");
        assert!(
            err.contains(&format!(
                "cannot listen on {addr}: another process is listening there"
            )),
            "{tag}: {err}"
        );
    }
    // The running corepin still serves.
    let health = cp.control("GET /health HTTP/1.1\r\nHost: c\r\n\r\n");
    assert_eq!(health.status, 200);
    assert_eq!(
        Conn::open(cp.addr()).get("/").status,
        404,
        "the test target answers"
    );
}

/// Checks every line is Prometheus text: comments, or `name{labels} value`.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        out.push((
            series.to_string(),
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        ));
    }
    out
}

fn sum(m: &[(String, f64)], prefix: &str) -> f64 {
    m.iter()
        .filter(|(s, _)| s.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_are_prometheus_text_and_move_with_traffic() {
    let b = Backend::fixed("ok");
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("*,path_beg=/api {}", b.addr),
        "--route",
        "* test",
    ]);
    let scrape = || {
        parse_prometheus(
            &cp.control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
                .text(),
        )
    };
    let before = scrape();
    let mut c = Conn::open(cp.addr());
    for _ in 0..5 {
        assert_eq!(c.get("/api/x").status, 200);
    }
    assert_eq!(c.get("/nothing-here").status, 404);
    let mut s = Stream::open(cp.addr(), "/stream?channel=m");
    cp.publish_stream("m", "x");
    assert_eq!(s.read_text(1), "x");
    // Each core's counters reach /metrics with its next snapshot (a few
    // times a second): scrape until they show the traffic.
    let two = sum(&before, "corepin_requests_total{class=\"2xx\"");
    wait_until("the traffic in /metrics", || {
        let m = scrape();
        sum(&m, "corepin_requests_total{class=\"2xx\"") >= two + 5.0
            && sum(&m, "corepin_requests_total{class=\"4xx\"") >= 1.0
            && sum(&m, "corepin_upstream_latency_seconds_count") >= 5.0
            && sum(&m, "corepin_deliveries_total") >= 1.0
            && sum(&m, "corepin_publishes_total") >= 1.0
            && sum(&m, "corepin_connections{kind=\"stream\"") == 1.0
    });
    drop(s);
    let dead = Corepin::start_grip(&["--route", &format!("* 127.0.0.1:{}", dead_port())]);
    assert_eq!(Conn::open(dead.addr()).get("/").status, 502);
    wait_until("the upstream error in /metrics", || {
        let m = parse_prometheus(
            &dead
                .control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
                .text(),
        );
        sum(&m, "corepin_upstream_errors_total") >= 1.0
    });
}

#[test]
fn health_is_503_while_draining() {
    // The backend answers once the test has seen /health say draining.
    let gate = Gate::new();
    let b = {
        let gate = gate.clone();
        Backend::start(move |_, _| {
            gate.wait();
            Reply::Bytes(ok_response("late"))
        })
    };
    let mut cp = Corepin::start_grip(&["--route", &b.route()]);
    let health = || cp.control("GET /health HTTP/1.1\r\nHost: c\r\n\r\n").status;
    assert_eq!(health(), 200);
    let addr = cp.addr();
    let slow = thread::spawn(move || Conn::open(addr).get("/"));
    wait_until("the request at the backend", || b.requests() >= 1);
    assert_eq!(health(), 200, "not draining before the signal");
    cp.signal(libc::SIGTERM);
    wait_until("/health to say draining", || health() == 503);
    gate.open();
    assert_eq!(slow.join().expect("client").text(), "late");
    assert_eq!(cp.wait_exit(TIMEOUT), Some(0));
}

#[test]
fn reload_with_good_and_bad_routes_files() {
    let a = Backend::fixed("from A");
    let b = Backend::fixed("from B");
    let routes = std::env::temp_dir().join(format!("corepin-routes-{}", std::process::id()));
    std::fs::write(&routes, format!("# first\n* {}\n", a.addr)).expect("routes");
    let path = sock_path("reload");
    let sock = path.to_str().expect("path").to_string();
    let cfg = write_config(&format!("routes_file = \"{}\"\n", routes.display()));
    let cp = Corepin::start_grip(&["--config", &cfg, "--control-socket", &sock]);
    let mut held = Conn::open(cp.addr());
    assert_eq!(held.get("/").text(), "from A");

    // SIGHUP with a good file: new requests go to B.
    std::fs::write(&routes, format!("* {}\n", b.addr)).expect("routes");
    cp.signal(libc::SIGHUP);
    cp.wait_stderr("routes reloaded");
    wait_until("B serves", || {
        Conn::open(cp.addr()).get("/").text() == "from B"
    });
    // The existing connection was not cut.
    assert_eq!(held.get("/").text(), "from B");

    // A bad file is refused, with the reason, and the routes stay.
    std::fs::write(&routes, "*,bogus=1 127.0.0.1:1\n").expect("routes");
    let a = ask(&path, &[r#"{"method":"reload"}"#]);
    assert_eq!(a[0]["ok"], false);
    assert!(
        a[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("unknown route property 'bogus'"),
        "{a:?}"
    );
    cp.signal(libc::SIGHUP);
    cp.wait_stderr("reload refused");
    assert_eq!(Conn::open(cp.addr()).get("/").text(), "from B");

    std::fs::write(&routes, format!("* {}\n", b.addr)).expect("routes");
    assert_eq!(ask(&path, &[r#"{"method":"reload"}"#])[0]["ok"], true);
}

#[test]
fn conncheck_finds_websocket_over_http_sessions() {
    let log = std::env::temp_dir().join(format!("corepin-conncheck-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let backend = PyBackend::start("wsoh_backend.py", &[&log.display().to_string()]);
    let port = backend.port;
    let path = sock_path("conncheck");
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("* 127.0.0.1:{port},over_http"),
        "--control-socket",
        path.to_str().expect("path"),
    ]);
    let mut s = std::net::TcpStream::connect(cp.addr()).expect("connect");
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nAuth-Key: supersecret\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    assert_eq!(read_head_only(&mut r).expect("101").status, 101);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .expect("log")
            .lines()
            .next()
            .expect("entry"),
    )
    .expect("json");
    let id = first["connection_id"].as_str().expect("id").to_string();
    let a = ask(
        &path,
        &[&format!(
            r#"{{"method":"conncheck","ids":["{id}","gone"]}}"#
        )],
    );
    assert_eq!(a[0]["ids"], serde_json::json!([id]));
    drop(r);
    drop(s);
    wait_until("session gone", || {
        ask(
            &path,
            &[&format!(r#"{{"method":"conncheck","ids":["{id}"]}}"#)],
        )[0]["ids"]
            == serde_json::json!([])
    });
}
