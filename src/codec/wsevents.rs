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
pub use super::Invalid as EventsError;

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

/// The bytes of content an event offers a backend, as Pushpin counts them
/// for `Content-Bytes-Accepted`: a message's or ping's payload, a close's
/// code and reason (none without a code); nothing for the others.
pub fn content_len(ev: &WsEvent) -> usize {
    match ev {
        WsEvent::Text(p) | WsEvent::Binary(p) | WsEvent::Ping(p) | WsEvent::Pong(p) => p.len(),
        WsEvent::Close(Some(_), reason) => 2 + reason.len(),
        WsEvent::Close(None, _) | WsEvent::Open | WsEvent::Disconnect => 0,
    }
}

/// Reads a backend's `Content-Bytes-Accepted`: a decimal count. Pushpin
/// takes a value it cannot read (or a negative one) as "everything";
/// corepin refuses it, naming it, rather than guess.
pub fn parse_bytes_accepted(v: &[u8]) -> Result<usize, String> {
    let t = std::str::from_utf8(v).unwrap_or("").trim();
    if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "Content-Bytes-Accepted '{}' is not a decimal count",
            String::from_utf8_lossy(&v[..v.len().min(40)])
        ));
    }
    t.parse()
        .map_err(|_| format!("Content-Bytes-Accepted '{t}' is out of range"))
}

/// What is left of one request's events once the backend has said how many
/// of their bytes it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Messages (or their unaccepted tails, same kind) to offer again, in
    /// order, ahead of anything newer.
    pub events: Vec<WsEvent>,
    /// The request's close, not sent after all (data before it was kept).
    pub close: Option<WsEvent>,
    /// Events the backend took whole (so the session made progress).
    pub removed: usize,
}

/// Applies `Content-Bytes-Accepted: accepted` (`None`: the field was
/// absent, everything is accepted) to the events of one request (messages,
/// pings, pongs, at most one close, last), as Pushpin 1.41 does: the first
/// `accepted` bytes of content are consumed from the front, splitting a
/// message if need be (its tail keeps its kind); events with no content
/// are consumed once reached. A close counts when all data before it was
/// accepted, and then must be accepted too. `maxed`: the request could
/// not carry everything pending, so it must make progress.
pub fn take_accepted(
    sent: Vec<WsEvent>,
    accepted: Option<usize>,
    maxed: bool,
) -> Result<Kept, String> {
    let mut data: std::collections::VecDeque<WsEvent> = std::collections::VecDeque::new();
    let mut close = None;
    for e in sent {
        match e {
            WsEvent::Close(..) => close = Some(e),
            other => data.push_back(other),
        }
    }
    let data_len: usize = data.iter().map(content_len).sum();
    let offered = data_len + close.as_ref().map_or(0, content_len);
    let accepted = accepted.unwrap_or(offered);
    if accepted > offered {
        return Err(format!(
            "Content-Bytes-Accepted {accepted} is more than the {offered} bytes offered"
        ));
    }
    let mut left = accepted.min(data_len);
    let mut removed = 0;
    while let Some(front) = data.front_mut() {
        let n = content_len(front);
        if left < n {
            if left > 0 {
                if let WsEvent::Text(p) | WsEvent::Binary(p) | WsEvent::Ping(p) | WsEvent::Pong(p) =
                    front
                {
                    p.drain(..left);
                }
            }
            break;
        }
        left -= n;
        data.pop_front();
        removed += 1;
    }
    if maxed && removed == 0 && accepted == 0 {
        return Err(
            "the backend accepted nothing of a request that could not carry all data".into(),
        );
    }
    let kept_close = match close {
        Some(c) if !data.is_empty() => Some(c),
        Some(_) if accepted < offered => {
            return Err(format!(
                "Content-Bytes-Accepted {accepted}: all data was accepted but not the close ({offered} bytes offered)"
            ))
        }
        _ => None,
    };
    Ok(Kept {
        events: data.into(),
        close: kept_close,
        removed,
    })
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

    #[test]
    fn bytes_accepted_values() {
        for (v, want) in [
            (&b"0"[..], Ok(0)),
            (b"12", Ok(12)),
            (b" 7 ", Ok(7)),
            (b"4294967295", Ok(4_294_967_295)),
        ] {
            assert_eq!(parse_bytes_accepted(v), want, "{v:?}");
        }
        for v in [
            &b""[..],
            b"-1",
            b"+3",
            b"1.5",
            b"0x10",
            b"12345678901",
            b"\xff",
            b"1 2",
        ] {
            assert!(parse_bytes_accepted(v).is_err(), "{v:?}");
        }
    }

    fn text(s: &str) -> WsEvent {
        WsEvent::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn accepting_part_of_a_request() {
        let close = WsEvent::Close(Some(1000), b"bye".to_vec());
        let kept = |events: Vec<WsEvent>, close: Option<WsEvent>, removed| -> Result<Kept, ()> {
            Ok(Kept {
                events,
                close,
                removed,
            })
        };
        // (sent, accepted, maxed) -> result
        type Case = (Vec<WsEvent>, Option<usize>, bool, Result<Kept, ()>);
        let cases: Vec<Case> = vec![
            (vec![text("hello")], None, false, kept(vec![], None, 1)),
            (vec![text("hello")], Some(5), false, kept(vec![], None, 1)),
            (
                vec![text("hello")],
                Some(2),
                false,
                kept(vec![text("llo")], None, 0),
            ),
            (
                vec![text("hello")],
                Some(0),
                false,
                kept(vec![text("hello")], None, 0),
            ),
            (vec![text("hello")], Some(0), true, Err(())),
            (vec![text("hello")], Some(6), false, Err(())),
            (
                vec![text("ab"), WsEvent::Binary(vec![1, 2, 3]), text("c")],
                Some(3),
                false,
                kept(vec![WsEvent::Binary(vec![2, 3]), text("c")], None, 1),
            ),
            // Empty messages are consumed once reached.
            (
                vec![text(""), WsEvent::Ping(vec![]), text("x"), text("")],
                Some(1),
                false,
                kept(vec![], None, 4),
            ),
            (
                vec![text(""), text("x")],
                Some(0),
                false,
                kept(vec![text("x")], None, 1),
            ),
            // A close: offered with its 2 + reason bytes.
            (
                vec![text("ab"), close.clone()],
                None,
                false,
                kept(vec![], None, 1),
            ),
            (
                vec![text("ab"), close.clone()],
                Some(7),
                false,
                kept(vec![], None, 1),
            ),
            (vec![text("ab"), close.clone()], Some(8), false, Err(())),
            // All data but not (all of) the close: an error.
            (vec![text("ab"), close.clone()], Some(2), false, Err(())),
            (vec![text("ab"), close.clone()], Some(4), false, Err(())),
            // Data kept back: the close is not sent either.
            (
                vec![text("ab"), close.clone()],
                Some(1),
                false,
                kept(vec![text("b")], Some(close.clone()), 0),
            ),
            (
                vec![WsEvent::Close(None, vec![])],
                Some(0),
                false,
                kept(vec![], None, 0),
            ),
            (vec![], Some(0), false, kept(vec![], None, 0)),
            (vec![], Some(1), false, Err(())),
        ];
        for (sent, accepted, maxed, want) in cases {
            let got = take_accepted(sent.clone(), accepted, maxed).map_err(|_| ());
            assert_eq!(got, want, "{sent:?} accepted {accepted:?} maxed {maxed}");
        }
    }
}
