//! WebSocket-over-HTTP events (GRIP.md §3): `NAME\r\n` without a payload,
//! `NAME <hex length>\r\n<payload>\r\n` with one. Used both ways: corepin
//! encodes the client's events into request bodies and decodes the
//! backend's events from response bodies.

use std::io::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    Open,
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Close code (none: 1005 on the wire as no payload) and reason.
    Close(Option<u16>, Vec<u8>),
    Disconnect,
}

/// Appends one event.
pub fn encode(out: &mut Vec<u8>, ev: &WsEvent) {
    let (name, payload): (&str, Option<std::borrow::Cow<'_, [u8]>>) = match ev {
        WsEvent::Open => ("OPEN", None),
        WsEvent::Text(p) => ("TEXT", Some(p.as_slice().into())),
        WsEvent::Binary(p) => ("BINARY", Some(p.as_slice().into())),
        WsEvent::Ping(p) => ("PING", Some(p.as_slice().into())),
        WsEvent::Pong(p) => ("PONG", Some(p.as_slice().into())),
        WsEvent::Close(None, _) => ("CLOSE", None),
        WsEvent::Close(Some(code), reason) => {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(reason);
            ("CLOSE", Some(p.into()))
        }
        WsEvent::Disconnect => ("DISCONNECT", None),
    };
    match payload {
        Some(p) => {
            let _ = write!(out, "{name} {:x}\r\n", p.len());
            out.extend_from_slice(&p);
            out.extend_from_slice(b"\r\n");
        }
        None => {
            let _ = write!(out, "{name}\r\n");
        }
    }
}

/// Why an events body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsError(pub String);

/// Decodes a whole events body.
pub fn decode(mut body: &[u8]) -> Result<Vec<WsEvent>, EventsError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| EventsError("event line without CRLF".into()))?;
        let line = std::str::from_utf8(&body[..line_end])
            .map_err(|_| EventsError("event line is not text".into()))?;
        body = &body[line_end + 2..];
        let (name, len) = match line.split_once(' ') {
            Some((n, l)) => {
                let len = usize::from_str_radix(l.trim(), 16)
                    .map_err(|_| EventsError(format!("bad length in '{line}'")))?;
                (n, Some(len))
            }
            None => (line, None),
        };
        let payload = match len {
            Some(n) => {
                if body.len() < n + 2 || &body[n..n + 2] != b"\r\n" {
                    return Err(EventsError(format!(
                        "{name}: payload shorter than its length"
                    )));
                }
                let p = body[..n].to_vec();
                body = &body[n + 2..];
                Some(p)
            }
            None => None,
        };
        let p = || payload.clone().unwrap_or_default();
        out.push(match name {
            "OPEN" => WsEvent::Open,
            "TEXT" => WsEvent::Text(p()),
            "BINARY" => WsEvent::Binary(p()),
            "PING" => WsEvent::Ping(p()),
            "PONG" => WsEvent::Pong(p()),
            "DISCONNECT" => WsEvent::Disconnect,
            "CLOSE" => match payload {
                Some(p) if p.len() >= 2 => {
                    WsEvent::Close(Some(u16::from_be_bytes([p[0], p[1]])), p[2..].to_vec())
                }
                _ => WsEvent::Close(None, Vec::new()),
            },
            other => return Err(EventsError(format!("unknown event '{other}'"))),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wire_form() {
        let evs = vec![
            WsEvent::Open,
            WsEvent::Text(b"hello".to_vec()),
            WsEvent::Binary(vec![0, 1, 2]),
            WsEvent::Ping(Vec::new()),
            WsEvent::Close(Some(1000), b"bye".to_vec()),
            WsEvent::Disconnect,
        ];
        let mut out = Vec::new();
        for e in &evs {
            encode(&mut out, e);
        }
        assert!(out.starts_with(b"OPEN\r\nTEXT 5\r\nhello\r\nBINARY 3\r\n\x00\x01\x02\r\nPING 0\r\n\r\nCLOSE 5\r\n\x03\xe8bye\r\n"));
        assert_eq!(decode(&out), Ok(evs));
        assert_eq!(
            decode(b"TEXT 1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"),
            Ok(vec![WsEvent::Text(b"abcdefghijklmnopqrstuvwxyz".to_vec())])
        );
        assert_eq!(
            decode(b"CLOSE\r\n"),
            Ok(vec![WsEvent::Close(None, Vec::new())])
        );
    }

    #[test]
    fn bad_bodies() {
        for b in [
            &b"OPEN"[..],
            b"TEXT 5\r\nhi\r\n",
            b"TEXT zz\r\nhi\r\n",
            b"SHOUT\r\n",
        ] {
            assert!(decode(b).is_err(), "{b:?}");
        }
    }
}
