//! GRIP lifecycle, as Pushpin 1.41 runs it: a stream that falls behind a
//! channel's ids fetches its next link (`Grip-Last` says where it was), and
//! its answer continues the stream.

mod common;

use common::*;

fn seen_paths(b: &Backend) -> Vec<String> {
    b.seen
        .lock()
        .map(|v| v.iter().map(|s| s.path.clone()).collect())
        .unwrap_or_default()
}

/// A stream held with `prev-id` follows the channel's ids: an item whose
/// prev-id is its last id is delivered; one that skips ids is not, and the
/// stream fetches its next link with `Grip-Last` instead, whose body
/// continues the stream and whose prev-id it then follows.
#[test]
fn a_stream_behind_on_prev_id_fetches_its_next_link() {
    let b = Backend::start(|req, _| {
        let (channel, body) = if req.path == "/next" {
            ("c; prev-id=9", "caught-up\n")
        } else {
            ("c; prev-id=1", "start\n")
        };
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\nGrip-Hold: stream\r\nGrip-Channel: {channel}\r\nGrip-Link: </next>; rel=next; timeout=120\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let cp = Corepin::start_grip(&["--route", &b.route(), "--workers", "1"]);
    let mut s = Stream::open(cp.addr(), "/s");
    assert_eq!(s.read_text(6), "start\n");
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    let item = |id: u32, prev: u32, text: &str| {
        format!(
            r#"{{"items":[{{"channel":"c","id":"{id}","prev-id":"{prev}","no-seq":true,"http-stream":{{"content":"{text}\n"}}}}]}}"#
        )
    };
    assert_eq!(cp.publish(&item(2, 1, "two")).status, 200);
    assert_eq!(s.read_text(4), "two\n");
    assert_eq!(cp.publish(&item(9, 5, "nine")).status, 200);
    assert_eq!(
        s.read_text(10),
        "caught-up\n",
        "not nine: the next link's body"
    );
    let next = b
        .seen
        .lock()
        .expect("lock")
        .iter()
        .find(|r| r.path == "/next")
        .cloned()
        .expect("next link fetched");
    assert_eq!(next.method, "GET");
    assert_eq!(next.header("grip-last"), Some("c; last-id=2"));
    assert_eq!(seen_paths(&b), ["/s", "/next"]);
    // The next link's hold set prev-id 9: 10 follows on.
    assert_eq!(cp.publish(&item(10, 9, "ten")).status, 200);
    assert_eq!(s.read_text(4), "ten\n");
}

/// `POST /recover` on the control port (and `recover` on the control
/// socket): a stream with a next link fetches it, a long-poll re-requests
/// the backend.
#[test]
fn recover_refetches_streams_and_long_polls() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let polls = std::sync::Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let b = Backend::start(move |req, _| {
        let hold = |headers: &str, body: &str| {
            Reply::Bytes(
                format!(
                    "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        };
        match req.path.as_str() {
            "/s" => hold(
                "Grip-Hold: stream\r\nGrip-Channel: s\r\nGrip-Link: </next>; rel=next; timeout=120\r\n",
                "start\n",
            ),
            "/next" => hold(
                "Grip-Hold: stream\r\nGrip-Channel: s\r\nGrip-Link: </next>; rel=next; timeout=120\r\n",
                "recovered\n",
            ),
            _ if p.fetch_add(1, Ordering::SeqCst) == 0 => {
                hold("Grip-Hold: response\r\nGrip-Channel: lp\r\n", "timeout\n")
            }
            _ => hold("", "fresh\n"),
        }
    });
    let dir = std::env::temp_dir().join(format!("corepin-recover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("c.sock");
    let sock_s = sock.display().to_string();
    let cp = Corepin::start_grip(&["--route", &b.route(), "--control-socket", &sock_s]);
    let mut s = Stream::open(cp.addr(), "/s");
    assert_eq!(s.read_text(6), "start\n");
    let addr = cp.addr();
    let poll = std::thread::spawn(move || Conn::open(addr).get("/lp"));
    wait_until("both held", || metric(&cp, "corepin_subscriptions") == 2);

    let r = cp.control("GET /recover HTTP/1.1\r\nHost: c\r\n\r\n");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = cp.control("POST /recover HTTP/1.1\r\nHost: c\r\nContent-Length: 0\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "Updated\n"));
    assert_eq!(s.read_text(10), "recovered\n");
    let r = poll.join().expect("poll");
    assert_eq!(r.text(), "fresh\n", "the long-poll asked the backend again");
    assert_eq!(polls.load(Ordering::SeqCst), 2);

    // The control socket's recover: the stream fetches its link again.
    use std::io::{BufRead, Write};
    let u = std::os::unix::net::UnixStream::connect(&sock).expect("control socket");
    u.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    (&u).write_all(b"{\"method\":\"recover\"}\n")
        .expect("write");
    let mut line = String::new();
    std::io::BufReader::new(&u)
        .read_line(&mut line)
        .expect("answer");
    assert_eq!(line.trim(), r#"{"ok":true}"#);
    assert_eq!(s.read_text(10), "recovered\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checks a Grip-Sig with gripcontrol's validate_sig and Pushpin's default
/// key, as a backend library would.
fn gripcontrol_accepts(token: &str) -> bool {
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import sys; from gripcontrol import validate_sig; sys.exit(0 if validate_sig(sys.argv[1], 'changeme') else 1)",
            token,
        ])
        .output()
        .unwrap_or_else(|e| panic!("python (run tests/run.sh): {e}"));
    out.status.success()
}

/// `Grip-Link: <...>; rel=gone`: when a held request ends (the client
/// leaves, or its long-poll is answered) corepin POSTs the link, empty,
/// without the client's fields, signed.
#[test]
fn gone_links_are_posted_when_held_requests_end() {
    let b = Backend::start(|req, _| {
        let body = match req.path.as_str() {
            p if p.starts_with("/gone/") => return Reply::Bytes(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
            "/stream" => "HTTP/1.1 200 OK\r\nGrip-Hold: stream\r\nGrip-Channel: g\r\nGrip-Link: </gone/stream>; rel=gone\r\nContent-Length: 3\r\n\r\nhi\n",
            _ => "HTTP/1.1 200 OK\r\nGrip-Hold: response\r\nGrip-Channel: gl\r\nGrip-Link: </gone/poll>; rel=gone\r\nContent-Length: 0\r\n\r\n",
        };
        Reply::Bytes(body.as_bytes().to_vec())
    });
    let cp = Corepin::start_grip(&["--route", &b.route(), "--workers", "1"]);
    let gone = |path: &str| {
        b.seen
            .lock()
            .ok()
            .and_then(|v| v.iter().find(|r| r.path == path).cloned())
    };
    let mut s = Stream::open_with(cp.addr(), "/stream", "Cookie: session=secret\r\n");
    assert_eq!(s.read_text(3), "hi\n");
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    assert!(gone("/gone/stream").is_none(), "not while held");
    drop(s);
    wait_until("gone POSTed", || gone("/gone/stream").is_some());
    let g = gone("/gone/stream").expect("gone");
    assert_eq!(g.method, "POST");
    assert!(g.body.is_empty());
    assert_eq!(g.header("content-length"), Some("0"));
    assert_eq!(g.header("cookie"), None, "none of the client's fields");
    assert!(gripcontrol_accepts(g.header("grip-sig").expect("Grip-Sig")));

    // A long-poll answered by a publish: its session ends, gone follows.
    let addr = cp.addr();
    let poll = std::thread::spawn(move || Conn::open(addr).get("/poll"));
    wait_until("long-poll held", || {
        metric(&cp, "corepin_subscriptions") == 1
    });
    cp.publish(r#"{"items":[{"channel":"gl","http-response":{"body":"done\n"}}]}"#);
    assert_eq!(poll.join().expect("poll").text(), "done\n");
    wait_until("gone POSTed", || gone("/gone/poll").is_some());
}

/// A test backend answering `path -> (head fields, body)`; the rest 404.
fn answering(table: &'static [(&'static str, &'static str, &'static str)]) -> Backend {
    Backend::start(move |req, _| {
        let path = req.path.split('?').next().unwrap_or("");
        match table.iter().find(|(p, _, _)| *p == path) {
            Some((_, fields, body)) => Reply::Bytes(
                format!(
                    "HTTP/1.1 200 OK\r\n{fields}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            ),
            None => Reply::Bytes(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()),
        }
    })
}

/// Reads a held stream to its end (the last chunk or a close).
fn rest_of(s: &mut Stream) -> String {
    let mut got = Vec::new();
    while let Some(c) = s.chunk() {
        got.extend_from_slice(&c);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// `build-id` runs over response bodies too, as Pushpin's response-content
/// filter: a stream hold's own body, a next link's body (with that
/// response's meta), a no-hold response's body; there no channel prev-id
/// is at hand, so `%(id)I` works and `%I` is an error: a no-hold response
/// gets 502, a stream ends (with the reason on a `debug` route). A
/// long-poll's timeout body is sent as given (Pushpin does not filter it).
#[test]
fn build_id_rewrites_hold_and_next_link_bodies() {
    let b = answering(&[
        (
            "/s",
            "Grip-Hold: stream\r\nGrip-Channel: c; filter=build-id\r\nGrip-Set-Meta: id_format=\"id-%%\"\r\nGrip-Link: </next>; rel=next; timeout=120\r\n",
            "start %(abc)I 100%%\n",
        ),
        (
            "/next",
            "Grip-Hold: stream\r\nGrip-Channel: c; filter=skip-self; filter=build-id\r\nGrip-Set-Meta: id_format=x, id_encoding=hex\r\nGrip-Link: </next>; rel=next; timeout=120\r\n",
            "next %(ab)I\n",
        ),
        (
            "/plain",
            "Grip-Channel: c; filter=build-id\r\nGrip-Set-Meta: id_format=x\r\n",
            "plain %(z)I\n",
        ),
        (
            "/plain-bad",
            "Grip-Channel: c; filter=build-id\r\nGrip-Set-Meta: id_format=x\r\n",
            "plain %I\n",
        ),
        (
            "/poll",
            "Grip-Hold: response\r\nGrip-Timeout: 5\r\nGrip-Channel: lp; filter=build-id\r\nGrip-Set-Meta: id_format=x\r\n",
            "kept %(z)I\n",
        ),
        (
            "/d/bad",
            "Grip-Hold: stream\r\nGrip-Channel: c; filter=build-id\r\nGrip-Set-Meta: id_format=x\r\n",
            "bad %I\n",
        ),
        (
            "/quiet-bad",
            "Grip-Hold: stream\r\nGrip-Channel: c; filter=build-id\r\nGrip-Set-Meta: id_format=x\r\n",
            "bad %I\n",
        ),
        // Without build-id a body is left as it is.
        ("/none", "Grip-Hold: stream\r\nGrip-Channel: n\r\n", "as is %I\n"),
    ]);
    let debug = format!("*,path_beg=/d/,debug {}", b.addr);
    let cp = Corepin::start_grip(&["--route", &debug, "--route", &b.route(), "--workers", "1"]);
    let mut s = Stream::open(cp.addr(), "/s");
    assert_eq!(s.read_text(15), "start abc 100%\n", "the hold's own body");
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    // A hint makes the stream fetch its next link, whose body goes through
    // the next response's build-id with its own meta (hex). (The hint item
    // itself passes the filters first, as in Pushpin: an `id_format` naming
    // a channel without a prev-id would fail there and drop it.)
    let r = cp.publish(r#"{"items":[{"channel":"c","http-stream":{"action":"hint"}}]}"#);
    assert_eq!(r.status, 200);
    assert_eq!(s.read_text(10), "next 6162\n", "the next link's body");
    drop(s);

    let r = Conn::open(cp.addr()).get("/plain");
    assert_eq!((r.status, r.text().as_str()), (200, "plain z\n"));
    let r = Conn::open(cp.addr()).get("/plain-bad");
    assert_eq!(r.status, 502, "no ID for %I: {}", r.text());
    cp.wait_stderr("filter error: build-id: no ID specified and no default ID in context");

    let mut s = Stream::open(cp.addr(), "/d/bad");
    assert_eq!(s.head.status, 200, "the head was out before the filter ran");
    assert_eq!(
        rest_of(&mut s),
        "\n\nfilter error: build-id: no ID specified and no default ID in context at position 5\n",
        "a debug route says why, then the stream ends"
    );
    let mut s = Stream::open(cp.addr(), "/quiet-bad");
    assert_eq!(rest_of(&mut s), "", "elsewhere the stream just ends");
    let mut s = Stream::open(cp.addr(), "/none");
    assert_eq!(s.read_text(9), "as is %I\n");
    drop(s);

    let poll = Conn::open(cp.addr()).get("/poll");
    assert_eq!(
        poll.text(),
        "kept %(z)I\n",
        "a long-poll's timeout body as given"
    );
}

/// A stream hold that follows a channel's ids (`prev-id`) but gives no
/// next link to catch up through is an error, as in Pushpin: the client
/// gets the initial response, then the stream ends (saying why on a
/// `debug` route), and the log names the channel.
#[test]
fn a_stream_with_prev_id_and_no_next_link_ends() {
    let b = answering(&[
        ("/s", "Grip-Hold: stream\r\nGrip-Channel: a, c; prev-id=1\r\n", "hi\n"),
        ("/d/s", "Grip-Hold: stream\r\nGrip-Channel: c; prev-id=1\r\n", "hi\n"),
        // A next link's stream hold is held to the same rule.
        (
            "/d/linked",
            "Grip-Hold: stream\r\nGrip-Channel: l\r\nGrip-Link: </d/unlinked>; rel=next; timeout=120\r\n",
            "one\n",
        ),
        ("/d/unlinked", "Grip-Hold: stream\r\nGrip-Channel: l; prev-id=5\r\n", "two\n"),
    ]);
    let debug = format!("*,path_beg=/d/,debug {}", b.addr);
    let cp = Corepin::start_grip(&["--route", &debug, "--route", &b.route(), "--workers", "1"]);
    let mut s = Stream::open(cp.addr(), "/s");
    assert_eq!(rest_of(&mut s), "hi\n");
    cp.wait_stderr("channel 'c' specifies prev-id, but no next link found");
    let mut s = Stream::open(cp.addr(), "/d/s");
    assert_eq!(
        rest_of(&mut s),
        "hi\n\n\nchannel 'c' specifies prev-id, but no next link found\n"
    );
    let mut s = Stream::open(cp.addr(), "/d/linked");
    assert_eq!(s.read_text(4), "one\n");
    wait_until("subscribed", || metric(&cp, "corepin_subscriptions") == 1);
    cp.publish(r#"{"items":[{"channel":"l","http-stream":{"action":"hint"}}]}"#);
    assert_eq!(
        rest_of(&mut s),
        "two\n\n\nchannel 'l' specifies prev-id, but no next link found\n"
    );
    wait_until("unsubscribed", || metric(&cp, "corepin_subscriptions") == 0);
}

/// A long-poll asked again (a `hint`, an item that skips ids, a hold
/// already behind the channel) carries `Grip-Last: CHANNEL; last-id=ID`
/// for each channel that had a prev-id, advanced by the items it saw
/// (even one a filter dropped), as Pushpin's retries do; a client's own
/// `Grip-Last` never reaches the backend.
#[test]
fn long_poll_retries_carry_grip_last() {
    let b = Backend::start(|req, _| {
        // GET /poll/CHANNEL
        let ch = req.path.rsplit('/').next().unwrap_or("").to_string();
        let (fields, body) = match req.header("grip-last") {
            Some(last) => (String::new(), format!("again {last}\n")),
            None => (
                format!("Grip-Hold: response\r\nGrip-Channel: {ch}; prev-id=5; filter=skip-self, other\r\nGrip-Set-Meta: user=a\r\n"),
                String::new(),
            ),
        };
        Reply::Bytes(
            format!(
                "HTTP/1.1 200 OK\r\n{fields}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let cp = Corepin::start_grip(&["--route", &b.route(), "--workers", "1"]);
    let poll = |ch: &str, headers: &'static str| {
        let addr = cp.addr();
        let req = format!("GET /poll/{ch} HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
        std::thread::spawn(move || {
            let mut c = Conn::open(addr);
            c.send(req.as_bytes());
            c.read().expect("answer").text()
        })
    };
    let hint = |ch: &str| {
        cp.publish(&format!(
            r#"{{"items":[{{"channel":"{ch}","http-response":{{"action":"hint"}}}}]}}"#
        ))
    };
    // A hint: the hold's prev-id.
    let p = poll("a", "Grip-Last: forged; last-id=1\r\n");
    wait_until("held (two channels)", || {
        metric(&cp, "corepin_subscriptions") == 2
    });
    hint("a");
    assert_eq!(p.join().expect("poll"), "again a; last-id=5\n");

    // An item skip-self drops still moves the prev-id on.
    let p = poll("b", "");
    wait_until("held (two channels)", || {
        metric(&cp, "corepin_subscriptions") == 2
    });
    cp.publish(r#"{"items":[{"channel":"b","id":"6","prev-id":"5","no-seq":true,"meta":{"sender":"a"},"http-response":{"body":"x"}}]}"#);
    hint("b");
    assert_eq!(p.join().expect("poll"), "again b; last-id=6\n");

    // Channel b's last id is now 6: a hold at prev-id 5 is behind from the
    // start and asked again before it is held.
    assert_eq!(poll("b", "").join().expect("poll"), "again b; last-id=5\n");

    // An item that skips ids: the poll missed one, asked again at once.
    let p = poll("c", "");
    wait_until("held (two channels)", || {
        metric(&cp, "corepin_subscriptions") == 2
    });
    cp.publish(r#"{"items":[{"channel":"c","id":"9","prev-id":"8","no-seq":true,"http-response":{"body":"x"}}]}"#);
    assert_eq!(p.join().expect("poll"), "again c; last-id=5\n");

    let forged = b
        .seen
        .lock()
        .expect("lock")
        .iter()
        .any(|r| r.header("grip-last").is_some_and(|v| v.contains("forged")));
    assert!(!forged, "the client's Grip-Last was passed on");
}

/// A filter that fails on a published message (here var-subst's unknown
/// variable) drops it for that subscriber; on a `debug` route Pushpin
/// also ends the connection with the reason: a stream gets
/// `\n\nfilter error: ...\n` and ends, a long-poll a 502 with it.
#[test]
fn filter_errors_end_debug_routes_subscribers_with_the_reason() {
    let b = answering(&[
        ("/s", "Grip-Hold: stream\r\nGrip-Channel: v; filter=var-subst\r\nGrip-Set-Meta: name=Ann\r\n", ""),
        ("/d/s", "Grip-Hold: stream\r\nGrip-Channel: v; filter=var-subst\r\nGrip-Set-Meta: name=Ann\r\n", ""),
        ("/d/poll", "Grip-Hold: response\r\nGrip-Channel: v; filter=var-subst\r\nGrip-Set-Meta: name=Ann\r\n", ""),
    ]);
    let debug = format!("*,path_beg=/d/,debug {}", b.addr);
    let cp = Corepin::start_grip(&["--route", &debug, "--route", &b.route(), "--workers", "1"]);
    let mut quiet = Stream::open(cp.addr(), "/s");
    let mut loud = Stream::open(cp.addr(), "/d/s");
    let addr = cp.addr();
    let poll = std::thread::spawn(move || Conn::open(addr).get("/d/poll"));
    wait_until("held", || metric(&cp, "corepin_subscriptions") == 3);
    cp.publish_stream("v", "hello %(name)s\n");
    assert_eq!(quiet.read_text(10), "hello Ann\n");
    assert_eq!(loud.read_text(10), "hello Ann\n");
    cp.publish(r#"{"items":[{"channel":"v","http-stream":{"content":"%(nope)s\n"},"http-response":{"body":"%(nope)s\n"}}]}"#);
    let why = "filter error: var-subst: no such variable 'nope' at position 7";
    assert_eq!(rest_of(&mut loud), format!("\n\n{why}\n"));
    let r = poll.join().expect("poll");
    assert_eq!((r.status, r.text()), (502, format!("{why}\n")));
    // Elsewhere the message is dropped for that subscriber alone.
    cp.publish_stream("v", "marker\n");
    assert_eq!(quiet.read_text(7), "marker\n", "not the failed message");
}

/// `Grip-Sig` with PEM keys, as Pushpin signs with an EC or RSA key: keys
/// made by openssl, corepin signing ES256 (P-256) and RS256 with the
/// private key in `[grip] sig_key`, gripcontrol's `validate_sig` checking
/// each backend request with the public key, as a backend does.
#[test]
fn pem_keys_sign_grip_sig_es256_and_rs256() {
    let dir = TempDir::new("pem");
    for (name, gen) in [
        ("ec", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256"),
        ("rsa", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048"),
    ] {
        let key = dir.path().join(format!("{name}.pem"));
        let public = dir.path().join(format!("{name}.pub"));
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let k = key.to_str().expect("path");
        let mut args = vec!["genpkey"];
        args.extend(gen.split(' '));
        args.extend(["-out", k]);
        run(&args);
        run(&[
            "pkey",
            "-in",
            k,
            "-pubout",
            "-out",
            public.to_str().expect("path"),
        ]);
        let pem = std::fs::read_to_string(&key).expect("key");
        let public = std::fs::read_to_string(&public).expect("public key");

        let b = Backend::fixed("ok");
        let config = write_config(&format!(
            "routes = [\"{}\"]\n[grip]\nsig_key = \"\"\"\n{pem}\"\"\"\nsig_iss = \"corepin-pem\"\n",
            b.route()
        ));
        let cp = Corepin::start_grip(&["--config", &config, "--workers", "1"]);
        let r = Conn::open(cp.addr()).get("/x");
        assert_eq!(r.text(), "ok");
        let token = b.last().header("grip-sig").expect("Grip-Sig").to_string();
        let out = std::process::Command::new(python())
            .args([
                "-c",
                "import sys, jwt; from gripcontrol import validate_sig
print(jwt.get_unverified_header(sys.argv[1])['alg'])
sys.exit(0 if validate_sig(sys.argv[1], sys.argv[2], iss='corepin-pem') else 1)",
                &token,
                &public,
            ])
            .output()
            .expect("python (run tests/run.sh)");
        let alg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success(),
            "{name}: validate_sig refused {token} ({alg}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(alg, if name == "ec" { "ES256" } else { "RS256" });
    }
}

/// `update_on_first_subscription` (Pushpin 1.41, on by default there): a
/// second after a channel gets its first subscriber, its held long-polls
/// ask the backend again (its gone link is posted) and its streams fetch their
/// next link. The long-poll's own return does not count as a first
/// subscription again (a long-poll's channel lingers 60 s), so the backend
/// sees exactly one retry, and the client is answered by a later publish.
#[test]
fn a_channels_first_subscription_re_fetches_its_held_requests() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let polls = std::sync::Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let b = Backend::start(move |req, _| {
        let hold = |headers: &str, body: &str| {
            Reply::Bytes(
                format!(
                    "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        };
        match req.path.as_str() {
            "/s" => hold(
                "Grip-Hold: stream\r\nGrip-Channel: s\r\nGrip-Link: </next>; rel=next; timeout=120\r\n",
                "start\n",
            ),
            "/next" => hold(
                "Grip-Hold: stream\r\nGrip-Channel: s\r\nGrip-Link: </next>; rel=next; timeout=120\r\n",
                "updated\n",
            ),
            "/gone" => hold("", ""),
            _ => {
                p.fetch_add(1, Ordering::SeqCst);
                hold(
                    "Grip-Hold: response\r\nGrip-Channel: lp\r\nGrip-Link: </gone>; rel=gone\r\n",
                    "timeout\n",
                )
            }
        }
    });
    let cp = Corepin::start_grip(&[
        "--route",
        &b.route(),
        "--workers",
        "1",
        "--config",
        &write_config("[grip]\nupdate_on_first_subscription = true\n"),
    ]);
    let mut s = Stream::open(cp.addr(), "/s");
    assert_eq!(s.read_text(6), "start\n");
    // A second after its channel's first subscription, the stream fetches
    // its next link.
    assert_eq!(s.read_text(8), "updated\n");
    let addr = cp.addr();
    let poll = std::thread::spawn(move || Conn::open(addr).get("/lp"));
    wait_until("the long-poll asked again", || {
        polls.load(Ordering::SeqCst) == 2
    });
    wait_until("held again", || metric(&cp, "corepin_subscriptions") == 2);
    // The first hold's end (the retry) posts its gone link.
    wait_until("the gone link", || {
        seen_paths(&b).contains(&"/gone".to_string())
    });
    let r = cp.publish(r#"{"items":[{"channel":"lp","http-response":{"body":"news\n"}}]}"#);
    assert_eq!(r.status, 200);
    let r = poll.join().expect("poll");
    assert_eq!(r.text(), "news\n");
    assert_eq!(polls.load(Ordering::SeqCst), 2, "one retry only");
}

/// Pushpin's prev-id recovery with corepin's history off, against a backend
/// that keeps its feed and answers its next link from `Grip-Last`: a
/// stream that meets a gap fetches the link with `Grip-Last` the last id
/// it delivered in sequence, and what is published while the link is
/// fetched waits for the answer, which drops what the answer carried. The
/// client sees every item once, in order (the reconnect-storm benchmark
/// found items lost and repeated here).
#[test]
fn a_prev_id_gap_refetches_from_the_last_id_delivered_and_repeats_nothing() {
    let feed = PyBackend::start("prev_id_feed.py", &[]);
    let route = format!("* 127.0.0.1:{}", feed.port);
    let cp = Corepin::start_grip(&["--route", &route, "--workers", "1"]);
    let be = std::net::SocketAddr::from(([127, 0, 0, 1], feed.port));
    let call = |method: &str, path: &str| -> String {
        let mut c = Conn::open(be);
        c.send(
            format!("{method} {path} HTTP/1.1\r\nHost: feed\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        c.read().expect("backend answer").text()
    };
    let publish = |id: u32| {
        let prev = id - 1;
        let r = cp.publish(&format!(
            r#"{{"items":[{{"channel":"feed","id":"{id}","prev-id":"{prev}","no-seq":true,"http-stream":{{"content":"{id}\n"}}}}]}}"#
        ));
        assert_eq!(r.status, 200, "{}", r.text());
    };
    // The backend stores an item, then publishes it (or its publish is lost).
    let add = |published: bool| -> u32 {
        let id: u32 = call("POST", "/add").parse().expect("item id");
        if published {
            publish(id);
        }
        id
    };
    let mut s = Stream::open(cp.addr(), "/s");
    // A watcher on the same channel without prev-id: with one core, once
    // it has an item the stream has been handed it too.
    let mut watcher = Stream::open(cp.addr(), "/plain");
    wait_until("both subscribed", || {
        metric(&cp, "corepin_subscriptions") == 2
    });
    let mut seen = String::new();
    let mut watched = String::new();
    let mut watch_until = |id: u32| {
        let want = format!("{id}\n");
        while !watched.ends_with(&want) {
            let c = watcher.chunk().expect("watcher chunk");
            watched.push_str(&String::from_utf8_lossy(&c));
        }
    };
    assert_eq!(add(true), 1);
    seen.push_str(&s.read_text(2));
    assert_eq!(seen, "1\n");
    watch_until(1);

    // 2's publish is lost; 3 shows the gap. The backend holds its answer
    // to the next link until 4..=8 are published and handed to the stream.
    call("POST", "/arm");
    add(false);
    add(true);
    wait_until("the next link fetched", || {
        call("GET", "/nexts").lines().count() == 1
    });
    for _ in 4..=8 {
        add(true);
    }
    watch_until(8);
    call("POST", "/release");
    // The answer (2..=8, prev-id 8) before 9 is stored, so that it
    // follows on rather than being the answer's.
    let through8: String = (1..=8).map(|i| format!("{i}\n")).collect();
    seen.push_str(&s.read_text(through8.len() - seen.len()));
    assert_eq!(seen, through8, "the link's answer fills the gap");
    assert_eq!(add(true), 9);
    let expect: String = (1..=9).map(|i| format!("{i}\n")).collect();
    seen.push_str(&s.read_text(expect.len() - seen.len()));
    assert_eq!(seen, expect, "every item once, in order");
    assert_eq!(
        call("GET", "/nexts"),
        "feed; last-id=1\n",
        "asked from the last id delivered in sequence"
    );

    // A burst: 10's publish is lost, 11..=30 follow back to back while
    // the link is fetched, answered and followed.
    add(false);
    for _ in 11..=30 {
        add(true);
    }
    let expect: String = (1..=30).map(|i| format!("{i}\n")).collect();
    while seen.len() < expect.len() {
        let c = s.chunk().expect("stream chunk");
        seen.push_str(&String::from_utf8_lossy(&c));
        assert!(
            expect.starts_with(&seen),
            "out of order or repeated: {seen:?}"
        );
    }
    assert_eq!(seen, expect);
}
