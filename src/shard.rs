//! One core's world: its listeners, its connections, its upstream pool, its
//! buffers and counters. Everything here is `Rc`/`Cell`: a shard is never
//! touched by another thread. Shards hear from the outside (signals,
//! reloads, drains, publishes from other cores) through a wake socket.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream, UnixStream};
use glommio::{Latency, Shares};

use crate::buf::BufPool;
use crate::bus::{Bus, CoreInbox};
use crate::config::{Config, Level};
use crate::connection::Connection;
use crate::log::{AccessEntry, AccessLog};
use crate::route::Routes;
use crate::stats::{Board, Counters, Snapshot};
use crate::subs::{HoldKind, QueueLimits, Registry};
use crate::upstream::Pool;
use crate::wake::{Command, Kick, Refresh};
use crossbeam_channel::Receiver;

/// What the shard knows of one open connection, shared with its task.
#[derive(Default)]
pub struct ConnState {
    /// Waiting for a new request (safe to close at a drain).
    idle: Cell<bool>,
    /// The shutdown grace is over: a request still waiting for its
    /// response is answered 503 now.
    cut: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl ConnState {
    /// Resolves once the shutdown grace period is over (never otherwise).
    pub async fn grace_over(&self) {
        futures_lite::future::poll_fn(|cx| self.poll_grace_over(cx)).await
    }

    /// Ready once the shutdown grace period is over; until then the task
    /// of `cx` is woken when it ends.
    pub fn poll_grace_over(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.cut.get() {
            return Poll::Ready(());
        }
        let mut w = self.waker.borrow_mut();
        if !w.as_ref().is_some_and(|old| old.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn cut_off(&self) {
        self.cut.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A Connection-Id, `TIME-CORE-N` (nanoseconds since the epoch in hex when
/// the core made its first id, the core, the core's count of ids in hex),
/// kept as its parts and written out on the stack by [`ConnId::text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    nanos: u64,
    core: usize,
    n: u64,
}

/// The longest Connection-Id: 16 hex digits, 20 decimal, 16 hex, two dashes.
const CONN_ID_MAX: usize = 54;

/// A Connection-Id's text, on the stack.
pub struct ConnIdText {
    buf: [u8; CONN_ID_MAX],
    len: usize,
}

impl ConnIdText {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and dashes are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// `v` in `BASE` (10 or 16); a constant base, so no division
    /// instruction per digit.
    fn push_digits<const BASE: u64>(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(v % BASE) as usize];
            v /= BASE;
            if v == 0 {
                break;
            }
        }
        let d = &digits[i..];
        self.buf[self.len..self.len + d.len()].copy_from_slice(d);
        self.len += d.len();
    }
}

impl ConnId {
    pub fn text(&self) -> ConnIdText {
        let mut t = ConnIdText {
            buf: [0; CONN_ID_MAX],
            len: 0,
        };
        t.push_digits::<16>(self.nanos);
        t.buf[t.len] = b'-';
        t.len += 1;
        t.push_digits::<10>(self.core as u64);
        t.buf[t.len] = b'-';
        t.len += 1;
        t.push_digits::<16>(self.n);
        t
    }
}

/// One open connection: its socket and its state.
struct ConnEntry {
    fd: RawFd,
    state: Rc<ConnState>,
}

/// Open connections of this shard, so a drain can close the idle ones.
#[derive(Default)]
pub struct Conns {
    next: Cell<u64>,
    /// Connection-Ids made, and the wall clock (ns) at the first (0: none
    /// yet): the ids are unique by their count, across restarts by the time.
    ids: Cell<u64>,
    ids_since: Cell<u64>,
    map: RefCell<HashMap<u64, ConnEntry>>,
}

/// Registration of one connection; removed on drop.
pub struct ConnGuard {
    id: u64,
    state: Rc<ConnState>,
    shard: Rc<Shard>,
}

impl ConnGuard {
    /// Marks the connection as waiting for a new request (safe to close).
    pub fn set_idle(&self, idle: bool) {
        self.state.idle.set(idle);
    }

    /// The state shared with the shard (for `ConnState::grace_over`).
    pub fn state(&self) -> Rc<ConnState> {
        self.state.clone()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shard.conns.map.borrow_mut().remove(&self.id);
    }
}

/// The process-wide cap on open client connections
/// (`limits.max_connections`), shared by every core: one atomic add per
/// accepted connection, none per request.
pub struct ConnLimit {
    pub max: usize,
    open: AtomicUsize,
    /// Refused connections each core may keep lingering (see `refuse`):
    /// a share of the descriptors the cap leaves free, at most 64.
    lingering: usize,
    /// Headroom under the cap below which a ring listener accepts one
    /// connection at a time: one multishot accept can take a whole listen
    /// backlog in one go, every core's at once.
    roomy: usize,
}

impl ConnLimit {
    pub fn new(max: usize, file_limit: u64, cores: usize) -> Arc<ConnLimit> {
        let files = usize::try_from(file_limit).unwrap_or(usize::MAX);
        Arc::new(ConnLimit {
            max,
            open: AtomicUsize::new(0),
            lingering: (files.saturating_sub(max) / 8 / cores.max(1)).min(64),
            roomy: crate::server::BACKLOG as usize * cores.max(1),
        })
    }

    /// True while every core's listen backlog, accepted in one go, stays
    /// under the cap (a multishot accept may then be armed).
    fn roomy(&self) -> bool {
        self.max.saturating_sub(self.open.load(Ordering::Relaxed)) >= self.roomy
    }

    /// A slot for one more client connection, if under the cap.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }
}

/// One client connection's place under the cap; given back on drop.
struct Slot(Arc<ConnLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A file descriptor held in reserve (`/dev/null`), closed when accept
/// finds the file limit reached so that one more connection can still be
/// accepted: a client connection to be refused cleanly, or a control
/// connection (`/health`, `/metrics`) to be served.
struct Spare(Cell<RawFd>);

impl Spare {
    fn open() -> Spare {
        let s = Spare(Cell::new(-1));
        s.refill();
        s
    }

    /// Closes the reserved descriptor; false when there was none.
    fn release(&self) -> bool {
        let fd = self.0.replace(-1);
        if fd < 0 {
            return false;
        }
        // SAFETY: `fd` was opened by `refill` and is owned by this Spare alone.
        unsafe { libc::close(fd) };
        true
    }

    /// True while the reserve is held.
    fn held(&self) -> bool {
        self.0.get() >= 0
    }

    /// Takes the reserve back; false while no descriptor is free.
    fn refill(&self) -> bool {
        if self.0.get() >= 0 {
            return true;
        }
        // SAFETY: open(2) with a constant NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        self.0.set(fd);
        fd >= 0
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        self.release();
    }
}

/// A diagnostic that may repeat many times a second, written at most once
/// per `RATE_LOG_EVERY` with the number of times it happened since.
#[derive(Default)]
struct RateLog {
    next: Cell<Option<Instant>>,
    count: Cell<u64>,
}

const RATE_LOG_EVERY: Duration = Duration::from_secs(10);

impl RateLog {
    /// Notes one occurrence; `Some(n)` when a line is due, `n` being the
    /// occurrences it reports.
    fn note(&self, now: Instant) -> Option<u64> {
        self.count.set(self.count.get() + 1);
        if self.next.get().is_some_and(|n| now < n) {
            return None;
        }
        self.next.set(Some(now + RATE_LOG_EVERY));
        Some(self.count.replace(0))
    }
}

pub struct Shard {
    pub index: usize,
    pub cfg: Rc<Config>,
    routes: RefCell<Rc<Routes>>,
    pub bufs: Rc<BufPool>,
    pub pool: Pool,
    pub conns: Conns,
    draining: Cell<bool>,
    access_log: Option<RefCell<AccessLog>>,
    /// Access lines are written for requests on routes without a
    /// `log_level` (the process's level is info or more verbose).
    access_default: bool,
    pub stats: Counters,
    pub subs: Registry,
    board: Arc<Board>,
    /// WebSocket-over-HTTP sessions open here, by Connection-Id, with
    /// their subscriber (for `conncheck` and `refresh`).
    pub ws_sessions: RefCell<HashMap<String, Rc<crate::subs::Sub>>>,
    /// Other held connections (streams, long-polls, WebSockets) by
    /// Connection-Id, for per-connection targets (`crate::targets`).
    pub held: RefCell<HashMap<String, Rc<crate::subs::Sub>>>,
    pub bus: Arc<Bus>,
    /// Where publishes accepted here go: the bus, or a cluster's broker.
    pub publisher: crate::cluster::Publisher,
    /// Wakes this core's delivery task when a publish made here queued
    /// items for this core (no wake byte, no syscall).
    kick: Kick,
    /// The latency-sensitive task queue of the control API and publishes.
    control_queue: Cell<Option<glommio::TaskQueueHandle>>,
    /// Grip-Sig signing, with its tokens renewed each minute.
    pub signer: crate::jwt::Signer,
    conn_limit: Arc<ConnLimit>,
    /// Descriptors in reserve for the file limit: one to refuse client
    /// connections with, one to serve control connections with.
    spare_client: Spare,
    spare_control: Spare,
    accept_log: RateLog,
    refuse_log: RateLog,
    lingering_refusals: Cell<usize>,
    /// The TLS listeners' configuration in force (swapped by a reload;
    /// a connection keeps the one it started with).
    tls: RefCell<Option<Arc<rustls::ServerConfig>>>,
    /// The control plane, for the control HTTP API's commands to every
    /// core (set at start-up; `None` in unit tests).
    pub plane: RefCell<Option<Arc<crate::control_socket::ControlPlane>>>,
}

impl Shard {
    pub fn new(
        index: usize,
        cfg: Rc<Config>,
        bus: Arc<Bus>,
        board: Arc<Board>,
        conn_limit: Arc<ConnLimit>,
        publisher: crate::cluster::Publisher,
    ) -> Rc<Shard> {
        let bufs = Rc::new(BufPool::default());
        // The log exists whenever access_log is on: a route's `log_level`
        // can ask for its lines below the process's level.
        let access = cfg.access_log;
        let access_default = crate::log::enabled(Level::Info);
        Rc::new(Shard {
            index,
            routes: RefCell::new(Rc::new(cfg.routes.clone())),
            pool: Pool::new(cfg.max_idle_per_target, bufs.clone(), index),
            bufs,
            conns: Conns::default(),
            draining: Cell::new(false),
            access_default,
            access_log: access.then(|| {
                RefCell::new(AccessLog::new(
                    cfg.access_log_client,
                    cfg.access_log_user_agent,
                ))
            }),
            stats: Counters::default(),
            subs: {
                let r = Registry::new(
                    QueueLimits {
                        messages: cfg.grip.subscriber_queue,
                        bytes: cfg.grip.subscriber_queue_bytes,
                    },
                    bus.clone(),
                    index,
                );
                r.set_update_on_first_subscription(cfg.grip.update_on_first_subscription);
                r
            },
            board,
            ws_sessions: RefCell::new(HashMap::new()),
            held: RefCell::new(HashMap::new()),
            bus,
            publisher,
            kick: Kick::default(),
            signer: crate::jwt::Signer::new(cfg.grip.sig_key.clone(), cfg.grip.sig_iss.clone()),
            control_queue: Cell::new(None),
            conn_limit,
            spare_client: Spare::open(),
            spare_control: Spare::open(),
            accept_log: RateLog::default(),
            refuse_log: RateLog::default(),
            lingering_refusals: Cell::new(0),
            tls: RefCell::new(None),
            plane: RefCell::new(None),
            cfg,
        })
    }

    /// A Connection-Id unique across cores and restarts.
    pub fn next_connection_id(&self) -> String {
        self.next_conn_id().text().as_str().to_string()
    }

    /// The next Connection-Id as its parts (no allocation: a proxied GRIP
    /// request names its connection on every request).
    ///
    /// A count, not a clock read per id: two requests served in one turn
    /// of the core's loop must not be told the same id.
    pub fn next_conn_id(&self) -> ConnId {
        let c = &self.conns;
        if c.ids_since.get() == 0 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            c.ids_since.set(nanos.max(1));
        }
        let n = c.ids.get();
        c.ids.set(n + 1);
        ConnId {
            nanos: c.ids_since.get(),
            core: self.index,
            n,
        }
    }

    /// Makes this core's delivery task look at its inbox: for a publish
    /// made on this core that queued items for it (`Sent::local`; no wake
    /// byte, no syscall).
    pub fn kick_delivery(&self) {
        self.kick.kick();
    }

    /// The current routing table (a cheap snapshot).
    pub fn routes(&self) -> Rc<Routes> {
        self.routes.borrow().clone()
    }

    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    pub fn register(self: &Rc<Self>, fd: RawFd) -> ConnGuard {
        let id = self.conns.next.get();
        self.conns.next.set(id + 1);
        let state = Rc::new(ConnState::default());
        self.conns.map.borrow_mut().insert(
            id,
            ConnEntry {
                fd,
                state: state.clone(),
            },
        );
        ConnGuard {
            id,
            state,
            shard: self.clone(),
        }
    }

    pub fn open_connections(&self) -> usize {
        self.conns.map.borrow().len()
    }

    /// The time now, when the access log will want a duration.
    pub fn clock(&self) -> Option<Instant> {
        self.access_log.as_ref().map(|_| Instant::now())
    }

    /// This core's counters, copied for the cross-core board.
    fn snapshot(&self) -> Snapshot {
        let c = &self.stats;
        Snapshot {
            core: self.index,
            connections: self.open_connections() as u64,
            streams: self.subs.held(HoldKind::Stream),
            long_polls: self.subs.held(HoldKind::Response),
            websockets: self.subs.held(HoldKind::Ws),
            subscriptions: self.subs.subscriptions() as u64,
            accepted: c.accepted.get(),
            refused_max_connections: c.refused_max_connections.get(),
            refused_file_limit: c.refused_file_limit.get(),
            requests_by_class: std::array::from_fn(|i| c.by_class[i].get()),
            upstream_errors: c.upstream_errors.get(),
            panics: c.panics.get(),
            upstream_latency: std::array::from_fn(|i| c.upstream_latency[i].get()),
            upstream_latency_sum_ms: c.upstream_latency_sum_ms.get(),
            deliveries: self.subs.stats.deliveries.get(),
            drops: self.subs.stats.drops.get(),
            stalls: self.subs.stats.stalls.get(),
            idle_upstream: self.pool.idle_count() as u64,
            tls_failures: std::array::from_fn(|i| c.tls_failures[i].get()),
        }
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    /// Copies this core's counters to the board (read by stats/metrics).
    pub fn publish_snapshot(&self) {
        self.board.store(self.snapshot());
        if let Some(counts) = self.subs.channel_counts() {
            self.board.store_channels(self.index, Arc::new(counts));
        }
    }

    /// Runs commands from the control plane.
    fn run_commands(&self, rx: &Receiver<Command>) {
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Routes(routes) => {
                    *self.routes.borrow_mut() = Rc::new((*routes).clone());
                    info!(
                        "core {}: routes reloaded ({} routes)",
                        self.index,
                        routes.iter().count()
                    );
                }
                Command::Tls(config) => {
                    *self.tls.borrow_mut() = Some(config);
                    info!("core {}: certificates reloaded", self.index);
                }
                Command::Conncheck(ids, reply) => {
                    let here = self.ws_sessions.borrow();
                    let found = ids.into_iter().filter(|i| here.contains_key(i)).collect();
                    let _ = reply.send(found);
                }
                Command::Refresh(target, reply) => {
                    let n = match target {
                        Refresh::Cid(id) => match self.ws_sessions.borrow().get(&id) {
                            Some(sub) => self.subs.refetch(sub),
                            None => 0,
                        },
                        Refresh::Channel(ch) => self.subs.refresh_channel(&ch),
                    };
                    let _ = reply.send(n);
                }
                Command::Target(id, action, reply) => {
                    let sub = self.ws_sessions.borrow().get(&id).cloned();
                    let sub = sub.or_else(|| self.held.borrow().get(&id).cloned());
                    let applied = match &sub {
                        Some(sub) => action.apply(sub, &self.subs),
                        None => crate::targets::Applied::NotHere,
                    };
                    let _ = reply.send(applied);
                }
            }
        }
    }

    /// Counts a finished request and writes its access line when the
    /// level allows: the route's `log_level` (Pushpin's numbers; the
    /// line is an info line, 2) when it has one, else the process's.
    /// Whether a request on a route with this `log_level` is written to
    /// the access log (a request's target is named only for the log).
    pub fn access_wanted(&self, route_log_level: Option<u32>) -> bool {
        self.access_log.is_some()
            && match route_log_level {
                Some(n) => n >= 2,
                None => self.access_default,
            }
    }

    pub fn access(&self, entry: &AccessEntry<'_>, route_log_level: Option<u32>) {
        self.stats.request(entry.status);
        if !self.access_wanted(route_log_level) {
            return;
        }
        if let Some(log) = &self.access_log {
            log.borrow_mut().record(entry);
        }
    }

    fn flush_log(&self) {
        if let Some(log) = &self.access_log {
            log.borrow_mut().flush();
        }
    }

    /// Starts draining: no more accepts, idle connections closed now, busy
    /// ones closed after their current exchange.
    fn start_drain(&self) {
        self.draining.set(true);
        for ConnEntry { fd, state } in self.conns.map.borrow().values() {
            if state.idle.get() {
                // SAFETY: the fd belongs to a live connection task (it is
                // removed from the map before the socket is dropped);
                // shutdown only wakes its pending read with end-of-stream.
                unsafe { libc::shutdown(*fd, libc::SHUT_RD) };
            }
        }
    }

    /// Ends the grace period: requests still waiting for a response are
    /// answered 503 by their tasks.
    fn end_grace(&self) {
        let states: Vec<Rc<ConnState>> = self
            .conns
            .map
            .borrow()
            .values()
            .map(|e| e.state.clone())
            .collect();
        for s in states {
            s.cut_off();
        }
    }
}

/// What a shard is given at start-up.
pub struct ShardStart {
    pub index: usize,
    pub cfg: Rc<Config>,
    /// Listening sockets for client connections, already bound.
    pub listeners: Vec<RawFd>,
    /// Listening sockets for TLS client connections.
    pub tls_listeners: Vec<RawFd>,
    /// Their configuration (`Some` when there are TLS listeners).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Listening sockets for the control HTTP API.
    pub control: Vec<RawFd>,
    pub bus: Arc<Bus>,
    pub inbox: CoreInbox,
    pub board: Arc<Board>,
    pub commands: Receiver<Command>,
    /// This shard's end of its wake socket.
    pub wake: RawFd,
    /// The cap on client connections, shared by every shard.
    pub conn_limit: Arc<ConnLimit>,
    /// Where publishes accepted here go (a cluster's broker, or the bus).
    pub publisher: crate::cluster::Publisher,
    /// Cores still draining, all shards together: a shard keeps its control
    /// listener until it reaches 0 (see `run`).
    pub draining_cores: Arc<AtomicUsize>,
    /// The control plane (the control HTTP API reaches other cores by it).
    pub plane: Arc<crate::control_socket::ControlPlane>,
    /// What serves the connections accepted.
    pub handlers: Handlers,
}

/// A connection's task: serves `Connection` (from `peer`) until it ends.
pub type Handler = fn(Rc<Shard>, Connection, SocketAddr) -> Pin<Box<dyn Future<Output = ()>>>;

/// What serves the connections a shard accepts, given from above (the
/// server): the shard accepts, counts, limits and drains connections but
/// knows nothing of HTTP, GRIP or the control API.
#[derive(Clone, Copy)]
pub struct Handlers {
    /// A client connection (a TLS one after its handshake).
    pub client: Handler,
    /// A connection to the control HTTP API.
    pub control: Handler,
}

/// How long, after the shutdown grace, the 503s to requests still waiting
/// for a response may take to be written.
const GRACE_ANSWERS: Duration = Duration::from_millis(500);

/// Runs one shard until it has drained.
pub async fn run(start: ShardStart) {
    let shard = Shard::new(
        start.index,
        start.cfg,
        start.bus,
        start.board,
        start.conn_limit,
        start.publisher,
    );
    *shard.tls.borrow_mut() = start.tls;
    *shard.plane.borrow_mut() = Some(start.plane);
    shard
        .control_queue
        .set(Some(glommio::executor().create_task_queue(
            Shares::Static(1000),
            Latency::Matters(Duration::from_millis(1)),
            "corepin-control",
        )));
    let stop = Rc::new(Cell::new(false));
    // Client connections are served in the queue `run` started in; their
    // listeners are accepted from in a queue of their own that preempts
    // it. A core busy with thousands of runnable connection tasks (a
    // reconnect storm's resets) would otherwise leave its listen queue
    // full long enough for the kernel to drop handshakes, and each
    // dropped client waits out TCP's backoff (1, 3, 7... s) before it is
    // even accepted (PERFORMANCE.md, "Reconnect storm").
    let conn_queue = glommio::executor().current_task_queue();
    let accept_queue = glommio::executor().create_task_queue(
        Shares::Static(1000),
        Latency::Matters(Duration::from_millis(1)),
        "corepin-accept",
    );
    // Client listeners stop at the drain; control listeners keep answering
    // (`/health` says 503) until the core stops.
    let mut accept_tasks = Vec::new();
    let mut control_tasks = Vec::new();
    let ring = crate::uring::current();
    for (fd, kind) in start
        .listeners
        .into_iter()
        .map(|f| (f, Listener::Client))
        .chain(start.tls_listeners.into_iter().map(|f| (f, Listener::Tls)))
        .chain(start.control.into_iter().map(|f| (f, Listener::Control)))
    {
        // Plain client listeners accept through the core's ring on the
        // io_uring data path; TLS and control ones through glommio (their
        // connections are glommio sockets).
        let ring = ring.as_ref().filter(|_| kind == Listener::Client);
        // SAFETY: the fd is a bound, listening TCP socket created for this
        // shard alone; ownership moves into the listener here.
        let listener = unsafe { Acceptor::from_raw_fd(fd, ring) };
        let task = accept_loop(shard.clone(), listener, kind, start.handlers, conn_queue);
        if kind == Listener::Control {
            control_tasks.push(spawn_control(&shard, task));
        } else {
            accept_tasks.push(match glommio::spawn_local_into(task, accept_queue) {
                Ok(t) => t,
                Err(_) => unreachable!("the accept queue lives as long as the shard"),
            });
        }
    }
    let log_task = glommio::spawn_local(flush_access_log(shard.clone(), stop.clone()));
    let sweep_task = glommio::spawn_local(sweep(shard.clone(), stop.clone()));
    // SockJS HTTP sessions this core owns (`conn::sockjs`).
    glommio::spawn_local(crate::conn::sockjs::serve(shard.clone())).detach();

    // SAFETY: the fd is this shard's end of a socketpair, owned by it alone.
    let wake = unsafe { UnixStream::from_raw_fd(start.wake) };
    let (drain_tx, drain_rx) = glommio::channels::local_channel::new_bounded(1);
    // Publishes are delivered in the control queue: they preempt a fan-out
    // in progress rather than wait behind it (and yield in slices).
    let wake_task = spawn_control(
        &shard,
        wake_loop(shard.clone(), wake, start.commands, drain_tx),
    );
    // The delivery task: whenever kicked (by `wake_loop` for a publish
    // from another core, or by a publish made here), it hands the inbox
    // to the registry a slice at a time, letting other tasks run between
    // slices when they are due, so a huge publish cannot stall this
    // core's clients.
    let deliver_task = spawn_control(&shard, {
        let (shard, inbox) = (shard.clone(), start.inbox);
        async move {
            loop {
                shard.kick.wait().await;
                inbox.rearm();
                loop {
                    crate::uring::trace::mark(crate::uring::trace::Ev::DeliverStart, 1);
                    let more = shard.subs.deliver(&inbox);
                    crate::uring::trace::mark(crate::uring::trace::Ev::DeliverEnd, 1);
                    if !more {
                        break;
                    }
                    glommio::yield_if_needed().await;
                }
            }
        }
    });
    let _ = drain_rx.recv().await;

    shard.start_drain();
    for t in accept_tasks {
        let _ = t.cancel().await;
    }
    // Held streams end cleanly: their subscribers get a close.
    shard.subs.close_all();
    let deadline = Instant::now() + shard.cfg.timeouts.shutdown_grace;
    while shard.open_connections() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if shard.open_connections() > 0 {
        // Requests whose response has not started get a 503 rather than a
        // bare close; a moment for those answers to be written.
        shard.end_grace();
        let written = Instant::now() + GRACE_ANSWERS;
        while shard.open_connections() > 0 && Instant::now() < written {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }
    if shard.open_connections() > 0 {
        warn!(
            "core {}: {} connections still open after the grace period; closing them",
            shard.index,
            shard.open_connections()
        );
    }
    // Each core's control listener is one socket of a SO_REUSEPORT group,
    // and closing it resets the connections the kernel already queued on it:
    // a core that drained early keeps answering (/health: 503) until every
    // core has drained, bounded by the time the others may take.
    start.draining_cores.fetch_sub(1, Ordering::AcqRel);
    let others = Instant::now() + shard.cfg.timeouts.shutdown_grace + 2 * GRACE_ANSWERS;
    while start.draining_cores.load(Ordering::Acquire) > 0 && Instant::now() < others {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    stop.set(true);
    for t in control_tasks {
        let _ = t.cancel().await;
    }
    let _ = wake_task.cancel().await;
    let _ = deliver_task.cancel().await;
    let _ = sweep_task.cancel().await;
    let _ = log_task.cancel().await;
    shard.flush_log();
    shard.publish_snapshot();
}

/// Spawns into the shard's control queue (latency-sensitive: publishes and
/// the control API), or the default queue if it could not be made.
fn spawn_control<T: 'static>(
    shard: &Shard,
    fut: impl std::future::Future<Output = T> + 'static,
) -> glommio::Task<T> {
    match shard.control_queue.get() {
        Some(q) => match glommio::spawn_local_into(fut, q) {
            Ok(t) => t,
            Err(_) => unreachable!("the control queue lives as long as the shard"),
        },
        None => glommio::spawn_local(fut),
    }
}

/// Reads the wake socket (see `wake`): kicks the delivery task for
/// publishes, runs commands, reports a drain request once; runs until
/// cancelled.
async fn wake_loop(
    shard: Rc<Shard>,
    wake: UnixStream,
    commands: Receiver<Command>,
    drain: glommio::channels::local_channel::LocalSender<()>,
) {
    crate::wake::listen(wake, |w| {
        if w.publish {
            shard.kick.kick();
        }
        if w.command {
            shard.run_commands(&commands);
        }
        if w.drain {
            let _ = drain.try_send(());
        }
    })
    .await;
    let _ = drain.try_send(());
}

pin_project_lite::pin_project! {
    /// Runs one connection's task so that a panic in it (a bug: input never
    /// should cause one) ends only that task; the connection's guards (its
    /// count, its subscription, its socket) are released as it unwinds, the
    /// panic hook has printed the message and place, and `on_panic` runs.
    /// The core goes on serving every other connection.
    ///
    /// A hand-written future rather than an `async fn` around `catch_unwind`:
    /// an async fn would keep its argument and the future made from it side by
    /// side, doubling every idle connection's task allocation.
    struct Contained<F, P> {
        #[pin]
        task: F,
        on_panic: Option<P>,
    }
}

fn contained<F: Future<Output = ()>, P: FnOnce()>(task: F, on_panic: P) -> Contained<F, P> {
    Contained {
        task,
        on_panic: Some(on_panic),
    }
}

impl<F: Future<Output = ()>, P: FnOnce()> Future for Contained<F, P> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let task = this.task;
        match std::panic::catch_unwind(AssertUnwindSafe(|| task.poll(cx))) {
            Ok(p) => p,
            Err(_) => {
                if let Some(f) = this.on_panic.take() {
                    f();
                }
                Poll::Ready(())
            }
        }
    }
}

/// The largest connection task size logged so far.
static TASK_SIZE_LOGGED: AtomicUsize = AtomicUsize::new(0);

/// `contained` for a client or control connection: the panic is counted
/// (`corepin_connection_panics_total`) and logged with the peer. `slot`,
/// a client connection's place under `max_connections`, is held for as
/// long as the task lives (it is given back however the task ends).
fn connection_task(
    shard: &Rc<Shard>,
    peer: SocketAddr,
    slot: Option<Slot>,
    task: impl Future<Output = ()>,
) -> impl Future<Output = ()> {
    // Every held connection's task is allocated at this size (its largest
    // await point): the first part of an idle connection's byte budget
    // (PERFORMANCE.md). Logged for each larger kind of task seen.
    let size = std::mem::size_of_val(&task);
    if TASK_SIZE_LOGGED.fetch_max(size, Ordering::Relaxed) < size {
        debug!("connection task: {size} bytes");
    }
    let shard = shard.clone();
    // Kept in the panic handler, which lives exactly as long as the task:
    // no second copy of the task's state is made to hold it.
    contained(task, move || {
        drop(slot);
        shard.stats.panics.set(shard.stats.panics.get() + 1);
        error!(
            "core {}: the connection from {peer} was closed after a panic (a bug; please report it with the message above)",
            shard.index
        );
    })
}

/// True for accept errors that mean "no descriptor is free".
fn out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Why a client connection is refused right after accept.
#[derive(Clone, Copy)]
enum Refusal {
    MaxConnections,
    FileLimit,
}

/// Refuses a just-accepted client connection: a 503 if its socket takes
/// it now, then the connection ends. At `max_connections` (descriptors
/// to spare) the socket lingers briefly, reading what the client still
/// sends, so the 503 is not destroyed by a reset; at the file limit it is
/// closed at once, giving its descriptor back to the reserve.
fn refuse(shard: &Rc<Shard>, accepted: Accepted, why: Refusal) {
    let (counter, body) = match why {
        Refusal::MaxConnections => (
            &shard.stats.refused_max_connections,
            "too many connections (max_connections)",
        ),
        Refusal::FileLimit => (
            &shard.stats.refused_file_limit,
            "too many connections (file limit)",
        ),
    };
    counter.set(counter.get() + 1);
    if let Refusal::MaxConnections = why {
        if let Some(n) = shard.refuse_log.note(Instant::now()) {
            warn!(
                "core {}: max_connections ({}) reached: refusing new client connections with 503 ({n} since the last report)",
                shard.index, shard.conn_limit.max
            );
        }
    }
    let mut out = Vec::with_capacity(160);
    crate::codec::http1::write_simple_response(&mut out, 503, body, true);
    let lingering = shard.lingering_refusals.get();
    let at_once = matches!(why, Refusal::FileLimit) || lingering >= shard.conn_limit.lingering;
    let stream = match accepted {
        Accepted::Glommio(s) => s,
        Accepted::Ring(fd) if at_once => {
            // Closed here and now, not through the ring: at the file limit
            // the descriptor goes back to the reserve before the next accept.
            // SAFETY: send(2) of our buffer on a socket `fd` owns.
            unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    out.as_ptr().cast(),
                    out.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            return;
        }
        Accepted::Ring(fd) => {
            let conn = match crate::uring::current() {
                Some(ring) => Connection::ring(ring.stream(fd), shard.bufs.clone()),
                None => return,
            };
            linger_refused(shard, conn, &out, lingering);
            return;
        }
    };
    let mut conn = Connection::tcp(stream, shard.bufs.clone());
    if at_once {
        conn.send_now(&out);
        return;
    }
    linger_refused(shard, conn, &out, lingering);
}

/// A refused connection's 503, then a brief linger reading what the client
/// still sends (so the answer is not destroyed by a reset).
fn linger_refused(shard: &Rc<Shard>, mut conn: Connection, out: &[u8], lingering: usize) {
    conn.send_now(out);
    shard.lingering_refusals.set(lingering + 1);
    let shard = shard.clone();
    glommio::spawn_local(async move {
        conn.linger_close().await;
        shard
            .lingering_refusals
            .set(shard.lingering_refusals.get().saturating_sub(1));
    })
    .detach();
}

/// What a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Client,
    /// Client connections over TLS.
    Tls,
    /// The control HTTP API.
    Control,
}

/// How a listening socket accepts: through glommio, or, for plain client
/// listeners on the io_uring data path, through the core's own ring (one
/// multishot accept: no submission and no descriptor duplication per
/// connection; PERFORMANCE.md "io_uring data path: accept through the
/// ring"). Out of descriptors, the ring's listener accepts one connection
/// at a time until they are free again (`UringListener::set_multishot`).
enum Acceptor {
    Glommio(TcpListener),
    Ring(crate::uring::UringListener),
}

/// A socket just accepted, not yet a `Connection`: a ring-accepted one is a
/// plain descriptor until it is served (a refusal closes it at once).
enum Accepted {
    Glommio(TcpStream),
    Ring(OwnedFd),
}

/// How long after the last EMFILE/ENFILE a ring listener keeps accepting
/// one at a time before its multishot is armed again.
const SCARCE_FOR: Duration = Duration::from_secs(1);

impl Acceptor {
    /// The listener for `fd` (a bound, listening TCP socket): the ring's
    /// when `ring` is given.
    ///
    /// SAFETY: `fd` is a listening socket owned by nothing else; ownership
    /// moves into the acceptor.
    unsafe fn from_raw_fd(fd: RawFd, ring: Option<&crate::uring::Uring>) -> Acceptor {
        match ring {
            // SAFETY: as the caller promises.
            Some(ring) => Acceptor::Ring(ring.listener(unsafe { OwnedFd::from_raw_fd(fd) })),
            // SAFETY: as the caller promises.
            None => Acceptor::Glommio(unsafe { TcpListener::from_raw_fd(fd) }),
        }
    }

    async fn accept(&mut self) -> std::io::Result<Accepted> {
        match self {
            Acceptor::Glommio(l) => match l.accept().await {
                Ok(s) => Ok(Accepted::Glommio(s)),
                Err(glommio::GlommioError::IoError(e)) => Err(e),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            },
            Acceptor::Ring(l) => l.accept_fd().await.map(Accepted::Ring),
        }
    }

    /// Before an accept: a ring listener keeps its multishot only while
    /// a burst cannot reach the limits, i.e. while `max_connections`
    /// leaves room for every core's backlog, the file-limit reserve is
    /// held and no accept found the descriptors gone for `SCARCE_FOR`;
    /// otherwise it accepts one connection at a time, as glommio does
    /// (an armed multishot takes connections ahead of the cap's check
    /// and every descriptor freed while armed, the reserve's included).
    fn settle(&mut self, limit: &ConnLimit, spare: &Spare, scarce: Option<Instant>) {
        if let Acceptor::Ring(l) = self {
            let roomy =
                limit.roomy() && spare.held() && scarce.is_none_or(|t| t.elapsed() >= SCARCE_FOR);
            if l.multishot() != roomy {
                l.set_multishot(roomy);
            }
        }
    }
}

impl Accepted {
    fn peer_addr(&self) -> SocketAddr {
        let peer = match self {
            Accepted::Glommio(s) => s.peer_addr().ok(),
            Accepted::Ring(fd) => socket2::SockRef::from(fd)
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket()),
        };
        peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The glommio stream, for a listener that is never the ring's.
    fn into_tcp(self) -> Option<TcpStream> {
        match self {
            Accepted::Glommio(s) => Some(s),
            Accepted::Ring(_) => None,
        }
    }

    /// A client connection: a ring socket goes onto the ring; a glommio
    /// one moves to the ring on the io_uring data path
    /// (`Connection::client`), else stays with glommio.
    fn into_client(self, shard: &Shard) -> Option<Connection> {
        match self {
            Accepted::Glommio(s) => Some(Connection::client(s, shard.bufs.clone())),
            Accepted::Ring(fd) => crate::uring::current()
                .map(|ring| Connection::ring(ring.stream(fd), shard.bufs.clone())),
        }
    }
}

/// Accepts from `listener` until cancelled; client connections are
/// served in `conns` (the accept loop itself runs in a queue that
/// preempts it), yielding between accepts when another queue is due.
async fn accept_loop(
    shard: Rc<Shard>,
    mut listener: Acceptor,
    kind: Listener,
    handlers: Handlers,
    conns: glommio::TaskQueueHandle,
) {
    let control = kind == Listener::Control;
    let spare = if control {
        &shard.spare_control
    } else {
        &shard.spare_client
    };
    // When accept last found no descriptor free.
    let mut scarce: Option<Instant> = None;
    loop {
        listener.settle(&shard.conn_limit, spare, scarce);
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) if out_of_files(&e) => {
                scarce = Some(Instant::now());
                if let Some(n) = shard.accept_log.note(Instant::now()) {
                    warn!(
                        "core {}: accept failed: {e}; refusing new client connections until descriptors are free ({n} since the last report; raise LimitNOFILE / ulimit -n, or lower limits.max_connections)",
                        shard.index
                    );
                }
                // Free the reserved descriptor for one more accept: a
                // client connection is refused with it, a control one
                // served. Without a reserve, wait rather than spin.
                if !spare.release() {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    spare.refill();
                    continue;
                }
                match listener.accept().await {
                    Ok(s) if control => s,
                    // Descriptors were freed meanwhile: serve it.
                    Ok(s) if spare.refill() => s,
                    Ok(s) => {
                        refuse(&shard, s, Refusal::FileLimit);
                        spare.refill();
                        continue;
                    }
                    Err(_) => {
                        spare.refill();
                        continue;
                    }
                }
            }
            Err(e) => {
                if let Some(n) = shard.accept_log.note(Instant::now()) {
                    warn!(
                        "core {}: accept failed: {e} ({n} since the last report)",
                        shard.index
                    );
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shard.stats.accepted.set(shard.stats.accepted.get() + 1);
        let peer = stream.peer_addr();
        if control {
            let Some(stream) = stream.into_tcp() else {
                continue;
            };
            let conn = Connection::tcp(stream, shard.bufs.clone());
            let task = (handlers.control)(shard.clone(), conn, peer);
            spawn_control(&shard, connection_task(&shard, peer, None, task)).detach();
            continue;
        }
        let Some(slot) = shard.conn_limit.take() else {
            refuse(&shard, stream, Refusal::MaxConnections);
            continue;
        };
        if kind == Listener::Tls {
            let Some(stream) = stream.into_tcp() else {
                continue;
            };
            let task = serve_tls(shard.clone(), stream, peer, handlers.client);
            spawn_into(connection_task(&shard, peer, Some(slot), task), conns);
        } else {
            let Some(conn) = stream.into_client(&shard) else {
                continue;
            };
            let task = (handlers.client)(shard.clone(), conn, peer);
            spawn_into(connection_task(&shard, peer, Some(slot), task), conns);
        }
        // glommio accepts without waiting while connections are queued: a
        // burst would be taken in one go, the core's publishes waiting.
        glommio::yield_if_needed().await;
    }
}

/// Spawns a detached task into `queue` (one of this executor's).
fn spawn_into(
    fut: impl std::future::Future<Output = ()> + 'static,
    queue: glommio::TaskQueueHandle,
) {
    match glommio::spawn_local_into(fut, queue) {
        Ok(t) => {
            t.detach();
        }
        Err(_) => unreachable!("the queue was made by this executor and lives as long as it"),
    }
}

/// A connection on a TLS listener: its first bytes are looked at
/// (`tls::sniff`); a plaintext HTTP request is answered 400, anything
/// else that is not TLS is closed; a TLS handshake runs within the
/// header timeout (`timeouts.client_header`, counted from the accept),
/// then the connection is served as any other. Failures are counted by
/// reason (`corepin_tls_handshake_failures_total`).
fn serve_tls(
    shard: Rc<Shard>,
    stream: TcpStream,
    peer: SocketAddr,
    client: Handler,
) -> impl Future<Output = ()> {
    // The sniff and the handshake run in a future of their own on the
    // heap, freed when the handshake ends: inline, their state (the TLS
    // stream before it is boxed, the read and timer futures; 2.5 KiB)
    // would size this task, and so every TLS connection, for its whole
    // life (PERFORMANCE.md, "TLS memory per connection"). That future
    // also calls the handler, so the task keeps only two pointers: the
    // handshake's box, then the handler's (an async fn here would keep
    // its arguments, the socket among them, for the connection's life:
    // 400 bytes more per TLS connection).
    let start = Box::pin(async move {
        let conn = start_tls(&shard, stream, peer).await?;
        Some(client(shard, conn, peer))
    });
    async move {
        let serve = start.await;
        if let Some(serve) = serve {
            serve.await
        }
    }
}

/// `serve_tls`'s first part: the sniff and the handshake; the connection
/// when it is to be served.
async fn start_tls(shard: &Rc<Shard>, stream: TcpStream, peer: SocketAddr) -> Option<Connection> {
    use crate::connection::ReadError;
    use crate::tls::sniff::{self, Sniff};
    let config = shard.tls.borrow().clone()?;
    let timeout = shard.cfg.timeouts.client_header;
    let started = Instant::now();
    let mut conn = Connection::tcp(stream, shard.bufs.clone());
    // Before the handshake: its last writes (session tickets) and the
    // first response must not wait on Nagle for the client's delayed ACK.
    conn.set_nodelay();
    conn.set_read_timeout(Some(timeout));
    conn.set_write_timeout(Some(shard.cfg.timeouts.client_write));
    let first = conn
        .read_head(crate::buf::BUF_SIZE, Some(timeout), |b| {
            Ok::<_, ()>(sniff::classify(b).map(|s| (0, s)))
        })
        .await;
    let failed = |reason: &str| {
        shard.stats.tls_failure(reason);
        debug!("core {}: TLS from {peer}: {reason}", shard.index);
    };
    let reason = match first {
        Ok(Sniff::Tls) => {
            let left = timeout.saturating_sub(started.elapsed());
            match conn.start_tls(config, left).await {
                Ok(conn) => return Some(conn),
                Err(e) => e.reason(),
            }
        }
        Ok(Sniff::PlainHttp) => {
            failed("plain_http");
            let _ = conn.write_all(sniff::PLAINTEXT_RESPONSE).await;
            conn.linger_close().await;
            return None;
        }
        Ok(Sniff::Other) => "not_tls",
        Err(ReadError::TimedOut) => "timeout",
        Err(ReadError::Closed) => "closed",
        Err(_) => "io",
    };
    failed(reason);
    None
}

/// Keep-alives, long-poll timeouts and link timers, checked 4 times a second.
async fn sweep(shard: Rc<Shard>, stop: Rc<Cell<bool>>) {
    while !stop.get() {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        crate::uring::trace::flush_if_quiet(shard.index, 300_000_000);
        shard.subs.sweep(Instant::now());
        // A control connection served with the reserve has ended by now,
        // or will: take the descriptor back when one is free.
        shard.spare_control.refill();
        shard.spare_client.refill();
        shard.publish_snapshot();
    }
}

async fn flush_access_log(shard: Rc<Shard>, stop: Rc<Cell<bool>>) {
    while !stop.get() {
        glommio::timer::sleep(Duration::from_millis(100)).await;
        shard.flush_log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    #[test]
    fn a_connection_id_reads_as_its_format() {
        for (nanos, core, n) in [
            (0, 0, 0),
            (1, 1, 1),
            (0x187a_bcde_f012_3456, 3, 0xff),
            (u64::MAX, usize::MAX, u64::MAX),
        ] {
            let id = ConnId { nanos, core, n };
            assert_eq!(id.text().as_str(), format!("{nanos:x}-{core}-{n:x}"));
        }
    }

    #[test]
    fn containing_a_task_does_not_double_its_size() {
        // Every held connection's task is allocated at this size.
        let task = async {
            let state = [7u8; 1000];
            glommio::timer::sleep(Duration::from_millis(1)).await;
            std::hint::black_box(state);
        };
        let alone = std::mem::size_of_val(&task);
        let wrapped = std::mem::size_of_val(&contained(task, || ()));
        assert!(wrapped <= alone + 16, "{alone} bytes became {wrapped}");
    }

    #[test]
    fn a_panicking_connection_task_ends_alone() {
        let ex = LocalExecutorBuilder::default()
            .io_memory(crate::server::IO_MEMORY)
            .make()
            .expect("executor");
        let (caught, others) = ex.run(async {
            let caught = Rc::new(Cell::new(0));
            let counted = caught.clone();
            let bad = glommio::spawn_local(contained(
                async {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    panic!("a deliberate bug");
                },
                move || counted.set(counted.get() + 1),
            ));
            let good: Vec<_> = (0..3u64)
                .map(|i| {
                    glommio::spawn_local(contained(
                        async move { glommio::timer::sleep(Duration::from_millis(10 + i)).await },
                        || panic!("no panic to report"),
                    ))
                })
                .collect();
            bad.await;
            let mut others = 0;
            for g in good {
                g.await;
                others += 1;
            }
            (caught.get(), others)
        });
        assert_eq!((caught, others), (1, 3));
    }

    /// Runs `f`'s future on a glommio executor of its own, on a thread of
    /// its own (not joined: the tests that use it wait on the executor's
    /// answers, each with its own limit).
    fn on_a_core_thread<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        std::thread::spawn(move || {
            LocalExecutorBuilder::default()
                .io_memory(crate::server::IO_MEMORY)
                .make()
                .expect("executor")
                .run(f());
        });
    }

    /// The executor must not park while a task queue is runnable (the
    /// patched glommio, vendor/README.md). With a 1 ns `Latency::Matters`
    /// queue the preemption timer has always fired by the time the
    /// executor checks it, which made the published glommio 0.9.0 park
    /// with the woken echo task unrun: not one round trip came back.
    #[test]
    fn a_pending_preemption_never_parks_a_core_with_work() {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        use std::io::{Read, Write};
        use std::os::fd::IntoRawFd;

        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let fd = theirs.into_raw_fd();
        // Not joined if it fails: a parked executor would never return.
        on_a_core_thread(move || async move {
            let q = glommio::executor().create_task_queue(
                Shares::Static(1000),
                Latency::Matters(Duration::from_nanos(1)),
                "echo",
            );
            // SAFETY: a connected Unix stream socket, given up above.
            let mut s = unsafe { UnixStream::from_raw_fd(fd) };
            let echo = glommio::spawn_local_into(
                async move {
                    let mut b = [0u8; 16];
                    while let Ok(n @ 1..) = s.read(&mut b).await {
                        if s.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                q,
            );
            if let Ok(echo) = echo {
                echo.await;
            }
        });
        // The limit only ends a failing run: no round trip waits on a
        // timer, each needs the core to run its woken task once.
        ours.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut b = [0u8; 1];
        for i in 0..200u32 {
            let sent = [i as u8];
            ours.write_all(&sent).expect("send");
            match ours.read(&mut b) {
                Ok(1) => assert_eq!(b, sent),
                other => panic!("round trip {i}: no echo from a core with work to do ({other:?})"),
            }
        }
    }

    /// A task woken from another thread (glommio's foreign wake: the waker
    /// goes over a channel, then the core's eventfd is written if it
    /// sleeps) always runs, however the wake falls against the core's
    /// parking: the waking thread's fence and the parking core's pair up
    /// (vendor/README.md, the `membarrier` patch), so neither can miss the
    /// other. Each of the round trips below waits for the core to answer
    /// the one before, then wakes it after a varying pause, so wakes land
    /// before, during and after its park; a lost one would leave the core
    /// asleep for good.
    #[test]
    fn a_wake_from_another_thread_always_reaches_a_parked_core() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::{Arc, Mutex};
        use std::task::Waker;

        const ROUNDS: u32 = 20_000;
        #[derive(Default)]
        struct Shared {
            sent: AtomicU32,
            seen: AtomicU32,
            waker: Mutex<Option<Waker>>,
        }
        let shared = Arc::new(Shared::default());
        let core = shared.clone();
        // Not joined if it fails: a core that missed a wake never returns.
        on_a_core_thread(move || async move {
            let mut seen = 0;
            while seen < ROUNDS {
                seen = futures_lite::future::poll_fn(|cx| {
                    *core.waker.lock().expect("waker") = Some(cx.waker().clone());
                    let sent = core.sent.load(Ordering::Acquire);
                    if sent > seen {
                        std::task::Poll::Ready(sent)
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await;
                core.seen.store(seen, Ordering::Release);
            }
        });
        // The limit only ends a failing run.
        let limit = std::time::Instant::now() + Duration::from_secs(20);
        for i in 1..=ROUNDS {
            while shared.seen.load(Ordering::Acquire) < i - 1 {
                assert!(
                    std::time::Instant::now() < limit,
                    "round trip {}: the core never ran its woken task",
                    i - 1
                );
                std::hint::spin_loop();
            }
            // 0 to ~60 µs: sometimes before the core parks, sometimes in
            // its way down, mostly once it sleeps.
            let until = std::time::Instant::now() + Duration::from_nanos(u64::from(i % 61) * 1000);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
            shared.sent.store(i, Ordering::Release);
            if let Some(w) = shared.waker.lock().expect("waker").take() {
                w.wake();
            }
        }
        while shared.seen.load(Ordering::Acquire) < ROUNDS {
            assert!(
                std::time::Instant::now() < limit,
                "the last round trip never came back"
            );
            std::hint::spin_loop();
        }
    }
}
