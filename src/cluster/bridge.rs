//! The bridge thread: one OS thread with a current-thread tokio runtime of
//! its own, where the broker client runs. It takes this node's publishes
//! from the publishing side (an unbounded channel: senders never block)
//! and sends them to the broker, and hands every message the broker
//! delivers to the bus, parsed once. Nothing here runs on an executor.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{envelope, BrokerKind, Cluster, Failure, Outgoing};
use crate::bus::Bus;
use crate::codec::publish::{parse_with, Item};

/// How long this node's parsed items wait for their message to come back
/// from the broker before they are dropped (the message is then parsed
/// again when it comes).
const KEEP_ITEMS: Duration = Duration::from_secs(30);

/// Starts the thread; `first` is told when the first connection attempt
/// has ended (either way).
pub(super) fn spawn(
    cluster: Arc<Cluster>,
    bus: Arc<Bus>,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    first: std::sync::mpsc::Sender<()>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cluster: cannot start the bridge runtime: {e}"))?;
    std::thread::Builder::new()
        .name("corepin-cluster".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            let ctx = Rc::new(Ctx {
                cluster,
                bus,
                waiting: RefCell::new(HashMap::new()),
                first: RefCell::new(Some(first)),
                invalid_log: RefCell::new(None),
            });
            local.block_on(&rt, async move {
                match ctx.cluster.settings.kind {
                    BrokerKind::Nats => super::nats::run(ctx, rx).await,
                    BrokerKind::Redis => super::redis::run(ctx, rx).await,
                }
            });
        })
        .map_err(|e| format!("cluster: cannot start the bridge thread: {e}"))?;
    Ok(())
}

/// One of this node's publishes, until its message comes back.
pub(super) struct Waiting {
    pub items: Vec<Item>,
    pub at: Instant,
}

/// A publish on its way to the broker, its items kept aside
/// (`Ctx::keep_items`).
pub(super) struct Sending {
    pub payload: bytes::Bytes,
    pub done: oneshot::Sender<Result<(), Failure>>,
    pub at: Instant,
}

/// What the adapters share on the bridge thread.
pub(super) struct Ctx {
    pub cluster: Arc<Cluster>,
    pub bus: Arc<Bus>,
    /// This node's publishes by sequence number.
    pub waiting: RefCell<HashMap<u64, Waiting>>,
    first: RefCell<Option<std::sync::mpsc::Sender<()>>>,
    /// When an invalid message was last logged.
    invalid_log: RefCell<Option<Instant>>,
}

impl Ctx {
    /// Keeps a publish's parsed items until its message comes back from
    /// the broker's stream (they go to the bus then, not parsed again);
    /// returns what sending it needs.
    pub fn keep_items(&self, o: Outgoing) -> Sending {
        let Outgoing {
            seq,
            payload,
            items,
            done,
            at,
        } = o;
        self.waiting.borrow_mut().insert(seq, Waiting { items, at });
        Sending { payload, done, at }
    }

    /// The first connection attempt has ended.
    pub fn attempted(&self) {
        if let Some(tx) = self.first.borrow_mut().take() {
            let _ = tx.send(());
        }
    }

    pub fn connected(&self, max_payload: Option<usize>) {
        self.cluster.set_connected(max_payload);
        self.attempted();
    }

    pub fn down(&self, why: &str) {
        self.cluster.set_down(why);
        self.attempted();
    }

    /// Answers a publish that was not sent.
    pub fn refuse(&self, o: Outgoing, f: Failure) {
        self.cluster
            .stats
            .refused_unavailable
            .fetch_add(1, Ordering::Relaxed);
        self.waiting.borrow_mut().remove(&o.seq);
        let _ = o.done.send(Err(f));
    }

    /// The broker confirmed a publish sent at `at`.
    pub fn confirmed(&self, at: Instant, done: oneshot::Sender<Result<(), Failure>>) {
        let s = &self.cluster.stats;
        s.confirm.observe(at.elapsed());
        if done.send(Ok(())).is_ok() {
            s.published.fetch_add(1, Ordering::Relaxed);
        } else {
            s.late.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A publish sent but not confirmed.
    pub fn unconfirmed(&self, done: oneshot::Sender<Result<(), Failure>>, why: String) {
        self.cluster
            .stats
            .unconfirmed
            .fetch_add(1, Ordering::Relaxed);
        let _ = done.send(Err(Failure::Unconfirmed(why)));
    }

    /// Forgets items kept too long (their message never came back).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.waiting
            .borrow_mut()
            .retain(|_, w| now.saturating_duration_since(w.at) < KEEP_ITEMS);
    }

    /// The broker's stream no longer holds `n` messages this node had not
    /// read: their subscribers here miss them. Said loudly, and counted.
    pub fn missed(&self, n: u64, why: &str) {
        self.cluster.stats.missed.fetch_add(n, Ordering::Relaxed);
        error!(
            "cluster: this node missed {n} message(s) on {}: {why} (corepin_cluster_messages_missed_total)",
            self.cluster.settings.subject()
        );
    }

    /// The broker's stream was made anew: what it held and this node had
    /// not read is gone, how much is unknown.
    pub fn reset(&self, why: &str) {
        self.cluster.stats.resets.fetch_add(1, Ordering::Relaxed);
        error!(
            "cluster: {why}; messages this node had not read before then are lost (corepin_cluster_stream_resets_total)"
        );
    }

    /// Waits while this node's cores are behind by more than their backlog
    /// bound: the messages wait in the broker's stream meanwhile, rather
    /// than in memory here.
    pub async fn flow(&self) {
        if !self.bus.over_backlog() {
            return;
        }
        self.cluster.stats.paused.fetch_add(1, Ordering::Relaxed);
        let mut pause = Duration::from_micros(500);
        while self.bus.over_backlog() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// A message from the broker: parsed (or, for this node's own, the
    /// items kept from when it was accepted) and handed to the bus.
    pub fn receive(&self, payload: &[u8]) {
        let s = &self.cluster.stats;
        // What the HTTP API would refuse with 413 is refused here too (a
        // publisher writing to the broker directly is not held to it).
        let max = self.cluster.max_message;
        if payload.len() > max {
            return self.invalid(&format!(
                "{} bytes, over the {max} bytes publish.max_body_bytes allows (with the envelope)",
                payload.len()
            ));
        }
        let origin = match envelope::origin(payload) {
            Ok(o) => o,
            Err(e) => return self.invalid(&e),
        };
        let mut kept = None;
        if let Some(o) = &origin {
            let now = envelope::now_us();
            if now >= o.sent_us {
                s.lag.observe(Duration::from_micros(now - o.sent_us));
            }
            if o.run == self.cluster.run {
                kept = self.waiting.borrow_mut().remove(&o.seq);
            }
        }
        let items = match kept {
            Some(w) => {
                s.reused.fetch_add(1, Ordering::Relaxed);
                w.items
            }
            None => match parse_with(payload, envelope::EXTRA) {
                Ok(items) => items,
                Err(e) => return self.invalid(&e.0),
            },
        };
        s.received.fetch_add(1, Ordering::Relaxed);
        s.received_items
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        self.bus.count_publish();
        self.bus.publish(items, None);
    }

    pub fn invalid(&self, why: &str) {
        self.cluster.stats.invalid.fetch_add(1, Ordering::Relaxed);
        let mut last = self.invalid_log.borrow_mut();
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            warn!(
                "cluster: a message on {} is not a valid publish, skipped: {why} (counted in corepin_cluster_messages_invalid_total; logged at most every 10 s)",
                self.cluster.settings.subject()
            );
        }
    }
}
