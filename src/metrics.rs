//! Counters in the Prometheus text format, summed over cores from the
//! snapshot board (per-core series carry a `core` label).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::bus::BusStats;
use crate::stats::{Snapshot, LATENCY_BUCKETS_MS};

fn per_core(
    o: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    cores: &[Snapshot],
    f: impl Fn(&Snapshot) -> u64,
) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    for s in cores {
        let _ = writeln!(o, "{name}{{core=\"{}\"}} {}", s.core, f(s));
    }
}

/// Pushpin's metric names (its handler's and proxy's `prometheus_port`),
/// as far as corepin counts the same things, after `prefix`.
fn pushpin_names(o: &mut String, cores: &[Snapshot], bus: &BusStats, prefix: &str) {
    let sum = |f: &dyn Fn(&Snapshot) -> u64| cores.iter().map(f).sum::<u64>();
    for (name, kind, help, v) in [
        (
            "request_received",
            "counter",
            "Number of requests received (Pushpin's name; counted when answered)",
            sum(&|s| s.requests_by_class.iter().sum()),
        ),
        (
            "connection_connected",
            "gauge",
            "Number of concurrent connections (Pushpin's name)",
            sum(&|s| s.connections),
        ),
        (
            "message_received",
            "counter",
            "Number of messages received by the publish API (Pushpin's name)",
            bus.items.load(Ordering::Relaxed),
        ),
        (
            "message_sent",
            "counter",
            "Number of messages sent to clients (Pushpin's name)",
            sum(&|s| s.deliveries),
        ),
    ] {
        let _ = writeln!(o, "# HELP {prefix}{name} {help}");
        let _ = writeln!(o, "# TYPE {prefix}{name} {kind}");
        let _ = writeln!(o, "{prefix}{name} {v}");
    }
}

/// Renders every counter: corepin's, then Pushpin's names after
/// `pushpin_prefix`.
pub fn render(cores: &[Snapshot], bus: &BusStats, draining: bool, pushpin_prefix: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP corepin_connections Open client connections by kind and core."
    );
    let _ = writeln!(o, "# TYPE corepin_connections gauge");
    for s in cores {
        let held = s.streams + s.long_polls + s.websockets;
        for (kind, v) in [
            ("http", s.connections.saturating_sub(held)),
            ("stream", s.streams),
            ("long_poll", s.long_polls),
            ("websocket", s.websockets),
        ] {
            let _ = writeln!(
                o,
                "corepin_connections{{kind=\"{kind}\",core=\"{}\"}} {v}",
                s.core
            );
        }
    }
    per_core(
        &mut o,
        "corepin_subscriptions",
        "Channel subscriptions held.",
        "gauge",
        cores,
        |s| s.subscriptions,
    );
    per_core(
        &mut o,
        "corepin_accepted_total",
        "Client connections accepted.",
        "counter",
        cores,
        |s| s.accepted,
    );
    let _ = writeln!(
        o,
        "# HELP corepin_connections_refused_total Client connections refused: over limits.max_connections, or accepted and closed for want of file descriptors."
    );
    let _ = writeln!(o, "# TYPE corepin_connections_refused_total counter");
    for s in cores {
        for (reason, v) in [
            ("max_connections", s.refused_max_connections),
            ("file_limit", s.refused_file_limit),
        ] {
            let _ = writeln!(
                o,
                "corepin_connections_refused_total{{reason=\"{reason}\",core=\"{}\"}} {v}",
                s.core
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP corepin_tls_handshake_failures_total Connections on TLS listeners closed before their handshake completed, by reason."
    );
    let _ = writeln!(o, "# TYPE corepin_tls_handshake_failures_total counter");
    for s in cores {
        for (reason, v) in crate::stats::TLS_FAILURES.iter().zip(s.tls_failures) {
            let _ = writeln!(
                o,
                "corepin_tls_handshake_failures_total{{reason=\"{reason}\",core=\"{}\"}} {v}",
                s.core
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP corepin_requests_total Requests answered, by status class."
    );
    let _ = writeln!(o, "# TYPE corepin_requests_total counter");
    for s in cores {
        for (i, v) in s.requests_by_class.iter().enumerate() {
            let _ = writeln!(
                o,
                "corepin_requests_total{{class=\"{}xx\",core=\"{}\"}} {v}",
                i + 1,
                s.core
            );
        }
    }
    per_core(
        &mut o,
        "corepin_upstream_errors_total",
        "Failed exchanges with backends (502/504).",
        "counter",
        cores,
        |s| s.upstream_errors,
    );
    per_core(
        &mut o,
        "corepin_connection_panics_total",
        "Connections closed after a panic in their task (a bug; see the log).",
        "counter",
        cores,
        |s| s.panics,
    );
    per_core(
        &mut o,
        "corepin_upstream_idle_connections",
        "Idle pooled backend connections.",
        "gauge",
        cores,
        |s| s.idle_upstream,
    );
    let _ = writeln!(
        o,
        "# HELP corepin_upstream_latency_seconds Time to a backend's response head."
    );
    let _ = writeln!(o, "# TYPE corepin_upstream_latency_seconds histogram");
    let mut cumulative = 0u64;
    for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
        cumulative += cores.iter().map(|s| s.upstream_latency[i]).sum::<u64>();
        let _ = writeln!(
            o,
            "corepin_upstream_latency_seconds_bucket{{le=\"{}\"}} {cumulative}",
            le / 1000.0
        );
    }
    cumulative += cores
        .iter()
        .map(|s| s.upstream_latency[LATENCY_BUCKETS_MS.len()])
        .sum::<u64>();
    let _ = writeln!(
        o,
        "corepin_upstream_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let sum: f64 = cores.iter().map(|s| s.upstream_latency_sum_ms).sum();
    let _ = writeln!(o, "corepin_upstream_latency_seconds_sum {}", sum / 1000.0);
    let _ = writeln!(o, "corepin_upstream_latency_seconds_count {cumulative}");
    per_core(
        &mut o,
        "corepin_deliveries_total",
        "Messages delivered to subscribers.",
        "counter",
        cores,
        |s| s.deliveries,
    );
    let _ = writeln!(
        o,
        "# HELP corepin_subscriber_drops_total Subscribers dropped for not keeping up: queue over its limits, or a write stalled past the deadline."
    );
    let _ = writeln!(o, "# TYPE corepin_subscriber_drops_total counter");
    for s in cores {
        for (reason, v) in [("queue", s.drops), ("stalled", s.stalls)] {
            let _ = writeln!(
                o,
                "corepin_subscriber_drops_total{{reason=\"{reason}\",core=\"{}\"}} {v}",
                s.core
            );
        }
    }
    for (name, help, v) in [
        (
            "corepin_publishes_total",
            "Publish requests accepted.",
            &bus.publishes,
        ),
        (
            "corepin_published_items_total",
            "Items published.",
            &bus.items,
        ),
        (
            "corepin_deduplicated_total",
            "Items dropped as duplicates of (channel, id).",
            &bus.deduplicated,
        ),
        (
            "corepin_reordered_total",
            "Items held back to restore prev-id order.",
            &bus.reordered,
        ),
        (
            "corepin_reorder_timeouts_total",
            "Held items released when their wait ran out.",
            &bus.reorder_timeouts,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} counter");
        let _ = writeln!(o, "{name} {}", v.load(Ordering::Relaxed));
    }
    for (name, help, v) in [
        (
            "corepin_history_replays_total",
            "Resumes served from channel history (Last-Event-ID, a long-poll's prev-id).",
            &bus.history_replays,
        ),
        (
            "corepin_history_gaps_total",
            "Resumes channel history could not serve (the id is no longer held).",
            &bus.history_gaps,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} counter");
        let _ = writeln!(o, "{name} {}", v.load(Ordering::Relaxed));
    }
    for (name, help, v) in [
        (
            "corepin_history_bytes",
            "Memory held by channel history (estimated bytes, as the publish bounds count items).",
            &bus.history_bytes,
        ),
        (
            "corepin_history_items",
            "Items held by channel history.",
            &bus.history_items,
        ),
        (
            "corepin_history_channels",
            "Channels with history.",
            &bus.history_channels,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} gauge");
        let _ = writeln!(o, "{name} {}", v.load(Ordering::Relaxed));
    }
    let _ = writeln!(
        o,
        "# HELP corepin_publishes_refused_total Publishes refused by a memory bound: busy (429, in-flight budget) or backlog (503, a core's queue)."
    );
    let _ = writeln!(o, "# TYPE corepin_publishes_refused_total counter");
    for (reason, v) in [
        ("busy", &bus.refused_busy),
        ("backlog", &bus.refused_backlog),
    ] {
        let _ = writeln!(
            o,
            "corepin_publishes_refused_total{{reason=\"{reason}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP corepin_publish_inflight_bytes Publishes being read and parsed (estimated bytes; the budget in use)."
    );
    let _ = writeln!(o, "# TYPE corepin_publish_inflight_bytes gauge");
    let _ = writeln!(
        o,
        "corepin_publish_inflight_bytes {}",
        bus.inflight.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP corepin_publish_backlog_bytes Published items queued for a core and not yet delivered (estimated bytes)."
    );
    let _ = writeln!(o, "# TYPE corepin_publish_backlog_bytes gauge");
    for (core, v) in bus.backlog.iter().enumerate() {
        let _ = writeln!(
            o,
            "corepin_publish_backlog_bytes{{core=\"{core}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP corepin_publish_delivery_lag_seconds How long published items waited in a core's queue before the core delivered them."
    );
    let _ = writeln!(o, "# TYPE corepin_publish_delivery_lag_seconds histogram");
    for (core, buckets) in bus.lag.iter().enumerate() {
        let mut cumulative = 0u64;
        for (i, b) in buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = crate::bus::LAG_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |v| v.to_string());
            let _ = writeln!(
                o,
                "corepin_publish_delivery_lag_seconds_bucket{{core=\"{core}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            o,
            "corepin_publish_delivery_lag_seconds_sum{{core=\"{core}\"}} {}",
            bus.lag_sum_us[core].load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "corepin_publish_delivery_lag_seconds_count{{core=\"{core}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP corepin_publish_wakes_total Wake-ups sent to a core for publishes (one per batch; cores without subscribers on a publish's channels get none)."
    );
    let _ = writeln!(o, "# TYPE corepin_publish_wakes_total counter");
    for (core, v) in bus.wakes.iter().enumerate() {
        let _ = writeln!(
            o,
            "corepin_publish_wakes_total{{core=\"{core}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(o, "# HELP corepin_draining 1 while shutting down.");
    let _ = writeln!(o, "# TYPE corepin_draining gauge");
    let _ = writeln!(o, "corepin_draining {}", u8::from(draining));
    pushpin_names(&mut o, cores, bus, pushpin_prefix);
    o
}
