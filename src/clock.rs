//! A core's clock read once per io_uring loop turn (issue 16): while the
//! ring driver turns (`uring::Uring::drive`), it reads the monotonic clock
//! once at the start of each turn and the tasks that turn wakes take that
//! reading instead of each reading the clock again (a proxied request read
//! it five times: the upstream latency histogram twice, two read
//! deadlines, the signing cache). Outside a driver's busy turns (the
//! `glommio` data path, a parked or stopped driver, any other thread)
//! [`now`] is a fresh read.
//!
//! Precision: a turn's reading is older than the true time by at most the
//! time the tasks that turn woke have run so far, microseconds in the
//! common case. What takes it is chosen for that: the latency histogram
//! (millisecond buckets) and the signing cache (a token renewed after a
//! minute, valid for an hour). Read deadlines do not take it: they start
//! from the driver's *next* reading (`uring::ring`'s deferred deadlines),
//! so a deadline never fires early.

use std::cell::Cell;
use std::time::Instant;

std::thread_local! {
    /// The running turn's reading; `None` outside a driver's busy turns.
    static TURN: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time now, as read at the start of the running ring turn (see the
/// module's note on precision), else read now.
pub fn now() -> Instant {
    TURN.try_with(Cell::get)
        .ok()
        .flatten()
        .unwrap_or_else(Instant::now)
}

/// The ring driver's turn began at `at`; `None`: it stopped turning (it
/// parks, lets glommio's reactor run, or ends), so readings go fresh.
pub(crate) fn set_turn(at: Option<Instant>) {
    let _ = TURN.try_with(|t| t.set(at));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_turn_reading_is_used_until_cleared() {
        let before = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > before, "no turn: a fresh reading");
        let at = Instant::now();
        set_turn(Some(at));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(now(), at, "in a turn: the turn's reading");
        // Another thread has no turn of its own.
        let other = std::thread::spawn(now).join().expect("thread");
        assert!(other > at);
        set_turn(None);
        assert!(now() > at, "cleared: fresh again");
    }
}
