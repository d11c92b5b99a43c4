//! GRIP holds on a client connection: a backend response carrying
//! instructions is read whole, then either passed on (no hold), or the
//! connection is held as a stream (content appended per publish) or a
//! long-poll (answered by the first published response, or by the
//! backend's own response at the timeout).

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::Future;

use crate::buf::BUF_SIZE;
use crate::codec::filter;
use crate::codec::grip::{self, HoldMode, Instruct};
use crate::codec::heads;
use crate::codec::http1::{self, BodyKind, RequestHead, ResponseHead, Version};
use crate::codec::response::{self, Head, Status};
use crate::conn::body::{OutFraming, Relay, RelayError};
use crate::conn::http::{Client, Outcome};
use crate::connection::PartsProgress;
use crate::shard::Shard;
use crate::subs::{HoldKind, HoldResume, Msg, Sub, SubSpec};
use crate::upstream::{link_dest, Dest, Upstream};

/// Most queued bytes sent in one gathered write.
const BATCH_MAX: usize = 64 * 1024;

/// Largest instructing response body read into memory.
pub const MAX_INSTRUCT_BODY: u64 = 1 << 20;

/// A response as it will reach the client: its head validated by
/// `codec::response` (so `Grip-*`, hop-by-hop and framing fields are
/// already left out), and its body.
#[derive(Debug, Clone)]
pub struct Base {
    pub head: Head,
    pub body: Bytes,
}

impl Base {
    /// The backend's own response (header-form instructions), validated.
    pub fn from_head(resp: &ResponseHead, body: Bytes) -> Result<Base, grip::GripError> {
        let head =
            Head::from_backend(resp, &body).map_err(|e| grip::GripError(e.at("response")))?;
        Ok(Base { head, body })
    }

    pub fn status(&self) -> u16 {
        self.head.status().code()
    }

    fn write_status_and_headers(&self, out: &mut Vec<u8>, status: Option<&Status>) {
        self.head.write(out, status);
    }

    /// The whole response with a Content-Length (none for 204 and 304,
    /// whose bodies validation keeps empty).
    pub fn write_full(&self, out: &mut Vec<u8>, status: Option<&Status>, keep: bool, http10: bool) {
        let status = status.unwrap_or(self.head.status());
        self.head.write(out, Some(status));
        response::write_length(out, status, self.body.len());
        heads::write_connection(out, keep, http10);
        out.extend_from_slice(b"\r\n");
        if status.has_body() {
            out.extend_from_slice(&self.body);
        }
    }
}

/// What the instructing response asks for.
pub enum Decision {
    /// Send this response as it is.
    Pass(Base),
    /// Hold the connection.
    Hold(Box<Instruct>, Base),
}

/// Reads a whole (bounded) body from `up`.
pub async fn read_body(up: &mut Upstream, kind: BodyKind) -> Result<Bytes, RelayError> {
    let mut sink: Vec<u8> = Vec::new();
    let (mut prefix, mut out) = (Vec::new(), Vec::new());
    Relay {
        prefix: &mut prefix,
        out: &mut out,
        limit: MAX_INSTRUCT_BODY,
    }
    .run(&mut up.conn, &mut sink, kind, OutFraming::Raw)
    .await?;
    Ok(Bytes::from(sink))
}

/// Turns an instructing response (head and whole body) into a decision.
pub fn decide(resp: &ResponseHead, body: Bytes) -> Result<Decision, grip::GripError> {
    let (instruct, base) = if grip::is_instruct_json(&resp.fields) {
        let (instruct, r) = grip::from_json_response(&resp.fields, &body)?;
        let base = Base {
            head: r.head,
            body: r.body,
        };
        (instruct, base)
    } else {
        let instruct = grip::from_headers(&resp.fields)?;
        let body = match (&instruct, grip::no_hold_filters(&resp.fields)?) {
            (None, Some((filters, meta))) => filter::response_body(&filters, &meta, &body)
                .map_err(|e| grip::GripError(format!("filter error: {e}")))?
                .map_or(body, Bytes::from),
            _ => body,
        };
        (instruct, Base::from_head(resp, body)?)
    };
    Ok(match instruct {
        Some(i) => {
            grip::check_hold(&i, &base.head, &base.body)?;
            Decision::Hold(Box::new(i), base)
        }
        None => Decision::Pass(base),
    })
}

/// How a hold ended.
pub enum HoldEnd {
    /// Done; keep the client connection if `true`.
    Done(Outcome),
    /// Re-request the original request from the backend (a `hint`, or the
    /// subscriber was found out of sync through `prev-id`), with these
    /// `Grip-Last` entries (channel as the backend named it, last id): each
    /// channel that had a prev-id, advanced by the items it saw since.
    Retry(Vec<(String, String)>),
    /// A stream hold set up and its head made: the connection is handed
    /// to `conn::held`, which runs the stream as one small state machine
    /// once the futures that set it up (`serve`, the route's, `hold`)
    /// have ended (PERFORMANCE.md, "Per-connection byte budget").
    Held(Box<HeldStream>),
}

/// What a held stream keeps once its hold is set up: everything the
/// stream needs while it is held, owned, none of it borrowed from the
/// request's futures (which end at the hand-off).
///
/// Owns the subscription and the Connection-Id's registration: dropping
/// it (the stream's end, or its task dropped) unregisters both, and
/// closes the connection on the stats socket.
pub struct HeldStream {
    pub(crate) shard: Rc<Shard>,
    /// Subscribed (`subs::Held::into_sub`): unsubscribed on drop.
    pub(crate) sub: Rc<Sub>,
    /// The connection's id on the stats socket (`dropin::StatsConn`), set
    /// by the hand-off: its close goes out on drop.
    pub(crate) stats: Option<String>,
    /// The head and initial body to write first, and how the stream goes
    /// on after them; taken (and freed) by the stream's first step.
    pub(crate) open: Option<Box<StreamOpen>>,
    /// The instruct, kept only when it has a next link (`Msg::Refetch`).
    pub(crate) links: Option<Box<Instruct>>,
    /// The route's part a link needs (next or gone); `None` without one.
    pub(crate) route: Option<Box<LinkRoute>>,
    /// The target, as the access log names it.
    pub(crate) target: std::borrow::Cow<'static, str>,
    /// The Connection-Id a publisher may target the stream by.
    pub(crate) connection_id: Option<String>,
    pub(crate) code: u16,
    /// Body bytes sent (the access log's).
    pub(crate) bytes: u64,
    pub(crate) http10: bool,
    pub(crate) debug: bool,
}

impl Drop for HeldStream {
    fn drop(&mut self) {
        // In the order a hold's end had them: the Connection-Id, the
        // subscription, then the stats socket's close.
        if let Some(id) = &self.connection_id {
            self.shard.held.borrow_mut().remove(id);
        }
        self.shard.subs.unsubscribe(&self.sub);
        if let Some(id) = self.stats.take() {
            crate::conn::dropin::stats_closed(&self.shard, id);
        }
    }
}

/// A held stream's link context (`HoldCtx`'s, owned): for next-link
/// fetches and the gone link.
pub struct LinkRoute {
    pub(crate) backend: Option<Dest>,
    pub(crate) prefix: String,
    pub(crate) sig: Option<crate::jwt::SigKey>,
    /// `Grip-Link: <URL>; rel=gone`, POSTed once the stream ends.
    pub(crate) gone: Option<String>,
}

/// `HeldStream::ctx` from its parts (for a step that also borrows some of
/// the stream's other fields mutably).
pub(crate) fn link_ctx<'a>(
    head: &'a RequestHead,
    route: Option<&'a LinkRoute>,
    target: &'a str,
    debug: bool,
    connection_id: Option<&'a str>,
) -> HoldCtx<'a> {
    HoldCtx {
        head,
        backend: route.and_then(|r| r.backend.as_ref()),
        prefix: route.map_or("", |r| r.prefix.as_str()),
        target,
        sig: route.and_then(|r| r.sig.as_ref()),
        debug,
        connection_id,
    }
}

/// A held stream's first step: its head and initial body.
pub struct StreamOpen {
    pub(crate) out: Vec<u8>,
    pub(crate) head_only: bool,
    pub(crate) failed: Option<String>,
}

impl HeldStream {
    /// The `HoldCtx` the stream's steps take, borrowed from what the
    /// stream owns and the request's head.
    pub(crate) fn ctx<'a>(&'a self, head: &'a RequestHead) -> HoldCtx<'a> {
        link_ctx(
            head,
            self.route.as_deref(),
            &self.target,
            self.debug,
            self.connection_id.as_deref(),
        )
    }

    /// The gone link, if the stream has one.
    pub(crate) fn gone(&self) -> Option<&str> {
        self.route.as_deref().and_then(|r| r.gone.as_deref())
    }
}

/// The `Grip-Last` entries of a retry straight from the instruct: each
/// channel (as the backend named it) with the prev-id it gave.
fn grip_last(instruct: &Instruct, max: usize) -> Vec<(String, String)> {
    instruct
        .channels
        .iter()
        .take(max)
        .filter_map(|c| Some((c.name.clone(), c.prev_id.clone()?)))
        .collect()
}

/// The route-level context a hold needs for next-link fetches. All
/// borrowed: a held connection's future keeps references, not copies of
/// the route's and the backend's strings (PERFORMANCE.md, "Per-connection
/// byte budget").
pub struct HoldCtx<'a> {
    pub head: &'a RequestHead,
    /// The backend, for relative links; `None` for the test target.
    pub backend: Option<&'a Dest>,
    pub prefix: &'a str,
    pub target: &'a str,
    pub sig: Option<&'a crate::jwt::SigKey>,
    /// The route's `debug`: a held stream that fails says why in its body
    /// before it ends; a long-poll answers 502 with the reason.
    pub debug: bool,
    /// The Connection-Id the backend was told: while held, the connection
    /// is a target by it (`crate::targets`).
    pub connection_id: Option<&'a str>,
}

/// What the filters need of an instruct's channels (the first `max`).
fn chan_states(i: &Instruct, prefix: &str, max: usize) -> Vec<crate::subs::ChanState> {
    i.channels
        .iter()
        .take(max)
        .map(|c| crate::subs::ChanState {
            channel: format!("{prefix}{}", c.name),
            name: c.name.clone(),
            filters: c.filters.clone(),
            prev_id: c.prev_id.clone(),
        })
        .collect()
}

/// Holds the client connection as instructed.
///
/// The instruct and the response come boxed: an async fn keeps its
/// arguments in its future for its whole life, so a held connection
/// would otherwise carry them (twice) for as long as it is held.
pub async fn hold(
    shard: &Rc<Shard>,
    c: &mut Client,
    ctx: &HoldCtx<'_>,
    instruct: Box<Instruct>,
    base: Box<Base>,
) -> HoldEnd {
    let max = shard.cfg.grip.max_channels;
    if instruct.channels.len() > max {
        warn!(
            "core {}: a hold names {} channels; keeping the first {max}",
            shard.index,
            instruct.channels.len()
        );
    }
    let channels: Vec<String> = instruct
        .channels
        .iter()
        .take(max)
        .map(|c| format!("{}{}", ctx.prefix, c.name))
        .collect();
    // A long-poll that says it has seen an older id than the channel's
    // latest has missed something: answered from history when it holds
    // what was missed, else the backend is asked again at once.
    // So does a stream (it has a next link, or it ends): replayed from
    // history when history covers the gap, else it fetches its next link.
    let mut behind: Vec<(String, String)> = Vec::new();
    let stream_resumes =
        instruct.hold == HoldMode::Stream && instruct.next.is_some() && shard.subs.history_on();
    if stream_resumes || (instruct.hold == HoldMode::Response && ctx.head.body == BodyKind::Empty) {
        for spec in instruct.channels.iter().take(max) {
            let name = format!("{}{}", ctx.prefix, spec.name);
            if let (Some(p), Some(last)) = (&spec.prev_id, shard.subs.last_id(&name)) {
                if *p != last {
                    behind.push((name, p.clone()));
                }
            }
        }
        if !behind.is_empty() && !shard.subs.history_on() {
            return HoldEnd::Retry(grip_last(&instruct, max));
        }
    }
    let mut base = base;
    let http10 = ctx.head.version == Version::Http10;
    let sub = shard.subs.subscribe(SubSpec {
        kind: if instruct.hold == HoldMode::Stream {
            HoldKind::Stream
        } else {
            HoldKind::Response
        },
        chunked: !http10,
        channels,
        meta: instruct.meta.clone(),
        keep_alive: if instruct.hold == HoldMode::Stream {
            instruct.keep_alive.clone()
        } else {
            None
        },
        timeout: (instruct.hold == HoldMode::Response)
            .then(|| Duration::from_secs(u64::from(instruct.timeout))),
        link_timeout: match (&instruct.hold, &instruct.next) {
            (HoldMode::Stream, Some(l)) => Some(Duration::from_secs(u64::from(l.timeout))),
            _ => None,
        },
    });
    shard
        .subs
        .set_chans(&sub, chan_states(&instruct, ctx.prefix, max));
    sub.set_held_body(base.body.clone());
    // Channel history (issue 18): replay what the client missed.
    match shard
        .subs
        .resume_hold(&sub, ctx.head.fields.get("last-event-id"), &behind)
    {
        HoldResume::Note(Some(note)) => {
            let _ = base.head.add("Corepin-Resume", note.as_bytes());
        }
        HoldResume::Note(None) => {}
        // The stream fetches its next link once its head is out.
        HoldResume::Refetch if instruct.hold == HoldMode::Stream => {
            shard.subs.refetch(&sub);
        }
        HoldResume::Refetch => return HoldEnd::Retry(grip_last(&instruct, max)),
    }
    drop(behind);
    sub.set_debug(ctx.debug);
    c.conn.set_read_timeout(None);
    // Only the first instruct's gone link counts (Pushpin: a next link's
    // response cannot set or change it).
    let gone = instruct.gone.clone();
    if instruct.hold == HoldMode::Stream {
        // Handed off: `conn::held` writes the head and holds the stream.
        let held = held_stream(shard, c, ctx, sub.into_sub(), instruct, base, gone);
        return HoldEnd::Held(Box::new(held));
    }
    let _target = ctx
        .connection_id
        .map(|id| crate::targets::Registered::new(&shard.held, id.to_string(), &sub));
    // Boxed: a held connection carries only its own kind's state.
    let end = Box::pin(hold_response(shard, c, ctx, &sub, &instruct, *base)).await;
    if let Some(url) = gone {
        send_gone(shard, ctx, &url);
    }
    end
}

/// `Grip-Link: <URL>; rel=gone`: when a held request ends, whatever ended
/// it (the client leaving, its answer, a stream's close), corepin POSTs
/// to URL with no body and none of the client's fields, signed like any
/// request to the backend. Best effort, in its own task so the client's
/// connection does not wait: failures and a non-empty answer are logged.
pub(crate) fn send_gone(shard: &Rc<Shard>, ctx: &HoldCtx<'_>, url: &str) {
    let Some((to, path)) = link_addr(shard, ctx, url) else {
        return;
    };
    let mut req = Vec::with_capacity(256);
    let host = ctx.head.fields.get("host").unwrap_or(to.addr.as_bytes());
    let token = ctx.sig.map(|k| shard.signer.token(k));
    heads::write_gone_request(&mut req, &path, host, token.as_deref());
    let shard = shard.clone();
    let url = url.to_string();
    glommio::spawn_local(async move {
        let Some(mut up) = send_link_request(&shard, &to, &req, "gone link", &url).await else {
            return;
        };
        let Some(resp) = up
            .read_head(
                &shard.cfg.limits.head,
                false,
                shard.cfg.timeouts.upstream_read,
            )
            .await
        else {
            warn!("core {}: gone link {url}: no answer", shard.index);
            return;
        };
        match read_body(&mut up, resp.body).await {
            Ok(b) if b.is_empty() => {
                if resp.keep_alive {
                    shard.pool.put_idle(up);
                }
            }
            Ok(_) => warn!(
                "core {}: gone link {url} answered {} with a body (expected none)",
                shard.index, resp.status
            ),
            Err(_) => warn!("core {}: gone link {url}: bad answer", shard.index),
        }
    })
    .detach();
}

/// Connects to a link's backend and sends `req` (a `gone` or `next`
/// link's request); a failure is logged as `what` with the `url`.
async fn send_link_request(
    shard: &Shard,
    to: &Dest,
    req: &[u8],
    what: &str,
    url: &str,
) -> Option<Upstream> {
    let mut up = match shard
        .pool
        .connect_to(to, shard.cfg.timeouts.upstream_connect)
        .await
    {
        Ok(up) => up,
        Err(e) => {
            warn!("core {}: {what} {url}: {e}", shard.index);
            return None;
        }
    };
    if up.conn.write_all(req).await.is_err() {
        warn!("core {}: {what} {url}: the request failed", shard.index);
        return None;
    }
    Some(up)
}

/// Where a link points (`upstream::link_dest`), or a warning naming it.
fn link_addr(shard: &Shard, ctx: &HoldCtx<'_>, url: &str) -> Option<(Dest, String)> {
    let found = link_dest(url, ctx.backend);
    if found.is_none() && !url.starts_with('/') {
        warn!(
            "core {}: link '{url}' is not http://, https:// or a path",
            shard.index
        );
    }
    found
}

/// What a held connection wakes up for.
pub enum HoldEvent {
    Msg(Msg),
    ClientGone,
    Dropped,
}

/// Waits for the next message for `sub`, or the client going away.
pub async fn next_event(c: &mut Client, sub: &Sub) -> HoldEvent {
    futures_lite::future::poll_fn(|cx| poll_event(c, sub, cx)).await
}

/// `next_event` as a poll (for `conn::held`'s hand-written future).
pub fn poll_event(c: &mut Client, sub: &Sub, cx: &mut std::task::Context<'_>) -> Poll<HoldEvent> {
    if sub.dropped() {
        return Poll::Ready(HoldEvent::Dropped);
    }
    if let Some(m) = sub.poll_msg(cx.waker()) {
        return Poll::Ready(HoldEvent::Msg(m));
    }
    // Watch the client side for a close; bytes it sends (a pipelined
    // request) are kept for after the hold, up to one buffer.
    while c.conn.input_len() < BUF_SIZE {
        match c.conn.poll_fill(cx, BUF_SIZE) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(HoldEvent::ClientGone),
            Poll::Ready(Ok(_)) => continue,
            Poll::Pending => break,
        }
    }
    Poll::Pending
}

/// How a write to a held connection's client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The client went away (or its socket failed).
    Gone,
    /// The subscriber was dropped (and counted): its queue went over the
    /// byte limit while this write waited, or the write stalled.
    Dropped,
}

/// The subscriber's last hop, the one path by which every held
/// connection (stream, long-poll, WebSocket) writes to its client: `first`,
/// and the published data queued behind it (up to `BATCH_MAX` bytes and
/// `subs::MAX_PARTS` messages), leave in one gathered write, the shared
/// `Bytes` never copied. Returns how the write ended and the bytes it
/// carried as `measure` counts them (the access log's body bytes).
///
/// Once the socket pushes back, the write must finish within
/// `timeouts.client_write`, however the client trickles its reads (the
/// socket's own timeout restarts at every byte taken); past that the
/// subscriber is dropped as stalled. While the write waits, the subscriber
/// counts as blocked, so its queue is held to the byte limit, and a queue
/// that goes over it ends the write at once.
pub async fn deliver(
    shard: &Shard,
    c: &mut Client,
    sub: &Sub,
    first: Bytes,
    measure: fn(&[u8]) -> usize,
) -> (Written, u64) {
    let (mut w, n) = Writing::new(sub, first, measure);
    let r = futures_lite::future::poll_fn(|cx| w.poll(shard, c, sub, cx)).await;
    w.end(sub, r);
    (r, n)
}

/// `deliver`'s state, polled by `deliver` or held inline by `conn::held`'s
/// state machine (so a delivery allocates nothing there either).
pub struct Writing {
    first: Bytes,
    /// The data queued behind `first`, `first` at its head; empty (and
    /// not allocated) without a backlog, the common case.
    backlog: Vec<Bytes>,
    progress: PartsProgress,
    /// The timer exists only for writes that wait: the common write,
    /// taken whole by the kernel, costs no timer.
    deadline: Option<glommio::timer::Timer>,
}

impl Writing {
    /// Takes `first` and what is queued behind it; also returns the bytes
    /// they carry as `measure` counts them.
    pub fn new(sub: &Sub, first: Bytes, measure: fn(&[u8]) -> usize) -> (Writing, u64) {
        let mut backlog = Vec::new();
        sub.take_data_parts(&mut backlog, BATCH_MAX.saturating_sub(first.len()));
        if !backlog.is_empty() {
            backlog.insert(0, first.clone());
        }
        let w = Writing {
            first,
            backlog,
            progress: PartsProgress::default(),
            deadline: None,
        };
        let n = w.parts().iter().map(|p| measure(p) as u64).sum();
        (w, n)
    }

    fn parts(&self) -> &[Bytes] {
        if self.backlog.is_empty() {
            std::slice::from_ref(&self.first)
        } else {
            &self.backlog[..]
        }
    }

    pub fn poll(
        &mut self,
        shard: &Shard,
        c: &mut Client,
        sub: &Sub,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Written> {
        if sub.dropped() {
            return Poll::Ready(Written::Dropped);
        }
        let parts = if self.backlog.is_empty() {
            std::slice::from_ref(&self.first)
        } else {
            &self.backlog[..]
        };
        match c.conn.poll_write_parts(cx, parts, &mut self.progress) {
            Poll::Ready(Ok(())) => Poll::Ready(Written::Done),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                shard.subs.stalled(sub);
                Poll::Ready(Written::Dropped)
            }
            Poll::Ready(Err(_)) => Poll::Ready(Written::Gone),
            Poll::Pending => {
                if self.deadline.is_none() {
                    if shard.subs.blocked(sub) {
                        return Poll::Ready(Written::Dropped);
                    }
                    self.deadline =
                        Some(glommio::timer::Timer::new(shard.cfg.timeouts.client_write));
                }
                sub.watch(cx.waker());
                if let Some(t) = self.deadline.as_mut() {
                    if Pin::new(t).poll(cx).is_ready() {
                        shard.subs.stalled(sub);
                        return Poll::Ready(Written::Dropped);
                    }
                }
                Poll::Pending
            }
        }
    }

    /// After the write ended as `r`.
    pub fn end(self, sub: &Sub, r: Written) {
        sub.set_blocked(false);
        if r == Written::Done {
            sub.wrote(Instant::now());
        }
    }
}

/// Sends what the socket takes now, without waiting: the last words to a
/// client being dropped for not reading (a WebSocket close frame).
pub fn send_now(c: &mut Client, bytes: &[u8]) {
    c.conn.send_now(bytes);
}

pub(crate) fn done(status: u16, bytes: u64, ctx: &HoldCtx<'_>, keep: bool) -> Outcome {
    Outcome {
        status,
        bytes,
        target: ctx.target.to_string(),
        keep_alive: keep,
    }
}

/// The hand-off of a stream hold (`HoldEnd::Held`): its head made (and
/// the instruct kept only when it has a next link, a `Refetch` needs it),
/// so that neither the backend's response nor the instruct stays alive
/// while the stream is held. Takes the boxes themselves: the response's
/// is freed here.
#[allow(clippy::boxed_local)]
fn held_stream(
    shard: &Rc<Shard>,
    c: &mut Client,
    ctx: &HoldCtx<'_>,
    sub: Rc<Sub>,
    instruct: Box<Instruct>,
    base: Box<Base>,
    gone: Option<String>,
) -> HeldStream {
    let http10 = !sub.chunked();
    let status = instruct
        .status
        .clone()
        .unwrap_or_else(|| base.head.status().clone());
    let code = status.code();
    // Pushpin's response-content filter (build-id) runs over the hold's own
    // body; when it fails, the head still goes out and the stream ends.
    let (body, failed) = match response_body(&instruct, &base.body) {
        Ok(b) => (b.unwrap_or_else(|| base.body.clone()), None),
        Err(why) => (Bytes::new(), Some(why)),
    };
    let mut bytes = body.len() as u64;
    let mut out = Vec::with_capacity(256 + body.len());
    base.write_status_and_headers(&mut out, Some(&status));
    if http10 {
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(&body);
    } else {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        crate::codec::chunked::write_chunk(&mut out, &body);
    }
    crate::conn::dropin::head(c, &mut out, 0);
    // A HEAD is answered with the head alone (RFC 9110 §9.3.2): no body,
    // so nothing to stream; the connection ends after it.
    let head_only = ctx.head.method() == "HEAD";
    if head_only {
        cut_after_head(&mut out);
        bytes = 0;
    }
    let failed = failed.or_else(|| prev_id_without_link(&instruct));
    let links = instruct.next.is_some().then_some(instruct);
    // A stream without links (the common idle one) carries none of the
    // route's strings.
    let route = (links.is_some() || gone.is_some()).then(|| {
        Box::new(LinkRoute {
            backend: ctx.backend.cloned(),
            prefix: ctx.prefix.to_string(),
            sig: ctx.sig.cloned(),
            gone,
        })
    });
    // While held, the connection is a target by its Connection-Id
    // (`crate::targets`; `targets::Registered`'s, kept by the stream).
    if let Some(id) = ctx.connection_id {
        shard.held.borrow_mut().insert(id.to_string(), sub.clone());
    }
    HeldStream {
        shard: shard.clone(),
        sub,
        stats: None,
        open: Some(Box::new(StreamOpen {
            out,
            head_only,
            failed,
        })),
        links,
        route,
        // The test target's name is static: no allocation for it.
        target: if ctx.target == crate::testtarget::NAME {
            std::borrow::Cow::Borrowed(crate::testtarget::NAME)
        } else {
            std::borrow::Cow::Owned(ctx.target.to_string())
        },
        connection_id: ctx.connection_id.map(str::to_string),
        code,
        bytes,
        http10,
        debug: ctx.debug,
    }
}

/// A held stream's first step: its head and initial body go out; `None`
/// when the stream goes on.
pub(crate) async fn open_stream(
    shard: &Shard,
    c: &mut Client,
    ctx: &HoldCtx<'_>,
    sub: &Sub,
    open: Box<StreamOpen>,
    code: u16,
    bytes: u64,
) -> Option<Outcome> {
    let StreamOpen {
        out,
        head_only,
        failed,
    } = *open;
    let sent = c.conn.write_all(&out).await.is_ok();
    drop(out);
    if !sent || head_only {
        return Some(done(code, bytes, ctx, false));
    }
    sub.wrote(Instant::now());
    match failed {
        Some(why) => Some(stream_failed(shard, c, ctx, code, bytes, &why).await),
        None => None,
    }
}

/// A stream's next-link fetch (`Msg::Refetch`): `None` when the stream
/// goes on, else how it ended.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn refetch(
    shard: &Shard,
    c: &mut Client,
    ctx: &HoldCtx<'_>,
    sub: &Rc<Sub>,
    links: &mut Option<Box<Instruct>>,
    http10: bool,
    code: u16,
    bytes: &mut u64,
) -> Option<Outcome> {
    let link = links.as_ref().and_then(|i| i.next.clone())?;
    // What is published while the link is fetched waits for
    // its answer (Pushpin), which may repeat it.
    shard.subs.refetching(sub);
    match fetch_link(shard, ctx, sub, &link.url).await {
        Fetched::Error(why) => return Some(stream_failed(shard, c, ctx, code, *bytes, &why).await),
        Fetched::Next(next, body) => {
            let framed = if http10 {
                body.to_vec()
            } else {
                let mut v = Vec::new();
                crate::codec::chunked::write_chunk(&mut v, &body);
                v
            };
            // A next hold takes effect before its body goes
            // out: a client that has seen the body is already
            // followed from the new instruct's prev-ids, and
            // what is published meanwhile follows the body.
            let holds = match next {
                Some(i) if i.hold == HoldMode::Stream => {
                    let channels = i
                        .channels
                        .iter()
                        .map(|s| format!("{}{}", ctx.prefix, s.name))
                        .collect();
                    shard.subs.set_channels(sub, channels);
                    // The next response's instruct replaces
                    // the meta and the filters (Pushpin).
                    sub.set_meta(i.meta.clone());
                    shard
                        .subs
                        .set_chans(sub, chan_states(&i, ctx.prefix, usize::MAX));
                    shard.subs.set_keep_alive(sub, i.keep_alive.clone());
                    shard.subs.set_link_at(
                        sub,
                        i.next
                            .as_ref()
                            .map(|l| Instant::now() + Duration::from_secs(u64::from(l.timeout))),
                    );
                    *links = Some(i);
                    true
                }
                // No further hold: the stream ends after it.
                _ => false,
            };
            if !framed.is_empty() && c.conn.write_all(&framed).await.is_err() {
                return Some(done(code, *bytes, ctx, false));
            }
            *bytes += body.len() as u64;
            if !holds {
                return Some(end_stream(shard, c, ctx, code, *bytes).await);
            }
            if let Some(why) = links.as_deref().and_then(prev_id_without_link) {
                return Some(stream_failed(shard, c, ctx, code, *bytes, &why).await);
            }
        }
        Fetched::Failed => {
            // The link failed: try again after its timeout.
            shard.subs.set_link_at(
                sub,
                Some(Instant::now() + Duration::from_secs(u64::from(link.timeout))),
            );
        }
    }
    None
}

/// Ends a held stream cleanly: the last chunk, and the connection kept
/// when the client may send another request; an HTTP/1.0 stream ends with
/// the connection.
pub(crate) async fn end_stream(
    shard: &Shard,
    c: &mut Client,
    ctx: &HoldCtx<'_>,
    code: u16,
    bytes: u64,
) -> Outcome {
    if ctx.head.version == Version::Http10 {
        return done(code, bytes, ctx, false);
    }
    let ok = c
        .conn
        .write_all(crate::codec::chunked::LAST_CHUNK)
        .await
        .is_ok();
    let keep = ctx.head.keep_alive && !shard.draining();
    done(code, bytes, ctx, ok && keep)
}

/// Pushpin's response-content filters (`build-id`) over a stream's own
/// body or a next link's body, with that instruct's channels and meta:
/// the new body (`None`: unchanged), or why it failed. An empty body is
/// left alone, as in Pushpin.
fn response_body(i: &Instruct, body: &[u8]) -> Result<Option<Bytes>, String> {
    if body.is_empty() {
        return Ok(None);
    }
    filter::response_body(i.channels.iter().map(|c| &c.filters), &i.meta, body)
        .map(|b| b.map(Bytes::from))
        .map_err(|e| format!("filter error: {e}"))
}

/// A held stream following a channel's ids (`prev-id`) needs a next link
/// to catch up through: without one, Pushpin ends the stream with this
/// error once its initial body is out.
fn prev_id_without_link(i: &Instruct) -> Option<String> {
    if i.hold != HoldMode::Stream || i.next.is_some() {
        return None;
    }
    i.channels.iter().find(|c| c.prev_id.is_some()).map(|c| {
        format!(
            "channel '{}' specifies prev-id, but no next link found",
            c.name
        )
    })
}

/// Ends a held stream that failed (a filter error, a next link that
/// broke the rules, a prev-id without a next link), as Pushpin does: the
/// reason is logged and, on a `debug` route, appended to the body
/// (`\n\nREASON\n`); then the stream ends cleanly.
pub(crate) async fn stream_failed(
    shard: &Shard,
    c: &mut Client,
    ctx: &HoldCtx<'_>,
    code: u16,
    mut bytes: u64,
    why: &str,
) -> Outcome {
    warn!(
        "core {}: stream from {} ended: {why}",
        shard.index, ctx.target
    );
    if ctx.debug {
        let text = format!("\n\n{why}\n");
        let mut out = Vec::with_capacity(text.len() + 16);
        if ctx.head.version == Version::Http10 {
            out.extend_from_slice(text.as_bytes());
        } else {
            crate::codec::chunked::write_chunk(&mut out, text.as_bytes());
        }
        if c.conn.write_all(&out).await.is_err() {
            return done(code, bytes, ctx, false);
        }
        bytes += text.len() as u64;
    }
    end_stream(shard, c, ctx, code, bytes).await
}

async fn hold_response(
    shard: &Shard,
    c: &mut Client,
    ctx: &HoldCtx<'_>,
    sub: &Rc<Sub>,
    instruct: &Instruct,
    base: Base,
) -> HoldEnd {
    let http10 = ctx.head.version == Version::Http10;
    let keep = ctx.head.keep_alive && !shard.draining();
    loop {
        match next_event(c, sub).await {
            HoldEvent::Msg(m @ (Msg::Response(_) | Msg::ResponseBody(..))) => {
                let (e, head, body) = match m {
                    Msg::ResponseBody(e, body) => {
                        let head = Bytes::from(e.response_head_for(body.len()));
                        (e, head, body)
                    }
                    Msg::Response(e) => {
                        let (h, b) = (e.response_head.clone(), e.response_body.clone());
                        (e, h, b)
                    }
                    _ => continue,
                };
                let mut out = Vec::with_capacity(head.len() + body.len() + 64);
                out.extend_from_slice(&head);
                for name in &instruct.expose {
                    if let Some(v) = base.head.get(name) {
                        http1::write_field(&mut out, name.as_bytes(), v);
                    }
                }
                heads::write_connection(&mut out, keep, http10);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&body);
                crate::conn::dropin::whole(c, &mut out, 0, true);
                let ok = held_response_written(shard, c, ctx, sub, out).await;
                let code = e
                    .item
                    .http_response
                    .as_ref()
                    .map_or(200, |r| r.head.status().code());
                return HoldEnd::Done(done(code, body.len() as u64, ctx, ok && keep));
            }
            HoldEvent::Msg(Msg::Timeout) => {
                let mut out = Vec::new();
                base.write_full(&mut out, instruct.status.as_ref(), keep, http10);
                crate::conn::dropin::whole(c, &mut out, 0, true);
                let ok = held_response_written(shard, c, ctx, sub, out).await;
                let code = instruct.status.as_ref().map_or(base.status(), Status::code);
                return HoldEnd::Done(done(code, base.body.len() as u64, ctx, ok && keep));
            }
            HoldEvent::Msg(Msg::Error(why)) => {
                // Only a `debug` route's subscribers are told (Pushpin:
                // 502 with the reason as the body).
                let mut out = Vec::new();
                http1::write_simple_response(&mut out, 502, &why, !keep);
                let ok = held_response_written(shard, c, ctx, sub, out).await;
                return HoldEnd::Done(done(502, why.len() as u64 + 1, ctx, ok && keep));
            }
            HoldEvent::Msg(Msg::Refetch) if ctx.head.body == BodyKind::Empty => {
                let last = sub
                    .chans()
                    .iter()
                    .filter_map(|c| Some((c.name.clone(), c.prev_id.clone()?)))
                    .collect();
                return HoldEnd::Retry(last);
            }
            HoldEvent::Msg(_) => {}
            HoldEvent::ClientGone | HoldEvent::Dropped => {
                return HoldEnd::Done(done(499, 0, ctx, false))
            }
        }
    }
}

/// Cuts `out` after its head (the first empty line).
fn cut_after_head(out: &mut Vec<u8>) {
    if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
        out.truncate(end + 4);
    }
}

/// Writes a long-poll's answer (its head alone to a HEAD, RFC 9110
/// §9.3.2: `Content-Length` still says what a GET would get); true when it
/// went out whole.
async fn held_response_written(
    shard: &Shard,
    c: &mut Client,
    ctx: &HoldCtx<'_>,
    sub: &Sub,
    mut out: Vec<u8>,
) -> bool {
    if ctx.head.method() == "HEAD" {
        cut_after_head(&mut out);
    }
    match deliver(shard, c, sub, Bytes::from(out), <[u8]>::len)
        .await
        .0
    {
        Written::Done => true,
        Written::Gone => false,
        Written::Dropped => {
            dropped_warning(shard, c, "long-poll");
            false
        }
    }
}

/// Logs a subscriber dropped for not keeping up (counted in
/// `corepin_subscriber_drops_total`), and makes its socket reset when
/// closed: the bytes the kernel still holds for a client that does not
/// read are discarded at once rather than kept while the kernel probes a
/// zero window.
pub fn dropped_warning(shard: &Shard, c: &Client, kind: &str) {
    warn!(
        "core {}: {kind} subscriber {} not keeping up (queue over its limit, or a write stalled); dropped",
        shard.index, c.peer
    );
    c.conn.reset_on_close();
}

/// What fetching a next link gave.
enum Fetched {
    /// Its instruction (if any) and its body, build-id applied.
    Next(Option<Box<Instruct>>, Bytes),
    /// No usable answer (unreachable, not 2xx): try again later.
    Failed,
    /// An answer that ends the stream (Pushpin's session error): a bad
    /// instruction, a long-poll hold, a filter error.
    Error(String),
}

/// Fetches a next link.
async fn fetch_link(shard: &Shard, ctx: &HoldCtx<'_>, sub: &Sub, url: &str) -> Fetched {
    match fetch_link_inner(shard, ctx, sub, url).await {
        None => Fetched::Failed,
        Some(Err(why)) => Fetched::Error(why),
        Some(Ok(Decision::Pass(base))) => Fetched::Next(None, base.body),
        Some(Ok(Decision::Hold(i, _))) if i.hold != HoldMode::Stream => {
            Fetched::Error("Next link returned non-stream hold.".into())
        }
        Some(Ok(Decision::Hold(i, base))) => match response_body(&i, &base.body) {
            Ok(b) => Fetched::Next(Some(i), b.unwrap_or(base.body)),
            Err(why) => Fetched::Error(why),
        },
    }
}

async fn fetch_link_inner(
    shard: &Shard,
    ctx: &HoldCtx<'_>,
    sub: &Sub,
    url: &str,
) -> Option<Result<Decision, String>> {
    let (to, path) = link_addr(shard, ctx, url)?;
    let mut req = Vec::with_capacity(256);
    let host = ctx.head.fields.get("host").unwrap_or(to.addr.as_bytes());
    let token = ctx.sig.map(|k| shard.signer.token(k));
    // Where each channel is: a channel that follows ids (`prev-id`) says
    // its current one (the hold's, then each item's, as Pushpin's
    // prevIds), any other the last id it delivered.
    let mut last: Vec<(String, String)> = sub.last_ids().to_vec();
    for c in sub.chans().iter() {
        if let Some(id) = &c.prev_id {
            match last.iter_mut().find(|(ch, _)| *ch == c.channel) {
                Some(slot) => slot.1 = id.clone(),
                None => last.push((c.channel.clone(), id.clone())),
            }
        }
    }
    heads::write_link_request(&mut req, &path, host, &last, ctx.prefix, token.as_deref());
    let mut up = send_link_request(shard, &to, &req, "next link", url).await?;
    let resp = up
        .read_head(
            &shard.cfg.limits.head,
            false,
            shard.cfg.timeouts.upstream_read,
        )
        .await?;
    let body = read_body(&mut up, resp.body).await.ok()?;
    if resp.keep_alive {
        shard.pool.put_idle(up);
    }
    if !(200..300).contains(&resp.status) {
        warn!(
            "core {}: next link {url} answered {}",
            shard.index, resp.status
        );
        return None;
    }
    Some(decide(&resp, body).map_err(|e| format!("next link {url}: {}", e.0)))
}
