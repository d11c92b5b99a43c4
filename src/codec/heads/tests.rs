use super::*;
use crate::codec::http1::{parse_request, parse_response, HeadLimits};

fn request(text: &str) -> RequestHead {
    let (_, h) = parse_request(text.as_bytes(), &HeadLimits::default())
        .expect("valid")
        .expect("complete");
    h
}

fn response(text: &str) -> ResponseHead {
    let (_, h) = parse_response(text.as_bytes(), &HeadLimits::default(), false)
        .expect("valid")
        .expect("complete");
    h
}

const NOBODY: ForwardPolicy = ForwardPolicy {
    trusted: false,
    xff: XffRule {
        truncate: Some(0),
        append: true,
    },
    accept_x_forwarded_protocol: false,
    tls: false,
};

fn to_backend<'a>(client: &'a RequestHead, purpose: Purpose<'a>) -> BackendRequest<'a> {
    BackendRequest {
        client,
        purpose,
        path: client.target(),
        addr: "10.0.0.1:80",
        send_host: None,
        over_http: false,
        edits: &[],
        orig_headers: false,
        peer_ip: "1.2.3.4",
        forwarding: NOBODY,
        grip: Some(None),
        grip_last: &[],
        connection_id: None,
    }
}

fn written(r: &BackendRequest<'_>) -> String {
    let mut out = Vec::new();
    r.write(&mut out);
    String::from_utf8(out).expect("ascii")
}

#[test]
fn the_filter_as_a_table() {
    let fields = request(
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: x-hop, host\r\nX-Hop: 1\r\nGrip-Sig: a\r\nGrip_Sig: b\r\nExpect: 100-continue\r\nX-Kept: 1\r\nContent-Length: 1\r\n\r\n",
    )
    .fields;
    // name, toward a backend, toward a client, toward a client with GRIP
    for (name, backend, client, with_grip) in [
        ("X-Kept", true, true, true),
        ("Host", true, true, true),
        ("X-Hop", false, false, false),
        ("Connection", false, false, false),
        ("Content-Length", false, false, false),
        ("Transfer-Encoding", false, false, false),
        ("Keep-Alive", false, false, false),
        ("Upgrade", false, false, false),
        ("TE", false, false, false),
        ("Trailer", false, false, false),
        ("Proxy-Connection", false, false, false),
        ("Grip-Sig", false, false, true),
        ("grip-hold", false, false, true),
        ("Grip_Sig", false, true, true),
        ("grip.sig", false, true, true),
        ("Expect", false, true, true),
        ("Expect_", true, true, true),
    ] {
        let n = name.as_bytes();
        assert_eq!(
            (
                forwardable(&fields, n, Toward::Backend),
                forwardable(&fields, n, Toward::Client),
                forwardable(&fields, n, Toward::ClientWithGrip),
            ),
            (backend, client, with_grip),
            "{name}"
        );
    }
}

#[test]
fn requests_to_backends() {
    let get = request("GET /a?b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nGrip-Sig: forged\r\nX-Forwarded-For: 9.9.9.9\r\nVia: 1.0 edge\r\nConnection: keep-alive\r\n\r\n");
    let post =
        request("POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    let chunked = request("PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    let bare = request("GET / HTTP/1.0\r\n\r\n");
    let upgrade = request("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\nConnection-Id: forged\r\nMeta-User: forged\r\n\r\n");
    let meta = [("User".to_string(), b"alice".to_vec())];
    let events = Purpose::WsEvents {
        connection_id: "c1",
        content_length: 12,
        meta: &meta,
        replayed: 0,
        grip_ext: false,
    };
    let replaying = Purpose::WsEvents {
        connection_id: "c1",
        content_length: 3,
        meta: &[],
        replayed: 7,
        grip_ext: true,
    };
    let forged_replay = request("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nContent-Bytes-Replayed: 99\r\nSec-WebSocket-Extensions: grip\r\n\r\n");
    let over_http = BackendRequest {
        over_http: true,
        ..to_backend(&upgrade, events)
    };
    for (r, want) in [
        (
            to_backend(&get, Purpose::Proxy),
            "GET /a?b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: example.com\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.0 edge, 1.1 corepin\r\nGrip-Feature: status, link:next, link:gone, filter:skip-self, filter:skip-users, filter:require-sub, filter:build-id, filter:var-subst\r\n\r\n",
        ),
        (
            BackendRequest {
                grip: Some(Some("tok")),
                ..to_backend(&post, Purpose::Proxy)
            },
            "POST /p HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\nGrip-Sig: tok\r\nGrip-Feature: status, link:next, link:gone, filter:skip-self, filter:skip-users, filter:require-sub, filter:build-id, filter:var-subst\r\nContent-Length: 3\r\n\r\n",
        ),
        (
            BackendRequest {
                grip: None,
                ..to_backend(&chunked, Purpose::Proxy)
            },
            "PUT /c HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            BackendRequest {
                grip: None,
                ..to_backend(&bare, Purpose::Proxy)
            },
            "GET / HTTP/1.1\r\nHost: 10.0.0.1:80\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\n\r\n",
        ),
        (
            BackendRequest {
                grip: None,
                send_host: Some("internal"),
                ..to_backend(&upgrade, Purpose::WsUpgrade)
            },
            "GET /ws HTTP/1.1\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\nConnection-Id: forged\r\nMeta-User: forged\r\nHost: internal\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
        (
            BackendRequest {
                grip: Some(Some("tok")),
                ..to_backend(&forged_replay, Purpose::WsUpgrade)
            },
            "GET /ws HTTP/1.1\r\nHost: h\r\nContent-Bytes-Replayed: 99\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\nGrip-Sig: tok\r\nGrip-Feature: status, link:next, link:gone, filter:skip-self, filter:skip-users, filter:require-sub, filter:build-id, filter:var-subst\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Extensions: grip\r\n\r\n",
        ),
        (
            BackendRequest {
                over_http: true,
                ..to_backend(&forged_replay, replaying)
            },
            "POST /ws HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\nGrip-Feature: status, link:next, link:gone, filter:skip-self, filter:skip-users, filter:require-sub, filter:build-id, filter:var-subst\r\nContent-Type: application/websocket-events\r\nAccept: application/websocket-events\r\nConnection-Id: c1\r\nContent-Length: 3\r\nContent-Bytes-Replayed: 7\r\nSec-WebSocket-Extensions: grip\r\n\r\n",
        ),
        (
            // A GRIP route's request names the connection; the client's
            // own Connection-Id never goes.
            BackendRequest {
                connection_id: Some("18a-0-1"),
                ..to_backend(&upgrade, Purpose::WsUpgrade)
            },
            "GET /ws HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\nMeta-User: forged\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\nGrip-Feature: status, link:next, link:gone, filter:skip-self, filter:skip-users, filter:require-sub, filter:build-id, filter:var-subst\r\nConnection-Id: 18a-0-1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Extensions: grip\r\n\r\n",
        ),
        (
            BackendRequest {
                connection_id: Some("18a-0-2"),
                ..to_backend(&get, Purpose::Proxy)
            },
            "GET /a?b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: example.com\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.0 edge, 1.1 corepin\r\nGrip-Feature: status, link:next, link:gone, filter:skip-self, filter:skip-users, filter:require-sub, filter:build-id, filter:var-subst\r\nConnection-Id: 18a-0-2\r\n\r\n",
        ),
        (
            // `no_grip`: nothing of corepin's, the client's fields as they are.
            BackendRequest {
                grip: None,
                connection_id: Some("18a-0-3"),
                ..to_backend(&upgrade, Purpose::WsUpgrade)
            },
            "GET /ws HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\nConnection-Id: forged\r\nMeta-User: forged\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
        (
            over_http,
            "POST /ws HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\nGrip-Feature: status, link:next, link:gone, filter:skip-self, filter:skip-users, filter:require-sub, filter:build-id, filter:var-subst\r\nContent-Type: application/websocket-events\r\nAccept: application/websocket-events\r\nConnection-Id: c1\r\nContent-Length: 12\r\nMeta-User: alice\r\n\r\n",
        ),
    ] {
        assert_eq!(written(&r), want);
        let (n, _) = parse_request(want.as_bytes(), &HeadLimits::default())
            .expect("parses")
            .expect("whole");
        assert_eq!(n, want.len(), "one head");
    }
}

#[test]
fn forwarding_fields_follow_the_policy() {
    let spoof = request("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 5.5.5.5, 6.6.6.6\r\nX_Forwarded_For: 7.7.7.7\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 8.8.8.8\r\nX-Forwarded-Host: evil\r\nForwarded: for=x\r\nTrue-Client-IP: 1.1.1.1\r\n\r\n");
    let untrusted = written(&BackendRequest {
        grip: None,
        ..to_backend(&spoof, Purpose::Proxy)
    });
    assert_eq!(
        untrusted,
        "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\n\r\n"
    );
    let trusted = written(&BackendRequest {
        grip: None,
        forwarding: ForwardPolicy {
            trusted: true,
            xff: XffRule {
                truncate: None,
                append: true,
            },
            accept_x_forwarded_protocol: true,
            tls: false,
        },
        ..to_backend(&spoof, Purpose::Proxy)
    });
    assert_eq!(
        trusted,
        "GET / HTTP/1.1\r\nHost: h\r\nForwarded: for=x\r\nTrue-Client-IP: 1.1.1.1\r\nX-Forwarded-For: 5.5.5.5, 6.6.6.6, 1.2.3.4\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nX-Real-IP: 8.8.8.8\r\nVia: 1.1 corepin\r\n\r\n"
    );
}

#[test]
fn route_edits_and_marked_copies() {
    let client =
        request("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX_B: 2\r\neb9bf0f5-X-C: 3\r\n\r\n");
    let edits = [
        HeaderEdit {
            name: "X-B".into(),
            value: "two".into(),
            cgi_name: "x-b".into(),
        },
        HeaderEdit {
            name: "X-A".into(),
            value: String::new(),
            cgi_name: "x-a".into(),
        },
    ];
    let plain = written(&BackendRequest {
        grip: None,
        edits: &edits,
        ..to_backend(&client, Purpose::Proxy)
    });
    assert_eq!(
        plain,
        "GET / HTTP/1.1\r\nHost: h\r\nX-B: two\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\n\r\n"
    );
    let with_orig = written(&BackendRequest {
        grip: None,
        edits: &edits,
        orig_headers: true,
        ..to_backend(&client, Purpose::Proxy)
    });
    assert_eq!(
        with_orig,
        "GET / HTTP/1.1\r\nHost: h\r\nX-B: two\r\neb9bf0f5-Host: h\r\neb9bf0f5-X-C: 3\r\neb9bf0f5-X-B: two\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\nVia: 1.1 corepin\r\n\r\n"
    );
}

#[test]
fn proxied_responses() {
    let get = request("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    let head = request("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
    let old = request("GET / HTTP/1.0\r\n\r\n");
    let ok = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nVia: 1.1 b\r\nGrip-Hold: stream\r\nConnection: x-a\r\n\r\n");
    let chunked = response("HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\n\r\n");
    let empty = response("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n");
    let until_close = response("HTTP/1.1 200 OK\r\n\r\n");
    let not_modified = response("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n");
    let no_content = response("HTTP/1.1 204 No Content\r\n\r\n");
    for (req, resp, body, keep, toward, want) in [
        (&get, &ok, ClientBody::AsIs, true, Toward::Client, "HTTP/1.1 200 OK\r\nVia: 1.1 b, 1.1 corepin\r\nContent-Length: 5\r\n\r\n"),
        (&get, &ok, ClientBody::AsIs, true, Toward::ClientWithGrip, "HTTP/1.1 200 OK\r\nGrip-Hold: stream\r\nVia: 1.1 b, 1.1 corepin\r\nContent-Length: 5\r\n\r\n"),
        (&get, &chunked, ClientBody::Chunked, true, Toward::Client, "HTTP/1.1 200 Fine\r\nVia: 1.1 corepin\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (&old, &chunked, ClientBody::AsIs, false, Toward::Client, "HTTP/1.1 200 Fine\r\nVia: 1.1 corepin\r\nConnection: close\r\n\r\n"),
        (&old, &ok, ClientBody::AsIs, true, Toward::Client, "HTTP/1.1 200 OK\r\nVia: 1.1 b, 1.1 corepin\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"),
        (&get, &empty, ClientBody::AsIs, true, Toward::Client, "HTTP/1.1 404 Not Found\r\nVia: 1.1 corepin\r\nContent-Length: 0\r\n\r\n"),
        (&head, &empty, ClientBody::AsIs, true, Toward::Client, "HTTP/1.1 404 Not Found\r\nVia: 1.1 corepin\r\nContent-Length: 0\r\n\r\n"),
        (&get, &until_close, ClientBody::Chunked, true, Toward::Client, "HTTP/1.1 200 OK\r\nVia: 1.1 corepin\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (&get, &not_modified, ClientBody::AsIs, true, Toward::Client, "HTTP/1.1 304 Not Modified\r\nVia: 1.1 corepin\r\nContent-Length: 7\r\n\r\n"),
        (&get, &no_content, ClientBody::AsIs, false, Toward::Client, "HTTP/1.1 204 No Content\r\nVia: 1.1 corepin\r\nConnection: close\r\n\r\n"),
    ] {
        let mut out = Vec::new();
        write_proxied_response(&mut out, req, resp, body, keep, toward);
        assert_eq!(String::from_utf8_lossy(&out), want);
    }
}

#[test]
fn websocket_answers() {
    let mut out = Vec::new();
    write_switching_protocols(&mut out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None, None);
    assert_eq!(
        out,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
    out.clear();
    write_switching_protocols(&mut out, "k", Some(b"chat"), Some(""));
    assert_eq!(
        out,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: k\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    );
    out.clear();
    let refused = response(
        "HTTP/1.1 401 \r\nWWW-Authenticate: Key\r\nGrip-X: 1\r\nContent-Length: 2\r\n\r\n",
    );
    write_refusal(&mut out, &refused, 2);
    assert_eq!(
        out,
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Key\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn small_answers() {
    let mut out = Vec::new();
    write_link_request(
        &mut out,
        "/next",
        b"example.com",
        &[("p-a".into(), "3".into()), ("b".into(), "x".into())],
        "p-",
        Some("t"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("GET /next HTTP/1.1\r\nHost: example.com\r\nGrip-Last: a; last-id=3\r\nGrip-Last: b; last-id=x\r\nGrip-Sig: t\r\nGrip-Feature: {GRIP_FEATURES}\r\n\r\n")
    );
    let mut out = Vec::new();
    write_gone_request(&mut out, "/gone/1", b"example.com", None);
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("POST /gone/1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\nGrip-Feature: {GRIP_FEATURES}\r\n\r\n")
    );
    for (keep, http10, want) in [
        (false, false, "Connection: close\r\n"),
        (false, true, "Connection: close\r\n"),
        (true, true, "Connection: keep-alive\r\n"),
        (true, false, ""),
    ] {
        let mut out = Vec::new();
        write_connection(&mut out, keep, http10);
        assert_eq!(String::from_utf8_lossy(&out), want);
    }
    let mut out = Vec::new();
    write_control_answer(
        &mut out,
        429,
        "text/plain",
        &[("Retry-After", "1".into())],
        b"busy\n",
        false,
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
    );
}

#[test]
fn a_tls_client_connection_is_forwarded_as_https_whatever_it_claims() {
    let client = request("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: http\r\n\r\n");
    let plain = written(&to_backend(&client, Purpose::Proxy));
    assert!(plain.contains("X-Forwarded-Proto: http\r\n"), "{plain}");
    let tls = written(&BackendRequest {
        forwarding: NOBODY.over_tls(true),
        ..to_backend(&client, Purpose::Proxy)
    });
    assert!(tls.contains("X-Forwarded-Proto: https\r\n"), "{tls}");
    assert_eq!(tls.matches("X-Forwarded-Proto").count(), 1, "{tls}");
}

/// A long-poll asked again carries `Grip-Last` per channel after the GRIP
/// fields, and the client's own `Grip-Last` never goes through; a
/// `no_grip` route writes none.
#[test]
fn retries_carry_grip_last() {
    let client = request("GET /poll HTTP/1.1\r\nHost: h\r\nGrip-Last: forged; last-id=9\r\n\r\n");
    let last = [
        ("a".to_string(), "3".to_string()),
        ("b".to_string(), "x".to_string()),
    ];
    let r = BackendRequest {
        grip_last: &last,
        ..to_backend(&client, Purpose::Proxy)
    };
    let out = written(&r);
    assert!(
        out.ends_with(&format!(
            "Grip-Feature: {GRIP_FEATURES}\r\nGrip-Last: a; last-id=3\r\nGrip-Last: b; last-id=x\r\n\r\n"
        )),
        "{out}"
    );
    assert!(!out.contains("forged"), "{out}");
    let plain = written(&BackendRequest {
        grip: None,
        grip_last: &last,
        ..to_backend(&client, Purpose::Proxy)
    });
    assert!(!plain.contains("Grip-Last"), "{plain}");
}
