//! Counters in the Prometheus text format. Each core renders its own
//! plain per-core counters and the bus's global ones.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::shard::Shard;

/// Renders this core's view: per-core gauges and counters labelled with
/// the core, plus the publish path's global counters.
pub fn render(shard: &Shard) -> String {
    let mut o = String::new();
    let core = shard.index;
    let b = &shard.bus.stats;
    let _ = writeln!(o, "# TYPE corepin_connections gauge");
    let _ = writeln!(
        o,
        "corepin_connections{{core=\"{core}\"}} {}",
        shard.open_connections()
    );
    let _ = writeln!(o, "# TYPE corepin_subscriptions gauge");
    let _ = writeln!(
        o,
        "corepin_subscriptions{{core=\"{core}\"}} {}",
        shard.subs.subscriptions()
    );
    let _ = writeln!(o, "# TYPE corepin_requests_total counter");
    let _ = writeln!(
        o,
        "corepin_requests_total{{core=\"{core}\"}} {}",
        shard.stats.requests.get()
    );
    let _ = writeln!(o, "# TYPE corepin_deliveries_total counter");
    let _ = writeln!(
        o,
        "corepin_deliveries_total{{core=\"{core}\"}} {}",
        shard.subs.stats.deliveries.get()
    );
    let _ = writeln!(o, "# TYPE corepin_subscriber_drops_total counter");
    let _ = writeln!(
        o,
        "corepin_subscriber_drops_total{{core=\"{core}\"}} {}",
        shard.subs.stats.drops.get()
    );
    let _ = writeln!(o, "# TYPE corepin_publishes_total counter");
    let _ = writeln!(
        o,
        "corepin_publishes_total {}",
        b.publishes.load(Ordering::Relaxed)
    );
    let _ = writeln!(o, "# TYPE corepin_published_items_total counter");
    let _ = writeln!(
        o,
        "corepin_published_items_total {}",
        b.items.load(Ordering::Relaxed)
    );
    let _ = writeln!(o, "# TYPE corepin_deduplicated_total counter");
    let _ = writeln!(
        o,
        "corepin_deduplicated_total {}",
        b.deduplicated.load(Ordering::Relaxed)
    );
    let _ = writeln!(o, "# TYPE corepin_reordered_total counter");
    let _ = writeln!(
        o,
        "corepin_reordered_total {}",
        b.reordered.load(Ordering::Relaxed)
    );
    o
}
