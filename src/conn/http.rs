//! The HTTP/1.1 client connection: read a request head, route it, proxy it
//! to a backend (or answer it locally), stream the response back, and loop
//! for keep-alive and pipelined requests, answering them in order.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use crate::buf::{FillError, BUF_SIZE};
use crate::codec::grip;
use crate::codec::heads::{
    self, write_proxied_response, BackendRequest, ClientBody, Purpose, Toward,
};
use crate::codec::http1::{
    self, parse_request, BodyKind, HeadError, RequestHead, ResponseHead, Version,
};
use crate::conn::body::{OutFraming, Relay, RelayError};
use crate::conn::grip::{self as grip_conn, Decision, HoldCtx, HoldEnd};
use crate::conn::recycle::Recycled;
use crate::connection::{Connection, ReadError};
use crate::log::AccessEntry;
use crate::route::{decide_routed, Backend, Dispatch, Route, Target};
use crate::shard::{ConnGuard, ConnId, ConnState, Shard};
use crate::upstream::{Reuse, Upstream};

/// A client connection: its registration with the shard, its connection
/// (socket and unconsumed input), its address.
pub struct Client {
    /// Dropped first (fields drop in order): the shard forgets the socket
    /// before it is closed, so a drain never shuts down a descriptor number
    /// already reused by another connection.
    pub guard: ConnGuard,
    pub conn: Connection,
    pub peer: SocketAddr,
    pub state: Rc<ConnState>,
    /// The current request's response rewriting (CORS, JSON-P), if any.
    pub dropin: Option<Rc<crate::conn::dropin::Wrap>>,
    /// The current request's route's `log_level`, if it has one.
    pub log_level: Option<u32>,
}

/// How one exchange ended, for the access log and the keep-alive decision.
pub struct Outcome {
    pub status: u16,
    pub bytes: u64,
    pub target: String,
    pub keep_alive: bool,
}

impl Outcome {
    pub(crate) fn closed(status: u16, bytes: u64, target: String) -> Self {
        Outcome {
            status,
            bytes,
            target,
            keep_alive: false,
        }
    }
}

enum HeadRead {
    Head(RequestHead),
    /// The client went away or idled out: close quietly.
    Closed,
    /// Answer this status and close.
    Refuse(u16, &'static str),
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Serves one client connection (a TLS one after its handshake) until
/// it closes.
///
/// Not an `async fn`: an async fn keeps its arguments in its future for
/// its whole life, beside the locals they are moved into, so the
/// `Connection` was held three times over in every connection's task
/// (PERFORMANCE.md, "Per-connection byte budget"). The client is built
/// here and the future holds it once.
pub fn serve(shard: Rc<Shard>, conn: Connection, peer: SocketAddr) -> impl Future<Output = ()> {
    // TCP_NODELAY is inherited from the listening socket (`server::bind`).
    conn.set_write_timeout(Some(shard.cfg.timeouts.client_write));
    let guard = shard.register(conn.raw_fd());
    let c = Client {
        state: guard.state(),
        guard,
        conn,
        peer,
        dropin: None,
        log_level: None,
    };
    crate::conn::held::ConnTask::new(serve_client(shard, c))
}

/// Serves requests on `c` until it closes, or a stream hold is set up: the
/// stream is then handed off (`conn::held`), this future ended, so an idle
/// held stream keeps none of the request path's state.
///
/// Not `async fn` on purpose: its argument would stay in the future beside
/// the local it is moved into (see `serve`).
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve_client(
    shard: Rc<Shard>,
    mut c: Client,
) -> impl Future<Output = Option<Box<crate::conn::held::HeldConn>>> {
    async move {
        loop {
            let head = match read_head(&shard, &mut c).await {
                HeadRead::Head(h) => h,
                HeadRead::Closed => break,
                HeadRead::Refuse(status, reason) => {
                    let started = shard.clock();
                    let bytes = answer(&shard, &mut c, status, reason, true).await;
                    shard.access(
                        &AccessEntry {
                            core: shard.index,
                            client: c.peer,
                            method: "-",
                            path: "-",
                            status,
                            bytes,
                            target: "-",
                            duration: started.map(|s| s.elapsed()).unwrap_or_default(),
                            user_agent: None,
                        },
                        None,
                    );
                    break;
                }
            };
            let started = shard.clock();
            let stats_conn =
                crate::conn::dropin::StatsConn::open(&shard, &head, c.peer, c.conn.is_tls());
            let outcome = handle(&shard, &mut c, &head).await;
            c.dropin = None;
            let outcome = match outcome {
                Ok(o) => o,
                Err(stream) => {
                    let stats = stats_conn.map(|s| s.into_id());
                    let held = crate::conn::held::HeldConn::new(c, head, started, stats, stream);
                    return Some(held);
                }
            };
            drop(stats_conn);
            log_exchange(&shard, &mut c, &head, &outcome, started);
            if !outcome.keep_alive || shard.draining() {
                break;
            }
        }
        c.conn.linger_close().await;
        None
    }
}

/// The access log's line for one exchange.
pub(crate) fn log_exchange(
    shard: &Shard,
    c: &mut Client,
    head: &RequestHead,
    outcome: &Outcome,
    started: Option<Instant>,
) {
    let level = c.log_level.take();
    if !shard.access_wanted(level) {
        // Counted only: the line's fields (a `User-Agent` look-up, the
        // method and target as text) are not gathered for nothing.
        shard.stats.request(outcome.status);
        return;
    }
    shard.access(
        &AccessEntry {
            core: shard.index,
            client: c.peer,
            method: head.method(),
            path: head.target(),
            status: outcome.status,
            bytes: outcome.bytes,
            target: &outcome.target,
            duration: started.map(|s| s.elapsed()).unwrap_or_default(),
            user_agent: head.fields.get("user-agent"),
        },
        level,
    );
}

/// Waits (idle timeout) for a request to start, then reads its head within
/// the header timeout.
async fn read_head(shard: &Shard, c: &mut Client) -> HeadRead {
    let t = &shard.cfg.timeouts;
    let limits = &shard.cfg.limits.head;
    let max = limits.max_head_bytes.max(BUF_SIZE) + 1;
    if !c.conn.has_input() {
        if shard.draining() {
            return HeadRead::Closed;
        }
        c.guard.set_idle(true);
        c.conn.set_read_timeout(Some(t.client_idle));
        let r = c.conn.fill(max).await;
        c.guard.set_idle(false);
        match r {
            Ok(n) if n > 0 => {}
            _ => return HeadRead::Closed,
        }
    }
    let header = Some(t.client_header);
    match c
        .conn
        .read_head(max, header, |b| parse_request(b, limits))
        .await
    {
        Ok(head) => HeadRead::Head(head),
        Err(ReadError::Parse(e)) => HeadRead::Refuse(e.status(), e.reason()),
        Err(ReadError::TimedOut) => HeadRead::Refuse(408, "request header timeout"),
        Err(ReadError::TooLarge) => HeadRead::Refuse(431, HeadError::HeadTooLarge.reason()),
        Err(ReadError::Closed | ReadError::Failed(_)) => HeadRead::Closed,
    }
}

/// Writes a short text response; returns the bytes written.
async fn answer(shard: &Shard, c: &mut Client, status: u16, reason: &str, close: bool) -> u64 {
    let mut out = shard.bufs.take_out();
    http1::write_simple_response(&mut out, status, reason, close);
    crate::conn::dropin::whole(c, &mut out, 0, false);
    let n = out.len() as u64;
    let _ = c.conn.write_all(&out).await;
    shard.bufs.give_out(out);
    n
}

/// Handles one request: route (`route::decide`), then answer locally or
/// proxy.
async fn handle(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
) -> Result<Outcome, Box<grip_conn::HeldStream>> {
    let routes = shard.routes();
    let ws = crate::route::is_websocket(head);
    let route = routes.select_tls(head.host(), head.path(), ws, c.conn.is_tls());
    c.log_level = route.and_then(|r| r.log_level);
    c.dropin = crate::conn::dropin::start(shard.cfg.auto_cross_origin, route, head, ws);
    let Some(route) = route else {
        return Ok(no_route(shard, c, head).await);
    };
    // SockJS URLs skip cross-origin and JSON-P rewriting (as in Pushpin).
    if let Some(path) = crate::conn::sockjs::sockjs_path(route, head) {
        c.dropin = None;
        return Ok(Box::pin(crate::conn::sockjs::handle(shard, c, head, route, path)).await);
    }
    if let Some(why) = crate::conn::dropin::refusal(c) {
        return Ok(Box::pin(refuse(shard, c, head, 400, why, "-")).await);
    }
    // A JSON-P request goes upstream rewritten.
    let jsonp = crate::conn::dropin::upstream(c);
    let head = jsonp.as_ref().and_then(|w| w.head()).unwrap_or(head);
    let max_body = shard.cfg.limits.max_request_body;
    let route = match decide_routed(Some(route), head, ws, max_body) {
        Dispatch::Refuse { status, reason } => {
            return Ok(Box::pin(refuse(shard, c, head, status, reason, "-")).await)
        }
        Dispatch::BadHandshake { status, reason } => {
            let mut out = Vec::new();
            // A 426 names the version corepin speaks (RFC 6455 §4.4).
            let extra: &[u8] = if status == 426 {
                b"Sec-WebSocket-Version: 13\r\n"
            } else {
                b""
            };
            http1::write_simple_response_with(&mut out, status, reason, true, extra);
            let _ = Box::pin(c.conn.write_all(&out)).await;
            return Ok(Outcome::closed(status, 0, "-".into()));
        }
        // Each path's future is boxed: a connection's task then carries
        // only the state of the path it takes, not the largest of them.
        Dispatch::WebSocket(route, mode) => {
            return match Box::pin(crate::conn::ws::handle(shard, c, head, route, mode)).await {
                HoldEnd::Done(o) => Ok(o),
                HoldEnd::Retry(_) => Ok(Outcome::closed(502, 0, "-".into())),
                HoldEnd::Held(stream) => Err(stream),
            };
        }
        Dispatch::Test(route) | Dispatch::Proxy(route) => route,
    };
    // A hold may ask for the request to be made again (a `hint`, or a
    // subscriber found out of sync); a few times at most, each retry
    // saying in `Grip-Last` where the long-poll's channels were.
    let mut last: Vec<(String, String)> = Vec::new();
    // The Connection-Id a GRIP backend is told, by which a publisher can
    // target the connection it holds (`crate::targets`); the same for the
    // retries of one request.
    let cid = (route.grip() && matches!(route.targets.first(), Some(Target::Backend(_))))
        .then(|| shard.next_conn_id());
    for _ in 0..3 {
        let r = match route.targets.first() {
            Some(Target::Test) => Box::pin(crate::testtarget::handle(shard, c, head, route)).await,
            // In a slot reused request after request: the proxy path's
            // future is ~2 KiB, a `malloc`/`free` per request as a `Box`.
            Some(Target::Backend(_)) => {
                Recycled::new(proxy(shard, c, head, route, &last, cid)).await
            }
            None => return Ok(no_route(shard, c, head).await),
        };
        match r {
            HoldEnd::Done(o) => return Ok(o),
            HoldEnd::Held(stream) => return Err(stream),
            HoldEnd::Retry(l) => {
                debug!("core {}: re-requesting {}", shard.index, head.target());
                last = l;
            }
        }
    }
    Ok(Box::pin(refuse(
        shard,
        c,
        head,
        502,
        "backend kept asking for a retry",
        "-",
    ))
    .await)
}

/// Answers an error without reading the request body. The connection is
/// kept only when there is no body left unread.
/// The 404 for a request no route takes, boxed as `refuse` is everywhere
/// in `handle` (a connection's task carries only the path it takes).
async fn no_route(shard: &Shard, c: &mut Client, head: &RequestHead) -> Outcome {
    Box::pin(refuse(
        shard,
        c,
        head,
        404,
        "no route for this request",
        "-",
    ))
    .await
}

async fn refuse(
    shard: &Shard,
    c: &mut Client,
    head: &RequestHead,
    status: u16,
    reason: &str,
    target: &str,
) -> Outcome {
    let keep = head.keep_alive && head.body == BodyKind::Empty && !shard.draining();
    let bytes = answer(shard, c, status, reason, !keep).await;
    Outcome {
        status,
        bytes,
        target: target.to_string(),
        keep_alive: keep,
    }
}

/// Why an exchange with a backend failed.
enum Failure {
    /// A reused connection was found closed before any response byte:
    /// the request may be replayed on a fresh connection.
    Stale,
    /// Answer the client with this status (and close).
    Upstream(u16, &'static str),
    /// The client's request body was bad or the client stalled.
    Client(u16, &'static str),
    /// The client went away.
    ClientGone,
    /// The shutdown grace ended before the response started: 503.
    Shutdown,
}

fn relay_to_client_failure(e: RelayError) -> Failure {
    match e {
        RelayError::Read(FillError::Io(e)) if is_timeout(&e) => {
            Failure::Client(408, "request body timeout")
        }
        RelayError::Read(_) | RelayError::Truncated => Failure::ClientGone,
        RelayError::BadChunk(e) => Failure::Client(400, e.reason()),
        RelayError::TooLarge => Failure::Client(413, "request body too large"),
        RelayError::Write(_) => Failure::Upstream(502, "upstream closed the connection"),
    }
}

/// The response framing toward the client, and whether the client
/// connection can be kept.
fn client_framing(head: &RequestHead, resp: &ResponseHead, draining: bool) -> (OutFraming, bool) {
    let chunked_ok = head.version == Version::Http11;
    let (framing, delimited) = match resp.body {
        BodyKind::Empty | BodyKind::Length(_) => (OutFraming::Raw, true),
        BodyKind::Chunked | BodyKind::UntilClose if chunked_ok => (OutFraming::Chunked, true),
        BodyKind::Chunked | BodyKind::UntilClose => (OutFraming::Raw, false),
    };
    (framing, head.keep_alive && delimited && !draining)
}

/// Sends the request (head and body) on `up` and reads the response head.
/// Also returns whether the whole request body was sent: a backend may
/// answer early (413, 501...) and stop reading, or reset the connection,
/// while the body is still going out; its answer, already received, is
/// then read and relayed (as nginx does) rather than replaced by a 502,
/// and neither connection is kept.
async fn exchange(
    shard: &Shard,
    c: &mut Client,
    up: &mut Upstream,
    head: &RequestHead,
    req_head: &[u8],
) -> Result<(ResponseHead, bool), Failure> {
    let mut body_sent = true;
    let t = &shard.cfg.timeouts;
    up.conn.set_read_timeout(Some(t.upstream_read));
    up.conn.set_write_timeout(Some(t.upstream_read));
    // A JSON-P request's body comes from its query, not the client.
    let query_body = crate::conn::dropin::body(c);
    if head.body == BodyKind::Empty || query_body.is_some() {
        let whole;
        let req_head = match query_body {
            Some(b) => {
                whole = [req_head, b].concat();
                &whole[..]
            }
            None => req_head,
        };
        if up.conn.write_all(req_head).await.is_err() {
            return Err(if up.reused {
                Failure::Stale
            } else {
                Failure::Upstream(502, "upstream closed the connection")
            });
        }
    } else {
        if head.expect_continue && c.conn.write_all(heads::CONTINUE).await.is_err() {
            return Err(Failure::ClientGone);
        }
        c.conn.set_read_timeout(Some(t.client_body));
        let mut prefix = req_head.to_vec();
        let mut out = shard.bufs.take_out();
        let framing = if head.body == BodyKind::Chunked {
            OutFraming::Chunked
        } else {
            OutFraming::Raw
        };
        let r = Relay {
            prefix: &mut prefix,
            out: &mut out,
            limit: shard.cfg.limits.max_request_body,
        }
        .run(&mut c.conn, &mut up.conn, head.body, framing)
        .await;
        shard.bufs.give_out(out);
        match r {
            Ok(_) => {}
            Err(RelayError::Write(e)) => {
                debug!(
                    "core {}: backend stopped taking the request body ({e}); reading its answer",
                    shard.index
                );
                body_sent = false;
            }
            Err(e) => return Err(relay_to_client_failure(e)),
        }
    }
    // A reused connection that brings nothing at all was closed while idle.
    let before = up.conn.bytes_read();
    let stale = |up: &Upstream| up.reused && up.conn.bytes_read() == before;
    match up
        .read_response(&shard.cfg.limits.head, head.is_head())
        .await
    {
        Ok(resp) => Ok((resp, body_sent)),
        Err(ReadError::Parse(_)) => Err(Failure::Upstream(502, "invalid response from upstream")),
        Err(ReadError::Closed | ReadError::Failed(_)) if stale(up) => Err(Failure::Stale),
        Err(ReadError::Closed) => Err(Failure::Upstream(502, "upstream closed the connection")),
        Err(ReadError::TimedOut) => Err(Failure::Upstream(504, "upstream timed out")),
        Err(ReadError::TooLarge) => Err(Failure::Upstream(502, "upstream response head too large")),
        Err(ReadError::Failed(_)) => Err(Failure::Upstream(502, "upstream connection failed")),
    }
}

/// Connects to the route's backend (failover targets in order; a stale
/// pooled connection is replaced once for a replayable request), sends the
/// request and reads the response head. Also returns whether the whole
/// request body was sent (see `exchange`). A failure comes with the
/// target it concerns.
#[allow(clippy::too_many_arguments)]
async fn send_request<'r>(
    shard: &Shard,
    c: &mut Client,
    head: &RequestHead,
    route: &'r Route,
    path: &str,
    grip: Option<Option<&str>>,
    grip_last: &[(String, String)],
    cid: Option<&str>,
) -> Result<(Upstream, &'r Backend, ResponseHead, bool), (Failure, String)> {
    let replayable = head.body == BodyKind::Empty && head.is_idempotent();
    let mut fresh = false;
    loop {
        // Replayable requests take pooled connections unchecked (a dead
        // one is retried on a fresh connection).
        let reuse = if fresh {
            Reuse::Fresh
        } else {
            Reuse::Pooled { check: !replayable }
        };
        let timeout = shard.cfg.timeouts.upstream_connect;
        let (mut up, backend) = match shard
            .pool
            .connect_first(&route.targets, 0, reuse, timeout)
            .await
        {
            Ok((_, up, b)) => (up, b),
            Err(e) => {
                let (status, reason) = e.answer();
                return Err((Failure::Upstream(status, reason), "-".to_string()));
            }
        };
        let mut req_head = shard.bufs.take_out();
        let mut ip_buf = [0u8; IP_TEXT_MAX];
        let peer_ip = ip_text(c.peer.ip(), &mut ip_buf);
        let fwd = shard
            .cfg
            .forwarding
            .policy(c.peer.ip())
            .over_tls(c.conn.is_tls());
        BackendRequest {
            grip_last,
            connection_id: cid,
            ..backend.request(head, Purpose::Proxy, path, peer_ip, fwd, grip)
        }
        .write(&mut req_head);
        // The ring turn's clock on the `uring` data path (`crate::clock`):
        // the histogram's buckets are milliseconds.
        let sent = crate::clock::now();
        let r = exchange(shard, c, &mut up, head, &req_head).await;
        if r.is_ok() {
            let took = crate::clock::now().saturating_duration_since(sent);
            shard.stats.upstream_latency(took.as_secs_f64() * 1000.0);
        }
        shard.bufs.give_out(req_head);
        match r {
            Ok((resp, body_sent)) => return Ok((up, backend, resp, body_sent)),
            Err(Failure::Stale) if replayable && !fresh => {
                debug!(
                    "core {}: pooled connection to {} was stale; retrying",
                    shard.index, backend.addr
                );
                fresh = true;
            }
            Err(Failure::Stale) => {
                let f = Failure::Upstream(502, "upstream closed the connection");
                return Err((f, backend.addr.clone()));
            }
            Err(f) => return Err((f, backend.addr.clone())),
        }
    }
}

/// The longest text form of an IP address (IPv6 with an embedded IPv4).
const IP_TEXT_MAX: usize = 45;

/// `ip` as text in `buf`, without an allocation per request (the client's
/// address goes into `X-Forwarded-For` and `X-Real-IP`). IPv4, what nearly
/// every client is, is written by hand; IPv6 through its `Display`.
fn ip_text(ip: std::net::IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> &str {
    let n = match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            n
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let mut w = &mut buf[..];
            // 45 bytes hold any IPv6 address's text; a failure would
            // leave the text cut, never a panic.
            let _ = write!(w, "{v6}");
            IP_TEXT_MAX - w.len()
        }
    };
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

/// Proxies one request to the route's backend and streams the answer back.
async fn proxy(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
    grip_last: &[(String, String)],
    cid: Option<ConnId>,
) -> HoldEnd {
    let cid_text = cid.map(|id| id.text());
    let cid = cid_text.as_ref().map(|t| t.as_str());
    let path = route.rewritten(head.target());
    // `no_grip`: nothing GRIP goes upstream and the answer is relayed as
    // is, its GRIP headers included (Pushpin's passthrough).
    let sig = route
        .grip()
        .then(|| grip_key(&shard.signer, route))
        .flatten();
    let token = sig.as_ref().map(|k| shard.signer.token(k));
    let grip = route.grip().then_some(token.as_deref());
    // Until the response starts, a shutdown's grace period may end: the
    // client then gets a 503 rather than a bare close. Polled by hand
    // beside the exchange (one layer, not an `Or` of two futures).
    let state = c.state.clone();
    let sent = {
        let mut send = std::pin::pin!(send_request(
            shard, c, head, route, &path, grip, grip_last, cid
        ));
        futures_lite::future::poll_fn(|cx| {
            if let Poll::Ready(r) = send.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            state
                .poll_grace_over(cx)
                .map(|()| Err((Failure::Shutdown, "-".to_string())))
        })
        .await
    };
    let (mut up, backend, resp, body_sent) = match sent {
        Ok(x) => x,
        Err((f, target)) => return HoldEnd::Done(fail(shard, c, head, f, &target).await),
    };
    if !body_sent && route.grip() && grip::is_grip(&resp.fields) {
        // Holding a client whose request body was not all read would
        // leave the rest of it to be taken for the next request.
        let f = Failure::Upstream(502, "upstream answered before reading the request body");
        return HoldEnd::Done(fail(shard, c, head, f, &backend.addr).await);
    }
    if route.grip() && grip::is_grip(&resp.fields) {
        let dest = crate::upstream::Dest::of(backend);
        let ctx = HoldCtx {
            head,
            backend: Some(&dest),
            prefix: route.prefix.as_deref().unwrap_or(""),
            target: &backend.addr,
            sig: sig.as_ref(),
            debug: route.debug,
            connection_id: cid,
        };
        return instructed(shard, c, &ctx, up, resp).await;
    }
    if crate::conn::dropin::wraps(c) {
        return crate::conn::dropin::proxied(shard, c, head, up, resp, backend.addr.clone()).await;
    }
    let (framing, keep) = client_framing(head, &resp, shard.draining());
    // The rest of an unsent body is still on its way from the client.
    let keep = keep && body_sent;
    let mut prefix = shard.bufs.take_out();
    let body = match framing {
        OutFraming::Chunked => ClientBody::Chunked,
        OutFraming::Raw => ClientBody::AsIs,
    };
    // A `no_grip` route relays GRIP fields as they are (a GRIP answer on
    // another route was held above, so it has none left to relay).
    write_proxied_response(&mut prefix, head, &resp, body, keep, Toward::ClientWithGrip);
    crate::conn::dropin::head(c, &mut prefix, 0);
    let mut out = shard.bufs.take_out();
    c.conn
        .set_write_timeout(Some(shard.cfg.timeouts.client_write));
    let r = Relay {
        prefix: &mut prefix,
        out: &mut out,
        limit: 0,
    }
    .run(&mut up.conn, &mut c.conn, resp.body, framing)
    .await;
    shard.bufs.give_out(prefix);
    shard.bufs.give_out(out);
    match r {
        Ok(bytes) => {
            if resp.keep_alive && body_sent {
                shard.pool.put_idle(up);
            }
            // The target is named only for the access log.
            let target = if shard.access_wanted(c.log_level) {
                backend.addr.clone()
            } else {
                String::new()
            };
            HoldEnd::Done(Outcome {
                status: resp.status,
                bytes,
                target,
                keep_alive: keep,
            })
        }
        Err(e) => {
            match &e {
                RelayError::Write(_) => debug!(
                    "core {}: client {} went away mid-response",
                    shard.index, c.peer
                ),
                other => warn!(
                    "core {}: response from {} cut short: {other:?}",
                    shard.index, backend.addr
                ),
            }
            HoldEnd::Done(Outcome::closed(resp.status, 0, backend.addr.clone()))
        }
    }
}

/// A backend response with GRIP instructions: read it whole, then pass it
/// on or hold the client as instructed.
async fn instructed(
    shard: &Rc<Shard>,
    c: &mut Client,
    ctx: &HoldCtx<'_>,
    mut up: Upstream,
    resp: ResponseHead,
) -> HoldEnd {
    let body = match grip_conn::read_body(&mut up, resp.body).await {
        Ok(b) => b,
        Err(e) => {
            warn!(
                "core {}: instructing response from {} unreadable: {e:?}",
                shard.index, ctx.target
            );
            let f = Failure::Upstream(502, "invalid response from upstream");
            return HoldEnd::Done(fail(shard, c, ctx.head, f, ctx.target).await);
        }
    };
    if resp.keep_alive {
        shard.pool.put_idle(up);
    }
    match grip_conn::decide(&resp, body) {
        Ok(Decision::Hold(instruct, base)) => {
            grip_conn::hold(shard, c, ctx, instruct, Box::new(base)).await
        }
        Ok(Decision::Pass(base)) => {
            let keep = ctx.head.keep_alive && !shard.draining();
            let mut out = Vec::with_capacity(256 + base.body.len());
            base.write_full(&mut out, None, keep, ctx.head.version == Version::Http10);
            crate::conn::dropin::whole(c, &mut out, 0, false);
            let ok = c.conn.write_all(&out).await.is_ok();
            HoldEnd::Done(Outcome {
                status: base.status(),
                bytes: base.body.len() as u64,
                target: ctx.target.to_string(),
                keep_alive: ok && keep,
            })
        }
        Err(e) => {
            warn!(
                "core {}: bad GRIP instruction from {}: {}",
                shard.index, ctx.target, e.0
            );
            let f = Failure::Upstream(502, "invalid GRIP instruction from upstream");
            HoldEnd::Done(fail(shard, c, ctx.head, f, ctx.target).await)
        }
    }
}

/// Answers a failed exchange and decides whether the connection survives.
async fn fail(
    shard: &Shard,
    c: &mut Client,
    head: &RequestHead,
    f: Failure,
    target: &str,
) -> Outcome {
    match f {
        Failure::ClientGone | Failure::Stale => Outcome::closed(499, 0, target.to_string()),
        Failure::Shutdown => {
            let bytes = answer(shard, c, 503, "server shutting down", true).await;
            Outcome::closed(503, bytes, target.to_string())
        }
        Failure::Client(status, reason) => {
            let bytes = answer(shard, c, status, reason, true).await;
            Outcome::closed(status, bytes, target.to_string())
        }
        Failure::Upstream(status, reason) => {
            shard
                .stats
                .upstream_errors
                .set(shard.stats.upstream_errors.get() + 1);
            refuse(shard, c, head, status, reason, target).await
        }
    }
}

/// The key requests on `route` are signed with, if any.
pub fn grip_key(signer: &crate::jwt::Signer, route: &Route) -> Option<crate::jwt::SigKey> {
    signer.key_for(route.sig_key.as_deref(), route.sig_iss.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.3.45",
            "::",
            "::1",
            "fe80::1:2:3:4",
            "2001:db8:85a3::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "1:2:3:4:5:6:77.77.88.88",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("a valid address");
            let mut buf = [0u8; IP_TEXT_MAX];
            assert_eq!(ip_text(ip, &mut buf), ip.to_string());
        }
    }
}
