//! A WebSocket whose peer is its subscription: the test target's
//! `/ws?channel=X`, and an over-HTTP session after `detach`. Also the GRIP
//! control messages (from a passthrough or over-HTTP backend) that change
//! a WebSocket's subscription.

use std::rc::Rc;
use std::time::Duration;

use super::{close_frame, drop_client, from_client, outcome, wait, ws_sub, Io, MAX_MESSAGE};
use crate::codec::http1::{self, RequestHead};
use crate::codec::ws::{Reader, Role};
use crate::codec::wshandshake::switching;
use crate::codec::wssession::{Pings, ServerSession};
use crate::conn::grip::{deliver, HoldEnd, Written};
use crate::conn::http::Client;
use crate::route::Route;
use crate::shard::Shard;
use crate::subs::{Msg, Sub};

/// The filter state of a WebSocket's channels after a change: every
/// channel (named without the route's prefix, as the backend named it),
/// with the filters it was subscribed with.
fn ws_chans(
    sub: &Sub,
    prefix: &str,
    channels: &[String],
    set: Option<(&str, crate::codec::filter::Filters)>,
) -> Vec<crate::subs::ChanState> {
    let old = sub.chans();
    channels
        .iter()
        .map(|ch| {
            let filters = match &set {
                Some((c, f)) if c == ch => f.clone(),
                _ => old
                    .iter()
                    .find(|o| &o.channel == ch)
                    .map(|o| o.filters.clone())
                    .unwrap_or_default(),
            };
            crate::subs::ChanState {
                channel: ch.clone(),
                name: ch.strip_prefix(prefix).unwrap_or(ch).to_string(),
                filters,
                prev_id: None,
            }
        })
        .collect()
}

/// Acts on a GRIP control message. One corepin cannot act on (invalid,
/// unknown, a field it does not know) is logged with the reason and
/// otherwise dropped, as Pushpin drops it (there, silently).
pub(super) fn control(
    shard: &Shard,
    sub: &Rc<Sub>,
    prefix: &str,
    json: &[u8],
    detached: &mut bool,
) {
    use crate::codec::wscontrol::{self, Control};
    let c = match wscontrol::parse(json) {
        Ok(c) => c,
        Err(e) => {
            warn!(
                "core {}: a GRIP control message from the backend was not acted on: {e}",
                shard.index
            );
            return;
        }
    };
    match c {
        Control::Subscribe {
            channel,
            filters,
            last_id,
        } => {
            let ch = format!("{prefix}{channel}");
            let mut chans = sub.channels();
            let new = !chans.contains(&ch);
            if new {
                if chans.len() >= shard.cfg.grip.max_channels {
                    warn!(
                        "core {}: subscribe to {channel:?} refused: the connection has {} channels (grip.max_channels)",
                        shard.index,
                        chans.len()
                    );
                    return;
                }
                chans.push(ch.clone());
                shard.subs.set_channels(sub, chans.clone());
            }
            let states = ws_chans(sub, prefix, &chans, Some((&ch, filters)));
            shard.subs.set_chans(sub, states);
            if let Some(id) = last_id {
                resume(shard, sub, &ch, &id, new);
            }
        }
        Control::Unsubscribe { channel } => {
            let ch = format!("{prefix}{channel}");
            let mut chans = sub.channels();
            chans.retain(|c| *c != ch);
            shard.subs.set_channels(sub, chans.clone());
            let states = ws_chans(sub, prefix, &chans, None);
            shard.subs.set_chans(sub, states);
        }
        Control::Detach => *detached = true,
        Control::Session { .. } => warn!(
            "core {}: control message session: not supported (it only keys Pushpin's optional state service, which corepin does not have)",
            shard.index
        ),
        Control::SetMeta { name, value } => {
            sub.edit_meta(|meta| match value {
                Some(v) => {
                    if let Err(e) = crate::codec::grip::set_meta(meta, &name, &v, "set-meta") {
                        warn!("core {}: {e}", shard.index);
                    }
                }
                None => meta.retain(|(k, _)| *k != name),
            })
        }
        Control::KeepAlive(ka) => {
            let ka = ka.map(|(m, timeout, mode)| crate::codec::grip::KeepAlive {
                data: m.frame(),
                timeout,
                mode,
            });
            shard.subs.set_keep_alive(sub, ka);
        }
        Control::SendDelayed { message, timeout } => {
            shard
                .subs
                .send_delayed(sub, message.frame(), Duration::from_secs(u64::from(timeout)));
        }
        Control::FlushDelayed => shard.subs.flush_delayed(sub),
    }
}

/// A `subscribe` with `last-id` (issue 18): what the channel published
/// after that id is queued from history ahead of anything live, exactly
/// once (the subscription's join mark divides history from live). Only a
/// new subscription resumes; history that no longer holds the id (a gap)
/// or is off replays nothing, and the log says so.
fn resume(shard: &Shard, sub: &Rc<Sub>, channel: &str, id: &str, new: bool) {
    use crate::subs::Resumed;
    if !new {
        warn!(
            "core {}: subscribe to {channel:?} with last-id {id:?}: already subscribed, nothing replayed",
            shard.index
        );
        return;
    }
    match shard.subs.resume(sub, channel, id) {
        Resumed::Replayed(n) => debug!(
            "core {}: WebSocket resumed {channel:?} after {id:?}: {n} replayed",
            shard.index
        ),
        Resumed::Gap => info!(
            "core {}: WebSocket resuming {channel:?} after {id:?}: history no longer holds it (gap), nothing replayed",
            shard.index
        ),
        Resumed::Off => warn!(
            "core {}: subscribe to {channel:?} with last-id: channel history is off ([history] messages), nothing replayed",
            shard.index
        ),
    }
}

/// `/ws?channel=X` on the test target: a WebSocket subscribed to X.
pub(super) async fn test_target(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
) -> HoldEnd {
    if head.path() != "/ws" && head.path() != "/ws/" {
        let mut out = Vec::new();
        http1::write_simple_response(
            &mut out,
            404,
            "test target: WebSockets go to /ws?channel=NAME",
            true,
        );
        let _ = c.conn.write_all(&out).await;
        return outcome(404, 0, "test");
    }
    let channel = crate::testtarget::channel(head);
    let prefix = route.prefix.clone().unwrap_or_default();
    let sub = ws_sub(&shard.subs, route, vec![format!("{prefix}{channel}")]);
    // Resume (issue 18): what the client missed after the id it names is
    // queued from history before anything live, exactly once.
    let query_id = crate::testtarget::query_param(head.query(), "last-event-id");
    let last = head
        .fields
        .get("last-event-id")
        .or(query_id.as_deref().map(str::as_bytes));
    let mut answer = switching(head, None, None);
    if let crate::subs::HoldResume::Note(Some(v)) = shard.subs.resume_hold(&sub, last, &[]) {
        // Before the head's final blank line.
        if answer.ends_with(b"\r\n\r\n") {
            answer.truncate(answer.len() - 2);
            answer.extend_from_slice(format!("Corepin-Resume: {v}\r\n\r\n").as_bytes());
        }
    }
    if c.conn.write_all(&answer).await.is_err() {
        return outcome(101, 0, "test");
    }
    let end = client_loop(shard, c, &sub, "test").await;
    end
}

/// A session whose only peer is the subscription (test target, or an
/// over-HTTP session after `detach`): publishes go out, pings are answered.
pub(super) async fn client_loop(
    shard: &Shard,
    c: &mut Client,
    sub: &Rc<Sub>,
    target: &str,
) -> HoldEnd {
    let mut reader = Reader::new(Role::Server, MAX_MESSAGE);
    let mut session = ServerSession::new(Pings::Answer);
    let mut bytes = 0u64;
    let mut first = c.conn.has_input().then_some(Io::Client);
    loop {
        let io = match first.take() {
            Some(io) => io,
            None => wait(c, None, Some(sub), None).await,
        };
        match io {
            Io::Client => {
                from_client(c, &mut reader, &mut session).await;
                if session.closed() {
                    return outcome(101, bytes, target);
                }
            }
            Io::Sub(Msg::Data(b)) => {
                let (r, n) = deliver(shard, c, sub, b, <[u8]>::len).await;
                bytes += n;
                match r {
                    Written::Done => {}
                    Written::Gone => return outcome(101, bytes, target),
                    Written::Dropped => {
                        drop_client(shard, c);
                        return outcome(101, bytes, target);
                    }
                }
            }
            Io::Sub(Msg::WsClose(code, reason)) => {
                let _ = c.conn.write_all(&close_frame(code, &reason, None)).await;
                return outcome(101, bytes, target);
            }
            Io::Sub(_) | Io::Timer | Io::Backend => {}
            Io::Dropped => {
                drop_client(shard, c);
                return outcome(101, bytes, target);
            }
            Io::ClientGone | Io::BackendGone => return outcome(101, bytes, target),
        }
    }
}
