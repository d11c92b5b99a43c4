//! GRIP as backends written for Pushpin use it, with the real libraries:
//! a Django app holding connections through django-grip (filters, meta,
//! the Grip-Sig check of GRIP_PROXY_REQUIRED), publishes made with
//! gripcontrol/pubcontrol (item meta, content-filters, a body-patch).
//! tests/run.sh installs them.

mod common;

use std::process::Command;
use std::thread;

use common::*;

fn publish_meta(uri: &str, mode: &str, channel: &str, content: &str, arg: &str) {
    let out = Command::new(python())
        .arg(root().join("tests/clients/publish_meta.py"))
        .args([uri, mode, channel, content, arg])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python (run tests/run.sh): {e}"));
    assert!(
        out.status.success(),
        "publish_meta.py {mode}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn django(args: &[&str]) -> (PyBackend, Corepin) {
    let app = PyBackend::start("django_app.py", args);
    let route = format!("* 127.0.0.1:{}", app.port);
    let cp = Corepin::start_grip(&["--route", &route, "--workers", "1"]);
    (app, cp)
}

/// Two users stream a room with skip-self and var-subst (declared by
/// django-grip through gripcontrol's Channel.filters, meta through
/// instruct.meta); what one sends does not come back to them, and each
/// gets the message with their own name in it.
#[test]
fn django_grip_skip_self_and_var_subst() {
    let (_app, cp) = django(&[]);
    let uri = format!("http://{}", cp.control_addr());
    let mut alice = Stream::open(cp.addr(), "/stream/alice");
    assert_eq!(alice.head.status, 200);
    assert_eq!(alice.read_text(14), "welcome alice\n");
    let mut bob = Stream::open(cp.addr(), "/stream/bob");
    assert_eq!(bob.read_text(12), "welcome bob\n");
    wait_until("both subscribed", || {
        metric(&cp, "corepin_subscriptions") == 2
    });

    publish_meta(
        &uri,
        "stream-from",
        "room",
        "alice says hi to %(name)s\n",
        "alice",
    );
    assert_eq!(bob.read_text(21), "alice says hi to Bob\n");
    // A marker anyone gets: alice's next bytes are the marker, so her own
    // message was not delivered to her (no waiting on a timeout).
    publish_meta(&uri, "stream-from", "room", "marker %(name)s\n", "");
    assert_eq!(alice.read_text(13), "marker Alice\n");
    assert_eq!(bob.read_text(11), "marker Bob\n");

    // content-filters: a publish written for exactly the channel's
    // content filters (var-subst) is delivered; one written for none is
    // not delivered to subscribers that have one.
    publish_meta(&uri, "stream-content-filters", "room", "cf %(name)s\n", "");
    publish_meta(
        &uri,
        "stream-content-filters",
        "room",
        "ok %(name)s\n",
        "var-subst",
    );
    assert_eq!(alice.read_text(9), "ok Alice\n");
    assert_eq!(bob.read_text(7), "ok Bob\n");

    // A variable the subscriber has no meta for: not delivered (counted),
    // the stream goes on.
    publish_meta(&uri, "stream-from", "room", "%(nope)s\n", "");
    publish_meta(&uri, "stream-from", "room", "after\n", "");
    assert_eq!(alice.read_text(6), "after\n");
    assert_eq!(bob.read_text(6), "after\n");
    cp.wait_stderr("no such variable 'nope'");
}

/// A long-poll held on a JSON body gets the publish's body-patch applied
/// to its own body, in Pushpin's output form.
#[test]
fn body_patch_applies_to_the_held_body() {
    let (_app, cp) = django(&[]);
    let uri = format!("http://{}", cp.control_addr());
    let addr = cp.addr();
    let poll = thread::spawn(move || Conn::open(addr).get("/poll"));
    wait_until("long-poll subscribed", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    publish_meta(
        &uri,
        "patch",
        "patch",
        r#"[{"op":"replace","path":"/n","value":1},{"op":"add","path":"/a/-","value":2}]"#,
        "",
    );
    let r = poll.join().expect("poll");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{\"a\":[1,2],\"n\":1}\n");
    assert_eq!(r.header("content-length"), Some("18"));
}

/// corepin signs as Pushpin does by default, so django-grip (checking
/// Grip-Sig with Pushpin's default key, GRIP_PROXY_REQUIRED) takes the
/// request as proxied; with signing off it refuses to hold (501).
#[test]
fn django_grip_sees_the_default_signature() {
    let (_app, cp) = django(&[]);
    let r = Conn::open(cp.addr()).get("/whoami");
    let who: serde_json::Value = serde_json::from_str(&r.text()).expect("json");
    assert_eq!(who["proxied"], true, "{who}");
    assert_eq!(who["signed"], true, "{who}");
    let features = who["features"].as_array().expect("features");
    for f in ["filter:skip-self", "filter:var-subst", "filter:build-id"] {
        assert!(features.iter().any(|x| x == f), "{f} in {who}");
    }
    let warned = cp
        .stderr
        .lock()
        .map(|v| v.iter().filter(|l| l.contains("\"changeme\"")).count())
        .unwrap_or(0);
    assert_eq!(warned, 1, "one start-up warning about the public key");

    let app = PyBackend::start("django_app.py", &[]);
    let route = format!("* 127.0.0.1:{}", app.port);
    let off = write_config("[grip]\nsign = false\n");
    let cp = Corepin::start_grip(&["--route", &route, "--config", &off]);
    let r = Conn::open(cp.addr()).get("/stream/alice");
    assert_eq!(
        (r.status, r.text().as_str()),
        (501, "Not Implemented\n"),
        "an unsigned proxy is not trusted"
    );
    assert!(cp
        .stderr
        .lock()
        .map(|v| !v.iter().any(|l| l.contains("\"changeme\"")))
        .unwrap_or(false));
}
