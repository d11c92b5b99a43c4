//! `corepin-load grip-backend`: a GRIP backend for the soak run, one
//! thread polling its sockets (epoll, through the `polling` crate as the
//! rest of the load tool does), that holds every kind of subscriber a
//! proxy can hold:
//!
//! - `GET /stream?channel=X`: `Grip-Hold: stream` on X (an SSE stream:
//!   `text/event-stream`, a comment line as its first body).
//! - `GET /response?channel=X`: `Grip-Hold: response` on X, `Grip-Timeout`
//!   as given (`--longpoll-timeout`, default 20 s), `timeout\n` as the
//!   answer at the timeout. With `--hold-log FILE`, a request carrying
//!   `r=ID` appends `ID NS` to FILE when it is answered (NS: CLOCK_MONOTONIC
//!   ns, one write each, so a killed backend loses none): the soak knows
//!   from when the proxy could hold that long-poll.
//! - `GET /wsp?channel=X` with a WebSocket upgrade: accepted with
//!   `Sec-WebSocket-Extensions: grip`, then the control message
//!   `c:{"type":"subscribe","channel":"X"}` and the message `m:W`.
//! - `POST /wsoh?channel=X`, `application/websocket-events`
//!   (WebSocket-over-HTTP): OPEN is answered with OPEN, the same subscribe
//!   control message and `m:W`; CLOSE with CLOSE; other events with
//!   nothing.
//!
//! `W` (the welcome) reaches the client only after the proxy has handled
//! the subscribe before it, so a client that has read it knows it is
//! subscribed. Anything else is answered 404. The port is printed on
//! stdout; the address may be given (`127.0.0.1:PORT` to come back on the
//! same port after a restart).

use std::io::Write;
use std::net::TcpListener;

use corepin::codec::http1::{parse_request, BodyKind, HeadLimits, RequestHead};
use corepin::codec::ws::{self, Opcode, Reader, Received, Role};
use corepin::codec::wsevents::{self, WsEvent};

use crate::args::{die, Args};

/// The message a subscriber reads once it is subscribed.
pub const WELCOME: &[u8] = b"W";

enum State {
    Http,
    Ws(Box<Reader>),
}

/// Where long-poll holds are logged, if anywhere.
struct Holds(Option<std::fs::File>);

impl Holds {
    fn log(&mut self, head: &RequestHead) {
        let Some(f) = self.0.as_mut() else { return };
        let id = head
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("r=")))
            .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
        if let Some(id) = id {
            let _ = f.write_all(format!("{id} {}\n", crate::net::now_ns()).as_bytes());
        }
    }
}

fn channel_of(head: &RequestHead) -> Option<String> {
    head.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("channel="))
        .filter(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string)
}

fn subscribe_control(channel: &str) -> Vec<u8> {
    format!("c:{{\"type\":\"subscribe\",\"channel\":\"{channel}\"}}").into_bytes()
}

fn respond(out: &mut Vec<u8>, status: &str, headers: &str, body: &[u8]) {
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

/// Handles the buffered input; false means close the connection.
fn serve(
    state: &mut State,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    longpoll_timeout: u32,
    holds: &mut Holds,
) -> bool {
    loop {
        match &mut *state {
            State::Http => {
                let Ok(parsed) = parse_request(buf, &HeadLimits::default()) else {
                    return false;
                };
                let Some((n, head)) = parsed else { return true };
                let len = match head.body {
                    BodyKind::Length(l) => l as usize,
                    BodyKind::Empty => 0,
                    _ => return false,
                };
                if buf.len() < n + len {
                    return true;
                }
                let body = buf[n..n + len].to_vec();
                buf.drain(..n + len);
                let channel = channel_of(&head);
                match (head.method(), head.path(), channel) {
                    ("GET", "/wsp", Some(ch)) if head.is_upgrade() => {
                        let key = head.fields.get("sec-websocket-key").unwrap_or(b"");
                        let _ = write!(
                            out,
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: grip\r\n\r\n",
                            ws::accept_key(key)
                        );
                        ws::write_frame(out, true, Opcode::Text, &subscribe_control(&ch), None);
                        let mut welcome = b"m:".to_vec();
                        welcome.extend_from_slice(WELCOME);
                        ws::write_frame(out, true, Opcode::Text, &welcome, None);
                        *state = State::Ws(Box::new(Reader::new(Role::Server, 1 << 20)));
                        continue;
                    }
                    ("GET", "/stream", Some(ch)) => respond(
                        out,
                        "200 OK",
                        &format!("Content-Type: text/event-stream\r\nGrip-Hold: stream\r\nGrip-Channel: {ch}\r\n"),
                        b":subscribed\n\n",
                    ),
                    ("GET", "/response", Some(ch)) => {
                        respond(
                            out,
                            "200 OK",
                            &format!("Content-Type: text/plain\r\nGrip-Hold: response\r\nGrip-Channel: {ch}\r\nGrip-Timeout: {longpoll_timeout}\r\n"),
                            b"timeout\n",
                        );
                        holds.log(&head);
                    }
                    ("POST", "/wsoh", Some(ch)) => {
                        let Ok(events) = wsevents::decode(&body) else {
                            respond(out, "400 Bad Request", "", b"bad events\n");
                            continue;
                        };
                        let mut reply = Vec::new();
                        for e in events {
                            match e {
                                WsEvent::Open => {
                                    wsevents::encode(&mut reply, &WsEvent::Open);
                                    wsevents::encode(&mut reply, &WsEvent::Text(subscribe_control(&ch)));
                                    let mut welcome = b"m:".to_vec();
                                    welcome.extend_from_slice(WELCOME);
                                    wsevents::encode(&mut reply, &WsEvent::Text(welcome));
                                }
                                WsEvent::Close(code, _) => {
                                    wsevents::encode(&mut reply, &WsEvent::Close(code.or(Some(1000)), Vec::new()))
                                }
                                _ => {}
                            }
                        }
                        respond(
                            out,
                            "200 OK",
                            "Content-Type: application/websocket-events\r\nSec-WebSocket-Extensions: grip\r\n",
                            &reply,
                        );
                    }
                    _ => respond(out, "404 Not Found", "Content-Type: text/plain\r\n", b"not here\n"),
                }
            }
            State::Ws(reader) => {
                let Ok((n, ev)) = reader.read(buf) else {
                    return false;
                };
                buf.drain(..n);
                match ev {
                    Some(Received::Ping(p)) => ws::write_frame(out, true, Opcode::Pong, &p, None),
                    Some(Received::Close(code, _)) => {
                        ws::write_close(out, if code == 1005 { 1000 } else { code }, "", None);
                        return false;
                    }
                    Some(_) => {}
                    None => return true,
                }
            }
        }
    }
}

pub fn run(args: &[String]) {
    let (listen, rest) = match args.first() {
        Some(a) if !a.starts_with("--") => (a.as_str(), &args[1..]),
        _ => ("127.0.0.1:0", args),
    };
    let a = Args::parse("grip-backend", rest, &["longpoll-timeout", "hold-log"]);
    let longpoll_timeout: u32 = a.get("longpoll-timeout", 20);
    let mut holds = Holds(a.opt::<String>("hold-log").map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| die(&format!("grip-backend: --hold-log {p}: {e}")))
    }));
    let l = TcpListener::bind(listen)
        .unwrap_or_else(|e| die(&format!("grip-backend: cannot listen on {listen}: {e}")));
    println!("{}", l.local_addr().map(|a| a.port()).unwrap_or(0));
    let _ = std::io::stdout().flush();
    crate::net::serve_connections(
        &l,
        || State::Http,
        |state, buf, out| serve(state, buf, out, longpoll_timeout, &mut holds),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_bytes(input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let keep = serve(
            &mut State::Http,
            &mut input.to_vec(),
            &mut out,
            20,
            &mut Holds(None),
        );
        (out, keep)
    }

    #[test]
    fn holds_each_kind_on_its_channel() {
        let (out, keep) = serve_bytes(b"GET /stream?channel=c7 HTTP/1.1\r\nHost: x\r\n\r\n");
        let text = String::from_utf8(out).unwrap();
        assert!(keep);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("Grip-Hold: stream\r\nGrip-Channel: c7\r\n"),
            "{text}"
        );

        let (out, _) = serve_bytes(b"GET /response?channel=c7 HTTP/1.1\r\nHost: x\r\n\r\n");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Grip-Hold: response\r\n") && text.contains("Grip-Timeout: 20\r\n"));
        assert!(text.ends_with("\r\n\r\ntimeout\n"), "{text}");

        let mut open = Vec::new();
        wsevents::encode(&mut open, &WsEvent::Open);
        let req = format!(
            "POST /wsoh?channel=c7 HTTP/1.1\r\nHost: x\r\nContent-Type: application/websocket-events\r\nContent-Length: {}\r\n\r\n",
            open.len()
        );
        let (out, _) = serve_bytes(&[req.as_bytes(), &open].concat());
        let text = String::from_utf8(out).unwrap();
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        assert_eq!(
            wsevents::decode(body.as_bytes()).unwrap(),
            vec![
                WsEvent::Open,
                WsEvent::Text(br#"c:{"type":"subscribe","channel":"c7"}"#.to_vec()),
                WsEvent::Text(b"m:W".to_vec()),
            ]
        );
        assert!(text.contains("Sec-WebSocket-Extensions: grip\r\n"));
    }

    #[test]
    fn upgrade_subscribes_then_welcomes() {
        let (out, keep) = serve_bytes(
            b"GET /wsp?channel=c1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        assert!(keep);
        let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&out[..at]);
        assert!(
            head.starts_with("HTTP/1.1 101 ") && head.contains("Sec-WebSocket-Extensions: grip")
        );
        let mut r = Reader::new(Role::Client, 1 << 20);
        let (n, first) = r.read(&out[at..]).unwrap();
        let (_, second) = r.read(&out[at + n..]).unwrap();
        assert_eq!(
            (first, second),
            (
                Some(Received::Message(
                    ws::MessageKind::Text,
                    br#"c:{"type":"subscribe","channel":"c1"}"#.to_vec()
                )),
                Some(Received::Message(ws::MessageKind::Text, b"m:W".to_vec())),
            )
        );
    }

    #[test]
    fn long_poll_holds_are_logged_by_request_id() {
        let path = std::env::temp_dir().join(format!("grip-backend-holds-{}", std::process::id()));
        let mut input = b"GET /response?channel=a&r=12.3 HTTP/1.1\r\nHost: x\r\n\r\nGET /response?channel=a&r=x%0a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut holds = Holds(Some(std::fs::File::create(&path).unwrap()));
        let before = crate::net::now_ns();
        assert!(serve(
            &mut State::Http,
            &mut input,
            &mut Vec::new(),
            20,
            &mut holds
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let (id, ns) = lines[0].split_once(' ').unwrap();
        assert_eq!(id, "12.3");
        assert!(ns.parse::<u64>().unwrap() >= before);
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        for req in [
            &b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /stream?channel=a%0d HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /other?channel=a HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let (out, keep) = serve_bytes(req);
            assert!(keep);
            assert!(
                out.starts_with(b"HTTP/1.1 404 "),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}
