//! The built-in `test` target (GRIP.md §5), answered without a backend.

use crate::codec::http1::RequestHead;
use crate::conn::http::{Client, Outcome};
use crate::shard::Shard;

/// Answers a request routed to `test`.
pub async fn handle(shard: &Shard, c: &mut Client, head: &RequestHead) -> Outcome {
    let body = "corepin test target\n";
    let mut out = Vec::with_capacity(128);
    crate::codec::http1::write_simple_response(&mut out, 200, body.trim_end(), !head.keep_alive);
    let ok = crate::conn::http::write_to(&mut c.stream, &out).await;
    Outcome {
        status: 200,
        bytes: out.len() as u64,
        target: "test".into(),
        keep_alive: ok && head.keep_alive && !shard.draining(),
    }
}
