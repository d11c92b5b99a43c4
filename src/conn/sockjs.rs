//! SockJS on routes with `sockjs=PREFIX` (Pushpin's transports: `info`,
//! the iframe page, `websocket` framed and raw, `xhr` + `xhr_send`,
//! `jsonp` + `jsonp_send`) and the streaming ones Pushpin lacks
//! (`xhr_streaming`, `eventsource`, `htmlfile`).
//!
//! A streaming request is a run of polls on one connection: each answered
//! frame is written as the next piece of the open response, and the
//! request polls again (`JobKind::More`) until the response reaches
//! `codec::STREAM_LIMIT`. The session remembers the stream's token, so a
//! second receiving request meanwhile gets the 2010 close frame.
//!
//! Every SockJS session becomes one WebSocket toward the backend, served
//! by the ordinary WebSocket code (`conn::ws`, so WebSocket-over-HTTP,
//! GRIP control messages and publishes work unchanged): corepin opens an
//! in-process socket pair, runs the WebSocket server on one end as if a
//! client had connected, and speaks WebSocket on the other end itself,
//! translating to and from SockJS frames.
//!
//! An HTTP session spans several requests, which SO_REUSEPORT may hand to
//! different cores: the session lives on the core its id hashes to
//! (`codec::sockjs::owner`), and a request accepted elsewhere is sent
//! there as a [`Job`] and answered back through a [`Slot`]. A framed or
//! raw WebSocket session lives on its socket's core.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

use crate::buf::BUF_SIZE;
use crate::codec::heads;
use crate::codec::http1::{self, BodyKind, HeadLimits, RequestHead, ResponseHead};
use crate::codec::sockjs::{self as codec, Frame, Transport, Url};
use crate::codec::ws::{self, Opcode, Reader, Received, Role};
use crate::conn::body::{OutFraming, Relay};
use crate::conn::http::{Client, Outcome};
use crate::conn::ws::{wait_for, Io};
use crate::connection::Connection;
use crate::route::{decide_routed, Dispatch, Route, WsMode};
use crate::shard::Shard;

const HEARTBEAT: Duration = Duration::from_secs(codec::HEARTBEAT_SECS);
const LINGER: Duration = Duration::from_secs(codec::LINGER_SECS);
/// Bytes of a frame (or message) read at most from either side.
const MAX_FRAME: usize = codec::MAX_MESSAGE + 64 * 1024;

/// The SockJS path of `head` when `route` serves SockJS and the path is
/// under its prefix (as in Pushpin, a plain byte prefix: `/sjfoo` is the
/// SockJS path `foo` of `/sj`).
pub fn sockjs_path<'h>(route: &Route, head: &'h RequestHead) -> Option<&'h str> {
    let prefix = route.sockjs.as_deref()?;
    head.path().strip_prefix(prefix)
}

// ---- answers

/// An answer to one SockJS HTTP request.
#[derive(Debug)]
pub struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// Whole extra header lines.
    extra: Vec<u8>,
}

const JS: &str = "application/javascript; charset=UTF-8";
const TEXT: &str = "text/plain; charset=UTF-8";

impl Answer {
    fn text(status: u16, msg: &str) -> Answer {
        Answer {
            status,
            content_type: TEXT,
            body: format!("{msg}\n").into_bytes(),
            extra: Vec::new(),
        }
    }

    /// `frame` for a poll of `transport` (`callback` for JSON-P).
    fn frame(callback: Option<&str>, frame: &Frame<'_>) -> Answer {
        let mut f = Vec::new();
        codec::encode(&mut f, frame);
        Answer::wrapped(callback, f, true)
    }

    /// `ok` for a send (wrapped when the send carried a callback).
    fn ok(callback: Option<&str>) -> Answer {
        Answer::wrapped(callback, b"ok".to_vec(), false)
    }

    fn wrapped(callback: Option<&str>, f: Vec<u8>, line: bool) -> Answer {
        match callback {
            Some(cb) => Answer {
                status: 200,
                content_type: JS,
                body: codec::jsonp_body(cb, &f),
                extra: Vec::new(),
            },
            None => {
                let mut body = f;
                if line {
                    body.push(b'\n');
                }
                Answer {
                    status: 200,
                    content_type: if line { JS } else { TEXT },
                    body,
                    extra: Vec::new(),
                }
            }
        }
    }
}

/// Writes `a` with the fields every SockJS answer carries: no caching,
/// and the credentialed cross-origin fields for the request's `Origin`.
fn write_answer(out: &mut Vec<u8>, req: &RequestHead, a: &Answer, keep: bool, cache: bool) {
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            a.status,
            http1::reason_phrase(a.status)
        )
        .as_bytes(),
    );
    if !a.body.is_empty() || a.status == 200 {
        out.extend_from_slice(format!("Content-Type: {}\r\n", a.content_type).as_bytes());
    }
    out.extend_from_slice(&a.extra);
    if !cache {
        out.extend_from_slice(
            b"Cache-Control: no-store, no-cache, no-transform, must-revalidate, max-age=0\r\n",
        );
    }
    cors_fields(out, req);
    if a.status != 204 && a.status != 304 {
        out.extend_from_slice(format!("Content-Length: {}\r\n", a.body.len()).as_bytes());
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if a.status != 204 && a.status != 304 && !req.is_head() {
        out.extend_from_slice(&a.body);
    }
}

/// The credentialed cross-origin fields for the request's `Origin`.
fn cors_fields(out: &mut Vec<u8>, req: &RequestHead) {
    let origin = req
        .fields
        .get("origin")
        .map(http1::trim)
        .filter(|o| !o.is_empty())
        .unwrap_or(b"*");
    out.extend_from_slice(b"Access-Control-Allow-Origin: ");
    out.extend_from_slice(origin);
    out.extend_from_slice(b"\r\nAccess-Control-Allow-Credentials: true\r\n");
}

// ---- the way between cores

/// Where an owner core puts the answer to a request accepted on another
/// core (or its own); the accepting core waits on it.
type Slot = Arc<Mutex<SlotState>>;

#[derive(Default)]
struct SlotState {
    answer: Option<Answer>,
    waker: Option<Waker>,
    /// The client went away: an answer would be lost.
    gone: bool,
}

/// Answers `slot`; false when its client is gone (the answer comes back).
fn fulfil(slot: &Slot, a: Answer) -> Result<(), Answer> {
    let Ok(mut s) = slot.lock() else {
        return Err(a);
    };
    if s.gone {
        return Err(a);
    }
    s.answer = Some(a);
    if let Some(w) = s.waker.take() {
        w.wake();
    }
    Ok(())
}

/// What a request asks of its session's owner.
enum JobKind {
    /// `xhr` / `jsonp`: a poll, opening the session when it is new.
    Poll(Open),
    /// `xhr_send` / `jsonp_send`: messages for the backend.
    Send(Vec<String>),
    /// The client of the held poll answered through `slot` (or of the
    /// stream `Job::stream`) went away.
    Abort,
    /// The stream `Job::stream` polls again for its next frame.
    More,
    /// The stream `Job::stream` ended its response (the client reconnects).
    EndStream,
}

/// How a new HTTP session reaches its backend.
struct Open {
    /// The WebSocket handshake toward the backend, whole.
    handshake: Vec<u8>,
    /// What routing needs to find the route again on the owner core.
    host: Option<String>,
    path: String,
    tls: bool,
    peer: SocketAddr,
}

struct Job {
    session: String,
    callback: Option<String>,
    /// The token of the streaming request this job comes from.
    stream: Option<u64>,
    kind: JobKind,
    slot: Slot,
}

/// One core's queue of jobs, filled by any core.
#[derive(Default)]
struct Inbox {
    jobs: Mutex<VecDeque<Job>>,
    waker: Mutex<Option<Waker>>,
}

type Hub = Arc<Vec<Inbox>>;

/// The inboxes of each server in the process, by its bus.
static HUBS: Mutex<Vec<(usize, Hub)>> = Mutex::new(Vec::new());

fn hub(shard: &Shard) -> Option<Hub> {
    let key = Arc::as_ptr(&shard.bus) as *const () as usize;
    let mut hubs = HUBS.lock().ok()?;
    if let Some((_, h)) = hubs.iter().find(|(k, _)| *k == key) {
        return Some(h.clone());
    }
    let h: Hub = Arc::new((0..shard.bus.cores()).map(|_| Inbox::default()).collect());
    hubs.push((key, h.clone()));
    Some(h)
}

fn send_job(shard: &Shard, owner: usize, job: Job) -> bool {
    let Some(h) = hub(shard) else {
        return false;
    };
    let Some(inbox) = h.get(owner) else {
        return false;
    };
    let Ok(mut q) = inbox.jobs.lock() else {
        return false;
    };
    q.push_back(job);
    drop(q);
    if let Ok(mut w) = inbox.waker.lock() {
        if let Some(w) = w.take() {
            w.wake();
        }
    }
    true
}

/// This core's SockJS job loop: started with the shard, it serves the
/// HTTP sessions this core owns.
pub async fn serve(shard: Rc<Shard>) {
    let Some(h) = hub(&shard) else {
        return;
    };
    let index = shard.index;
    loop {
        let jobs: Vec<Job> = futures_lite::future::poll_fn(|cx| {
            let Some(inbox) = h.get(index) else {
                return Poll::Pending;
            };
            if let Ok(mut w) = inbox.waker.lock() {
                *w = Some(cx.waker().clone());
            }
            match inbox.jobs.lock() {
                Ok(mut q) if !q.is_empty() => Poll::Ready(q.drain(..).collect()),
                _ => Poll::Pending,
            }
        })
        .await;
        for job in jobs {
            on_job(&shard, job);
        }
    }
}

// ---- HTTP sessions, on their owner core

enum Phase {
    /// Waiting for the backend to accept.
    Opening,
    Open,
    /// The backend closed; the next poll gets the close frame.
    Closing(u16, String),
    /// Over: every request gets the close frame until the id is
    /// forgotten, `LINGER` after `at`.
    Closed(u16, String, Instant),
}

struct Held {
    slot: Slot,
    callback: Option<String>,
    since: Instant,
}

struct Session {
    phase: Phase,
    /// Messages from the backend for the client.
    inbound: VecDeque<String>,
    /// The poll waiting for something to answer.
    poll: Option<Held>,
    /// Messages from the client for the backend, and the send to answer
    /// once they are written.
    outbound: Vec<String>,
    send: Option<(Slot, Option<String>)>,
    /// The client abandoned a held poll.
    aborted: bool,
    /// The token of the streaming request receiving for this session, held
    /// between its polls.
    stream: Option<u64>,
    /// When the last poll was answered (a session without a poll for
    /// `LINGER` ends).
    answered: Instant,
    /// The session's task, and whether it has something new to do.
    waker: Option<Waker>,
    nudge: bool,
}

type SessionRef = Rc<RefCell<Session>>;

thread_local! {
    static SESSIONS: RefCell<HashMap<String, SessionRef>> = RefCell::new(HashMap::new());
}

fn wake(s: &mut Session) {
    s.nudge = true;
    if let Some(w) = s.waker.take() {
        w.wake();
    }
}

/// What a held poll is answered with.
enum Give {
    /// Every queued message, `a[...]`.
    Messages,
    Open,
    Heartbeat,
    Close(u16, String),
}

/// Answers the held poll; a poll whose client has gone keeps its
/// messages for the next.
fn answer_poll(s: &mut Session, give: Give) {
    let Some(held) = s.poll.take() else {
        return;
    };
    let taken: Vec<String> = match give {
        Give::Messages => s.inbound.drain(..).collect(),
        _ => Vec::new(),
    };
    let frame = match &give {
        Give::Messages => Frame::Messages(&taken),
        Give::Open => Frame::Open,
        Give::Heartbeat => Frame::Heartbeat,
        Give::Close(code, reason) => Frame::Close(*code, reason),
    };
    let a = Answer::frame(held.callback.as_deref(), &frame);
    s.answered = Instant::now();
    if fulfil(&held.slot, a).is_err() {
        for m in taken.into_iter().rev() {
            s.inbound.push_front(m);
        }
    }
}

fn close_frame_answer(callback: Option<&str>, code: u16, reason: &str) -> Answer {
    Answer::frame(callback, &Frame::Close(code, reason))
}

fn on_job(shard: &Rc<Shard>, job: Job) {
    let found = SESSIONS.with(|m| {
        let mut m = m.borrow_mut();
        let expired = m.get(&job.session).is_some_and(
            |s| matches!(s.borrow().phase, Phase::Closed(_, _, at) if at.elapsed() >= LINGER),
        );
        if expired {
            m.remove(&job.session);
        }
        m.get(&job.session).cloned()
    });
    let cb = job.callback.as_deref();
    let Some(sref) = found else {
        match job.kind {
            JobKind::Poll(open) => {
                let s = Rc::new(RefCell::new(Session {
                    phase: Phase::Opening,
                    inbound: VecDeque::new(),
                    poll: Some(Held {
                        slot: job.slot,
                        callback: job.callback,
                        since: Instant::now(),
                    }),
                    outbound: Vec::new(),
                    send: None,
                    aborted: false,
                    stream: job.stream,
                    answered: Instant::now(),
                    waker: None,
                    nudge: false,
                }));
                SESSIONS.with(|m| m.borrow_mut().insert(job.session.clone(), s.clone()));
                glommio::spawn_local(session_task(shard.clone(), job.session, open, s)).detach();
            }
            JobKind::Send(_) | JobKind::More => {
                let _ = fulfil(&job.slot, Answer::text(404, "Not Found"));
            }
            JobKind::Abort | JobKind::EndStream => {}
        }
        return;
    };
    let mut s = sref.borrow_mut();
    if let Phase::Closed(code, reason, _) = &s.phase {
        if !matches!(job.kind, JobKind::Abort | JobKind::EndStream) {
            let _ = fulfil(&job.slot, close_frame_answer(cb, *code, reason));
        }
        return;
    }
    match job.kind {
        JobKind::Poll(_) | JobKind::More => {
            let mine =
                matches!(job.kind, JobKind::More) && job.stream.is_some() && s.stream == job.stream;
            let busy = if mine {
                s.poll.is_some()
            } else {
                matches!(s.phase, Phase::Opening) || s.poll.is_some() || s.stream.is_some()
            };
            if busy {
                let a = close_frame_answer(cb, 2010, "Another connection still open");
                let _ = fulfil(&job.slot, a);
                return;
            }
            if job.stream.is_some() {
                s.stream = job.stream;
            }
            s.poll = Some(Held {
                slot: job.slot,
                callback: job.callback,
                since: Instant::now(),
            });
            if !s.inbound.is_empty() {
                answer_poll(&mut s, Give::Messages);
            } else if let Phase::Closing(code, reason) = &s.phase {
                let (code, reason) = (*code, reason.clone());
                answer_poll(&mut s, Give::Close(code, reason.clone()));
                s.phase = Phase::Closed(code, reason, Instant::now());
            }
            wake(&mut s);
        }
        JobKind::Send(msgs) => {
            if !matches!(s.phase, Phase::Open) {
                let _ = fulfil(&job.slot, Answer::text(404, "Not Found"));
            } else if s.send.is_some() {
                let _ = fulfil(&job.slot, Answer::text(400, "Already sending"));
            } else if msgs.is_empty() {
                let _ = fulfil(&job.slot, Answer::ok(cb));
            } else {
                s.outbound = msgs;
                s.send = Some((job.slot, job.callback));
                wake(&mut s);
            }
        }
        JobKind::Abort => {
            let held = s
                .poll
                .as_ref()
                .is_some_and(|h| Arc::ptr_eq(&h.slot, &job.slot));
            let streaming = job.stream.is_some() && s.stream == job.stream;
            if held || streaming {
                if held {
                    s.poll = None;
                }
                s.stream = None;
                s.aborted = true;
                wake(&mut s);
            }
        }
        JobKind::EndStream => {
            if job.stream.is_some() && s.stream == job.stream {
                s.stream = None;
                s.answered = Instant::now();
                wake(&mut s);
            }
        }
    }
}

/// A random `Sec-WebSocket-Key`.
fn new_key() -> String {
    use base64::Engine;
    let mut k = [0u8; 16];
    let _ = getrandom::getrandom(&mut k);
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn mask() -> [u8; 4] {
    let mut m = [0u8; 4];
    let _ = getrandom::getrandom(&mut m);
    m
}

fn parse_head(raw: &[u8]) -> Option<RequestHead> {
    let limits = HeadLimits {
        max_head_bytes: raw.len() + 1,
        max_headers: http1::MAX_HEADERS_CEILING,
        max_uri_bytes: raw.len(),
    };
    match http1::parse_request(raw, &limits) {
        Ok(Some((n, h))) if n == raw.len() => Some(h),
        _ => None,
    }
}

/// Starts the WebSocket server for `head` on one end of a new socket
/// pair, as if a client had connected from `peer`; returns the other end.
fn bridge(
    shard: &Rc<Shard>,
    head: RequestHead,
    route: Route,
    mode: WsMode,
    peer: SocketAddr,
) -> Option<Connection> {
    use std::os::fd::IntoRawFd;
    let (a, b) = std::os::unix::net::UnixStream::pair().ok()?;
    a.set_nonblocking(true).ok()?;
    b.set_nonblocking(true).ok()?;
    // SAFETY: each descriptor is a fresh socket owned by nothing else;
    // its ownership moves into the glommio stream.
    let (a, b) = unsafe {
        (
            <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(a.into_raw_fd()),
            <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(b.into_raw_fd()),
        )
    };
    let inner = Connection::tcp(a, shard.bufs.clone());
    let guard = shard.register(inner.raw_fd());
    let mut c = Client {
        state: guard.state(),
        guard,
        conn: inner,
        peer,
        dropin: None,
        log_level: None,
    };
    let s = shard.clone();
    glommio::spawn_local(async move {
        let _ = crate::conn::ws::handle(&s, &mut c, &head, &route, mode).await;
        c.conn.close().await;
    })
    .detach();
    Some(Connection::tcp(b, shard.bufs.clone()))
}

/// The backend's answer to the bridged handshake: `Ok` for a 101, else
/// the refusal to pass on (status, content type, body).
async fn opened(shard: &Shard, ours: &mut Connection) -> Result<ResponseHead, Answer> {
    let limits = &shard.cfg.limits.head;
    let resp = ours
        .read_head(limits.max_head_bytes, None, |b| {
            http1::parse_response(b, limits, false)
        })
        .await
        .map_err(|_| Answer::text(502, "Bad Gateway"))?;
    if resp.status == 101 {
        return Ok(resp);
    }
    let mut body = Vec::new();
    let (mut prefix, mut out) = (Vec::new(), Vec::new());
    let _ = Relay {
        prefix: &mut prefix,
        out: &mut out,
        limit: codec::MAX_BODY as u64,
    }
    .run(ours, &mut body, resp.body, OutFraming::Raw)
    .await;
    let ct = resp.fields.get("content-type").unwrap_or(b"");
    let content_type = if ct.starts_with(b"text/html") {
        "text/html"
    } else if ct.starts_with(b"application/json") {
        "application/json"
    } else {
        TEXT
    };
    Err(Answer {
        status: resp.status,
        content_type,
        body,
        extra: Vec::new(),
    })
}

/// Frames the backend side sent, read from `ours`.
fn frames(ours: &mut Connection, reader: &mut Reader) -> Result<Vec<Received>, ()> {
    let mut out = Vec::new();
    loop {
        let (n, ev) = reader.read(ours.input()).map_err(|_| ())?;
        ours.consume(n);
        match ev {
            Some(e) => out.push(e),
            None if n == 0 || !ours.has_input() => return Ok(out),
            None => {}
        }
    }
}

/// What woke a session.
enum Woke {
    Backend,
    BackendGone,
    Nudged,
    Timer,
}

/// Waits for the backend side (while `live`), a nudge, or `deadline`.
async fn wait_session(
    ours: &mut Connection,
    live: bool,
    s: &SessionRef,
    deadline: Instant,
) -> Woke {
    let mut timer = glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()));
    futures_lite::future::poll_fn(|cx| {
        {
            let mut st = s.borrow_mut();
            if std::mem::take(&mut st.nudge) {
                return Poll::Ready(Woke::Nudged);
            }
            st.waker = Some(cx.waker().clone());
        }
        if live {
            match ours.poll_fill(cx, MAX_FRAME + BUF_SIZE) {
                Poll::Ready(Ok(n)) if n > 0 => return Poll::Ready(Woke::Backend),
                Poll::Ready(_) => return Poll::Ready(Woke::BackendGone),
                Poll::Pending => {}
            }
        }
        if std::pin::Pin::new(&mut timer).poll(cx).is_ready() {
            return Poll::Ready(Woke::Timer);
        }
        Poll::Pending
    })
    .await
}

fn fail_open(id: &str, s: &SessionRef, a: Answer) {
    let held = s.borrow_mut().poll.take();
    if let Some(h) = held {
        let _ = fulfil(&h.slot, a);
    }
    SESSIONS.with(|m| {
        let mut m = m.borrow_mut();
        if m.get(id).is_some_and(|x| Rc::ptr_eq(x, s)) {
            m.remove(id);
        }
    });
}

/// One HTTP session on its owner core: opens the backend side, then
/// moves messages both ways until either side ends.
async fn session_task(shard: Rc<Shard>, id: String, open: Open, s: SessionRef) {
    let routes = shard.routes();
    let route = routes
        .select_tls(open.host.as_deref(), &open.path, false, open.tls)
        .filter(|r| r.sockjs.is_some())
        .cloned();
    let head = parse_head(&open.handshake);
    let (Some(route), Some(head)) = (route, head) else {
        return fail_open(&id, &s, Answer::text(404, "Not Found"));
    };
    let max = shard.cfg.limits.max_request_body;
    let mode = match decide_routed(Some(&route), &head, true, max) {
        Dispatch::WebSocket(_, mode) => mode,
        Dispatch::Refuse { status, reason } | Dispatch::BadHandshake { status, reason } => {
            return fail_open(&id, &s, Answer::text(status, reason));
        }
        _ => return fail_open(&id, &s, Answer::text(502, "Bad Gateway")),
    };
    let Some(mut ours) = bridge(&shard, head, route, mode, open.peer) else {
        return fail_open(&id, &s, Answer::text(502, "Bad Gateway"));
    };
    if let Err(a) = opened(&shard, &mut ours).await {
        return fail_open(&id, &s, a);
    }
    {
        let mut st = s.borrow_mut();
        st.phase = Phase::Open;
        answer_poll(&mut st, Give::Open);
    }
    let mut reader = Reader::new(Role::Client, MAX_FRAME);
    s.borrow_mut().nudge = true;
    loop {
        // `live`: the backend side can still be read (not closed, not gone).
        let (deadline, live) = {
            let st = s.borrow();
            if matches!(st.phase, Phase::Closed(..)) {
                break;
            }
            let deadline = match &st.poll {
                Some(h) => h.since + HEARTBEAT,
                None => st.answered + LINGER,
            };
            (deadline, matches!(st.phase, Phase::Open))
        };
        let woke = wait_session(&mut ours, live, &s, deadline).await;
        let mut out = Vec::new();
        let send = {
            let mut st = s.borrow_mut();
            match woke {
                Woke::Backend => match frames(&mut ours, &mut reader) {
                    Ok(evs) => {
                        for ev in evs {
                            match ev {
                                Received::Message(_, d) => st
                                    .inbound
                                    .push_back(String::from_utf8_lossy(&d).into_owned()),
                                Received::Ping(p) => {
                                    ws::write_frame(&mut out, true, Opcode::Pong, &p, Some(mask()))
                                }
                                Received::Pong(_) => {}
                                Received::Close(code, reason) => {
                                    ws::write_close(&mut out, code, "", Some(mask()));
                                    let code = if code == 1005 { 0 } else { code };
                                    let reason = if reason.is_empty() {
                                        "Connection closed".to_string()
                                    } else {
                                        reason
                                    };
                                    st.phase = Phase::Closing(code, reason);
                                    break;
                                }
                            }
                        }
                    }
                    Err(()) => st.phase = Phase::Closing(1002, "Protocol error".into()),
                },
                Woke::BackendGone => {
                    if matches!(st.phase, Phase::Open) {
                        st.phase = Phase::Closing(1006, "Connection closed".into());
                    }
                }
                Woke::Nudged => {}
                Woke::Timer => {
                    if st
                        .poll
                        .as_ref()
                        .is_some_and(|h| h.since + HEARTBEAT <= Instant::now())
                    {
                        answer_poll(&mut st, Give::Heartbeat);
                    } else if st.poll.is_none() && st.answered + LINGER <= Instant::now() {
                        // No poll in time: the session ends; the backend sees
                        // its client go.
                        debug!("core {}: SockJS session {id} timed out", shard.index);
                        st.phase = Phase::Closed(1000, "Session timed out".into(), Instant::now());
                    }
                }
            }
            if st.aborted {
                st.aborted = false;
                ws::write_close(&mut out, 1000, "", Some(mask()));
                st.phase = Phase::Closed(
                    3000,
                    "Client already closed connection".into(),
                    Instant::now(),
                );
            }
            if !st.outbound.is_empty() && matches!(st.phase, Phase::Open) {
                for m in st.outbound.drain(..) {
                    ws::write_frame(&mut out, true, Opcode::Text, m.as_bytes(), Some(mask()));
                }
            }
            if st.poll.is_some() && !st.inbound.is_empty() {
                answer_poll(&mut st, Give::Messages);
            }
            if st.poll.is_some() {
                if let Phase::Closing(code, reason) = &st.phase {
                    let (code, reason) = (*code, reason.clone());
                    answer_poll(&mut st, Give::Close(code, reason.clone()));
                    st.phase = Phase::Closed(code, reason, Instant::now());
                }
            }
            if out.is_empty() {
                st.send.take()
            } else {
                None
            }
        };
        if !out.is_empty() {
            let written = ours.write_all(&out).await.is_ok();
            let mut st = s.borrow_mut();
            if let Some((slot, cb)) = st.send.take() {
                let a = if written {
                    Answer::ok(cb.as_deref())
                } else {
                    Answer::text(404, "Not Found")
                };
                let _ = fulfil(&slot, a);
            }
            if !written && matches!(st.phase, Phase::Open) {
                st.phase = Phase::Closing(1006, "Connection closed".into());
                st.nudge = true;
            }
        } else if let Some((slot, cb)) = send {
            // A send that found the session closing.
            let _ = fulfil(&slot, Answer::ok(cb.as_deref()));
        }
    }
    ours.close().await;
    drop(ours);
    // The close frame stays for late requests, then the id is forgotten.
    glommio::timer::sleep(LINGER).await;
    SESSIONS.with(|m| {
        let mut m = m.borrow_mut();
        if m.get(&id).is_some_and(|x| Rc::ptr_eq(x, &s)) {
            m.remove(&id);
        }
    });
}

// ---- on the accepting core

fn keep(shard: &Shard, head: &RequestHead) -> bool {
    head.keep_alive && !shard.draining()
}

async fn respond(
    shard: &Shard,
    c: &mut Client,
    head: &RequestHead,
    a: &Answer,
    cache: bool,
) -> Outcome {
    let keep = keep(shard, head);
    let mut out = Vec::with_capacity(256 + a.body.len());
    write_answer(&mut out, head, a, keep, cache);
    let ok = c.conn.write_all(&out).await.is_ok();
    Outcome {
        status: a.status,
        bytes: a.body.len() as u64,
        target: "-".into(),
        keep_alive: ok && keep,
    }
}

/// The backend target a session's WebSocket is opened on: `sockjs_as_path`
/// or `websocket_default`, with the request's query.
fn backend_target(route: &Route, default: String, head: &RequestHead) -> String {
    let mut t = route.sockjs_as_path.clone().unwrap_or(default);
    if let Some(q) = head.query() {
        t.push('?');
        t.push_str(q);
    }
    t
}

/// Serves a request under `route`'s SockJS prefix (`path` the rest).
pub async fn handle(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
    path: &str,
) -> Outcome {
    let prefix = route.sockjs.clone().unwrap_or_default();
    let upgrade = crate::route::is_websocket(head);
    match codec::classify(head.method(), path, upgrade) {
        Url::Raw | Url::Framed { .. } => {
            let target = backend_target(route, format!("{prefix}/websocket"), head);
            let raw = codec::handshake(&target, head.fields.iter(), None);
            let framed = matches!(
                codec::classify(head.method(), path, upgrade),
                Url::Framed { .. }
            );
            return Box::pin(websocket(shard, c, head, route, &raw, framed)).await;
        }
        Url::NotFound => return not_found(shard, c, head).await,
        Url::Options => {
            let mut a = Answer::text(204, "");
            a.body.clear();
            a.extra = b"Access-Control-Allow-Methods: OPTIONS, GET, POST\r\nAccess-Control-Max-Age: 31536000\r\n".to_vec();
            if let Some(h) = head.fields.get("access-control-request-headers") {
                a.extra.extend_from_slice(b"Access-Control-Allow-Headers: ");
                a.extra.extend_from_slice(http1::trim(h));
                a.extra.extend_from_slice(b"\r\n");
            }
            return respond(shard, c, head, &a, false).await;
        }
        Url::Info => {
            let mut e = [0u8; 4];
            let _ = getrandom::getrandom(&mut e);
            let a = Answer {
                status: 200,
                content_type: "application/json; charset=UTF-8",
                body: codec::info_body(u32::from_ne_bytes(e)),
                extra: Vec::new(),
            };
            return respond(shard, c, head, &a, false).await;
        }
        Url::Iframe => {
            let Some((page, etag)) = codec::iframe_page(&shard.cfg.sockjs_url) else {
                return not_found(shard, c, head).await;
            };
            let extra = format!("ETag: {etag}\r\nCache-Control: public, max-age=31536000\r\n");
            let fresh = head
                .fields
                .get("if-none-match")
                .is_some_and(|v| http1::trim(v) == etag.as_bytes());
            let a = Answer {
                status: if fresh { 304 } else { 200 },
                content_type: "text/html; charset=UTF-8",
                body: if fresh { Vec::new() } else { page },
                extra: extra.into_bytes(),
            };
            return respond(shard, c, head, &a, true).await;
        }
        Url::Session { session, transport } => {
            Box::pin(http_transport(
                shard, c, head, route, &prefix, session, transport,
            ))
            .await
        }
    }
}

async fn not_found(shard: &Shard, c: &mut Client, head: &RequestHead) -> Outcome {
    let keep = keep(shard, head) && head.body == BodyKind::Empty;
    let a = Answer::text(404, "Not Found");
    let mut out = Vec::new();
    write_answer(&mut out, head, &a, keep, false);
    let ok = c.conn.write_all(&out).await.is_ok();
    Outcome {
        status: 404,
        bytes: a.body.len() as u64,
        target: "-".into(),
        keep_alive: ok && keep,
    }
}

/// The first value of `name` in `query`.
fn query_value(query: Option<&str>, name: &str) -> Option<Result<String, ()>> {
    let v = codec::form_value(query?.as_bytes(), name)?;
    Some(v.and_then(|b| String::from_utf8(b).map_err(|_| ())))
}

#[allow(clippy::too_many_arguments)]
async fn http_transport(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
    prefix: &str,
    session: &str,
    transport: Transport,
) -> Outcome {
    // The request body, whole (a poll's is empty).
    let mut body = Vec::new();
    if head.body != BodyKind::Empty {
        if matches!(head.body, BodyKind::Length(n) if n > codec::MAX_BODY as u64) {
            return too_large(c, head).await;
        }
        if head.expect_continue && c.conn.write_all(heads::CONTINUE).await.is_err() {
            return closed(400);
        }
        let (mut prefix_buf, mut out) = (Vec::new(), Vec::new());
        c.conn
            .set_read_timeout(Some(shard.cfg.timeouts.client_body));
        let r = Relay {
            prefix: &mut prefix_buf,
            out: &mut out,
            limit: codec::MAX_BODY as u64,
        }
        .run(&mut c.conn, &mut body, head.body, OutFraming::Raw)
        .await;
        if r.is_err() {
            return too_large(c, head).await;
        }
    }
    // The JSON-P callback: `c` (sockjs-client) or `callback`, checked.
    let callback =
        match query_value(head.query(), "c").or_else(|| query_value(head.query(), "callback")) {
            Some(Ok(cb)) if codec::valid_callback(&cb) => Some(cb),
            Some(_) => {
                return respond(
                    shard,
                    c,
                    head,
                    &Answer::text(400, "invalid \"callback\" parameter"),
                    false,
                )
                .await
            }
            None if transport == Transport::Jsonp || transport == Transport::HtmlFile => {
                return respond(
                    shard,
                    c,
                    head,
                    &Answer::text(400, "\"callback\" parameter required"),
                    false,
                )
                .await
            }
            None => None,
        };
    // htmlfile's callback names the page's parent, not a JSON-P wrapper.
    let page_callback = callback
        .clone()
        .filter(|_| transport == Transport::HtmlFile);
    let callback = callback.filter(|_| transport.is_jsonp());
    let kind = if transport.is_send() {
        let payload = if transport == Transport::JsonpSend {
            codec::jsonp_send_payload(head.fields.get("content-type"), &body)
        } else {
            Ok(body)
        };
        match payload.and_then(|p| codec::messages(&p)) {
            Ok(m) => JobKind::Send(m),
            Err(e) => return respond(shard, c, head, &Answer::text(400, e.message()), false).await,
        }
    } else {
        let target = backend_target(route, prefix.to_string(), head);
        JobKind::Poll(Open {
            handshake: codec::handshake(&target, head.fields.iter(), Some(&new_key())),
            host: head.host().map(str::to_string),
            path: head.path().to_string(),
            tls: c.conn.is_tls(),
            peer: c.peer,
        })
    };
    let is_poll = matches!(kind, JobKind::Poll(_));
    let slot: Slot = Arc::new(Mutex::new(SlotState::default()));
    let owner = codec::owner(session, shard.bus.cores());
    let stream = transport.is_streaming().then(new_stream_token);
    let job = Job {
        session: session.to_string(),
        callback: callback.clone(),
        stream,
        kind,
        slot: slot.clone(),
    };
    if !send_job(shard, owner, job) {
        return respond(
            shard,
            c,
            head,
            &Answer::text(503, "Service Unavailable"),
            false,
        )
        .await;
    }
    if let Some(token) = stream {
        let st = Stream {
            transport,
            session,
            owner,
            token,
            page_callback: page_callback.as_deref(),
        };
        return streaming(shard, c, head, &st, slot).await;
    }
    match wait_answer(&slot, c).await {
        Some(a) => respond(shard, c, head, &a, false).await,
        None => {
            // The client left while its request waited: the session
            // treats an abandoned poll as the client closing.
            if is_poll {
                let _ = send_job(
                    shard,
                    owner,
                    Job {
                        session: session.to_string(),
                        callback: None,
                        stream: None,
                        kind: JobKind::Abort,
                        slot,
                    },
                );
            }
            closed(499)
        }
    }
}

/// A token naming one streaming request to its session.
fn new_stream_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One streaming request (`xhr_streaming`, `eventsource` or `htmlfile`).
struct Stream<'a> {
    transport: Transport,
    session: &'a str,
    owner: usize,
    token: u64,
    /// `htmlfile`: the callback its page calls.
    page_callback: Option<&'a str>,
}

impl Stream<'_> {
    fn job(&self, kind: JobKind, slot: Slot) -> Job {
        Job {
            session: self.session.to_string(),
            callback: None,
            stream: Some(self.token),
            kind,
            slot,
        }
    }
}

/// Serves a streaming request whose first poll waits in `slot`: each
/// frame the session answers goes out as the next piece of one response,
/// until a close frame or `codec::STREAM_LIMIT` bytes.
async fn streaming(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    st: &Stream<'_>,
    mut slot: Slot,
) -> Outcome {
    // HTTP/1.1 gets a chunked body (the connection can be kept);
    // HTTP/1.0 a body ended by closing.
    let chunked = head.version == http1::Version::Http11;
    let keep = chunked && keep(shard, head);
    let mut sent: usize = 0;
    let mut started = false;
    let outcome = |sent: usize, keep_alive: bool| Outcome {
        status: 200,
        bytes: sent as u64,
        target: "-".into(),
        keep_alive,
    };
    loop {
        let Some(a) = wait_answer(&slot, c).await else {
            let _ = send_job(shard, st.owner, st.job(JobKind::Abort, slot));
            return Outcome {
                status: if started { 200 } else { 499 },
                ..outcome(sent, false)
            };
        };
        let frame = match a.body.strip_suffix(b"\n") {
            Some(f) if a.status == 200 && a.content_type == JS => f,
            // Not a frame (the session could not open): the answer as is.
            _ if !started => {
                let _ = send_job(shard, st.owner, st.job(JobKind::EndStream, slot));
                return respond(shard, c, head, &a, false).await;
            }
            _ => b"c[1011,\"Server error\"]".as_slice(),
        };
        let mut body = Vec::new();
        if !started {
            body = match st.page_callback {
                Some(cb) => codec::htmlfile_page(cb),
                None => codec::stream_prelude(st.transport),
            };
        }
        codec::stream_chunk(&mut body, st.transport, frame);
        sent += body.len();
        let last = frame.starts_with(b"c") || sent >= codec::STREAM_LIMIT;
        let mut out = Vec::with_capacity(body.len() + 512);
        if !started {
            started = true;
            write_stream_head(&mut out, head, st.transport, chunked, keep);
        }
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(b"\r\n");
            if last {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            out.extend_from_slice(&body);
        }
        if last && !frame.starts_with(b"c") {
            // The limit: the session waits for the client's next request.
            let _ = send_job(shard, st.owner, st.job(JobKind::EndStream, slot.clone()));
        }
        if c.conn.write_all(&out).await.is_err() {
            let _ = send_job(shard, st.owner, st.job(JobKind::Abort, slot));
            return outcome(sent, false);
        }
        if last {
            return outcome(sent, keep);
        }
        slot = Arc::new(Mutex::new(SlotState::default()));
        if !send_job(shard, st.owner, st.job(JobKind::More, slot.clone())) {
            return outcome(sent, false);
        }
    }
}

/// The head of a streaming response: its content type, no caching, the
/// same cross-origin fields as every SockJS answer.
fn write_stream_head(
    out: &mut Vec<u8>,
    req: &RequestHead,
    t: Transport,
    chunked: bool,
    keep: bool,
) {
    let ct = match t {
        Transport::EventSource => "text/event-stream; charset=UTF-8",
        Transport::HtmlFile => "text/html; charset=UTF-8",
        _ => JS,
    };
    out.extend_from_slice(format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\n").as_bytes());
    out.extend_from_slice(
        b"Cache-Control: no-store, no-cache, no-transform, must-revalidate, max-age=0\r\n",
    );
    cors_fields(out, req);
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Waits for the owner's answer in `slot`; `None` when the client closes
/// its connection first.
async fn wait_answer(slot: &Slot, c: &mut Client) -> Option<Answer> {
    futures_lite::future::poll_fn(|cx| {
        if let Ok(mut s) = slot.lock() {
            if let Some(a) = s.answer.take() {
                return Poll::Ready(Some(a));
            }
            s.waker = Some(cx.waker().clone());
        }
        // Pipelined bytes wait in the buffer; an end of stream is the
        // client leaving.
        while c.conn.input_len() < 64 * 1024 {
            match c.conn.poll_fill(cx, 64 * 1024) {
                Poll::Ready(Ok(n)) if n > 0 => continue,
                Poll::Ready(_) => {
                    if let Ok(mut s) = slot.lock() {
                        if let Some(a) = s.answer.take() {
                            return Poll::Ready(Some(a));
                        }
                        s.gone = true;
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

// ---- WebSocket transports, on the socket's core

/// An exchange that ends the connection, with nothing relayed.
fn closed(status: u16) -> Outcome {
    Outcome::closed(status, 0, "-".into())
}

/// Refuses a request body over `codec::MAX_BODY` and ends the connection.
async fn too_large(c: &mut Client, head: &RequestHead) -> Outcome {
    let a = Answer::text(400, "Request too large.");
    let mut out = Vec::new();
    write_answer(&mut out, head, &a, false, false);
    let _ = c.conn.write_all(&out).await;
    closed(400)
}

/// A `websocket` transport: the raw one (`framed` false) is the route's
/// WebSocket on another path; the framed one carries SockJS frames.
async fn websocket(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
    raw: &[u8],
    framed: bool,
) -> Outcome {
    let Some(inner) = parse_head(raw) else {
        return closed(400);
    };
    let max = shard.cfg.limits.max_request_body;
    let mode = match decide_routed(Some(route), &inner, true, max) {
        Dispatch::WebSocket(_, mode) => mode,
        Dispatch::Refuse { status, reason } | Dispatch::BadHandshake { status, reason } => {
            let mut out = Vec::new();
            http1::write_simple_response(&mut out, status, reason, true);
            let _ = c.conn.write_all(&out).await;
            return closed(status);
        }
        _ => return closed(502),
    };
    c.conn.set_read_timeout(None);
    if !framed {
        return match Box::pin(crate::conn::ws::handle(shard, c, &inner, route, mode)).await {
            crate::conn::grip::HoldEnd::Done(o) => o,
            crate::conn::grip::HoldEnd::Retry(_) | crate::conn::grip::HoldEnd::Held(_) => {
                closed(502)
            }
        };
    }
    let Some(mut ours) = bridge(shard, inner, route.clone(), mode, c.peer) else {
        return closed(502);
    };
    let resp = match opened(shard, &mut ours).await {
        Ok(r) => r,
        Err(a) => {
            let mut out = Vec::new();
            write_answer(&mut out, head, &a, false, false);
            let _ = c.conn.write_all(&out).await;
            return closed(a.status);
        }
    };
    let protocol = resp
        .fields
        .get("sec-websocket-protocol")
        .map(<[u8]>::to_vec);
    let mut out = crate::codec::wshandshake::switching(head, protocol.as_deref(), None);
    ws::write_frame(&mut out, true, Opcode::Text, b"o", None);
    if c.conn.write_all(&out).await.is_err() {
        return closed(101);
    }
    let mut from_client = Reader::new(Role::Server, MAX_FRAME);
    let mut from_backend = Reader::new(Role::Client, MAX_FRAME);
    let mut beat = Instant::now() + HEARTBEAT;
    loop {
        let io = if c.conn.has_input() {
            Io::Client
        } else {
            let up = Some(&mut ours);
            wait_for(c, up, None, Some(beat), MAX_FRAME + BUF_SIZE).await
        };
        let (mut to_client, mut to_backend) = (Vec::new(), Vec::new());
        let mut end = false;
        match io {
            Io::Client => {
                let mut evs = Vec::new();
                loop {
                    match from_client.read(c.conn.input()) {
                        Ok((n, ev)) => {
                            c.conn.consume(n);
                            match ev {
                                Some(e) => evs.push(e),
                                None if n == 0 || !c.conn.has_input() => break,
                                None => {}
                            }
                        }
                        Err(_) => {
                            end = true;
                            break;
                        }
                    }
                }
                for ev in evs {
                    match ev {
                        Received::Message(_, d) => match codec::ws_messages(&d) {
                            Ok(msgs) => {
                                for m in msgs {
                                    ws::write_frame(
                                        &mut to_backend,
                                        true,
                                        Opcode::Text,
                                        m.as_bytes(),
                                        Some(mask()),
                                    );
                                }
                            }
                            Err(_) => {
                                // Broken SockJS framing: the session ends.
                                ws::write_close(&mut to_client, 1002, "Broken framing.", None);
                                end = true;
                                break;
                            }
                        },
                        Received::Ping(p) => {
                            ws::write_frame(&mut to_client, true, Opcode::Pong, &p, None)
                        }
                        Received::Pong(_) => {}
                        Received::Close(code, reason) => {
                            let code = if code == 1005 { 1000 } else { code };
                            ws::write_close(&mut to_backend, code, &reason, Some(mask()));
                            ws::write_close(&mut to_client, code, "", None);
                            end = true;
                            break;
                        }
                    }
                }
            }
            Io::Backend => match frames(&mut ours, &mut from_backend) {
                Ok(evs) => {
                    for ev in evs {
                        match ev {
                            Received::Message(_, d) => {
                                let m = [String::from_utf8_lossy(&d).into_owned()];
                                let mut f = Vec::new();
                                codec::encode(&mut f, &Frame::Messages(&m));
                                ws::write_frame(&mut to_client, true, Opcode::Text, &f, None);
                            }
                            Received::Ping(p) => ws::write_frame(
                                &mut to_backend,
                                true,
                                Opcode::Pong,
                                &p,
                                Some(mask()),
                            ),
                            Received::Pong(_) => {}
                            Received::Close(code, reason) => {
                                let code = if code == 1005 { 1000 } else { code };
                                ws::write_close(&mut to_client, code, &reason, None);
                                ws::write_close(&mut to_backend, code, "", Some(mask()));
                                end = true;
                                break;
                            }
                        }
                    }
                }
                Err(()) => {
                    ws::write_close(&mut to_client, 1011, "upstream went away", None);
                    end = true;
                }
            },
            Io::ClientGone => end = true,
            Io::BackendGone => {
                ws::write_close(&mut to_client, 1011, "upstream went away", None);
                end = true;
            }
            Io::Timer => {
                ws::write_frame(&mut to_client, true, Opcode::Text, b"h", None);
                beat = Instant::now() + HEARTBEAT;
            }
            // No subscription is waited on here.
            Io::Sub(_) | Io::Dropped => {}
        }
        if !to_backend.is_empty() && ours.write_all(&to_backend).await.is_err() {
            if !end {
                ws::write_close(&mut to_client, 1011, "upstream went away", None);
            }
            end = true;
        }
        if !to_client.is_empty() && c.conn.write_all(&to_client).await.is_err() {
            end = true;
        }
        if end {
            break;
        }
    }
    ours.close().await;
    c.conn.close().await;
    closed(101)
}
