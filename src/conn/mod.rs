//! Per-connection drivers: one async task per client connection reads,
//! parses with the sans-IO codecs, acts, and writes — every byte through
//! its [`Connection`](crate::connection::Connection).
//!
//! ## The publish path, from `/publish` to a subscriber's socket
//!
//! 1. `control::handle` routes `POST /publish` and reads its body.
//! 2. `control::publish` parses the items (`codec::publish`), reserves
//!    their bytes in the in-flight budget, and hands them to its core
//!    (`Shard::publish`, which also wakes this core's own delivery task).
//! 3. `bus::Bus::publish` encodes each item once per format (stream,
//!    WebSocket, long-poll response) into shared `Bytes` and puts one
//!    `Arc` per item into the inbox of every core with a subscriber on
//!    its channel, waking those cores.
//! 4. `shard::Shard::drain_inbox` (each core's delivery task) takes its
//!    inbox in slices.
//! 5. `subs::Registry::deliver` finds the channel's subscribers on this
//!    core, applies the item's filters, and queues the shared bytes on
//!    each (`Sub::push`, bounded; a subscriber that cannot keep up is
//!    dropped alone), waking its connection task.
//! 6. The connection task wakes on the queued message: `grip::hold_stream`
//!    for HTTP streams and long-polls, or the WebSocket loop of its mode
//!    (`ws::subscriber::client_loop`, `ws::passthrough`'s relay,
//!    `ws::over_http`'s session loop).
//! 7. `grip::deliver` — the subscriber's last hop, the one path for every
//!    kind of hold — takes that message and the data queued behind it.
//! 8. `Connection::poll_write_parts` sends them in one gathered `sendmsg`,
//!    never copying the shared bytes.

pub mod body;
pub mod dropin;
pub mod grip;
pub mod http;
pub mod sockjs;
pub mod ws;
