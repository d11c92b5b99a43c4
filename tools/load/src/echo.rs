//! `corepin-load echo-server`: a single-threaded epoll backend for the
//! WebSocket benchmarks that is never the bottleneck. It echoes WebSocket
//! messages (plain upgrade) and answers WebSocket-over-HTTP event requests
//! (`application/websocket-events`: OPEN is accepted, TEXT/BINARY echoed);
//! any other request gets a small fixed 200 response.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};

use corepin::codec::http1::{parse_request, BodyKind, HeadLimits};
use corepin::codec::ws::{self, MessageKind, Opcode, Reader, Received, Role};
use corepin::codec::wsevents::{self, WsEvent};

use crate::net::Poller;

/// The listener's token (connections count up from 0; `polling` keeps
/// `usize::MAX` for itself).
const LISTENER: usize = usize::MAX - 1;

enum State {
    Http,
    Ws(Box<Reader>),
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    state: State,
}

/// Handles buffered input; false means close the connection.
fn serve(c: &mut Conn, out: &mut Vec<u8>) -> bool {
    loop {
        match &mut c.state {
            State::Http => {
                let Ok(parsed) = parse_request(&c.buf, &HeadLimits::default()) else {
                    return false;
                };
                let Some((n, head)) = parsed else { return true };
                let len = match head.body {
                    BodyKind::Length(l) => l as usize,
                    BodyKind::Empty => 0,
                    _ => return false,
                };
                if c.buf.len() < n + len {
                    return true;
                }
                if head.is_upgrade() {
                    let key = head.fields.get("sec-websocket-key").unwrap_or(b"");
                    let _ = write!(out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", ws::accept_key(key));
                    c.buf.drain(..n);
                    c.state = State::Ws(Box::new(Reader::new(Role::Server, 1 << 20)));
                    continue;
                }
                let is_events = head
                    .fields
                    .get("content-type")
                    .is_some_and(|t| t.starts_with(b"application/websocket-events"));
                if !is_events {
                    // A plain request (the proxy benchmark's backend).
                    c.buf.drain(..n + len);
                    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 23\r\n\r\nhello from the backend\n");
                    continue;
                }
                let events = wsevents::decode(&c.buf[n..n + len]).unwrap_or_default();
                c.buf.drain(..n + len);
                let mut body = Vec::new();
                for e in events {
                    match e {
                        WsEvent::Open => wsevents::encode(&mut body, &WsEvent::Open),
                        WsEvent::Text(_) | WsEvent::Binary(_) => wsevents::encode(&mut body, &e),
                        WsEvent::Close(code, r) => {
                            wsevents::encode(&mut body, &WsEvent::Close(code, r))
                        }
                        _ => {}
                    }
                }
                let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/websocket-events\r\nContent-Length: {}\r\n\r\n", body.len());
                out.extend_from_slice(&body);
            }
            State::Ws(reader) => {
                let Ok((n, ev)) = reader.read(&c.buf) else {
                    return false;
                };
                c.buf.drain(..n);
                match ev {
                    Some(Received::Message(k, d)) => {
                        let op = if k == MessageKind::Text {
                            Opcode::Text
                        } else {
                            Opcode::Binary
                        };
                        ws::write_frame(out, true, op, &d, None);
                    }
                    Some(Received::Ping(p)) => ws::write_frame(out, true, Opcode::Pong, &p, None),
                    Some(Received::Close(code, _)) => {
                        ws::write_close(out, if code == 1005 { 1000 } else { code }, "", None);
                        return false;
                    }
                    Some(Received::Pong(_)) => {}
                    None => return true,
                }
            }
        }
    }
}

pub fn run(listen: &str) {
    let l = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("echo-server: cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    let _ = l.set_nonblocking(true);
    println!("{}", l.local_addr().map(|a| a.port()).unwrap_or(0));
    let mut poller = Poller::new();
    poller.add(&l, LISTENER);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut ready = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        poller.wait(1000, &mut ready);
        for &token in &ready {
            if token == LISTENER {
                while let Ok((s, _)) = l.accept() {
                    let _ = s.set_nonblocking(true);
                    let _ = s.set_nodelay(true);
                    poller.add(&s, next);
                    conns.insert(
                        next,
                        Conn {
                            s,
                            buf: Vec::new(),
                            state: State::Http,
                        },
                    );
                    next += 1;
                }
                continue;
            }
            let Some(c) = conns.get_mut(&token) else {
                continue;
            };
            let mut keep = crate::net::read_available(&mut c.s, &mut buf, &mut c.buf);
            let mut out = Vec::new();
            if keep {
                keep = serve(c, &mut out);
            }
            if !out.is_empty() {
                let _ = c.s.set_nonblocking(false);
                let _ = c.s.write_all(&out);
                let _ = c.s.set_nonblocking(true);
            }
            if !keep {
                poller.remove(&c.s);
                conns.remove(&token);
            }
        }
    }
}
