//! One core's world: its listeners, its connections, its upstream pool, its
//! buffers and counters. Everything here is `Rc`/`Cell`: a shard is never
//! touched by another thread. Shards hear from the outside (signals, and
//! later publishes) through a wake socket.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, UnixStream};
use glommio::{Latency, Shares};

use crate::buf::BufPool;
use crate::bus::{Bus, CoreInbox, WAKE_PUBLISH};
use crate::config::{Config, Level};
use crate::control_socket::{Command, WAKE_COMMAND};
use crate::log::{AccessEntry, AccessLog};
use crate::route::Routes;
use crate::stats::{Board, Counters, Snapshot};
use crate::subs::{Kind, Registry};
use crate::upstream::Pool;
use crossbeam_channel::Receiver;

/// Items delivered per slice of a drain; other tasks may run between
/// slices. Items of one channel within a slice go out joined.
const DRAIN_SLICE: usize = 1024;

/// A byte sent on a shard's wake socket.
pub mod wake {
    /// Stop accepting and drain.
    pub const DRAIN: u8 = b'T';
}

/// One open connection: its socket and whether it waits between requests.
struct ConnEntry {
    fd: RawFd,
    idle: Rc<Cell<bool>>,
}

/// Open connections of this shard, so a drain can close the idle ones.
#[derive(Default)]
pub struct Conns {
    next: Cell<u64>,
    map: RefCell<HashMap<u64, ConnEntry>>,
}

/// Registration of one connection; removed on drop.
pub struct ConnGuard {
    id: u64,
    idle: Rc<Cell<bool>>,
    shard: Rc<Shard>,
}

impl ConnGuard {
    /// Marks the connection as waiting for a new request (safe to close).
    pub fn set_idle(&self, idle: bool) {
        self.idle.set(idle);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shard.conns.map.borrow_mut().remove(&self.id);
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
    pub stats: Counters,
    pub subs: Registry,
    board: Arc<Board>,
    /// WebSocket-over-HTTP sessions open here, by Connection-Id.
    pub ws_sessions: RefCell<std::collections::HashSet<String>>,
    pub bus: Arc<Bus>,
    /// Wakes this core's delivery task when a publish made here queued
    /// items for this core (no wake byte, no syscall).
    kick: Kick,
    /// The latency-sensitive task queue of the control API and publishes.
    control_queue: Cell<Option<glommio::TaskQueueHandle>>,
    /// Grip-Sig tokens, renewed each minute.
    sig_cache: RefCell<Vec<SigToken>>,
}

/// A cached Grip-Sig token: key, issuer, expiry, token.
type SigToken = (Vec<u8>, String, u64, String);

/// The capabilities announced to backends in `Grip-Feature`.
pub const GRIP_FEATURES: &str = "status, link:next, filter:skip-self, filter:require-sub";

impl Shard {
    pub fn new(index: usize, cfg: Rc<Config>, bus: Arc<Bus>, board: Arc<Board>) -> Rc<Shard> {
        let bufs = Rc::new(BufPool::default());
        let access = cfg.access_log && crate::log::enabled(Level::Info);
        Rc::new(Shard {
            index,
            routes: RefCell::new(Rc::new(cfg.routes.clone())),
            pool: Pool::new(cfg.max_idle_per_target, bufs.clone()),
            bufs,
            conns: Conns::default(),
            draining: Cell::new(false),
            access_log: access.then(|| RefCell::new(AccessLog::default())),
            stats: Counters::default(),
            subs: Registry::new(cfg.grip.subscriber_queue, bus.clone(), index),
            board,
            ws_sessions: RefCell::new(std::collections::HashSet::new()),
            bus,
            kick: Kick::default(),
            sig_cache: RefCell::new(Vec::new()),
            control_queue: Cell::new(None),
            cfg,
        })
    }

    /// A Connection-Id unique across cores and restarts.
    pub fn next_connection_id(&self) -> String {
        let n = self.conns.next.get();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{:x}-{}-{:x}", t, self.index, n)
    }

    /// The signing key and issuer for requests on `route`, if any.
    pub fn sig_for(&self, route: &crate::route::Route) -> Option<(Vec<u8>, String)> {
        let key = route
            .sig_key
            .clone()
            .or_else(|| self.cfg.grip.sig_key.clone())?;
        let iss = route
            .sig_iss
            .clone()
            .unwrap_or_else(|| self.cfg.grip.sig_iss.clone());
        Some((key, iss))
    }

    /// Appends `Grip-Sig` (when signing) and `Grip-Feature`. A token is
    /// valid for an hour and reused for a minute, so signing costs one
    /// HMAC per minute per key, not one per request.
    pub fn write_grip_headers(&self, out: &mut Vec<u8>, sig: Option<&(Vec<u8>, String)>) {
        if let Some((key, iss)) = sig {
            let now = crate::jwt::now();
            let mut cache = self.sig_cache.borrow_mut();
            let hit = cache
                .iter()
                .position(|(k, i, exp, _)| k == key && i == iss && *exp > now + 3540);
            let token = match hit {
                Some(i) => cache[i].3.clone(),
                None => {
                    let exp = now + 3600;
                    let t = crate::jwt::sign(key, iss, exp);
                    cache.retain(|(k, i, _, _)| !(k == key && i == iss));
                    cache.push((key.clone(), iss.clone(), exp, t.clone()));
                    t
                }
            };
            out.extend_from_slice(b"Grip-Sig: ");
            out.extend_from_slice(token.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Grip-Feature: ");
        out.extend_from_slice(GRIP_FEATURES.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Hands items published on this core to the bus; when some are for
    /// this core itself, its delivery task is kicked directly.
    pub fn publish(&self, items: Vec<crate::codec::publish::Item>) -> usize {
        let sent = self.bus.publish(items, Some(self.index));
        if sent.local {
            self.kick.kick();
        }
        sent.items
    }

    /// Delivers everything waiting in this core's inbox, in slices of at
    /// most `DRAIN_SLICE` items, letting other tasks run between slices when
    /// they are due, so a huge publish cannot stall this core's clients.
    async fn drain_inbox(&self, inbox: &CoreInbox) {
        inbox.rearm();
        let mut items = Vec::new();
        loop {
            let n = inbox.take(DRAIN_SLICE, &mut items);
            if n == 0 {
                return;
            }
            self.subs.deliver(&items);
            items.clear();
            if n < DRAIN_SLICE {
                return;
            }
            glommio::yield_if_needed().await;
        }
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
        let idle = Rc::new(Cell::new(false));
        self.conns.map.borrow_mut().insert(
            id,
            ConnEntry {
                fd,
                idle: idle.clone(),
            },
        );
        ConnGuard {
            id,
            idle,
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
            streams: self.subs.held(Kind::Stream),
            long_polls: self.subs.held(Kind::Response),
            websockets: self.subs.held(Kind::Ws),
            subscriptions: self.subs.subscriptions() as u64,
            accepted: c.accepted.get(),
            requests_by_class: std::array::from_fn(|i| c.by_class[i].get()),
            upstream_errors: c.upstream_errors.get(),
            panics: c.panics.get(),
            upstream_latency: std::array::from_fn(|i| c.upstream_latency[i].get()),
            upstream_latency_sum_ms: c.upstream_latency_sum_ms.get(),
            deliveries: self.subs.stats.deliveries.get(),
            drops: self.subs.stats.drops.get(),
            idle_upstream: self.pool.idle_count() as u64,
        }
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    /// Copies this core's counters to the board (read by stats/metrics).
    pub fn publish_snapshot(&self) {
        self.board.store(self.snapshot());
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
                Command::Conncheck(ids, reply) => {
                    let here = self.ws_sessions.borrow();
                    let found = ids.into_iter().filter(|i| here.contains(i)).collect();
                    let _ = reply.send(found);
                }
            }
        }
    }

    pub fn access(&self, entry: &AccessEntry<'_>) {
        self.stats.request(entry.status);
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
        for ConnEntry { fd, idle } in self.conns.map.borrow().values() {
            if idle.get() {
                // SAFETY: the fd belongs to a live connection task (it is
                // removed from the map before the socket is dropped);
                // shutdown only wakes its pending read with end-of-stream.
                unsafe { libc::shutdown(*fd, libc::SHUT_RD) };
            }
        }
    }
}

/// What a shard is given at start-up.
pub struct ShardStart {
    pub index: usize,
    pub cfg: Rc<Config>,
    /// Listening sockets for client connections, already bound.
    pub listeners: Vec<RawFd>,
    /// Listening sockets for the control HTTP API.
    pub control: Vec<RawFd>,
    pub bus: Arc<Bus>,
    pub inbox: CoreInbox,
    pub board: Arc<Board>,
    pub commands: Receiver<Command>,
    /// This shard's end of its wake socket.
    pub wake: RawFd,
}

/// Runs one shard until it has drained.
pub async fn run(start: ShardStart) {
    let shard = Shard::new(start.index, start.cfg, start.bus, start.board);
    shard
        .control_queue
        .set(Some(glommio::executor().create_task_queue(
            Shares::Static(1000),
            Latency::Matters(Duration::from_millis(1)),
            "corepin-control",
        )));
    let stop = Rc::new(Cell::new(false));
    // Client listeners stop at the drain; control listeners keep answering
    // (`/health` says 503) until the core stops.
    let mut accept_tasks = Vec::new();
    let mut control_tasks = Vec::new();
    for (fd, control) in start
        .listeners
        .into_iter()
        .map(|f| (f, false))
        .chain(start.control.into_iter().map(|f| (f, true)))
    {
        // SAFETY: the fd is a bound, listening TCP socket created for this
        // shard alone; ownership moves into the listener here.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        let task = accept_loop(shard.clone(), listener, control);
        if control {
            control_tasks.push(spawn_control(&shard, task));
        } else {
            accept_tasks.push(glommio::spawn_local(task));
        }
    }
    let log_task = glommio::spawn_local(flush_access_log(shard.clone(), stop.clone()));
    let sweep_task = glommio::spawn_local(sweep(shard.clone(), stop.clone()));

    // SAFETY: the fd is this shard's end of a socketpair, owned by it alone.
    let wake = unsafe { UnixStream::from_raw_fd(start.wake) };
    let (drain_tx, drain_rx) = glommio::channels::local_channel::new_bounded(1);
    // Publishes are delivered in the control queue: they preempt a fan-out
    // in progress rather than wait behind it (and yield in slices).
    let wake_task = spawn_control(
        &shard,
        wake_loop(shard.clone(), wake, start.commands, drain_tx),
    );
    let deliver_task = spawn_control(&shard, deliver_loop(shard.clone(), start.inbox));
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
        warn!(
            "core {}: {} connections still open after the grace period; closing them",
            shard.index,
            shard.open_connections()
        );
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

/// Reads the wake socket: kicks the delivery task for publishes, runs
/// commands, reports a drain request once; runs until cancelled.
async fn wake_loop(
    shard: Rc<Shard>,
    mut wake: UnixStream,
    commands: Receiver<Command>,
    drain: glommio::channels::local_channel::LocalSender<()>,
) {
    let mut byte = [0u8; 64];
    loop {
        match wake.read(&mut byte).await {
            Ok(0) | Err(_) => {
                let _ = drain.try_send(());
                return;
            }
            Ok(n) => {
                if byte[..n].contains(&WAKE_PUBLISH) {
                    shard.kick.kick();
                }
                if byte[..n].contains(&WAKE_COMMAND) {
                    shard.run_commands(&commands);
                }
                if byte[..n].contains(&wake::DRAIN) {
                    let _ = drain.try_send(());
                }
            }
        }
    }
}

/// Delivers publishes whenever kicked (by the wake socket, or by a publish
/// made on this core), until cancelled.
async fn deliver_loop(shard: Rc<Shard>, inbox: CoreInbox) {
    loop {
        shard.kick.wait().await;
        shard.drain_inbox(&inbox).await;
    }
}

/// A wake-up for one task on this core: `kick` before or while the task
/// waits makes its next `wait` return at once; many kicks make one wake.
#[derive(Default)]
struct Kick {
    due: Cell<bool>,
    waker: RefCell<Option<std::task::Waker>>,
}

impl Kick {
    fn kick(&self) {
        self.due.set(true);
        let waiting = self.waker.borrow_mut().take();
        if let Some(w) = waiting {
            w.wake();
        }
    }

    async fn wait(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.due.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

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
    task: F,
    on_panic: Option<P>,
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
        // SAFETY: `task` is pinned with `self` (never moved out of it, and
        // `Contained` has no Drop that could move it); `on_panic` is never
        // treated as pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let task = unsafe { Pin::new_unchecked(&mut this.task) };
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

/// `contained` for a client or control connection: the panic is counted
/// (`corepin_connection_panics_total`) and logged with the peer.
fn connection_task(
    shard: &Rc<Shard>,
    peer: SocketAddr,
    task: impl Future<Output = ()>,
) -> impl Future<Output = ()> {
    let shard = shard.clone();
    contained(task, move || {
        shard.stats.panics.set(shard.stats.panics.get() + 1);
        error!(
            "core {}: the connection from {peer} was closed after a panic (a bug; please report it with the message above)",
            shard.index
        );
    })
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, control: bool) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                shard.stats.accepted.set(shard.stats.accepted.get() + 1);
                let peer = stream
                    .peer_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                if control {
                    let task = crate::control::serve(shard.clone(), stream, peer);
                    spawn_control(&shard, connection_task(&shard, peer, task)).detach();
                } else {
                    let task = crate::conn::http::serve(shard.clone(), stream, peer);
                    glommio::spawn_local(connection_task(&shard, peer, task)).detach();
                }
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                warn!("core {}: accept failed: {e}", shard.index);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Keep-alives, long-poll timeouts and link timers, checked 4 times a second.
async fn sweep(shard: Rc<Shard>, stop: Rc<Cell<bool>>) {
    while !stop.get() {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        shard.subs.sweep(Instant::now());
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
}
