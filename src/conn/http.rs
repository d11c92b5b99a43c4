//! The HTTP/1.1 client connection: read a request head, route it, proxy it
//! to a backend (or answer it locally), stream the response back, and loop
//! for keep-alive and pipelined requests, answering them in order.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::buf::{InBuf, BUF_SIZE};
use crate::codec::grip;
use crate::codec::http1::{
    self, is_hop_by_hop, parse_request, parse_response, BodyKind, HeadError, RequestHead,
    ResponseHead, Version,
};
use crate::config::Forwarding;
use crate::conn::body::{OutFraming, Relay, RelayError};
use crate::conn::grip::{self as grip_conn, Decision, HoldCtx, HoldEnd};
use crate::log::AccessEntry;
use crate::route::{Backend, Route, Target, ORIG_MARK};
use crate::shard::{ConnGuard, ConnState, Shard};
use crate::upstream::{ConnectError, Upstream};

/// The `Via` token corepin adds.
const VIA: &str = "1.1 corepin";

/// A client connection: its socket, its unconsumed input, its address,
/// and what its shard knows of it.
pub struct Client {
    pub stream: TcpStream,
    pub inbuf: InBuf,
    pub peer: SocketAddr,
    pub state: Rc<ConnState>,
}

/// How one exchange ended, for the access log and the keep-alive decision.
pub struct Outcome {
    pub status: u16,
    pub bytes: u64,
    pub target: String,
    pub keep_alive: bool,
}

impl Outcome {
    fn closed(status: u16, bytes: u64, target: String) -> Self {
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

/// Serves one client connection until it closes.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(shard.cfg.timeouts.client_write));
    let guard = shard.register(stream.as_raw_fd());
    let mut c = Client {
        stream,
        inbuf: InBuf::new(shard.bufs.clone()),
        peer,
        state: guard.state(),
    };
    loop {
        let head = match read_head(&shard, &mut c, &guard).await {
            HeadRead::Head(h) => h,
            HeadRead::Closed => break,
            HeadRead::Refuse(status, reason) => {
                let started = shard.clock();
                let bytes = answer(&shard, &mut c, status, reason, true).await;
                shard.access(&AccessEntry {
                    core: shard.index,
                    client: c.peer,
                    method: "-",
                    path: "-",
                    status,
                    bytes,
                    target: "-",
                    duration: started.map(|s| s.elapsed()).unwrap_or_default(),
                    user_agent: None,
                });
                break;
            }
        };
        let started = shard.clock();
        let outcome = handle(&shard, &mut c, &head).await;
        shard.access(&AccessEntry {
            core: shard.index,
            client: c.peer,
            method: head.method(),
            path: head.target(),
            status: outcome.status,
            bytes: outcome.bytes,
            target: &outcome.target,
            duration: started.map(|s| s.elapsed()).unwrap_or_default(),
            user_agent: head.fields.get("user-agent"),
        });
        if !outcome.keep_alive || shard.draining() {
            break;
        }
    }
    linger_close(&mut c.stream, &mut c.inbuf).await;
}

/// Closes our side, then reads and discards what the peer still sends
/// (bounded in time and bytes), so an answer sent before the peer finished
/// its request is not destroyed by a reset.
pub async fn linger_close(stream: &mut TcpStream, inbuf: &mut InBuf) {
    let _ = stream.close().await;
    inbuf.release();
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(500)));
    let mut discarded = 0usize;
    while discarded < 4 << 20 {
        match inbuf.fill(stream, BUF_SIZE).await {
            Ok(n) if n > 0 => {
                discarded += n;
                inbuf.release();
            }
            _ => break,
        }
    }
}

/// Waits (idle timeout) for a request to start, then reads its head within
/// the header timeout.
async fn read_head(shard: &Shard, c: &mut Client, guard: &ConnGuard) -> HeadRead {
    let t = &shard.cfg.timeouts;
    let limits = &shard.cfg.limits.head;
    let max = limits.max_head_bytes.max(BUF_SIZE) + 1;
    if c.inbuf.is_empty() {
        if shard.draining() {
            return HeadRead::Closed;
        }
        guard.set_idle(true);
        let _ = c.stream.set_read_timeout(Some(t.client_idle));
        let r = c.inbuf.fill(&mut c.stream, max).await;
        guard.set_idle(false);
        match r {
            Ok(n) if n > 0 => {}
            _ => return HeadRead::Closed,
        }
    }
    // The header deadline is taken only when the head did not arrive whole.
    let mut deadline = None;
    loop {
        match parse_request(c.inbuf.data(), limits) {
            Ok(Some((n, head))) => {
                c.inbuf.consume(n);
                return HeadRead::Head(head);
            }
            Ok(None) => {}
            Err(e) => return HeadRead::Refuse(e.status(), e.reason()),
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + t.client_header);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return HeadRead::Refuse(408, "request header timeout");
        }
        let _ = c.stream.set_read_timeout(Some(left));
        match c.inbuf.fill(&mut c.stream, max).await {
            Ok(0) => return HeadRead::Closed,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return HeadRead::Refuse(408, "request header timeout"),
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                return HeadRead::Refuse(431, HeadError::HeadTooLarge.reason())
            }
            Err(_) => return HeadRead::Closed,
        }
    }
}

/// Writes a short text response; returns the bytes written.
async fn answer(shard: &Shard, c: &mut Client, status: u16, reason: &str, close: bool) -> u64 {
    let mut out = shard.bufs.take_out();
    http1::write_simple_response(&mut out, status, reason, close);
    let n = out.len() as u64;
    let _ = c.stream.write_all(&out).await;
    shard.bufs.give_out(out);
    n
}

/// Handles one request: route, then answer locally or proxy.
async fn handle(shard: &Rc<Shard>, c: &mut Client, head: &RequestHead) -> Outcome {
    let routes = shard.routes();
    let ws = head.is_upgrade()
        && head
            .fields
            .get("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"));
    let Some(route) = routes.select(head.host(), head.path(), ws) else {
        return refuse(shard, c, head, 404, "no route for this request", "-").await;
    };
    // Only corepin speaks WebSocket-over-HTTP to an over_http target: a
    // client's own events would reach the backend signed, as a session's
    // (Pushpin answers the same 403).
    if !ws && carries_ws_events(head) && route.targets.iter().any(is_over_http) {
        let why = "client not allowed to send WebSocket events directly";
        return refuse(shard, c, head, 403, why, "-").await;
    }
    let limit = shard.cfg.limits.max_request_body;
    if let BodyKind::Length(n) = head.body {
        if limit > 0 && n > limit {
            return refuse(shard, c, head, 413, "request body too large", "-").await;
        }
    }
    if ws {
        if let Err((status, reason)) = crate::conn::ws::check_handshake(head) {
            let mut out = Vec::new();
            // A 426 names the version corepin speaks (RFC 6455 §4.4).
            let extra: &[u8] = if status == 426 {
                b"Sec-WebSocket-Version: 13\r\n"
            } else {
                b""
            };
            http1::write_simple_response_with(&mut out, status, reason, true, extra);
            write_to(&mut c.stream, &out).await;
            return Outcome::closed(status, 0, "-".into());
        }
        // Each path's future is boxed: a connection's task then carries
        // only the state of the path it takes, not the largest of them.
        return match Box::pin(crate::conn::ws::handle(shard, c, head, route)).await {
            HoldEnd::Done(o) => o,
            HoldEnd::Retry => Outcome::closed(502, 0, "-".into()),
        };
    }
    // A hold may ask for the request to be made again (a `hint`, or a
    // subscriber found out of sync); a few times at most.
    for _ in 0..3 {
        let r = match route.targets.first() {
            Some(Target::Test) => Box::pin(crate::testtarget::handle(shard, c, head, route)).await,
            Some(Target::Backend(_)) => Box::pin(proxy(shard, c, head, route)).await,
            None => return refuse(shard, c, head, 404, "no route for this request", "-").await,
        };
        match r {
            HoldEnd::Done(o) => return o,
            HoldEnd::Retry => debug!("core {}: re-requesting {}", shard.index, head.target()),
        }
    }
    refuse(shard, c, head, 502, "backend kept asking for a retry", "-").await
}

/// True when a `Content-Type` field (under any CGI spelling) names
/// `application/websocket-events`, whatever its parameters or case.
fn carries_ws_events(head: &RequestHead) -> bool {
    head.fields.iter().any(|(name, value)| {
        http1::cgi_name_is(name, "content-type")
            && http1::trim(value.split(|&b| b == b';').next().unwrap_or(b""))
                .eq_ignore_ascii_case(b"application/websocket-events")
    })
}

fn is_over_http(t: &Target) -> bool {
    matches!(t, Target::Backend(b) if b.over_http)
}

/// Answers an error without reading the request body. The connection is
/// kept only when there is no body left unread.
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
        RelayError::Read(e) if is_timeout(&e) => Failure::Client(408, "request body timeout"),
        RelayError::Read(_) | RelayError::Truncated => Failure::ClientGone,
        RelayError::BadChunk(e) => Failure::Client(400, e.reason()),
        RelayError::TooLarge => Failure::Client(413, "request body too large"),
        RelayError::Write(_) => Failure::Upstream(502, "upstream closed the connection"),
    }
}

/// Forwarding fields a client may not set: corepin writes its own, or
/// passes them only from a trusted proxy (`[forwarding]`). Compared under
/// the CGI mapping (`X_Real_IP` is `X-Real-IP`).
const FROM_TRUSTED_PROXIES_ONLY: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-ssl",
    "x-client-ip",
    "true-client-ip",
];

/// Fields of a WebSocket-over-HTTP request that only corepin sets (the
/// session id, and `Meta-*`, which only the backend's `Set-Meta-*`
/// produce): never taken from a client toward an `over_http` target.
fn is_session_field(name: &[u8]) -> bool {
    http1::cgi_name_is(name, "connection-id") || http1::cgi_name_starts(name, "meta-")
}

/// Writes the request head sent to a backend: the client's fields minus
/// hop-by-hop, `Grip-*` (under any spelling a CGI server maps to one), the
/// forwarding fields the `[forwarding]` policy does not take from this
/// peer, session fields toward an `over_http` target, and `skip` names;
/// with the route's edits (`header=` replaces or removes a field, `as_host=`
/// or the target's `host=` sets Host, `orig_headers` adds marked copies of
/// the client's fields, otherwise drops marked ones); plus corepin's own
/// forwarding fields and `extra` (whole lines).
/// `method` replaces the client's (and then the client's body framing is
/// not written: `extra` carries the caller's).
#[allow(clippy::too_many_arguments)]
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: Option<&str>,
    head: &RequestHead,
    path: &str,
    b: &Backend,
    peer: &SocketAddr,
    fwd: &Forwarding,
    extra: &[u8],
    skip: &dyn Fn(&[u8]) -> bool,
) {
    let _ = write!(
        out,
        "{} {} HTTP/1.1\r\n",
        method.unwrap_or(head.method()),
        path
    );
    let trusted = fwd.trusts(peer.ip());
    let mut xff: Vec<&[u8]> = Vec::new();
    let mut via: Vec<u8> = Vec::new();
    let mut https = false;
    let mut real_ip = None;
    let mut forwarded_host = None;
    let mut host = None;
    let edits = &b.edits;
    let edited = |name: &[u8]| {
        edits
            .headers
            .iter()
            .any(|h| http1::cgi_name_is(name, &h.cgi_name))
    };
    let marked = |name: &[u8]| http1::cgi_name_starts(name, ORIG_MARK);
    let mut orig: Vec<u8> = Vec::new();
    for (name, value) in head.fields.iter() {
        if edits.orig_headers && !edited(name) {
            // Pushpin marks the client's fields before it drops any.
            if !marked(name) {
                orig.extend_from_slice(ORIG_MARK.as_bytes());
            }
            http1::write_field(&mut orig, name, value);
        }
        if is_hop_by_hop(&head.fields, name)
            || http1::cgi_name_is(name, "expect")
            || http1::cgi_name_starts(name, "grip-")
            || (b.over_http && is_session_field(name))
            || edited(name)
            || marked(name)
            || skip(name)
        {
            continue;
        }
        // Only the exact spelling of a forwarding field is believed (and
        // only as the policy says); look-alikes are dropped.
        let exact = |canonical: &str| name.eq_ignore_ascii_case(canonical.as_bytes());
        if http1::cgi_name_is(name, "x-forwarded-for") {
            if exact("x-forwarded-for") {
                xff.extend(
                    value
                        .split(|&c| c == b',')
                        .map(http1::trim)
                        .filter(|e| !e.is_empty()),
                );
            }
            continue;
        }
        if http1::cgi_name_is(name, "x-forwarded-proto")
            || http1::cgi_name_is(name, "x-forwarded-protocol")
        {
            let v = http1::trim(value);
            https |= fwd.accept_x_forwarded_protocol
                && (exact("x-forwarded-proto") || exact("x-forwarded-protocol"))
                && (v.eq_ignore_ascii_case(b"https") || v.eq_ignore_ascii_case(b"wss"));
            continue;
        }
        if let Some(f) = FROM_TRUSTED_PROXIES_ONLY
            .iter()
            .find(|f| http1::cgi_name_is(name, f))
        {
            if trusted && exact(f) {
                match *f {
                    "x-real-ip" => real_ip = real_ip.or(Some(value)),
                    "x-forwarded-host" => forwarded_host = forwarded_host.or(Some(value)),
                    _ => http1::write_field(out, name, value),
                }
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"via") {
            via.extend_from_slice(value);
            via.extend_from_slice(b", ");
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            host = Some(value);
            if b.send_host().is_some() {
                continue;
            }
        }
        http1::write_field(out, name, value);
    }
    if let Some(h) = b.send_host() {
        http1::write_field(out, b"Host", h.as_bytes());
    } else if host.is_none() {
        http1::write_field(out, b"Host", b.addr.as_bytes());
    }
    for h in edits.headers.iter().filter(|h| !h.value.is_empty()) {
        http1::write_field(out, h.name.as_bytes(), h.value.as_bytes());
        if edits.orig_headers {
            orig.extend_from_slice(ORIG_MARK.as_bytes());
            http1::write_field(&mut orig, h.name.as_bytes(), h.value.as_bytes());
        }
    }
    out.extend_from_slice(&orig);
    let peer_ip = peer.ip().to_string();
    let rule = if trusted { &fwd.xff_trusted } else { &fwd.xff };
    let entries = rule.apply(xff, peer_ip.as_bytes());
    if !entries.is_empty() {
        out.extend_from_slice(b"X-Forwarded-For: ");
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(e);
        }
        out.extend_from_slice(b"\r\n");
    }
    let proto: &[u8] = if https { b"https" } else { b"http" };
    http1::write_field(out, b"X-Forwarded-Proto", proto);
    if let Some(h) = forwarded_host.or(host) {
        http1::write_field(out, b"X-Forwarded-Host", h);
    }
    http1::write_field(out, b"X-Real-IP", real_ip.unwrap_or(peer_ip.as_bytes()));
    via.extend_from_slice(VIA.as_bytes());
    http1::write_field(out, b"Via", &via);
    out.extend_from_slice(extra);
    if method.is_none() {
        http1::write_framing(out, head.body);
    }
    out.extend_from_slice(b"\r\n");
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

/// Writes the response head sent to the client.
fn write_response_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    resp: &ResponseHead,
    framing: OutFraming,
    keep: bool,
) {
    let reason = if resp.reason().is_empty() {
        http1::reason_phrase(resp.status)
    } else {
        resp.reason()
    };
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, reason);
    let mut via: Vec<u8> = Vec::new();
    for (name, value) in resp.fields.iter() {
        if is_hop_by_hop(&resp.fields, name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"via") {
            via.extend_from_slice(value);
            via.extend_from_slice(b", ");
            continue;
        }
        http1::write_field(out, name, value);
    }
    via.extend_from_slice(VIA.as_bytes());
    http1::write_field(out, b"Via", &via);
    match resp.body {
        BodyKind::Empty => {
            // HEAD and 304 keep the length the backend declared; other
            // empty bodies say so explicitly unless they never have one.
            let bodiless = (100..200).contains(&resp.status) || resp.status == 204;
            match resp.fields.get("content-length") {
                Some(v) if head.is_head() || resp.status == 304 => {
                    http1::write_field(out, b"Content-Length", v)
                }
                _ if !bodiless && resp.status != 304 && !head.is_head() => {
                    out.extend_from_slice(b"Content-Length: 0\r\n")
                }
                _ => {}
            }
        }
        BodyKind::Length(_) => http1::write_framing(out, resp.body),
        BodyKind::Chunked | BodyKind::UntilClose => {
            if framing == OutFraming::Chunked {
                http1::write_framing(out, BodyKind::Chunked);
            }
        }
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if head.version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
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
    let _ = up.stream.set_read_timeout(Some(t.upstream_read));
    let _ = up.stream.set_write_timeout(Some(t.upstream_read));
    if head.body == BodyKind::Empty {
        if up.stream.write_all(req_head).await.is_err() {
            return Err(if up.reused {
                Failure::Stale
            } else {
                Failure::Upstream(502, "upstream closed the connection")
            });
        }
    } else {
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        if head.expect_continue && c.stream.write_all(interim).await.is_err() {
            return Err(Failure::ClientGone);
        }
        let _ = c.stream.set_read_timeout(Some(t.client_body));
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
        .run(
            &mut c.stream,
            &mut c.inbuf,
            &mut up.stream,
            head.body,
            framing,
        )
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
    let limits = &shard.cfg.limits.head;
    let max = limits.max_head_bytes.max(BUF_SIZE) + 1;
    let mut received = false;
    loop {
        match parse_response(up.inbuf.data(), limits, head.is_head()) {
            Ok(Some((n, resp))) => {
                up.inbuf.consume(n);
                if (100..200).contains(&resp.status) && resp.status != 101 {
                    continue;
                }
                return Ok((resp, body_sent));
            }
            Ok(None) => {}
            Err(_) => return Err(Failure::Upstream(502, "invalid response from upstream")),
        }
        match up.inbuf.fill(&mut up.stream, max).await {
            Ok(0) if !received && up.reused => return Err(Failure::Stale),
            Ok(0) => return Err(Failure::Upstream(502, "upstream closed the connection")),
            Ok(_) => received = true,
            Err(e) if is_timeout(&e) => return Err(Failure::Upstream(504, "upstream timed out")),
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                return Err(Failure::Upstream(502, "upstream response head too large"))
            }
            Err(_) if !received && up.reused => return Err(Failure::Stale),
            Err(_) => return Err(Failure::Upstream(502, "upstream connection failed")),
        }
    }
}

/// Gets a connection to the first reachable target of `route`, trying the
/// failover targets in order. `fresh` skips the idle pool; `replayable`
/// requests take pooled connections unchecked (a dead one is retried).
async fn connect(
    shard: &Shard,
    route: &Route,
    fresh: bool,
    replayable: bool,
) -> Result<(Upstream, Backend), Failure> {
    let mut last = Failure::Upstream(502, "no backend target");
    for target in &route.targets {
        let Target::Backend(b) = target else { continue };
        if !fresh {
            if let Some(up) = shard.pool.take_idle(&b.addr, !replayable) {
                return Ok((up, b.clone()));
            }
        }
        match shard
            .pool
            .connect(&b.addr, shard.cfg.timeouts.upstream_connect)
            .await
        {
            Ok(up) => return Ok((up, b.clone())),
            Err(ConnectError::Timeout) => {
                warn!("core {}: connect to {} timed out", shard.index, b.addr);
                last = Failure::Upstream(504, "upstream connect timed out");
            }
            Err(ConnectError::Resolve(name)) => {
                warn!("core {}: cannot resolve {name}", shard.index);
                last = Failure::Upstream(502, "upstream name does not resolve");
            }
            Err(ConnectError::Failed(e)) => {
                debug!("core {}: connect to {} failed: {e}", shard.index, b.addr);
                last = Failure::Upstream(502, "upstream unreachable");
            }
        }
    }
    Err(last)
}

/// Connects to the route's backend (failover targets in order; a stale
/// pooled connection is replaced once for a replayable request), sends the
/// request and reads the response head. Also returns whether the whole
/// request body was sent (see `exchange`). A failure comes with the
/// target it concerns.
async fn send_request(
    shard: &Shard,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
    path: &str,
    grip_headers: &[u8],
) -> Result<(Upstream, Backend, ResponseHead, bool), (Failure, String)> {
    let replayable = head.body == BodyKind::Empty && head.is_idempotent();
    let mut fresh = false;
    loop {
        let (mut up, backend) = connect(shard, route, fresh, replayable)
            .await
            .map_err(|f| (f, "-".to_string()))?;
        let mut req_head = shard.bufs.take_out();
        write_request_head(
            &mut req_head,
            None,
            head,
            path,
            &backend,
            &c.peer,
            &shard.cfg.forwarding,
            grip_headers,
            &|_| false,
        );
        let sent = Instant::now();
        let r = exchange(shard, c, &mut up, head, &req_head).await;
        if r.is_ok() {
            shard
                .stats
                .upstream_latency(sent.elapsed().as_secs_f64() * 1000.0);
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
                return Err((f, backend.addr));
            }
            Err(f) => return Err((f, backend.addr)),
        }
    }
}

/// Proxies one request to the route's backend and streams the answer back.
async fn proxy(shard: &Rc<Shard>, c: &mut Client, head: &RequestHead, route: &Route) -> HoldEnd {
    let path = route.rewrite(head.target());
    // `no_grip`: nothing GRIP goes upstream and the answer is relayed as
    // is, its GRIP headers included (Pushpin's passthrough).
    let sig = route.grip().then(|| shard.sig_for(route)).flatten();
    let mut grip_headers = Vec::new();
    if route.grip() {
        shard.write_grip_headers(&mut grip_headers, sig.as_ref());
    }
    // Until the response starts, a shutdown's grace period may end: the
    // client then gets a 503 rather than a bare close.
    let state = c.state.clone();
    let sent = futures_lite::future::or(
        send_request(shard, c, head, route, &path, &grip_headers),
        async {
            state.grace_over().await;
            Err((Failure::Shutdown, "-".to_string()))
        },
    )
    .await;
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
        let ctx = HoldCtx {
            head,
            backend: Some(backend.addr.clone()),
            prefix: route.prefix.clone().unwrap_or_default(),
            target: backend.addr.clone(),
            sig,
        };
        return instructed(shard, c, &ctx, up, resp).await;
    }
    let (framing, keep) = client_framing(head, &resp, shard.draining());
    // The rest of an unsent body is still on its way from the client.
    let keep = keep && body_sent;
    let mut prefix = shard.bufs.take_out();
    write_response_head(&mut prefix, head, &resp, framing, keep);
    let mut out = shard.bufs.take_out();
    let _ = c
        .stream
        .set_write_timeout(Some(shard.cfg.timeouts.client_write));
    let r = Relay {
        prefix: &mut prefix,
        out: &mut out,
        limit: 0,
    }
    .run(
        &mut up.stream,
        &mut up.inbuf,
        &mut c.stream,
        resp.body,
        framing,
    )
    .await;
    shard.bufs.give_out(prefix);
    shard.bufs.give_out(out);
    match r {
        Ok(bytes) => {
            if resp.keep_alive && body_sent {
                shard.pool.put_idle(up);
            }
            HoldEnd::Done(Outcome {
                status: resp.status,
                bytes,
                target: backend.addr,
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
            HoldEnd::Done(Outcome::closed(resp.status, 0, backend.addr))
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
            return HoldEnd::Done(fail(shard, c, ctx.head, f, &ctx.target).await);
        }
    };
    if resp.keep_alive {
        shard.pool.put_idle(up);
    }
    match grip_conn::decide(&resp, body) {
        Ok(Decision::Hold(instruct, base)) => grip_conn::hold(shard, c, ctx, *instruct, base).await,
        Ok(Decision::Pass(base)) => {
            let keep = ctx.head.keep_alive && !shard.draining();
            let mut out = Vec::with_capacity(256 + base.body.len());
            base.write_full(&mut out, None, keep, ctx.head.version == Version::Http10);
            let ok = write_to(&mut c.stream, &out).await;
            HoldEnd::Done(Outcome {
                status: base.status(),
                bytes: base.body.len() as u64,
                target: ctx.target.clone(),
                keep_alive: ok && keep,
            })
        }
        Err(e) => {
            warn!(
                "core {}: bad GRIP instruction from {}: {}",
                shard.index, ctx.target, e.0
            );
            let f = Failure::Upstream(502, "invalid GRIP instruction from upstream");
            HoldEnd::Done(fail(shard, c, ctx.head, f, &ctx.target).await)
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

/// Writes `bytes` to any async writer, mapping failure to "client gone".
pub async fn write_to<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> bool {
    w.write_all(bytes).await.is_ok()
}
