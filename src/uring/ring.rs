//! The ring itself and everything the kernel may touch: the submission and
//! completion queues, the provided-buffer ring, the per-socket receive lists
//! and the `Bytes` of sends in flight. One `Core` per executor thread, behind
//! `Rc<RefCell<_>>`; completions update socket state and wake the tasks that
//! wait on it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::bufring::{BufRing, NIL};
use super::{Config, RingMode, Stats};

// What a completion is for: the kind in the high 32 bits of user_data, the
// socket or listener index in the low 32.
const K_RECV: u64 = 1;
const K_SEND: u64 = 2;
const K_CONNECT: u64 = 3;
const K_CLOSE: u64 = 4;
const K_ACCEPT: u64 = 5;
const K_CANCEL: u64 = 6;
const K_LCLOSE: u64 = 7;

fn ud(kind: u64, idx: u32) -> u64 {
    (kind << 32) | idx as u64
}

// Socket state bits.
const RX_ARMED: u16 = 1 << 0; // a multishot receive is in flight
const RX_CANCEL: u16 = 1 << 1; // ... and its cancellation was asked for
const RX_EOF: u16 = 1 << 2; // the peer closed its side
const STARVED: u16 = 1 << 3; // the receive ended on ENOBUFS; re-armed when buffers return
const TX_BUSY: u16 = 1 << 4; // a send is in flight
const CONNECTING: u16 = 1 << 5; // a connect is in flight
const DROPPED: u16 = 1 << 6; // the owning stream is gone; close once nothing is in flight
const CLOSING: u16 = 1 << 7; // the close is in flight
const LIVE: u16 = 1 << 8; // slot in use
const RX_TIMEDOUT: u16 = 1 << 9; // the read deadline passed while the reader waited
const RX_DL_LATER: u16 = 1 << 10; // `rx_deadline` is a timeout (ns) the driver's next turn starts

/// The most iovecs one sendmsg carries (the kernel's UIO_MAXIOV).
const IOV_MAX: usize = 1024;
/// A pooled send state keeps a copy arena up to this size.
const ARENA_KEEP: usize = 16 * 1024;
/// Accepted sockets queued before the multishot accept is paused.
const ACCEPT_QUEUE: usize = 256;

/// One socket's state, kept by the core so completions can update it.
/// Idle (no unread data, nothing being sent) it owns no heap memory.
pub(crate) struct Sock {
    fd: RawFd,
    st: u16,
    /// Held receive buffers, oldest first, linked through `BufRing::next`.
    rx_head: u16,
    rx_tail: u16,
    rx_held: u16,
    /// Bytes of the head buffer already consumed.
    rx_off: u32,
    /// errno of a receive or connect failure (0: none).
    rx_err: i32,
    tx_err: i32,
    /// When a waiting read times out (ms since `Core::epoch`; 0: never);
    /// with `RX_DL_LATER`, the timeout in ns, not yet started.
    rx_deadline: u64,
    /// The deadline this socket's live entry in `Core::deadlines` is for
    /// (0: none); any other entry for the socket is stale.
    rx_queued: u64,
    /// Sends in flight and queued; `None` when nothing is being sent.
    tx: Option<Box<Tx>>,
    rx_waker: Option<Waker>,
    tx_waker: Option<Waker>,
}

impl Sock {
    fn vacant() -> Sock {
        Sock {
            fd: -1,
            st: 0,
            rx_head: NIL,
            rx_tail: NIL,
            rx_held: 0,
            rx_off: 0,
            rx_err: 0,
            tx_err: 0,
            rx_deadline: 0,
            rx_queued: 0,
            tx: None,
            rx_waker: None,
            tx_waker: None,
        }
    }
}

/// The memory of a socket's sends: what the kernel may read until the
/// send's completion, and what waits behind it. Boxed so the `msghdr` and
/// the iovecs keep their addresses while the kernel holds them.
pub(crate) struct Tx {
    /// In flight: the kernel may read these until the completion arrives.
    bufs: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    /// Handed over while a send was in flight; sent together next.
    queued: Vec<Bytes>,
    /// Bytes in `bufs` and `queued`.
    unsent: usize,
    /// A connect's address, alive until its completion.
    addr: Option<socket2::SockAddr>,
    /// Bytes copied from a borrowed slice (`Core::queue_copy`) while nothing
    /// else was queued or in flight: `bufs` then points into this, so a
    /// copied write costs no allocation (the `Tx` and its arena are pooled).
    arena: Vec<u8>,
}

impl Tx {
    fn new() -> Box<Tx> {
        Box::new(Tx {
            bufs: Vec::new(),
            iov: Vec::new(),
            // SAFETY: msghdr is plain C data; all-zero is a valid empty header.
            msg: unsafe { std::mem::zeroed() },
            queued: Vec::new(),
            unsent: 0,
            addr: None,
            arena: Vec::new(),
        })
    }

    fn is_idle(&self) -> bool {
        self.bufs.is_empty() && self.queued.is_empty() && self.addr.is_none()
    }

    /// Nothing queued or in flight: nothing points into `arena`.
    fn arena_free(&self) -> bool {
        self.bufs.is_empty() && self.queued.is_empty()
    }
}

struct Lsn {
    fd: RawFd,
    armed: bool,
    /// Accept with one multishot (true) or one connection per accept
    /// asked for (false: after EMFILE/ENFILE, until the acceptor says
    /// descriptors are free again; see `Core::set_multishot`).
    multishot: bool,
    cancel: bool,
    dropped: bool,
    closing: bool,
    live: bool,
    queue: VecDeque<RawFd>,
    err: i32,
    waker: Option<Waker>,
}

/// The driver's side of the sleep: whether it waits on the eventfd, and the
/// waker that a new submission uses to bring it back.
#[derive(Default)]
pub(crate) struct Parking {
    pub(crate) sleeping: bool,
    /// The deadline the sleeping driver's timer is set for (`u64::MAX`:
    /// none); an earlier one must wake it to re-arm.
    pub(crate) timer_at: u64,
    pub(crate) kicked: bool,
    pub(crate) stop: bool,
    /// The driver is between busy turns: it turns again once the tasks
    /// running now are done, and reads the clock then (`set_rx_deadline`).
    pub(crate) turning: bool,
    pub(crate) waker: Option<Waker>,
}

pub(crate) struct Core {
    // Field order is drop order: the ring goes before the memory it used.
    ring: IoUring,
    bufs: BufRing,
    socks: Vec<Sock>,
    free_socks: Vec<u32>,
    lsns: Vec<Lsn>,
    free_lsns: Vec<u32>,
    /// Sockets whose receive ended on ENOBUFS.
    starved: Vec<u32>,
    /// Submitted (or queued) operations whose last completion has not come.
    inflight: u32,
    /// Idle send states, reused whole (boxes, not values: a `Tx` in flight
    /// must not move, and reusing the box saves its allocation).
    #[allow(clippy::vec_box)]
    tx_pool: Vec<Box<Tx>>,
    /// Read deadlines, earliest first: (ms since `epoch`, socket). At most
    /// one live entry per socket (its `rx_queued`): a later deadline reuses
    /// the queued entry (re-queued when it comes due), so a wait costs a
    /// clock read, not a timer.
    deadlines: BinaryHeap<Reverse<(u64, u32)>>,
    /// Sockets whose deadline the driver's next turn starts (`RX_DL_LATER`;
    /// an entry whose socket lost the flag meanwhile is skipped).
    later: Vec<u32>,
    epoch: Instant,
    pub(crate) parking: Parking,
    pub(crate) stats: Stats,
    pub(crate) mode: RingMode,
    pub(crate) cfg: Config,
    pub(crate) efd: OwnedFd,
}

/// The deadline `timeout` after `since` (both from the core's start), in
/// ms rounded up, never 0 (which means none).
fn deadline_ms(since: Duration, timeout: Duration) -> u64 {
    let ns = since.saturating_add(timeout).as_nanos();
    (u64::try_from(ns.div_ceil(1_000_000)).unwrap_or(u64::MAX)).max(1)
}

pub(crate) fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

fn errno_err(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Builds the ring, trying the cheapest completion mode first: with
/// DEFER_TASKRUN completions run only when we ask (no interrupting task
/// work); COOP_TASKRUN runs them at our next syscall; plain interrupts.
fn build_ring(cfg: &Config) -> io::Result<(IoUring, RingMode)> {
    let order: &[RingMode] = match cfg.mode {
        RingMode::Defer => &[RingMode::Defer, RingMode::Coop, RingMode::Plain],
        RingMode::Coop => &[RingMode::Coop, RingMode::Plain],
        RingMode::Plain => &[RingMode::Plain],
    };
    let mut last = None;
    for &mode in order {
        let mut b = IoUring::builder();
        b.setup_cqsize(cfg.entries.saturating_mul(4))
            .setup_submit_all();
        match mode {
            RingMode::Defer => {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag();
            }
            RingMode::Coop => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            RingMode::Plain => {}
        }
        match b.build(cfg.entries) {
            Ok(r) => {
                if mode != cfg.mode {
                    warn!(
                        "uring: ring set up as {mode:?} ({} refused)",
                        cfg.mode.name()
                    );
                } else {
                    debug!("uring: ring set up as {mode:?}");
                }
                return Ok((r, mode));
            }
            Err(e) => {
                warn!("uring: the kernel refused a {} ring: {e}", mode.name());
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::Unsupported.into()))
}

impl Core {
    pub(crate) fn new(cfg: Config) -> io::Result<Core> {
        let (mut ring, mode) = build_ring(&cfg)?;
        // One fd lookup fewer per enter; optional.
        let _ = ring.submitter().register_ring_fd();
        let mut bufs = BufRing::new(cfg.buffers, cfg.buffer_size, 0)?;
        bufs.register(&ring.submitter())?;
        // SAFETY: eventfd(2) has no memory arguments. Blocking on purpose: an
        // io_uring read of an O_NONBLOCK eventfd completes with EAGAIN
        // instead of waiting.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let efd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        // Signalled only while the driver sleeps.
        ring.completion().disable_eventfd();
        Ok(Core {
            ring,
            bufs,
            socks: Vec::new(),
            free_socks: Vec::new(),
            lsns: Vec::new(),
            free_lsns: Vec::new(),
            starved: Vec::new(),
            inflight: 0,
            tx_pool: Vec::new(),
            deadlines: BinaryHeap::new(),
            later: Vec::new(),
            epoch: Instant::now(),
            parking: Parking {
                timer_at: u64::MAX,
                ..Parking::default()
            },
            stats: Stats::default(),
            mode,
            cfg,
            efd,
        })
    }

    pub(crate) fn buffers_in_kernel(&self) -> u32 {
        self.bufs.in_kernel()
    }

    pub(crate) fn inflight(&self) -> u32 {
        self.inflight
    }

    pub(crate) fn set_eventfd(&mut self, on: bool) {
        if on {
            self.ring.completion().enable_eventfd();
        } else {
            self.ring.completion().disable_eventfd();
        }
    }

    /// Queues one entry (submitted at the next turn, or now if the queue is
    /// full) and brings a sleeping driver back.
    fn push(&mut self, e: squeue::Entry) {
        self.inflight += 1;
        loop {
            // SAFETY: every entry's buffers and addresses are owned by the
            // core (buffer ring, `Tx`) and outlive the operation: they are
            // released only on its last completion.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                let batch = self.cfg.submit_batch as usize;
                if batch > 0 && self.ring.submission().len() >= batch {
                    self.submit_early();
                }
                break;
            }
            self.stats.enters += 1;
            if let Err(err) = self.ring.submit() {
                if !matches!(err.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) {
                    error!("uring: submit: {err}");
                }
                // EBUSY: completions must be reaped first; do it here.
                self.reap();
            }
        }
        self.kick();
    }

    /// Hands the queued entries to the kernel now, without waiting for the
    /// driver's turn: in a large fan-out the first sends leave while the
    /// rest of the core's subscribers are still being served, rather than
    /// all of them after the last one (`Config::submit_batch`).
    /// Completions are left for the turn to reap.
    fn submit_early(&mut self) {
        let n = self.ring.submission().len();
        self.stats.enters += 1;
        self.stats.early_submits += 1;
        super::trace::mark(super::trace::Ev::Submitted, n as u64);
        match self.ring.submit() {
            Ok(_) => self.stats.submitted += n as u64,
            // EBUSY (completions to reap first) or EINTR: the turn submits.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(e) => error!("uring: submit: {e}"),
        }
    }

    /// Brings a sleeping driver back for a turn.
    fn kick(&mut self) {
        if self.parking.sleeping && !self.parking.kicked {
            self.parking.kicked = true;
            self.stats.kicks += 1;
            wake(&mut self.parking.waker);
        }
    }

    /// One loop turn: publish returned buffers, re-arm starved receives,
    /// submit everything queued since the last turn in one `io_uring_enter`
    /// (which also runs deferred completions), then handle the completions.
    /// With `wait`, blocks until at least one completion (for a host whose
    /// own loop is this ring). Returns the completions handled.
    pub(crate) fn turn(&mut self, wait: bool) -> io::Result<usize> {
        self.stats.turns += 1;
        if !self.starved.is_empty() {
            self.rearm_starved();
        }
        self.bufs.publish();
        let (pending, taskrun, overflow) = {
            let mut sq = self.ring.submission();
            sq.sync();
            (sq.len(), sq.taskrun(), sq.cq_overflow())
        };
        let want = usize::from(wait && self.ring.completion().is_empty());
        if pending > 0 || taskrun || overflow || want > 0 {
            self.stats.enters += 1;
            self.stats.submitted += pending as u64;
            if pending > 0 {
                super::trace::mark(super::trace::Ev::Submitted, pending as u64);
            }
            if let Err(e) = self.ring.submit_and_wait(want) {
                match e.raw_os_error() {
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME) => {}
                    _ => return Err(e),
                }
            }
        }
        Ok(self.reap())
    }

    fn reap(&mut self) -> usize {
        let mut total = 0;
        let mut batch = [(0u64, 0i32, 0u32); 64];
        loop {
            let n = {
                let mut cq = self.ring.completion();
                cq.sync();
                let mut n = 0;
                for e in &mut cq {
                    batch[n] = (e.user_data(), e.result(), e.flags());
                    n += 1;
                    if n == batch.len() {
                        break;
                    }
                }
                n
            };
            for &(u, res, flags) in &batch[..n] {
                self.complete(u, res, flags);
            }
            total += n;
            if n < batch.len() {
                break;
            }
        }
        self.stats.completions += total as u64;
        total
    }

    fn complete(&mut self, u: u64, res: i32, flags: u32) {
        let idx = (u & 0xffff_ffff) as u32;
        let more = cqueue::more(flags);
        if !more {
            self.inflight = self.inflight.saturating_sub(1);
        }
        match u >> 32 {
            K_RECV => self.on_recv(idx, res, flags, more),
            K_SEND => self.on_send(idx, res),
            K_CONNECT => self.on_connect(idx, res),
            K_CLOSE => {
                let s = &mut self.socks[idx as usize];
                debug_assert!(s.st & CLOSING != 0);
                *s = Sock::vacant();
                self.free_socks.push(idx);
            }
            K_ACCEPT => self.on_accept(idx, res, more),
            K_LCLOSE => {
                self.lsns[idx as usize].live = false;
                self.free_lsns.push(idx);
            }
            K_CANCEL => {}
            _ => error!("uring: completion with unknown user_data {u:#x}"),
        }
    }

    // ---------------------------------------------------------------- sockets

    pub(crate) fn add_sock(&mut self, fd: OwnedFd, arm: bool) -> u32 {
        use std::os::fd::IntoRawFd;
        let idx = self.free_socks.pop().unwrap_or_else(|| {
            self.socks.push(Sock::vacant());
            (self.socks.len() - 1) as u32
        });
        let s = &mut self.socks[idx as usize];
        *s = Sock::vacant();
        s.fd = fd.into_raw_fd();
        s.st = LIVE;
        if arm {
            self.arm_recv(idx);
        }
        idx
    }

    fn arm_recv(&mut self, i: u32) {
        let s = &mut self.socks[i as usize];
        if s.st & (RX_ARMED | RX_EOF | DROPPED | CONNECTING) != 0 || s.rx_err != 0 {
            return;
        }
        s.st |= RX_ARMED;
        s.st &= !STARVED;
        let e = opcode::RecvMulti::new(types::Fd(s.fd), self.bufs.bgid)
            .build()
            .user_data(ud(K_RECV, i));
        self.stats.recv_arms += 1;
        self.push(e);
    }

    fn rearm_starved(&mut self) {
        // Wait for a useful number of buffers, not the first one back.
        let enough = (self.bufs.count() as u32 / 8).max(1);
        if self.bufs.in_kernel() < enough {
            return;
        }
        let starved = std::mem::take(&mut self.starved);
        for i in starved {
            let s = &mut self.socks[i as usize];
            if s.st & STARVED == 0 {
                continue;
            }
            s.st &= !STARVED;
            if s.rx_held < self.cfg.hold_per_socket {
                self.arm_recv(i);
            }
            // Else its reader re-arms it as it consumes (as after a pause).
        }
    }

    fn on_recv(&mut self, i: u32, res: i32, flags: u32, more: bool) {
        let hold = self.cfg.hold_per_socket;
        let s = &mut self.socks[i as usize];
        if !more {
            s.st &= !(RX_ARMED | RX_CANCEL);
        }
        let dropped = s.st & DROPPED != 0;
        let bid = cqueue::buffer_select(flags);
        if res > 0 {
            let Some(bid) = bid else {
                error!("uring: receive of {res} bytes without a buffer");
                return;
            };
            self.bufs.took(bid, res as u32);
            self.stats.recv_bytes += res as u64;
            if dropped {
                self.bufs.give(bid);
            } else {
                if s.rx_tail == NIL {
                    s.rx_head = bid;
                } else {
                    self.bufs.next[s.rx_tail as usize] = bid;
                }
                s.rx_tail = bid;
                s.rx_held += 1;
                wake(&mut s.rx_waker);
                if s.rx_held >= hold && more && s.st & RX_CANCEL == 0 {
                    // The reader is behind: stop taking buffers for it.
                    s.st |= RX_CANCEL;
                    self.stats.recv_paused += 1;
                    let c = opcode::AsyncCancel::new(ud(K_RECV, i))
                        .build()
                        .user_data(ud(K_CANCEL, i));
                    self.push(c);
                } else if !more && s.rx_held < hold {
                    // Ended for a reason of the kernel's own (data still flows).
                    self.arm_recv(i);
                }
            }
        } else {
            if let Some(bid) = bid {
                self.bufs.took(bid, 0);
                self.bufs.give(bid);
            }
            let err = -res;
            if res == 0 {
                s.st |= RX_EOF;
                wake(&mut s.rx_waker);
            } else if err == libc::ENOBUFS {
                // Ring empty: the data waits in the socket; re-armed by the
                // turn that finds buffers back in the ring.
                self.stats.enobufs += 1;
                if !dropped && s.st & STARVED == 0 {
                    s.st |= STARVED;
                    self.starved.push(i);
                }
            } else if err == libc::ECANCELED {
                // Paused (reader behind) or dropped: re-armed by the reader.
                if !dropped && s.rx_held < hold {
                    wake(&mut s.rx_waker);
                }
            } else if matches!(err, libc::EINTR | libc::EAGAIN) {
                if !dropped {
                    self.arm_recv(i);
                }
            } else {
                s.rx_err = err;
                wake(&mut s.rx_waker);
            }
        }
        if dropped {
            self.maybe_close(i);
        }
    }

    /// Data, end of stream or an error is ready to be read; otherwise the
    /// waker is kept and the receive (re)armed if it is not.
    pub(crate) fn poll_readable(&mut self, i: u32, cx: &Context<'_>) -> bool {
        let s = &mut self.socks[i as usize];
        if s.rx_held > 0 || s.st & RX_EOF != 0 || s.rx_err != 0 {
            return true;
        }
        set_waker(&mut s.rx_waker, cx);
        if s.st & (RX_ARMED | STARVED | CONNECTING) == 0 {
            self.arm_recv(i);
        }
        false
    }

    /// The unread bytes of the oldest held buffer, if any.
    pub(crate) fn head(&self, i: u32) -> Option<&[u8]> {
        let s = &self.socks[i as usize];
        if s.rx_head == NIL {
            return None;
        }
        Some(self.bufs.bytes(s.rx_head, s.rx_off))
    }

    /// Nothing received and unread, no end of stream, no error: an idle
    /// socket whose peer has not closed (as far as completions tell).
    pub(crate) fn rx_idle(&self, i: u32) -> bool {
        let s = &self.socks[i as usize];
        s.rx_held == 0 && s.st & RX_EOF == 0 && s.rx_err == 0
    }

    // ---------------------------------------------------------------- read deadlines

    /// Milliseconds since the core started (the deadlines' clock).
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `at` in the deadlines' clock (ms since the core started).
    pub(crate) fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A read of socket `i` that waits from now on ends as timed out after
    /// `timeout` (rounded up to the millisecond); `None` clears the deadline
    /// (and a timeout not yet reported).
    ///
    /// While the driver is between busy turns the deadline starts from its
    /// next turn's clock reading (`start_deadlines`): later than now by at
    /// most the run of the tasks that turn woke, never earlier, and no
    /// clock read per wait. Otherwise it starts from a reading made here.
    pub(crate) fn set_rx_deadline(&mut self, i: u32, timeout: Option<Duration>) {
        let turning = self.parking.turning;
        let s = &mut self.socks[i as usize];
        let listed = s.st & RX_DL_LATER != 0;
        s.st &= !(RX_TIMEDOUT | RX_DL_LATER);
        let Some(t) = timeout else {
            s.rx_deadline = 0;
            return;
        };
        if turning {
            s.st |= RX_DL_LATER;
            s.rx_deadline = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            if !listed {
                self.later.push(i);
            }
            return;
        }
        let at = deadline_ms(self.epoch.elapsed(), t);
        self.queue_deadline(i, at);
    }

    /// Starts the deadlines set since the last turn from `now`, the turn's
    /// clock reading (made after they were set).
    pub(crate) fn start_deadlines(&mut self, now: Instant) {
        if self.later.is_empty() {
            return;
        }
        let base = now.saturating_duration_since(self.epoch);
        let mut later = std::mem::take(&mut self.later);
        for &i in &later {
            let s = &mut self.socks[i as usize];
            if s.st & RX_DL_LATER == 0 {
                continue;
            }
            s.st &= !RX_DL_LATER;
            let at = deadline_ms(base, Duration::from_nanos(s.rx_deadline));
            self.queue_deadline(i, at);
        }
        later.clear();
        self.later = later;
    }

    /// Sets socket `i`'s deadline to `at` (ms since the core started).
    fn queue_deadline(&mut self, i: u32, at: u64) {
        let s = &mut self.socks[i as usize];
        s.rx_deadline = at;
        if s.rx_queued == 0 || s.rx_queued > at {
            s.rx_queued = at;
            self.deadlines.push(Reverse((at, i)));
            if self.parking.sleeping && at < self.parking.timer_at {
                // The sleeping driver's timer is set for later.
                self.kick();
            }
        }
    }

    /// True (once) when the read deadline passed while the reader waited.
    pub(crate) fn take_rx_timeout(&mut self, i: u32) -> bool {
        let s = &mut self.socks[i as usize];
        let t = s.st & RX_TIMEDOUT != 0;
        s.st &= !RX_TIMEDOUT;
        t
    }

    /// The earliest queued deadline (ms since the core started), if any.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Times out the reads whose deadline is at or before `now` (waking
    /// their readers); entries of deadlines moved later are re-queued.
    /// Returns the reads timed out.
    pub(crate) fn expire(&mut self, now: u64) -> usize {
        let mut n = 0;
        while let Some(&Reverse((at, i))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let s = &mut self.socks[i as usize];
            if s.rx_queued != at {
                continue; // stale: superseded by an earlier entry
            }
            s.rx_queued = 0;
            if s.rx_deadline == 0 {
                continue;
            }
            if s.rx_deadline > now {
                s.rx_queued = s.rx_deadline;
                self.deadlines.push(Reverse((s.rx_deadline, i)));
                continue;
            }
            s.rx_deadline = 0;
            s.st |= RX_TIMEDOUT;
            wake(&mut s.rx_waker);
            n += 1;
        }
        n
    }

    /// End of stream (`Ok(true)`), an error, or neither, once no data is held.
    pub(crate) fn rx_end(&mut self, i: u32) -> io::Result<bool> {
        let s = &mut self.socks[i as usize];
        if s.rx_err != 0 {
            let e = s.rx_err;
            // Reported once, then the stream reads as ended.
            s.rx_err = 0;
            s.st |= RX_EOF;
            return Err(errno_err(e));
        }
        Ok(s.st & RX_EOF != 0)
    }

    /// Marks `n` bytes of the head buffer consumed; an emptied buffer goes
    /// back to the ring at once. Re-arms a paused receive.
    pub(crate) fn consume(&mut self, i: u32, n: usize) {
        let s = &mut self.socks[i as usize];
        let bid = s.rx_head;
        if bid == NIL {
            return;
        }
        let len = self.bufs.len[bid as usize];
        s.rx_off = (s.rx_off as usize + n).min(len as usize) as u32;
        if s.rx_off < len {
            return;
        }
        s.rx_head = self.bufs.next[bid as usize];
        if s.rx_head == NIL {
            s.rx_tail = NIL;
        }
        s.rx_off = 0;
        s.rx_held -= 1;
        self.bufs.give(bid);
        if s.rx_held < self.cfg.hold_per_socket && s.st & (RX_ARMED | STARVED) == 0 {
            self.arm_recv(i);
        }
        if !self.starved.is_empty() {
            // Starved receives are re-armed by a turn once buffers are back.
            self.kick();
        }
    }

    pub(crate) fn held(&self, i: u32) -> usize {
        self.socks[i as usize].rx_held as usize
    }

    pub(crate) fn fd(&self, i: u32) -> RawFd {
        self.socks[i as usize].fd
    }

    // ---------------------------------------------------------------- sends

    /// Hands `bufs` to the socket: sent now if nothing is in flight, else
    /// with the next send. The `Bytes` stay alive until their completion.
    pub(crate) fn queue_send(
        &mut self,
        i: u32,
        bufs: &mut dyn Iterator<Item = Bytes>,
    ) -> io::Result<()> {
        super::trace::mark(super::trace::Ev::SendQueued, 1);
        let s = &mut self.socks[i as usize];
        if s.tx_err != 0 {
            return Err(errno_err(s.tx_err));
        }
        if s.st & CONNECTING != 0 {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let tx =
            s.tx.get_or_insert_with(|| self.tx_pool.pop().unwrap_or_else(Tx::new));
        for b in bufs {
            if !b.is_empty() {
                tx.unsent += b.len();
                tx.queued.push(b);
            }
        }
        if s.st & TX_BUSY == 0 {
            self.start_tx(i);
        }
        Ok(())
    }

    /// Sends `b` on socket `i` now if the socket is idle: live, nothing
    /// queued or in flight, no send or receive error, the peer not gone.
    /// Otherwise gives `b` back untouched, for the caller's own path. The
    /// fan-out's direct send (`subs::Registry::deliver`): the subscriber's
    /// task is not woken, and its completion wakes nobody (no task waits
    /// on this socket's sends); a short send's rest is resubmitted here as
    /// for any send.
    pub(crate) fn send_if_idle(&mut self, i: u32, b: Bytes) -> Result<(), Bytes> {
        let Some(s) = self.socks.get_mut(i as usize) else {
            return Err(b);
        };
        let stop = TX_BUSY | CONNECTING | DROPPED | CLOSING | RX_EOF;
        if b.is_empty()
            || s.st & LIVE == 0
            || s.st & stop != 0
            || s.tx_err != 0
            || s.rx_err != 0
            || s.tx.as_ref().is_some_and(|t| !t.is_idle())
        {
            return Err(b);
        }
        super::trace::mark(super::trace::Ev::Direct, 1);
        self.stats.direct_sends += 1;
        let tx =
            s.tx.get_or_insert_with(|| self.tx_pool.pop().unwrap_or_else(Tx::new));
        tx.unsent += b.len();
        tx.queued.push(b);
        self.start_tx(i);
        Ok(())
    }

    /// Hands a copy of `parts` (`total` bytes) to the socket, as
    /// `queue_send` does with shared `Bytes`. When nothing else of the
    /// socket's is queued or in flight (a response, a request), the copy goes
    /// into the pooled send state's own arena: no allocation; otherwise into
    /// a fresh `Bytes` queued behind the rest.
    pub(crate) fn queue_copy(&mut self, i: u32, parts: &[&[u8]], total: usize) -> io::Result<()> {
        if total == 0 {
            return Ok(());
        }
        let s = &mut self.socks[i as usize];
        if s.tx_err != 0 {
            return Err(errno_err(s.tx_err));
        }
        if s.st & CONNECTING != 0 {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let busy = s.st & TX_BUSY != 0;
        let tx =
            s.tx.get_or_insert_with(|| self.tx_pool.pop().unwrap_or_else(Tx::new));
        let b = if !busy && tx.arena_free() {
            tx.arena.clear();
            for p in parts {
                tx.arena.extend_from_slice(p);
            }
            // SAFETY: the arena is written only here, when no `Bytes` points
            // into it (nothing queued, nothing in flight); this `Bytes` lives
            // in `bufs`/`queued` only, never leaves the core, and is dropped
            // (a no-op for a static `Bytes`) before the arena is written or
            // freed again: `release_tx` clears `bufs` and `queued` first.
            let all: &'static [u8] = unsafe { std::mem::transmute::<&[u8], _>(&tx.arena[..]) };
            Bytes::from_static(all)
        } else {
            let mut v = Vec::with_capacity(total);
            for p in parts {
                v.extend_from_slice(p);
            }
            Bytes::from(v)
        };
        tx.unsent += b.len();
        tx.queued.push(b);
        if !busy {
            self.start_tx(i);
        }
        Ok(())
    }

    fn start_tx(&mut self, i: u32) {
        let s = &mut self.socks[i as usize];
        let Some(tx) = s.tx.as_mut() else { return };
        if tx.bufs.is_empty() {
            std::mem::swap(&mut tx.bufs, &mut tx.queued);
        } else {
            // A short send's remainder goes first, then what queued behind it.
            tx.bufs.append(&mut tx.queued);
        }
        if tx.bufs.is_empty() {
            self.release_tx(i);
            return;
        }
        tx.iov.clear();
        tx.iov
            .extend(tx.bufs.iter().take(IOV_MAX).map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            }));
        let e = if tx.iov.len() == 1 {
            opcode::Send::new(
                types::Fd(s.fd),
                tx.bufs[0].as_ptr(),
                tx.bufs[0].len() as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build()
        } else {
            tx.msg.msg_iov = tx.iov.as_mut_ptr();
            tx.msg.msg_iovlen = tx.iov.len();
            self.stats.sendmsgs += 1;
            opcode::SendMsg::new(types::Fd(s.fd), &tx.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        s.st |= TX_BUSY;
        self.stats.sends += 1;
        super::trace::mark(super::trace::Ev::SendPushed, 1);
        self.push(e.user_data(ud(K_SEND, i)));
    }

    fn release_tx(&mut self, i: u32) {
        let s = &mut self.socks[i as usize];
        if let Some(mut tx) = s.tx.take() {
            tx.bufs.clear();
            tx.queued.clear();
            tx.iov.clear();
            tx.unsent = 0;
            tx.addr = None;
            if tx.arena.capacity() > ARENA_KEEP {
                tx.arena = Vec::new();
            }
            if self.tx_pool.len() < 1024 {
                self.tx_pool.push(tx);
            }
        }
    }

    fn on_send(&mut self, i: u32, res: i32) {
        super::trace::mark(super::trace::Ev::SendDone, 1);
        let s = &mut self.socks[i as usize];
        s.st &= !TX_BUSY;
        if s.st & DROPPED != 0 {
            self.release_tx(i);
            self.maybe_close(i);
            return;
        }
        let Some(tx) = s.tx.as_mut() else { return };
        if res < 0 && matches!(-res, libc::EINTR | libc::EAGAIN) {
            self.start_tx(i);
            return;
        }
        let sent = res.max(0) as usize;
        let asked: usize = tx.iov.iter().map(|v| v.iov_len).sum();
        if res < 0 || (sent == 0 && asked > 0) {
            s.tx_err = if res < 0 { -res } else { libc::EPIPE };
            wake(&mut s.tx_waker);
            self.release_tx(i);
            return;
        }
        self.stats.sent_bytes += sent as u64;
        tx.unsent -= sent;
        // The kernel is done with every buffer of this send: drop what went.
        let mut n = sent;
        let mut done = 0;
        for b in tx.bufs.iter_mut() {
            if n >= b.len() {
                n -= b.len();
                done += 1;
            } else {
                b.advance(n);
                break;
            }
        }
        tx.bufs.drain(..done);
        if sent < asked {
            self.stats.short_sends += 1;
        }
        if tx.bufs.is_empty() && tx.queued.is_empty() {
            wake(&mut s.tx_waker);
            self.release_tx(i);
        } else {
            self.start_tx(i);
        }
    }

    /// All handed-over bytes are sent (`Ok(true)`), or the error that
    /// stopped them; else the waker is kept.
    pub(crate) fn poll_flushed(&mut self, i: u32, cx: &Context<'_>) -> io::Result<bool> {
        let s = &mut self.socks[i as usize];
        if s.tx_err != 0 {
            return Err(errno_err(s.tx_err));
        }
        if s.tx.as_ref().is_none_or(|t| t.is_idle()) && s.st & TX_BUSY == 0 {
            return Ok(true);
        }
        set_waker(&mut s.tx_waker, cx);
        Ok(false)
    }

    /// The error that stopped this socket's sends, if one did.
    pub(crate) fn tx_error(&self, i: u32) -> Option<io::Error> {
        let e = self.socks[i as usize].tx_err;
        (e != 0).then(|| errno_err(e))
    }

    pub(crate) fn unsent(&self, i: u32) -> usize {
        self.socks[i as usize].tx.as_ref().map_or(0, |t| t.unsent)
    }

    // ---------------------------------------------------------------- connect

    pub(crate) fn start_connect(&mut self, fd: OwnedFd, addr: socket2::SockAddr) -> u32 {
        let i = self.add_sock(fd, false);
        let mut tx = self.tx_pool.pop().unwrap_or_else(Tx::new);
        // The address lives in the boxed `Tx` (its heap address does not move
        // with the box) until the connect's completion.
        let a = tx.addr.insert(addr);
        let e = opcode::Connect::new(types::Fd(self.socks[i as usize].fd), a.as_ptr(), a.len())
            .build()
            .user_data(ud(K_CONNECT, i));
        let s = &mut self.socks[i as usize];
        s.tx = Some(tx);
        s.st |= CONNECTING;
        self.stats.connects += 1;
        self.push(e);
        i
    }

    fn on_connect(&mut self, i: u32, res: i32) {
        let s = &mut self.socks[i as usize];
        s.st &= !CONNECTING;
        if let Some(tx) = s.tx.as_mut() {
            tx.addr = None;
        }
        if s.tx.as_ref().is_some_and(|t| t.is_idle()) {
            self.release_tx(i);
        }
        let s = &mut self.socks[i as usize];
        if s.st & DROPPED != 0 {
            self.maybe_close(i);
            return;
        }
        if res < 0 {
            s.tx_err = -res;
            s.rx_err = -res;
        } else {
            self.arm_recv(i);
        }
        let s = &mut self.socks[i as usize];
        wake(&mut s.tx_waker);
    }

    /// Connected (`Ok(true)`), failed, or still connecting (waker kept).
    pub(crate) fn poll_connected(&mut self, i: u32, cx: &Context<'_>) -> io::Result<bool> {
        let s = &mut self.socks[i as usize];
        if s.st & CONNECTING != 0 {
            set_waker(&mut s.tx_waker, cx);
            return Ok(false);
        }
        if s.tx_err != 0 {
            return Err(errno_err(s.tx_err));
        }
        Ok(true)
    }

    // ---------------------------------------------------------------- close

    /// The stream is gone: give back its buffers, drop unsent data, cancel
    /// what is in flight; the fd is closed after the last completion (the
    /// kernel may still read a send's `Bytes` or write a buffer until then).
    pub(crate) fn drop_sock(&mut self, i: u32) {
        let s = &mut self.socks[i as usize];
        s.st |= DROPPED;
        s.st &= !RX_DL_LATER;
        s.rx_deadline = 0;
        s.rx_waker = None;
        s.tx_waker = None;
        let mut bid = s.rx_head;
        while bid != NIL {
            let next = self.bufs.next[bid as usize];
            self.bufs.give(bid);
            bid = next;
        }
        s.rx_head = NIL;
        s.rx_tail = NIL;
        let gave = std::mem::take(&mut s.rx_held) > 0;
        if let Some(tx) = s.tx.as_mut() {
            tx.queued.clear();
        }
        if s.st & STARVED != 0 {
            s.st &= !STARVED;
        }
        let busy = s.st & (RX_ARMED | TX_BUSY | CONNECTING) != 0;
        if gave && !self.starved.is_empty() {
            self.kick();
        }
        let s = &mut self.socks[i as usize];
        if busy {
            let c = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(s.fd)).all())
                .build()
                .user_data(ud(K_CANCEL, i));
            s.st |= RX_CANCEL;
            self.push(c);
        } else {
            self.maybe_close(i);
        }
    }

    fn maybe_close(&mut self, i: u32) {
        let s = &mut self.socks[i as usize];
        if s.st & DROPPED == 0 || s.st & (RX_ARMED | TX_BUSY | CONNECTING | CLOSING) != 0 {
            return;
        }
        s.st |= CLOSING;
        let e = opcode::Close::new(types::Fd(s.fd))
            .build()
            .user_data(ud(K_CLOSE, i));
        self.release_tx(i);
        self.push(e);
    }

    // ---------------------------------------------------------------- accept

    pub(crate) fn add_listener(&mut self, fd: OwnedFd) -> u32 {
        use std::os::fd::IntoRawFd;
        let idx = self.free_lsns.pop().unwrap_or_else(|| {
            self.lsns.push(Lsn {
                fd: -1,
                armed: false,
                multishot: true,
                cancel: false,
                dropped: false,
                closing: false,
                live: false,
                queue: VecDeque::new(),
                err: 0,
                waker: None,
            });
            (self.lsns.len() - 1) as u32
        });
        let l = &mut self.lsns[idx as usize];
        l.fd = fd.into_raw_fd();
        (l.armed, l.cancel, l.dropped, l.closing, l.live, l.err) =
            (false, false, false, false, true, 0);
        l.multishot = true;
        l.queue.clear();
        idx
    }

    fn arm_accept(&mut self, i: u32) {
        let l = &mut self.lsns[i as usize];
        if l.armed || l.dropped {
            return;
        }
        l.armed = true;
        let e = if l.multishot {
            opcode::AcceptMulti::new(types::Fd(l.fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            self.stats.accept_oneshots += 1;
            opcode::Accept::new(types::Fd(l.fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        }
        .user_data(ud(K_ACCEPT, i));
        self.stats.accept_arms += 1;
        self.push(e);
    }

    /// Switches a listener between one multishot accept and one accept per
    /// connection asked for. A multishot armed in the kernel takes every
    /// descriptor freed while it is armed, a reserve the acceptor frees to
    /// refuse a client cleanly included; so after EMFILE/ENFILE (which ends
    /// the multishot) the listener accepts one at a time, like glommio,
    /// until the acceptor switches it back. Switching off cancels an armed
    /// multishot.
    pub(crate) fn set_multishot(&mut self, i: u32, on: bool) {
        let l = &mut self.lsns[i as usize];
        if l.multishot == on {
            return;
        }
        l.multishot = on;
        if !on && l.armed && !l.cancel && !l.dropped {
            l.cancel = true;
            let c = opcode::AsyncCancel::new(ud(K_ACCEPT, i))
                .build()
                .user_data(ud(K_CANCEL, i));
            self.push(c);
        }
    }

    pub(crate) fn multishot(&self, i: u32) -> bool {
        self.lsns[i as usize].multishot
    }

    fn on_accept(&mut self, i: u32, res: i32, more: bool) {
        let l = &mut self.lsns[i as usize];
        if !more {
            l.armed = false;
            l.cancel = false;
        }
        if res >= 0 {
            if l.dropped {
                // SAFETY: a socket the kernel just made for us and nobody saw.
                unsafe { libc::close(res) };
            } else {
                l.queue.push_back(res);
                self.stats.accepted += 1;
                wake(&mut l.waker);
                if l.queue.len() >= ACCEPT_QUEUE && more && !l.cancel {
                    l.cancel = true;
                    let c = opcode::AsyncCancel::new(ud(K_ACCEPT, i))
                        .build()
                        .user_data(ud(K_CANCEL, i));
                    self.push(c);
                }
            }
        } else if -res == libc::ECANCELED {
            // Cancelled to switch modes (`set_multishot`): a waiting
            // acceptor arms the accept of the new mode.
            if !more && !l.dropped {
                wake(&mut l.waker);
            }
        } else if !l.dropped {
            // EMFILE, ENFILE, ENOMEM...: reported to the acceptor, which
            // decides when to try again (the connection waits in the backlog).
            // The multishot has ended; out of descriptors, the listener
            // accepts one at a time from now on (`set_multishot`).
            self.stats.accept_errors += 1;
            l.err = -res;
            if matches!(-res, libc::EMFILE | libc::ENFILE) {
                l.multishot = false;
            }
            wake(&mut l.waker);
        }
        let l = &mut self.lsns[i as usize];
        if l.multishot
            && !l.dropped
            && !l.armed
            && l.err == 0
            && l.queue.len() < ACCEPT_QUEUE
            && !more
            && res >= 0
        {
            // The multishot ended for a reason of the kernel's own.
            self.arm_accept(i);
        }
        self.maybe_close_listener(i);
    }

    /// An accepted socket, an accept error (once), or pending.
    pub(crate) fn poll_accept(&mut self, i: u32, cx: &Context<'_>) -> Option<io::Result<OwnedFd>> {
        let l = &mut self.lsns[i as usize];
        if let Some(fd) = l.queue.pop_front() {
            // SAFETY: an fd the kernel made for us, owned by nobody else.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            if l.multishot && !l.armed && l.err == 0 && l.queue.len() < ACCEPT_QUEUE / 2 {
                self.arm_accept(i);
            }
            return Some(Ok(fd));
        }
        if l.err != 0 {
            let e = std::mem::take(&mut l.err);
            return Some(Err(errno_err(e)));
        }
        set_waker(&mut l.waker, cx);
        if !l.armed {
            self.arm_accept(i);
        }
        None
    }

    pub(crate) fn drop_listener(&mut self, i: u32) {
        let l = &mut self.lsns[i as usize];
        l.dropped = true;
        l.waker = None;
        for fd in l.queue.drain(..) {
            // SAFETY: accepted sockets nobody took.
            unsafe { libc::close(fd) };
        }
        if l.armed {
            let c = opcode::AsyncCancel::new(ud(K_ACCEPT, i))
                .build()
                .user_data(ud(K_CANCEL, i));
            self.push(c);
        }
        self.maybe_close_listener(i);
    }

    fn maybe_close_listener(&mut self, i: u32) {
        let l = &mut self.lsns[i as usize];
        if !l.dropped || l.armed || l.closing {
            return;
        }
        l.closing = true;
        let e = opcode::Close::new(types::Fd(l.fd))
            .build()
            .user_data(ud(K_LCLOSE, i));
        self.push(e);
    }

    pub(crate) fn listener_fd(&self, i: u32) -> RawFd {
        self.lsns[i as usize].fd
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Every stream is gone (each holds the core), but their closes and
        // cancellations may still be in flight. Cancel anything left and
        // wait, boundedly, for the kernel to finish with our memory.
        if self.inflight > 0 {
            let c = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(ud(K_CANCEL, u32::MAX));
            self.push(c);
        }
        let ts = types::Timespec::new().nsec(10_000_000);
        for _ in 0..200 {
            if self.inflight == 0 {
                break;
            }
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
        }
        if self.inflight == 0 {
            let _ = self.ring.submitter().unregister_buf_ring(self.bufs.bgid);
        } else {
            // The kernel may still write a buffer or read a send: leak both
            // rather than free memory it could touch.
            error!(
                "uring: {} operations still in flight at drop; leaking their memory",
                self.inflight
            );
            self.bufs.leak = true;
            std::mem::forget(std::mem::take(&mut self.socks));
        }
        for l in self.lsns.iter().filter(|l| l.live && !l.closing) {
            // SAFETY: a listener fd we own whose close never went in.
            unsafe { libc::close(l.fd) };
        }
        for s in self
            .socks
            .iter()
            .filter(|s| s.st & LIVE != 0 && s.st & CLOSING == 0)
        {
            // SAFETY: a socket fd we own whose close never went in.
            unsafe { libc::close(s.fd) };
        }
    }
}
