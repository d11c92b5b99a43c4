//! Beyond one machine: several corepin nodes share their publishes through
//! a broker (NATS with JetStream, or Redis), never a protocol of corepin's
//! own.
//!
//! The seam is [`Publisher`]: a publish accepted by this node's APIs (the
//! HTTP publish API, the control socket, and so `corepin publish`) is
//! validated here as always, then, in a cluster, appended to the broker's
//! stream (a JetStream stream, a Redis stream) instead of going to the
//! local bus. Every node, this one included, reads that stream in order
//! on its bridge thread, parses each message once and hands the items to
//! the bus, whose fan-out is the same as for a local publish. The bus's
//! sequencer ((channel, id) dedup, `prev-id` order) then runs on each node
//! over the same stream, so every node makes the same decisions.
//!
//! Why a stream and not plain pub/sub: a node that loses the broker for a
//! moment (a restart, a network blip) resumes reading from its position
//! when it is back, so a publish another node had acknowledged meanwhile
//! still reaches its subscribers; with pub/sub it would be gone, and no
//! node would know. What a node does miss (the stream trimmed past it, a
//! broker that lost its storage) is logged and counted.
//!
//! The broker clients (async-nats, redis-rs) run on one thread with a
//! current-thread tokio runtime of its own (`bridge`); executors only ever
//! send to it (an unbounded channel, no blocking) and await a one-shot
//! answer. A publish is answered `200` only once the broker stored it
//! (see `nats` and `redis` for what confirms it); while the broker is
//! unreachable, publishes are refused (503) at once.

mod bridge;
pub mod envelope;
mod nats;
pub mod redis;
pub mod settings;

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::bus::Bus;
use crate::codec::publish::Item;
pub use settings::{BrokerKind, BrokerUrl, ClusterSettings};

/// How long a publish waits for the broker's confirmation before it is
/// answered with an error.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection delays: doubling from the first to the last, with jitter.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection attempt that has not succeeded by then has failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long start-up waits for the first connection attempt to end, so the
/// log says whether the broker answered before the node reports running.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(4);

/// The delay before reconnection attempt `attempt` (0-based): doubling
/// from `BACKOFF_FIRST` up to `BACKOFF_MAX`, less up to a quarter at
/// random so that nodes do not all retry in step.
pub fn backoff(attempt: usize) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = base.as_micros() as u64 / 4 * u64::from(nanos % 1000) / 1000;
    base - Duration::from_micros(jitter)
}

/// Where a publish accepted by this node goes.
#[derive(Clone, Default)]
pub enum Publisher {
    /// Running alone: straight to this node's bus, as always.
    #[default]
    Local,
    /// In a cluster: to the broker; the bridge hands it to the bus.
    Cluster(Arc<Cluster>),
}

impl Publisher {
    /// The cluster, when there is one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match self {
            Publisher::Local => None,
            Publisher::Cluster(c) => Some(c),
        }
    }
}

/// Sends a validated publish body (`{"items":[...]}`, as the HTTP API takes
/// it) and the items it parsed to, to the broker, and waits for the
/// broker's confirmation. Never blocks: on an executor, the wait is an
/// await that the bridge thread wakes.
pub async fn publish(c: &Cluster, body: &[u8], items: Vec<Item>) -> Result<(), Failure> {
    let items_json = crate::codec::publish::root_member(body, "items").unwrap_or(b"[]");
    c.submit(items_json, items)?.await
}

/// Why a publish was not confirmed by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Not connected to the broker: nothing was sent (503).
    Unavailable(String),
    /// The publish is larger than the broker takes (413).
    TooLarge { size: usize, max: usize },
    /// Sent, but not confirmed (connection lost, or no confirmation in
    /// time): it may or may not reach subscribers (503).
    Unconfirmed(String),
}

impl Failure {
    /// The HTTP status the publish API answers with.
    pub fn status(&self) -> u16 {
        match self {
            Failure::TooLarge { .. } => 413,
            _ => 503,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unavailable(why) => write!(f, "cluster: {why}; nothing was published, retry later"),
            Failure::TooLarge { size, max } => write!(
                f,
                "cluster: the publish is {size} bytes on the broker, over its limit of {max} bytes (NATS max_payload); nothing was published"
            ),
            Failure::Unconfirmed(why) => write!(
                f,
                "cluster: {why}; the publish may or may not reach subscribers (publish with an id to retry it safely)"
            ),
        }
    }
}

/// A publish on its way to the broker: resolves when the broker confirmed
/// it, or with why not. Awaited on executors (any thread may wake it), or
/// waited for with [`Ticket::wait`] on a plain thread.
pub struct Ticket(oneshot::Receiver<Result<(), Failure>>);

impl Future for Ticket {
    type Output = Result<(), Failure>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| Err(Failure::Unconfirmed("the cluster bridge stopped".into())))
        })
    }
}

impl Ticket {
    /// Blocks the calling thread until the answer (never on an executor).
    pub fn wait(self) -> Result<(), Failure> {
        self.0
            .blocking_recv()
            .unwrap_or_else(|_| Err(Failure::Unconfirmed("the cluster bridge stopped".into())))
    }
}

/// A publish handed to the bridge.
pub(crate) struct Outgoing {
    pub seq: u64,
    pub payload: Bytes,
    /// The items the payload holds, already parsed: used when the message
    /// comes back from the broker, instead of parsing it again.
    pub items: Vec<Item>,
    pub done: oneshot::Sender<Result<(), Failure>>,
    pub at: Instant,
}

/// The broker link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Link {
    /// No connection attempt has ended yet.
    Starting = 0,
    Connected = 1,
    Down = 2,
}

/// Histogram bounds (seconds) of confirmation times and receive lag.
pub const SECONDS_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A histogram of durations, written by the bridge, read by metrics.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let b = SECONDS_BUCKETS
            .iter()
            .position(|&le| s <= le)
            .unwrap_or(SECONDS_BUCKETS.len());
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} histogram");
        let mut acc = 0;
        for (i, le) in SECONDS_BUCKETS.iter().enumerate() {
            acc += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {acc}");
        }
        acc += self.buckets[SECONDS_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {acc}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "{name}_sum {sum}");
        let _ = writeln!(o, "{name}_count {acc}");
    }
}

/// Counters of the broker link (read by /metrics and `stats`).
#[derive(Default)]
pub struct ClusterStats {
    /// Connections established (the first and every reconnection).
    pub connects: AtomicU64,
    /// Connections lost.
    pub disconnects: AtomicU64,
    /// Publishes of this node the broker confirmed.
    pub published: AtomicU64,
    /// Publishes refused: not connected, too large, not confirmed.
    pub refused_unavailable: AtomicU64,
    pub refused_too_large: AtomicU64,
    pub unconfirmed: AtomicU64,
    /// Confirmations that came after the publisher was answered.
    pub late: AtomicU64,
    /// Messages received from the broker and handed to the bus.
    pub received: AtomicU64,
    pub received_items: AtomicU64,
    /// Of those, this node's own, whose parsed items were reused.
    pub reused: AtomicU64,
    /// Messages on the subject that were not valid publishes.
    pub invalid: AtomicU64,
    /// Messages the broker's stream dropped before this node read them.
    pub missed: AtomicU64,
    /// Times the broker's stream was found made anew (lost its content).
    pub resets: AtomicU64,
    /// Times reading paused because this node's cores were behind.
    pub paused: AtomicU64,
    /// From a publish being sent to its confirmation.
    pub confirm: Histogram,
    /// From the sender's clock stamp to this node receiving it.
    pub lag: Histogram,
}

/// The state the bridge thread and the publishing side share.
pub struct Cluster {
    pub settings: ClusterSettings,
    /// The largest broker message a node takes: `publish.max_body_bytes`
    /// and room for the `corepin` envelope.
    pub max_message: usize,
    /// This process's random id, in every message it sends.
    pub run: String,
    link: AtomicU8,
    /// When the link last changed, and the last error while down.
    status: Mutex<(Instant, Option<String>)>,
    /// The largest message the broker takes (NATS max_payload).
    max_payload: AtomicUsize,
    seq: AtomicU64,
    tx: mpsc::UnboundedSender<Outgoing>,
    pub stats: ClusterStats,
}

impl Cluster {
    /// Starts the bridge thread for `settings`, feeding `bus`; waits (a few
    /// seconds at most) for the first connection attempt to end, and says
    /// how it went. A broker that is down is not an error: the node runs,
    /// refuses publishes with 503 and keeps retrying.
    pub fn start(
        settings: ClusterSettings,
        max_body: usize,
        bus: Arc<Bus>,
    ) -> Result<Arc<Cluster>, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            settings,
            max_message: max_body.saturating_add(envelope::MAX_OVERHEAD),
            run: envelope::run_id(),
            link: AtomicU8::new(Link::Starting as u8),
            status: Mutex::new((Instant::now(), None)),
            max_payload: AtomicUsize::new(usize::MAX),
            seq: AtomicU64::new(0),
            tx,
            stats: ClusterStats::default(),
        });
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        bridge::spawn(cluster.clone(), bus, rx, first_tx)?;
        let s = &cluster.settings;
        info!(
            "cluster: node {} joins through {} ({}), subject {}",
            s.node,
            s.brokers_text(),
            s.kind.name(),
            s.subject()
        );
        match first_rx.recv_timeout(FIRST_ATTEMPT_WAIT) {
            Ok(()) if cluster.link() == Link::Connected => {}
            _ => warn!(
                "cluster: the broker is not reachable yet ({}): publishes are refused with 503 until it is; retrying with backoff",
                cluster.why_down()
            ),
        }
        Ok(cluster)
    }

    pub fn link(&self) -> Link {
        match self.link.load(Ordering::Acquire) {
            1 => Link::Connected,
            2 => Link::Down,
            _ => Link::Starting,
        }
    }

    /// Called by the bridge when the link is up.
    pub(crate) fn set_connected(&self, max_payload: Option<usize>) {
        if let Some(m) = max_payload {
            self.max_payload.store(m, Ordering::Relaxed);
        }
        let before = self.link.swap(Link::Connected as u8, Ordering::AcqRel);
        if before != Link::Connected as u8 {
            let n = self.stats.connects.fetch_add(1, Ordering::Relaxed);
            let down_for = self.set_status(None);
            if n == 0 {
                info!("cluster: connected to {}", self.settings.brokers_text());
            } else {
                info!(
                    "cluster: reconnected to {} after {:.1} s",
                    self.settings.brokers_text(),
                    down_for.as_secs_f64()
                );
            }
        }
    }

    /// Called by the bridge when the link is lost or an attempt failed.
    pub(crate) fn set_down(&self, why: &str) {
        let before = self.link.swap(Link::Down as u8, Ordering::AcqRel);
        if before == Link::Connected as u8 {
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            self.set_status(Some(why.to_string()));
            error!(
                "cluster: lost the broker {} ({why}): publishes are refused with 503 until it is back; reconnecting",
                self.settings.brokers_text()
            );
        } else if let Ok(mut s) = self.status.lock() {
            if before == Link::Starting as u8 {
                s.0 = Instant::now();
            }
            s.1 = Some(why.to_string());
        }
    }

    /// Records the state change; returns how long the previous one lasted.
    fn set_status(&self, error: Option<String>) -> Duration {
        match self.status.lock() {
            Ok(mut s) => {
                let lasted = s.0.elapsed();
                *s = (Instant::now(), error);
                lasted
            }
            Err(_) => Duration::ZERO,
        }
    }

    /// Seconds in the current state.
    fn state_seconds(&self) -> f64 {
        self.status
            .lock()
            .map_or(0.0, |s| s.0.elapsed().as_secs_f64())
    }

    /// Why the link is not up, for answers and logs.
    fn why_down(&self) -> String {
        let (since, err) = self
            .status
            .lock()
            .map(|s| (s.0.elapsed(), s.1.clone()))
            .unwrap_or((Duration::ZERO, None));
        let what = match self.link() {
            Link::Starting => "not connected yet".to_string(),
            _ => format!("not connected for {:.1} s", since.as_secs_f64()),
        };
        match err {
            Some(e) => format!(
                "broker {} {what} (last error: {e})",
                self.settings.brokers_text()
            ),
            None => format!("broker {} {what}", self.settings.brokers_text()),
        }
    }

    /// Sends a publish to the broker. `items_json` is the raw JSON of the
    /// validated `items` list and `items` what it parsed to. Refused at
    /// once while the broker is not connected.
    pub fn submit(&self, items_json: &[u8], items: Vec<Item>) -> Result<Ticket, Failure> {
        if self.link() != Link::Connected {
            self.stats
                .refused_unavailable
                .fetch_add(1, Ordering::Relaxed);
            return Err(Failure::Unavailable(self.why_down()));
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let payload = envelope::build(
            &self.settings.node,
            &self.run,
            seq,
            envelope::now_us(),
            items_json,
        );
        let max = self.max_payload.load(Ordering::Relaxed);
        if payload.len() > max {
            self.stats.refused_too_large.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let (done, rx) = oneshot::channel();
        let out = Outgoing {
            seq,
            payload: Bytes::from(payload),
            items,
            done,
            at: Instant::now(),
        };
        if self.tx.send(out).is_err() {
            return Err(Failure::Unavailable("the cluster bridge stopped".into()));
        }
        Ok(Ticket(rx))
    }

    /// `None` while healthy; otherwise what `/health` answers 503 with.
    pub fn unhealthy(&self) -> Option<String> {
        (self.link() != Link::Connected).then(|| format!("{}\n", self.why_down()))
    }

    /// A line for `/health` when healthy.
    pub fn health_line(&self) -> String {
        format!(
            "cluster: node {} connected to {}\n",
            self.settings.node,
            self.settings.brokers_text()
        )
    }

    /// The `cluster` member of the control socket's `stats`.
    pub fn stats_json(&self) -> Value {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "node": self.settings.node,
            "broker": self.settings.brokers_text(),
            "connected": self.link() == Link::Connected,
            "state_seconds": self.state_seconds(),
            "reconnects": n(&s.connects).saturating_sub(1),
            "publishes_out": n(&s.published),
            "publishes_in": n(&s.received),
            "refused": n(&s.refused_unavailable) + n(&s.refused_too_large),
            "unconfirmed": n(&s.unconfirmed),
            "invalid": n(&s.invalid),
            "missed": n(&s.missed),
            "stream_resets": n(&s.resets),
            "paused": n(&s.paused),
        })
    }

    /// The cluster's lines of `/metrics`.
    pub fn render_metrics(&self, o: &mut String) {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let st = &self.settings;
        let _ = writeln!(
            o,
            "# HELP corepin_cluster_info This node's cluster settings.\n# TYPE corepin_cluster_info gauge\ncorepin_cluster_info{{broker=\"{}\",node=\"{}\",subject=\"{}\"}} 1",
            st.kind.name(),
            st.node,
            st.subject()
        );
        let connected = u8::from(self.link() == Link::Connected);
        let mut one = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one(
            "corepin_cluster_broker_connected",
            "gauge",
            "1 while the broker link is up (publishes are refused with 503 otherwise).",
            connected.to_string(),
        );
        one(
            "corepin_cluster_broker_state_seconds",
            "gauge",
            "Seconds since the broker link last went up or down.",
            format!("{:.3}", self.state_seconds()),
        );
        one(
            "corepin_cluster_reconnects_total",
            "counter",
            "Connections to the broker after the first.",
            n(&s.connects).saturating_sub(1).to_string(),
        );
        one(
            "corepin_cluster_disconnects_total",
            "counter",
            "Broker connections lost.",
            n(&s.disconnects).to_string(),
        );
        one(
            "corepin_cluster_publishes_out_total",
            "counter",
            "Publishes accepted here and confirmed by the broker.",
            n(&s.published).to_string(),
        );
        let _ = writeln!(
            o,
            "# HELP corepin_cluster_publishes_refused_total Publishes accepted here and answered with an error: broker not connected (unavailable), over its size limit (too_large), sent but not confirmed (unconfirmed).\n# TYPE corepin_cluster_publishes_refused_total counter"
        );
        for (reason, v) in [
            ("unavailable", n(&s.refused_unavailable)),
            ("too_large", n(&s.refused_too_large)),
            ("unconfirmed", n(&s.unconfirmed)),
        ] {
            let _ = writeln!(
                o,
                "corepin_cluster_publishes_refused_total{{reason=\"{reason}\"}} {v}"
            );
        }
        let mut one = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one(
            "corepin_cluster_confirmations_late_total",
            "counter",
            "Broker confirmations that came after the publisher had its error answer.",
            n(&s.late).to_string(),
        );
        one(
            "corepin_cluster_publishes_in_total",
            "counter",
            "Messages received from the broker and handed to this node's cores.",
            n(&s.received).to_string(),
        );
        one(
            "corepin_cluster_items_in_total",
            "counter",
            "Items in the messages received from the broker.",
            n(&s.received_items).to_string(),
        );
        one(
            "corepin_cluster_own_reused_total",
            "counter",
            "This node's own messages back from the broker, delivered from the items parsed when accepted.",
            n(&s.reused).to_string(),
        );
        one(
            "corepin_cluster_messages_invalid_total",
            "counter",
            "Messages on the subject that were not valid publishes (logged).",
            n(&s.invalid).to_string(),
        );
        one(
            "corepin_cluster_messages_missed_total",
            "counter",
            "Messages the broker's stream dropped (its limits) before this node read them: its subscribers missed them (logged).",
            n(&s.missed).to_string(),
        );
        one(
            "corepin_cluster_stream_resets_total",
            "counter",
            "Times the broker's stream was found made anew after a reconnection (a broker restarted without its storage): what it held unread is lost (logged).",
            n(&s.resets).to_string(),
        );
        one(
            "corepin_cluster_read_pauses_total",
            "counter",
            "Times this node stopped reading the stream while its cores were behind their backlog bound (messages wait in the broker).",
            n(&s.paused).to_string(),
        );
        s.confirm.render(
            o,
            "corepin_cluster_confirm_seconds",
            "From sending a publish to the broker to its confirmation.",
        );
        s.lag.render(
            o,
            "corepin_cluster_receive_lag_seconds",
            "From the sending node's clock stamp to this node receiving the message (across hosts this includes their clock offset).",
        );
    }
}

/// The fuzz target's invariant over the cluster's parsers (`fuzz/cluster`):
/// none panics on any input; an accepted broker URL prints as a URL that
/// parses back to itself and holds no space or control character; a broker
/// message whose `items` are accepted, wrapped by this node's envelope,
/// parses to the same items with the origin it was given; and a Redis
/// entry id that parses prints as one that parses back to it.
pub fn check_input_invariant(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(u) = settings::parse_url(&text) {
        let again = settings::parse_url(&u.full()).expect("a printed URL parses");
        assert_eq!(again, u);
        assert!(!u.full().bytes().any(|b| b.is_ascii_control() || b == b' '));
    }
    let origin = envelope::origin(data);
    if let Err(e) = &origin {
        assert!(e.starts_with("corepin: "), "{e}");
    }
    let parsed = crate::codec::publish::parse_with(data, envelope::EXTRA);
    if let (Ok(items), Some(list)) = (&parsed, crate::codec::publish::root_member(data, "items")) {
        let wrapped = envelope::build("n-1", "00ff", 3, 4, list);
        assert_eq!(
            crate::codec::publish::parse_with(&wrapped, envelope::EXTRA).as_ref(),
            Ok(items)
        );
        assert_eq!(
            envelope::origin(&wrapped),
            Ok(Some(envelope::Origin {
                node: "n-1".into(),
                run: "00ff".into(),
                seq: 3,
                sent_us: 4
            }))
        );
    }
    if let Some(id) = redis::EntryId::parse(data) {
        assert_eq!(redis::EntryId::parse(id.to_string().as_bytes()), Some(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_invariant_holds_on_samples() {
        for sample in [
            &b"nats://u:p@[::1]:4222/"[..],
            b"redis://h",
            br#"{"corepin":{"node":"a","run":"b","seq":1,"sent_us":2},"items":[{"channel":"c","formats":{"http-stream":{"content":"x"}}}]}"#,
            br#"{"items":[{"channel":"c","formats":{"ws-message":{"content":"x"}}}]}"#,
            b"1733-0",
            b"\xff\x00",
        ] {
            check_input_invariant(sample);
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let base = BACKOFF_FIRST
                .saturating_mul(1u32 << attempt.min(16))
                .min(BACKOFF_MAX);
            assert!(d <= base && d >= base * 3 / 4, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(9));
        let mut o = String::new();
        h.render(&mut o, "x", "help");
        assert!(o.contains("x_bucket{le=\"0.0005\"} 1\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"0.005\"} 2\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"5\"} 2\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"+Inf\"} 3\n"), "{o}");
        assert!(o.contains("x_count 3\n"), "{o}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn failures_say_what_happened() {
        assert_eq!(Failure::TooLarge { size: 2, max: 1 }.status(), 413);
        assert_eq!(Failure::Unavailable("x".into()).status(), 503);
        let u = Failure::Unconfirmed("no answer".into()).to_string();
        assert!(u.contains("may or may not"), "{u}");
    }
}
