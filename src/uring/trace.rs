//! A per-core timeline of fan-outs, for measuring (PERFORMANCE.md, "Fan-out
//! on the ring"): with `COREPIN_FANOUT_TRACE=1` in the environment each core
//! notes when a delivery pass starts and ends, how many messages it handed
//! to subscribers' queues, when subscriber tasks hand their bytes to the
//! ring, when the ring submits and when the sends complete (first, last and
//! count of each, CLOCK_MONOTONIC nanoseconds, the clock `corepin-load`
//! stamps its messages with). Once the core has been quiet for a moment the
//! episode is printed as one `fanout-trace` line on stderr and forgotten.
//! Off (the default), each mark is one read of a thread-local flag. The
//! ring's marks only: on the `glommio` data path a core prints its
//! delivery pass alone.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

/// What is marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ev {
    /// The delivery task took a slice of the inbox.
    DeliverStart,
    /// It finished handing that slice out.
    DeliverEnd,
    /// A message went into a subscriber's queue.
    Pushed,
    /// A connection task handed bytes to the ring (`queue_send`).
    SendQueued,
    /// A send operation went into the submission queue.
    SendPushed,
    /// Entries went to the kernel (`io_uring_enter`); the count is entries.
    Submitted,
    /// A send's completion was handled.
    SendDone,
    /// A fan-out sent a message straight to an idle held stream's socket
    /// (no queue, no task woken).
    Direct,
}

const EVS: [Ev; 8] = [
    Ev::DeliverStart,
    Ev::DeliverEnd,
    Ev::Pushed,
    Ev::SendQueued,
    Ev::SendPushed,
    Ev::Submitted,
    Ev::SendDone,
    Ev::Direct,
];

fn name(e: Ev) -> &'static str {
    match e {
        Ev::DeliverStart => "deliver_start",
        Ev::DeliverEnd => "deliver_end",
        Ev::Pushed => "pushed",
        Ev::SendQueued => "send_queued",
        Ev::SendPushed => "send_pushed",
        Ev::Submitted => "submitted",
        Ev::SendDone => "send_done",
        Ev::Direct => "direct",
    }
}

#[derive(Clone, Copy, Default)]
struct Span {
    n: u64,
    first: u64,
    last: u64,
}

/// Whether tracing is on (read once per process).
/// Refuses a `COREPIN_FANOUT_TRACE` corepin would not act on: the trace
/// is on for "1" and off when unset, empty or "0"; anything else is a
/// mistake said at start-up rather than a trace silently left off.
pub fn check_env() -> Result<(), String> {
    match std::env::var_os("COREPIN_FANOUT_TRACE") {
        None => Ok(()),
        Some(v) if v.is_empty() || v == "0" || v == "1" => Ok(()),
        Some(v) => Err(format!(
            "COREPIN_FANOUT_TRACE must be 1 (trace each fan-out) or 0, not {:?}",
            v.to_string_lossy().chars().take(64).collect::<String>()
        )),
    }
}

pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("COREPIN_FANOUT_TRACE").is_some_and(|v| v == "1"))
}

thread_local! {
    static ON: Cell<bool> = Cell::new(enabled());
    static SPANS: RefCell<[Span; 8]> = const { RefCell::new([Span { n: 0, first: 0, last: 0 }; 8]) };
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on one
/// host, so corepin-load's per-reader timeline lines up with these marks.
pub fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `clock` (a `clock_gettime` clock id) in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Notes `count` occurrences of `e` now (when tracing is on).
#[inline]
pub fn mark(e: Ev, count: u64) {
    if !ON.with(Cell::get) {
        return;
    }
    let t = now_ns();
    SPANS.with(|s| {
        let s = &mut s.borrow_mut()[e as usize];
        if s.n == 0 {
            s.first = t;
        }
        s.n += count;
        s.last = t;
    });
}

/// Prints this core's episode once nothing was marked for `quiet_ns`, and
/// forgets it; called by the core's sweep.
pub fn flush_if_quiet(core: usize, quiet_ns: u64) {
    if let Some(l) = take_line(core, quiet_ns) {
        eprintln!("{l}");
    }
}

/// This core's episode as a `fanout-trace` line once it has been quiet
/// for `quiet_ns` (and forgets it); `None` while tracing is off, nothing
/// was marked, or marks are still coming.
fn take_line(core: usize, quiet_ns: u64) -> Option<String> {
    if !ON.with(Cell::get) {
        return None;
    }
    let now = now_ns();
    SPANS.with(|s| {
        let mut s = s.borrow_mut();
        let last = s.iter().map(|x| x.last).max().unwrap_or(0);
        if s.iter().all(|x| x.n == 0) || now.saturating_sub(last) < quiet_ns {
            return None;
        }
        let mut line = format!("fanout-trace core={core}");
        for e in EVS {
            let x = s[e as usize];
            if x.n > 0 {
                line += &format!(
                    " {0}_n={1} {0}_first={2} {0}_last={3}",
                    name(e),
                    x.n,
                    x.first,
                    x.last
                );
            }
        }
        *s = [Span::default(); EVS.len()];
        Some(line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_counted_printed_once_quiet_and_forgotten() {
        // Off (no COREPIN_FANOUT_TRACE in the test's environment): nothing.
        mark(Ev::Pushed, 1);
        assert_eq!(take_line(0, 0), None);
        ON.with(|on| on.set(true));
        mark(Ev::DeliverStart, 1);
        mark(Ev::Pushed, 1);
        mark(Ev::Pushed, 1);
        mark(Ev::Submitted, 64);
        // Still within the quiet period: not yet.
        assert_eq!(take_line(3, u64::MAX), None);
        let line = take_line(3, 0).expect("a line once quiet");
        let fields: std::collections::HashMap<&str, &str> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .collect();
        assert!(line.starts_with("fanout-trace "));
        assert_eq!(fields["core"], "3");
        assert_eq!(fields["deliver_start_n"], "1");
        assert_eq!(fields["pushed_n"], "2");
        assert_eq!(fields["submitted_n"], "64");
        let ns = |k: &str| fields[k].parse::<u64>().expect("nanoseconds");
        assert!(ns("pushed_first") > 0 && ns("pushed_first") <= ns("pushed_last"));
        assert!(!fields.contains_key("send_done_n"));
        // Forgotten: the next episode starts empty.
        assert_eq!(take_line(3, 0), None);
        ON.with(|on| on.set(false));
    }
}
