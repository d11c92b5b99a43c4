//! Channel history: one per node (beside the bus's sequencer, under its
//! lock: what corepin does) or one per core (each core recording every
//! item it drains from its inbox into its own history, so a resume reads
//! core-local memory without a lock). Issue 18 asked which; this measures
//! the three things that decide it:
//!
//! 1. CPU per publish of an item with an id: history off, node history,
//!    and the per-core prototype (every core must be sent every item of
//!    a channel with history, subscribers there or not, since a
//!    reconnecting client may land on any core; each core records it).
//!    All the work (the publish, each core's drain, each core's record)
//!    runs on the measuring thread and is counted with its thread CPU
//!    time, so the figure is CPU per publish summed over cores.
//! 2. Heap bytes per kept item (a counting allocator): node, per core.
//! 3. What resumes do to publishing: with node history a replay reads
//!    under the sequencer lock that every publish with an id takes. One
//!    thread publishes as fast as it can while another serves 10,000
//!    resumes back to back (the worst case of a storm: 10,000 clients
//!    resuming at once); publish throughput and latency are compared with
//!    the same loop without resumes. The per-core design's resumes take no
//!    lock shared with the publisher, so its publisher is the no-resume
//!    row; the core-local cost of one resume is given for both designs.
//!
//! Run: `cargo bench --bench history`. Under `cargo test` (no `--bench`
//! argument) each case runs a few rounds as a smoke test: not a
//! measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corepin::bus::{Bus, CoreInbox, Encoded, Interest, Limits};
use corepin::codec::publish::{Action, HttpStream, Item};
use corepin::history::{History, HistoryLimits, Replay};

#[path = "common/cpu.rs"]
mod cpu;
use cpu::thread_cpu;

/// The system allocator, counting live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a
// counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const CHANNEL: &str = "storm";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Design {
    Off,
    Node,
    PerCore,
}

struct World {
    bus: Arc<Bus>,
    inboxes: Vec<CoreInbox>,
    /// The per-core prototype's histories, one per core.
    local: Vec<History>,
    _keep: Vec<UnixStream>,
}

fn limits(messages: usize) -> HistoryLimits {
    HistoryLimits {
        messages,
        max_age: None,
        max_bytes: usize::MAX,
    }
}

/// A bus of `cores` cores; subscribers of the channel on `subscribed`
/// cores (the first ones); per-core history routes to every core.
fn world(design: Design, cores: usize, subscribed: usize, keep: usize) -> World {
    let mut hold = Vec::new();
    let mut wakes = Vec::new();
    for _ in 0..cores {
        let (a, b) = UnixStream::pair().expect("socketpair");
        // Non-blocking, as corepin's own wake sockets are: nothing reads
        // `b` here, and a blocking `a` stalled the publisher once its
        // buffer filled (the 1,000-missed storm case hung).
        a.set_nonblocking(true).expect("non-blocking wake socket");
        wakes.push(a);
        hold.push(b);
    }
    let node = if design == Design::Node { keep } else { 0 };
    let (bus, inboxes) = Bus::new(
        wakes,
        Limits {
            history: limits(node),
            ..Limits::default()
        },
    );
    let routed_to = if design == Design::PerCore {
        cores
    } else {
        subscribed
    };
    for core in 0..routed_to {
        bus.interest().set(Interest::slot(CHANNEL), core);
    }
    let local = if design == Design::PerCore {
        (0..cores).map(|_| History::new(limits(keep))).collect()
    } else {
        Vec::new()
    };
    World {
        bus,
        inboxes,
        local,
        _keep: hold,
    }
}

fn item(n: u64, payload: &Bytes) -> Item {
    Item {
        channel: CHANNEL.into(),
        id: Some(n.to_string()),
        http_stream: Some(HttpStream {
            action: Action::Send,
            content: payload.clone(),
            content_filters: None,
        }),
        ..Item::default()
    }
}

/// Each core's drain (and, per core, its record), as its executor would.
fn drain(w: &mut World, out: &mut Vec<Arc<Encoded>>) {
    let now = Instant::now();
    for (core, inbox) in w.inboxes.iter().enumerate() {
        inbox.rearm();
        inbox.take(usize::MAX, out);
        if let Some(h) = w.local.get_mut(core) {
            for e in out.iter() {
                h.record(e, now);
            }
        }
        out.clear();
    }
}

/// CPU nanoseconds per publish, summed over the publisher and the cores.
fn cpu_per_publish(design: Design, cores: usize, subscribed: usize, n: u64) -> f64 {
    let payload = Bytes::from(vec![b'x'; 100]);
    let mut w = world(design, cores, subscribed, 1000);
    let mut out = Vec::with_capacity(1024);
    // Fill the history first: the steady state pops one per push.
    for i in 0..2000 {
        w.bus.publish(vec![item(i, &payload)], None);
        if i % 256 == 255 {
            drain(&mut w, &mut out);
        }
    }
    drain(&mut w, &mut out);
    let start = thread_cpu();
    for i in 2000..2000 + n {
        w.bus.publish(vec![item(i, &payload)], None);
        if i % 256 == 255 {
            drain(&mut w, &mut out);
        }
    }
    drain(&mut w, &mut out);
    (thread_cpu() - start).as_nanos() as f64 / n as f64
}

/// Heap bytes per kept item: `n` items kept, minus the same with history
/// off, over `n`.
fn bytes_per_item(design: Design, cores: usize, payload_len: usize, n: u64) -> f64 {
    let held = |design: Design| -> isize {
        let payload = Bytes::from(vec![b'x'; payload_len]);
        let mut w = world(design, cores, 1, n as usize);
        let mut out = Vec::with_capacity(1024);
        let before = LIVE.load(Ordering::Relaxed);
        for i in 0..n {
            w.bus.publish(vec![item(i, &payload)], None);
            if i % 256 == 255 {
                drain(&mut w, &mut out);
            }
        }
        drain(&mut w, &mut out);
        drop(payload);
        let after = LIVE.load(Ordering::Relaxed);
        drop(w);
        after - before
    };
    let base = held(Design::Off);
    (held(design) - base) as f64 / n as f64
}

struct Pubs {
    count: u64,
    elapsed: Duration,
    lat: Vec<u32>,
}

/// Publishes as fast as it can until `stop` (or `until` passes), each
/// publish timed.
fn publish_loop(w: &mut World, stop: &AtomicBool, until: Option<Duration>, from: u64) -> Pubs {
    let payload = Bytes::from(vec![b'x'; 100]);
    let mut out = Vec::with_capacity(1024);
    let mut lat = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let mut i = from;
    while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| start.elapsed() < u) {
        let t = Instant::now();
        w.bus.publish(vec![item(i, &payload)], None);
        lat.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        i += 1;
        if i.is_multiple_of(256) {
            drain(w, &mut out);
        }
    }
    Pubs {
        count: i - from,
        elapsed: start.elapsed(),
        lat,
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at] as f64 / 1000.0
}

/// 10,000 resumes, each `missed` items behind, against a node history of
/// `keep` items while one thread publishes; returns (publisher, time the
/// resumes took, replay count that were served).
fn storm(resumes: usize, missed: u64, keep: u64) -> (Pubs, Duration, usize) {
    let mut w = filled(Design::Node, keep);
    let bus = w.bus.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let go = Arc::new(AtomicBool::new(false));
    let resumer = {
        let (stop, go) = (stop.clone(), go.clone());
        std::thread::spawn(move || {
            while !go.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            let start = Instant::now();
            let mut served = 0;
            for _ in 0..resumes {
                // The id `missed` items before the newest routed one (the
                // publisher keeps adding, so this stays inside history).
                let mark = bus.joined();
                let last = mark.saturating_sub(missed + 1);
                if let Replay::Items(v) = bus.replay(CHANNEL, &last.to_string(), mark) {
                    served += usize::from(!v.is_empty());
                }
            }
            let took = start.elapsed();
            stop.store(true, Ordering::Release);
            (took, served)
        })
    };
    go.store(true, Ordering::Release);
    let p = publish_loop(&mut w, &stop, None, keep);
    let (took, served) = resumer.join().expect("resumer");
    (p, took, served)
}

/// A world of `design` with `keep` items of 100 bytes published and
/// delivered.
fn filled(design: Design, keep: u64) -> World {
    let mut w = world(design, 2, 2, keep as usize);
    let payload = Bytes::from(vec![b'x'; 100]);
    let mut out = Vec::new();
    for i in 0..keep {
        w.bus.publish(vec![item(i, &payload)], None);
        if i % 256 == 255 {
            drain(&mut w, &mut out);
        }
    }
    drain(&mut w, &mut out);
    w
}

/// The same publisher with no resumes, for `d`.
fn quiet(d: Duration, keep: u64) -> Pubs {
    let mut w = filled(Design::Node, keep);
    publish_loop(&mut w, &AtomicBool::new(false), Some(d), keep)
}

/// CPU nanoseconds of one resume `missed` items behind in a history of
/// `keep`: node (`Bus::replay`, lock included) or per core (the core's
/// own `History::since`, no lock).
fn resume_cpu(design: Design, missed: u64, keep: u64, n: u64) -> f64 {
    let mut w = filled(design, keep);
    let mark = w.bus.joined();
    let last = (keep - 1 - missed).to_string();
    let now = Instant::now();
    let start = thread_cpu();
    for _ in 0..n {
        let r = match design {
            Design::PerCore => w.local[0].since(CHANNEL, &last, mark, None, now),
            _ => w.bus.replay(CHANNEL, &last, mark),
        };
        match r {
            Replay::Items(v) => assert_eq!(v.len() as u64, missed),
            other => panic!("{other:?}"),
        }
    }
    (thread_cpu() - start).as_nanos() as f64 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, rounds, resumes) = if bench {
        (20_000, 3, 10_000)
    } else {
        (1_000, 1, 100)
    };

    println!("CPU per publish of an item with an id, summed over the publisher and every core's drain (history of 1,000 items, 100-byte payload; median of {rounds}):");
    println!();
    println!("| cores | channel's subscribers on | off | node history | per-core history |");
    println!("|---:|---|---:|---:|---:|");
    for (cores, subscribed) in [(2, 1), (2, 2), (8, 1), (8, 8), (32, 32)] {
        let m = |d| {
            median(
                (0..rounds)
                    .map(|_| cpu_per_publish(d, cores, subscribed, n))
                    .collect(),
            )
        };
        let (off, node, per) = (m(Design::Off), m(Design::Node), m(Design::PerCore));
        println!(
            "| {cores} | {subscribed} core{} | {off:.0} ns | {node:.0} ns (+{:.0}) | {per:.0} ns (+{:.0}) |",
            if subscribed == 1 { "" } else { "s" },
            node - off,
            per - off
        );
    }

    let kept = if bench { 10_000 } else { 200 };
    println!();
    println!(
        "Heap bytes per kept item ({kept} items kept, minus the same publishes with history off):"
    );
    println!();
    println!("| payload | node | per core, 2 cores | per core, 8 cores | per core, 32 cores |");
    println!("|---:|---:|---:|---:|---:|");
    for payload in [100, 1000] {
        println!(
            "| {payload} B | {:.0} | {:.0} | {:.0} | {:.0} |",
            bytes_per_item(Design::Node, 2, payload, kept),
            bytes_per_item(Design::PerCore, 2, payload, kept),
            bytes_per_item(Design::PerCore, 8, payload, kept),
            bytes_per_item(Design::PerCore, 32, payload, kept),
        );
    }

    println!();
    println!(
        "CPU of one resume (the items after the client's id, up to its mark), median of {rounds}:"
    );
    println!();
    println!(
        "| history | missed | node (`Bus::replay`, with the lock) | per core (`History::since`) |"
    );
    println!("|---:|---:|---:|---:|");
    let rn = if bench { 20_000 } else { 100 };
    for (keep, missed) in [(1000, 20), (10_000, 20), (10_000, 1000), (10_000, 9_000)] {
        let per_n = if missed > 100 { rn / 20 } else { rn };
        let node = median(
            (0..rounds)
                .map(|_| resume_cpu(Design::Node, missed, keep, per_n))
                .collect(),
        );
        let per = median(
            (0..rounds)
                .map(|_| resume_cpu(Design::PerCore, missed, keep, per_n))
                .collect(),
        );
        println!(
            "| {keep} | {missed} | {:.2} µs | {:.2} µs |",
            node / 1000.0,
            per / 1000.0
        );
    }

    println!();
    println!("Publishing while {resumes} clients resume at once (node history of 10,000; one thread publishing items with ids as fast as it can, one serving the resumes back to back):");
    println!();
    println!("| resumes | each missed | resumes took | publishes/s during | publish p50 / p99 / p99.9 / max | publishes/s, no resumes | p50 / p99 / p99.9 / max, no resumes |");
    println!("|---:|---:|---:|---:|---|---:|---|");
    for missed in [20u64, 1000] {
        let (mut p, took, _) = storm(resumes, missed, 10_000);
        let mut q = quiet(took.max(Duration::from_millis(50)), 10_000);
        p.lat.sort_unstable();
        q.lat.sort_unstable();
        let rate = |p: &Pubs| p.count as f64 / p.elapsed.as_secs_f64();
        let lats = |s: &[u32]| {
            format!(
                "{:.1} / {:.1} / {:.1} / {:.0} µs",
                pct(s, 0.5),
                pct(s, 0.99),
                pct(s, 0.999),
                pct(s, 1.0)
            )
        };
        println!(
            "| {resumes} | {missed} | {:.1} ms | {:.0} | {} | {:.0} | {} |",
            took.as_secs_f64() * 1000.0,
            rate(&p),
            lats(&p.lat),
            rate(&q),
            lats(&q.lat)
        );
    }
}
