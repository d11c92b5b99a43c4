//! WebSocket clients: the opening handshake, then one of three lives,
//! each in its own module —
//!
//! - [`subscriber`]: the test target's WebSocket, subscribed to a channel
//!   (and any session whose only peer is its subscription), plus the GRIP
//!   control messages that change a subscription;
//! - [`passthrough`]: a WebSocket backend, frames relayed both ways, with
//!   GRIP control messages when the backend enables the `grip` extension;
//! - [`over_http`]: WebSocket-over-HTTP, each session a series of HTTP
//!   POSTs of events to the backend.
//!
//! This module holds what the three share: the wait for the next thing to
//! happen, reading the client's frames through the sans-IO session, the
//! 101 answer and the ways a session ends.

mod over_http;
mod passthrough;
mod subscriber;

use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use crate::buf::BUF_SIZE;
use crate::codec::heads;
use crate::codec::http1::{self, RequestHead, ResponseHead};
use crate::codec::ws::{self, Reader, Received as WsFrameEvent, WsError};
use crate::codec::wssession::{ServerSession, Step};
use crate::conn::grip::{dropped_warning, send_now, HoldEnd};
use crate::conn::http::{Client, Outcome};
use crate::connection::Connection;
use crate::route::{Route, WsMode};
use crate::shard::Shard;
use crate::subs::{Held, HoldKind, Msg, Registry, Sub, SubSpec};
use crate::upstream::Upstream;

pub use crate::codec::wshandshake::check_handshake;

/// Largest message accepted from a client or a backend.
pub const MAX_MESSAGE: usize = 1 << 20;

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
pub(crate) enum Io {
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
    up: Option<&mut Upstream>,
    sub: Option<&Sub>,
    deadline: Option<Instant>,
) -> Io {
    let up = up.map(|u| &mut *u.conn);
    wait_for(c, up, sub, deadline, MAX_MESSAGE + BUF_SIZE).await
}

/// `wait` with the backend's bare connection, each side buffering at most
/// `max` bytes (SockJS sessions use it too).
pub(crate) async fn wait_for(
    c: &mut Client,
    mut up: Option<&mut Connection>,
    sub: Option<&Sub>,
    deadline: Option<Instant>,
    max: usize,
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
        match c.conn.poll_fill(cx, max) {
            Poll::Ready(Ok(n)) if n > 0 => return Poll::Ready(Io::Client),
            Poll::Ready(_) => return Poll::Ready(Io::ClientGone),
            Poll::Pending => {}
        }
        if let Some(up) = up.as_deref_mut() {
            match up.poll_fill(cx, max) {
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

/// Entry point for an upgrade request that passed `check_handshake`,
/// served in the `mode` routing chose.
pub async fn handle(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
    mode: WsMode,
) -> HoldEnd {
    c.conn.set_read_timeout(None);
    match mode {
        WsMode::Test => Box::pin(subscriber::test_target(shard, c, head, route)).await,
        WsMode::OverHttp => Box::pin(over_http::over_http(shard, c, head, route)).await,
        WsMode::Passthrough => Box::pin(passthrough::passthrough(shard, c, head, route)).await,
    }
}

/// A WebSocket's subscription. On a `debug` route a filter error closes
/// the connection 1011 with its reason (as streams and long-polls report
/// it there); elsewhere the message is dropped for this client alone.
fn ws_sub<'a>(subs: &'a Registry, route: &Route, channels: Vec<String>) -> Held<'a> {
    let sub = subs.subscribe(SubSpec {
        kind: HoldKind::Ws,
        chunked: false,
        channels,
        meta: Vec::new(),
        keep_alive: None,
        timeout: None,
        link_timeout: None,
    });
    sub.set_debug(route.debug);
    sub
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
