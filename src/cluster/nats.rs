//! The NATS adapter (async-nats). One connection both publishes and
//! subscribes to `PREFIX.publish`; the client library reconnects (with
//! our backoff) and subscribes again after each reconnection.
//!
//! What confirms a publish: its own message coming back on that
//! subscription. The server routes a message to every subscription on its
//! subject when it processes it, and it processes one connection's
//! messages in order; so the echo, which is also on this connection,
//! proves that the server took the message and queued it for every
//! node's connection. (async-nats' `flush` only proves the bytes left
//! this process, which a broker killed before reading them would lose;
//! core NATS has no other acknowledgement without JetStream.)

use std::rc::Rc;
use std::sync::atomic::Ordering;

use futures_lite::StreamExt;
use tokio::sync::mpsc;

use super::bridge::{Ctx, Waiting};
use super::{backoff, Failure, Link, Outgoing, CONNECT_TIMEOUT};

/// Messages the client library holds for the subscription before it drops
/// them (and reports a slow consumer).
const SUBSCRIPTION_CAPACITY: usize = 1 << 16;
/// Commands (publishes) the client library queues.
const CLIENT_CAPACITY: usize = 1 << 14;
/// Keep-alive pings: a broker that stops answering is noticed after two.
const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

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
        .ping_interval(PING_INTERVAL)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
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
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            error!("cluster: cannot subscribe to {subject}: {e}");
            ctx.down(&format!("cannot subscribe to {subject}: {e}"));
            return refuse_forever(&ctx, rx).await;
        }
    };
    let mut sweep = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            ev = ev_rx.recv() => match ev {
                Some(e) => event(&ctx, &client, e),
                None => break,
            },
            msg = sub.next() => match msg {
                Some(m) => ctx.receive(&m.payload),
                None => {
                    error!("cluster: the subscription to {subject} ended");
                    ctx.down("the subscription ended");
                    return refuse_forever(&ctx, rx).await;
                }
            },
            out = rx.recv() => match out {
                Some(o) => send(&ctx, &client, &subject, o).await,
                None => break,
            },
            _ = sweep.tick() => ctx.sweep(),
        }
    }
}

/// Sends one publish; its echo will confirm it.
async fn send(ctx: &Ctx, client: &async_nats::Client, subject: &str, o: Outgoing) {
    if ctx.cluster.link() != Link::Connected {
        return ctx.refuse(
            o,
            Failure::Unavailable("the broker connection was lost".into()),
        );
    }
    let Outgoing {
        seq,
        payload,
        items,
        done,
        at,
    } = o;
    ctx.waiting.borrow_mut().insert(
        seq,
        Waiting {
            done: Some(done),
            items,
            at,
        },
    );
    if let Err(e) = client.publish(subject.to_string(), payload).await {
        if let Some(done) = ctx.waiting.borrow_mut().remove(&seq).and_then(|w| w.done) {
            ctx.unconfirmed(done, format!("the broker client refused the publish: {e}"));
        }
    }
}

fn event(ctx: &Ctx, client: &async_nats::Client, e: async_nats::Event) {
    use async_nats::Event;
    match e {
        Event::Connected => {
            let max = client.server_info().max_payload;
            ctx.connected((max > 0).then_some(max));
        }
        Event::Disconnected | Event::Closed => {
            ctx.down("connection lost");
            ctx.fail_waiting("the broker connection was lost before it confirmed the publish");
        }
        Event::ClientError(err) => {
            // A failed connection attempt: say why while down.
            if ctx.cluster.link() != Link::Connected {
                ctx.down(&err.to_string());
            } else {
                warn!("cluster: broker client: {err}");
            }
        }
        Event::SlowConsumer(_) => {
            ctx.cluster.stats.dropped.fetch_add(1, Ordering::Relaxed);
            error!(
                "cluster: this node read the broker's messages too slowly and the client dropped some: its subscribers miss them (corepin_cluster_messages_dropped_total)"
            );
        }
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
