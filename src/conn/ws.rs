//! WebSocket clients: the opening handshake, then one of three lives —
//! the test target (subscribed to a channel), passthrough to a WebSocket
//! backend (frames relayed both ways, with GRIP control messages when the
//! backend enables the `grip` extension), or WebSocket-over-HTTP (each
//! session a series of HTTP POSTs of events to the backend).

use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::buf::BUF_SIZE;
use crate::codec::heads::{self, Purpose};
use crate::codec::http1::{self, RequestHead, ResponseHead};
use crate::codec::ws::{
    self, Event as WsFrameEvent, Kind as WsKind, Opcode, Reader, Role, WsError,
};
use crate::codec::wsevents::{self, WsEvent};
use crate::codec::wssession::{echo_code, Pings, ServerSession, Step};
use crate::conn::grip::{deliver, dropped_warning, read_body, send_now, HoldEnd, Written};
use crate::conn::http::{grip_key, Client, Outcome};
use crate::route::{Backend, Route, Target};
use crate::shard::Shard;
use crate::subs::{Held, Kind, Msg, Sub, SubSpec};
use crate::upstream::{Reuse, Upstream};

/// Largest message accepted from a client or a backend.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Most attempts for one WebSocket-over-HTTP request.
const POST_ATTEMPTS: usize = 3;

/// Checks a client's upgrade request; `Err((status, reason))` refuses it.
pub fn check_handshake(head: &RequestHead) -> Result<(), (u16, &'static str)> {
    if head.method() != "GET" {
        return Err((400, "WebSocket handshake must be a GET"));
    }
    match head.fields.get("sec-websocket-version").map(http1::trim) {
        Some(b"13") => {}
        _ => return Err((426, "unsupported WebSocket version (13 is)")),
    }
    match head.fields.get("sec-websocket-key") {
        Some(k) if ws::valid_key(http1::trim(k)) => Ok(()),
        _ => Err((400, "missing or invalid Sec-WebSocket-Key")),
    }
}

/// The 101 answer to the client.
fn switching(head: &RequestHead, protocol: Option<&[u8]>, extensions: Option<&str>) -> Vec<u8> {
    let key = head
        .fields
        .get("sec-websocket-key")
        .map(http1::trim)
        .unwrap_or(b"");
    let mut out = Vec::with_capacity(256);
    heads::write_switching_protocols(&mut out, &ws::accept_key(key), protocol, extensions);
    out
}

fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::new();
    ws::write_close(&mut out, code, reason, mask);
    out
}

/// A fresh masking key for frames corepin sends to a backend: four bytes
/// from the OS's random source (RFC 6455 §5.3 wants masks a peer cannot
/// predict), drawn 64 keys at a time so a frame costs no system call.
fn mask_key() -> [u8; 4] {
    const KEYS: usize = 64;
    thread_local!(static POOL: std::cell::RefCell<([u8; 4 * KEYS], usize)> =
        const { std::cell::RefCell::new(([0; 4 * KEYS], KEYS)) });
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let (bytes, next) = &mut *p;
        if *next == KEYS {
            if getrandom::getrandom(bytes).is_err() {
                // No random source (never on Linux since 3.17): a key from
                // the clock still masks, if predictably.
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0x9e37_79b9, |d| d.subsec_nanos());
                return t.to_ne_bytes();
            }
            *next = 0;
        }
        let i = *next * 4;
        *next += 1;
        [bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]
    })
}

fn outcome(status: u16, bytes: u64, target: &str) -> HoldEnd {
    HoldEnd::Done(Outcome {
        status,
        bytes,
        target: target.to_string(),
        keep_alive: false,
    })
}

/// One thing that happened to a session.
enum Io {
    /// New bytes from the client are buffered.
    Client,
    ClientGone,
    /// New bytes from the backend are buffered.
    Backend,
    BackendGone,
    Sub(Msg),
    Dropped,
    Timer,
}

/// Waits for the client, the backend (passthrough), the subscription, or
/// a deadline, whichever comes first.
async fn wait(
    c: &mut Client,
    mut up: Option<&mut Upstream>,
    sub: Option<&Sub>,
    deadline: Option<Instant>,
) -> Io {
    let mut timer =
        deadline.map(|d| glommio::timer::Timer::new(d.saturating_duration_since(Instant::now())));
    futures_lite::future::poll_fn(|cx| {
        if let Some(sub) = sub {
            if sub.dropped() {
                return Poll::Ready(Io::Dropped);
            }
            if let Some(m) = sub.poll_msg(cx.waker()) {
                return Poll::Ready(Io::Sub(m));
            }
        }
        match c.conn.poll_fill(cx, MAX_MESSAGE + BUF_SIZE) {
            Poll::Ready(Ok(n)) if n > 0 => return Poll::Ready(Io::Client),
            Poll::Ready(_) => return Poll::Ready(Io::ClientGone),
            Poll::Pending => {}
        }
        if let Some(up) = up.as_deref_mut() {
            match up.conn.poll_fill(cx, MAX_MESSAGE + BUF_SIZE) {
                Poll::Ready(Ok(n)) if n > 0 => return Poll::Ready(Io::Backend),
                Poll::Ready(_) => return Poll::Ready(Io::BackendGone),
                Poll::Pending => {}
            }
        }
        if let Some(t) = timer.as_mut() {
            if std::pin::Pin::new(t).poll(cx).is_ready() {
                return Poll::Ready(Io::Timer);
            }
        }
        Poll::Pending
    })
    .await
}

use std::future::Future;

/// Frames the client sent, parsed from its buffer.
fn client_events(c: &mut Client, reader: &mut Reader) -> Result<Vec<WsFrameEvent>, WsError> {
    let mut out = Vec::new();
    loop {
        let (n, ev) = reader.read(c.conn.input())?;
        c.conn.consume(n);
        match ev {
            Some(e) => out.push(e),
            None if n == 0 || !c.conn.has_input() => return Ok(out),
            None => {}
        }
    }
}

/// Reads the client's buffered frames through `session`, sends its
/// answers (pongs, the close echo, an error's close) in one write, and
/// returns the steps for the mode to act on.
async fn from_client(
    c: &mut Client,
    reader: &mut Reader,
    session: &mut ServerSession,
) -> Vec<Step> {
    let mut out = Vec::new();
    let steps = session.take(client_events(c, reader), &mut out);
    if !out.is_empty() {
        let _ = c.conn.write_all(&out).await;
    }
    steps
}

/// The GRIP extension's settings, from a `Sec-WebSocket-Extensions` value.
#[derive(Debug, Clone)]
struct GripExt {
    prefix: String,
}

/// Splits a backend's extensions into the `grip` one and the rest.
fn grip_extension(value: Option<&[u8]>) -> (Option<GripExt>, String) {
    let Some(v) = value else {
        return (None, String::new());
    };
    let text = String::from_utf8_lossy(v);
    let mut grip = None;
    let mut rest = Vec::new();
    for ext in text.split(',') {
        let mut parts = ext.split(';').map(str::trim);
        if parts.next() == Some("grip") {
            let mut prefix = "m:".to_string();
            for p in parts {
                if let Some(v) = p.strip_prefix("message-prefix=") {
                    prefix = v.trim_matches('"').to_string();
                }
            }
            grip = Some(GripExt { prefix });
        } else if !ext.trim().is_empty() {
            rest.push(ext.trim().to_string());
        }
    }
    (grip, rest.join(", "))
}

/// The filter state of a WebSocket's channels after a change: every
/// channel (named without the route's prefix, as the backend named it),
/// with the filters it was subscribed with.
fn ws_chans(
    sub: &Sub,
    prefix: &str,
    channels: &[String],
    set: Option<(&str, crate::codec::filter::Filters)>,
) -> Vec<crate::subs::ChanState> {
    let old = sub.chans.borrow();
    channels
        .iter()
        .map(|ch| {
            let filters = match &set {
                Some((c, f)) if c == ch => f.clone(),
                _ => old
                    .iter()
                    .find(|o| &o.channel == ch)
                    .map(|o| o.filters.clone())
                    .unwrap_or_default(),
            };
            crate::subs::ChanState {
                channel: ch.clone(),
                name: ch.strip_prefix(prefix).unwrap_or(ch).to_string(),
                filters,
                prev_id: None,
            }
        })
        .collect()
}

/// Acts on a GRIP control message. One corepin cannot act on (invalid,
/// unknown, a field it does not know) is logged with the reason and
/// otherwise dropped, as Pushpin drops it (there, silently).
fn control(shard: &Shard, sub: &Rc<Sub>, prefix: &str, json: &[u8], detached: &mut bool) {
    use crate::codec::wscontrol::{self, Control};
    let c = match wscontrol::parse(json) {
        Ok(c) => c,
        Err(e) => {
            warn!(
                "core {}: a GRIP control message from the backend was not acted on: {e}",
                shard.index
            );
            return;
        }
    };
    match c {
        Control::Subscribe { channel, filters } => {
            let ch = format!("{prefix}{channel}");
            let mut chans = sub.channels.borrow().clone();
            if !chans.contains(&ch) {
                if chans.len() >= shard.cfg.grip.max_channels {
                    warn!(
                        "core {}: subscribe to {channel:?} refused: the connection has {} channels (grip.max_channels)",
                        shard.index,
                        chans.len()
                    );
                    return;
                }
                chans.push(ch.clone());
                shard.subs.set_channels(sub, chans.clone());
            }
            let states = ws_chans(sub, prefix, &chans, Some((&ch, filters)));
            shard.subs.set_chans(sub, states);
        }
        Control::Unsubscribe { channel } => {
            let ch = format!("{prefix}{channel}");
            let chans: Vec<String> = sub
                .channels
                .borrow()
                .iter()
                .filter(|c| **c != ch)
                .cloned()
                .collect();
            shard.subs.set_channels(sub, chans.clone());
            let states = ws_chans(sub, prefix, &chans, None);
            shard.subs.set_chans(sub, states);
        }
        Control::Detach => *detached = true,
        Control::Session { .. } => warn!(
            "core {}: control message session: not supported (it only keys Pushpin's optional state service, which corepin does not have)",
            shard.index
        ),
        Control::SetMeta { name, value } => {
            let mut meta = sub.meta.borrow_mut();
            match value {
                Some(v) => {
                    if let Err(e) = crate::codec::grip::set_meta(&mut meta, &name, &v, "set-meta") {
                        warn!("core {}: {e}", shard.index);
                    }
                }
                None => meta.retain(|(k, _)| *k != name),
            }
        }
        Control::KeepAlive(ka) => {
            *sub.keep_alive.borrow_mut() =
                ka.map(|(m, timeout, mode)| crate::codec::grip::KeepAlive {
                    data: m.frame(),
                    timeout,
                    mode,
                });
            shard.subs.retime(sub);
        }
        Control::SendDelayed { message, timeout } => {
            shard
                .subs
                .send_delayed(sub, message.frame(), Duration::from_secs(u64::from(timeout)));
        }
        Control::FlushDelayed => shard.subs.flush_delayed(sub),
    }
}

/// A text message from the backend under the GRIP extension: control
/// (`c:`), for the client (prefix stripped), or dropped.
enum FromBackend<'a> {
    Control(&'a [u8]),
    Client(&'a [u8]),
    Drop,
}

fn classify<'a>(ext: &Option<GripExt>, kind: WsKind, data: &'a [u8]) -> FromBackend<'a> {
    let Some(g) = ext else {
        return FromBackend::Client(data);
    };
    if kind == WsKind::Text {
        if let Some(c) = data.strip_prefix(b"c:") {
            return FromBackend::Control(c);
        }
    }
    match data.strip_prefix(g.prefix.as_bytes()) {
        Some(rest) => FromBackend::Client(rest),
        None => FromBackend::Drop,
    }
}

/// Entry point for an upgrade request that passed `check_handshake`.
pub async fn handle(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
) -> HoldEnd {
    c.conn.set_read_timeout(None);
    match route.targets.first() {
        Some(Target::Test) => Box::pin(test_target(shard, c, head, route)).await,
        Some(Target::Backend(b)) if b.over_http => Box::pin(over_http(shard, c, head, route)).await,
        Some(Target::Backend(_)) => Box::pin(passthrough(shard, c, head, route)).await,
        None => outcome(404, 0, "-"),
    }
}

fn ws_sub(shard: &Shard, channels: Vec<String>) -> Held<'_> {
    shard.subs.subscribe(SubSpec {
        kind: Kind::Ws,
        chunked: false,
        channels,
        meta: Vec::new(),
        keep_alive: None,
        timeout: None,
        link_timeout: None,
    })
}

/// `/ws?channel=X` on the test target: a WebSocket subscribed to X.
async fn test_target(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
) -> HoldEnd {
    if head.path() != "/ws" && head.path() != "/ws/" {
        let mut out = Vec::new();
        http1::write_simple_response(
            &mut out,
            404,
            "test target: WebSockets go to /ws?channel=NAME",
            true,
        );
        let _ = c.conn.write_all(&out).await;
        return outcome(404, 0, "test");
    }
    let channel = crate::testtarget::channel(head);
    let prefix = route.prefix.clone().unwrap_or_default();
    if c.conn
        .write_all(&switching(head, None, None))
        .await
        .is_err()
    {
        return outcome(101, 0, "test");
    }
    let sub = ws_sub(shard, vec![format!("{prefix}{channel}")]);
    let end = client_loop(shard, c, &sub, "test").await;
    end
}

/// A session whose only peer is the subscription (test target, or an
/// over-HTTP session after `detach`): publishes go out, pings are answered.
async fn client_loop(shard: &Shard, c: &mut Client, sub: &Rc<Sub>, target: &str) -> HoldEnd {
    let mut reader = Reader::new(Role::Server, MAX_MESSAGE);
    let mut session = ServerSession::new(Pings::Answer);
    let mut bytes = 0u64;
    let mut first = c.conn.has_input().then_some(Io::Client);
    loop {
        let io = match first.take() {
            Some(io) => io,
            None => wait(c, None, Some(sub), None).await,
        };
        match io {
            Io::Client => {
                from_client(c, &mut reader, &mut session).await;
                if session.closed() {
                    return outcome(101, bytes, target);
                }
            }
            Io::Sub(Msg::Data(b)) => {
                let (r, n) = deliver(shard, c, sub, b, <[u8]>::len).await;
                bytes += n;
                match r {
                    Written::Done => {}
                    Written::Gone => return outcome(101, bytes, target),
                    Written::Dropped => {
                        drop_client(shard, c);
                        return outcome(101, bytes, target);
                    }
                }
            }
            Io::Sub(Msg::WsClose(code, reason)) => {
                let _ = c.conn.write_all(&close_frame(code, &reason, None)).await;
                return outcome(101, bytes, target);
            }
            Io::Sub(_) | Io::Timer | Io::Backend => {}
            Io::Dropped => {
                drop_client(shard, c);
                return outcome(101, bytes, target);
            }
            Io::ClientGone | Io::BackendGone => return outcome(101, bytes, target),
        }
    }
}

/// Writes the upgrade request for a WebSocket backend.
fn upgrade_request(
    shard: &Shard,
    head: &RequestHead,
    path: &str,
    b: &Backend,
    peer: &std::net::SocketAddr,
    tls: bool,
    route: &Route,
) -> Vec<u8> {
    let token = route
        .grip()
        .then(|| grip_key(shard, route))
        .flatten()
        .map(|k| shard.signer.token(&k));
    let mut out = Vec::with_capacity(512);
    let peer_ip = peer.ip().to_string();
    let fwd = shard.cfg.forwarding.policy(peer.ip()).over_tls(tls);
    let grip = route.grip().then_some(token.as_deref());
    b.request(head, Purpose::WsUpgrade, path, &peer_ip, fwd, grip)
        .write(&mut out);
    out
}

async fn read_response_head(
    shard: &Shard,
    up: &mut Upstream,
    was_head: bool,
) -> Option<ResponseHead> {
    up.read_head(
        &shard.cfg.limits.head,
        was_head,
        shard.cfg.timeouts.upstream_read,
    )
    .await
}

/// Relays a non-101 (or non-200) backend answer to the client unchanged:
/// status, headers and body.
async fn relay_refusal(c: &mut Client, resp: &ResponseHead, body: &[u8]) -> u64 {
    let mut out = Vec::with_capacity(256 + body.len());
    heads::write_refusal(&mut out, resp, body.len());
    out.extend_from_slice(body);
    let _ = c.conn.write_all(&out).await;
    body.len() as u64
}

async fn bad_gateway(c: &mut Client, why: &str, target: &str) -> HoldEnd {
    let mut out = Vec::new();
    http1::write_simple_response(&mut out, 502, why, true);
    let _ = c.conn.write_all(&out).await;
    outcome(502, 0, target)
}

/// Ends a WebSocket whose subscriber was dropped for not keeping up: a
/// close 1008 if the socket takes it now (it is full, or nearly), then the
/// connection ends without waiting for the client.
fn drop_client(shard: &Shard, c: &mut Client) {
    dropped_warning(shard, c, "WebSocket");
    send_now(c, &close_frame(1008, "too slow", None));
}

/// Sends the backend a close (masked, as a client's frames are).
async fn close_backend(up: &mut Upstream, code: u16, reason: &str) {
    let _ = up
        .conn
        .write_all(&close_frame(code, reason, Some(mask_key())))
        .await;
}

/// Frame-by-frame proxying to a WebSocket backend.
async fn passthrough(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
) -> HoldEnd {
    let timeout = shard.cfg.timeouts.upstream_connect;
    let Ok((_, mut up, backend)) = shard
        .pool
        .connect_first(&route.targets, 0, Reuse::Fresh, timeout)
        .await
    else {
        return bad_gateway(c, "upstream unreachable", "-").await;
    };
    let target = backend.addr.clone();
    let req = upgrade_request(
        shard,
        head,
        &route.rewrite(head.target()),
        backend,
        &c.peer,
        c.conn.is_tls(),
        route,
    );
    if up.conn.write_all(&req).await.is_err() {
        return bad_gateway(c, "upstream closed the connection", &target).await;
    }
    let Some(resp) = read_response_head(shard, &mut up, false).await else {
        return bad_gateway(c, "invalid response from upstream", &target).await;
    };
    if resp.status != 101 {
        let body = read_body(&mut up, resp.body).await.unwrap_or_default();
        let n = relay_refusal(c, &resp, &body).await;
        return outcome(resp.status, n, &target);
    }
    let extensions = resp.fields.get("sec-websocket-extensions");
    let (grip, other_ext) = if route.grip() {
        grip_extension(extensions)
    } else {
        // `no_grip`: the backend's extensions reach the client unread.
        (
            None,
            String::from_utf8_lossy(extensions.unwrap_or(b"")).into_owned(),
        )
    };
    let protocol = resp
        .fields
        .get("sec-websocket-protocol")
        .map(<[u8]>::to_vec);
    if c.conn
        .write_all(&switching(head, protocol.as_deref(), Some(&other_ext)))
        .await
        .is_err()
    {
        return outcome(101, 0, &target);
    }
    up.conn.set_read_timeout(None);
    let prefix = route.prefix.clone().unwrap_or_default();
    let sub = ws_sub(shard, route.implicit_channels(&backend.addr));
    let end = relay(shard, c, &mut up, &sub, &grip, &prefix, &target).await;
    end
}

async fn relay(
    shard: &Rc<Shard>,
    c: &mut Client,
    up: &mut Upstream,
    sub: &Rc<Sub>,
    grip: &Option<GripExt>,
    prefix: &str,
    target: &str,
) -> HoldEnd {
    let mut reader = Reader::new(Role::Server, MAX_MESSAGE);
    let mut session = ServerSession::new(Pings::Forward);
    let mut from_backend = Reader::new(Role::Client, MAX_MESSAGE);
    let mut bytes = 0u64;
    let mut detached = false;
    // Frames may have arrived with the handshakes: handle those first.
    let mut first = Some(if up.conn.has_input() {
        Io::Backend
    } else if c.conn.has_input() {
        Io::Client
    } else {
        Io::Timer
    });
    loop {
        let io = match first.take() {
            Some(io) => io,
            None => wait(c, Some(&mut *up), Some(sub), None).await,
        };
        if c.conn.has_input() && first.is_none() && matches!(io, Io::Backend) {
            first = Some(Io::Client);
        }
        match io {
            Io::Client => {
                // The client's frames go to the backend, masked; its close
                // is passed on too, a protocol error ends both sides.
                let mut out = Vec::new();
                for step in from_client(c, &mut reader, &mut session).await {
                    let m = Some(mask_key());
                    match step {
                        Step::Message(k, d) => {
                            let op = if k == WsKind::Text {
                                Opcode::Text
                            } else {
                                Opcode::Binary
                            };
                            ws::write_frame(&mut out, true, op, &d, m);
                        }
                        Step::Ping(p) => ws::write_frame(&mut out, true, Opcode::Ping, &p, m),
                        Step::Pong(p) => ws::write_frame(&mut out, true, Opcode::Pong, &p, m),
                        Step::Closed(code, reason) => {
                            ws::write_close(&mut out, code.unwrap_or(1000), &reason, m)
                        }
                        Step::Failed(_) => {
                            ws::write_close(&mut out, 1001, "client protocol error", m)
                        }
                    }
                }
                let sent = detached || out.is_empty() || up.conn.write_all(&out).await.is_ok();
                if session.closed() {
                    return outcome(101, bytes, target);
                }
                if !sent {
                    let _ = c
                        .conn
                        .write_all(&close_frame(1011, "upstream went away", None))
                        .await;
                    return outcome(101, bytes, target);
                }
            }
            Io::Backend => {
                let mut out = Vec::new();
                loop {
                    let r = from_backend.read(up.conn.input());
                    let (n, ev) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(
                                "core {}: backend {target} broke the WebSocket protocol: {}",
                                shard.index, e.reason
                            );
                            let _ = c
                                .conn
                                .write_all(&close_frame(1011, "upstream protocol error", None))
                                .await;
                            return outcome(101, bytes, target);
                        }
                    };
                    up.conn.consume(n);
                    match ev {
                        Some(WsFrameEvent::Message(k, d)) => match classify(grip, k, &d) {
                            FromBackend::Control(json) => {
                                control(shard, sub, prefix, json, &mut detached)
                            }
                            FromBackend::Client(payload) => {
                                let op = if k == WsKind::Text {
                                    Opcode::Text
                                } else {
                                    Opcode::Binary
                                };
                                ws::write_frame(&mut out, true, op, payload, None);
                            }
                            FromBackend::Drop => {}
                        },
                        Some(WsFrameEvent::Ping(p)) => {
                            let _ = up
                                .conn
                                .write_all(&{
                                    let mut f = Vec::new();
                                    ws::write_frame(
                                        &mut f,
                                        true,
                                        Opcode::Pong,
                                        &p,
                                        Some(mask_key()),
                                    );
                                    f
                                })
                                .await;
                        }
                        Some(WsFrameEvent::Pong(_)) => {}
                        Some(WsFrameEvent::Close(code, reason)) => {
                            ws::write_close(&mut out, echo_code(code), &reason, None);
                            let _ = c.conn.write_all(&out).await;
                            return outcome(101, bytes, target);
                        }
                        None if n == 0 || !up.conn.has_input() => break,
                        None => {}
                    }
                }
                if !out.is_empty() {
                    bytes += out.len() as u64;
                    match deliver(shard, c, sub, Bytes::from(out), <[u8]>::len)
                        .await
                        .0
                    {
                        Written::Done => {}
                        Written::Gone => return outcome(101, bytes, target),
                        Written::Dropped => {
                            drop_client(shard, c);
                            return outcome(101, bytes, target);
                        }
                    }
                }
            }
            Io::Sub(Msg::Data(b)) => match deliver(shard, c, sub, b, <[u8]>::len).await.0 {
                Written::Done => {}
                Written::Gone => return outcome(101, bytes, target),
                Written::Dropped => {
                    drop_client(shard, c);
                    close_backend(up, 1001, "client went away").await;
                    return outcome(101, bytes, target);
                }
            },
            Io::Sub(Msg::WsClose(code, reason)) => {
                let _ = c.conn.write_all(&close_frame(code, &reason, None)).await;
                close_backend(up, 1000, "").await;
                return outcome(101, bytes, target);
            }
            Io::Sub(_) | Io::Timer => {}
            Io::Dropped => {
                drop_client(shard, c);
                close_backend(up, 1001, "client went away").await;
                return outcome(101, bytes, target);
            }
            Io::ClientGone => {
                close_backend(up, 1001, "client went away").await;
                return outcome(101, bytes, target);
            }
            Io::BackendGone => {
                let _ = c
                    .conn
                    .write_all(&close_frame(1011, "upstream went away", None))
                    .await;
                return outcome(101, bytes, target);
            }
        }
    }
}

/// A WebSocket-over-HTTP session's state.
struct Session<'a> {
    shard: &'a Rc<Shard>,
    head: &'a RequestHead,
    route: &'a Route,
    path: String,
    connection_id: String,
    meta: Vec<(String, Vec<u8>)>,
    grip: Option<GripExt>,
    keep_alive: Option<Duration>,
    last_request: Instant,
    target: String,
    /// The client connection is TLS.
    tls: bool,
}

/// An answer to one events request.
struct EventsReply {
    resp: ResponseHead,
    body: Bytes,
}

impl Session<'_> {
    /// POSTs `events` to the backend (retrying on connection failures);
    /// `None` when the backend cannot be reached.
    async fn post(&mut self, peer: SocketAddr, events: &[WsEvent]) -> Option<EventsReply> {
        let mut body = Vec::new();
        for e in events {
            wsevents::encode(&mut body, e);
        }
        // Events requests are signed whatever the route's `no_grip`.
        let token = grip_key(self.shard, self.route).map(|k| self.shard.signer.token(&k));
        let peer_ip = peer.ip().to_string();
        let mut delay = Duration::from_millis(100);
        for attempt in 0..POST_ATTEMPTS {
            if attempt > 0 {
                glommio::timer::sleep(delay).await;
                delay *= 4;
            }
            // A target that fails the exchange is passed over for the next.
            let reuse = if attempt > 0 {
                Reuse::Fresh
            } else {
                Reuse::Pooled { check: true }
            };
            let timeout = self.shard.cfg.timeouts.upstream_connect;
            let mut from = 0;
            while let Ok((i, mut up, b)) = self
                .shard
                .pool
                .connect_first(&self.route.targets, from, reuse, timeout)
                .await
            {
                from = i + 1;
                let mut req = Vec::with_capacity(512 + body.len());
                let events = Purpose::WsEvents {
                    connection_id: &self.connection_id,
                    content_length: body.len(),
                    meta: &self.meta,
                };
                let fwd = self
                    .shard
                    .cfg
                    .forwarding
                    .policy(peer.ip())
                    .over_tls(self.tls);
                b.request(
                    self.head,
                    events,
                    &self.path,
                    &peer_ip,
                    fwd,
                    Some(token.as_deref()),
                )
                .write(&mut req);
                req.extend_from_slice(&body);
                if up.conn.write_all(&req).await.is_err() {
                    continue;
                }
                let Some(resp) = read_response_head(self.shard, &mut up, false).await else {
                    continue;
                };
                let Ok(rbody) = read_body(&mut up, resp.body).await else {
                    continue;
                };
                if resp.keep_alive {
                    self.shard.pool.put_idle(up);
                }
                self.target = b.addr.clone();
                self.last_request = Instant::now();
                return Some(EventsReply { resp, body: rbody });
            }
        }
        None
    }

    /// Takes in the session headers of a 200 events answer.
    fn absorb(&mut self, resp: &ResponseHead) {
        for (n, v) in resp.fields.iter() {
            if n.len() > 9 && n[..9].eq_ignore_ascii_case(b"set-meta-") {
                let key = String::from_utf8_lossy(&n[9..]).into_owned();
                self.meta.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
                if !v.is_empty() {
                    self.meta.push((key, v.to_vec()));
                }
            }
        }
        if let Some(v) = resp.fields.get("keep-alive-interval") {
            self.keep_alive = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).max(self.shard.cfg.timeouts.ws_keep_alive_min));
        }
        if resp.fields.get("sec-websocket-extensions").is_some() {
            self.grip = grip_extension(resp.fields.get("sec-websocket-extensions")).0;
        }
    }
}

fn is_events(resp: &ResponseHead) -> bool {
    resp.status == 200
        && resp.fields.get("content-type").is_some_and(|ct| {
            let ct = ct.split(|&b| b == b';').next().unwrap_or(b"");
            http1::trim(ct).eq_ignore_ascii_case(b"application/websocket-events")
        })
}

/// What the backend's events ask the session to do next.
enum After {
    Continue,
    Close,
}

/// Sends the backend's events to the client; handles control messages.
async fn apply(
    s: &Session<'_>,
    c: &mut Client,
    sub: &Rc<Sub>,
    events: Vec<WsEvent>,
    detached: &mut bool,
) -> After {
    let mut out = Vec::new();
    let mut after = After::Continue;
    let prefix = s.route.prefix.clone().unwrap_or_default();
    for ev in events {
        match ev {
            WsEvent::Text(d) => match classify(&s.grip, WsKind::Text, &d) {
                FromBackend::Control(json) => control(s.shard, sub, &prefix, json, detached),
                FromBackend::Client(p) => ws::write_frame(&mut out, true, Opcode::Text, p, None),
                FromBackend::Drop => {}
            },
            WsEvent::Binary(d) => {
                if let FromBackend::Client(p) = classify(&s.grip, WsKind::Binary, &d) {
                    ws::write_frame(&mut out, true, Opcode::Binary, p, None);
                }
            }
            WsEvent::Ping(p) => ws::write_frame(&mut out, true, Opcode::Ping, &p, None),
            WsEvent::Pong(p) => ws::write_frame(&mut out, true, Opcode::Pong, &p, None),
            WsEvent::Close(code, reason) => {
                ws::write_close(
                    &mut out,
                    code.unwrap_or(1000),
                    &String::from_utf8_lossy(&reason),
                    None,
                );
                after = After::Close;
                break;
            }
            WsEvent::Disconnect => {
                after = After::Close;
                break;
            }
            WsEvent::Open => {}
        }
    }
    if !out.is_empty() && c.conn.write_all(&out).await.is_err() {
        return After::Close;
    }
    after
}

/// Something that happened while a session's request was in flight.
enum During {
    Reply(Option<EventsReply>),
    Sub(Msg),
    Dropped,
}

/// POSTs `events` while still delivering publishes to the client (when
/// `deliver`): a slow backend must not hold back messages, or a published
/// close, meant for the client. Returns the backend's reply, and the last
/// event to report when the session ended meanwhile (its client closed).
async fn post_delivering(
    s: &mut Session<'_>,
    c: &mut Client,
    sub: &Sub,
    events: &[WsEvent],
    listen: bool,
) -> (Option<EventsReply>, Option<WsEvent>) {
    let s_shard = s.shard;
    let mut post = std::pin::pin!(s.post(c.peer, events));
    let mut ended: Option<WsEvent> = None;
    loop {
        let listen = listen && ended.is_none();
        let ev = futures_lite::future::poll_fn(|cx| {
            if let Poll::Ready(r) = post.as_mut().poll(cx) {
                return Poll::Ready(During::Reply(r));
            }
            if listen {
                if sub.dropped() {
                    return Poll::Ready(During::Dropped);
                }
                if let Some(m) = sub.poll_msg(cx.waker()) {
                    return Poll::Ready(During::Sub(m));
                }
            }
            Poll::Pending
        })
        .await;
        match ev {
            During::Reply(r) => return (r, ended),
            During::Sub(Msg::Data(b)) => match deliver(s_shard, c, sub, b, <[u8]>::len).await.0 {
                Written::Done => {}
                Written::Gone => ended = Some(WsEvent::Disconnect),
                Written::Dropped => {
                    drop_client(s_shard, c);
                    ended = Some(WsEvent::Disconnect);
                }
            },
            During::Sub(Msg::WsClose(code, reason)) => {
                let _ = c.conn.write_all(&close_frame(code, &reason, None)).await;
                c.conn.close().await;
                ended = Some(WsEvent::Close(Some(code), reason.into_bytes()));
            }
            During::Sub(_) => {}
            During::Dropped => {
                drop_client(s_shard, c);
                ended = Some(WsEvent::Disconnect);
            }
        }
    }
}

/// WebSocket-over-HTTP (GRIP.md §3).
async fn over_http(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
) -> HoldEnd {
    let id = shard.next_connection_id();
    let mut s = Session {
        shard,
        head,
        route,
        path: route.rewrite(head.target()),
        connection_id: id,
        meta: Vec::new(),
        grip: None,
        keep_alive: None,
        last_request: Instant::now(),
        target: "-".into(),
        tls: c.conn.is_tls(),
    };
    let Some(open) = s.post(c.peer, &[WsEvent::Open]).await else {
        return bad_gateway(c, "upstream unreachable", "-").await;
    };
    if !is_events(&open.resp) {
        // The backend (or a gateway in front of it) refused: the client's
        // handshake fails with that answer, unchanged.
        let n = relay_refusal(c, &open.resp, &open.body).await;
        return outcome(open.resp.status, n, &s.target);
    }
    s.absorb(&open.resp);
    let events = match wsevents::decode(&open.body) {
        Ok(e) => e,
        Err(e) => {
            warn!(
                "core {}: bad events from {}: {}",
                shard.index, s.target, e.0
            );
            return bad_gateway(c, "invalid events from upstream", &s.target.clone()).await;
        }
    };
    let protocol = open
        .resp
        .fields
        .get("sec-websocket-protocol")
        .map(<[u8]>::to_vec);
    if c.conn
        .write_all(&switching(head, protocol.as_deref(), None))
        .await
        .is_err()
    {
        return outcome(101, 0, &s.target);
    }
    let sub = ws_sub(shard, route.implicit_channels(&s.target));
    let _live = LiveSession::mark(shard, s.connection_id.clone(), &sub);
    session_loop(&mut s, c, &sub, events).await
}

/// A WebSocket-over-HTTP session this core answers `conncheck` for, for as
/// long as this lives (whichever way the session ends).
struct LiveSession<'a> {
    shard: &'a Shard,
    id: String,
}

impl<'a> LiveSession<'a> {
    fn mark(shard: &'a Shard, id: String, sub: &Rc<Sub>) -> Self {
        shard
            .ws_sessions
            .borrow_mut()
            .insert(id.clone(), sub.clone());
        LiveSession { shard, id }
    }
}

impl Drop for LiveSession<'_> {
    fn drop(&mut self) {
        self.shard.ws_sessions.borrow_mut().remove(&self.id);
    }
}

async fn session_loop(
    s: &mut Session<'_>,
    c: &mut Client,
    sub: &Rc<Sub>,
    first: Vec<WsEvent>,
) -> HoldEnd {
    let mut detached = false;
    let target = s.target.clone();
    if let After::Close = apply(s, c, sub, first, &mut detached).await {
        return outcome(101, 0, &target);
    }
    let mut reader = Reader::new(Role::Server, MAX_MESSAGE);
    let mut session = ServerSession::new(Pings::Answer);
    let mut first_io = c.conn.has_input().then_some(Io::Client);
    loop {
        if detached {
            return client_loop(s.shard, c, sub, &target).await;
        }
        let deadline = s.keep_alive.map(|k| s.last_request + k);
        let mut pending: Vec<WsEvent> = Vec::new();
        let mut end_after = false;
        // A `refresh` command: an empty request now, as for a keep-alive.
        let mut refresh = false;
        let io = match first_io.take() {
            Some(io) => io,
            None => wait(c, None, Some(sub), deadline).await,
        };
        match io {
            Io::Client => {
                // Every client event goes to the backend; the session
                // answers pings and echoes a close.
                for step in from_client(c, &mut reader, &mut session).await {
                    pending.push(match step {
                        Step::Message(WsKind::Text, d) => WsEvent::Text(d),
                        Step::Message(WsKind::Binary, d) => WsEvent::Binary(d),
                        Step::Ping(p) => WsEvent::Ping(p),
                        Step::Pong(p) => WsEvent::Pong(p),
                        Step::Closed(code, reason) => WsEvent::Close(code, reason.into_bytes()),
                        Step::Failed(_) => WsEvent::Disconnect,
                    });
                }
                end_after = session.closed();
            }
            Io::ClientGone => {
                pending.push(WsEvent::Disconnect);
                end_after = true;
            }
            Io::Sub(Msg::Data(b)) => match deliver(s.shard, c, sub, b, <[u8]>::len).await.0 {
                Written::Done => {}
                Written::Gone => {
                    pending.push(WsEvent::Disconnect);
                    end_after = true;
                }
                Written::Dropped => {
                    drop_client(s.shard, c);
                    pending.push(WsEvent::Disconnect);
                    end_after = true;
                }
            },
            Io::Sub(Msg::WsClose(code, reason)) => {
                let _ = c.conn.write_all(&close_frame(code, &reason, None)).await;
                pending.push(WsEvent::Close(Some(code), reason.into_bytes()));
                end_after = true;
            }
            Io::Timer => {} // keep-alive: an empty request
            // A published refresh: a request now, empty if nothing waits.
            Io::Sub(Msg::Refresh) => refresh = true,
            Io::Dropped => {
                drop_client(s.shard, c);
                pending.push(WsEvent::Disconnect);
                end_after = true;
            }
            Io::Sub(Msg::Refetch) => refresh = true,
            Io::Sub(_) | Io::Backend | Io::BackendGone => continue,
        }
        if pending.is_empty() && !refresh && !matches!(deadline, Some(d) if Instant::now() >= d) {
            continue;
        }
        // `one_event` targets get one event per request (Pushpin 1.28's
        // intent; 1.41 batches empty messages in front of one with
        // content); otherwise every pending event goes in one request.
        let one_event = s
            .route
            .targets
            .iter()
            .any(|t| matches!(t, Target::Backend(b) if b.one_event));
        let batches: Vec<Vec<WsEvent>> = if one_event && pending.len() > 1 {
            pending.into_iter().map(|e| vec![e]).collect()
        } else {
            vec![pending]
        };
        let count = batches.len();
        for (i, batch) in batches.into_iter().enumerate() {
            let end_after = end_after && i + 1 == count;
            if end_after {
                // The client's part is over (its close frame is sent): end
                // the connection now rather than after the backend has
                // answered the last event. A client waits for the server
                // to close the TCP connection after a close frame (RFC 6455
                // §7.1.1), and a slow backend must not keep it waiting.
                c.conn.close().await;
            }
            let (reply, ended) = post_delivering(s, c, sub, &batch, !end_after).await;
            if let Some(last) = ended {
                // The session ended while the request was in flight (a
                // published close, or the client failed): tell the backend.
                let _ = s.post(c.peer, &[last]).await;
                return outcome(101, 0, &target);
            }
            match reply {
                Some(reply) if is_events(&reply.resp) => {
                    s.absorb(&reply.resp);
                    let evs = wsevents::decode(&reply.body).unwrap_or_default();
                    if end_after {
                        return outcome(101, 0, &target);
                    }
                    if let After::Close = apply(s, c, sub, evs, &mut detached).await {
                        return outcome(101, 0, &target);
                    }
                }
                _ => {
                    if !end_after {
                        let _ = c
                            .conn
                            .write_all(&close_frame(1011, "upstream went away", None))
                            .await;
                    }
                    return outcome(101, 0, &target);
                }
            }
        }
    }
}
