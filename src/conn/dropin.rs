//! Pushpin's per-request response rewriting on HTTP requests: automatic
//! cross-origin (route `aco`, global `auto_cross_origin`). The HTTP and
//! GRIP drivers call in here at each place a response head is written;
//! a request without these options carries no state and nothing changes.

use std::rc::Rc;

use crate::codec::cors;
use crate::codec::http1::{Fields, RequestHead};
use crate::conn::http::Client;
use crate::route::Route;

/// What the responses to the current request get.
#[derive(Debug)]
pub struct Wrap {
    /// The request's fields (Origin, Access-Control-Request-*).
    req: Fields,
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
    (aco && !ws).then(|| {
        Rc::new(Wrap {
            req: head.fields.clone(),
        })
    })
}

/// Adds what the current request's responses get to the response head
/// starting at `start` in `out` (a body may follow it).
pub fn head(c: &Client, out: &mut Vec<u8>, start: usize) {
    if let Some(w) = &c.dropin {
        cors::apply(&w.req, out, start);
    }
}
