//! What corepin refuses from backends and publishers, black-box: no source
//! of a client response (header-form instructions, JSON instructions,
//! published `http-response` items) gets a header line onto a client's
//! wire; published WebSocket closes that break RFC 6455 are refused; a
//! route reload validates what start-up validates; start-up and config
//! errors say where and what to do.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The text a successful header injection would put on a client's wire.
const INJECTED: &str = "injected=1";

fn sock_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("corepin-val-{tag}-{}.sock", std::process::id()))
}

/// Sends lines on one control-socket connection; returns the answers.
fn ask(path: &Path, lines: &[&str]) -> Vec<serde_json::Value> {
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

/// One request with `Connection: close`; everything the client receives.
fn fetch(addr: std::net::SocketAddr, path: &str) -> String {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Asserts the client got one 502 and nothing else: no second response,
/// no injected header.
fn assert_one_502(what: &str, got: &str) {
    assert!(got.starts_with("HTTP/1.1 502 "), "{what}: {got:?}");
    assert_eq!(got.matches("HTTP/1.1").count(), 1, "{what}: {got:?}");
    assert!(!got.contains(INJECTED), "{what}: {got:?}");
}

#[test]
fn header_form_instructions_cannot_split_a_response() {
    // Each path answers a different hostile instruction.
    let cases: &[(&str, &str, &str)] = &[
        // An obs-fold continuation line trying to smuggle a header in.
        (
            "/fold",
            "HTTP/1.1 200 OK\r\nGrip-Hold: response\r\nGrip-Channel: c\r\nGrip-Status: 200 OK\r\n Set-Cookie: injected=1\r\nContent-Length: 0\r\n\r\n",
            "invalid response from upstream",
        ),
        (
            "/zero",
            "HTTP/1.1 200 OK\r\nGrip-Hold: response\r\nGrip-Channel: c\r\nGrip-Status: 0\r\nContent-Length: 0\r\n\r\n",
            "Grip-Status: code: 0 is not a final status code (200-599)",
        ),
        (
            "/huge",
            "HTTP/1.1 200 OK\r\nGrip-Hold: response\r\nGrip-Channel: c\r\nGrip-Status: 65535 Big\r\nContent-Length: 0\r\n\r\n",
            "Grip-Status: code: 65535 is not a final status code",
        ),
        (
            "/interim",
            "HTTP/1.1 200 OK\r\nGrip-Hold: response\r\nGrip-Channel: c\r\nGrip-Status: 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",
            "Grip-Status: code: 101 is not a final status code",
        ),
        // A body after a 204 would be read as the next response.
        (
            "/nobody",
            "HTTP/1.1 200 OK\r\nGrip-Hold: response\r\nGrip-Channel: c\r\nGrip-Timeout: 5\r\nGrip-Status: 204\r\nContent-Length: 41\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: injected=1\r\n",
            "the response body must be empty: a 204 response has no body",
        ),
        (
            "/stream204",
            "HTTP/1.1 204 No Content\r\nGrip-Hold: stream\r\nGrip-Channel: c\r\n\r\n",
            "a stream hold cannot use status 204",
        ),
    ];
    let b = Backend::start(|req, _| {
        let reply = cases
            .iter()
            .find(|(p, _, _)| *p == req.path)
            .map_or("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", |c| {
                c.1
            });
        Reply::Close(reply.as_bytes().to_vec())
    });
    let cp = Corepin::start_grip(&["--route", &b.route()]);
    for (path, _, why) in cases {
        let got = fetch(cp.addr(), path);
        assert_one_502(path, &got);
        // Unparseable heads are answered with the reason; refused
        // instructions are logged with the field.
        if !got.contains(why) {
            cp.wait_stderr(why);
        }
    }
}

#[test]
fn json_instructions_cannot_split_a_response() {
    use serde_json::json;
    let hold = json!({"mode": "response", "channels": [{"name": "c"}], "timeout": 5});
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "/reason",
            json!({"hold": hold, "response": {"reason": "OK\r\nSet-Cookie: injected=1"}}),
            "grip-instruct: response.reason: contains CR or LF",
        ),
        (
            "/value",
            json!({"hold": hold, "response": {"headers": {"X-A": "1\r\nSet-Cookie: injected=1"}}}),
            "grip-instruct: response.headers.X-A: contains CR or LF",
        ),
        (
            "/name",
            json!({"hold": hold, "response": {"headers": [["Set-Cookie: injected=1\r\nX-A", "1"]]}}),
            "grip-instruct: response.headers[0][0]: is not a header name",
        ),
        (
            "/nul",
            json!({"hold": hold, "response": {"headers": {"X-A": "1\u{0}Set-Cookie: injected=1"}}}),
            "grip-instruct: response.headers.X-A: contains NUL",
        ),
        (
            "/zero",
            json!({"hold": hold, "response": {"code": 0}}),
            "grip-instruct: response.code: 0 is not a final status code (200-599)",
        ),
        (
            "/huge",
            json!({"hold": hold, "response": {"code": 65535}}),
            "grip-instruct: response.code: 65535 is not a final status code",
        ),
        // No hold: the enclosed response is sent at once, checked the same.
        (
            "/pass",
            json!({"response": {"reason": "OK\nSet-Cookie: injected=1"}}),
            "grip-instruct: response.reason: contains CR or LF",
        ),
        (
            "/channel",
            json!({"hold": {"channels": [{"name": "c\r\nSet-Cookie: injected=1"}]}}),
            "grip-instruct: hold.channels[0].name: contains CR or LF",
        ),
    ];
    let bodies: Vec<(String, String)> = cases
        .iter()
        .map(|(p, v, _)| (p.to_string(), v.to_string()))
        .collect();
    let b = Backend::start(move |req, _| {
        let body = bodies
            .iter()
            .find(|(p, _)| *p == req.path)
            .map_or("{}", |(_, b)| b.as_str());
        Reply::Close(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/grip-instruct\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let cp = Corepin::start_grip(&["--route", &b.route()]);
    for (path, _, logged) in &cases {
        assert_one_502(path, &fetch(cp.addr(), path));
        let line = cp.wait_stderr(logged);
        assert!(line.contains("bad GRIP instruction from"), "{line}");
    }
}

#[test]
fn published_responses_are_validated_on_both_apis() {
    let sock = sock_path("pub");
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--control-socket",
        sock.to_str().expect("path"),
    ]);
    // A long-poll waiting on the channel the bad publishes name.
    let mut held = Conn::open(cp.addr());
    held.send(b"GET /response?channel=lp HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    wait_until("the long-poll to subscribe", || {
        subscriptions_at(cp.control_addr()) == 1
    });
    let bad = [
        (
            r#"{"channel":"lp","http-response":{"reason":"OK\r\nSet-Cookie: injected=1","body":"bad\n"}}"#,
            "items[0].http-response.reason: contains CR or LF",
        ),
        (
            r#"{"channel":"lp","formats":{"http-response":{"headers":{"X-A":"1\r\nSet-Cookie: injected=1"}}}}"#,
            "items[0].formats.http-response.headers.X-A: contains CR or LF",
        ),
        (
            r#"{"channel":"lp","http-response":{"headers":[["Set-Cookie: injected=1\nX","1"]]}}"#,
            "items[0].http-response.headers[0][0]: is not a header name",
        ),
        (
            r#"{"channel":"lp","http-response":{"code":0}}"#,
            "items[0].http-response.code: 0 is not a final status code (200-599)",
        ),
        (
            r#"{"channel":"lp","http-response":{"code":65535}}"#,
            "items[0].http-response.code: 65535 is not",
        ),
        (
            r#"{"channel":"lp","http-response":{"code":204,"body":"HTTP/1.1 200 OK\r\nSet-Cookie: injected=1\r\n\r\n"}}"#,
            "items[0].http-response.body: must be empty: a 204 response has no body",
        ),
        (
            r#"{"channel":"lp","id":"1\r\nSet-Cookie: injected=1","http-response":{}}"#,
            "items[0].id: contains CR or LF",
        ),
    ];
    for (item, reason) in bad {
        let body = format!(r#"{{"items":[{item}]}}"#);
        let r = cp.publish(&body);
        assert_eq!(r.status, 400, "{item}: {}", r.text());
        assert!(r.text().contains(reason), "{item}: {}", r.text());
        let line = format!(r#"{{"method":"publish","items":[{item}]}}"#);
        let a = ask(&sock, &[&line]);
        assert_eq!(a[0]["ok"], false, "{a:?}");
        assert!(
            a[0]["error"].as_str().unwrap_or("").contains(reason),
            "{a:?}"
        );
    }
    // A bad item refuses the whole publish: the good item before it is
    // not delivered either.
    let r = cp.publish(
        r#"{"items":[{"channel":"lp","http-response":{"body":"first\n"}},{"channel":"lp","http-response":{"reason":"a\rb"}}]}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r
        .text()
        .contains("items[1].http-response.reason: contains CR or LF"));
    // Nothing reached the held client; a good publish does.
    let r = cp.publish(
        r#"{"items":[{"channel":"lp","http-response":{"code":201,"reason":"Made It","headers":{"X-Ok":"yes"},"body":"good\n"}}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut got = String::new();
    let _ = held.r.read_to_string(&mut got);
    assert!(
        got.starts_with("HTTP/1.1 201 Made It\r\n"),
        "the good publish answers the long-poll: {got:?}"
    );
    assert!(
        got.contains("\r\nX-Ok: yes\r\n") && got.ends_with("\r\n\r\ngood\n"),
        "{got:?}"
    );
    assert_eq!(got.matches("HTTP/1.1").count(), 1, "{got:?}");
    assert!(!got.contains(INJECTED) && !got.contains("first"), "{got:?}");
}

#[test]
fn published_closes_keep_to_rfc_6455() {
    let sock = sock_path("close");
    let cp = Corepin::start_grip(&[
        "--route",
        "* test",
        "--control-socket",
        sock.to_str().expect("path"),
    ]);
    let url = format!("ws://127.0.0.1:{}/ws?channel=wc", cp.port);
    // The real `websockets` client: it would fail the connection on a
    // reserved code or an oversized reason reaching the wire.
    let client = thread::spawn(move || {
        let out = Command::new(python())
            .arg(root().join("tests/clients/ws_client.py"))
            .arg(&url)
            .output()
            .expect("ws client");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "client output: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    });
    wait_until("the WebSocket to subscribe", || {
        subscriptions_at(cp.control_addr()) == 1
    });
    let long = "r".repeat(124);
    let bad: Vec<(String, String)> = [
        (0, "", "items[0].ws-message.code: 0 is not a close code"),
        (999, "", "999 is not a close code"),
        (1004, "", "1004 is reserved"),
        (1005, "", "items[0].ws-message.code: 1005 must never be sent"),
        (1006, "", "1006 must never be sent"),
        (1015, "", "1015 must never be sent"),
        (1016, "", "1016 is reserved for the WebSocket protocol"),
        (2999, "", "2999 is reserved"),
        (5000, "", "5000 is not a close code"),
        (
            4000,
            long.as_str(),
            "items[0].ws-message.reason: is 124 bytes; a close reason is at most 123",
        ),
    ]
    .iter()
    .map(|(code, reason, needle)| {
        (
            format!(
                r#"{{"channel":"wc","ws-message":{{"action":"close","code":{code},"reason":"{reason}"}}}}"#
            ),
            needle.to_string(),
        )
    })
    .collect();
    for (item, needle) in &bad {
        let r = cp.publish(&format!(r#"{{"items":[{item}]}}"#));
        assert_eq!(r.status, 400, "{item}: {}", r.text());
        assert!(r.text().contains(needle.as_str()), "{item}: {}", r.text());
        let a = ask(
            &sock,
            &[&format!(r#"{{"method":"publish","items":[{item}]}}"#)],
        );
        assert_eq!(a[0]["ok"], false, "{a:?}");
        assert!(
            a[0]["error"]
                .as_str()
                .unwrap_or("")
                .contains(needle.as_str()),
            "{a:?}"
        );
    }
    // An application code with a 123-byte reason goes through.
    let reason = "é".repeat(61) + "x";
    assert_eq!(reason.len(), 123);
    let r = cp.publish(&format!(
        r#"{{"items":[{{"channel":"wc","ws-message":{{"action":"close","code":4001,"reason":"{reason}"}}}}]}}"#
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let out = client.join().expect("client");
    assert_eq!(out["close"], serde_json::json!([4001, reason]), "{out}");
}

#[test]
fn a_reload_with_a_bad_sig_key_keeps_the_old_routes() {
    let b = Backend::fixed("ok");
    let dir = std::env::temp_dir().join(format!("corepin-val-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let routes = dir.join("routes");
    let good = format!("*,sig_key=base64:c2VjcmV0,sig_iss=me {}\n", b.addr);
    std::fs::write(&routes, &good).expect("routes");
    let sock = sock_path("reload");
    let cfg = write_config(&format!("routes_file = \"{}\"\n", routes.display()));
    let cp = Corepin::start_grip(&[
        "--config",
        &cfg,
        "--control-socket",
        sock.to_str().expect("path"),
    ]);
    let signed = |what: &str| {
        let mut c = Conn::open(cp.addr());
        assert_eq!(c.get("/").text(), "ok");
        let sig = b.last().header("grip-sig").map(String::from);
        let sig = sig.unwrap_or_else(|| panic!("{what}: no Grip-Sig"));
        assert!(
            corepin::jwt::verify(&sig, b"secret", Some("me"), corepin::jwt::now()).is_ok(),
            "{what}: {sig}"
        );
    };
    signed("at start");

    // The same key text that start-up refuses is refused by a reload.
    std::fs::write(&routes, format!("*,sig_key=base64:!! {}\n", b.addr)).expect("routes");
    let a = ask(&sock, &[r#"{"method":"reload"}"#]);
    assert_eq!(a[0]["ok"], false, "{a:?}");
    let why = a[0]["error"].as_str().unwrap_or("");
    assert!(
        why.contains("line 1: sig_key: key after 'base64:' is not valid base64"),
        "{a:?}"
    );
    cp.wait_stderr("reload refused, keeping the old routes");
    cp.signal(libc::SIGHUP);
    let line = cp.wait_stderr("SIGHUP: reload refused");
    assert!(line.contains("sig_key"), "{line}");
    signed("after the refused reloads");

    // Start-up says the same about the same file.
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(["check", "--config", &cfg])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sig_key: key after 'base64:'"));

    std::fs::write(&routes, &good).expect("routes");
    assert_eq!(ask(&sock, &[r#"{"method":"reload"}"#])[0]["ok"], true);
    signed("after a good reload");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the binary to completion (bounded); returns (exit code, stderr).
fn run_bin(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corepin");
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("corepin did not exit");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    (status.code(), err)
}

#[test]
fn config_errors_name_the_file_the_entry_and_the_line() {
    let bin = env!("CARGO_BIN_EXE_corepin");
    for (text, needle) in [
        (
            "workers = 1\nlisen = []\n",
            ": line 2: unknown field `lisen`",
        ),
        (
            "[limits]\nmax_headers = 10\nbogus = 1\n",
            ": line 3: unknown field `bogus`",
        ),
        (
            "routes = [\"* test\", \"*,path_beg=/a test\", \"* nope\"]\n",
            ": routes[2]: target 'nope' is not host:port or 'test'",
        ),
        ("listen = [\"nowhere\"]\n", ": listen: 'nowhere'"),
    ] {
        let file = write_config(text);
        let (code, err) = run_bin(Command::new(bin).args(["check", "--config", &file]));
        assert_eq!(code, Some(2), "{text:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("corepin: {file}{needle}")),
            "{text:?}: {err}"
        );
    }
    // A flag is named as the flag, with no file.
    let (code, err) = run_bin(Command::new(bin).args([
        "check",
        "--config",
        "config/corepin.toml",
        "--route",
        "* nope",
    ]));
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim_end(),
        "corepin: --route '* nope': target 'nope' is not host:port or 'test'"
    );
}

#[test]
fn a_low_memlock_limit_is_reported_before_listening() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corepin"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--control-http",
        "",
        "--control-socket",
        "",
    ]);
    // SAFETY: setrlimit is async-signal-safe and only lowers this child's
    // own limit, between fork and exec (lowering needs no privilege).
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (code, err) = run_bin(&mut cmd);
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("listening on"), "nothing announced: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for needle in [
        "corepin: the locked-memory limit is 65536 bytes",
        "ulimit -l",
        "LimitMEMLOCK",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn workers_zero_means_every_core_in_flags_and_file() {
    let cores = corepin::server::available_cores();
    let want = format!("running on {cores} cores");
    let cp = Corepin::start(&["--route", "* test", "--workers", "0"]);
    cp.wait_stderr(&want);
    let cfg = write_config("workers = 0\nroutes = [\"* test\"]\n");
    let cp = Corepin::start(&["--config", &cfg]);
    cp.wait_stderr(&want);
    let cp = Corepin::start(&["--route", "* test", "--workers", "1"]);
    cp.wait_stderr("running on 1 cores");
}

#[test]
fn the_access_log_counts_held_stream_payload_not_chunk_framing() {
    let cp = Corepin::start_grip(&["--route", "* test", "--workers", "1"]);
    let mut s = Stream::open(cp.addr(), "/stream?channel=al");
    wait_until("the stream to subscribe", || {
        subscriptions_at(cp.control_addr()) == 1
    });
    // 6 + 300 + 4 payload bytes, in three chunks (the framing adds 14).
    for content in ["hello\n".to_string(), "x".repeat(300), "end\n".into()] {
        cp.publish_stream("al", &content);
    }
    assert_eq!(s.read_text(310).len(), 310);
    let r = cp.publish(r#"{"items":[{"channel":"al","http-stream":{"action":"close"}}]}"#);
    assert_eq!(r.status, 200);
    assert_eq!(s.chunk(), None, "the stream ended");
    let line = cp.wait_stdout("\"GET /stream?channel=al\"");
    assert!(
        line.contains("\"GET /stream?channel=al\" 200 310 test "),
        "{line}"
    );
}
