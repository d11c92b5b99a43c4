//! corepin's own per-core io_uring data path for sockets (runtime-facing).
//!
//! glommio stays the executor (tasks, timers, pinning); socket reads and
//! writes go through a ring corepin owns, one per core:
//!
//! - **receive**: one multishot receive per socket into a provided-buffer
//!   ring. A buffer is held by a socket only while its data is unconsumed
//!   and goes back to the ring the moment it is consumed, so an idle
//!   connection owns no read buffer (its state is the [`UringStream`] handle
//!   and a small slot in the core, see `PERFORMANCE.md`);
//! - **send**: `send`, or `sendmsg` over several shared `Bytes`, one in flight
//!   per socket; what is handed over meanwhile goes out together next, and a
//!   short send's remainder is resubmitted by the driver itself. The `Bytes`
//!   live until the kernel's completion;
//! - **batching**: operations queue in the submission ring and everything
//!   produced in one loop turn goes to the kernel in one `io_uring_enter`,
//!   or every `Config::submit_batch` entries when a turn produces more;
//! - **sleeping inside glommio**: the ring signals an eventfd
//!   (`IORING_REGISTER_EVENTFD`) that the driver task reads through
//!   glommio's own ring, so an idle core sleeps in glommio as before.
//!
//! Start one [`Uring`] per executor thread, spawn [`Uring::drive`] on it,
//! then make streams from accepted or connected sockets.
//!
//! How a connection uses a [`UringStream`]: parse straight from the
//! provided buffer ([`UringStream::poll_recv_buf`], then
//! [`RecvBuf::consume`] what was parsed) and copy only a message that spans
//! buffers into its own `InBuf` (or read through `AsyncRead`, which copies);
//! hand output over with [`UringStream::start_send`] /
//! [`UringStream::start_send_vectored`] (no waiting: it goes out with the
//! loop turn's other submissions), watch [`UringStream::unsent`] for a slow
//! peer, and wait with [`UringStream::poll_flush`] only for backpressure or
//! before closing. Every `poll_*` takes a `Context`, so one `poll_fn` can
//! drive a client, a backend and a channel together. Dropping the stream
//! closes it (after cancelling what is in flight).

mod bufring;
mod ring;
mod stream;
#[cfg(test)]
mod tests;
pub mod trace;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;

pub use stream::{RecvBuf, UringListener, UringStream};

use self::ring::Core;

/// How completions reach the ring's thread (the kernel may refuse a mode;
/// the ring then falls back to the next one and logs it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions run only when the driver
    /// enters the ring; never an interrupt.
    Defer,
    /// `COOP_TASKRUN`: completions run at the thread's next syscall.
    Coop,
    /// Neither: completions interrupt the thread as task work.
    Plain,
}

impl RingMode {
    pub fn name(self) -> &'static str {
        match self {
            RingMode::Defer => "SINGLE_ISSUER|DEFER_TASKRUN",
            RingMode::Coop => "COOP_TASKRUN",
            RingMode::Plain => "plain",
        }
    }
}

/// Sizes of one core's ring.
#[derive(Clone, Debug)]
pub struct Config {
    /// Submission queue entries (the completion queue is 4× this).
    pub entries: u32,
    /// Provided receive buffers (a power of two, at most 32768).
    pub buffers: u16,
    /// Bytes per receive buffer.
    pub buffer_size: u32,
    /// Buffers one socket may hold unread before its receive is paused.
    pub hold_per_socket: u16,
    /// The completion mode to try first.
    pub mode: RingMode,
    /// Consecutive busy turns the driver runs before it lets glommio poll
    /// its own rings and timers (0: after every turn that found work).
    pub busy_turns: u32,
    /// Submit as soon as this many entries are queued, not only at the
    /// driver's turn (0: only at the turn). A publish wakes every
    /// subscriber task on the core before the driver's next turn; without
    /// this their sends all waited for the last task, and a turn's
    /// thousands of completions overflowed the completion queue
    /// (PERFORMANCE.md, "fan-out on the ring: submitted as it is made").
    pub submit_batch: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            entries: 1024,
            buffers: 1024,
            buffer_size: 4096,
            hold_per_socket: 8,
            mode: RingMode::Defer,
            busy_turns: 16,
            submit_batch: 64,
        }
    }
}

/// Counters of one core's ring (plain data; read with [`Uring::stats`]).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Driver loop turns.
    pub turns: u64,
    /// `io_uring_enter` calls made by the driver.
    pub enters: u64,
    /// Entries submitted.
    pub submitted: u64,
    /// Completions handled.
    pub completions: u64,
    /// Times the driver slept on the eventfd (through glommio).
    pub sleeps: u64,
    /// Times a new submission woke a sleeping driver.
    pub kicks: u64,
    /// `io_uring_enter`s made before the turn (`Config::submit_batch`).
    pub early_submits: u64,
    /// Multishot receives armed (first arm and re-arms).
    pub recv_arms: u64,
    /// Receives paused because their reader held `hold_per_socket` buffers.
    pub recv_paused: u64,
    /// Receives ended by an empty buffer ring.
    pub enobufs: u64,
    pub recv_bytes: u64,
    /// Send operations (`send` or `sendmsg`) and how many were `sendmsg`.
    pub sends: u64,
    pub sendmsgs: u64,
    /// Sends that completed short and were resubmitted for the rest.
    pub short_sends: u64,
    /// Sends made straight from a fan-out to an idle held stream
    /// ([`Uring::send_if_idle`]), no task woken.
    pub direct_sends: u64,
    pub sent_bytes: u64,
    /// Connects submitted (backend sockets made on the ring).
    pub connects: u64,
    pub accept_arms: u64,
    /// Of those, one-shot accepts (a listener out of descriptors).
    pub accept_oneshots: u64,
    pub accepted: u64,
    pub accept_errors: u64,
}

thread_local! {
    /// This core's ring when client and backend connections use the io_uring data path
    /// (`data_path = "uring"`); set once by the server as the core starts.
    static CURRENT: RefCell<Option<Uring>> = const { RefCell::new(None) };
}

/// Makes `ring` this thread's data path (`None`: glommio's sockets).
pub fn set_current(ring: Option<Uring>) {
    CURRENT.with(|c| *c.borrow_mut() = ring);
}

/// This thread's ring, if client and plain backend connections go through one.
pub fn current() -> Option<Uring> {
    CURRENT.with(|c| c.borrow().clone())
}

/// One core's ring. Cheap to clone (a shared handle); not `Send`.
#[derive(Clone)]
pub struct Uring {
    core: Rc<RefCell<Core>>,
}

impl Uring {
    /// Sets up the ring, its provided buffers and its eventfd on this thread
    /// (with `SINGLE_ISSUER` only this thread may drive it).
    pub fn new(cfg: Config) -> io::Result<Uring> {
        Ok(Uring {
            core: Rc::new(RefCell::new(Core::new(cfg)?)),
        })
    }

    /// The completion mode the kernel accepted.
    pub fn mode(&self) -> RingMode {
        self.core.borrow().mode
    }

    pub fn stats(&self) -> Stats {
        self.core.borrow().stats.clone()
    }

    /// Receive buffers currently in the kernel's ring (not held by a socket).
    pub fn buffers_free(&self) -> u32 {
        self.core.borrow().buffers_in_kernel()
    }

    /// Operations submitted whose last completion has not arrived.
    pub fn in_flight(&self) -> u32 {
        self.core.borrow().inflight()
    }

    /// One loop turn: submit what is queued, handle what completed; with
    /// `wait`, block in the kernel until something completes. For a host
    /// whose main loop is this ring; under glommio use [`Uring::drive`].
    pub fn turn(&self, wait: bool) -> io::Result<usize> {
        self.core.borrow_mut().turn(wait)
    }

    /// Makes [`Uring::drive`] return at its next wake-up.
    pub fn stop(&self) {
        let mut c = self.core.borrow_mut();
        c.parking.stop = true;
        if let Some(w) = c.parking.waker.take() {
            w.wake();
        }
    }

    /// A stream over a connected socket (blocking or not; the ring never
    /// blocks). Its receive is armed at once.
    pub fn stream(&self, fd: OwnedFd) -> UringStream {
        let idx = self.core.borrow_mut().add_sock(fd, true);
        UringStream::new(self.core.clone(), idx)
    }

    /// Sends `b` on the stream at `slot` ([`UringStream::slot`]) now if
    /// its socket is idle (nothing queued or in flight, no error, the peer
    /// not gone), without waking its task; else gives `b` back. For the
    /// fan-out to held streams: the caller must know the slot is still
    /// that stream's (a slot is reused only after its stream is dropped
    /// and its close has completed).
    pub fn send_if_idle(&self, slot: u32, b: Bytes) -> Result<(), Bytes> {
        self.core.borrow_mut().send_if_idle(slot, b)
    }

    /// Connects a new TCP socket (`TCP_NODELAY` set) through the ring.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<UringStream> {
        let domain = socket2::Domain::for_address(addr);
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), None)?;
        sock.set_nodelay(true)?;
        let idx = self
            .core
            .borrow_mut()
            .start_connect(OwnedFd::from(sock), addr.into());
        let stream = UringStream::new(self.core.clone(), idx);
        futures_lite::future::poll_fn(|cx| match self.core.borrow_mut().poll_connected(idx, cx) {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        })
        .await?;
        Ok(stream)
    }

    /// Accepts on `listener` (a listening socket) with a multishot accept.
    pub fn listener(&self, listener: OwnedFd) -> UringListener {
        let idx = self.core.borrow_mut().add_listener(listener);
        UringListener::new(self.core.clone(), idx)
    }

    /// The driver: runs the ring's turns inside glommio until [`Uring::stop`].
    /// Spawn it once per core: `glommio::spawn_local(ring.clone().drive())`.
    ///
    /// While completions keep coming it turns again after the woken tasks
    /// have run (so their submissions share one `io_uring_enter`); after
    /// `busy_turns` such turns, or when a turn finds nothing, it lets
    /// glommio run its own rings: it enables the ring's eventfd and awaits
    /// a read of it through glommio, or a new submission's wake-up.
    pub async fn drive(self) -> io::Result<()> {
        // glommio owns (and closes) a duplicate of the eventfd.
        let efd = self.core.borrow().efd.try_clone()?;
        // SAFETY: `efd` is an fd we own; glommio takes it over.
        let file = Rc::new(unsafe { glommio::io::BufferedFile::from_raw_fd(efd.into_raw_fd()) });
        type Read = Pin<Box<dyn Future<Output = glommio::Result<glommio::io::ReadResult, ()>>>>;
        let mut read: Option<Read> = None;
        // One glommio timer for the earliest read deadline, armed only
        // while the driver sleeps (a busy driver checks the clock per turn).
        let mut timer: Option<(u64, glommio::timer::Timer)> = None;
        let busy_turns = self.core.borrow().cfg.busy_turns;
        let mut busy = 0u32;
        // Each turn reads the clock once: the deadlines, and the tasks the
        // turn wakes (`crate::clock`), take that reading. Stopped turning
        // (parked, glommio's reactor pass, ended, failed), fresh readings.
        let turning = Turning(self.core.clone());
        loop {
            if self.core.borrow().parking.stop {
                return Ok(());
            }
            let n = {
                let mut c = self.core.borrow_mut();
                let now = std::time::Instant::now();
                crate::clock::set_turn(Some(now));
                c.parking.turning = true;
                c.start_deadlines(now);
                let mut n = 0;
                if let Some(at) = c.next_deadline() {
                    let now = c.ms_at(now);
                    if at <= now {
                        n += c.expire(now);
                    }
                }
                n + c.turn(false)?
            };
            if n > 0 {
                busy += 1;
                if busy <= busy_turns {
                    // Turn again once the tasks just woken have run.
                    futures_lite::future::yield_now().await;
                } else {
                    // Let glommio poll its own rings and timers first: a
                    // zero timer fires only in glommio's reactor pass.
                    busy = 0;
                    turning.stop();
                    glommio::timer::sleep(std::time::Duration::ZERO).await;
                }
                continue;
            }
            busy = 0;
            turning.stop();
            let raced = {
                let mut c = self.core.borrow_mut();
                c.set_eventfd(true);
                // Completions that came between the turn and the enable.
                let raced = c.turn(false)? > 0;
                if raced {
                    c.set_eventfd(false);
                } else {
                    c.parking.sleeping = true;
                    c.parking.kicked = false;
                    c.stats.sleeps += 1;
                    match c.next_deadline() {
                        Some(at) => {
                            let d = std::time::Duration::from_millis(at.saturating_sub(c.now_ms()));
                            match &mut timer {
                                Some((t_at, _)) if *t_at == at => {}
                                Some((t_at, t)) => {
                                    *t_at = at;
                                    t.reset(d);
                                }
                                None => timer = Some((at, glommio::timer::Timer::new(d))),
                            }
                            c.parking.timer_at = at;
                        }
                        None => {
                            timer = None;
                            c.parking.timer_at = u64::MAX;
                        }
                    }
                }
                raced
            };
            if raced {
                futures_lite::future::yield_now().await;
                continue;
            }
            futures_lite::future::poll_fn(|cx| {
                {
                    let mut c = self.core.borrow_mut();
                    if c.parking.kicked || c.parking.stop {
                        return Poll::Ready(());
                    }
                    ring::set_waker(&mut c.parking.waker, cx);
                }
                if let Some((_, t)) = timer.as_mut() {
                    if Pin::new(t).poll(cx).is_ready() {
                        timer = None;
                        return Poll::Ready(());
                    }
                }
                let f = read.get_or_insert_with(|| {
                    let file = file.clone();
                    Box::pin(async move { file.read_at(0, 8).await })
                });
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        read = None;
                        if let Err(e) = r {
                            warn!("uring: reading the ring's eventfd: {e}");
                        }
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            let mut c = self.core.borrow_mut();
            c.parking.sleeping = false;
            c.parking.timer_at = u64::MAX;
            c.set_eventfd(false);
        }
    }
}

/// The driver's busy turns (`Parking::turning`, `crate::clock`): ended
/// when it stops turning, and when the driver ends, however it ends.
struct Turning(Rc<RefCell<Core>>);

impl Turning {
    fn stop(&self) {
        crate::clock::set_turn(None);
        if let Ok(mut c) = self.0.try_borrow_mut() {
            c.parking.turning = false;
        }
    }
}

impl Drop for Turning {
    fn drop(&mut self) {
        self.stop();
    }
}
