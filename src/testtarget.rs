//! The built-in `test` target (GRIP.md §5), answered without a backend:
//! `/stream?channel=X` holds a stream, `/response?channel=X` a long-poll
//! (default channel `test`), through the same hold code a backend's
//! instructions use.

use std::rc::Rc;

use bytes::Bytes;

use crate::codec::grip::{ChannelSpec, HoldMode, Instruct, DEFAULT_TIMEOUT};
use crate::codec::http1::{self, RequestHead};
use crate::codec::response::{At, Head, Status};
use crate::conn::grip::{hold, Base, HoldCtx, HoldEnd};
use crate::conn::http::{Client, Outcome};
use crate::route::Route;
use crate::shard::Shard;

/// Decodes `%XX` and `+` in a query value.
fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `name` in a query string.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| unescape(v))
}

/// The channel a test-target request names (`?channel=`, default `test`).
pub fn channel(head: &RequestHead) -> String {
    query_param(head.query(), "channel")
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "test".into())
}

/// Answers a request routed to `test`.
pub async fn handle(
    shard: &Rc<Shard>,
    c: &mut Client,
    head: &RequestHead,
    route: &Route,
) -> HoldEnd {
    let mode = match head.path() {
        "/stream" | "/stream/" => HoldMode::Stream,
        "/response" | "/response/" => HoldMode::Response,
        _ => {
            let mut out = Vec::new();
            http1::write_simple_response(
                &mut out,
                404,
                "test target: try /stream or /response (?channel=NAME)",
                !head.keep_alive,
            );
            let ok = c.conn.write_all(&out).await.is_ok();
            return HoldEnd::Done(Outcome {
                status: 404,
                bytes: out.len() as u64,
                target: "test".into(),
                keep_alive: ok && head.keep_alive && !shard.draining(),
            });
        }
    };
    let channel = channel(head);
    let instruct = Instruct {
        hold: mode,
        channels: vec![ChannelSpec {
            name: channel,
            prev_id: None,
            filters: Default::default(),
        }],
        timeout: DEFAULT_TIMEOUT,
        keep_alive: None,
        status: None,
        next: None,
        gone: None,
        meta: Vec::new(),
        expose: Vec::new(),
    };
    let fields = [(At::Key, &b"Content-Type"[..], &b"text/plain"[..])];
    let base = Base {
        // A constant, valid head: the fallback is never taken.
        head: Head::from_parts(None, None, fields, b"").unwrap_or_else(|_| Head::new(Status::OK)),
        body: Bytes::new(),
    };
    let ctx = HoldCtx {
        head,
        backend: None,
        prefix: route.prefix.clone().unwrap_or_default(),
        target: "test".into(),
        sig: None,
        debug: route.debug,
        connection_id: None,
    };
    hold(shard, c, &ctx, instruct, base).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values() {
        assert_eq!(
            query_param(Some("a=1&channel=x%20y+z"), "channel").as_deref(),
            Some("x y z")
        );
        assert_eq!(query_param(Some("channel"), "channel").as_deref(), Some(""));
        assert_eq!(query_param(None, "channel"), None);
        assert_eq!(
            query_param(Some("channel=%zz%"), "channel").as_deref(),
            Some("%zz%")
        );
    }
}
