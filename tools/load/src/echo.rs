//! `corepin-load echo-server`: a single-threaded epoll backend for the
//! WebSocket benchmarks that is never the bottleneck. It echoes WebSocket
//! messages (plain upgrade) and answers WebSocket-over-HTTP event requests
//! (`application/websocket-events`: OPEN is accepted, TEXT/BINARY echoed);
//! any other request gets a small fixed 200 response.

use std::io::Write;
use std::net::TcpListener;

use corepin::codec::http1::{parse_request, BodyKind, HeadLimits};
use corepin::codec::ws::{self, MessageKind, Opcode, Reader, Received, Role};
use corepin::codec::wsevents::{self, WsEvent};

enum State {
    Http,
    Ws(Box<Reader>),
}

/// Handles buffered input; false means close the connection.
fn serve(state: &mut State, buf: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
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
                if head.is_upgrade() {
                    let key = head.fields.get("sec-websocket-key").unwrap_or(b"");
                    let _ = write!(out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", ws::accept_key(key));
                    buf.drain(..n);
                    *state = State::Ws(Box::new(Reader::new(Role::Server, 1 << 20)));
                    continue;
                }
                let is_events = head
                    .fields
                    .get("content-type")
                    .is_some_and(|t| t.starts_with(b"application/websocket-events"));
                if !is_events {
                    // A plain request (the proxy benchmark's backend).
                    buf.drain(..n + len);
                    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 23\r\n\r\nhello from the backend\n");
                    continue;
                }
                let events = wsevents::decode(&buf[n..n + len]).unwrap_or_default();
                buf.drain(..n + len);
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
                let Ok((n, ev)) = reader.read(buf) else {
                    return false;
                };
                buf.drain(..n);
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
    println!("{}", l.local_addr().map(|a| a.port()).unwrap_or(0));
    crate::net::serve_connections(&l, || State::Http, serve)
}
