//! The NATS adapter (async-nats, JetStream). Publishes go to the subject
//! `PREFIX.publish`, which a JetStream stream (named after the prefix,
//! dots as underscores) records; each node reads the stream in order
//! through an ephemeral pull consumer of its own, from the position it
//! reached, so a node that lost the broker for a while resumes where it
//! stopped instead of missing what other nodes published meanwhile.
//!
//! What confirms a publish: JetStream's acknowledgement, sent once the
//! stream stored the message (core NATS has no acknowledgement at all:
//! a broker killed after reading a message but before passing it on would
//! lose it, with the publisher told nothing).
//!
//! The client library reconnects (with our backoff); after each
//! reconnection the consumer, which lived on the server, is created again
//! from this node's position. The stream is created if missing, with the
//! limits below; an operator who wants others creates it first.

use std::rc::Rc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_lite::StreamExt;
use tokio::sync::mpsc;

use super::bridge::{Ctx, Sending};
use super::{backoff, Failure, Link, Outgoing, CONFIRM_TIMEOUT, CONNECT_TIMEOUT};

/// Commands (publishes) the client library queues.
const CLIENT_CAPACITY: usize = 1 << 14;
/// Keep-alive pings: a broker that stops answering is noticed after two.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Publishes waiting for their acknowledgement at once.
const ACKS_IN_FLIGHT: usize = 1 << 16;
/// The stream a node creates when there is none: enough to cover a
/// node's reconnection (seconds) at any realistic publish rate.
pub const STREAM_MAX_MESSAGES: i64 = 100_000;
pub const STREAM_MAX_BYTES: i64 = 1 << 30;
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// Messages asked for per pull, and the consumer's heartbeat (a consumer
/// lost with its server is noticed after two missed).
const BATCH: usize = 1000;
const HEARTBEAT: Duration = Duration::from_secs(1);
/// An ephemeral consumer whose node went away is removed after this.
const CONSUMER_IDLE: Duration = Duration::from_secs(60);

/// The JetStream stream for a prefix: stream names cannot hold dots.
pub fn stream_name(prefix: &str) -> String {
    prefix.replace('.', "_")
}

pub(super) async fn run(ctx: Rc<Ctx>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let settings = ctx.cluster.settings.clone();
    let subject = settings.subject();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut addrs = Vec::new();
    for b in &settings.brokers {
        match b.full().parse::<async_nats::ServerAddr>() {
            Ok(a) => addrs.push(a),
            Err(e) => {
                error!("cluster: {b}: {e}");
                ctx.down(&format!("{b}: {e}"));
                return refuse_forever(&ctx, rx).await;
            }
        }
    }
    let options = async_nats::ConnectOptions::new()
        .name(format!("corepin {}", settings.node))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| backoff(attempts.saturating_sub(1)))
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(CONFIRM_TIMEOUT))
        .ping_interval(PING_INTERVAL)
        .client_capacity(CLIENT_CAPACITY)
        .event_callback(move |e| {
            let tx = ev_tx.clone();
            async move {
                let _ = tx.send(e);
            }
        });
    let client = match options.connect(addrs).await {
        Ok(c) => c,
        Err(e) => {
            ctx.down(&e.to_string());
            return refuse_forever(&ctx, rx).await;
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(CONFIRM_TIMEOUT)
        .max_ack_inflight(ACKS_IN_FLIGHT)
        .build(client.clone());
    // The reader is told to start over when the connection comes back.
    let (kick_tx, kick_rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(reader(ctx.clone(), client.clone(), js.clone(), kick_rx));
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            ev = ev_rx.recv() => match ev {
                Some(e) => event(&ctx, &kick_tx, e),
                None => break,
            },
            out = rx.recv() => match out {
                Some(o) => send(&ctx, &js, &subject, o).await,
                None => break,
            },
            _ = sweep.tick() => ctx.sweep(),
        }
    }
}

/// Where this node is in the stream.
struct Position {
    /// The stream's creation time (ns): a different one means the stream
    /// was made again (a broker that lost its storage).
    created: i128,
    /// The next sequence number to deliver.
    next: u64,
}

/// Reads the stream for as long as the node runs, from where it is,
/// starting over after every failure or reconnection.
async fn reader(
    ctx: Rc<Ctx>,
    client: async_nats::Client,
    js: jetstream::Context,
    mut kick: mpsc::UnboundedReceiver<()>,
) {
    let mut pos: Option<Position> = None;
    let mut attempt = 0usize;
    loop {
        // A kick from before this attempt is about a connection it uses.
        while kick.try_recv().is_ok() {}
        if client.connection_state() == async_nats::connection::State::Connected {
            match open(&ctx, &js, &mut pos).await {
                Ok(mut messages) => {
                    attempt = 0;
                    ctx.connected(Some(client.server_info().max_payload).filter(|&m| m > 0));
                    let (why, kicked) = consume(&ctx, &mut messages, &mut pos, &mut kick).await;
                    ctx.down(&why);
                    if kicked {
                        // Connected again: read again at once.
                        continue;
                    }
                }
                Err(e) => ctx.down(&e),
            }
        }
        // Wait for the next attempt: the backoff, or the connection
        // coming back, whichever is first.
        let pause = tokio::time::sleep(backoff(attempt));
        attempt += 1;
        tokio::select! {
            _ = pause => {}
            k = kick.recv() => if k.is_none() { return },
        }
    }
}

/// Makes sure the stream exists, works out where to resume, and creates
/// this node's consumer there.
async fn open(
    ctx: &Ctx,
    js: &jetstream::Context,
    pos: &mut Option<Position>,
) -> Result<consumer::pull::Stream, String> {
    let s = &ctx.cluster.settings;
    let subject = s.subject();
    let name = stream_name(&s.prefix);
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            max_messages: STREAM_MAX_MESSAGES,
            max_bytes: STREAM_MAX_BYTES,
            max_age: STREAM_MAX_AGE,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("not enabled")
                || text.contains("unavailable")
                || text.contains("no responders")
            {
                format!("JetStream stream {name}: {text} (start nats-server with JetStream: -js)")
            } else {
                format!("JetStream stream {name}: {text}")
            }
        })?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("JetStream stream {name}: {e}"))?
        .clone();
    if !info.config.subjects.iter().any(|x| x == &subject) {
        return Err(format!(
            "the JetStream stream {name} exists but does not take the subject {subject} (its subjects: {:?})",
            info.config.subjects
        ));
    }
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let next = match pos.take() {
        // A node that just started delivers what is published from now.
        None => last + 1,
        Some(p) if p.created != info.created.unix_timestamp_nanos() => {
            ctx.reset(&format!(
                "the JetStream stream {name} was created anew (a broker restarted without its storage?)"
            ));
            first.max(1)
        }
        Some(p) => {
            if first > p.next && p.next <= last {
                ctx.missed(
                    first - p.next,
                    &format!("the JetStream stream {name} dropped them (limits) before this node read them"),
                );
                first
            } else {
                p.next
            }
        }
    };
    *pos = Some(Position {
        created: info.created.unix_timestamp_nanos(),
        next,
    });
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
            ack_policy: consumer::AckPolicy::None,
            replay_policy: consumer::ReplayPolicy::Instant,
            inactive_threshold: CONSUMER_IDLE,
            memory_storage: true,
            description: Some(format!("corepin node {}", s.node)),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create a consumer on the JetStream stream {name}: {e}"))?;
    consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .heartbeat(HEARTBEAT)
        .messages()
        .await
        .map_err(|e| format!("cannot read the JetStream stream {name}: {e}"))
}

/// Hands the stream's messages to the bus until the consumer fails or the
/// connection is made again; returns why it stopped, and whether the
/// connection was made again.
async fn consume(
    ctx: &Ctx,
    messages: &mut consumer::pull::Stream,
    pos: &mut Option<Position>,
    kick: &mut mpsc::UnboundedReceiver<()>,
) -> (String, bool) {
    loop {
        let m = tokio::select! {
            biased;
            k = kick.recv() => return match k {
                Some(()) => ("reconnected: reading again from this node's position".into(), true),
                None => ("the node is stopping".into(), false),
            },
            m = messages.next() => m,
        };
        let m = match m {
            Some(Ok(m)) => m,
            Some(Err(e)) => return (format!("reading the stream: {e}"), false),
            None => return ("the stream's consumer ended".into(), false),
        };
        let seq = match m.info() {
            Ok(i) => i.stream_sequence,
            Err(e) => return (format!("a stream message without its sequence: {e}"), false),
        };
        if let Some(p) = pos.as_mut() {
            if seq > p.next {
                ctx.missed(
                    seq - p.next,
                    "the JetStream stream skipped them (dropped by its limits before this node read them)",
                );
            }
            if seq < p.next {
                // Already delivered (a consumer made again overlaps).
                continue;
            }
            p.next = seq + 1;
        }
        ctx.flow().await;
        ctx.receive(&m.payload);
    }
}

/// Sends one publish; JetStream's acknowledgement confirms it.
async fn send(ctx: &Rc<Ctx>, js: &jetstream::Context, subject: &str, o: Outgoing) {
    if ctx.cluster.link() != Link::Connected {
        return ctx.refuse(
            o,
            Failure::Unavailable("the broker connection was lost".into()),
        );
    }
    let Sending { payload, done, at } = ctx.keep_items(o);
    match js.publish(subject.to_string(), payload).await {
        Ok(ack) => {
            let ctx = ctx.clone();
            tokio::task::spawn_local(async move {
                match ack.await {
                    Ok(_) => ctx.confirmed(at, done),
                    Err(e) => {
                        ctx.unconfirmed(done, format!("JetStream did not acknowledge it: {e}"))
                    }
                }
            });
        }
        Err(e) => ctx.unconfirmed(done, format!("the broker client refused it: {e}")),
    }
}

fn event(ctx: &Ctx, kick: &mpsc::UnboundedSender<()>, e: async_nats::Event) {
    use async_nats::Event;
    match e {
        Event::Connected => {
            // The reader makes its consumer again, then reports the link up.
            let _ = kick.send(());
        }
        Event::Disconnected | Event::Closed => ctx.down("connection lost"),
        Event::ClientError(err) => {
            // A failed connection attempt: say why while down.
            if ctx.cluster.link() != Link::Connected {
                ctx.down(&err.to_string());
            } else {
                warn!("cluster: broker client: {err}");
            }
        }
        Event::SlowConsumer(_) => warn!("cluster: the broker client reports a slow consumer"),
        Event::ServerError(err) => warn!("cluster: broker: {err}"),
        Event::LameDuckMode => {
            warn!("cluster: the broker is shutting down (lame duck mode); the client will move to another server")
        }
        Event::Draining => {}
    }
}

/// The broker link cannot work (a bad address, a closed client): every
/// publish is refused, and `/health` says why.
async fn refuse_forever(ctx: &Ctx, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(o) = rx.recv().await {
        ctx.refuse(
            o,
            Failure::Unavailable("the broker link is not running (see the log)".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_names_have_no_dots() {
        assert_eq!(super::stream_name("corepin"), "corepin");
        assert_eq!(super::stream_name("prod.eu-1"), "prod_eu-1");
    }
}
