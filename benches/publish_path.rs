//! The bus's share of one publish: `Bus::publish` of one item routed to
//! one core (interest, sequence number, inbox) and that core taking it
//! from its inbox, with and without the things the routing step grew
//! lately: prefix (wildcard) subscriptions held somewhere, and a stats
//! socket watching (only the branch, or announcing every routed item).
//! What it costs in a whole publish is in PERFORMANCE.md ("Restructuring
//! (issue 12): the publish path in eight functions").
//!
//! The publishing thread's own CPU time (CLOCK_THREAD_CPUTIME_ID) is
//! measured, so a loaded machine disturbs the figures little.
//!
//! Run: `cargo bench --bench publish_path`. Under `cargo test` (no
//! `--bench` argument) each case runs a few rounds as a smoke test: not a
//! measurement.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use corepin::bus::{Bus, CoreInbox, Interest, Limits, SubWatch};
use corepin::codec::publish::{Action, HttpStream, Item};

#[path = "common/cpu.rs"]
mod cpu;
use cpu::thread_cpu;

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Plain,
    Prefixes,
    WatchBranch,
    WatchAnnouncing,
}

struct World {
    bus: Arc<Bus>,
    inbox: CoreInbox,
    _keep: Vec<UnixStream>,
    _watch_rx: Option<crossbeam_channel::Receiver<corepin::bus::Watched>>,
}

fn world(case: Case, channel: &str) -> World {
    let mut keep = Vec::new();
    let mut wakes = Vec::new();
    for _ in 0..2 {
        let (a, b) = UnixStream::pair().expect("socketpair");
        wakes.push(a);
        keep.push(b);
    }
    let (bus, mut inboxes) = Bus::new(wakes, Limits::default());
    bus.interest().set(Interest::slot(channel), 0);
    if case == Case::Prefixes {
        // Four prefix lengths held, two of them prefixes of the channel
        // (subscribed on the same core, so the item still goes to one
        // inbox): each publish looks up the lengths that fit in its name.
        for p in ["ro", "room.", "room.lobby.", "other-things."] {
            bus.prefixes().add(p.len());
            bus.interest()
                .set(Interest::key_slot(&corepin::codec::wildcard::key(p)), 0);
        }
    }
    let mut watch_rx = None;
    if matches!(case, Case::WatchBranch | Case::WatchAnnouncing) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (a, b) = UnixStream::pair().expect("socketpair");
        keep.push(b);
        bus.set_watch(SubWatch {
            tx,
            pending: Arc::new(AtomicBool::new(true)),
            wake: a,
            published: case == Case::WatchAnnouncing,
            conns: false,
        })
        .expect("watch");
        watch_rx = Some(rx);
    }
    World {
        bus,
        inbox: inboxes.remove(0),
        _keep: keep,
        _watch_rx: watch_rx,
    }
}

/// Thread CPU nanoseconds per publish over `n` publishes.
fn run(case: Case, n: u64) -> f64 {
    let channel = "room.lobby.42";
    let w = world(case, channel);
    let template = Item {
        channel: channel.into(),
        http_stream: Some(HttpStream {
            action: Action::Send,
            content: Bytes::from_static(b"hello\n"),
            content_filters: None,
        }),
        ..Item::default()
    };
    let mut out = Vec::with_capacity(1024);
    let start = thread_cpu();
    for i in 0..n {
        let sent = w.bus.publish(vec![template.clone()], Some(0));
        assert!(sent.local || i % 1024 != 0);
        if i % 1024 == 1023 {
            w.inbox.rearm();
            w.inbox.take(usize::MAX, &mut out);
            out.clear();
            if let Some(rx) = &w._watch_rx {
                while rx.try_recv().is_ok() {}
            }
        }
    }
    w.inbox.take(usize::MAX, &mut out);
    (thread_cpu() - start).as_nanos() as f64 / n as f64
}

/// The sequence number alone: one `fetch_add` and one store, as each
/// routed item takes them.
fn seq_only(n: u64) -> f64 {
    let routed = AtomicU64::new(0);
    let slot = AtomicU64::new(0);
    let start = thread_cpu();
    for _ in 0..n {
        let s = routed.fetch_add(1, Ordering::AcqRel) + 1;
        slot.store(std::hint::black_box(s), Ordering::Release);
    }
    (thread_cpu() - start).as_nanos() as f64 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, rounds) = if bench { (200_000, 7) } else { (2_000, 1) };
    let cases = [
        (Case::Plain, "plain: no prefixes, no stats socket"),
        (Case::Prefixes, "4 prefix lengths held, 3 looked up"),
        (Case::WatchBranch, "stats socket, no message stats"),
        (Case::WatchAnnouncing, "stats socket announcing items"),
    ];
    println!("| case | ns per publish (median of {rounds}) |");
    println!("|---|---:|");
    for (case, name) in cases {
        let runs: Vec<f64> = (0..rounds).map(|_| run(case, n)).collect();
        println!("| {name} | {:.0} |", median(runs));
    }
    let runs: Vec<f64> = (0..rounds).map(|_| seq_only(n * 10)).collect();
    println!("| the sequence number alone | {:.1} |", median(runs));
}
