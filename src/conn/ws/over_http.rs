//! WebSocket-over-HTTP (GRIP.md §3): each session a series of HTTP POSTs
//! of events to the backend.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::subscriber::{client_loop, control};
use super::{
    bad_gateway, close_frame, drop_client, from_client, outcome, read_response_head, relay_refusal,
    wait, ws_sub, Io, MAX_MESSAGE,
};
use crate::codec::heads::Purpose;
use crate::codec::http1::{self, RequestHead, ResponseHead};
use crate::codec::ws::{self, MessageKind as WsKind, Opcode, Reader, Role};
use crate::codec::wsevents::{self, WsEvent};
use crate::codec::wshandshake::{classify, grip_extension, switching, FromBackend, GripExt};
use crate::codec::wssession::{Pings, ServerSession, Step};
use crate::conn::grip::{deliver, read_body, HoldEnd, Written};
use crate::conn::http::{grip_key, Client};
use crate::route::{Route, Target};
use crate::shard::Shard;
use crate::subs::{Msg, Sub};
use crate::upstream::Reuse;

/// Most attempts for one WebSocket-over-HTTP request.
const POST_ATTEMPTS: usize = 3;

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
    /// The route is a GRIP route: requests offer `Sec-WebSocket-Extensions:
    /// grip`, as Pushpin's do.
    grip_ext: bool,
}

/// An answer to one events request.
struct EventsReply {
    resp: ResponseHead,
    body: Bytes,
}

impl Session<'_> {
    /// POSTs `events` to the backend (retrying on connection failures);
    /// `None` when the backend cannot be reached. `replayed`: bytes of
    /// content the backend kept back before, offered again.
    async fn post(
        &mut self,
        peer: SocketAddr,
        events: &[WsEvent],
        replayed: usize,
    ) -> Option<EventsReply> {
        let mut body = Vec::new();
        for e in events {
            wsevents::encode(&mut body, e);
        }
        // Events requests are signed whatever the route's `no_grip`.
        let token = grip_key(&self.shard.signer, self.route).map(|k| self.shard.signer.token(&k));
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
                    replayed,
                    grip_ext: self.grip_ext,
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

/// The backend's `Content-Bytes-Accepted` (`None`: absent, everything).
fn bytes_accepted(resp: &ResponseHead) -> Result<Option<usize>, String> {
    resp.fields
        .get("content-bytes-accepted")
        .map(wsevents::parse_bytes_accepted)
        .transpose()
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
/// A refresh (a published `refresh`, `recover`) that arrives meanwhile
/// sets `refresh`: another request follows this one (Pushpin).
async fn post_delivering(
    s: &mut Session<'_>,
    c: &mut Client,
    sub: &Sub,
    events: &[WsEvent],
    replayed: usize,
    listen: bool,
    refresh: &mut bool,
) -> (Option<EventsReply>, Option<WsEvent>) {
    let s_shard = s.shard;
    let mut post = std::pin::pin!(s.post(c.peer, events, replayed));
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
            During::Sub(Msg::Refresh | Msg::Refetch) => *refresh = true,
            During::Sub(_) => {}
            During::Dropped => {
                drop_client(s_shard, c);
                ended = Some(WsEvent::Disconnect);
            }
        }
    }
}

/// WebSocket-over-HTTP (GRIP.md §3).
pub(super) async fn over_http(
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
        grip_ext: route.grip(),
    };
    let Some(open) = s.post(c.peer, &[WsEvent::Open], 0).await else {
        return bad_gateway(c, "upstream unreachable", "-").await;
    };
    if !is_events(&open.resp) {
        // The backend (or a gateway in front of it) refused: the client's
        // handshake fails with that answer, unchanged.
        let n = relay_refusal(c, &open.resp, &open.body).await;
        return outcome(open.resp.status, n, &s.target);
    }
    // Nothing was offered: only 0 may be accepted (Pushpin).
    if let Err(e) =
        bytes_accepted(&open.resp).and_then(|n| wsevents::take_accepted(Vec::new(), n, false))
    {
        warn!(
            "core {}: bad answer to OPEN from {}: {e}",
            shard.index, s.target
        );
        return bad_gateway(c, "invalid events from upstream", &s.target.clone()).await;
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
    let sub = ws_sub(&shard.subs, route, route.implicit_channels(&s.target));
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

/// Waits for the subscription or the deadline without reading the client:
/// the backend holds back as much of its data as corepin keeps for it
/// (`Content-Bytes-Accepted`), so the client waits, as with Pushpin.
/// Closes the client's session with 1011 (internal error) for a backend
/// that failed it.
async fn upstream_failed(c: &mut Client, reason: &str) {
    let _ = c.conn.write_all(&close_frame(1011, reason, None)).await;
}

async fn wait_for_backend(sub: &Sub, deadline: Option<Instant>) -> Io {
    let mut timer =
        deadline.map(|d| glommio::timer::Timer::new(d.saturating_duration_since(Instant::now())));
    futures_lite::future::poll_fn(|cx| {
        if sub.dropped() {
            return Poll::Ready(Io::Dropped);
        }
        if let Some(m) = sub.poll_msg(cx.waker()) {
            return Poll::Ready(Io::Sub(m));
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

/// Most bytes of client messages kept for a backend that has not accepted
/// them (`Content-Bytes-Accepted`) before corepin stops reading the client.
const MAX_KEPT: usize = MAX_MESSAGE;

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
    // Client messages not yet accepted by the backend, oldest first; the
    // first `offered` of them were offered and kept back
    // (`Content-Bytes-Accepted`): the next request offers them again,
    // ahead of newer ones, with `Content-Bytes-Replayed`.
    let mut queue: Vec<WsEvent> = Vec::new();
    let mut offered = 0;
    // `one_event` targets get one event per request (Pushpin 1.28's
    // intent; 1.41 batches empty messages in front of one with content);
    // otherwise every pending event goes in one request.
    let one_event = s
        .route
        .targets
        .iter()
        .any(|t| matches!(t, Target::Backend(b) if b.one_event));
    loop {
        if detached {
            return client_loop(s.shard, c, sub, &target).await;
        }
        let deadline = s.keep_alive.map(|k| s.last_request + k);
        let mut pending: Vec<WsEvent> = Vec::new();
        let mut end_after = false;
        // A `refresh` command: an empty request now, as for a keep-alive.
        let mut refresh = false;
        let kept: usize = queue.iter().map(wsevents::content_len).sum();
        let io = match first_io.take() {
            Some(io) => io,
            None if kept >= MAX_KEPT => wait_for_backend(sub, deadline).await,
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
            Io::Timer => {} // keep-alive: a request, with any kept-back data
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
        // The session's last event (the client's close or its leaving)
        // goes after its messages.
        let mut last: Option<WsEvent> = None;
        for e in pending {
            match e {
                WsEvent::Close(..) | WsEvent::Disconnect => {
                    last = Some(e);
                    break;
                }
                data => queue.push(data),
            }
        }
        // A refresh that arrives while a request is in flight is kept
        // and made once it is answered.
        let mut refresh_after = false;
        loop {
            let take = if one_event {
                queue.len().min(1)
            } else {
                queue.len()
            };
            let maxed = take < queue.len();
            let with_last = last.is_some() && !maxed && !(one_event && take > 0);
            let mut req: Vec<WsEvent> = queue[..take].to_vec();
            if with_last {
                req.extend(last.clone());
            }
            let replayed: usize = queue[..offered].iter().map(wsevents::content_len).sum();
            let end = with_last && end_after;
            if end {
                // The client's part is over (its close frame is sent): end
                // the connection now rather than after the backend has
                // answered the last event. A client waits for the server
                // to close the TCP connection after a close frame (RFC 6455
                // §7.1.1), and a slow backend must not keep it waiting.
                c.conn.close().await;
            }
            let (reply, ended) =
                post_delivering(s, c, sub, &req, replayed, !end, &mut refresh_after).await;
            if let Some(ev) = ended {
                // The session ended while the request was in flight (a
                // published close, or the client failed): tell the backend.
                let _ = s.post(c.peer, &[ev], 0).await;
                return outcome(101, 0, &target);
            }
            let reply = match reply {
                Some(r) if is_events(&r.resp) => r,
                _ => {
                    if !end {
                        upstream_failed(c, "upstream went away").await;
                    }
                    return outcome(101, 0, &target);
                }
            };
            if with_last && matches!(last, Some(WsEvent::Disconnect)) {
                return outcome(101, 0, &target);
            }
            let before: usize = req.iter().map(wsevents::content_len).sum();
            let kept = match bytes_accepted(&reply.resp)
                .and_then(|n| wsevents::take_accepted(req, n, maxed))
            {
                Ok(k) => k,
                Err(e) => {
                    warn!(
                        "core {}: bad events answer from {}: {e}",
                        s.shard.index, s.target
                    );
                    if !end {
                        upstream_failed(c, "bad answer from upstream").await;
                    }
                    return outcome(101, 0, &target);
                }
            };
            let after: usize = kept.events.iter().map(wsevents::content_len).sum::<usize>()
                + kept.close.as_ref().map_or(0, wsevents::content_len);
            let progress = after < before || kept.removed > 0;
            let rest = queue.split_off(take);
            queue = kept.events;
            offered = queue.len();
            queue.extend(rest);
            if with_last {
                last = kept.close;
            }
            s.absorb(&reply.resp);
            let evs = wsevents::decode(&reply.body).unwrap_or_default();
            if end && last.is_none() {
                return outcome(101, 0, &target);
            }
            if !end_after {
                if let After::Close = apply(s, c, sub, evs, &mut detached).await {
                    return outcome(101, 0, &target);
                }
            }
            if queue.len() > offered {
                continue; // `one_event`: messages not offered yet
            }
            match last {
                None => break,
                Some(WsEvent::Disconnect) => {
                    // The client is gone: what the backend kept back is
                    // dropped with it.
                    queue.clear();
                    offered = 0;
                }
                Some(_) if queue.is_empty() => {} // the close, now
                Some(_) => {
                    // The backend kept back data before the client's close:
                    // it is offered again (with the close) at the
                    // keep-alive interval while the backend takes some.
                    // Without one, as in Pushpin, the backend had its one
                    // chance.
                    match s.keep_alive {
                        Some(k) if progress => glommio::timer::sleep(k).await,
                        _ => return outcome(101, 0, &target),
                    }
                }
            }
        }
        if refresh_after {
            first_io = Some(Io::Sub(Msg::Refresh));
        }
    }
}
