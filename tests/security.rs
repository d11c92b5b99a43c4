//! What corepin trusts from clients, tried as an attacker would over real
//! sockets: forged WebSocket-over-HTTP events, route bypasses through the
//! request target and Host, methods a reverse proxy must not forward, and
//! spoofed identity and forwarding headers. The real binary runs on port 0
//! in front of real backends (a threaded Rust backend, a WSGI server, a
//! gripcontrol WebSocket-over-HTTP backend), driven by raw sockets (exact
//! bytes for malformed requests), curl and the Python `websockets` client.

mod common;

use std::process::Command;

use common::*;

/// Sends one raw request on a new connection and reads one response.
fn ask(addr: std::net::SocketAddr, request: &str) -> Response {
    let mut c = Conn::open(addr);
    c.send(request.as_bytes());
    c.read().expect("a response")
}

/// A backend answering `NAME PATH` so a test sees where a request went.
fn named(name: &'static str) -> Backend {
    Backend::start(move |req, _| Reply::Bytes(ok_response(&format!("{name} {}", req.path))))
}

fn requests(b: &Backend) -> usize {
    b.seen.lock().expect("lock").len()
}

// ---- 1. Forged WebSocket-over-HTTP events ----------------------------------

#[test]
fn client_sent_websocket_events_are_refused_on_over_http_routes() {
    let woh = Backend::fixed("events backend");
    let plain = named("plain");
    let cp = Corepin::start(&[
        "--route",
        &format!("*,path_beg=/ws/ {},over_http", woh.addr),
        "--route",
        &format!("* {}", plain.addr),
    ]);
    let forged = "TEXT 5\r\nhello\r\n";
    for content_type in [
        "application/websocket-events",
        "Application/WebSocket-Events; charset=utf-8",
        " application/websocket-events ",
    ] {
        let r = ask(
            cp.addr(),
            &format!(
                "POST /ws/chat HTTP/1.1\r\nHost: a\r\nContent-Type: {content_type}\r\nConnection-Id: victim\r\nMeta-User: admin\r\nContent-Length: {}\r\n\r\n{forged}",
                forged.len()
            ),
        );
        assert_eq!(r.status, 403, "{content_type}");
        assert_eq!(
            r.text(),
            "client not allowed to send WebSocket events directly\n"
        );
    }
    // The CGI spelling of Content-Type is caught too.
    let r = ask(
        cp.addr(),
        "POST /ws/chat HTTP/1.1\r\nHost: a\r\nContent_Type: application/websocket-events\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 403);
    // curl, as a client would forge it.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/websocket-events",
            "-H",
            "Connection-Id: victim",
            "--data-binary",
            forged,
            &cp.url("/ws/chat"),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    assert_eq!(requests(&woh), 0, "no forged event reached the backend");

    // Other requests on the over_http route still pass (without the
    // session fields only corepin may set), and routes without an
    // over_http target are not WebSocket-over-HTTP backends (as Pushpin).
    let r = ask(
        cp.addr(),
        "GET /ws/info HTTP/1.1\r\nHost: a\r\nConnection-Id: victim\r\nConnection_Id: v2\r\nconnection.id: v3\r\nMeta-User: admin\r\nMeta_User: admin\r\nmeta.user: admin\r\nX-Other: kept\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = woh.last();
    assert_eq!(seen.header("x-other"), Some("kept"));
    for (name, value) in &seen.headers {
        let n = name.to_ascii_lowercase().replace(['_', '.'], "-");
        // The one Connection-Id is corepin's own (issue 18: a GRIP
        // backend learns the connection's id), never the client's.
        assert!(
            !n.starts_with("meta-")
                && (n != "connection-id" || (name == "Connection-Id" && !value.starts_with('v'))),
            "{name}: {value} reached the over_http backend"
        );
    }
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection-id"))
            .count(),
        1
    );
    let r = ask(
        cp.addr(),
        "POST /api HTTP/1.1\r\nHost: a\r\nContent-Type: application/websocket-events\r\nMeta-User: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.text(), "plain /api");
    assert_eq!(plain.last().header("meta-user"), Some("x"));
}

#[test]
fn websocket_over_http_sessions_carry_only_corepins_session_fields() {
    let log = std::env::temp_dir().join(format!("corepin-sec-woh-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let b = PyBackend::start("wsoh_backend.py", &[&log.display().to_string()]);
    let cp = Corepin::start(&["--route", &format!("* 127.0.0.1:{},over_http", b.port)]);
    let url = format!("ws://127.0.0.1:{}/chat", cp.port);
    let out = Command::new(python())
        .arg(root().join("tests/clients/ws_client.py"))
        .args([
            &url,
            "-H",
            "Auth-Key: supersecret",
            "-H",
            "Connection-Id: victim",
            "-H",
            "Meta-User: admin",
            "-H",
            "Meta-Role: root",
            "--send",
            "hi",
            "--recv",
            "1",
            "--close",
            "1000",
        ])
        .output()
        .expect("ws client");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("client output is JSON");
    assert_eq!(r["received"], serde_json::json!(["echo: hi"]), "{r}");
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(entries.len() >= 2, "{entries:?}");
    for e in &entries {
        assert_ne!(e["connection_id"], "victim", "{e}");
        assert!(e["connection_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty() && !c.contains(',')));
        assert!(e["meta"].get("role").is_none(), "{e}");
    }
    // OPEN carries no meta; later requests only what the backend set.
    assert_eq!(entries[0]["events"], serde_json::json!(["OPEN"]));
    assert_eq!(entries[0]["meta"], serde_json::json!({}));
    assert!(entries[1..]
        .iter()
        .all(|e| e["meta"] == serde_json::json!({"user": "alice"})));
}

#[test]
fn websocket_over_http_requests_drop_every_spelling_of_session_and_grip_fields() {
    let b = Backend::start(|_, _| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/websocket-events\r\nContent-Length: 6\r\n\r\nOPEN\r\n"
                .to_vec(),
        )
    });
    let cp = Corepin::start(&["--route", &format!("* {},over_http", b.addr)]);
    let mut c = Conn::open(cp.addr());
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nConnection-Id: victim\r\nConnection_Id: victim\r\nMeta-User: admin\r\nMETA_USER: admin\r\nmeta.user: admin\r\nGrip_Sig: forged\r\nGrip.Sig: forged\r\nContent_Type: text/plain\r\nAccept: text/html\r\n\r\n");
    let head = read_head_only(&mut c.r).expect("handshake answer");
    assert_eq!(head.status, 101);
    let open = b.last();
    let names: Vec<String> = open
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase().replace(['_', '.'], "-"))
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "connection-id").count(), 1);
    assert_ne!(open.header("connection-id"), Some("victim"));
    assert!(!names.iter().any(|n| n.starts_with("meta-")), "{names:?}");
    // Only corepin's own Grip-Sig (Pushpin's default key) gets through.
    assert_eq!(names.iter().filter(|n| *n == "grip-sig").count(), 1);
    let sig = open.header("grip-sig").expect("corepin's Grip-Sig");
    assert!(corepin::jwt::verify(sig, b"changeme", Some("pushpin"), corepin::jwt::now()).is_ok());
    assert_eq!(names.iter().filter(|n| *n == "content-type").count(), 1);
    assert_eq!(
        open.header("content-type"),
        Some("application/websocket-events")
    );
    assert_eq!(open.header("accept"), Some("application/websocket-events"));
}

// ---- 2. Routes bypassed through the request target and Host ----------------

/// `*,path_beg=/admin` sends /admin to a gate; everything else goes to the
/// app. No spelling of /admin may reach the app, and the gate sees the
/// path it was routed on.
#[test]
fn no_spelling_of_a_path_bypasses_its_route() {
    let gate = named("gate");
    let app = named("app");
    let cp = Corepin::start(&[
        "--route",
        &format!("*,path_beg=/admin {}", gate.addr),
        "--route",
        &format!("* {}", app.addr),
    ]);
    for target in [
        "/admin",
        "http://public/admin",
        "HTTP://public:80/admin",
        "//admin",
        "///admin",
        "/./admin",
        "/x/../admin",
        "/../admin",
        "/%2e/admin",
        "/%2E%2E/admin",
        "/x/.%2e/admin",
        "/%61dmin",
    ] {
        let r = ask(
            cp.addr(),
            &format!("GET {target} HTTP/1.1\r\nHost: public\r\n\r\n"),
        );
        assert_eq!(r.text(), "gate /admin", "{target}");
    }
    assert_eq!(requests(&app), 0, "nothing reached the app");
    // The query is forwarded as sent.
    let r = ask(
        cp.addr(),
        "GET /x/..//admin/./a?next=/../%2e&x=//y HTTP/1.1\r\nHost: public\r\n\r\n",
    );
    assert_eq!(r.text(), "gate /admin/a?next=/../%2e&x=//y");
    // An encoded slash is data, not a separator: it stays with the app.
    let r = ask(
        cp.addr(),
        "GET /x%2F..%2Fadmin HTTP/1.1\r\nHost: public\r\n\r\n",
    );
    assert_eq!(r.text(), "app /x%2F..%2Fadmin");
    cp.wait_stdout("\"GET /admin/a?next=/../%2e&x=//y\" 200");
}

#[test]
fn absolute_form_host_wins_and_reaches_the_backend_as_host() {
    let public = named("public");
    let other = named("other");
    let cp = Corepin::start(&[
        "--route",
        &format!("public.example {}", public.addr),
        "--route",
        &format!("* {}", other.addr),
    ]);
    let r = ask(
        cp.addr(),
        "GET http://public.example:8080/a?b=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    );
    assert_eq!(r.text(), "public /a?b=1");
    let seen = public.last();
    assert_eq!(seen.header("host"), Some("public.example:8080"));
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .count(),
        1
    );
    let r = ask(
        cp.addr(),
        "GET http://evil.example/a HTTP/1.1\r\nHost: public.example\r\n\r\n",
    );
    assert_eq!(r.text(), "other /a");
    assert_eq!(other.last().header("host"), Some("evil.example"));
    // A fully qualified name with its trailing dot, in any case, is the
    // same host.
    let r = ask(
        cp.addr(),
        "GET /fq HTTP/1.1\r\nHost: Public.Example.\r\n\r\n",
    );
    assert_eq!(r.text(), "public /fq");
}

#[test]
fn connect_and_trace_are_refused() {
    let b = Backend::fixed("backend");
    let cp = Corepin::start(&["--route", &b.route()]);
    let r = raw(
        cp.addr(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{r}");
    assert!(
        r.ends_with("CONNECT is not supported: corepin is a reverse proxy, not a tunnel\n"),
        "{r}"
    );
    let out = Command::new("curl")
        .args(["-sS", "-i", "-X", "TRACE", &cp.url("/")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 501"), "{text}");
    assert!(text.contains("TRACE is not supported"), "{text}");
    let r = raw(cp.addr(), b"trace / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 501"), "{r}");
    assert_eq!(requests(&b), 0);
    // Other methods, extension ones included, pass.
    let r = ask(cp.addr(), "PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn malformed_targets_and_hosts_get_400_with_the_reason() {
    let b = Backend::fixed("backend");
    let cp = Corepin::start(&["--route", &b.route()]);
    for (request, reason) in [
        (
            "GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n",
            "invalid host header",
        ),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid host header"),
        (
            "GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n",
            "invalid host header",
        ),
        (
            "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            "invalid host header",
        ),
        (
            "GET http://u:p@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "userinfo in request target",
        ),
        (
            "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "request target must be a path or an http URI",
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "asterisk-form request target is not supported",
        ),
        (
            "GET /a/..;/admin HTTP/1.1\r\nHost: a\r\n\r\n",
            "dot-segment with parameters in request path",
        ),
        (
            "GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid percent-encoding in request path",
        ),
        (
            "GET /a\\..\\admin HTTP/1.1\r\nHost: a\r\n\r\n",
            "backslash in request path",
        ),
    ] {
        let r = raw(cp.addr(), request.as_bytes());
        assert!(
            r.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{request:?}: {r}"
        );
        assert!(
            r.ends_with(&format!("\r\n\r\n{reason}\n")),
            "{request:?}: {r}"
        );
    }
    assert_eq!(requests(&b), 0);
}

#[test]
fn connection_header_cannot_strip_host() {
    let b = named("b");
    let cp = Corepin::start(&["--route", &b.route()]);
    let r = ask(
        cp.addr(),
        "GET / HTTP/1.1\r\nHost: public.example\r\nConnection: Host, X-Hop\r\nX-Hop: 1\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = b.last();
    assert_eq!(seen.header("host"), Some("public.example"));
    assert_eq!(seen.header("x-hop"), None);
}

// ---- 4. Spoofable identity -------------------------------------------------

/// The WSGI environ a wsgiref backend saw, for one curl request with
/// `headers` through corepin started with `args`.
fn wsgi_environ(args: &[&str], headers: &[&str]) -> serde_json::Value {
    let b = PyBackend::start("wsgi_env.py", &[]);
    let route = format!("* 127.0.0.1:{}", b.port);
    let mut all = vec!["--route", route.as_str()];
    all.extend_from_slice(args);
    let cp = Corepin::start(&all);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", &cp.url("/who")]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.output().expect("curl");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn grip_headers_in_any_spelling_never_reach_a_wsgi_backend() {
    let config = write_config("[grip]\nsig_key = \"k\"\n");
    let env = wsgi_environ(
        &["--config", &config],
        &[
            "Grip_Sig: forged",
            "Grip.Sig: forged",
            "grip-sig: forged",
            "GRIP_LAST: x; last-id=9",
        ],
    );
    let sig = env["HTTP_GRIP_SIG"].as_str().expect("corepin's Grip-Sig");
    assert!(
        corepin::jwt::verify(sig, b"k", Some("pushpin"), corepin::jwt::now()).is_ok(),
        "the backend reads corepin's token alone: {sig}"
    );
    assert!(env.get("HTTP_GRIP.SIG").is_none(), "{env}");
    assert!(env.get("HTTP_GRIP_LAST").is_none(), "{env}");
}

#[test]
fn forwarding_headers_from_clients_are_not_believed_by_default() {
    let env = wsgi_environ(
        &[],
        &[
            "X-Forwarded-For: 6.6.6.6",
            "X_Forwarded_For: 7.7.7.7",
            "X-Real-IP: 6.6.6.6",
            "X_Real_IP: 7.7.7.7",
            "Forwarded: for=6.6.6.6;host=evil",
            "X-Forwarded-Host: evil.example",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Port: 443",
            "True-Client-IP: 6.6.6.6",
        ],
    );
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{env}");
    assert_eq!(env["HTTP_X_REAL_IP"], "127.0.0.1", "{env}");
    assert_eq!(env["HTTP_X_FORWARDED_PROTO"], "http", "{env}");
    let host = env["HTTP_HOST"].as_str().expect("host");
    assert_eq!(env["HTTP_X_FORWARDED_HOST"], host, "{env}");
    for gone in [
        "HTTP_FORWARDED",
        "HTTP_X_FORWARDED_PORT",
        "HTTP_TRUE_CLIENT_IP",
    ] {
        assert!(env.get(gone).is_none(), "{gone}: {env}");
    }
}

#[test]
fn a_trusted_proxy_keeps_its_forwarding_headers() {
    let b = Backend::fixed("ok");
    let config = write_config(
        "[forwarding]\ntrusted_proxies = [\"127.0.0.0/8\"]\nx_forwarded_for_trusted = \"truncate:1,append\"\naccept_x_forwarded_protocol = true\n",
    );
    let cp = Corepin::start(&["--route", &b.route(), "--config", &config]);
    ask(
        cp.addr(),
        "GET / HTTP/1.1\r\nHost: edge\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nX_Forwarded_For: 7.7.7.7\r\nX-Real-IP: 2.2.2.2\r\nForwarded: for=2.2.2.2;proto=https\r\nX-Forwarded-Host: www.example\r\nX-Forwarded-Proto: https\r\n\r\n",
    );
    let seen = b.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("2.2.2.2, 127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("2.2.2.2"));
    assert_eq!(seen.header("forwarded"), Some("for=2.2.2.2;proto=https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("www.example"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert!(
        !seen.headers.iter().any(|(n, _)| n.contains('_')),
        "{:?}",
        seen.headers
    );
    // accept_x_forwarded_protocol takes only https/wss; anything else is http.
    ask(
        cp.addr(),
        "GET / HTTP/1.1\r\nHost: edge\r\nX-Forwarded-Proto: gopher\r\n\r\n",
    );
    assert_eq!(b.last().header("x-forwarded-proto"), Some("http"));
}

#[test]
fn pushpins_pass_through_rule_is_available() {
    let b = Backend::fixed("ok");
    let config = write_config("[forwarding]\nx_forwarded_for = \"\"\n");
    let cp = Corepin::start(&["--route", &b.route(), "--config", &config]);
    ask(
        cp.addr(),
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n",
    );
    assert_eq!(b.last().header("x-forwarded-for"), Some("1.1.1.1"));
    ask(cp.addr(), "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(b.last().header("x-forwarded-for"), None);
}

#[test]
fn unknown_forwarding_values_are_refused_by_name() {
    for (body, needle) in [
        (
            "x_forwarded_for = \"append,prepend\"",
            "forwarding.x_forwarded_for: 'prepend' is not truncate:N or append",
        ),
        (
            "trusted_proxies = [\"proxy.local\"]",
            "forwarding.trusted_proxies: 'proxy.local'",
        ),
        ("trust_everyone = true", "unknown field `trust_everyone`"),
    ] {
        let config = write_config(&format!("[forwarding]\n{body}\n"));
        let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
            .args(["check", "--config", &config])
            .output()
            .expect("corepin check");
        assert_eq!(out.status.code(), Some(2), "{body}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{body}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
