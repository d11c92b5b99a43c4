//! Sockets for the load generator: a clock shared by every process on the
//! host, connects spread over loopback source addresses, and readiness
//! polling for many sockets.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use polling::{Event, PollMode};
use socket2::{Domain, Socket, Type};

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on one
/// host (a publisher's send time is checked by a worker process), and the
/// clock of corepin's own fan-out trace (`COREPIN_FANOUT_TRACE`).
pub use corepin::uring::trace::now_ns;

/// This thread's CPU time (user and system) in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    corepin::uring::trace::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The loopback source address for connection `i`: 127.0.0.2..=127.0.0.254,
/// so N connections are not limited to one address's ephemeral ports.
pub fn source_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % 253) as u8)
}

/// Connects to `to` (blocking). When `to` is a loopback address the
/// connection comes from `source_addr(i)`.
pub fn connect_from(i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(to4) = to else {
        return TcpStream::connect(to);
    };
    if !to4.ip().is_loopback() {
        return TcpStream::connect(to);
    }
    // socket2 (the socket calls std does not offer: bind before connect)
    // rather than raw libc: the descriptor is owned, and closed on every
    // error path, by construction. CLOEXEC is its default.
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // Lets a source port be reused at once when a previous run's
    // connections are still in TIME_WAIT.
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from((source_addr(i), 0)).into())?;
    s.connect(&to.into())?;
    Ok(s.into())
}

/// Reads what a non-blocking socket has now into `into` (through
/// `scratch`); false when the peer closed or the read failed.
pub fn read_available(s: &mut TcpStream, scratch: &mut [u8], into: &mut Vec<u8>) -> bool {
    loop {
        match s.read(scratch) {
            Ok(0) => return false,
            Ok(k) => into.extend_from_slice(&scratch[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// Writes all of `bytes` to a socket that is otherwise used non-blocking.
/// The load tool's requests are small, so this never waits long.
pub fn write_all(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    let r = s.write_all(bytes);
    s.set_nonblocking(true)?;
    r
}

/// Level-triggered readiness for many sockets (epoll, through the
/// `polling` crate): every socket is registered for input with a token,
/// and `wait` returns the tokens that are readable. A socket must be
/// removed before it is closed (`polling`'s contract for `add`).
pub struct Poller {
    poller: polling::Poller,
    events: polling::Events,
}

impl Default for Poller {
    fn default() -> Self {
        Self::new()
    }
}

impl Poller {
    /// A new poller; the process exits with the reason if the kernel
    /// refuses one.
    pub fn new() -> Poller {
        let poller =
            polling::Poller::new().unwrap_or_else(|e| crate::args::die(&format!("epoll: {e}")));
        Poller {
            poller,
            events: polling::Events::with_capacity(EVENTS),
        }
    }

    /// Registers `s` for input, level-triggered, under `token` (any but
    /// `usize::MAX`, which `polling` keeps for its own wake-ups).
    pub fn add(&self, s: &impl AsRawFd, token: usize) {
        // SAFETY: every caller removes the socket (`remove`) before
        // dropping it, as `polling` requires.
        let r = unsafe {
            self.poller
                .add_with_mode(s, Event::readable(token), PollMode::Level)
        };
        if let Err(e) = r {
            crate::args::die(&format!("epoll add: {e}"));
        }
    }

    pub fn remove(&self, s: &impl AsFd) {
        // Fails only for a socket that is not registered.
        let _ = self.poller.delete(s);
    }

    /// Waits up to `timeout_ms` and returns the ready tokens.
    pub fn wait(&mut self, timeout_ms: u64, ready: &mut Vec<usize>) {
        ready.clear();
        self.events.clear();
        let _ = self
            .poller
            .wait(&mut self.events, Some(Duration::from_millis(timeout_ms)));
        ready.extend(self.events.iter().map(|e| e.key));
    }
}

/// The loop of the load tool's backends: one thread, level-triggered
/// readiness. Accepts on `l` (set non-blocking here), keeps each
/// connection's unread bytes and a state made by `new_state`, and after
/// each read calls `serve(state, unread, out)`, which consumes what it
/// answers from `unread` and returns false to close the connection. What
/// it put in `out` is written before that; a failed write closes too.
pub fn serve_connections<S>(
    l: &TcpListener,
    mut new_state: impl FnMut() -> S,
    mut serve: impl FnMut(&mut S, &mut Vec<u8>, &mut Vec<u8>) -> bool,
) -> ! {
    /// The listener's token; connections count up from 0 and wrap below
    /// it (`polling` keeps `usize::MAX` for itself).
    const LISTENER: usize = usize::MAX - 1;
    struct Conn<S> {
        s: TcpStream,
        unread: Vec<u8>,
        state: S,
    }
    let _ = l.set_nonblocking(true);
    let mut poller = Poller::new();
    poller.add(l, LISTENER);
    let mut conns: HashMap<usize, Conn<S>> = HashMap::new();
    let mut next = 0usize;
    let mut ready = Vec::new();
    let mut scratch = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    loop {
        poller.wait(1000, &mut ready);
        for &token in &ready {
            if token == LISTENER {
                while let Ok((s, _)) = l.accept() {
                    let _ = s.set_nonblocking(true);
                    let _ = s.set_nodelay(true);
                    poller.add(&s, next);
                    let state = new_state();
                    conns.insert(
                        next,
                        Conn {
                            s,
                            unread: Vec::new(),
                            state,
                        },
                    );
                    next = (next + 1) % LISTENER;
                }
                continue;
            }
            let Some(c) = conns.get_mut(&token) else {
                continue;
            };
            let open = read_available(&mut c.s, &mut scratch, &mut c.unread);
            out.clear();
            let keep = serve(&mut c.state, &mut c.unread, &mut out);
            let written = out.is_empty() || write_all(&mut c.s, &out).is_ok();
            if !(open && keep && written) {
                poller.remove(&c.s);
                conns.remove(&token);
            }
        }
    }
}

/// Readiness events taken per wait.
const EVENTS: NonZeroUsize = match NonZeroUsize::new(1024) {
    Some(n) => n,
    None => panic!("1024 is not zero"),
};

/// CPU time (user + system, all threads) of a set of processes, read from
/// /proc: the server side's cost of a run, however many processes it is.
pub struct CpuClock {
    pids: Vec<u32>,
    /// Clock ticks per second (`_SC_CLK_TCK`).
    hz: f64,
}

impl CpuClock {
    pub fn new(pids: Vec<u32>) -> CpuClock {
        // SAFETY: sysconf only reads a system constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        CpuClock {
            pids,
            hz: if hz > 0 { hz as f64 } else { 100.0 },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// Seconds of CPU used so far by the processes (those still alive):
    /// from each thread's scheduler statistics (nanoseconds) where the
    /// kernel keeps them, else from the process's utime + stime (clock
    /// ticks, 10 ms here: too coarse for a run of a fraction of a second).
    pub fn seconds(&self) -> f64 {
        self.pids
            .iter()
            .map(|&p| {
                thread_ns(p).map_or_else(|| cpu_ticks(p) as f64 / self.hz, |ns| ns as f64 / 1e9)
            })
            .sum()
    }
}

/// The time on CPU of every thread of a process, in nanoseconds, from
/// /proc/PID/task/TID/schedstat; `None` where the kernel has no such file.
fn thread_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}

/// utime + stime of a process from /proc/PID/stat (0 if it is gone).
fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; fields after it are
    // counted from its closing parenthesis.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// Parses `--cpu-pids 12,34`.
pub fn parse_pids(list: &str) -> Option<Vec<u32>> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_read_and_grows() {
        let c = CpuClock::new(vec![std::process::id()]);
        let before = c.seconds();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(c.seconds() > before, "CPU time moved");
        assert_eq!(parse_pids("1, 2,3"), Some(vec![1, 2, 3]));
        assert_eq!(parse_pids("1,x"), None);
        assert_eq!(CpuClock::new(vec![u32::MAX]).seconds(), 0.0);
    }
}
