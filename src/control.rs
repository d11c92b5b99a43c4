//! The control HTTP API on `control_http`: `POST /publish` (Pushpin's
//! publish format), `GET /health`, `GET /metrics`. Served by every core on
//! its own SO_REUSEPORT socket; a publish is parsed here once and handed to
//! the bus, which fans it out to every core.

use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;

use base64::Engine;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::buf::{InBuf, BUF_SIZE};
use crate::codec::http1::{self, parse_request, BodyKind, RequestHead};
use crate::codec::publish;
use crate::config::PublishAuth;
use crate::conn::body::{OutFraming, Relay, RelayError};
use crate::shard::Shard;

/// One answer of the control API.
struct Reply {
    status: u16,
    content_type: &'static str,
    extra: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            extra: Vec::new(),
            body: body.into(),
        }
    }
}

/// Serves one control connection (keep-alive, requests in order).
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let t = &shard.cfg.timeouts;
    let _ = stream.set_write_timeout(Some(t.client_write));
    let mut inbuf = InBuf::new(shard.bufs.clone());
    let limits = shard.cfg.limits.head;
    loop {
        let _ = stream.set_read_timeout(Some(if inbuf.is_empty() {
            t.client_idle
        } else {
            t.client_header
        }));
        let head = loop {
            match parse_request(inbuf.data(), &limits) {
                Ok(Some((n, head))) => {
                    inbuf.consume(n);
                    break Ok(head);
                }
                Ok(None) => {}
                Err(e) => break Err(Reply::text(e.status(), e.reason())),
            }
            match inbuf
                .fill(&mut stream, limits.max_head_bytes.max(BUF_SIZE) + 1)
                .await
            {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        };
        let (reply, keep) = match head {
            Err(r) => (r, false),
            Ok(head) => {
                let (r, body_read) = handle(&shard, &mut stream, &mut inbuf, &head).await;
                (r, body_read && head.keep_alive && !shard.draining())
            }
        };
        let mut out = Vec::with_capacity(256 + reply.body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
            reply.status,
            http1::reason_phrase(reply.status),
            reply.content_type
        );
        for (n, v) in &reply.extra {
            let _ = write!(out, "{n}: {v}\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n", reply.body.len());
        if !keep {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(reply.body.as_bytes());
        if stream.write_all(&out).await.is_err() || !keep {
            debug!("control: closing {peer}");
            crate::conn::http::linger_close(&mut stream, &mut inbuf).await;
            return;
        }
    }
}

/// Routes one request; the flag says whether its body was fully read (so
/// the connection may be kept).
async fn handle(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    inbuf: &mut InBuf,
    head: &RequestHead,
) -> (Reply, bool) {
    let no_body = head.body == BodyKind::Empty;
    match head.path() {
        "/publish" | "/publish/" => {}
        "/health" if head.method() == "GET" || head.method() == "HEAD" => {
            return if shard.draining() {
                (Reply::text(503, "draining\n"), no_body)
            } else {
                (Reply::text(200, "OK\n"), no_body)
            };
        }
        "/metrics" if head.method() == "GET" => {
            shard.publish_snapshot();
            let text =
                crate::metrics::render(&shard.board().all(), &shard.bus.stats, shard.draining());
            let mut r = Reply::text(200, text);
            r.content_type = "text/plain; version=0.0.4";
            return (r, no_body);
        }
        "/health" | "/metrics" => {
            let mut r = Reply::text(405, "method not allowed\n");
            r.extra.push(("Allow", "GET".into()));
            return (r, no_body);
        }
        _ => return (Reply::text(404, "not found\n"), no_body),
    }
    if head.method() != "POST" {
        let mut r = Reply::text(405, "method not allowed\n");
        r.extra.push(("Allow", "POST".into()));
        return (r, no_body);
    }
    if let Err(r) = authorize(&shard.cfg.publish.auth, head) {
        return (r, no_body);
    }
    let max = shard.cfg.publish.max_body as u64;
    match head.body {
        BodyKind::Empty if head.fields.get("content-length").is_none() => {
            return (Reply::text(411, "length required\n"), true)
        }
        BodyKind::Length(n) if n > max => {
            return (Reply::text(413, "publish body too large\n"), false)
        }
        _ => {}
    }
    let _ = stream.set_read_timeout(Some(shard.cfg.timeouts.client_body));
    let mut body: Vec<u8> = Vec::new();
    let (mut prefix, mut out) = (Vec::new(), Vec::new());
    let r = Relay {
        prefix: &mut prefix,
        out: &mut out,
        limit: max,
    }
    .run(stream, inbuf, &mut body, head.body, OutFraming::Raw)
    .await;
    match r {
        Ok(_) => {}
        Err(RelayError::TooLarge) => return (Reply::text(413, "publish body too large\n"), false),
        Err(RelayError::BadChunk(e)) => return (Reply::text(400, e.reason()), false),
        Err(_) => return (Reply::text(400, "incomplete body\n"), false),
    }
    let items = match publish::parse(&body) {
        Ok(items) => items,
        Err(e) => return (Reply::text(400, format!("{e}\n")), true),
    };
    let n = items.len();
    shard.bus.publish(items);
    debug!("control: published {n} items");
    let wants_json = head
        .fields
        .get("accept")
        .is_some_and(|a| String::from_utf8_lossy(a).contains("application/json"));
    if wants_json {
        let mut r = Reply::text(200, "{\"message\":\"Published\"}\n");
        r.content_type = "application/json";
        (r, true)
    } else {
        (Reply::text(200, "Published\n"), true)
    }
}

fn unauthorized(why: &str, scheme: &str) -> Reply {
    let mut r = Reply::text(401, format!("{why}\n"));
    r.extra.push(("WWW-Authenticate", scheme.to_string()));
    r
}

fn authorize(auth: &PublishAuth, head: &RequestHead) -> Result<(), Reply> {
    let header = head
        .fields
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v).trim().to_string());
    match auth {
        PublishAuth::None => Ok(()),
        PublishAuth::Bearer { key, iss } => {
            let scheme = "Bearer realm=\"corepin\"";
            let Some(token) = header.as_deref().and_then(|h| h.strip_prefix("Bearer ")) else {
                return Err(unauthorized("missing bearer token", scheme));
            };
            crate::jwt::verify(token, key, iss.as_deref(), crate::jwt::now())
                .map_err(|e| unauthorized(&format!("invalid token: {e:?}"), scheme))
        }
        PublishAuth::Basic { user, password } => {
            let scheme = "Basic realm=\"corepin\"";
            let given = header
                .as_deref()
                .and_then(|h| h.strip_prefix("Basic "))
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .and_then(|b| String::from_utf8(b).ok());
            match given.as_deref().and_then(|g| g.split_once(':')) {
                Some((u, p)) if u == user && p == password => Ok(()),
                _ => Err(unauthorized("invalid credentials", scheme)),
            }
        }
    }
}
