//! The Redis adapter (redis-rs): one connection subscribed to the channel
//! `PREFIX.publish`, one multiplexed connection for `PUBLISH`. A lost
//! connection (or a subscription that stops answering PING) closes both
//! and reconnects with backoff.
//!
//! What confirms a publish: the reply to `PUBLISH`. Redis runs commands
//! one at a time and, while running `PUBLISH`, appends the message to the
//! output of every subscribed connection before it replies; so the reply
//! proves the message is queued for every node.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::StreamExt;
use redis::AsyncCommands;
use tokio::sync::mpsc;

use super::bridge::{Ctx, Waiting};
use super::{backoff, Failure, Outgoing, CONFIRM_TIMEOUT, CONNECT_TIMEOUT};

/// The subscription connection is checked this often with a PING.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A PING unanswered this long means the connection is dead.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn run(ctx: Rc<Ctx>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let url = ctx.cluster.settings.brokers[0].clone();
    let subject = ctx.cluster.settings.subject();
    let client = match redis::Client::open(url.full()) {
        Ok(c) => c,
        Err(e) => {
            error!("cluster: {url}: {e}");
            ctx.down(&format!("{url}: {e}"));
            while let Some(o) = rx.recv().await {
                ctx.refuse(o, Failure::Unavailable(format!("{url}: {e}")));
            }
            return;
        }
    };
    let mut attempt = 0usize;
    loop {
        match connect(&client, &subject).await {
            Ok((conn, pubsub)) => {
                attempt = 0;
                ctx.connected(None);
                let why = serve(&ctx, &mut rx, conn, pubsub, &subject).await;
                match why {
                    Some(why) => ctx.down(&why),
                    None => return,
                }
            }
            Err(e) => ctx.down(&e),
        }
        // Wait before the next attempt; publishes meanwhile are refused.
        let pause = tokio::time::sleep(backoff(attempt));
        attempt += 1;
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                out = rx.recv() => match out {
                    Some(o) => {
                        let why = ctx.cluster.unhealthy().unwrap_or_default();
                        ctx.refuse(o, Failure::Unavailable(why.trim_end().to_string()));
                    }
                    None => return,
                },
            }
        }
        ctx.sweep();
    }
}

/// Opens the publishing connection and the subscription.
async fn connect(
    client: &redis::Client,
    subject: &str,
) -> Result<(redis::aio::MultiplexedConnection, redis::aio::PubSub), String> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONFIRM_TIMEOUT));
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "connection attempt timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(CONNECT_TIMEOUT, pubsub.subscribe(subject))
        .await
        .map_err(|_| format!("SUBSCRIBE {subject} timed out"))?
        .map_err(|e| format!("SUBSCRIBE {subject}: {e}"))?;
    Ok((conn, pubsub))
}

/// Serves a connected link until it fails (`Some(why)`) or the node stops
/// (`None`).
async fn serve(
    ctx: &Rc<Ctx>,
    rx: &mut mpsc::UnboundedReceiver<Outgoing>,
    conn: redis::aio::MultiplexedConnection,
    pubsub: redis::aio::PubSub,
    subject: &str,
) -> Option<String> {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            msg = stream.next() => match msg {
                Some(m) => ctx.receive(m.get_payload_bytes()),
                None => return Some("connection lost".into()),
            },
            out = rx.recv() => match out {
                Some(o) => publish(ctx, &conn, subject, o),
                None => return None,
            },
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, sink.ping::<String>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Some(format!("PING failed: {e}")),
                    Err(_) => return Some(format!(
                        "no answer to PING within {} s", PING_TIMEOUT.as_secs()
                    )),
                }
            }
            _ = sweep.tick() => ctx.sweep(),
        }
    }
}

/// Sends one `PUBLISH` on its own task (replies come back in order on the
/// multiplexed connection); the reply confirms it.
fn publish(ctx: &Rc<Ctx>, conn: &redis::aio::MultiplexedConnection, subject: &str, o: Outgoing) {
    let Outgoing {
        seq,
        payload,
        items,
        done,
        at,
    } = o;
    // The items wait for the message's echo on the subscription.
    ctx.waiting.borrow_mut().insert(
        seq,
        Waiting {
            done: None,
            items,
            at,
        },
    );
    let (ctx, mut conn, subject) = (ctx.clone(), conn.clone(), subject.to_string());
    tokio::task::spawn_local(async move {
        let r: redis::RedisResult<i64> = conn.publish(&subject, &payload[..]).await;
        match r {
            Ok(_) => ctx.confirmed(at, done),
            Err(e) => ctx.unconfirmed(done, format!("PUBLISH failed: {e}")),
        }
    });
}
