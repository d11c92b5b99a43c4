//! Pushpin's automatic cross-origin (`aco`, `auto_cross_origin`), black-box:
//! curl and raw clients against corepin in front of real backends, on
//! proxied, held (long-poll and stream), published and error responses.

mod common;

use std::process::Command;
use std::thread;

use common::*;

/// Runs curl with `args` against `url`; returns the status and the
/// response fields (names in lower case) and the body.
fn curl(args: &[&str], url: &str) -> (u16, Vec<(String, String)>, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let fields = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, fields, body.to_string())
}

/// The Access-Control-* fields, in order.
fn cors_of(fields: &[(String, String)]) -> Vec<(String, String)> {
    fields
        .iter()
        .filter(|(n, _)| n.starts_with("access-control-"))
        .cloned()
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

const METHODS: &str = "OPTIONS, HEAD, GET, POST, PUT, DELETE";

#[test]
fn proxied_responses_get_pushpins_cors_fields() {
    let b = Backend::start(|req, _| {
        let body = format!("{} {}", req.method, req.path);
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Custom: 1\r\nx-custom: 2\r\nCache-Control: no-cache\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let cp = Corepin::start(&[
        "--route",
        &format!("*,path_beg=/c,aco {}", b.addr),
        "--route",
        &format!("* {}", b.addr),
    ]);
    // A simple cross-origin GET: Origin echoed, X-Custom exposed once.
    let (status, fields, body) = curl(&["-H", "Origin: http://page.example:8080"], &cp.url("/c/x"));
    assert_eq!((status, body.as_str()), (200, "GET /c/x"));
    assert_eq!(
        cors_of(&fields),
        pairs(&[
            ("access-control-allow-methods", METHODS),
            ("access-control-expose-headers", "X-Custom, Via"),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-origin", "http://page.example:8080"),
            ("access-control-max-age", "3600"),
        ])
    );
    // A preflight goes to the backend (Pushpin answers none itself); the
    // asked method and headers are echoed.
    let (status, fields, body) = curl(
        &[
            "-X",
            "OPTIONS",
            "-H",
            "Origin: http://o",
            "-H",
            "Access-Control-Request-Method: PUT",
            "-H",
            "Access-Control-Request-Headers: x-token, content-type",
        ],
        &cp.url("/c/put"),
    );
    assert_eq!((status, body.as_str()), (200, "OPTIONS /c/put"));
    assert_eq!(b.last().method, "OPTIONS");
    assert_eq!(
        cors_of(&fields)[..2],
        pairs(&[
            ("access-control-allow-methods", "PUT"),
            ("access-control-allow-headers", "x-token, content-type"),
        ])[..]
    );
    // No Origin: `*`.
    let (_, fields, _) = curl(&[], &cp.url("/c/y"));
    assert!(fields.contains(&("access-control-allow-origin".into(), "*".into())));
    // A route without aco gets nothing.
    let (status, fields, _) = curl(&["-H", "Origin: http://o"], &cp.url("/other"));
    assert_eq!(status, 200);
    assert!(cors_of(&fields).is_empty(), "{fields:?}");
}

#[test]
fn backend_fields_are_not_duplicated() {
    let b = Backend::start(|_, _| {
        Reply::Bytes(b"HTTP/1.1 204 No Content\r\naccess-control-allow-origin: https://mine\r\nAccess-Control-Max-Age: 10\r\n\r\n".to_vec())
    });
    let cp = Corepin::start(&["--route", &format!("*,aco {}", b.addr)]);
    let (status, fields, _) = curl(&["-H", "Origin: http://o"], &cp.url("/"));
    assert_eq!(status, 204);
    assert_eq!(
        cors_of(&fields),
        pairs(&[
            ("access-control-allow-origin", "https://mine"),
            ("access-control-max-age", "10"),
            ("access-control-allow-methods", METHODS),
            // corepin's own Via is a field like any other.
            ("access-control-expose-headers", "Via"),
            ("access-control-allow-credentials", "true"),
        ])
    );
}

#[test]
fn errors_on_an_aco_route_get_cors_fields() {
    let cp = Corepin::start(&["--route", &format!("*,aco 127.0.0.1:{}", dead_port())]);
    let (status, fields, _) = curl(&["-H", "Origin: http://o"], &cp.url("/x"));
    assert_eq!(status, 502);
    assert_eq!(
        cors_of(&fields),
        pairs(&[
            ("access-control-allow-methods", METHODS),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-origin", "http://o"),
            ("access-control-max-age", "3600"),
        ])
    );
}

fn grip_backend(headers: &'static str, body: &'static str) -> Backend {
    Backend::start(move |_, _| {
        Reply::Bytes(format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes())
    })
}

#[test]
fn held_and_published_responses_get_cors_fields() {
    let b = grip_backend(
        "Grip-Hold: response\r\nGrip-Channel: c1\r\nGrip-Timeout: 1\r\nX-Held: 1\r\n",
        "timed out\n",
    );
    let cp = Corepin::start_grip(&["--route", &format!("*,aco {}", b.addr), "--workers", "1"]);
    let url = cp.url("/poll");
    let client = thread::spawn(move || curl(&["-H", "Origin: http://page"], &url));
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    let r = cp.publish(r#"{"items":[{"channel":"c1","http-response":{"code":201,"headers":[["X-Pub","yes"],["Access-Control-Allow-Origin","https://pub"]],"body":"done\n"}}]}"#);
    assert_eq!(r.status, 200);
    let (status, fields, body) = client.join().expect("client");
    assert_eq!((status, body.as_str()), (201, "done\n"));
    assert_eq!(
        cors_of(&fields),
        pairs(&[
            ("access-control-allow-origin", "https://pub"),
            ("access-control-allow-methods", METHODS),
            ("access-control-expose-headers", "X-Pub"),
            ("access-control-allow-credentials", "true"),
            ("access-control-max-age", "3600"),
        ])
    );
    // The backend's own response at the hold's timeout.
    let (status, fields, body) = curl(&["-H", "Origin: http://page"], &cp.url("/poll"));
    assert_eq!((status, body.as_str()), (200, "timed out\n"));
    assert!(fields.contains(&("access-control-allow-origin".into(), "http://page".into())));
    assert!(fields.contains(&("access-control-expose-headers".into(), "X-Held".into())));
}

#[test]
fn stream_hold_head_gets_cors_fields() {
    let b = grip_backend("Grip-Hold: stream\r\nGrip-Channel: s1\r\n", "welcome\n");
    let cp = Corepin::start_grip(&["--route", &format!("*,aco {}", b.addr)]);
    let mut s = Stream::open_with(cp.addr(), "/feed", "Origin: http://page\r\n");
    assert_eq!(
        s.head.header("access-control-allow-origin"),
        Some("http://page")
    );
    assert_eq!(
        s.head.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(s.head.header("access-control-expose-headers"), None);
    assert_eq!(s.read_text(8), "welcome\n");
}

#[test]
fn auto_cross_origin_in_the_config_applies_to_every_route() {
    let b = Backend::fixed("plain");
    let cp = Corepin::start(&[
        "--config",
        &write_config("auto_cross_origin = true\n"),
        "--route",
        &b.route(),
    ]);
    let (status, fields, _) = curl(&["-H", "Origin: http://o"], &cp.url("/"));
    assert_eq!(status, 200);
    assert!(fields.contains(&("access-control-allow-origin".into(), "http://o".into())));
}

#[test]
fn aco_with_a_value_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args([
            "check",
            "--config",
            &write_config("routes = [\"*,aco=yes 127.0.0.1:1\"]\n"),
        ])
        .output()
        .expect("corepin check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("aco"), "{err}");
}

/// A backend echoing what reached it as JSON, with a custom field.
fn echo_backend() -> Backend {
    Backend::start(|req, _| {
        let body = serde_json::json!({
            "method": req.method,
            "path": req.path,
            "headers": req.headers,
        })
        .to_string()
            + "\n";
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-B: 1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    })
}

/// The script's argument, as JSON (`/**/CB(ARG);\n`).
fn script_arg(body: &str, cb: &str) -> serde_json::Value {
    let inner = body
        .strip_prefix(&format!("/**/{cb}("))
        .and_then(|b| b.strip_suffix(");\n"))
        .unwrap_or_else(|| panic!("not a {cb} script: {body:?}"));
    serde_json::from_str(inner).unwrap_or_else(|e| panic!("{inner:?}: {e}"))
}

#[test]
fn jsonp_wraps_proxied_answers_and_rewrites_the_request() {
    let b = echo_backend();
    let cp = Corepin::start(&[
        "--route",
        &format!("*,path_beg=/j,aco {}", b.addr),
        "--route",
        &format!(
            "*,path_beg=/basic,aco,jsonp_mode=basic,jsonp_cb=cb {}",
            b.addr
        ),
    ]);
    let headers = "%7B%22X-Token%22%3A%22t1%22%7D";
    let (status, fields, body) = curl(
        &["-H", "Origin: http://o"],
        &cp.url(&format!(
            "/j/x?a=1&callback=got.it&_method=DELETE&_headers={headers}"
        )),
    );
    assert_eq!(status, 200);
    assert!(fields.contains(&("content-type".into(), "application/javascript".into())));
    // JSON-P answers carry no CORS fields (as in Pushpin).
    assert!(cors_of(&fields).is_empty(), "{fields:?}");
    let env = script_arg(&body, "got.it");
    assert_eq!(env["code"], 200);
    assert_eq!(env["reason"], "OK");
    assert_eq!(env["headers"]["X-B"], "1");
    let seen: serde_json::Value =
        serde_json::from_str(env["body"].as_str().expect("body string")).expect("echo");
    assert_eq!(seen["method"], "DELETE");
    assert_eq!(seen["path"], "/j/x?a=1");
    let names: Vec<&str> = seen["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter_map(|h| h[0].as_str())
        .collect();
    assert_eq!(&names[..3], &["X-Token", "Host", "Accept"], "{names:?}");
    // Basic mode: the body itself, one newline trimmed; POST by default.
    let (status, _, body) = curl(&[], &cp.url("/basic/y?cb=f"));
    assert_eq!(status, 200);
    let seen = script_arg(&body, "f");
    assert_eq!(
        (seen["method"].as_str(), seen["path"].as_str()),
        (Some("POST"), Some("/basic/y"))
    );
    // Not a GET: proxied as it is, with CORS fields.
    let (status, fields, body) = curl(&["-X", "POST"], &cp.url("/j/z?callback=f"));
    assert_eq!(status, 200);
    assert!(body.starts_with('{'), "{body}");
    assert!(!cors_of(&fields).is_empty());
}

#[test]
fn jsonp_refuses_bad_parameters_with_400() {
    let b = echo_backend();
    let cp = Corepin::start(&["--route", &format!("*,aco {}", b.addr)]);
    for (q, why) in [
        ("callback=alert(1)//", "Invalid callback parameter."),
        ("callback=a%0D%0Ab", "Invalid callback parameter."),
        ("callback=", "Invalid callback parameter."),
        ("callback=f&_method=G%20T", "Invalid _method parameter."),
        ("callback=f&_headers=%5B%5D", "Invalid _headers parameter."),
        ("callback=f&_body=", "Invalid _body parameter."),
        (
            "callback=f&_headers=%7B%22Content-Length%22%3A%229%22%7D",
            "Invalid _headers parameter.",
        ),
    ] {
        let (status, fields, body) = curl(&["-H", "Origin: http://o"], &cp.url(&format!("/x?{q}")));
        assert_eq!((status, body.trim_end()), (400, why), "{q}");
        assert!(fields.contains(&("access-control-allow-origin".into(), "http://o".into())));
    }
    let long = "a".repeat(129);
    let (status, _, _) = curl(&[], &cp.url(&format!("/x?callback={long}")));
    assert_eq!(status, 400);
    assert_eq!(b.requests(), 0, "nothing refused reached the backend");
}

#[test]
fn jsonp_wraps_a_held_long_polls_published_answer() {
    let b = grip_backend(
        "Grip-Hold: response\r\nGrip-Channel: jp\r\nGrip-Timeout: 1\r\n",
        "late\n",
    );
    let cp = Corepin::start_grip(&["--route", &format!("*,aco {}", b.addr), "--workers", "1"]);
    let url = cp.url("/poll?callback=cb");
    let client = thread::spawn(move || curl(&[], &url));
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    let r = cp.publish(r#"{"items":[{"channel":"jp","http-response":{"code":201,"reason":"Made","headers":[["X-Pub","a"],["x-pub","b"]],"body":"news\n"}}]}"#);
    assert_eq!(r.status, 200);
    let (status, fields, body) = client.join().expect("client");
    assert_eq!(status, 200);
    assert!(fields.contains(&("content-type".into(), "application/javascript".into())));
    // Held answers are wrapped compact, keys sorted, names merged.
    assert!(
        body.starts_with("/**/cb({\"body\":\"news\\n\",\"code\":201,"),
        "{body}"
    );
    let env = script_arg(&body, "cb");
    assert_eq!(env["headers"]["X-Pub"], "a, b");
    assert_eq!(env["reason"], "Made");
    // The hold's timeout answer is wrapped too.
    let (status, _, body) = curl(&[], &cp.url("/poll?callback=cb"));
    assert_eq!(status, 200);
    let env = script_arg(&body, "cb");
    assert_eq!(
        (env["code"].as_u64(), env["body"].as_str()),
        (Some(200), Some("late\n"))
    );
}

/// A backend echoing what reached it, body included, as JSON.
fn body_echo_backend() -> Backend {
    Backend::start(|req, _| {
        let body = serde_json::json!({
            "method": req.method,
            "path": req.path,
            "headers": req.headers,
            "body": String::from_utf8_lossy(&req.body),
        })
        .to_string()
            + "\n";
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    })
}

#[test]
fn jsonp_body_and_default_callback_send_the_query_as_the_body() {
    let b = body_echo_backend();
    let cp = Corepin::start(&[
        "--route",
        &format!(
            "*,path_beg=/b,aco,jsonp_mode=basic,jsonp_body=bparam,jsonp_defcb=jpcb {}",
            b.addr
        ),
        "--route",
        &format!("*,path_beg=/u,aco {}", b.addr),
    ]);
    // Pushpin's own case: `?bparam={}` alone, the default callback, POST.
    let (status, fields, body) = curl(&[], &cp.url("/b/x?bparam=%7B%22k%22%3A%5B1%5D%7D&z=1"));
    assert_eq!(status, 200, "{body}");
    assert!(fields.contains(&("content-type".into(), "application/javascript".into())));
    let seen = script_arg(&body, "jpcb");
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/b/x?z=1");
    assert_eq!(seen["body"], r#"{"k":[1]}"#);
    let fields: Vec<(String, String)> = seen["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap_or("").to_ascii_lowercase(),
                h[1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        fields.contains(&("content-type".into(), "application/json".into())),
        "{fields:?}"
    );
    assert!(
        fields.contains(&("content-length".into(), "9".into())),
        "{fields:?}"
    );
    // A callback in the query wins; no body parameter, no callback: not
    // JSON-P; an empty body parameter is refused.
    let (_, _, body) = curl(&[], &cp.url("/b/x?callback=mine&bparam=1"));
    assert_eq!(script_arg(&body, "mine")["body"], "1");
    let (status, fields, body) = curl(&[], &cp.url("/b/x?q=1"));
    assert_eq!(status, 200);
    assert!(
        fields.contains(&("content-type".into(), "application/json".into())),
        "{body}"
    );
    let (status, _, body) = curl(&[], &cp.url("/b/x?bparam="));
    assert_eq!((status, body.trim_end()), (400, "Invalid body parameter."));
    // Without jsonp_body, `_body` is the body (no Content-Type added).
    let (status, _, body) = curl(&[], &cp.url("/u/y?callback=cb&_method=PUT&_body=a%20b"));
    assert_eq!(status, 200);
    let env = script_arg(&body, "cb");
    let seen: serde_json::Value =
        serde_json::from_str(env["body"].as_str().expect("body")).expect("echo");
    assert_eq!(
        (seen["method"].as_str(), seen["body"].as_str()),
        (Some("PUT"), Some("a b"))
    );
    assert_eq!(seen["path"], "/u/y");
    assert_eq!(
        b.requests(),
        4,
        "the refused request never reached the backend"
    );
}

#[test]
fn jsonp_options_are_checked_by_name() {
    for (line, needle) in [
        ("*,jsonp_mode=basic 127.0.0.1:1", "need aco"),
        ("*,aco,jsonp_mode=odd 127.0.0.1:1", "basic or extended"),
        ("*,aco,jsonp_body=a=b 127.0.0.1:1", "jsonp_body"),
        (
            "*,aco,jsonp_defcb=f 127.0.0.1:1",
            "jsonp_defcb needs jsonp_body",
        ),
        (
            "*,aco,jsonp_body=b,jsonp_defcb=x%28 127.0.0.1:1",
            "jsonp_defcb",
        ),
        ("*,aco,jsonp_defmethod=a(b 127.0.0.1:1", "jsonp_defmethod"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
            .args([
                "check",
                "--config",
                &write_config(&format!("routes = [\"{line}\"]\n")),
            ])
            .output()
            .expect("corepin check");
        assert!(!out.status.success(), "{line}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{line}: {err}");
    }
}

// ---- Pushpin's trust and logging route options

/// The target property `untrusted`: Pushpin's connection manager refuses
/// internal addresses for such a target (trusted ones, the default, skip
/// its policies); corepin answers 502 without connecting and logs why. A
/// failover target without the property is still reached.
#[test]
fn untrusted_targets_are_refused_internal_addresses() {
    let b = Backend::fixed("reached");
    let port = b.addr.port();
    let cp = Corepin::start(&[
        "--route",
        &format!("*,path_beg=/u {},untrusted", b.addr),
        "--route",
        &format!("*,path_beg=/name localhost:{port},untrusted"),
        "--route",
        &format!("*,path_beg=/f {},untrusted {}", b.addr, b.addr),
        "--route",
        &format!("* {}", b.addr),
    ]);
    let mut c = Conn::open(cp.addr());
    let r = c.get("/u/x");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text()
            .contains("the target is untrusted and the address is internal"),
        "{}",
        r.text()
    );
    cp.wait_stderr(&format!(
        "connect to {} refused: untrusted target, and {} is an internal address",
        b.addr, b.addr
    ));
    // A name is refused when every address it resolves to is internal.
    let r = Conn::open(cp.addr()).get("/name");
    assert_eq!(r.status, 502, "{}", r.text());
    cp.wait_stderr(&format!(
        "connect to localhost:{port} refused: untrusted target"
    ));
    assert_eq!(b.requests(), 0, "no request reached the backend");
    // The trusted failover target is reached; so is a trusted route.
    let r = Conn::open(cp.addr()).get("/f");
    assert_eq!((r.status, r.text().as_str()), (200, "reached"));
    let r = Conn::open(cp.addr()).get("/t");
    assert_eq!((r.status, r.text().as_str()), (200, "reached"));
    assert_eq!(b.requests(), 2);
}

/// A WebSocket to an untrusted internal target is refused the same way.
#[test]
fn untrusted_websocket_targets_are_refused_too() {
    let b = Backend::fixed("reached");
    let cp = Corepin::start(&["--route", &format!("* {},untrusted", b.addr)]);
    let mut c = Conn::open(cp.addr());
    c.send(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let r = c.read().expect("an answer");
    assert_eq!(r.status, 502, "{}", r.text());
    cp.wait_stderr("refused: untrusted target");
    assert_eq!(b.requests(), 0);
}

/// A CA and a leaf it signs for `names`, written into `dir` as
/// `ca.pem`, `leaf.crt` and `leaf.key`.
fn ca_and_leaf(dir: &TempDir, names: &[&str]) -> (String, String, String) {
    let ca = Ca::new("dropin test CA");
    ca.leaf_into(dir, "leaf", names);
    let path = |name: &str| dir.path().join(name).display().to_string();
    (
        ca.write_pem(dir, "ca.pem").display().to_string(),
        path("leaf.crt"),
        path("leaf.key"),
    )
}

/// `trust_connect_host`: the backend's certificate is checked against the
/// address connected to (here 127.0.0.1, the certificate's only name)
/// instead of `host=`, which is still the Host sent.
#[test]
fn trust_connect_host_verifies_the_address_not_host() {
    let dir = TempDir::new("trust-connect-host");
    let (ca, crt, key) = ca_and_leaf(&dir, &["127.0.0.1"]);
    let backend = PyBackend::start("tls_http.py", &[&crt, &key]);
    let p = backend.port;
    let cp = Corepin::start_env(
        &[("SSL_CERT_FILE", &ca)],
        &[
            "--route",
            &format!("*,path_beg=/connect 127.0.0.1:{p},ssl,host=api.example,trust_connect_host"),
            "--route",
            &format!("* 127.0.0.1:{p},ssl,host=api.example"),
        ],
    );
    let r = Conn::open(cp.addr()).get("/connect");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "tls backend /connect proto=http");
    // Without it the name checked is host=, which the certificate lacks.
    let r = Conn::open(cp.addr()).get("/named");
    assert_eq!(r.status, 502, "{}", r.text());
    cp.wait_stderr(&format!(
        "TLS to 127.0.0.1:{p} failed: bad TLS handshake: invalid peer certificate: certificate not valid for name \"api.example\""
    ));
}

/// `log_level=N` is the most verbose level logged for requests on that
/// route (Pushpin's numbers: 0 error, 1 warn, 2 info, 3 debug); the
/// access line is an info line. One connection, so one core's log keeps
/// the requests' order: once the last line is out, the others are too.
#[test]
fn log_level_decides_a_routes_access_lines() {
    let b = Backend::fixed("ok");
    let routes = [
        format!("*,path_beg=/quiet,log_level=1 {}", b.addr),
        format!("*,path_beg=/loud,log_level=2 {}", b.addr),
        format!("* {}", b.addr),
    ];
    let mut args = vec![];
    for r in &routes {
        args.extend(["--route", r.as_str()]);
    }
    // At the default level (info): the quiet route's lines are dropped.
    let cp = Corepin::start(&args);
    let mut c = Conn::open(cp.addr());
    for path in ["/quiet/1", "/plain/1", "/loud/1", "/plain/2"] {
        assert_eq!(c.get(path).status, 200, "{path}");
    }
    cp.wait_stdout("\"GET /plain/2\"");
    let out = cp.stdout.lock().expect("stdout").join("\n");
    assert!(
        out.contains("\"GET /plain/1\"") && out.contains("\"GET /loud/1\""),
        "{out}"
    );
    assert!(!out.contains("/quiet/"), "{out}");
    drop(cp);
    // At warn: only the route asking for info lines has them.
    let mut args = args.clone();
    args.extend(["--log-level", "warn"]);
    let cp = Corepin::start(&args);
    let mut c = Conn::open(cp.addr());
    for path in ["/plain/1", "/quiet/1", "/loud/1"] {
        assert_eq!(c.get(path).status, 200, "{path}");
    }
    cp.wait_stdout("\"GET /loud/1\"");
    let out = cp.stdout.lock().expect("stdout").join("\n");
    assert!(
        !out.contains("/plain/") && !out.contains("/quiet/"),
        "{out}"
    );
}

/// `session` does nothing in Pushpin without its inspect and state
/// services; corepin has neither, serves the route, and says so at start.
#[test]
fn session_is_served_with_a_warning_naming_it() {
    let b = Backend::fixed("ok");
    let route = format!("*,session {}", b.addr);
    let cp = Corepin::start(&["--route", &route]);
    cp.wait_stderr(&format!(
        "warning: route '{route}': option `session` has no effect: Pushpin uses it only with its inspect and state services"
    ));
    assert_eq!(Conn::open(cp.addr()).get("/").status, 200);
}
