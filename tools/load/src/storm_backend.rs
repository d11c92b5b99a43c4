//! `corepin-load storm-backend`: the application behind the proxy in the
//! reconnect-storm benchmark (benches/storm.sh). It keeps the channel's
//! items itself, as an application's database would, and counts every
//! request the proxy sends it, so the storm's cost to the backend can be
//! read off (`GET /stats`).
//!
//! - `GET /stream?channel=C`: a `Grip-Hold: stream` on C. What else it
//!   answers depends on `--mode`:
//!   - `hold` (a corepin user's backend with channel history on): nothing
//!     more; the proxy replays what a returning client missed.
//!   - `replay` (a Pushpin user's backend, Pushpin's reliable streams):
//!     the items after the client's `Last-Event-ID` come in the body, and
//!     the hold names the last of them, `Grip-Channel: C; prev-id=ID`,
//!     with a next link, `Grip-Link: </stream?channel=C&after=ID>;
//!     rel=next`, that the proxy fetches (sending `Grip-Last: C;
//!     last-id=ID`) when it sees it missed an item; that request is
//!     answered the same way from the id it names.
//! - `POST /log?channel=C&id=N` (from `corepin-load storm`, not the
//!   proxy): stores item N of C, the body being its SSE text, before the
//!   publisher hands it to the proxy. Ids count from 0 with no holes.
//! - `GET /stats`: the counters as JSON (not counted).
//!
//! One thread, level-triggered epoll. The port is printed on stdout.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;

use corepin::codec::http1::{parse_request, BodyKind, HeadLimits, RequestHead};
use serde_json::json;

use crate::args::{die, Args};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Hold,
    Replay,
}

/// What the proxy asked of the backend.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Every `/stream` request (the three kinds below).
    pub requests: u64,
    /// Without `Last-Event-ID` or a next-link id: a new subscriber.
    pub fresh: u64,
    /// With `Last-Event-ID`: a client coming back.
    pub resumes: u64,
    /// Next-link fetches (`after=` or `Grip-Last`): the proxy saw a gap.
    pub next_links: u64,
    /// Items the backend had to send from its own store.
    pub items_sent: u64,
    /// `/log` posts (the publisher's, not the proxy's).
    pub logged: u64,
}

/// The backend's state: one item list per channel (index = id).
pub struct Backend {
    pub mode: Mode,
    pub link_timeout: u32,
    pub store: HashMap<String, Vec<Vec<u8>>>,
    pub counters: Counters,
    /// `--trace`: one line per `/stream` request on stderr.
    pub trace: bool,
}

fn param<'a>(head: &'a RequestHead, name: &str) -> Option<&'a str> {
    head.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

fn valid_channel(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 128
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The id in `Grip-Last: C; last-id=ID` for channel `c`.
fn grip_last(head: &RequestHead, c: &str) -> Option<u64> {
    let v = std::str::from_utf8(head.fields.get("grip-last")?).ok()?;
    v.split(',').find_map(|entry| {
        let mut parts = entry.split(';').map(str::trim);
        if parts.next()? != c {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("last-id=")?.trim_matches('"').parse().ok())
    })
}

fn respond(out: &mut Vec<u8>, status: &str, headers: &str, body: &[u8]) {
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

impl Backend {
    pub fn new(mode: Mode, link_timeout: u32) -> Backend {
        Backend {
            mode,
            link_timeout,
            store: HashMap::new(),
            counters: Counters::default(),
            trace: false,
        }
    }

    /// Answers one complete request.
    pub fn answer(&mut self, head: &RequestHead, body: &[u8], out: &mut Vec<u8>) {
        let channel = param(head, "channel").filter(|c| valid_channel(c));
        match (head.method(), head.path(), channel) {
            ("GET", "/stats", _) => {
                let c = &self.counters;
                let body = json!({"requests": c.requests, "fresh": c.fresh,
                    "resumes": c.resumes, "next_links": c.next_links,
                    "items_sent": c.items_sent, "logged": c.logged})
                .to_string();
                respond(
                    out,
                    "200 OK",
                    "Content-Type: application/json\r\n",
                    body.as_bytes(),
                );
            }
            ("POST", "/log", Some(c)) => {
                let items = self.store.entry(c.to_string()).or_default();
                match param(head, "id").and_then(|i| i.parse::<usize>().ok()) {
                    Some(id) if id == items.len() => {
                        items.push(body.to_vec());
                        self.counters.logged += 1;
                        respond(out, "204 No Content", "", b"");
                    }
                    _ => respond(
                        out,
                        "409 Conflict",
                        "Content-Type: text/plain\r\n",
                        format!("next id is {}\n", items.len()).as_bytes(),
                    ),
                }
            }
            ("GET", "/stream", Some(c)) => self.stream(head, c, out),
            _ => respond(
                out,
                "404 Not Found",
                "Content-Type: text/plain\r\n",
                b"storm backend: /stream?channel=C, /log, /stats\n",
            ),
        }
    }

    fn stream(&mut self, head: &RequestHead, c: &str, out: &mut Vec<u8>) {
        // `Grip-Last` first: the proxy advances it past the items the
        // stream has seen since the link was given.
        let after_link =
            grip_last(head, c).or_else(|| param(head, "after").and_then(|a| a.parse::<u64>().ok()));
        let last_event_id = head
            .fields
            .get("last-event-id")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let k = &mut self.counters;
        k.requests += 1;
        match (after_link, last_event_id) {
            (Some(_), _) => k.next_links += 1,
            (None, Some(_)) => k.resumes += 1,
            (None, None) => k.fresh += 1,
        }
        let mut headers = String::from(
            "Content-Type: text/event-stream\r\nGrip-Hold: stream\r\nCache-Control: no-cache\r\n",
        );
        let mut body = b":held\n\n".to_vec();
        if self.mode == Mode::Replay {
            let items = self.store.get(c).map(Vec::as_slice).unwrap_or(&[]);
            // A new subscriber starts at the newest item; a returning one
            // (or the proxy after a gap) after the id it names.
            let from = match after_link.or(last_event_id) {
                Some(id) => (id as usize).saturating_add(1).min(items.len()),
                None => items.len(),
            };
            for item in &items[from..] {
                body.extend_from_slice(item);
            }
            self.counters.items_sent += (items.len() - from) as u64;
            match items.len().checked_sub(1) {
                Some(last) => {
                    headers.push_str(&format!(
                        "Grip-Channel: {c}; prev-id={last}\r\nGrip-Link: </stream?channel={c}&after={last}>; rel=next; timeout={}\r\n",
                        self.link_timeout
                    ));
                }
                None => headers.push_str(&format!("Grip-Channel: {c}\r\n")),
            }
        } else {
            headers.push_str(&format!("Grip-Channel: {c}\r\n"));
        }
        if self.trace {
            let last = head.fields.get("grip-last").map(String::from_utf8_lossy);
            eprintln!(
                "{} last-event-id={last_event_id:?} grip-last={last:?} -> {}",
                head.target(),
                headers.replace("\r\n", " | ")
            );
        }
        respond(out, "200 OK", &headers, &body);
    }
}

/// Answers the complete requests in `buf`; false: close the connection.
fn serve(b: &mut Backend, buf: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    loop {
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
        b.answer(&head, &buf[n..n + len], out);
        let keep = head.keep_alive;
        buf.drain(..n + len);
        if !keep {
            return false;
        }
    }
}

/// A listener with a backlog of 4096 (std's is 128): a storm opens
/// thousands of connections to the backend at once, and a full accept
/// queue would add the kernel's SYN retry delays (1 s, 3 s, ...) to the
/// figures; the other servers in benches/ listen with 4096 too.
fn listener(addr: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| std::io::Error::other("not HOST:PORT"))?;
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

pub fn run(args: &[String]) {
    let (listen, rest) = match args.first() {
        Some(a) if !a.starts_with("--") => (a.as_str(), &args[1..]),
        _ => ("127.0.0.1:0", args),
    };
    let a = Args::parse("storm-backend", rest, &["mode", "link-timeout", "trace"]);
    let mode = match a.string("mode", "replay").as_str() {
        "hold" => Mode::Hold,
        "replay" => Mode::Replay,
        m => die(&format!(
            "storm-backend: --mode '{m}' is not hold or replay"
        )),
    };
    let mut b = Backend::new(mode, a.get("link-timeout", 600u32));
    b.trace = a.get("trace", false);
    let l = listener(listen)
        .unwrap_or_else(|e| die(&format!("storm-backend: cannot listen on {listen}: {e}")));
    println!("{}", l.local_addr().map(|a| a.port()).unwrap_or(0));
    let _ = std::io::stdout().flush();
    crate::net::serve_connections(&l, || (), |_, buf, out| serve(&mut b, buf, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(b: &mut Backend, req: &[u8]) -> String {
        let (n, head) = parse_request(req, &HeadLimits::default()).unwrap().unwrap();
        let mut out = Vec::new();
        b.answer(&head, &req[n..], &mut out);
        String::from_utf8(out).unwrap()
    }

    fn log(b: &mut Backend, id: usize) -> String {
        let body = format!("id: {id}\ndata: M{id},1;\n\n");
        ask(
            b,
            format!(
                "POST /log?channel=c&id={id} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    }

    #[test]
    fn replay_mode_answers_from_the_store_with_prev_id_and_next_link() {
        let mut b = Backend::new(Mode::Replay, 600);
        for id in 0..4 {
            assert!(log(&mut b, id).starts_with("HTTP/1.1 204 "));
        }
        assert!(
            log(&mut b, 9).starts_with("HTTP/1.1 409 "),
            "ids have no holes"
        );
        // A new subscriber: nothing replayed, held from the newest id.
        let fresh = ask(&mut b, b"GET /stream?channel=c HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(fresh.contains("Grip-Channel: c; prev-id=3\r\n"), "{fresh}");
        assert!(fresh.contains("Grip-Link: </stream?channel=c&after=3>; rel=next; timeout=600\r\n"));
        assert!(fresh.ends_with("\r\n\r\n:held\n\n"), "{fresh}");
        // A returning one gets what it missed.
        let back = ask(
            &mut b,
            b"GET /stream?channel=c HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1\r\n\r\n",
        );
        assert!(
            back.ends_with(":held\n\nid: 2\ndata: M2,1;\n\nid: 3\ndata: M3,1;\n\n"),
            "{back}"
        );
        // The proxy's next-link fetch names the id it has seen in
        // Grip-Last, which wins over the link's own `after`.
        let next = ask(
            &mut b,
            b"GET /stream?channel=c&after=1 HTTP/1.1\r\nHost: x\r\nGrip-Last: c; last-id=2\r\n\r\n",
        );
        assert!(next.ends_with(":held\n\nid: 3\ndata: M3,1;\n\n"), "{next}");
        let link_only = ask(
            &mut b,
            b"GET /stream?channel=c&after=2 HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(
            link_only.ends_with(":held\n\nid: 3\ndata: M3,1;\n\n"),
            "{link_only}"
        );
        let by_header = ask(
            &mut b,
            b"GET /stream?channel=c HTTP/1.1\r\nHost: x\r\nGrip-Last: other; last-id=0, c; last-id=2\r\n\r\n",
        );
        assert!(
            by_header.ends_with(":held\n\nid: 3\ndata: M3,1;\n\n"),
            "{by_header}"
        );
        assert_eq!(
            b.counters,
            Counters {
                requests: 5,
                fresh: 1,
                resumes: 1,
                next_links: 3,
                items_sent: 5,
                logged: 4
            }
        );
        let stats = ask(&mut b, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(stats.contains("\"next_links\":3"), "{stats}");
    }

    #[test]
    fn hold_mode_leaves_the_replay_to_the_proxy() {
        let mut b = Backend::new(Mode::Hold, 600);
        log(&mut b, 0);
        let back = ask(
            &mut b,
            b"GET /stream?channel=c HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0\r\n\r\n",
        );
        assert!(
            back.contains("Grip-Hold: stream\r\nCache-Control: no-cache\r\nGrip-Channel: c\r\n"),
            "{back}"
        );
        assert!(!back.contains("prev-id") && !back.contains("Grip-Link"));
        assert!(back.ends_with("\r\n\r\n:held\n\n"));
        assert_eq!((b.counters.resumes, b.counters.items_sent), (1, 0));
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        let mut b = Backend::new(Mode::Replay, 600);
        for req in [
            &b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /stream?channel=a%0d HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /other?channel=a HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(ask(&mut b, req).starts_with("HTTP/1.1 404 "));
        }
        assert_eq!(b.counters.requests, 0);
    }
}
