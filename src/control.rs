//! The control HTTP API on `control_http`: `POST /publish` (Pushpin's
//! publish format), `GET /health`, `GET /metrics`, `GET /channels`
//! (subscriber counts). Served by every core on
//! its own SO_REUSEPORT socket; a publish is parsed here once and handed to
//! the bus, which queues it for the cores that have subscribers on its
//! channels.
//!
//! Cheap per request: a body already in the read buffer is parsed where it
//! lies; answers to pipelined requests are gathered and written together;
//! the buffers are the connection's own and are reused. A big publish is
//! parsed and handed out in slices, yielding between them when other tasks
//! are due, and every publish holds its share of the bus's in-flight
//! budget while it is parsed (429 when spent; 503 while a core's delivery
//! backlog is over its bound).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;

use base64::Engine;

use crate::buf::BUF_SIZE;
use crate::bus::{Refused, Reservation, ITEM_OVERHEAD};
use crate::codec::heads;
use crate::codec::http1::{parse_request, BodyKind, RequestHead};
use crate::codec::publish::Parser;
use crate::config::PublishAuth;
use crate::conn::body::{OutFraming, Relay, RelayError};
use crate::connection::{Connection, ReadError};
use crate::shard::Shard;

/// Items parsed between checks for other work, and handed to the bus at a
/// time.
const SLICE: usize = 256;
/// Answers gathered for pipelined requests before they are written.
const OUT_MAX: usize = 64 * 1024;
/// A body buffer larger than this is not kept for the next request.
const BODY_KEEP: usize = 64 * 1024;

/// The answer to a publish, written as is.
const PUBLISHED: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nPublished\n";
const PUBLISHED_JSON: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n{\"message\":\"Published\"}\n";

/// One answer of the control API.
struct Reply {
    status: u16,
    content_type: &'static str,
    extra: Vec<(&'static str, String)>,
    body: Cow<'static, str>,
    /// A complete keep-alive response to write as is instead.
    fixed: Option<&'static [u8]>,
}

impl Reply {
    fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            extra: Vec::new(),
            body: body.into(),
            fixed: None,
        }
    }

    fn fixed(bytes: &'static [u8]) -> Reply {
        Reply {
            fixed: Some(bytes),
            ..Reply::text(200, "")
        }
    }

    /// 429 (budget spent) or 503 (backlog over its bound), retry in 1 s.
    fn refused(r: &Refused) -> Reply {
        let status = match r {
            Refused::Busy { .. } => 429,
            Refused::Backlog { .. } => 503,
        };
        let mut reply = Reply::text(status, format!("{r}\n"));
        reply.extra.push(("Retry-After", "1".into()));
        reply
    }

    /// A publish the cluster's broker did not take or confirm.
    fn cluster(f: &crate::cluster::Failure) -> Reply {
        let mut reply = Reply::text(f.status(), format!("{f}\n"));
        if f.status() == 503 {
            reply.extra.push(("Retry-After", "1".into()));
        }
        reply
    }

    fn write_to(&self, out: &mut Vec<u8>, keep: bool) {
        if let (Some(bytes), true) = (self.fixed, keep) {
            out.extend_from_slice(bytes);
            return;
        }
        let body: &[u8] = match self.fixed {
            // A fixed answer on a closing connection: its body after the head.
            Some(bytes) => bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(&[][..], |i| &bytes[i + 4..]),
            None => self.body.as_bytes(),
        };
        heads::write_control_answer(out, self.status, self.content_type, &self.extra, body, keep);
    }
}

/// A control connection's reusable state.
struct Conn {
    conn: Connection,
    /// Answers not yet written (pipelined requests are answered together).
    out: Vec<u8>,
    /// A publish body that did not arrive with its head.
    body: Vec<u8>,
}

impl Conn {
    /// Writes the gathered answers.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let ok = self.conn.write_all(&self.out).await.is_ok();
        self.out.clear();
        if self.out.capacity() > 4 * OUT_MAX {
            self.out = Vec::new();
        }
        ok
    }
}

/// Serves one control connection (keep-alive, requests in order).
pub async fn serve(shard: Rc<Shard>, conn: Connection, peer: SocketAddr) {
    let t = &shard.cfg.timeouts;
    conn.set_nodelay();
    conn.set_write_timeout(Some(t.client_write));
    let mut c = Conn {
        conn,
        out: Vec::new(),
        body: Vec::new(),
    };
    let limits = shard.cfg.limits.head;
    let max = limits.max_head_bytes.max(BUF_SIZE) + 1;
    let parse = |b: &[u8]| parse_request(b, &limits);
    loop {
        let head = match parse(c.conn.input()) {
            Ok(Some((n, head))) => {
                c.conn.consume(n);
                Ok(head)
            }
            Err(e) => Err(Reply::text(e.status(), e.reason())),
            Ok(None) => {
                // Nothing more to answer without reading: send what is
                // gathered, then wait (idle) for a request to start.
                if !c.flush().await {
                    return;
                }
                if !c.conn.has_input() {
                    c.conn.set_read_timeout(Some(t.client_idle));
                    match c.conn.fill(max).await {
                        Ok(n) if n > 0 => {}
                        _ => return,
                    }
                }
                c.conn.set_read_timeout(Some(t.client_header));
                match c.conn.read_head(max, None, parse).await {
                    Ok(head) => Ok(head),
                    Err(ReadError::Parse(e)) => Err(Reply::text(e.status(), e.reason())),
                    Err(_) => return,
                }
            }
        };
        let (reply, keep) = match head {
            Err(r) => (r, false),
            Ok(head) => {
                let (r, body_read) = handle(&shard, &mut c, &head).await;
                (r, body_read && head.keep_alive && !shard.draining())
            }
        };
        reply.write_to(&mut c.out, keep);
        if !keep {
            let _ = c.flush().await;
            debug!("control: closing {peer}");
            c.conn.linger_close().await;
            return;
        }
        if (!c.conn.has_input() || c.out.len() >= OUT_MAX) && !c.flush().await {
            return;
        }
    }
}

/// Routes one request; the flag says whether its body was fully read (so
/// the connection may be kept).
async fn handle(shard: &Rc<Shard>, c: &mut Conn, head: &RequestHead) -> (Reply, bool) {
    let no_body = head.body == BodyKind::Empty;
    match head.path() {
        "/publish" | "/publish/" => {}
        "/health" if head.method() == "GET" || head.method() == "HEAD" => {
            return if shard.draining() {
                (Reply::text(503, "draining\n"), no_body)
            } else if let Some(c) = shard.publisher.cluster() {
                // A node cut off from the broker misses other nodes'
                // publishes: not healthy for new subscribers.
                match c.unhealthy() {
                    Some(why) => (Reply::text(503, why), no_body),
                    None => (
                        Reply::text(200, format!("OK\n{}", c.health_line())),
                        no_body,
                    ),
                }
            } else {
                (Reply::text(200, "OK\n"), no_body)
            };
        }
        "/metrics" if head.method() == "GET" => {
            shard.publish_snapshot();
            let mut text = crate::metrics::render(
                &shard.board().all(),
                &shard.bus.stats,
                shard.draining(),
                &shard.cfg.metrics_pushpin_prefix,
            );
            if let Some(c) = shard.publisher.cluster() {
                c.render_metrics(&mut text);
            }
            let mut r = Reply::text(200, text);
            r.content_type = "text/plain; version=0.0.4";
            return (r, no_body);
        }
        // Subscriber counts per channel, summed over cores from the
        // snapshots they copy 4 times a second (this core's made now).
        "/channels" | "/channels/" if head.method() == "GET" => {
            if let Err(r) = authorize(&shard.cfg.publish.auth, head) {
                return (r, no_body);
            }
            let q = match crate::codec::counts::Query::from_url(head.query()) {
                Ok(q) => q,
                Err(e) => return (Reply::text(400, format!("{e}\n")), no_body),
            };
            shard.publish_snapshot();
            let v = crate::control_socket::channels_json(shard.board(), &q);
            let mut r = Reply::text(200, format!("{v}\n"));
            r.content_type = "application/json";
            return (r, no_body);
        }
        "/health" | "/metrics" | "/channels" | "/channels/" => {
            let mut r = Reply::text(405, "method not allowed\n");
            r.extra.push(("Allow", "GET".into()));
            return (r, no_body);
        }
        // Pushpin's recover command: held HTTP subscribers re-fetch from
        // their backends (streams their next link, long-polls their
        // request), the channels' last ids forgotten.
        "/recover" | "/recover/" if head.method() == "POST" => {
            if let Err(r) = authorize(&shard.cfg.publish.auth, head) {
                return (r, no_body);
            }
            shard.bus.recover();
            let wants_json = head
                .fields
                .get("accept")
                .is_some_and(|a| String::from_utf8_lossy(a).contains("application/json"));
            let mut r = if wants_json {
                Reply::text(200, "{\"message\":\"Updated\"}\n")
            } else {
                Reply::text(200, "Updated\n")
            };
            if wants_json {
                r.content_type = "application/json";
            }
            return (r, no_body);
        }
        // One connection by its Connection-Id: the control socket's
        // `connection` method over HTTP, with the same JSON body.
        "/connection" | "/connection/" if head.method() == "POST" => {
            if let Err(r) = authorize(&shard.cfg.publish.auth, head) {
                return (r, no_body);
            }
            return connection(shard, c, head).await;
        }
        "/connection" | "/connection/" => {
            let mut r = Reply::text(405, "method not allowed\n");
            r.extra.push(("Allow", "POST".into()));
            return (r, no_body);
        }
        "/recover" | "/recover/" => {
            let mut r = Reply::text(405, "method not allowed\n");
            r.extra.push(("Allow", "POST".into()));
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
    let wants_json = head
        .fields
        .get("accept")
        .is_some_and(|a| String::from_utf8_lossy(a).contains("application/json"));
    let ok = if wants_json {
        Reply::fixed(PUBLISHED_JSON)
    } else {
        Reply::fixed(PUBLISHED)
    };
    // The common case: the whole body came with the head. It is parsed
    // where it lies, and refused or not, the connection stays usable.
    if let BodyKind::Length(n) = head.body {
        let n = n as usize;
        if n <= c.conn.input_len() {
            let r = match admit(shard, n) {
                Ok(budget) => publish(shard, &c.conn.input()[..n], budget, ok).await,
                Err(refused) => Reply::refused(&refused),
            };
            c.conn.consume(n);
            return (r, true);
        }
    }
    // Otherwise the budget is taken before the body is read (a chunked
    // body may be as large as the limit), and a refusal closes.
    let expected = match head.body {
        BodyKind::Length(n) => n as usize,
        BodyKind::Empty => 0,
        _ => max as usize,
    };
    let budget = match admit(shard, expected) {
        Ok(b) => b,
        Err(refused) => return (Reply::refused(&refused), false),
    };
    if !c.flush().await {
        return (Reply::text(400, "connection lost\n"), false);
    }
    if head.expect_continue && c.conn.write_all(heads::CONTINUE).await.is_err() {
        return (Reply::text(400, "connection lost\n"), false);
    }
    c.conn
        .set_read_timeout(Some(shard.cfg.timeouts.client_body));
    let mut body = std::mem::take(&mut c.body);
    body.clear();
    let (mut prefix, mut out) = (Vec::new(), Vec::new());
    let r = Relay {
        prefix: &mut prefix,
        out: &mut out,
        limit: max,
    }
    .run(&mut c.conn, &mut body, head.body, OutFraming::Raw)
    .await;
    let answer = match r {
        Ok(_) => (publish(shard, &body, budget, ok).await, true),
        Err(RelayError::TooLarge) => (Reply::text(413, "publish body too large\n"), false),
        Err(RelayError::BadChunk(e)) => (Reply::text(400, e.reason()), false),
        Err(_) => (Reply::text(400, "incomplete body\n"), false),
    };
    if body.capacity() <= BODY_KEEP {
        c.body = body;
    }
    answer
}

/// Largest body `POST /connection` takes (its text is at most
/// `control_socket::MAX_TARGET_TEXT`, JSON-escaped).
const CONNECTION_BODY: usize = 64 * 1024;

/// `POST /connection`: `{"id":ID,"ws-message":{"content":TEXT}}` or
/// `{"id":ID,"action":"close"}` (see `control_socket::connection_request`).
/// 200 when the connection was found (on any core), 404 naming the id when
/// none has it, 400 for a bad body.
async fn connection(shard: &Rc<Shard>, c: &mut Conn, head: &RequestHead) -> (Reply, bool) {
    let json = |status: u16, v: serde_json::Value| {
        let mut r = Reply::text(status, format!("{v}\n"));
        r.content_type = "application/json";
        r
    };
    let body = match head.body {
        BodyKind::Length(n) if n as usize > CONNECTION_BODY => {
            return (Reply::text(413, "connection body too large\n"), false)
        }
        BodyKind::Length(n) => {
            let n = n as usize;
            if head.expect_continue
                && n > c.conn.input_len()
                && c.conn.write_all(heads::CONTINUE).await.is_err()
            {
                return (Reply::text(400, "connection lost\n"), false);
            }
            c.conn
                .set_read_timeout(Some(shard.cfg.timeouts.client_body));
            while c.conn.input_len() < n {
                match c.conn.fill(CONNECTION_BODY).await {
                    Ok(0) | Err(_) => return (Reply::text(400, "incomplete body\n"), false),
                    Ok(_) => {}
                }
            }
            let body = c.conn.input()[..n].to_vec();
            c.conn.consume(n);
            body
        }
        BodyKind::Empty => Vec::new(),
        _ => return (Reply::text(411, "length required\n"), false),
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                Reply::text(400, format!("connection: invalid JSON: {e}\n")),
                true,
            )
        }
    };
    let (id, action) = match crate::control_socket::connection_request(&v) {
        Ok(x) => x,
        Err(e) => {
            return (
                json(400, serde_json::json!({"ok": false, "error": e})),
                true,
            )
        }
    };
    let Some(plane) = shard.plane.borrow().clone() else {
        return (Reply::text(503, "no control plane\n"), true);
    };
    // Asking the core that owns the id waits for its answer: off the
    // executor.
    let applied = {
        let id = id.clone();
        glommio::executor()
            .spawn_blocking(move || plane.target(&id, &action))
            .await
    };
    use crate::control_socket::Applied;
    let status = match applied {
        Applied::Done => return (json(200, serde_json::json!({"ok": true, "id": id})), true),
        Applied::NotHere => 404,
        Applied::NoFormat(..) => 409,
    };
    let error = crate::control_socket::target_error(&id, &applied);
    (
        json(
            status,
            serde_json::json!({"ok": false, "id": id, "error": error}),
        ),
        true,
    )
}

/// Checks the backlog bound and reserves the body's share of the budget.
fn admit(shard: &Shard, body_len: usize) -> Result<Reservation<'_>, Refused> {
    shard.bus.admit()?;
    shard.bus.reserve(body_len)
}

/// Parses `body` and hands its items to the bus, in slices: between
/// slices, other tasks on this core run if they are due. Nothing is handed
/// out unless the whole body is valid.
async fn publish(shard: &Shard, body: &[u8], mut budget: Reservation<'_>, ok: Reply) -> Reply {
    let mut parser = match Parser::new(body, &[]) {
        Ok(p) => p,
        Err(e) => return Reply::text(400, format!("{e}\n")),
    };
    let mut items = Vec::new();
    let mut pending = 0;
    loop {
        match parser.next_item() {
            Ok(Some(item)) => {
                pending += ITEM_OVERHEAD + item.payload_len();
                items.push(item);
            }
            Ok(None) => break,
            Err(e) => return Reply::text(400, format!("{e}\n")),
        }
        if items.len() % SLICE == 0 {
            if let Err(r) = budget.grow(std::mem::take(&mut pending)) {
                return Reply::refused(&r);
            }
            glommio::yield_if_needed().await;
        }
    }
    let n = items.len();
    if let Some(c) = shard.publisher.cluster() {
        // In a cluster the broker takes it; the bridge hands it to the bus.
        return match crate::cluster::publish(c, body, items).await {
            Ok(()) => ok,
            Err(f) => Reply::cluster(&f),
        };
    }
    shard.bus.count_publish();
    if n <= SLICE {
        shard.publish(items);
    } else {
        let mut rest = items.into_iter();
        loop {
            let slice: Vec<_> = rest.by_ref().take(SLICE).collect();
            if slice.is_empty() {
                break;
            }
            shard.publish(slice);
            glommio::yield_if_needed().await;
        }
    }
    debug!("control: published {n} items");
    ok
}

fn unauthorized(why: &str, scheme: &str) -> Reply {
    let mut r = Reply::text(401, format!("{why}\n"));
    r.extra.push(("WWW-Authenticate", scheme.to_string()));
    r
}

fn authorize(auth: &PublishAuth, head: &RequestHead) -> Result<(), Reply> {
    if *auth == PublishAuth::None {
        return Ok(());
    }
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
