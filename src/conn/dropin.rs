//! Pushpin's per-request response rewriting on HTTP requests: automatic
//! cross-origin (route `aco`, global `auto_cross_origin`) and JSON-P. The
//! HTTP and GRIP drivers call in here at each place a response is
//! written; a request without these options carries no state and nothing
//! changes.

use std::rc::Rc;

use crate::codec::heads::{write_proxied_response, ClientBody, Toward};
use crate::codec::http1::{Fields, RequestHead, ResponseHead};
use crate::codec::{cors, jsonp};
use crate::conn::grip::{self as grip_conn, HoldEnd};
use crate::conn::http::{Client, Outcome};
use crate::route::Route;
use crate::shard::Shard;
use crate::upstream::Upstream;

/// What the responses to the current request get.
#[derive(Debug)]
pub struct Wrap {
    /// The request's fields (Origin, Access-Control-Request-*).
    req: Fields,
    /// A JSON-P request: how its answers are wrapped, and the request
    /// that goes upstream instead of the client's.
    jsonp: Option<(jsonp::Plan, RequestHead)>,
    /// A JSON-P request refused: answer 400 with this.
    refusal: Option<&'static str>,
}

/// The rewriting for a request on `route` (`None`: no route matched),
/// or `None` when there is none. WebSocket handshakes get none, as in
/// Pushpin.
pub fn start(
    global_aco: bool,
    route: Option<&Route>,
    head: &RequestHead,
    ws: bool,
) -> Option<Rc<Wrap>> {
    let aco = global_aco || route.is_some_and(|r| r.aco);
    if !aco || ws {
        return None;
    }
    let mut w = Wrap {
        req: head.fields.clone(),
        jsonp: None,
        refusal: None,
    };
    // Only a request that reaches a backend is JSON-P (not a no-route 404).
    if route.is_some() && head.body == crate::codec::http1::BodyKind::Empty {
        let j = route.and_then(|r| r.jsonp.as_ref());
        let settings = jsonp::Settings {
            basic: j.is_some_and(|j| j.basic),
            callback_param: j
                .and_then(|j| j.callback_param.as_deref())
                .unwrap_or("callback"),
            default_method: j.and_then(|j| j.default_method.as_deref()),
            body_param: j.and_then(|j| j.body_param.as_deref()),
            default_callback: j.and_then(|j| j.default_callback.as_deref()),
        };
        match jsonp::plan(&settings, head.method(), head.query()) {
            Ok(Some(plan)) => match jsonp::upstream_head(&plan, head, head.path()) {
                Some(up) => w.jsonp = Some((plan, up)),
                None => w.refusal = Some(jsonp::Refusal::Headers.message()),
            },
            Ok(None) => {}
            Err(r) => w.refusal = Some(r.message()),
        }
    }
    Some(Rc::new(w))
}

/// A JSON-P request refused (400 with this reason; the answer gets CORS
/// fields, not wrapped).
pub fn refusal(c: &Client) -> Option<&'static str> {
    c.dropin.as_ref().and_then(|w| w.refusal)
}

/// The request to send upstream in place of the client's, for JSON-P.
pub fn upstream(c: &Client) -> Option<Rc<Wrap>> {
    c.dropin.clone().filter(|w| w.jsonp.is_some())
}

impl Wrap {
    /// The rewritten request (JSON-P), if any.
    pub fn head(&self) -> Option<&RequestHead> {
        self.jsonp.as_ref().map(|(_, h)| h)
    }
}

/// The body a JSON-P request sends upstream in place of the client's
/// (none), taken from its query (`jsonp_body`, `_body`).
pub fn body(c: &Client) -> Option<&[u8]> {
    c.dropin
        .as_ref()
        .and_then(|w| w.jsonp.as_ref())
        .and_then(|(p, _)| p.body.as_deref())
}

/// Adds what the current request's responses get to the response head
/// starting at `start` in `out`, whose body follows as a stream (a proxied
/// response, a stream hold): CORS fields. A JSON-P request's stream hold
/// is not wrapped (as in Pushpin: a script cannot be streamed).
pub fn head(c: &Client, out: &mut Vec<u8>, start: usize) {
    if let Some(w) = &c.dropin {
        cors::apply(&w.req, out, start);
    }
}

/// The same for a complete response (head and whole body) starting at
/// `start`: a JSON-P request's answer is wrapped (`held`: a long-poll's
/// final response, wrapped as Pushpin's handler does), any other gets
/// CORS fields.
pub fn whole(c: &Client, out: &mut Vec<u8>, start: usize, held: bool) {
    let Some(w) = &c.dropin else {
        return;
    };
    match &w.jsonp {
        Some((plan, _)) => {
            if let Some(wrapped) = out
                .get(start..)
                .and_then(|r| jsonp::wrap_response(plan, held, r))
            {
                out.truncate(start);
                out.extend_from_slice(&wrapped);
            }
        }
        None => {
            cors::apply(&w.req, out, start);
        }
    }
}

/// True when the current request's proxied answer is wrapped whole
/// (`proxied` then writes it).
pub fn wraps(c: &Client) -> bool {
    c.dropin.as_ref().is_some_and(|w| w.jsonp.is_some())
}

/// A JSON-P request's proxied answer: read whole (up to the instructing
/// body limit), wrapped and written.
pub async fn proxied(
    shard: &Shard,
    c: &mut Client,
    head: &RequestHead,
    mut up: Upstream,
    resp: ResponseHead,
    target: String,
) -> HoldEnd {
    let keep = head.keep_alive && !shard.draining();
    let mut out = Vec::new();
    match grip_conn::read_body(&mut up, resp.body).await {
        Ok(body) => {
            if resp.keep_alive {
                shard.pool.put_idle(up);
            }
            write_proxied_response(
                &mut out,
                head,
                &resp,
                ClientBody::AsIs,
                keep,
                Toward::ClientWithGrip,
            );
            out.extend_from_slice(&body);
        }
        Err(e) => {
            warn!(
                "core {}: response from {target} unreadable for JSON-P: {e:?}",
                shard.index
            );
            crate::codec::http1::write_simple_response(
                &mut out,
                502,
                "upstream response could not be JSON-P encoded",
                !keep,
            );
        }
    }
    whole(c, &mut out, 0, false);
    let ok = c.conn.write_all(&out).await.is_ok();
    HoldEnd::Done(Outcome {
        status: resp.status,
        bytes: out.len() as u64,
        target,
        keep_alive: ok && keep,
    })
}

/// One request or WebSocket as the stats socket's `conn` messages tell
/// it (Pushpin's `stats_connection_send`): announced when made, and as
/// ended when dropped, however the request ends. Nothing when no stats
/// socket asked for them.
pub struct StatsConn<'a> {
    watch: &'a crate::bus::SubWatch,
    id: String,
}

impl<'a> StatsConn<'a> {
    pub fn open(
        shard: &'a Shard,
        head: &RequestHead,
        peer: std::net::SocketAddr,
        ssl: bool,
    ) -> Option<StatsConn<'a>> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let watch = shard.bus.watch().filter(|w| w.conns)?;
        let id = format!(
            "corepin-{}:{}",
            shard.index,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        watch.conn(crate::bus::ConnEvent {
            id: id.clone(),
            open: Some(crate::bus::ConnOpen {
                ws: crate::route::is_websocket(head),
                peer: peer.ip(),
                ssl,
            }),
        });
        Some(StatsConn { watch, id })
    }
}

impl StatsConn<'_> {
    /// The connection's id, its close not sent: a held stream handed off
    /// from its request's futures sends it when it ends (`stats_closed`).
    pub fn into_id(mut self) -> String {
        std::mem::take(&mut self.id)
    }
}

/// The stats socket's close of a connection opened by `StatsConn::open`
/// whose id was taken with `StatsConn::into_id`.
pub fn stats_closed(shard: &Shard, id: String) {
    if let Some(watch) = shard.bus.watch().filter(|w| w.conns) {
        watch.conn(crate::bus::ConnEvent { id, open: None });
    }
}

impl Drop for StatsConn<'_> {
    fn drop(&mut self) {
        // Taken by `into_id`: closed by whoever took it.
        if self.id.is_empty() {
            return;
        }
        self.watch.conn(crate::bus::ConnEvent {
            id: std::mem::take(&mut self.id),
            open: None,
        });
    }
}
