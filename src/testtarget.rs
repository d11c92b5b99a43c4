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

/// The held response's `Content-Type`: `text/event-stream` for a stream
/// whose request accepts it by name (a browser's EventSource sends
/// `Accept: text/event-stream`, and refuses a stream of any other type),
/// else `text/plain`, as Pushpin's test target answers (so curl and
/// Pushpin-era clients see what they saw). `*/*` and `text/*` do not
/// count: published content is SSE only if its publisher made it so.
fn content_type(head: &RequestHead, mode: HoldMode) -> &'static [u8] {
    let sse = mode == HoldMode::Stream
        && head
            .fields
            .get_all("accept")
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|range| {
                let mut parts = range.split(|&b| b == b';');
                let media = parts.next().unwrap_or(b"");
                // `q=0` says "not this one" (RFC 9110 12.4.2).
                let refused = parts.any(|p| {
                    let p = p.trim_ascii();
                    p.len() > 2
                        && p[..2].eq_ignore_ascii_case(b"q=")
                        && std::str::from_utf8(&p[2..])
                            .ok()
                            .and_then(|q| q.parse::<f32>().ok())
                            == Some(0.0)
                });
                !refused
                    && media
                        .trim_ascii()
                        .eq_ignore_ascii_case(b"text/event-stream")
            });
    if sse {
        b"text/event-stream"
    } else {
        b"text/plain"
    }
}

/// The test target's name, as the access log gives it.
pub const NAME: &str = "test";

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
    let fields = [(At::Key, &b"Content-Type"[..], content_type(head, mode))];
    let base = Base {
        // A constant, valid head: the fallback is never taken.
        head: Head::from_parts(None, None, fields, b"").unwrap_or_else(|_| Head::new(Status::OK)),
        body: Bytes::new(),
    };
    let ctx = HoldCtx {
        head,
        backend: None,
        prefix: route.prefix.as_deref().unwrap_or(""),
        target: NAME,
        sig: None,
        debug: route.debug,
        connection_id: None,
    };
    hold(shard, c, &ctx, Box::new(instruct), Box::new(base)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_sse_only_for_a_client_that_asks_for_it() {
        use crate::codec::http1::{parse_request, HeadLimits};
        let ctype = |accept: &str, mode: HoldMode| {
            let req = format!("GET /stream HTTP/1.1\r\nHost: x\r\n{accept}\r\n");
            let (_, head) = parse_request(req.as_bytes(), &HeadLimits::default())
                .unwrap()
                .unwrap();
            String::from_utf8(content_type(&head, mode).to_vec()).unwrap()
        };
        for (accept, want) in [
            ("", "text/plain"),
            ("Accept: */*\r\n", "text/plain"),
            ("Accept: text/*\r\n", "text/plain"),
            ("Accept: text/event-stream\r\n", "text/event-stream"),
            ("Accept: TEXT/Event-Stream ; q=1\r\n", "text/event-stream"),
            (
                "Accept: text/html, text/event-stream;q=0.5\r\n",
                "text/event-stream",
            ),
            (
                "Accept: text/html\r\nAccept: text/event-stream\r\n",
                "text/event-stream",
            ),
            ("Accept: text/event-streamx\r\n", "text/plain"),
            ("Accept: text/event-stream;q=0\r\n", "text/plain"),
            ("Accept: text/event-stream; Q=0.000\r\n", "text/plain"),
            ("Accept: application/json\r\n", "text/plain"),
        ] {
            assert_eq!(ctype(accept, HoldMode::Stream), want, "{accept:?}");
        }
        // A long-poll's answer is whatever is published: never SSE.
        assert_eq!(
            ctype("Accept: text/event-stream\r\n", HoldMode::Response),
            "text/plain"
        );
    }

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
