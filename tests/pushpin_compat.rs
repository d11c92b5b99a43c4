//! A Pushpin deployment's files run corepin: `--pushpin-config` with a
//! pushpin.conf shaped like Debian's and the routes file it names, over
//! real sockets; the routes file reloaded when it changes; the route
//! options that shape requests (`header=`, `as_host`, `orig_headers`,
//! `no_grip`, `sub=`) seen by real backends and a real WebSocket client.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A fresh folder for one test's files.
fn folder(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("corepin-pp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("folder");
    d
}

/// A pushpin.conf of the shape Debian ships (every section and the keys
/// a deployment sets), listening on 127.0.0.1:0, without the publish
/// port, and with its ZeroMQ ports picked free (`*`; tests use port 0
/// only).
fn pushpin_conf(dir: &Path) -> PathBuf {
    let text = format!(
        "[global]
include={{libdir}}/internal.conf
rundir={dir}/run
ipc_prefix=pushpin-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:0
logdir={dir}/log
log_level=2
client_buffer_size=8192
client_maxconn=50000
condure_bin=condure

[proxy]
# routes config file (path relative to location of this file)
routesfile=routes
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
x_forwarded_for=
x_forwarded_for_trusted=
orig_headers_need_mark=
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key=file:key.hex
upstream_key=
sockjs_url=http://cdn.jsdelivr.net/sockjs/0.3.4/sockjs.min.js
updates_check=off
organization_name=

[handler]
push_in_spec=tcp://127.0.0.1:*
push_in_sub_specs=tcp://127.0.0.1:*
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port=0
push_in_http_max_headers_size=10000
push_in_http_max_body_size=1000000
stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats
command_spec=tcp://127.0.0.1:*
message_rate=2500
message_hwm=25000
message_wait=5000
id_cache_ttl=60
# retry/recover sessions soon after the first subscription to a channel
update_on_first_subscription=true
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
",
        dir = dir.display()
    );
    let path = dir.join("pushpin.conf");
    std::fs::write(&path, text).expect("pushpin.conf");
    // "secret", hex-encoded, as Pushpin 1.41 reads a key file.
    std::fs::write(dir.join("key.hex"), "736563726574\n").expect("key");
    path
}

fn start(conf: &Path) -> Corepin {
    Corepin::start_in(&["--pushpin-config", conf.to_str().expect("path")], false)
}

#[test]
fn a_pushpin_conf_and_its_routes_run_unchanged() {
    let a = Backend::fixed("from A");
    let b = Backend::fixed("from B");
    let c = Backend::fixed("from C");
    let dir = folder("run");
    let conf = pushpin_conf(&dir);
    // The catch-all comes first: Pushpin (and corepin) still pick the most
    // specific route, whatever the order.
    std::fs::write(
        dir.join("routes"),
        format!(
            "# routes as Pushpin reads them\n\
             *,path_beg=/,\"header=X-Route: catch-all\" {a}\n\
             \n\
             *,path_beg=/api,as_host=api.internal,header=X-Secret: {b}   # the API\n\
             api.example.com,path_beg=/v1 {c}\n",
            a = a.addr,
            b = b.addr,
            c = c.addr
        ),
    )
    .expect("routes");
    let cp = start(&conf);
    // Its ZeroMQ interfaces are served, the stats socket in rundir.
    cp.wait_stderr("(ZeroMQ PULL: publishes)");
    cp.wait_stderr("(ZeroMQ commands)");
    cp.wait_stderr(&format!(
        "listening on ipc://{}/run/pushpin-stats (ZeroMQ stats)",
        dir.display()
    ));
    // The one warning line names what corepin does not do yet.
    let warning = cp.wait_stderr("settings corepin does not support yet");
    assert!(warning.contains("[handler] message_rate=2500"), "{warning}");
    assert!(
        !warning.contains("update_on_first_subscription"),
        "supported now: {warning}"
    );
    for quiet in [
        "stats_connection",
        "client_maxconn",
        "sig_key",
        "routesfile",
        "condure_bin",
        "updates_check",
        "debug",
        "_spec",
        "log_from",
    ] {
        assert!(!warning.contains(quiet), "{quiet}: {warning}");
    }

    let mut conn = Conn::open(cp.addr());
    conn.send(b"GET /api/items HTTP/1.1\r\nHost: www.example.com\r\nX-Secret: from-client\r\n\r\n");
    assert_eq!(conn.read().expect("answer").text(), "from B");
    let seen = b.last();
    assert_eq!(seen.path, "/api/items");
    assert_eq!(seen.header("host"), Some("api.internal"));
    assert_eq!(seen.header("x-secret"), None, "header=X-Secret: removes it");
    // Signed with pushpin.conf's sig_iss and its sig_key=file: key.
    let sig = seen.header("grip-sig").expect("Grip-Sig").to_string();
    assert!(
        corepin::jwt::verify(&sig, b"secret", Some("pushpin"), corepin::jwt::now()).is_ok(),
        "{sig}"
    );

    assert_eq!(Conn::open(cp.addr()).get("/other").text(), "from A");
    assert_eq!(a.last().header("x-route"), Some("catch-all"));

    // A host with routes of its own does not fall back to `*`.
    let mut conn = Conn::open(cp.addr());
    conn.send(b"GET /v1/z HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    assert_eq!(conn.read().expect("answer").text(), "from C");
    conn.send(b"GET /api/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    assert_eq!(conn.read().expect("answer").status, 404);

    // `check` reads the same files and says the same.
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(["check", "--pushpin-config", conf.to_str().expect("path")])
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("warning:") && stdout.contains("config ok"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_routes_file_is_reloaded_when_it_changes() {
    let a = Backend::fixed("from A");
    let b = Backend::fixed("from B");
    let dir = folder("watch");
    let conf = pushpin_conf(&dir);
    let routes = dir.join("routes");
    std::fs::write(&routes, format!("* {}\n", a.addr)).expect("routes");
    let cp = start(&conf);
    cp.wait_stderr("watching");
    assert_eq!(Conn::open(cp.addr()).get("/").text(), "from A");

    // Written in place: picked up without a signal.
    std::fs::write(&routes, format!("* {}\n", b.addr)).expect("routes");
    wait_until("B to serve", || {
        Conn::open(cp.addr()).get("/").text() == "from B"
    });
    cp.wait_stderr("changed: routes reloaded (1 routes)");

    // A bad file keeps the old routes, and the log says why.
    std::fs::write(&routes, "* zhttp/tcp://127.0.0.1:1\n").expect("routes");
    // (Wait for this refusal itself: an in-place write read half-way can
    // be refused too, and is then healed by the write's next event.)
    let line = cp.wait_stderr("target `zhttp/...` is not supported");
    assert!(
        line.contains("reload refused, keeping the old routes"),
        "{line}"
    );
    assert_eq!(Conn::open(cp.addr()).get("/").text(), "from B");

    // Replaced by a rename, as editors and config tools do.
    let next = dir.join("routes.new");
    std::fs::write(&next, format!("*,path_beg=/b {}\n* {}\n", b.addr, a.addr)).expect("new");
    std::fs::rename(&next, &routes).expect("rename");
    wait_until("A to serve / again", || {
        Conn::open(cp.addr()).get("/").text() == "from A"
    });
    assert_eq!(Conn::open(cp.addr()).get("/b/1").text(), "from B");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn orig_headers_and_no_grip_reach_the_backend_and_client_as_pushpin_sends_them() {
    let grip = Backend::start(|_, _| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nGrip-Hold: stream\r\nGrip-Channel: c\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec(),
        )
    });
    let cp = Corepin::start(&[
        "--route",
        &format!("*,path_beg=/pass,no_grip {}", grip.addr),
        "--route",
        &format!("*,orig_headers {}", grip.addr),
    ]);
    // no_grip: nothing GRIP upstream, and the answer (GRIP headers and
    // all) relayed as is instead of held.
    let mut conn = Conn::open(cp.addr());
    conn.send(b"GET /pass HTTP/1.1\r\nHost: h\r\nGrip-Sig: forged\r\neb9bf0f5-x: smuggled\r\n\r\n");
    let r = conn.read().expect("answer");
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("grip-hold"), Some("stream"));
    let seen = grip.last();
    assert_eq!(seen.header("grip-sig"), None);
    assert_eq!(seen.header("grip-feature"), None);
    assert_eq!(
        seen.header("eb9bf0f5-x"),
        None,
        "marked fields from clients are dropped"
    );

    // orig_headers: marked copies of the client's fields go along.
    let mut conn = Conn::open(cp.addr());
    conn.send(b"GET /o HTTP/1.1\r\nHost: h\r\nX-Client: yes\r\n\r\n");
    wait_until("the backend to see the request", || {
        grip.seen.lock().map(|s| s.len()).unwrap_or(0) >= 2
    });
    let seen = grip.last();
    assert_eq!(seen.header("eb9bf0f5-x-client"), Some("yes"));
    assert_eq!(seen.header("eb9bf0f5-host"), Some("h"));
    assert_eq!(seen.header("x-client"), Some("yes"));
}

#[test]
fn sub_subscribes_websockets_to_the_target_from_the_start() {
    let b = PyBackend::start("ws_echo.py", &[]);
    let cp = Corepin::start_grip(&[
        "--route",
        &format!("*,prefix=p- 127.0.0.1:{},sub=news", b.port),
    ]);
    let publisher = publish_when_subscribed(
        cp.control_addr(),
        1,
        r#"{"items":[{"channel":"p-news","formats":{"ws-message":{"content":"breaking"}}}]}"#,
    );
    let out = Command::new(python())
        .arg(root().join("tests/clients/ws_client.py"))
        .arg(format!("ws://127.0.0.1:{}/echo", cp.port))
        .args(["--send", "hi", "--recv", "2", "--close", "1000"])
        .output()
        .expect("ws client");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("client: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(publisher.join().expect("publisher"), 200);
    let got = r["received"].as_array().cloned().unwrap_or_default();
    assert!(got.contains(&serde_json::json!("hi")), "{r}");
    assert!(got.contains(&serde_json::json!("breaking")), "{r}");
}
