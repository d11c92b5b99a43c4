//! Per-connection drivers: one async task per client connection reads,
//! parses with the sans-IO codecs, acts, and writes — every byte through
//! its [`Connection`](crate::connection::Connection).
//!
//! ## The publish path, from `/publish` to a subscriber's socket
//!
//! 1. `control::publish` (called by `control::handle` for `POST /publish`
//!    with the body read) parses the items (`codec::publish`), reserves
//!    their bytes in the in-flight budget and hands them on through
//!    `Shard::publish`, which also kicks this core's own delivery task.
//! 2. `bus::Bus::publish` encodes each item once per format (stream,
//!    WebSocket, long-poll response) into shared `Bytes`; `Bus::route`
//!    puts one `Arc` per item into the inbox of every core with a
//!    subscriber on its channel, and `Bus::wake` writes those cores'
//!    wake byte (`wake::PUBLISH`).
//! 3. `shard::Shard::drain_inbox` (each core's delivery task, woken by
//!    `wake::listen` or the kick) takes its inbox in slices.
//! 4. `subs::Registry::deliver` groups the items by channel;
//!    `deliver_channel` adds the wildcard (prefix) subscriptions and
//!    `deliver_key` builds one delivery plan per channel and applies the
//!    item's filters.
//! 5. `Registry::hand` queues the plan's shared bytes on each subscriber
//!    (`Sub::push`, bounded; a subscriber that cannot keep up is dropped
//!    alone), waking its connection task.
//! 6. The connection task wakes on the queued message: `grip::next_event`
//!    in `grip::hold_stream` for HTTP streams and long-polls, or the
//!    WebSocket loop of its mode (`ws::subscriber::client_loop`,
//!    `ws::passthrough`'s relay, `ws::over_http`'s session loop).
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
