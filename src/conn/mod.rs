//! Per-connection drivers: one async task per client connection reads,
//! parses with the sans-IO codecs, acts, and writes — every byte through
//! its [`Connection`](crate::connection::Connection).
//!
//! ## The publish path, from `/publish` to a subscriber's socket
//!
//! Eight functions carry a publish; each hands it to the next. Helpers
//! that only compute something on the way (parsing, encoding, the
//! delivery plan, the interest look-up) are named in parentheses: the
//! path can be followed without opening them.
//!
//! 1. `control::publish` (called by `control::handle` for `POST /publish`
//!    with the body read) parses the items (`codec::publish::Parser`),
//!    reserves their bytes in the in-flight budget and hands them, in
//!    slices, to the bus; when the bus queued items for this very core it
//!    kicks the core's delivery task itself (`Shard::kick_delivery`).
//! 2. `bus::Bus::publish` encodes each item (`Encoded`: each wire form
//!    made once, on demand, into shared `Bytes`), skipping items no core
//!    listens to; items with an id or a `prev-id` go through the
//!    sequencer first (`Bus::sequenced`: dedup, reorder, history).
//! 3. `Bus::route` gives each item its sequence number, tells the stats
//!    socket, puts one `Arc` into the inbox of every core with a
//!    subscriber on its channel or on a prefix of it
//!    (`Interest::each_core`), then writes those cores' wake byte
//!    (`wake::PUBLISH`). Each core's `wake_loop` turns the byte into the
//!    same kick, and the core's delivery task (an async block in
//!    `shard::run`) calls the next step a slice at a time.
//! 4. `subs::Registry::deliver` takes a slice of the inbox in runs of one
//!    channel (`channel_runs`), finds the subscribers of the channel and
//!    of its prefixes held here (`prefix_keys`, `subscribers`), serves
//!    apart those with filters or joined mid-slice (`hand_apart`), and
//!    queues one shared plan (`Plan::new`, `Plan::messages`) on the rest.
//! 5. `subs::Sub::push` queues a message on one subscriber (bounded; a
//!    subscriber that cannot keep up is dropped alone) and wakes its
//!    connection task.
//! 6. `grip::poll_event` (`grip::next_event` as a future) is where the
//!    connection task of an HTTP stream or long-poll (`held::HeldConn`,
//!    `grip::hold_response`) wakes and takes the message
//!    (`Sub::poll_msg`); the WebSocket modes wait the same way in their
//!    loops (`ws::subscriber::client_loop`, `ws::passthrough`'s relay,
//!    `ws::over_http`'s session loop).
//! 7. `grip::Writing` (`grip::deliver` as a future) — the subscriber's
//!    last hop, the one path for every kind of hold — takes that message
//!    and the data queued behind it (`Sub::take_data_parts`), and bounds
//!    the write by the client write timeout.
//! 8. `Connection::poll_write_parts` sends them in one gathered `sendmsg`,
//!    never copying the shared bytes.

pub mod body;
pub mod dropin;
pub mod grip;
pub mod held;
pub mod http;
pub mod recycle;
pub mod sockjs;
pub mod ws;
