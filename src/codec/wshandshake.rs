//! The WebSocket opening handshake and the GRIP WebSocket extension, as
//! pure functions: checking a client's upgrade request, the 101 answer,
//! splitting a backend's `Sec-WebSocket-Extensions` into the `grip`
//! extension and the rest, and sorting a backend's messages under that
//! extension into control (`c:`), for the client (the message prefix,
//! `m:` unless the backend chose another, stripped) or dropped.

use crate::codec::heads;
use crate::codec::http1::{self, RequestHead};
use crate::codec::ws::{self, MessageKind};

/// Checks a client's upgrade request; `Err((status, reason))` refuses it.
pub fn check_handshake(head: &RequestHead) -> Result<(), (u16, &'static str)> {
    if head.method() != "GET" {
        return Err((400, "WebSocket handshake must be a GET"));
    }
    match head.fields.get("sec-websocket-version").map(http1::trim) {
        Some(b"13") => {}
        _ => return Err((426, "unsupported WebSocket version (13 is)")),
    }
    match head.fields.get("sec-websocket-key") {
        Some(k) if ws::valid_key(http1::trim(k)) => Ok(()),
        _ => Err((400, "missing or invalid Sec-WebSocket-Key")),
    }
}

/// The 101 answer to a client whose request passed [`check_handshake`],
/// with the backend's chosen subprotocol and extensions, if any.
pub fn switching(head: &RequestHead, protocol: Option<&[u8]>, extensions: Option<&str>) -> Vec<u8> {
    let key = head
        .fields
        .get("sec-websocket-key")
        .map(http1::trim)
        .unwrap_or(b"");
    let mut out = Vec::with_capacity(256);
    heads::write_switching_protocols(&mut out, &ws::accept_key(key), protocol, extensions);
    out
}

/// The GRIP extension's settings, from a `Sec-WebSocket-Extensions` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GripExt {
    /// What a message for the client starts with (`m:` by default).
    pub prefix: String,
}

/// Splits a backend's extensions into the `grip` one and the rest (the
/// others, joined with `, `, for the client's 101).
pub fn grip_extension(value: Option<&[u8]>) -> (Option<GripExt>, String) {
    let Some(v) = value else {
        return (None, String::new());
    };
    let text = String::from_utf8_lossy(v);
    let mut grip = None;
    let mut rest = Vec::new();
    for ext in text.split(',') {
        let mut parts = ext.split(';').map(str::trim);
        if parts.next() == Some("grip") {
            let mut prefix = "m:".to_string();
            for p in parts {
                if let Some(v) = p.strip_prefix("message-prefix=") {
                    prefix = v.trim_matches('"').to_string();
                }
            }
            grip = Some(GripExt { prefix });
        } else if !ext.trim().is_empty() {
            rest.push(ext.trim().to_string());
        }
    }
    (grip, rest.join(", "))
}

/// A message from the backend under the GRIP extension: control (`c:`),
/// for the client (prefix stripped), or dropped.
#[derive(Debug, PartialEq, Eq)]
pub enum FromBackend<'a> {
    Control(&'a [u8]),
    Client(&'a [u8]),
    Drop,
}

/// Sorts a backend's message; without the extension, every message is
/// for the client unchanged. Only a text message can be control.
pub fn classify<'a>(ext: &Option<GripExt>, kind: MessageKind, data: &'a [u8]) -> FromBackend<'a> {
    let Some(g) = ext else {
        return FromBackend::Client(data);
    };
    if kind == MessageKind::Text {
        if let Some(c) = data.strip_prefix(b"c:") {
            return FromBackend::Control(c);
        }
    }
    match data.strip_prefix(g.prefix.as_bytes()) {
        Some(rest) => FromBackend::Client(rest),
        None => FromBackend::Drop,
    }
}

/// Invariants the fuzz target checks, for any bytes: splitting the
/// extensions never panics and never passes a `grip` extension on to the
/// client; sorting a message never panics, and what goes to the client or
/// to control is a suffix of the message.
#[doc(hidden)]
pub fn check_handshake_invariants(data: &[u8]) {
    let (grip, rest) = grip_extension(Some(data));
    for ext in rest.split(", ") {
        assert_ne!(
            ext.split(';').next().map(str::trim),
            Some("grip"),
            "{rest:?}"
        );
    }
    for ext in [
        grip,
        None,
        Some(GripExt {
            prefix: String::new(),
        }),
    ] {
        for kind in [MessageKind::Text, MessageKind::Binary] {
            match classify(&ext, kind, data) {
                FromBackend::Control(c) => {
                    assert!(
                        kind == MessageKind::Text && data.ends_with(c) && c.len() + 2 == data.len()
                    )
                }
                FromBackend::Client(c) => assert!(data.ends_with(c)),
                FromBackend::Drop => assert!(ext.is_some()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::http1::{parse_request, HeadLimits};

    fn head(raw: &str) -> RequestHead {
        let limits = HeadLimits::default();
        match parse_request(raw.as_bytes(), &limits) {
            Ok(Some((_, h))) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn handshake_table() {
        type Case = (&'static str, Result<(), (u16, &'static str)>);
        let cases: &[Case] = &[
            (
                "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                Ok(()),
            ),
            (
                "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Version:  13 \r\nSec-WebSocket-Key:  dGhlIHNhbXBsZSBub25jZQ== \r\n\r\n",
                Ok(()),
            ),
            (
                "POST /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                Err((400, "WebSocket handshake must be a GET")),
            ),
            (
                "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                Err((426, "unsupported WebSocket version (13 is)")),
            ),
            (
                "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                Err((426, "unsupported WebSocket version (13 is)")),
            ),
            (
                "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Version: 13\r\n\r\n",
                Err((400, "missing or invalid Sec-WebSocket-Key")),
            ),
            (
                // 15 bytes, not 16.
                "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n\r\n",
                Err((400, "missing or invalid Sec-WebSocket-Key")),
            ),
            (
                "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: not base64!\r\n\r\n",
                Err((400, "missing or invalid Sec-WebSocket-Key")),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(check_handshake(&head(raw)), *want, "{raw:?}");
        }
    }

    #[test]
    fn switching_answers_with_the_accept_key() {
        let h = head(&format!(
            "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        ));
        let out = String::from_utf8(switching(&h, Some(b"chat"), Some("x-ext"))).unwrap();
        assert!(out.starts_with("HTTP/1.1 101 "), "{out}");
        // RFC 6455 §1.3's example key and answer.
        assert!(
            out.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{out}"
        );
        assert!(out.contains("Sec-WebSocket-Protocol: chat\r\n"), "{out}");
        assert!(out.contains("Sec-WebSocket-Extensions: x-ext\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }

    fn grip(prefix: &str) -> Option<GripExt> {
        Some(GripExt {
            prefix: prefix.to_string(),
        })
    }

    #[test]
    fn grip_extension_table() {
        let cases: &[(Option<&str>, Option<GripExt>, &str)] = &[
            (None, None, ""),
            (Some(""), None, ""),
            (Some("grip"), grip("m:"), ""),
            (Some(" grip "), grip("m:"), ""),
            (Some("grip; message-prefix=\"\""), grip(""), ""),
            (Some("grip; message-prefix=x:"), grip("x:"), ""),
            (Some("grip;message-prefix=\"p-\""), grip("p-"), ""),
            (Some("grip; other=1"), grip("m:"), ""),
            (
                Some("permessage-deflate, grip; message-prefix=x:"),
                grip("x:"),
                "permessage-deflate",
            ),
            (Some("a; b=1 ,grip, c"), grip("m:"), "a; b=1, c"),
            (Some("a, , b"), None, "a, b"),
            // Names match exactly: neither of these is the grip extension.
            (Some("gripx"), None, "gripx"),
            (Some("GRIP"), None, "GRIP"),
        ];
        for (value, want_grip, want_rest) in cases {
            let (g, rest) = grip_extension(value.map(str::as_bytes));
            assert_eq!((&g, rest.as_str()), (want_grip, *want_rest), "{value:?}");
        }
    }

    #[test]
    fn classify_table() {
        use FromBackend::{Client, Control, Drop};
        let cases: &[(Option<GripExt>, MessageKind, &[u8], FromBackend)] = &[
            (None, MessageKind::Text, b"c:{}", Client(b"c:{}")),
            (None, MessageKind::Binary, b"hi", Client(b"hi")),
            (
                grip("m:"),
                MessageKind::Text,
                b"c:{\"type\":\"detach\"}",
                Control(b"{\"type\":\"detach\"}"),
            ),
            (grip("m:"), MessageKind::Binary, b"c:{}", Drop),
            (grip("m:"), MessageKind::Text, b"m:hello", Client(b"hello")),
            (
                grip("m:"),
                MessageKind::Binary,
                b"m:\x00\x01",
                Client(b"\x00\x01"),
            ),
            (grip("m:"), MessageKind::Text, b"hello", Drop),
            (grip("m:"), MessageKind::Text, b"", Drop),
            (grip(""), MessageKind::Text, b"hello", Client(b"hello")),
            (grip(""), MessageKind::Text, b"c:x", Control(b"x")),
            (grip("x:"), MessageKind::Text, b"m:hello", Drop),
        ];
        for (ext, kind, data, want) in cases {
            assert_eq!(
                classify(ext, *kind, data),
                *want,
                "{ext:?} {kind:?} {data:?}"
            );
        }
    }

    #[test]
    fn invariants_hold_on_awkward_input() {
        for data in [
            &b""[..],
            b"grip",
            b"c:",
            b"m:",
            b"grip, grip; message-prefix=\xff",
            b"\xff\xfe,;;=\"",
            b",,,,",
        ] {
            check_handshake_invariants(data);
        }
    }
}
