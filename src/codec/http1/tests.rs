use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 1024,
    max_headers: 8,
    max_uri_bytes: 256,
};

/// Parses `input` whole, and checks that every proper prefix is either
/// incomplete or fails the same way: a split at any offset never changes
/// the answer.
fn req(input: &[u8]) -> Result<Option<(usize, RequestHead)>, HeadError> {
    let whole = parse_request(input, &LIMITS);
    for cut in 0..input.len() {
        match parse_request(&input[..cut], &LIMITS) {
            Ok(None) => {}
            Ok(Some((n, _))) => {
                // A complete head inside the prefix must be the same head.
                let (wn, _) = whole
                    .clone()
                    .ok()
                    .flatten()
                    .expect("prefix complete, whole not");
                assert_eq!(n, wn, "prefix {cut} parsed a different head");
            }
            Err(e) => assert_eq!(
                Err(e),
                whole.clone().map(|_| ()),
                "prefix {cut} failed differently"
            ),
        }
    }
    whole
}

fn res(input: &[u8], was_head: bool) -> Result<Option<(usize, ResponseHead)>, HeadError> {
    let whole = parse_response(input, &LIMITS, was_head);
    for cut in 0..input.len() {
        if let Ok(Some(_)) = parse_response(&input[..cut], &LIMITS, was_head) {
            assert!(
                whole.as_ref().is_ok_and(|w| w.is_some()),
                "prefix {cut} complete"
            );
        }
    }
    whole
}

fn ok(input: &[u8]) -> (usize, RequestHead) {
    req(input).expect("valid").expect("complete")
}

#[test]
fn simple_get() {
    let (n, h) = ok(b"GET /a/b?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\nNEXT");
    assert_eq!(n, 49);
    assert_eq!(h.method(), "GET");
    assert_eq!(h.target(), "/a/b?x=1");
    assert_eq!(h.path(), "/a/b");
    assert_eq!(h.query(), Some("x=1"));
    assert_eq!(h.host(), Some("example.com"));
    assert_eq!(h.version, Version::Http11);
    assert_eq!(h.body, BodyKind::Empty);
    assert!(h.keep_alive);
    assert!(h.is_idempotent());
}

/// Methods read as sent, whether named by a static string or taken from
/// the head's bytes (an extension method, a case the static list lacks).
#[test]
fn methods_read_as_sent() {
    for m in [
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND", "get", "Head",
    ] {
        let (_, h) = ok(format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        assert_eq!(h.method(), m);
        assert_eq!(h.is_head(), m == "HEAD");
        assert_eq!(
            h.is_idempotent(),
            matches!(m, "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS")
        );
    }
}

#[test]
fn keep_alive_rules() {
    assert!(
        !ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .1
            .keep_alive
    );
    assert!(
        !ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n")
            .1
            .keep_alive
    );
    assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").1.keep_alive);
    assert!(
        ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .1
            .keep_alive
    );
}

#[test]
fn body_framing() {
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").1;
    assert_eq!(h.body, BodyKind::Length(12));
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").1;
    assert_eq!(h.body, BodyKind::Empty);
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").1;
    assert_eq!(h.body, BodyKind::Chunked);
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n").1;
    assert_eq!(h.body, BodyKind::Length(5));
    let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n").1;
    assert_eq!(h.body, BodyKind::Length(5));
}

#[test]
fn smuggling_defences() {
    let cases: &[(&[u8], u16)] = &[
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        // obs-fold
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  continued\r\n\r\n", 400),
        // space before the colon
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n", 417),
    ];
    for (input, status) in cases {
        match req(input) {
            Err(e) => assert_eq!(e.status(), *status, "{}", String::from_utf8_lossy(input)),
            other => panic!("accepted {:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }
}

#[test]
fn expect_continue() {
    let h = ok(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n").1;
    assert!(h.expect_continue);
    assert!(!h.is_head());
}

#[test]
fn limits() {
    let mut long_uri = b"GET /".to_vec();
    long_uri.resize(300, b'a');
    long_uri.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(req(&long_uri).map(|_| ()), Err(HeadError::UriTooLong));

    // A request line that never ends is refused before the head limit.
    let mut endless = b"GET /".to_vec();
    endless.resize(400, b'a');
    assert_eq!(req(&endless).map(|_| ()), Err(HeadError::UriTooLong));

    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.resize(1100, b'b');
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(req(&big).map(|_| ()), Err(HeadError::HeadTooLarge));

    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..9 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(req(&many).map(|_| ()), Err(HeadError::HeadTooLarge));
}

#[test]
fn pipelined_heads_parse_in_order() {
    let input = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    let (n, first) = ok(input);
    assert_eq!(first.target(), "/1");
    let (_, second) = ok(&input[n..]);
    assert_eq!(second.target(), "/2");
}

#[test]
fn fields_and_tokens() {
    let (_, h) = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\nx-foo: 2\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    assert_eq!(
        h.fields.get_all("X-FOO").collect::<Vec<_>>(),
        vec![&b"1"[..], &b"2"[..]]
    );
    assert!(is_hop_by_hop(&h.fields, b"x-foo"));
    assert!(is_hop_by_hop(&h.fields, b"Keep-Alive"));
    assert!(is_hop_by_hop(&h.fields, b"transfer-encoding"));
    assert!(!is_hop_by_hop(&h.fields, b"host"));
    assert!(h.is_upgrade());
}

#[test]
fn responses() {
    let (n, r) = res(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false)
        .expect("valid")
        .expect("complete");
    assert_eq!(
        (n, r.status, r.reason(), r.body, r.keep_alive),
        (38, 200, "OK", BodyKind::Length(5), true)
    );

    let r = res(b"HTTP/1.1 200 OK\r\n\r\n", false)
        .expect("valid")
        .expect("complete")
        .1;
    assert_eq!((r.body, r.keep_alive), (BodyKind::UntilClose, false));

    let r = res(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap()
    .1;
    assert_eq!(r.body, BodyKind::Chunked);

    let r = res(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
        .unwrap()
        .unwrap()
        .1;
    assert_eq!(r.body, BodyKind::Empty);

    for code in [b"204", b"304", b"101"] {
        let mut head = b"HTTP/1.1 ".to_vec();
        head.extend_from_slice(code);
        head.extend_from_slice(b" X\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(res(&head, false).unwrap().unwrap().1.body, BodyKind::Empty);
    }

    let r = res(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
        .unwrap()
        .unwrap()
        .1;
    assert!(!r.keep_alive);
    let r = res(
        b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap()
    .1;
    assert!(!r.keep_alive);

    assert!(res(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
    assert!(res(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        false
    )
    .is_err());
}

#[test]
fn simple_response_is_well_formed() {
    let mut out = Vec::new();
    write_simple_response(&mut out, 502, "upstream unreachable", true);
    let (n, r) = parse_response(&out, &LIMITS, false).unwrap().unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.reason(), "Bad Gateway");
    assert_eq!(&out[n..], b"upstream unreachable\n");
    assert_eq!(r.body, BodyKind::Length(21));
    assert!(!r.keep_alive);
}

#[test]
fn strip_port_forms() {
    assert_eq!(strip_port("a.b:80"), "a.b");
    assert_eq!(strip_port("a.b"), "a.b");
    assert_eq!(strip_port("[::1]:80"), "::1");
}

/// A deterministic stand-in for the fuzz target over generated heads.
#[test]
fn generated_heads_keep_the_invariants() {
    let pieces: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b"/",
        b"/a?b",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"\r\n",
        b"\n",
        b"Host: a",
        b"Content-Length: 5",
        b"Transfer-Encoding: chunked",
        b"Connection: close",
        b": ",
        b" ",
        b"\t",
        b"x",
        b"\x00",
        b"\xff",
        b"Expect: 100-continue",
        b"Content-Length: 5, 6",
        b"http://h",
        b"/../",
        b"//",
        b"%2e",
        b"CONNECT ",
        b"Host: a/b",
        b"Connection: host",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..4000 {
        let mut input = Vec::new();
        for _ in 0..(seed % 12) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            input.extend_from_slice(pieces[(seed >> 40) as usize % pieces.len()]);
        }
        seed = seed.wrapping_add(0x9e37_79b9);
        check_head_invariants(&input, &LIMITS);
        let _ = parse_response(&input, &LIMITS, false);
    }
}

#[test]
fn reason_phrase_with_obs_text_parses_without_its_text() {
    // RFC 9112 allows obs-text in a reason phrase; httparse does not hand
    // it out as &str, so the head parses with an empty reason and proxies
    // write the canonical one.
    let head = b"HTTP/1.1 200 \xe9t\xe9\r\nContent-Length: 2\r\n\r\nok";
    let (n, r) = res(head, false).expect("valid").expect("complete");
    assert_eq!(
        (n, r.status, r.reason(), r.body),
        (head.len() - 2, 200, "", BodyKind::Length(2))
    );
    assert_eq!(r.fields.get("content-length"), Some(&b"2"[..]));
    check_head_invariants(head, &LIMITS);
}

#[test]
fn targets_are_normalised_before_anyone_reads_them() {
    let cases: &[(&[u8], &str, Option<&str>)] = &[
        (
            b"GET //admin HTTP/1.1\r\nHost: a\r\n\r\n",
            "/admin",
            Some("a"),
        ),
        (
            b"GET /./admin HTTP/1.1\r\nHost: a\r\n\r\n",
            "/admin",
            Some("a"),
        ),
        (
            b"GET /x/../admin?q=/../ HTTP/1.1\r\nHost: a\r\n\r\n",
            "/admin?q=/../",
            Some("a"),
        ),
        (
            b"GET /%2e%2e/%61dmin HTTP/1.1\r\nHost: a\r\n\r\n",
            "/admin",
            Some("a"),
        ),
        // absolute form: the URI's authority wins over Host (RFC 9112 §3.2.2)
        (
            b"GET http://public/admin HTTP/1.1\r\nHost: other\r\n\r\n",
            "/admin",
            Some("public"),
        ),
        (
            b"GET HTTP://Public:8080 HTTP/1.1\r\nHost: other\r\n\r\n",
            "/",
            Some("Public"),
        ),
        (b"GET http://h/a HTTP/1.0\r\n\r\n", "/a", Some("h")),
        (b"GET /a HTTP/1.0\r\n\r\n", "/a", None),
        (
            b"GET / HTTP/1.1\r\nHost: Example.COM.:80\r\n\r\n",
            "/",
            Some("Example.COM"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            "/",
            Some("::1"),
        ),
    ];
    for (input, target, host) in cases {
        let (n, h) = ok(input);
        assert_eq!(n, input.len());
        assert_eq!(h.target(), *target, "{}", String::from_utf8_lossy(input));
        assert_eq!(h.host(), *host, "{}", String::from_utf8_lossy(input));
        assert_eq!(
            h.fields.get_all("host").count(),
            usize::from(host.is_some())
        );
    }
    let (_, h) = ok(b"GET http://Public:8080/a HTTP/1.1\r\nHost: other\r\nX-A: 1\r\n\r\n");
    assert_eq!(h.fields.get("host"), Some(&b"Public:8080"[..]));
    assert_eq!(h.fields.get("x-a"), Some(&b"1"[..]));
    assert_eq!(h.path(), "/a");
}

#[test]
fn refused_methods_targets_and_hosts() {
    let cases: &[(&[u8], u16, &str)] = &[
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            501,
            "CONNECT",
        ),
        (
            b"connect example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            501,
            "CONNECT",
        ),
        (b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 501, "TRACE"),
        (b"Trace / HTTP/1.1\r\nHost: a\r\n\r\n", 501, "TRACE"),
        (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "asterisk"),
        (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "http URI"),
        (
            b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "userinfo",
        ),
        (
            b"GET /a/..;/b HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "dot-segment",
        ),
        (b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400, "percent"),
        (
            b"GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n",
            400,
            "invalid host",
        ),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid host"),
        (
            b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n",
            400,
            "invalid host",
        ),
        (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, "invalid host"),
        (b"GET / HTTP/1.0\r\nHost: a@b\r\n\r\n", 400, "invalid host"),
        // the URI's authority does not excuse a bad (or missing) Host
        (
            b"GET http://a/ HTTP/1.1\r\nHost: a/b\r\n\r\n",
            400,
            "invalid host",
        ),
        (b"GET http://a/ HTTP/1.1\r\n\r\n", 400, "without host"),
    ];
    for (input, status, needle) in cases {
        match req(input) {
            Err(e) => {
                assert_eq!(e.status(), *status, "{}", String::from_utf8_lossy(input));
                assert!(
                    e.reason().contains(needle),
                    "{}: {}",
                    String::from_utf8_lossy(input),
                    e.reason()
                );
            }
            other => panic!("accepted {:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }
    for fine in [
        &b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
        b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        ok(fine);
    }
}

#[test]
fn connection_cannot_make_host_hop_by_hop() {
    let (_, h) = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Host, X-Y\r\nX-Y: 1\r\n\r\n");
    assert!(!is_hop_by_hop(&h.fields, b"Host"));
    assert!(is_hop_by_hop(&h.fields, b"x-y"));
}

#[test]
fn cgi_names() {
    for name in ["Grip-Sig", "grip_sig", "GRIP.SIG", "Grip_Sig"] {
        assert!(cgi_name_is(name.as_bytes(), "grip-sig"), "{name}");
        assert!(cgi_name_starts(name.as_bytes(), "grip-"), "{name}");
    }
    for name in ["GripSig", "Grip-Si", "Grip-Sigs", "X-Grip-Sig"] {
        assert!(!cgi_name_is(name.as_bytes(), "grip-sig"), "{name}");
    }
    assert!(!cgi_name_starts(b"Grip", "grip-"));
    assert!(cgi_name_starts(b"Meta_user", "meta-"));
    assert!(cgi_name_is(b"Connection_Id", "connection-id"));
}

#[test]
fn decimals_as_display() {
    for n in [
        0u64,
        7,
        10,
        99,
        100,
        204,
        999,
        1000,
        65535,
        1 << 40,
        u64::MAX,
    ] {
        let mut out = b"x".to_vec();
        write_decimal(&mut out, n);
        assert_eq!(out, format!("x{n}").into_bytes());
    }
}
