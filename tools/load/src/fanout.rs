//! `corepin-load fanout`: subscribers (worker processes) and a publisher at
//! once. Every message carries its send time, so each delivery's latency
//! is known; every subscriber checks its channel's sequence, so lost,
//! duplicated and out-of-order deliveries are counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::args::{Args, Ticker};
use crate::net::CpuClock;
use crate::publish::{publish, PubOpts, PUB_FLAGS};
use crate::subscribe::{open_all, SubOpts, SUB_FLAGS};

/// `rooms`: the chat-room workload, `fanout` with its shape as defaults:
/// 200 channels ("rooms") of 10 subscribers each, 20,000 publishes of one
/// message to one room each, sent as fast as the publisher goes (or at
/// `--publish-rate`). Any flag given overrides its default.
pub fn run_rooms(args: &[String]) {
    let mut all: Vec<String> = [
        "--subscribers",
        "2000",
        "--channels",
        "200",
        "--messages",
        "20000",
        "--channel-prefix",
        "room",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.extend_from_slice(args);
    run(&all)
}

pub fn run(args: &[String]) {
    let mut spec: Vec<&str> = SUB_FLAGS.to_vec();
    spec.extend(PUB_FLAGS.iter().filter(|f| !SUB_FLAGS.contains(f)));
    spec.extend([
        "publish-to",
        "settle-ms",
        "timeout-s",
        "grace-ms",
        "lockstep",
        "cpu-group",
    ]);
    // `--rate` is the subscribers' open rate; the publisher's is `--publish-rate`.
    spec.push("publish-rate");
    let a = Args::parse("fanout", args, &spec);
    let mut sub = SubOpts::from_args(&a);
    let mut pubo = PubOpts::from_args(&a, "publish-to");
    pubo.rate = a.get("publish-rate", 0.0f64);
    if pubo.messages == 0 {
        crate::args::die("fanout: --messages must be at least 1");
    }
    pubo.seconds = 0.0;
    sub.messages = pubo.messages;
    let settle = Duration::from_millis(a.get("settle-ms", 1000u64));
    let timeout = Duration::from_secs_f64(a.get("timeout-s", 60.0f64));
    let grace = Duration::from_millis(a.get("grace-ms", 3000u64));
    let expected = sub.expected_total();
    let lockstep_at = a.opt::<std::net::SocketAddr>("lockstep");
    let long_polls = sub.long_polls_per_channel();
    if lockstep_at.is_some() && pubo.conns > 1 && long_polls.iter().any(|n| *n > 0) {
        crate::args::die("fanout: --lockstep with long-poll subscribers needs --conns 1");
    }

    let (mut w, open_s) = open_all(&sub, timeout, "fanout");
    let settle_end = Instant::now() + settle;
    while Instant::now() < settle_end {
        w.pump(Duration::from_millis(50));
    }

    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(control) = lockstep_at {
        let subscriptions = w.sum("subscribed");
        match crate::lockstep::first(control, subscriptions, timeout, &stop) {
            Ok(base_2xx) => {
                pubo.lockstep = Some(crate::lockstep::Lockstep {
                    control,
                    subscriptions,
                    long_polls,
                    base_2xx,
                })
            }
            Err(e) => {
                eprintln!("\nfanout: --lockstep: {e}");
                drop(w.finish());
                std::process::exit(1);
            }
        }
    }
    let cpu = CpuClock::new(pubo.cpu_pids.clone());
    // `--cpu-group NAME=PID,...` (repeatable): the same, per named group of
    // processes (the nodes, the broker, the balancer...).
    let groups: Vec<(String, CpuClock)> = a
        .all("cpu-group")
        .into_iter()
        .map(|g| {
            let (name, pids) = g.split_once('=').unwrap_or_else(|| {
                crate::args::die(&format!("--cpu-group: '{g}' is not NAME=PID,..."))
            });
            let pids = crate::net::parse_pids(pids).unwrap_or_else(|| {
                crate::args::die(&format!("--cpu-group: '{g}' is not NAME=PID,..."))
            });
            (name.to_string(), CpuClock::new(pids))
        })
        .collect();
    let groups_before: Vec<f64> = groups.iter().map(|(_, c)| c.seconds()).collect();
    let cpu_before = cpu.seconds();
    let publisher = {
        let (o, sent, stop) = (pubo.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || publish(&o, &sent, &stop))
    };
    let t0 = Instant::now();
    let (mut last_delivered, mut last_change) = (0u64, Instant::now());
    let mut tick = Ticker::default();
    loop {
        w.pump(Duration::from_millis(100));
        let delivered = w.sum("delivered");
        if delivered != last_delivered {
            last_delivered = delivered;
            last_change = Instant::now();
        }
        if tick.due() {
            eprint!(
                "\r[fanout {:5.1}s] published {}/{} delivered {delivered}/{expected}   ",
                t0.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                pubo.messages
            );
        }
        if publisher.is_finished() {
            // Done when all arrived, or nothing more arrived for a while
            // after the last publish (what is missing then is lost).
            if delivered >= expected || last_change.elapsed() > grace {
                break;
            }
        }
        if t0.elapsed() > timeout {
            eprintln!("\nfanout: timeout");
            stop.store(true, Ordering::Relaxed);
            break;
        }
        if w.dead() > 0 {
            eprintln!("\nfanout: a worker process ended early");
            break;
        }
    }
    eprintln!();
    let cpu_s = cpu.seconds() - cpu_before;
    let group_s: Vec<f64> = groups
        .iter()
        .zip(&groups_before)
        .map(|((_, c), b)| c.seconds() - b)
        .collect();
    let pub_result = publisher.join().unwrap_or(Value::Null);
    let m = w.finish();
    let delivered = m.get("delivered");
    let first_send = pub_result
        .get("first_send_ns")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let span_ns = m.last_ns.saturating_sub(first_send).max(1);
    let kinds: Vec<&str> = sub.kinds.iter().map(|k| k.name()).collect();
    let published = sent.load(Ordering::Relaxed);
    let mut result = json!({
            "mode": "fanout",
            "target": sub.to.to_string(),
            "kinds": kinds,
            "subscribers": sub.subscribers,
            "workers": sub.workers,
            "channels": sub.channels,
            "subscribed": m.get("subscribed"),
            "failed": m.get("failed"),
            "fail_reasons": m.field("fail_reasons"),
            "closed": m.get("closed"),
            "tls": sub.tls.is_some(),
            "handshakes": m.get("handshakes"),
            "resumed": m.get("resumed"),
            "open_seconds": open_s,
            "messages": pubo.messages,
            "published": sent.load(Ordering::Relaxed),
            "expected": expected,
            "delivered": delivered,
            "lost": expected.saturating_sub(delivered),
            "duplicated": m.get("duplicated"),
            "out_of_order": m.get("out_of_order"),
            "complete_subscribers": m.get("complete_subscribers"),
            "by_kind": m.field("by_kind"),
            "first_publish_to_first_delivery_ms": m.first_ns.saturating_sub(first_send) as f64 / 1e6,
            "first_publish_to_last_delivery_ms": span_ns as f64 / 1e6,
            "deliveries_per_sec": delivered as f64 / (span_ns as f64 / 1e9),
            "latency_ms": m.latency.summary_ms(),
            "publish": pub_result,
            "missing_workers": m.missing_workers,
    });
    // Each reader process on its own: when it read its first and last
    // delivery (ms after the first publish) and how it spent the time
    // between (`subscribe::Window`).
    result["per_worker"] = m
        .per_worker
        .iter()
        .map(|w| {
            let at = |k: &str| {
                w.get(k)
                    .and_then(Value::as_u64)
                    .filter(|n| *n > 0)
                    .map(|n| n.saturating_sub(first_send) as f64 / 1e6)
            };
            json!({
                "delivered": w.get("delivered"),
                "first_ms": at("first_delivery_ns"),
                "last_ms": at("last_delivery_ns"),
                "window": w.get("window"),
                "lat_10ms": w.get("lat_10ms"),
            })
        })
        .collect();
    if !cpu.is_empty() {
        // From the first publish to the last delivery (or the end of the
        // grace period): what the server spent on publishing and fan-out.
        result["server_cpu_seconds"] = json!(cpu_s);
        result["server_cpu_us_per_publish"] = json!(cpu_s * 1e6 / (published.max(1) as f64));
        result["server_cpu_us_per_delivery"] = json!(cpu_s * 1e6 / (delivered.max(1) as f64));
    }
    if !groups.is_empty() {
        let mut g = serde_json::Map::new();
        for ((name, _), s) in groups.iter().zip(&group_s) {
            g.insert(
                name.clone(),
                json!({"cpu_seconds": s, "cpu_us_per_delivery": s * 1e6 / (delivered.max(1) as f64)}),
            );
        }
        result["cpu_groups"] = Value::Object(g);
    }
    println!("{result}");
    if m.get("subscribed") == 0 || sent.load(Ordering::Relaxed) == 0 {
        std::process::exit(1);
    }
}
