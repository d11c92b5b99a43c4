//! The real publisher libraries publish to corepin unchanged:
//! gripcontrol/pubcontrol from PyPI (formats directly on the item) and
//! @fanoutio/grip from npm (formats under "formats"). tests/run.sh
//! installs both.

mod common;

use std::process::Command;
use std::thread;

use common::*;

fn run(mut cmd: Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} (run tests/run.sh to install the clients): {e}")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn py(uri: &str, mode: &str, channel: &str, content: &str) {
    let mut c = Command::new(python());
    c.arg(root().join("tests/clients/publish.py"))
        .args([uri, mode, channel, content]);
    run(c);
}

fn node(uri: &str, mode: &str, channel: &str, content: &str) {
    let mut c = Command::new("node");
    c.arg(root().join("tests/clients/publish.mjs"))
        .args([uri, mode, channel, content]);
    run(c);
}

#[test]
fn python_gripcontrol_publishes_streams_responses_and_close() {
    let cp = Corepin::start_grip(&["--route", "* test", "--workers", "1"]);
    let uri = format!("http://{}", cp.control_addr());
    let mut s = Stream::open(cp.addr(), "/stream?channel=py");
    py(&uri, "stream", "py", "from python\n");
    assert_eq!(s.read_text(12), "from python\n");
    py(&uri, "close", "py", "");
    assert_eq!(s.chunk(), None, "closed by the library's close action");

    let addr = cp.addr();
    let poll = thread::spawn(move || Conn::open(addr).get("/response?channel=pyr"));
    wait_until("long-poll subscribed", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    py(&uri, "response", "pyr", "answered\n");
    let r = poll.join().expect("poll");
    assert_eq!(
        (r.status, r.text().as_str(), r.header("x-lib")),
        (202, "answered\n", Some("python"))
    );
}

#[test]
fn python_gripcontrol_signs_with_jwt_when_auth_is_on() {
    let cfg = std::env::temp_dir().join(format!("corepin-lib-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[publish]\nauth = \"bearer\"\nkey = \"libkey\"\niss = \"corepin-test\"\n",
    )
    .expect("config");
    let cp = Corepin::start_grip(&["--route", "* test", "--config", &cfg.display().to_string()]);
    let uri = format!("http://{}", cp.control_addr());
    let mut s = Stream::open(cp.addr(), "/stream?channel=sec");
    py(&uri, "bearer:libkey", "sec", "signed\n");
    assert_eq!(s.read_text(7), "signed\n");
    let mut c = Command::new(python());
    c.arg(root().join("tests/clients/publish.py"))
        .args([&uri, "bearer:wrong", "sec", "x"]);
    assert!(
        !c.output().expect("python").status.success(),
        "a wrong key is refused"
    );
}

#[test]
fn node_fanoutio_grip_publishes_streams_and_responses() {
    let cp = Corepin::start_grip(&["--route", "* test", "--workers", "1"]);
    let uri = format!("http://{}", cp.control_addr());
    let mut s = Stream::open(cp.addr(), "/stream?channel=js");
    node(&uri, "stream", "js", "from node\n");
    assert_eq!(s.read_text(10), "from node\n");

    let addr = cp.addr();
    let poll = thread::spawn(move || Conn::open(addr).get("/response?channel=jsr"));
    // The stream on "js" is still held: the long-poll makes two.
    wait_until("long-poll subscribed", || {
        metric(&cp, "corepin_subscriptions") == 2
    });
    node(&uri, "response", "jsr", "answered\n");
    let r = poll.join().expect("poll");
    assert_eq!(
        (r.status, r.text().as_str(), r.header("x-lib")),
        (202, "answered\n", Some("node"))
    );
}
