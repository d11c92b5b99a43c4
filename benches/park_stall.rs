//! Does a glommio executor park (sleep in io_uring_enter) while one of its
//! task queues is runnable? corepin's cores once stopped for 20 s or more
//! under heavy load (note25); this is the smallest program with the same
//! shape, so the failure can be counted in seconds rather than hours.
//!
//! Each "core" is a glommio executor thread with one task queue of
//! `Latency::Matters(latency)` (corepin's control and accept queues are
//! 1 ms) running an echo task on one end of a Unix socket pair. A plain
//! thread on the other end sends one byte and waits for it to come back,
//! again and again. A reply that takes longer than `--stall-ms` is a
//! stall: the echo task was woken (its byte had arrived) but the executor
//! did not run it. The peer then waits up to `--stall-ms` more, and if the
//! reply still has not come sends a second byte (new I/O, which wakes a
//! parked executor) so that the run goes on.
//!
//! `--timer-ms T` adds a task that sleeps T ms in a loop on each core (as
//! corepin's access-log flush and sweep do): with it a park ends at the
//! next timer, without it only new I/O ends it.
//!
//! Run (see benches/park_stall.sh for the CPU contention that makes it
//! happen at corepin's 1 ms):
//!   cargo bench --bench park_stall -- --latency-us 1000 --seconds 60
//! `--latency-ns 1` makes the preemption timer fire before the executor
//! looks at it nearly every time: with glommio 0.9.0 as published that
//! parks at once. Under `cargo test` (no `--bench` argument) it runs a
//! short smoke test.

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

struct Args {
    latency: Duration,
    seconds: u64,
    cores: usize,
    timer_ms: u64,
    stall: Duration,
}

fn args() -> Args {
    let mut a = Args {
        latency: Duration::from_millis(1),
        seconds: 2,
        cores: 2,
        timer_ms: 0,
        stall: Duration::from_millis(2000),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} needs a number"))
        };
        match k.as_str() {
            "--latency-us" => a.latency = Duration::from_micros(num()),
            "--latency-ns" => a.latency = Duration::from_nanos(num()),
            "--seconds" => a.seconds = num(),
            "--cores" => a.cores = num() as usize,
            "--timer-ms" => a.timer_ms = num(),
            "--stall-ms" => a.stall = Duration::from_millis(num()),
            _ => {} // `--bench` and the harness's own flags
        }
    }
    a
}

/// One core: an executor whose echo task runs in a latency-sensitive
/// queue; returns when the peer closes its end.
fn core(sock: UnixStream, latency: Duration, timer_ms: u64) {
    let fd = sock.into_raw_fd();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("park-stall")
        .make()
        .expect("executor")
        .run(async move {
            let q = glommio::executor().create_task_queue(
                Shares::Static(1000),
                Latency::Matters(latency),
                "echo",
            );
            if timer_ms > 0 {
                glommio::spawn_local(async move {
                    loop {
                        glommio::timer::sleep(Duration::from_millis(timer_ms)).await;
                    }
                })
                .detach();
            }
            // SAFETY: the fd is a connected Unix stream socket whose
            // ownership was given up just above.
            let mut s =
                unsafe { <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let echo = glommio::spawn_local_into(
                async move {
                    let mut b = [0u8; 16];
                    loop {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&b[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                },
                q,
            )
            .expect("queue");
            echo.await;
        });
}

#[derive(Default)]
struct Count {
    round_trips: u64,
    stalls: u64,
    /// Stalls a timer ended (the reply came within a second wait).
    ended_by_timer: u64,
    longest: Duration,
    /// Round trips still waiting for their reply when the time was up.
    unfinished: u64,
}

fn peer(mut s: UnixStream, stall: Duration, stop: Arc<AtomicBool>) -> Count {
    let mut c = Count::default();
    s.set_read_timeout(Some(stall)).expect("timeout");
    let mut b = [0u8; 16];
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        s.write_all(b"x").expect("write");
        let mut want = 1;
        while want > 0 {
            match s.read(&mut b) {
                Ok(0) => panic!("the core closed its end"),
                Ok(n) => want -= n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    if t.elapsed() < 2 * stall {
                        c.stalls += 1;
                        // A second wait: a timer on the core may end it.
                        continue;
                    }
                    if stop.load(Ordering::Relaxed) {
                        c.unfinished += 1;
                        return c;
                    }
                    // Still parked: new I/O wakes it.
                    s.write_all(b"y").expect("write");
                    want += 1;
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        let took = t.elapsed();
        if took >= stall && took < 2 * stall {
            c.ended_by_timer += 1;
        }
        c.longest = c.longest.max(took);
        c.round_trips += 1;
    }
    c
}

fn main() {
    let a = args();
    let bench = std::env::args().any(|x| x == "--bench");
    let seconds = if bench { a.seconds } else { 1 };
    let stop = Arc::new(AtomicBool::new(false));
    let mut peers = Vec::new();
    let mut cores = Vec::new();
    for _ in 0..a.cores {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let (latency, timer_ms) = (a.latency, a.timer_ms);
        cores.push(thread::spawn(move || core(theirs, latency, timer_ms)));
        let (stop, stall) = (stop.clone(), a.stall);
        peers.push(thread::spawn(move || peer(ours, stall, stop)));
    }
    thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut total = Count::default();
    for p in peers {
        let c = p.join().expect("peer");
        total.round_trips += c.round_trips;
        total.stalls += c.stalls;
        total.ended_by_timer += c.ended_by_timer;
        total.longest = total.longest.max(c.longest);
        total.unfinished += c.unfinished;
    }
    // A core still parked would never see its peer's close: not joined.
    drop(cores);
    println!(
        "latency={:?} cores={} timer_ms={} seconds={} round_trips={} stalls(>{:?})={} ended_by_timer={} longest={:?} unfinished={}",
        a.latency,
        a.cores,
        a.timer_ms,
        seconds,
        total.round_trips,
        a.stall,
        total.stalls,
        total.ended_by_timer,
        total.longest,
        total.unfinished
    );
}
