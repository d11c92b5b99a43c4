//! A WebSocket session's protocol policy toward its client, shared by
//! every mode corepin serves (the test target's subscriber, passthrough to
//! a WebSocket backend, WebSocket-over-HTTP): how the client's pings are
//! answered, how its close is echoed, how a protocol error ends the
//! session. Sans-IO: it takes the client's frame events and appends what
//! the client must be sent to a caller-owned buffer; the caller writes it
//! and acts on the returned [`Step`]s.

use super::ws::{self, MessageKind, Opcode, Received, WsError};

/// The status carried by a close that answers one with `code`: a close
/// without a status (reported as 1005, which never goes on the wire,
/// RFC 6455 §7.4.1) is answered with 1000, any other status as it came.
pub fn echo_code(code: u16) -> u16 {
    if code == 1005 {
        1000
    } else {
        code
    }
}

/// Who answers the client's pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pings {
    /// The session answers them (and still reports them).
    Answer,
    /// The backend does: they are only reported, to be passed on.
    Forward,
}

/// What the mode acts on after the session took a client's event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The client closed (its close is echoed): its status (`None` when it
    /// gave none) and reason. Nothing follows.
    Closed(Option<u16>, String),
    /// The client broke the protocol (a close with the error's status is
    /// sent). Nothing follows.
    Failed(WsError),
}

/// One WebSocket session, seen from the server side.
#[derive(Debug)]
pub struct ServerSession {
    pings: Pings,
    closed: bool,
}

impl ServerSession {
    pub fn new(pings: Pings) -> ServerSession {
        ServerSession {
            pings,
            closed: false,
        }
    }

    /// True once a close went (or must go) to the client: the session
    /// takes nothing more.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Takes the client's events (or the error that ended reading them),
    /// appending to `out` what the client must be sent, in order; returns
    /// the steps for the mode, ending at a close or failure.
    pub fn take(&mut self, events: Result<Vec<Received>, WsError>, out: &mut Vec<u8>) -> Vec<Step> {
        let (events, error) = match events {
            Ok(evs) => (evs, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let mut steps = Vec::with_capacity(events.len());
        for ev in events {
            if self.closed {
                return steps;
            }
            steps.push(self.event(ev, out));
        }
        if let Some(e) = error.filter(|_| !self.closed) {
            self.close(e.code, e.reason, out);
            steps.push(Step::Failed(e));
        }
        steps
    }

    fn event(&mut self, ev: Received, out: &mut Vec<u8>) -> Step {
        match ev {
            Received::Message(k, d) => Step::Message(k, d),
            Received::Ping(p) => {
                if self.pings == Pings::Answer {
                    ws::write_frame(out, true, Opcode::Pong, &p, None);
                }
                Step::Ping(p)
            }
            Received::Pong(p) => Step::Pong(p),
            Received::Close(code, reason) => {
                self.close(echo_code(code), "", out);
                Step::Closed((code != 1005).then_some(code), reason)
            }
        }
    }

    /// Closes the session from the server side (a published close, an
    /// error): appends the close frame, once.
    pub fn close(&mut self, code: u16, reason: &str, out: &mut Vec<u8>) {
        if !self.closed {
            ws::write_close(out, code, reason, None);
            self.closed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(out: &[u8]) -> Vec<Received> {
        let mut r = ws::Reader::new(ws::Role::Client, 1 << 20);
        let mut evs = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let (n, ev) = r.read(&out[at..]).expect("valid frames");
            at += n;
            evs.extend(ev);
        }
        evs
    }

    #[test]
    fn client_events_as_a_table() {
        let ping = || Received::Ping(b"p".to_vec());
        let text = || Received::Message(MessageKind::Text, b"t".to_vec());
        let bad = WsError {
            code: 1002,
            reason: "bad",
        };
        // pings, events in, (sent to the client), steps out
        type Case = (
            Pings,
            Result<Vec<Received>, WsError>,
            Vec<Received>,
            Vec<Step>,
        );
        let cases: Vec<Case> = vec![
            (
                Pings::Answer,
                Ok(vec![ping(), text()]),
                vec![Received::Pong(b"p".to_vec())],
                vec![
                    Step::Ping(b"p".to_vec()),
                    Step::Message(MessageKind::Text, b"t".to_vec()),
                ],
            ),
            (
                Pings::Forward,
                Ok(vec![ping()]),
                vec![],
                vec![Step::Ping(b"p".to_vec())],
            ),
            // A close without a status is answered 1000 and reported as none.
            (
                Pings::Answer,
                Ok(vec![Received::Close(1005, String::new()), text()]),
                vec![Received::Close(1000, String::new())],
                vec![Step::Closed(None, String::new())],
            ),
            (
                Pings::Forward,
                Ok(vec![Received::Close(4001, "bye".into())]),
                vec![Received::Close(4001, String::new())],
                vec![Step::Closed(Some(4001), "bye".into())],
            ),
            (
                Pings::Answer,
                Err(bad.clone()),
                vec![Received::Close(1002, "bad".into())],
                vec![Step::Failed(bad)],
            ),
        ];
        for (i, (pings, events, sent, steps)) in cases.into_iter().enumerate() {
            let mut s = ServerSession::new(pings);
            let mut out = Vec::new();
            assert_eq!(s.take(events, &mut out), steps, "case {i}");
            assert_eq!(frames(&out), sent, "case {i}");
        }
    }

    #[test]
    fn a_closed_session_takes_nothing_more() {
        let mut s = ServerSession::new(Pings::Answer);
        let mut out = Vec::new();
        s.close(1008, "too slow", &mut out);
        s.close(1000, "", &mut out);
        let steps = s.take(Ok(vec![Received::Ping(b"x".to_vec())]), &mut out);
        assert!(steps.is_empty());
        assert_eq!(frames(&out), vec![Received::Close(1008, "too slow".into())]);
    }

    #[test]
    fn echo_codes() {
        for (code, echo) in [(1005, 1000), (1000, 1000), (1001, 1001), (4000, 4000)] {
            assert_eq!(echo_code(code), echo);
        }
    }
}
