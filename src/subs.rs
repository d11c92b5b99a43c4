//! A core's subscriptions: channel -> subscribers, each subscriber's
//! bounded outgoing queue, and the fan-out of drained publishes. Plain
//! per-core data (`Rc`, `RefCell`, `Cell`); the bytes delivered are the
//! shared `Bytes` encoded once by the bus.
//!
//! A queue is bounded in messages and in bytes. The byte bound applies to
//! a subscriber whose socket is full (its connection task says so while a
//! write waits): one that is merely waiting for its turn on a busy core is
//! not slow, and is not dropped for it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::bus::{Bus, Interest, INTEREST_SLOTS};
use crate::bus::{CoreInbox, Encoded};
use crate::codec::filter::{self, Filters, Subscribed, Verdict};
use crate::codec::grip::{KeepAlive, KeepAliveMode};
use crate::codec::publish::Action;
use crate::codec::wildcard;
use crate::history::Replay;

/// What a resume from history did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// This many items were replayed (0: nothing was missed).
    Replayed(usize),
    /// History no longer holds the id: what was missed cannot be told.
    Gap,
    /// History is off.
    Off,
}

impl Resumed {
    /// The `Corepin-Resume` value telling the client what happened.
    pub fn header_value(self) -> Option<String> {
        match self {
            Resumed::Replayed(n) => Some(format!("replayed={n}")),
            Resumed::Gap => Some("gap".into()),
            Resumed::Off => None,
        }
    }
}

/// What a new hold does after [`Registry::resume_hold`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldResume {
    /// Hold on, telling the client this `Corepin-Resume` value, if any.
    Note(Option<String>),
    /// History does not cover what the client missed: ask the backend.
    Refetch,
}

/// What kind of hold a subscriber is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldKind {
    /// HTTP streaming: every `http-stream` content is appended.
    Stream,
    /// Long-poll: the first `http-response` completes it.
    Response,
    /// A WebSocket: every `ws-message` is sent as a frame.
    Ws,
}

/// How much one subscriber may have queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages queued (each costs an entry, whatever its size).
    pub messages: usize,
    /// Bytes queued while the subscriber's socket is full. A message is
    /// always taken into an empty queue, so one larger than this still
    /// reaches a subscriber that is keeping up.
    pub bytes: usize,
}

impl QueueLimits {
    /// For messages corepin itself must get through (timeouts, shutdown).
    pub const UNBOUNDED: QueueLimits = QueueLimits {
        messages: usize::MAX,
        bytes: usize::MAX,
    };
}

/// Why a subscriber was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its queue went over a limit.
    Queue,
    /// A write to it made no progress to completion within the deadline.
    Stalled,
}

/// Something for a subscriber's connection task to do.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Bytes to write as they are (already framed).
    Data(Bytes),
    /// End the stream cleanly.
    Close,
    /// Answer a long-poll with this published response.
    Response(Arc<Encoded>),
    /// Answer a long-poll with this published response's status and
    /// headers and this body (patched by `body-patch`, or rewritten by a
    /// filter, for this subscriber alone).
    ResponseBody(Arc<Encoded>, Bytes),
    /// The long-poll timed out.
    Timeout,
    /// Fetch the next link (or re-request): a `hint`, or the link timer.
    Refetch,
    /// Close a WebSocket with this code and reason.
    WsClose(u16, String),
    /// A published `refresh`: a WebSocket-over-HTTP session makes a
    /// request to its backend now.
    Refresh,
    /// A filter failed on a `debug` route's HTTP subscriber: a stream
    /// ends with this reason in its body, a long-poll answers 502 with it.
    Error(String),
}

impl Msg {
    /// The bytes this message holds in a queue.
    fn cost(&self) -> usize {
        match self {
            Msg::Data(b) => b.len(),
            Msg::Response(e) => e.response_head.len() + e.response_body.len(),
            Msg::ResponseBody(e, b) => e.response_head.len() + b.len(),
            Msg::WsClose(_, r) | Msg::Error(r) => r.len(),
            Msg::Close | Msg::Timeout | Msg::Refetch | Msg::Refresh => 0,
        }
    }
}

/// What a subscriber's filters need to know of one of its channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChanState {
    /// The channel as subscribed (with the route's prefix).
    pub channel: String,
    /// The channel as the backend named it (filters see this name).
    pub name: String,
    pub filters: Filters,
    /// The channel's current prev-id: the hold's, then each published
    /// item's id (as Pushpin's `prevIds`).
    pub prev_id: Option<String>,
}

/// At most this many items wait per channel while a stream's next link
/// is fetched (Pushpin's publish queue limit); more are dropped, and the
/// gap they leave is re-fetched in turn.
const REFETCH_HELD_MAX: usize = 100;

/// Holds back `list` when `sub` is re-fetching `channel` through its next
/// link (see `Sub::refetching`); true when it did.
fn hold_back(sub: &Sub, channel: &str, list: &[&Arc<Encoded>]) -> bool {
    let mut rare = sub.rare.borrow_mut();
    let Some(r) = rare.as_mut() else {
        return false;
    };
    let Some((_, held)) = r.refetching.iter_mut().find(|(c, _)| c == channel) else {
        return false;
    };
    let room = REFETCH_HELD_MAX.saturating_sub(held.len());
    held.extend(list.iter().take(room).map(|e| Arc::clone(e)));
    true
}

/// A subscriber's channels as the filters see them.
struct Chans<'a>(&'a [ChanState]);

impl Subscribed for Chans<'_> {
    fn prev_id(&self, channel: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|c| c.name == channel)
            .map(|c| c.prev_id.as_deref())
    }
    fn each(&self, f: &mut dyn FnMut(&str, Option<&str>)) {
        for c in self.0 {
            f(&c.name, c.prev_id.as_deref());
        }
    }
}

/// One delivery decided for one subscriber: the item, and its content
/// when the filters (or a body patch) made it this subscriber's own.
struct Piece<'a> {
    item: &'a Arc<Encoded>,
    own: Option<Bytes>,
}

/// Most queued messages handed to one gathered write.
pub const MAX_PARTS: usize = 64;

/// A close reason fits a control frame (123 bytes), cut at a character.
fn ws_reason(why: &str) -> String {
    let mut end = why.len().min(123);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    why[..end].to_string()
}

/// One held connection.
///
/// Its state is private: channels change through `Registry::set_channels`
/// (which keeps the index and the interest bits), timers through the
/// registry's setters (which re-time the sweep's set), so no caller can
/// leave one half-done.
pub struct Sub {
    id: u64,
    kind: HoldKind,
    /// Stream bodies are chunked (HTTP/1.1) or raw (HTTP/1.0).
    chunked: bool,
    /// On a `debug` route: a filter error ends the connection with its
    /// reason (Pushpin) rather than dropping the message quietly.
    debug: Cell<bool>,
    dropped: Cell<bool>,
    /// A write to the client is waiting for socket space.
    blocked: Cell<bool>,
    /// A held stream's socket slot in the core's ring while its task waits
    /// idle for a message (`NO_SLOT` otherwise): a fan-out may then send
    /// to it directly (`Registry::deliver`). Set and cleared by the
    /// stream's task (`conn::held`), cleared on unsubscribe.
    direct: Cell<u32>,
    /// Body bytes (as the access log counts them) sent directly since the
    /// stream's task last took them (`Sub::take_direct_bytes`).
    direct_bytes: Cell<u64>,
    channels: RefCell<Vec<String>>,
    /// Per channel (same order as `channels`): the bus's `joined` mark when
    /// the channel was added; only items routed after it are delivered.
    joined: RefCell<Vec<u64>>,
    queue: RefCell<VecDeque<Msg>>,
    /// Sum of the queued messages' `cost`.
    queued_bytes: Cell<usize>,
    waker: RefCell<Option<Waker>>,
    // Timing, checked by the core's sweep.
    last_write: Cell<Instant>,
    /// A long-poll's timeout.
    deadline: Cell<Option<Instant>>,
    /// What few subscribers use, boxed the first time one does: an idle
    /// stream without filters, ids, keep-alive or links carries 16 bytes
    /// of it rather than ~290 (PERFORMANCE.md, "Per-connection byte
    /// budget").
    rare: RefCell<Option<Box<Rare>>>,
}

/// A subscriber's rarely used state (see `Sub::rare`).
#[derive(Default)]
struct Rare {
    meta: Vec<(String, String)>,
    /// The channels' filters and prev-ids; empty when no channel has a
    /// filter (deliveries then share every encoding).
    chans: Vec<ChanState>,
    /// A long-poll's held response body (what `body-patch` patches).
    held_body: Bytes,
    /// Last id delivered per channel (sent back as `Grip-Last`).
    last_ids: Vec<(String, String)>,
    /// A stream's channels whose next link is being fetched, each with
    /// the items published to it meanwhile (at most `REFETCH_HELD_MAX`):
    /// none goes out before the link's answer, which then drops those
    /// that do not follow its prev-id (Pushpin's queue while updating).
    refetching: Vec<(String, Vec<Arc<Encoded>>)>,
    keep_alive: Option<KeepAlive>,
    /// The last keep-alive sent (at first: when the keep-alive was set).
    last_keep_alive: Option<Instant>,
    /// When a stream fetches its next link.
    link_at: Option<Instant>,
    /// A WebSocket's `send-delayed` message (a framed message) and when
    /// it is due.
    delayed: Option<(Bytes, Instant)>,
}

impl Sub {
    pub fn push(&self, msg: Msg, limits: QueueLimits, stats: &SubStats) {
        if self.dropped.get() {
            return;
        }
        let cost = msg.cost();
        let mut q = self.queue.borrow_mut();
        let was_empty = q.is_empty();
        let bytes = self.queued_bytes.get().saturating_add(cost);
        let over_bytes = self.blocked.get() && !was_empty && bytes > limits.bytes;
        if q.len() >= limits.messages || over_bytes {
            // A subscriber that cannot keep up is dropped alone.
            drop(q);
            self.drop_now(DropReason::Queue, stats);
            return;
        }
        q.push_back(msg);
        crate::uring::trace::mark(crate::uring::trace::Ev::Pushed, 1);
        self.queued_bytes.set(bytes);
        drop(q);
        // The connection task waits for a message only on an empty queue
        // (or watches for a drop while it writes).
        if was_empty {
            self.wake();
        }
    }

    /// Drops this subscriber: its queue is freed at once, its connection
    /// task sees `dropped()` and ends the connection.
    fn drop_now(&self, why: DropReason, stats: &SubStats) {
        if self.dropped.replace(true) {
            return;
        }
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
        let counter = match why {
            DropReason::Queue => &stats.drops,
            DropReason::Stalled => &stats.stalls,
        };
        counter.set(counter.get() + 1);
        self.wake();
    }

    /// Bytes queued (not counting a write in progress).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Marks whether a write to the client waits for socket space.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.set(blocked);
    }

    /// Wakes `waker` on the next push to an empty queue or on a drop
    /// (the connection task watches while it writes).
    pub fn watch(&self, waker: &Waker) {
        let mut w = self.waker.borrow_mut();
        if !w.as_ref().is_some_and(|old| old.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Next message, or registers `waker` for the next push.
    pub fn poll_msg(&self, waker: &Waker) -> Option<Msg> {
        let m = self.queue.borrow_mut().pop_front();
        match &m {
            Some(m) => self
                .queued_bytes
                .set(self.queued_bytes.get().saturating_sub(m.cost())),
            None => self.watch(waker),
        }
        m
    }

    /// Appends to `parts` the data messages queued right behind the one
    /// just taken (up to `max` more bytes, and `MAX_PARTS` parts with the
    /// one taken), so a backlog goes out in one gathered write. The shared
    /// bytes are moved, never copied.
    pub fn take_data_parts(&self, parts: &mut Vec<Bytes>, max: usize) {
        let mut q = self.queue.borrow_mut();
        let mut total: usize = parts.iter().map(Bytes::len).sum();
        while parts.len() + 1 < MAX_PARTS {
            let Some(Msg::Data(b)) = q.front() else { break };
            if total + b.len() > max {
                break;
            }
            total += b.len();
            self.queued_bytes
                .set(self.queued_bytes.get().saturating_sub(b.len()));
            if let Some(Msg::Data(b)) = q.pop_front() {
                parts.push(b);
            }
        }
    }

    pub fn dropped(&self) -> bool {
        self.dropped.get()
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn kind(&self) -> HoldKind {
        self.kind
    }

    /// Stream bodies are chunked (HTTP/1.1), not raw (HTTP/1.0).
    pub fn chunked(&self) -> bool {
        self.chunked
    }

    /// The channels it is subscribed to (a copy).
    pub fn channels(&self) -> Vec<String> {
        self.channels.borrow().clone()
    }

    /// Its rare state, boxed now if it has none yet.
    fn rare_mut(&self) -> std::cell::RefMut<'_, Rare> {
        std::cell::RefMut::map(self.rare.borrow_mut(), |r| &mut **r.get_or_insert_default())
    }

    /// Its rare state, if it has any.
    fn rare(&self) -> std::cell::Ref<'_, Option<Box<Rare>>> {
        self.rare.borrow()
    }

    /// Whether some channel has a filter or a prev-id.
    fn has_chans(&self) -> bool {
        self.rare().as_ref().is_some_and(|r| !r.chans.is_empty())
    }

    /// Its channels' filters and prev-ids (empty when none has either).
    pub fn chans(&self) -> std::cell::Ref<'_, [ChanState]> {
        std::cell::Ref::map(self.rare(), |r| {
            r.as_ref().map_or(&[][..], |r| &r.chans[..])
        })
    }

    /// Replaces its meta (what filters read).
    pub fn set_meta(&self, meta: Vec<(String, String)>) {
        if !meta.is_empty() || self.rare().is_some() {
            self.rare_mut().meta = meta;
        }
    }

    /// Changes its meta in place (`set-meta`).
    pub fn edit_meta<R>(&self, f: impl FnOnce(&mut Vec<(String, String)>) -> R) -> R {
        f(&mut self.rare_mut().meta)
    }

    /// A long-poll's held body (what `body-patch` patches).
    pub fn set_held_body(&self, body: Bytes) {
        if !body.is_empty() || self.rare().is_some() {
            self.rare_mut().held_body = body;
        }
    }

    /// On a `debug` route: a filter error ends the connection with its
    /// reason rather than dropping the message quietly.
    pub fn set_debug(&self, on: bool) {
        self.debug.set(on);
    }

    /// The last id delivered per channel (sent back as `Grip-Last`).
    pub fn last_ids(&self) -> std::cell::Ref<'_, [(String, String)]> {
        std::cell::Ref::map(self.rare(), |r| {
            r.as_ref().map_or(&[][..], |r| &r.last_ids[..])
        })
    }

    /// The bus's `joined` mark of `channel` (0, everything, for a channel
    /// it does not hold).
    fn joined_at(&self, channel: &str) -> u64 {
        let channels = self.channels.borrow();
        channels
            .iter()
            .position(|c| c == channel)
            .and_then(|i| self.joined.borrow().get(i).copied())
            .unwrap_or(0)
    }

    pub fn wrote(&self, now: Instant) {
        self.last_write.set(now);
    }

    /// A held stream's task waits idle for a message on the plain socket
    /// at `slot` in this core's ring (`Some`), so a fan-out may send a
    /// message to it directly, or no longer (`None`). Only a task that
    /// owns the socket sets it, and clears it before it writes or ends.
    pub fn set_direct(&self, slot: Option<u32>) {
        self.direct.set(slot.unwrap_or(NO_SLOT));
    }

    /// The body bytes sent directly since the last call (for the stream's
    /// access log), and forgets them.
    pub fn take_direct_bytes(&self) -> u64 {
        self.direct_bytes.replace(0)
    }

    /// Sends `msg` straight to the socket when this is a held stream
    /// whose task waits idle with nothing queued, and the ring finds the
    /// socket idle too (nothing in flight, no error): what the task would
    /// have done on its wake, without the wake. Gives `msg` back otherwise
    /// (to be queued). Order holds: a direct send needs an empty queue and
    /// an idle socket, so it never passes a message before it.
    fn send_direct(&self, msg: Msg, ring: &crate::uring::Uring, now: Instant) -> Option<Msg> {
        let slot = self.direct.get();
        if slot == NO_SLOT || self.dropped.get() || self.blocked.get() {
            return Some(msg);
        }
        let Msg::Data(b) = msg else {
            return Some(msg);
        };
        if !self.queue.borrow().is_empty() {
            return Some(Msg::Data(b));
        }
        let n = if self.chunked {
            crate::codec::chunked::payload_len(&b)
        } else {
            b.len()
        };
        match ring.send_if_idle(slot, b) {
            Ok(()) => {
                self.direct_bytes.set(self.direct_bytes.get() + n as u64);
                self.last_write.set(now);
                None
            }
            Err(b) => Some(Msg::Data(b)),
        }
    }
}

/// `Sub::direct` when the stream cannot be sent to directly.
const NO_SLOT: u32 = u32::MAX;

/// A delivery pass sends to idle streams directly only if the core's
/// previous pass ended at least this long before. Publishes that come
/// closer together are queued instead: each stream's task, run after
/// several passes on a busy core, then takes what piled up in one
/// gathered send, where direct sends cost the kernel a TCP send per
/// message (4,000 streams × 20 publishes in lockstep, always direct:
/// 3–4× the CPU per delivery). Below ~20 publishes a second per core the
/// queue gathers little anyway: a pass to thousands of streams and their
/// tasks' sends take tens of ms (PERFORMANCE.md, "Fan-out sent from the
/// delivery loop").
const DIRECT_QUIET: Duration = Duration::from_millis(50);

/// Per-core delivery counters.
#[derive(Default)]
pub struct SubStats {
    pub deliveries: Cell<u64>,
    /// Subscribers dropped for a queue over its limits.
    pub drops: Cell<u64>,
    /// Subscribers dropped for a write stalled past the deadline.
    pub stalls: Cell<u64>,
    /// Messages not delivered to a subscriber because one of its filters
    /// failed (a missing meta, a bad directive).
    pub filter_errors: Cell<u64>,
}

/// Registration settings for a new subscriber.
pub struct SubSpec {
    pub kind: HoldKind,
    pub chunked: bool,
    pub channels: Vec<String>,
    pub meta: Vec<(String, String)>,
    pub keep_alive: Option<KeepAlive>,
    pub timeout: Option<Duration>,
    pub link_timeout: Option<Duration>,
}

/// A subscriber registered for as long as this lives. Dropping it
/// unsubscribes, so a hold that ends any way (its normal end, an early
/// return, a dropped future, a connection task's caught panic) leaves no
/// subscriber behind to be fanned out to.
pub struct Held<'a> {
    /// `None` once `into_sub` handed the subscription on.
    registry: Option<&'a Registry>,
    sub: Rc<Sub>,
}

impl Held<'_> {
    /// The subscriber, still subscribed: whoever takes it unsubscribes it
    /// (`Registry::unsubscribe`) when done, as a held stream handed off
    /// from its request's futures does (`conn::grip::HeldStream`).
    pub fn into_sub(mut self) -> Rc<Sub> {
        self.registry = None;
        self.sub.clone()
    }
}

impl std::ops::Deref for Held<'_> {
    type Target = Rc<Sub>;
    fn deref(&self) -> &Rc<Sub> {
        &self.sub
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(registry) = self.registry {
            registry.unsubscribe(&self.sub);
        }
    }
}

/// A core's subscription index.
pub struct Registry {
    next: Cell<u64>,
    channels: RefCell<HashMap<String, HashMap<u64, Rc<Sub>>>>,
    /// Prefix subscriptions (see `codec::wildcard`), by their prefix.
    prefixes: RefCell<HashMap<String, HashMap<u64, Rc<Sub>>>>,
    /// How many of `prefixes` have each length, so a publish looks up only
    /// prefixes of its channel that some subscription has.
    prefix_lens: RefCell<std::collections::BTreeMap<usize, usize>>,
    timed: RefCell<HashMap<u64, Rc<Sub>>>,
    /// The bus, whose interest table this core keeps current, and this
    /// core's index in it.
    bus: Arc<Bus>,
    core: usize,
    /// Channels with subscribers here, per interest slot: the core's bit in
    /// the slot is set while its count is above zero.
    slot_channels: RefCell<Vec<u32>>,
    pub limits: QueueLimits,
    pub stats: SubStats,
    /// Held connections by kind: streams, long-polls, WebSockets.
    held: [Cell<u64>; 3],
    /// A reused list of one channel's subscribers during delivery.
    scratch: Cell<Vec<Rc<Sub>>>,
    /// When the last delivery pass ended: a pass that starts within
    /// `DIRECT_QUIET` of it queues rather than sends directly.
    last_pass: Cell<Option<Instant>>,
    /// The bus's `recover` count this core has acted on.
    recovered: Cell<u64>,
    /// The newest `joined` mark given to a channel here: a drain whose
    /// items were all routed after it needs no per-subscriber cut.
    newest_join: Cell<u64>,
    /// Some channel's subscriber count changed since `channel_counts`.
    counts_changed: Cell<bool>,
    /// Pushpin's `update_on_first_subscription` (see `first_subscriber`).
    update_on_first: Cell<bool>,
    /// Channels that got their first subscriber here, and when their held
    /// HTTP subscribers re-fetch.
    firsts: RefCell<Vec<(Instant, String)>>,
    /// Channels whose last subscriber, a long-poll, left: until when a new
    /// subscriber is not a first one (Pushpin lingers a response-mode
    /// subscription 60 s, as a client long-polls again).
    lingering: RefCell<HashMap<String, Instant>>,
}

/// How long after a channel's first subscription its held HTTP subscribers
/// re-fetch (Pushpin's `SUBSCRIBED_DELAY`).
const FIRST_SUBSCRIPTION_DELAY: Duration = Duration::from_secs(1);

/// How long a channel whose last subscriber was a long-poll still counts
/// as subscribed (Pushpin's `subscription_linger`).
const LONG_POLL_LINGER: Duration = Duration::from_secs(60);

/// A subscription change as the ZeroMQ stats name it (Pushpin's modes).
fn sub_event(kind: HoldKind, channel: &str, delta: i32) -> crate::bus::SubEvent {
    crate::bus::SubEvent {
        mode: match kind {
            HoldKind::Stream => "stream",
            HoldKind::Response => "response",
            HoldKind::Ws => "ws",
        },
        channel: channel.to_string(),
        delta,
    }
}

fn kind_index(k: HoldKind) -> usize {
    match k {
        HoldKind::Stream => 0,
        HoldKind::Response => 1,
        HoldKind::Ws => 2,
    }
}

impl Registry {
    pub fn new(limits: QueueLimits, bus: Arc<Bus>, core: usize) -> Self {
        Registry {
            next: Cell::new(1),
            channels: RefCell::new(HashMap::new()),
            prefixes: RefCell::new(HashMap::new()),
            prefix_lens: RefCell::new(std::collections::BTreeMap::new()),
            timed: RefCell::new(HashMap::new()),
            bus,
            core,
            slot_channels: RefCell::new(vec![0; INTEREST_SLOTS]),
            limits,
            stats: SubStats::default(),
            held: Default::default(),
            scratch: Cell::new(Vec::new()),
            last_pass: Cell::new(None),
            recovered: Cell::new(0),
            newest_join: Cell::new(0),
            counts_changed: Cell::new(false),
            update_on_first: Cell::new(false),
            firsts: RefCell::new(Vec::new()),
            lingering: RefCell::new(HashMap::new()),
        }
    }

    /// Turns Pushpin's `update_on_first_subscription` on or off.
    pub fn set_update_on_first_subscription(&self, on: bool) {
        self.update_on_first.set(on);
    }

    /// `channel` has its first subscriber here (any kind): unless a long-poll
    /// left it within the linger time, its held HTTP subscribers re-fetch
    /// a second from now (Pushpin's `update_on_first_subscription`, which
    /// covers publishes lost while a subscription travels to publishers).
    fn first_subscriber(&self, channel: &str, now: Instant) {
        if !self.update_on_first.get() {
            return;
        }
        if let Some(until) = self.lingering.borrow_mut().remove(channel) {
            if until > now {
                return;
            }
        }
        self.firsts
            .borrow_mut()
            .push((now + FIRST_SUBSCRIPTION_DELAY, channel.to_string()));
    }

    /// The re-fetches `first_subscriber` scheduled that are due.
    fn update_first_subscriptions(&self, now: Instant) {
        let due: Vec<String> = {
            let mut firsts = self.firsts.borrow_mut();
            if firsts.first().is_none_or(|(at, _)| *at > now) {
                return;
            }
            let n = firsts.iter().take_while(|(at, _)| *at <= now).count();
            firsts.drain(..n).map(|(_, c)| c).collect()
        };
        for channel in due {
            let subs: Vec<Rc<Sub>> = match self.channels.borrow().get(&channel) {
                Some(m) => m
                    .values()
                    .filter(|s| s.kind != HoldKind::Ws)
                    .cloned()
                    .collect(),
                None => continue,
            };
            for sub in subs {
                sub.push(Msg::Refetch, QueueLimits::UNBOUNDED, &self.stats);
            }
        }
        self.lingering.borrow_mut().retain(|_, until| *until > now);
    }

    /// Held connections of `kind` on this core.
    pub fn held(&self, kind: HoldKind) -> u64 {
        self.held[kind_index(kind)].get()
    }

    /// Registers a subscriber; it stays registered until the returned
    /// guard is dropped.
    pub fn subscribe(&self, spec: SubSpec) -> Held<'_> {
        let id = self.next.get();
        self.next.set(id + 1);
        let now = Instant::now();
        let sub = Rc::new(Sub {
            id,
            kind: spec.kind,
            chunked: spec.chunked,
            debug: Cell::new(false),
            dropped: Cell::new(false),
            blocked: Cell::new(false),
            direct: Cell::new(NO_SLOT),
            direct_bytes: Cell::new(0),
            channels: RefCell::new(Vec::new()),
            joined: RefCell::new(Vec::new()),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            waker: RefCell::new(None),
            last_write: Cell::new(now),
            deadline: Cell::new(spec.timeout.map(|t| now + t)),
            rare: RefCell::new(None),
        });
        sub.set_meta(spec.meta);
        if spec.keep_alive.is_some() || spec.link_timeout.is_some() {
            let mut r = sub.rare_mut();
            r.last_keep_alive = spec.keep_alive.is_some().then_some(now);
            r.keep_alive = spec.keep_alive;
            r.link_at = spec.link_timeout.map(|t| now + t);
        }
        self.set_channels(&sub, spec.channels);
        self.retime(&sub);
        let h = &self.held[kind_index(sub.kind)];
        h.set(h.get() + 1);
        Held {
            registry: Some(self),
            sub,
        }
    }

    /// Replaces a subscriber's channels (a next link may change them).
    ///
    /// New channels are in the map, and this core's interest bit set,
    /// before this returns, so a publish that happens after it reaches the
    /// subscriber (see `bus::Interest`). Channels are added before old ones
    /// are removed, so a channel kept across the change never loses its bit
    /// in between.
    pub fn set_channels(&self, sub: &Rc<Sub>, channels: Vec<String>) {
        let mut exact = self.channels.borrow_mut();
        let mut prefixed = self.prefixes.borrow_mut();
        let watch = self.bus.watch();
        // Stats hear of a subscription only once its join mark is set
        // (below): a publisher told of the subscription by the stats socket
        // and publishing at once must reach it.
        let mut heard = Vec::new();
        for ch in &channels {
            // A prefix subscription is indexed by its prefix, and is no
            // channel of Pushpin's stats.
            let (map, name, watch) = match wildcard::as_prefix(ch) {
                Some(p) => (&mut *prefixed, p, None),
                None => (&mut *exact, ch.as_str(), watch),
            };
            let subs = match map.get_mut(name) {
                Some(m) => m,
                None => {
                    self.channel_appeared(ch);
                    if name.len() == ch.len() {
                        // A channel, not a prefix (Pushpin has none).
                        self.first_subscriber(ch, Instant::now());
                    }
                    map.entry(name.to_string()).or_default()
                }
            };
            if subs.insert(sub.id, sub.clone()).is_none() {
                self.counts_changed.set(true);
                if watch.is_some() {
                    heard.push(sub_event(sub.kind, ch, 1));
                }
            }
        }
        for ch in sub.channels.borrow().iter() {
            if channels.contains(ch) {
                continue;
            }
            let (map, name, watch) = match wildcard::as_prefix(ch) {
                Some(p) => (&mut *prefixed, p, None),
                None => (&mut *exact, ch.as_str(), watch),
            };
            if let Some(m) = map.get_mut(name) {
                if m.remove(&sub.id).is_some() {
                    self.counts_changed.set(true);
                    if watch.is_some() {
                        heard.push(sub_event(sub.kind, ch, -1));
                    }
                }
                if m.is_empty() {
                    map.remove(name);
                    self.channel_gone(ch);
                    if sub.kind == HoldKind::Response
                        && name.len() == ch.len()
                        && self.update_on_first.get()
                    {
                        self.lingering
                            .borrow_mut()
                            .insert(ch.clone(), Instant::now() + LONG_POLL_LINGER);
                    }
                }
            }
        }
        drop((exact, prefixed));
        // Read after the channels are in the map and the interest bits
        // set (see `Bus::joined`); a channel kept keeps its mark.
        let now = self.bus.joined();
        self.newest_join.set(self.newest_join.get().max(now));
        let joined = {
            let (old, marks) = (sub.channels.borrow(), sub.joined.borrow());
            channels
                .iter()
                .map(|ch| match old.iter().position(|o| o == ch) {
                    Some(i) => marks.get(i).copied().unwrap_or(now),
                    None => now,
                })
                .collect()
        };
        *sub.joined.borrow_mut() = joined;
        *sub.channels.borrow_mut() = channels;
        if let Some(w) = watch {
            for e in heard {
                w.send(e);
            }
        }
    }

    /// The first subscriber on channel key `ch` here: its prefix length is
    /// counted (for prefix keys), then its interest bit set.
    fn channel_appeared(&self, ch: &str) {
        if let Some(p) = wildcard::as_prefix(ch) {
            *self.prefix_lens.borrow_mut().entry(p.len()).or_default() += 1;
            self.bus.prefixes().add(p.len());
        }
        let slot = Interest::key_slot(ch);
        let mut counts = self.slot_channels.borrow_mut();
        counts[slot] += 1;
        if counts[slot] == 1 {
            self.bus.interest().set(slot, self.core);
        }
    }

    /// The last subscriber on channel key `ch` here is gone: the interest
    /// bit is cleared, then a prefix's length uncounted.
    fn channel_gone(&self, ch: &str) {
        let slot = Interest::key_slot(ch);
        {
            let mut counts = self.slot_channels.borrow_mut();
            counts[slot] = counts[slot].saturating_sub(1);
            if counts[slot] == 0 {
                self.bus.interest().clear(slot, self.core);
            }
        }
        if let Some(p) = wildcard::as_prefix(ch) {
            let mut lens = self.prefix_lens.borrow_mut();
            if let Some(n) = lens.get_mut(&p.len()) {
                *n -= 1;
                if *n == 0 {
                    lens.remove(&p.len());
                }
            }
            self.bus.prefixes().remove(p.len());
        }
    }

    /// Sets (or clears) a subscriber's keep-alive.
    pub fn set_keep_alive(&self, sub: &Rc<Sub>, ka: Option<KeepAlive>) {
        if ka.is_some() || sub.rare().is_some() {
            let mut r = sub.rare_mut();
            if ka.is_some() && r.last_keep_alive.is_none() {
                r.last_keep_alive = Some(Instant::now());
            }
            r.keep_alive = ka;
        }
        self.retime(sub);
    }

    /// Sets (or clears) when a stream fetches its next link.
    pub fn set_link_at(&self, sub: &Rc<Sub>, at: Option<Instant>) {
        if at.is_some() || sub.rare().is_some() {
            sub.rare_mut().link_at = at;
        }
        self.retime(sub);
    }

    /// Puts the subscriber in (or out of) the sweep's set.
    fn retime(&self, sub: &Rc<Sub>) {
        let timed = sub.deadline.get().is_some()
            || sub.rare().as_ref().is_some_and(|r| {
                r.keep_alive.is_some() || r.delayed.is_some() || r.link_at.is_some()
            });
        let mut t = self.timed.borrow_mut();
        if timed {
            t.insert(sub.id, sub.clone());
        } else {
            t.remove(&sub.id);
        }
    }

    /// `send-delayed`: `frame` goes to the WebSocket after `after`; one
    /// still pending is sent first (Pushpin keeps one delayed message).
    pub fn send_delayed(&self, sub: &Rc<Sub>, frame: Bytes, after: Duration) {
        self.flush_delayed(sub);
        sub.rare_mut().delayed = Some((frame, Instant::now() + after));
        self.retime(sub);
    }

    /// `flush-delayed`: the pending delayed message goes now.
    pub fn flush_delayed(&self, sub: &Rc<Sub>) {
        let pending = sub
            .rare
            .borrow_mut()
            .as_mut()
            .and_then(|r| r.delayed.take());
        if let Some((frame, _)) = pending {
            // Like any message corepin must get through: not dropped for
            // a full queue (Pushpin queues it, acknowledged).
            sub.push(Msg::Data(frame), QueueLimits::UNBOUNDED, &self.stats);
        }
        self.retime(sub);
    }

    /// Removes a subscriber (once, when its `Held` guard drops, or the
    /// `HeldStream` it was handed to).
    pub fn unsubscribe(&self, sub: &Rc<Sub>) {
        sub.set_direct(None);
        self.set_channels(sub, Vec::new());
        self.timed.borrow_mut().remove(&sub.id);
        let h = &self.held[kind_index(sub.kind)];
        h.set(h.get().saturating_sub(1));
    }

    /// A write to `sub`'s client found the socket full: from now on its
    /// queue is held to the byte limit, and one already over it is
    /// dropped (returns true).
    pub fn blocked(&self, sub: &Sub) -> bool {
        sub.set_blocked(true);
        if !sub.queue.borrow().is_empty() && sub.queued_bytes() > self.limits.bytes {
            sub.drop_now(DropReason::Queue, &self.stats);
            return true;
        }
        false
    }

    /// A write to `sub`'s client made no progress to completion within
    /// the deadline: it is dropped.
    pub fn stalled(&self, sub: &Sub) {
        sub.drop_now(DropReason::Stalled, &self.stats);
    }

    /// The last id published on `channel` (kept by the bus's sequencer:
    /// this core only hears of channels it has subscribers on).
    pub fn last_id(&self, channel: &str) -> Option<String> {
        self.bus.last_id(channel)
    }

    /// Whether channels keep history (so a hold may resume from it).
    pub fn history_on(&self) -> bool {
        self.bus.history_on()
    }

    /// Replays to `sub` what `channel` published after the item with id
    /// `last` and before `sub` subscribed (what came after reaches it
    /// live), through its filters as any delivery. Exactly once: history
    /// gives the items routed up to the subscriber's `joined` mark, the
    /// live path those after it.
    pub fn resume(&self, sub: &Rc<Sub>, channel: &str, last: &str) -> Resumed {
        // History is kept per channel: a prefix subscription has no one
        // sequence of ids to resume after.
        if wildcard::as_prefix(channel).is_some() {
            return Resumed::Gap;
        }
        match self.bus.replay(channel, last, sub.joined_at(channel)) {
            Replay::Items(items) => {
                let list: Vec<&Arc<Encoded>> = items.iter().collect();
                if !list.is_empty() {
                    self.hand_filtered(sub, channel, &list, &mut false);
                }
                Resumed::Replayed(items.len())
            }
            Replay::Gap => Resumed::Gap,
            Replay::Off => Resumed::Off,
        }
    }

    /// Resumes a new hold from history, before its head is written:
    ///
    /// - a stream or WebSocket on one channel whose client gave
    ///   `last_event_id` (SSE's `Last-Event-ID`; for a WebSocket the same
    ///   header on its upgrade request, or `?last-event-id=`) is replayed
    ///   what it missed; the answer is the
    ///   `Corepin-Resume` value to tell the client (`replayed=N`, `gap`,
    ///   or `invalid-id` for an id that is not one);
    /// - a long-poll whose `prev-id`s are `behind` the channels' last ids
    ///   is answered from history when history holds its next response;
    ///   `Refetch` when it does not (the caller re-requests the backend,
    ///   as Pushpin does);
    /// - a stream whose `prev-id`s are `behind` is replayed what it missed
    ///   (`replayed=N`); `Refetch` when history does not hold a prev-id
    ///   (the caller has the stream fetch its next link).
    pub fn resume_hold(
        &self,
        sub: &Rc<Sub>,
        last_event_id: Option<&[u8]>,
        behind: &[(String, String)],
    ) -> HoldResume {
        if !self.history_on() {
            return if behind.is_empty() {
                HoldResume::Note(None)
            } else {
                HoldResume::Refetch
            };
        }
        match sub.kind {
            // A stream whose `prev-id`s are behind: what it missed is
            // replayed in order; a gap is the backend's (its next link).
            HoldKind::Stream if !behind.is_empty() => {
                let mut n = 0;
                for (channel, prev) in behind {
                    match self.resume(sub, channel, prev) {
                        Resumed::Replayed(k) => n += k,
                        _ => return HoldResume::Refetch,
                    }
                }
                HoldResume::Note(Some(format!("replayed={n}")))
            }
            HoldKind::Stream | HoldKind::Ws => {
                let channels = sub.channels.borrow().clone();
                let (Some(raw), [channel]) = (last_event_id, channels.as_slice()) else {
                    return HoldResume::Note(None);
                };
                HoldResume::Note(match crate::history::parse_resume_id(raw) {
                    Ok(id) => self.resume(sub, channel, id).header_value(),
                    Err(_) => Some("invalid-id".into()),
                })
            }
            HoldKind::Response => {
                for (channel, prev) in behind {
                    if self.resume(sub, channel, prev) == Resumed::Gap {
                        return HoldResume::Refetch;
                    }
                }
                // Replayed items with no response for it: the backend
                // decides.
                if !behind.is_empty() && sub.queue.borrow().is_empty() {
                    return HoldResume::Refetch;
                }
                HoldResume::Note(None)
            }
        }
    }

    /// Asks one WebSocket subscriber's session to refresh (a request to its
    /// backend now); returns 1.
    pub fn refetch(&self, sub: &Sub) -> usize {
        sub.push(Msg::Refetch, QueueLimits::UNBOUNDED, &self.stats);
        1
    }

    /// Asks every WebSocket subscriber on `channel` here to refresh;
    /// returns how many were asked.
    pub fn refresh_channel(&self, channel: &str) -> usize {
        let subs: Vec<Rc<Sub>> = match self.channels.borrow().get(channel) {
            Some(m) => m
                .values()
                .filter(|s| s.kind == HoldKind::Ws)
                .cloned()
                .collect(),
            None => return 0,
        };
        for sub in &subs {
            self.refetch(sub);
        }
        subs.len()
    }

    /// Subscribers per channel here, when they changed since the last
    /// call (for the board's channel counts).
    pub fn channel_counts(&self) -> Option<HashMap<String, u64>> {
        if !self.counts_changed.replace(false) {
            return None;
        }
        let map = self.channels.borrow();
        Some(
            map.iter()
                .map(|(c, s)| (c.clone(), s.len() as u64))
                .collect(),
        )
    }

    /// Subscriber count (all channels and prefixes of a subscriber count
    /// once each).
    pub fn subscriptions(&self) -> usize {
        let n: usize = self.channels.borrow().values().map(HashMap::len).sum();
        n + self
            .prefixes
            .borrow()
            .values()
            .map(HashMap::len)
            .sum::<usize>()
    }

    /// Every subscriber here, once (on however many channels).
    fn all_subs(&self) -> HashMap<u64, Rc<Sub>> {
        let mut subs: HashMap<u64, Rc<Sub>> = HashMap::new();
        for map in [&self.channels, &self.prefixes] {
            for m in map.borrow().values() {
                for s in m.values() {
                    subs.entry(s.id).or_insert_with(|| s.clone());
                }
            }
        }
        subs
    }

    /// Delivers the next slice of this core's inbox (at most
    /// `DRAIN_SLICE` items), in order; returns whether the slice was full
    /// (more may wait: the delivery task lets other tasks run, then calls
    /// again).
    ///
    /// The items are taken in runs of one channel (`channel_runs`). A run
    /// reaches the subscribers of its channel, then those of each prefix
    /// of it held here, longest first (`prefix_keys`); a subscriber reached
    /// more than one way gets the items once, through the first (its
    /// filters and join mark are that subscription's). Subscribers that
    /// decide per item (filters, late joiners: `hand_apart`) are served
    /// apart; the others share one `Plan`: the run's content joined once
    /// per wire form, the same `Bytes` queued on every one of them.
    pub fn deliver(&self, inbox: &CoreInbox) -> bool {
        let mut items = Vec::new();
        let n = inbox.take(DRAIN_SLICE, &mut items);
        // The subscribers are copied out (into a reused list) so that
        // handing them messages may touch the registry.
        let mut subs = self.scratch.take();
        // On the io_uring data path an idle held stream is sent to from
        // here (`Sub::send_direct`; `now` is its write time), unless
        // publishes come back to back: then the queue lets each stream's
        // task gather what piles up into one send (PERFORMANCE.md, "Fan-out
        // sent from the delivery loop").
        let now = Instant::now();
        let quiet = self
            .last_pass
            .get()
            .is_none_or(|t| now.saturating_duration_since(t) >= DIRECT_QUIET);
        let ring = crate::uring::current().filter(|_| quiet);
        let prefixes_held = !self.prefix_lens.borrow().is_empty();
        for run in channel_runs(&items, prefixes_held) {
            let ch = run[0].item.channel.as_str();
            let prefixes = self.prefix_keys(ch);
            let mut seen = (!prefixes.is_empty()).then(HashSet::new);
            for key in std::iter::once(ch).chain(prefixes.iter().map(String::as_str)) {
                self.subscribers(key, seen.as_mut(), &mut subs);
                self.hand_apart(key, &run, &mut subs);
                if !subs.is_empty() {
                    let plan = Plan::new(&run, Needs::of(&subs));
                    for sub in &subs {
                        for msg in plan.messages(sub) {
                            self.hand(sub, msg, ring.as_ref(), now);
                        }
                        self.delivered(sub, key, plan.delivered(sub), plan.last_id.as_deref());
                    }
                }
                subs.clear();
            }
        }
        self.scratch.set(subs);
        self.last_pass.set(Some(Instant::now()));
        n == DRAIN_SLICE
    }

    /// Hands `msg` to `sub`: sent straight to its socket when it can be
    /// (`Sub::send_direct`, on the ring), else queued (waking its task).
    fn hand(&self, sub: &Sub, msg: Msg, ring: Option<&crate::uring::Uring>, now: Instant) {
        let msg = match ring {
            Some(ring) => match sub.send_direct(msg, ring, now) {
                Some(m) => m,
                None => return,
            },
            None => msg,
        };
        sub.push(msg, self.limits, &self.stats);
    }

    /// The keys of the prefix subscriptions held here that `ch` falls
    /// under, longest first: at most one look-up per prefix length held.
    fn prefix_keys(&self, ch: &str) -> Vec<String> {
        let lens = self.prefix_lens.borrow();
        if lens.is_empty() {
            return Vec::new();
        }
        let prefixes = self.prefixes.borrow();
        lens.range(..=ch.len())
            .rev()
            .map(|(&len, _)| len)
            .filter(|&len| ch.is_char_boundary(len) && prefixes.contains_key(&ch[..len]))
            .map(|len| wildcard::key(&ch[..len]))
            .collect()
    }

    /// Adds to `out` the subscribers of one key (a channel, or a prefix's
    /// key) not already in `seen`.
    fn subscribers(&self, key: &str, seen: Option<&mut HashSet<u64>>, out: &mut Vec<Rc<Sub>>) {
        let (map, name) = match wildcard::as_prefix(key) {
            Some(p) => (self.prefixes.borrow(), p),
            None => (self.channels.borrow(), key),
        };
        let Some(m) = map.get(name) else { return };
        match seen {
            None => out.extend(m.values().cloned()),
            Some(seen) => out.extend(m.values().filter(|s| seen.insert(s.id)).cloned()),
        }
    }

    /// Serves, and takes out of `subs`, the subscribers of `key` that
    /// cannot share the run's plan: one that joined after some of the
    /// items were routed gets only those routed after it (see
    /// `Bus::joined`); one with filters or prev-ids, or any subscriber
    /// when an item decides per subscriber (`content-filters`,
    /// `body-patch`), is handed its items one by one.
    fn hand_apart(&self, key: &str, run: &[&Arc<Encoded>], subs: &mut Vec<Rc<Sub>>) {
        let first = run.iter().map(|e| e.seq()).min().unwrap_or(0);
        let none_late = first > self.newest_join.get();
        let per_item = run.iter().any(|e| e.item.per_subscriber());
        if none_late && !per_item && subs.iter().all(|s| !s.has_chans()) {
            return;
        }
        let mut logged = false;
        subs.retain(|sub| {
            let mark = sub.joined_at(key);
            if !none_late && mark >= first {
                let after: Vec<&Arc<Encoded>> =
                    run.iter().copied().filter(|e| e.seq() > mark).collect();
                if !after.is_empty() {
                    self.hand_filtered(sub, key, &after, &mut logged);
                }
                return false;
            }
            if per_item || sub.has_chans() {
                self.hand_filtered(sub, key, run, &mut logged);
                return false;
            }
            true
        });
    }

    /// Counts `n` deliveries to `sub` (unless it was dropped) and notes
    /// `last_id` as the last id it got on `channel` (its `Grip-Last`; a
    /// prefix's items have no one sequence of ids).
    fn delivered(&self, sub: &Sub, channel: &str, n: u64, last_id: Option<&str>) {
        if !sub.dropped() {
            let d = &self.stats.deliveries;
            d.set(d.get() + n);
        }
        let Some(id) = last_id.filter(|_| wildcard::as_prefix(channel).is_none()) else {
            return;
        };
        let mut rare = sub.rare_mut();
        let ids = &mut rare.last_ids;
        match ids.iter_mut().find(|(c, _)| c == channel) {
            Some(slot) => id.clone_into(&mut slot.1),
            None => ids.push((channel.to_string(), id.to_string())),
        }
    }

    /// Delivers `list` to one subscriber whose filters (or the items'
    /// `content-filters` or `body-patch`) decide per subscriber. Content
    /// nobody rewrote is still the shared encoding.
    fn hand_filtered(
        &self,
        sub: &Rc<Sub>,
        channel: &str,
        list: &[&Arc<Encoded>],
        logged: &mut bool,
    ) {
        if sub.kind == HoldKind::Stream && hold_back(sub, channel, list) {
            return;
        }
        let mut pieces: Vec<Piece> = Vec::with_capacity(list.len());
        let mut gap = false;
        let mut taken = 0;
        for e in list {
            // An HTTP subscriber that gave a prev-id for this channel
            // follows the channel's ids: an item that does not follow on
            // means it missed something, and it re-fetches from the
            // backend (a stream its next link, a long-poll its request).
            if sub.kind != HoldKind::Ws {
                let rare = sub.rare();
                let chans = rare.as_ref().map_or(&[][..], |r| &r.chans[..]);
                if let Some(c) = chans.iter().find(|c| c.channel == channel) {
                    if c.prev_id.is_some() && e.item.prev_id != c.prev_id {
                        // The prev-id stays the last id that followed on:
                        // it is the retry's or the next link's
                        // `Grip-Last` (Pushpin). A stream holds back this
                        // item and what follows until the link answers.
                        gap = true;
                        break;
                    }
                }
            }
            taken += 1;
            match self.judge(sub, channel, e) {
                Ok(Some(own)) => pieces.push(Piece { item: e, own }),
                Ok(None) => {}
                Err(err) if sub.debug.get() => {
                    // A `debug` route's subscriber is told, and ends
                    // (Pushpin's session error): nothing after it.
                    let n = &self.stats.filter_errors;
                    n.set(n.get() + 1);
                    let why = format!("filter error: {err}");
                    self.hand_pieces(sub, channel, &pieces, &list[..taken]);
                    let msg = match sub.kind {
                        HoldKind::Ws => Msg::WsClose(1011, ws_reason(&why)),
                        _ => Msg::Error(why),
                    };
                    sub.push(msg, self.limits, &self.stats);
                    return;
                }
                Err(err) => {
                    let n = &self.stats.filter_errors;
                    n.set(n.get() + 1);
                    if !*logged {
                        *logged = true;
                        crate::warn!(
                            "channel {}: a message was not delivered to a subscriber: {err}",
                            wildcard::display(channel).escape_debug()
                        );
                    }
                }
            }
            // The channel's prev-id follows every item, delivered or not
            // (Pushpin's processItem).
            if let Some(id) = &e.item.id {
                if let Some(r) = sub.rare.borrow_mut().as_mut() {
                    if let Some(c) = r.chans.iter_mut().find(|c| c.channel == channel) {
                        c.prev_id = Some(id.clone());
                    }
                }
            }
        }
        self.hand_pieces(sub, channel, &pieces, &list[..taken]);
        if gap {
            if sub.kind == HoldKind::Stream {
                let held = list[taken..].iter().take(REFETCH_HELD_MAX);
                let held = held.map(|e| Arc::clone(e)).collect();
                sub.rare_mut().refetching.push((channel.to_string(), held));
            }
            sub.push(Msg::Refetch, self.limits, &self.stats);
        }
    }

    /// Marks a stream's channels that follow ids (`prev-id`) as being
    /// re-fetched through its next link (a gap, a timer, a `recover`):
    /// what is published to them meanwhile waits for the link's answer
    /// (`set_chans`), as in Pushpin, since the answer may repeat it.
    pub fn refetching(&self, sub: &Sub) {
        if sub.kind != HoldKind::Stream {
            return;
        }
        let mut rare = sub.rare.borrow_mut();
        let Some(r) = rare.as_mut() else { return };
        let Rare {
            chans, refetching, ..
        } = &mut **r;
        for c in chans.iter() {
            if c.prev_id.is_some() && !refetching.iter().any(|(ch, _)| *ch == c.channel) {
                refetching.push((c.channel.clone(), Vec::new()));
            }
        }
    }

    /// Whether `e` goes to `sub`: `Ok(None)` not, `Ok(Some(None))` as
    /// published, `Ok(Some(Some(bytes)))` with this content.
    fn judge(
        &self,
        sub: &Sub,
        channel: &str,
        e: &Arc<Encoded>,
    ) -> Result<Option<Option<Bytes>>, filter::FilterError> {
        let it = &e.item;
        let (content, declared, patched) = match sub.kind {
            HoldKind::Stream => match &it.http_stream {
                Some(s) => (s.content.clone(), s.content_filters.as_deref(), false),
                None => return Ok(None),
            },
            HoldKind::Ws => match &it.ws_message {
                Some(w) => (w.content.clone(), w.content_filters.as_deref(), false),
                None => return Ok(None),
            },
            HoldKind::Response => match &it.http_response {
                Some(r) => match &r.patch {
                    Some(p) => (
                        p.apply(sub.rare().as_ref().map_or(&[][..], |r| &r.held_body[..])),
                        r.content_filters.as_deref(),
                        true,
                    ),
                    None => (r.body.clone(), r.content_filters.as_deref(), false),
                },
                None => return Ok(None),
            },
        };
        let rare = sub.rare();
        let chans = rare.as_ref().map_or(&[][..], |r| &r.chans[..]);
        let filters = chans
            .iter()
            .find(|c| c.channel == channel)
            .map_or(&filter::NO_FILTERS, |c| &c.filters);
        if let Some(d) = declared {
            if !filters.matches_content_filters(d) {
                return Ok(None);
            }
        }
        if filters.is_empty() {
            return Ok(Some(patched.then_some(content)));
        }
        let meta = rare.as_ref().map_or(&[][..], |r| &r.meta[..]);
        let ctx = filter::Context {
            sub_meta: meta,
            pub_meta: &it.meta,
            channels: Some(&Chans(chans)),
        };
        Ok(match filter::run(filters, &ctx, &content)? {
            Verdict::Drop => None,
            Verdict::Send => Some(patched.then_some(content)),
            Verdict::Rewritten(b) => Some(Some(b)),
        })
    }

    /// Hands one subscriber its decided pieces, in order.
    fn hand_pieces(&self, sub: &Rc<Sub>, channel: &str, pieces: &[Piece], all: &[&Arc<Encoded>]) {
        let max = self.limits;
        let mut delivered = 0u64;
        match sub.kind {
            HoldKind::Stream => {
                let mut data: Vec<Bytes> = Vec::new();
                let (mut close, mut hint) = (false, false);
                for p in pieces {
                    let Some(s) = &p.item.item.http_stream else {
                        continue;
                    };
                    match s.action {
                        Action::Send => {
                            let part = match (&p.own, sub.chunked) {
                                (Some(b), true) => crate::bus::chunk_of(b),
                                (Some(b), false) => b.clone(),
                                (None, true) => p.item.stream_chunk().clone(),
                                (None, false) => p.item.stream_raw(),
                            };
                            if !part.is_empty() {
                                delivered += 1;
                                data.push(part);
                            }
                        }
                        Action::Close => {
                            close = true;
                            break;
                        }
                        Action::Hint | Action::Refresh => hint = true,
                    }
                }
                if !data.is_empty() {
                    sub.push(Msg::Data(join(&data)), max, &self.stats);
                }
                if close {
                    sub.push(Msg::Close, max, &self.stats);
                } else if hint {
                    sub.push(Msg::Refetch, max, &self.stats);
                }
            }
            HoldKind::Ws => {
                let mut data: Vec<Bytes> = Vec::new();
                let mut close = None;
                let mut refresh = false;
                for p in pieces {
                    let Some(w) = &p.item.item.ws_message else {
                        continue;
                    };
                    match w.action {
                        Action::Send => {
                            delivered += 1;
                            data.push(match &p.own {
                                Some(b) => crate::bus::ws_frame_of(w.kind, b),
                                None => p.item.ws_frame().clone(),
                            });
                        }
                        Action::Close => {
                            close = Some((w.code.unwrap_or(1000), w.reason.clone()));
                            break;
                        }
                        Action::Refresh => refresh = true,
                        Action::Hint => {}
                    }
                }
                if !data.is_empty() {
                    sub.push(Msg::Data(join(&data)), max, &self.stats);
                }
                if refresh {
                    sub.push(Msg::Refresh, max, &self.stats);
                }
                if let Some((code, reason)) = close {
                    sub.push(Msg::WsClose(code, reason), max, &self.stats);
                }
            }
            HoldKind::Response => {
                for p in pieces {
                    let Some(r) = &p.item.item.http_response else {
                        continue;
                    };
                    match (r.action, &p.own) {
                        (Action::Send, None) => {
                            delivered = 1;
                            sub.push(Msg::Response(p.item.clone()), max, &self.stats);
                            break;
                        }
                        (Action::Send, Some(b)) => {
                            delivered = 1;
                            sub.push(
                                Msg::ResponseBody(p.item.clone(), b.clone()),
                                max,
                                &self.stats,
                            );
                            break;
                        }
                        (Action::Hint, _) => {
                            sub.push(Msg::Refetch, max, &self.stats);
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
        let last_id = all.iter().rev().find_map(|e| e.item.id.as_deref());
        self.delivered(sub, channel, delivered, last_id);
    }

    /// Sets a subscriber's per-channel filters and prev-ids (kept empty
    /// when no channel has a filter or, on an HTTP subscriber, a prev-id,
    /// so its deliveries stay shared).
    pub fn set_chans(&self, sub: &Rc<Sub>, chans: Vec<ChanState>) {
        let any = chans
            .iter()
            .any(|c| !c.filters.is_empty() || (sub.kind != HoldKind::Ws && c.prev_id.is_some()));
        if any || sub.rare().is_some() {
            sub.rare_mut().chans = if any { chans } else { Vec::new() };
        }
        // A next link answered: what was published while it was fetched
        // goes out now, less the items at the front that do not follow
        // the new prev-id (the answer carried them: Pushpin drops them).
        let held = match sub.rare.borrow_mut().as_mut() {
            Some(r) => std::mem::take(&mut r.refetching),
            None => Vec::new(),
        };
        for (channel, items) in held {
            if !sub.channels.borrow().contains(&channel) {
                continue;
            }
            let prev = sub
                .chans()
                .iter()
                .find(|c| c.channel == channel)
                .and_then(|c| c.prev_id.clone());
            let start = match &prev {
                Some(p) => items
                    .iter()
                    .position(|e| e.item.prev_id.as_ref() == Some(p))
                    .unwrap_or(items.len()),
                None => 0,
            };
            let rest: Vec<&Arc<Encoded>> = items[start..].iter().collect();
            if !rest.is_empty() {
                self.hand_filtered(sub, &channel, &rest, &mut false);
            }
        }
    }

    /// Ends every held stream (at shutdown); long-polls get their timeout
    /// response.
    pub fn close_all(&self) {
        for sub in self.all_subs().into_values() {
            let msg = match sub.kind {
                HoldKind::Stream => Msg::Close,
                HoldKind::Response => Msg::Timeout,
                HoldKind::Ws => Msg::WsClose(1001, "server shutting down".into()),
            };
            sub.push(msg, QueueLimits::UNBOUNDED, &self.stats);
        }
    }

    /// Acts on a `recover` command: every held HTTP subscriber is told to
    /// re-fetch (a stream its next link, if it has one; a long-poll its
    /// request). WebSockets have nothing to re-fetch.
    fn recover(&self) {
        let n = self.bus.recoveries();
        if n == self.recovered.replace(n) {
            return;
        }
        for sub in self.all_subs().into_values() {
            if sub.kind == HoldKind::Ws {
                continue;
            }
            sub.push(Msg::Refetch, QueueLimits::UNBOUNDED, &self.stats);
        }
    }

    /// The periodic check: keep-alives, long-poll timeouts, link timers,
    /// a `recover` command.
    pub fn sweep(&self, now: Instant) {
        self.recover();
        self.update_first_subscriptions(now);
        let subs: Vec<Rc<Sub>> = self.timed.borrow().values().cloned().collect();
        for sub in subs {
            if let Some(d) = sub.deadline.get() {
                if now >= d {
                    sub.deadline.set(None);
                    sub.push(Msg::Timeout, QueueLimits::UNBOUNDED, &self.stats);
                }
            }
            let due = sub
                .rare()
                .as_ref()
                .and_then(|r| r.delayed.as_ref())
                .is_some_and(|(_, at)| now >= *at);
            if due {
                self.flush_delayed(&sub);
            }
            let link_due = match sub.rare.borrow_mut().as_mut() {
                Some(r) if r.link_at.is_some_and(|d| now >= d) => {
                    r.link_at = None;
                    true
                }
                _ => false,
            };
            if link_due {
                sub.push(Msg::Refetch, QueueLimits::UNBOUNDED, &self.stats);
            }
            let ka = sub.rare().as_ref().and_then(|r| {
                let ka = r.keep_alive.clone()?;
                Some((ka, r.last_keep_alive.unwrap_or(now)))
            });
            if let Some((ka, last_keep_alive)) = ka {
                let every = Duration::from_secs(u64::from(ka.timeout));
                let since = match ka.mode {
                    KeepAliveMode::Idle => sub.last_write.get().max(last_keep_alive),
                    KeepAliveMode::Interval => last_keep_alive,
                };
                if now.duration_since(since) >= every && !ka.data.is_empty() {
                    sub.rare_mut().last_keep_alive = Some(now);
                    let framed = if sub.chunked {
                        let mut out = Vec::with_capacity(ka.data.len() + 8);
                        crate::codec::chunked::write_chunk(&mut out, &ka.data);
                        Bytes::from(out)
                    } else {
                        ka.data.clone()
                    };
                    sub.push(Msg::Data(framed), self.limits, &self.stats);
                }
            }
            self.retime(&sub);
        }
    }
}

/// Which wire forms a channel's subscribers need (so that the others are
/// never encoded).
#[derive(Clone, Copy, Default)]
struct Needs {
    chunked: bool,
    raw: bool,
    ws: bool,
}

impl Needs {
    fn of(subs: &[Rc<Sub>]) -> Needs {
        let mut n = Needs::default();
        for s in subs {
            match s.kind {
                HoldKind::Stream if s.chunked => n.chunked = true,
                HoldKind::Stream => n.raw = true,
                HoldKind::Ws => n.ws = true,
                HoldKind::Response => {}
            }
        }
        n
    }
}

/// What one drain cycle means for the subscribers of one channel.
struct Plan {
    /// Published stream messages joined into `chunked`/`raw`.
    stream_items: u64,
    chunked: Bytes,
    /// `ws-message` frames joined, and a close after them.
    ws_items: u64,
    ws: Bytes,
    ws_close: Option<(u16, String)>,
    /// A `refresh` for WebSocket-over-HTTP sessions.
    ws_refresh: bool,
    raw: Bytes,
    close: bool,
    hint: bool,
    response: Option<Arc<Encoded>>,
    hint_response: bool,
    last_id: Option<String>,
}

/// Items delivered per call of `Registry::deliver`; other tasks may run
/// between slices. Items of one channel within a slice go out joined.
pub const DRAIN_SLICE: usize = 1024;

/// `items` in runs of one channel, each in publish order. Without prefix
/// subscriptions (`keep_order` false) each channel's items form one run,
/// the runs in the order the channels first appear; with them a
/// subscriber may hear several channels, so runs are consecutive items
/// of one channel, in the order they came.
fn channel_runs(items: &[Arc<Encoded>], keep_order: bool) -> Vec<Vec<&Arc<Encoded>>> {
    let Some(first) = items.first() else {
        return Vec::new();
    };
    let ch = first.item.channel.as_str();
    if items.iter().all(|e| e.item.channel == ch) {
        return vec![items.iter().collect()];
    }
    if keep_order {
        return items
            .chunk_by(|a, b| a.item.channel == b.item.channel)
            .map(|run| run.iter().collect())
            .collect();
    }
    let mut runs: Vec<Vec<&Arc<Encoded>>> = Vec::new();
    let mut by_channel: HashMap<&str, usize> = HashMap::new();
    for e in items {
        let at = *by_channel
            .entry(e.item.channel.as_str())
            .or_insert_with(|| {
                runs.push(Vec::new());
                runs.len() - 1
            });
        runs[at].push(e);
    }
    runs
}

fn join(parts: &[Bytes]) -> Bytes {
    match parts {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut b = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for p in many {
                b.extend_from_slice(p);
            }
            b.freeze()
        }
    }
}

impl Plan {
    /// The messages this plan queues on `sub`, in order: its kind's
    /// joined data (shared `Bytes`), then what ends or refreshes it.
    fn messages(&self, sub: &Sub) -> impl Iterator<Item = Msg> {
        let data = |b: &Bytes| (!b.is_empty()).then(|| Msg::Data(b.clone()));
        let msgs: [Option<Msg>; 3] = match sub.kind {
            HoldKind::Stream => [
                data(if sub.chunked {
                    &self.chunked
                } else {
                    &self.raw
                }),
                if self.close {
                    Some(Msg::Close)
                } else {
                    self.hint.then_some(Msg::Refetch)
                },
                None,
            ],
            HoldKind::Ws => [
                data(&self.ws),
                self.ws_refresh.then_some(Msg::Refresh),
                self.ws_close
                    .as_ref()
                    .map(|(code, reason)| Msg::WsClose(*code, reason.clone())),
            ],
            HoldKind::Response => [
                match &self.response {
                    Some(r) => Some(Msg::Response(r.clone())),
                    None => self.hint_response.then_some(Msg::Refetch),
                },
                None,
                None,
            ],
        };
        msgs.into_iter().flatten()
    }

    /// The published messages this plan gives `sub` (for the deliveries
    /// counter).
    fn delivered(&self, sub: &Sub) -> u64 {
        match sub.kind {
            HoldKind::Stream => self.stream_items,
            HoldKind::Response => u64::from(self.response.is_some()),
            HoldKind::Ws => self.ws_items,
        }
    }

    fn new(items: &[&Arc<Encoded>], needs: Needs) -> Plan {
        let (mut chunked, mut raw) = (Vec::new(), Vec::new());
        let (mut close, mut hint, mut hint_response) = (false, false, false);
        let mut response = None;
        let mut stream_items = 0;
        let (mut ws, mut ws_items, mut ws_close) = (Vec::new(), 0, None);
        let mut ws_refresh = false;
        for e in items {
            if let Some(w) = &e.item.ws_message {
                if ws_close.is_none() {
                    match w.action {
                        Action::Close => {
                            ws_close = Some((w.code.unwrap_or(1000), w.reason.clone()))
                        }
                        Action::Send => {
                            ws_items += 1;
                            if needs.ws {
                                ws.push(e.ws_frame().clone());
                            }
                        }
                        Action::Refresh => ws_refresh = true,
                        Action::Hint => {}
                    }
                }
            }
            if let Some(s) = &e.item.http_stream {
                if !close {
                    match s.action {
                        Action::Send => {
                            if !s.content.is_empty() {
                                stream_items += 1;
                                if needs.chunked {
                                    chunked.push(e.stream_chunk().clone());
                                }
                                if needs.raw {
                                    raw.push(e.stream_raw());
                                }
                            }
                        }
                        Action::Close => close = true,
                        Action::Hint | Action::Refresh => hint = true,
                    }
                }
            }
            if let Some(r) = &e.item.http_response {
                if response.is_none() {
                    match r.action {
                        Action::Send => response = Some((*e).clone()),
                        Action::Hint | Action::Refresh => hint_response = true,
                        Action::Close => {}
                    }
                }
            }
        }
        Plan {
            ws_items,
            ws: join(&ws),
            ws_close,
            ws_refresh,
            stream_items,
            chunked: join(&chunked),
            raw: join(&raw),
            close,
            hint,
            response,
            hint_response,
            last_id: items.iter().rev().find_map(|e| e.item.id.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Msg {
        Msg::Data(Bytes::from(vec![b'x'; n]))
    }

    fn registry(messages: usize, bytes: usize) -> Registry {
        // A one-core bus: the registry keeps its interest bits there.
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let (bus, _) = Bus::new(vec![ours], crate::bus::Limits::default());
        Registry::new(QueueLimits { messages, bytes }, bus, 0)
    }

    fn spec() -> SubSpec {
        SubSpec {
            kind: HoldKind::Stream,
            chunked: false,
            channels: vec!["c".into()],
            meta: Vec::new(),
            keep_alive: None,
            timeout: None,
            link_timeout: None,
        }
    }

    /// A one-core bus whose inbox the test drains by hand, so the order
    /// of publish, subscribe and drain is the test's to choose.
    fn wired() -> (Registry, crate::bus::CoreInbox) {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let (bus, mut inboxes) = Bus::new(vec![ours], crate::bus::Limits::default());
        let inbox = inboxes.pop().expect("one inbox");
        (Registry::new(QueueLimits::UNBOUNDED, bus, 0), inbox)
    }

    fn stream_item(ch: &str, content: &str) -> crate::codec::publish::Item {
        crate::codec::publish::Item {
            channel: ch.into(),
            http_stream: Some(crate::codec::publish::HttpStream {
                action: Action::Send,
                content: Bytes::from(content.to_string()),
                content_filters: None,
            }),
            ..Default::default()
        }
    }

    fn drain(reg: &Registry, inbox: &crate::bus::CoreInbox) {
        inbox.rearm();
        while reg.deliver(inbox) {}
    }

    /// Everything queued for `sub`, data joined.
    fn received(sub: &Sub) -> String {
        let mut out = String::new();
        while let Some(m) = sub.poll_msg(std::task::Waker::noop()) {
            if let Msg::Data(b) = m {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
        out
    }

    #[test]
    fn a_late_drain_gives_a_new_subscriber_only_what_was_published_after_it() {
        // The race tests/publish.rs hunts: an item routed to this core
        // (for a subscriber already here) is still queued when a new
        // subscriber arrives; the drain comes after both.
        let (reg, inbox) = wired();
        let early = reg.subscribe(spec());
        reg.bus.publish(vec![stream_item("c", "[1]")], None);
        let mut chunked = spec();
        chunked.chunked = true;
        let late = reg.subscribe(chunked);
        reg.bus.publish(vec![stream_item("c", "[2]")], None);
        drain(&reg, &inbox);
        assert_eq!(received(&early), "[1][2]");
        assert_eq!(received(&late), "3\r\n[2]\r\n", "only the publish after it");
        // Once past its mark, it shares the channel's deliveries again.
        reg.bus
            .publish(vec![stream_item("c", "[3]"), stream_item("c", "[4]")], None);
        drain(&reg, &inbox);
        assert_eq!(received(&early), "[3][4]");
        assert_eq!(received(&late), "3\r\n[3]\r\n3\r\n[4]\r\n");
    }

    #[test]
    fn a_channel_kept_across_a_change_keeps_its_mark_and_a_new_one_starts_now() {
        let (reg, inbox) = wired();
        let sub = reg.subscribe(spec());
        reg.bus.publish(vec![stream_item("c", "<c1>")], None);
        // A next link adds channel d while <c1> is still queued.
        let _other = reg.subscribe(SubSpec {
            channels: vec!["d".into()],
            ..spec()
        });
        reg.bus.publish(vec![stream_item("d", "<d1>")], None);
        reg.set_channels(&sub, vec!["c".into(), "d".into()]);
        reg.bus.publish(
            vec![stream_item("d", "<d2>"), stream_item("c", "<c2>")],
            None,
        );
        drain(&reg, &inbox);
        // Per channel in order (a drain delivers channel by channel).
        assert_eq!(received(&sub), "<c1><c2><d2>");
    }

    fn ws_item(ch: &str, content: &str) -> crate::codec::publish::Item {
        crate::codec::publish::Item {
            channel: ch.into(),
            ws_message: Some(crate::codec::publish::WsMessage {
                action: Action::Send,
                kind: crate::codec::publish::WsKind::Text,
                content: Bytes::from(content.to_string()),
                code: None,
                reason: String::new(),
                content_filters: None,
            }),
            ..Default::default()
        }
    }

    fn response_item(ch: &str, body: &str) -> crate::codec::publish::Item {
        use crate::codec::response::{At, Head};
        let none: [(At, &[u8], &[u8]); 0] = [];
        crate::codec::publish::Item {
            channel: ch.into(),
            http_response: Some(crate::codec::publish::HttpResponse {
                action: Action::Send,
                head: Head::from_parts(None, None, none, body.as_bytes()).expect("head"),
                body: Bytes::from(body.to_string()),
                patch: None,
                content_filters: None,
            }),
            ..Default::default()
        }
    }

    /// Every message queued for `sub`, as short labels.
    fn messages(sub: &Sub) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = sub.poll_msg(std::task::Waker::noop()) {
            out.push(match m {
                Msg::Data(b) => format!("data {}", b.escape_ascii()),
                Msg::Close => "close".into(),
                Msg::Response(e) => {
                    format!("response {}", String::from_utf8_lossy(&e.response_body))
                }
                Msg::ResponseBody(_, b) => format!("response* {}", String::from_utf8_lossy(&b)),
                Msg::Timeout => "timeout".into(),
                Msg::Refetch => "refetch".into(),
                Msg::WsClose(c, r) => format!("ws-close {c} {r}"),
                Msg::Refresh => "refresh".into(),
                Msg::Error(why) => format!("error {why}"),
            });
        }
        out
    }

    fn kind_spec(kind: HoldKind, chunked: bool) -> SubSpec {
        SubSpec {
            kind,
            chunked,
            ..spec()
        }
    }

    #[test]
    fn a_drain_becomes_one_message_per_subscriber_in_the_form_its_kind_needs() {
        let (reg, inbox) = wired();
        let raw = reg.subscribe(kind_spec(HoldKind::Stream, false));
        let chunked = reg.subscribe(kind_spec(HoldKind::Stream, true));
        let ws = reg.subscribe(kind_spec(HoldKind::Ws, false));
        let poll = reg.subscribe(kind_spec(HoldKind::Response, false));
        let mut both = stream_item("c", "a");
        both.ws_message = ws_item("c", "A").ws_message;
        let mut hint = stream_item("c", "");
        hint.http_stream.as_mut().expect("stream").action = Action::Hint;
        reg.bus.publish(
            vec![
                both,
                stream_item("c", "b"),
                response_item("c", "r1"),
                response_item("c", "r2"),
                hint,
            ],
            None,
        );
        drain(&reg, &inbox);
        assert_eq!(
            messages(&raw),
            ["data ab", "refetch"],
            "joined, then the hint"
        );
        assert_eq!(
            messages(&chunked),
            ["data 1\\r\\na\\r\\n1\\r\\nb\\r\\n", "refetch"]
        );
        assert_eq!(messages(&ws), ["data \\x81\\x01A"], "one text frame");
        assert_eq!(
            messages(&poll),
            ["response r1"],
            "a long-poll takes the first response"
        );
        assert_eq!(reg.stats.deliveries.get(), 2 + 2 + 1 + 1);
        // A close ends the stream: nothing after it in the drain goes out.
        let mut close = stream_item("c", "");
        close.http_stream.as_mut().expect("stream").action = Action::Close;
        reg.bus.publish(
            vec![stream_item("c", "x"), close, stream_item("c", "y")],
            None,
        );
        drain(&reg, &inbox);
        assert_eq!(messages(&raw), ["data x", "close"]);
    }

    #[test]
    fn filters_decide_per_subscriber_and_a_prev_id_gap_refetches() {
        let (reg, inbox) = wired();
        let alice = reg.subscribe(SubSpec {
            meta: vec![("user".into(), "alice".into())],
            ..spec()
        });
        let skip = Filters::from_names(vec![filter::Name::SkipSelf]);
        let chan = |prev: Option<&str>, filters: Filters| ChanState {
            channel: "c".into(),
            name: "c".into(),
            filters,
            prev_id: prev.map(String::from),
        };
        reg.set_chans(&alice, vec![chan(None, skip.clone())]);
        let bob = reg.subscribe(spec());
        let mut own = stream_item("c", "mine");
        own.meta = vec![("sender".into(), "alice".into())];
        reg.bus.publish(vec![own, stream_item("c", "+")], None);
        drain(&reg, &inbox);
        assert_eq!(received(&alice), "+", "skip-self drops her own message");
        assert_eq!(received(&bob), "mine+");
        // No filter and no prev-id: the subscriber shares deliveries again.
        reg.set_chans(&alice, vec![chan(None, Filters::default())]);
        assert!(alice.chans().is_empty());
        // A stream following ids from prev-id 1: 2 follows on, 4 does not.
        let follower = reg.subscribe(spec());
        reg.set_chans(&follower, vec![chan(Some("1"), Filters::default())]);
        let with = |id: &str, prev: &str, text: &str| crate::codec::publish::Item {
            id: Some(id.into()),
            prev_id: Some(prev.into()),
            no_seq: true,
            ..stream_item("c", text)
        };
        reg.bus
            .publish(vec![with("2", "1", "two"), with("4", "3", "four")], None);
        drain(&reg, &inbox);
        assert_eq!(messages(&follower), ["data two", "refetch"]);
        assert_eq!(&*follower.last_ids(), [("c".to_string(), "2".to_string())]);
        // The prev-id stays the last that followed on (the `Grip-Last`),
        // and what is published before the link answers waits for it.
        assert_eq!(follower.chans()[0].prev_id.as_deref(), Some("2"));
        reg.bus
            .publish(vec![with("5", "4", "five"), with("6", "5", "six")], None);
        drain(&reg, &inbox);
        assert!(messages(&follower).is_empty(), "held while re-fetching");
        assert_eq!(follower.chans()[0].prev_id.as_deref(), Some("2"));
        // The link answered up to 4 (3 and 4 in its body): of what
        // waited, "four" is dropped, "five" and "six" follow on.
        reg.set_chans(&follower, vec![chan(Some("4"), Filters::default())]);
        assert_eq!(messages(&follower), ["data fivesix"]);
        reg.bus.publish(vec![with("7", "6", "seven")], None);
        drain(&reg, &inbox);
        assert_eq!(messages(&follower), ["data seven"]);
        // An answer with nothing new (prev-id 7): nothing that waited
        // follows on, so it is dropped, and the next item is a gap again.
        reg.bus
            .publish(vec![with("9", "8", "nine"), with("10", "9", "ten")], None);
        drain(&reg, &inbox);
        assert_eq!(messages(&follower), ["refetch"]);
        reg.set_chans(&follower, vec![chan(Some("7"), Filters::default())]);
        assert!(messages(&follower).is_empty());
        reg.bus.publish(vec![with("11", "10", "eleven")], None);
        drain(&reg, &inbox);
        assert_eq!(messages(&follower), ["refetch"]);
    }

    #[test]
    fn a_slice_is_taken_in_runs_of_one_channel() {
        // (channels in publish order, keep_order, runs as channel:content)
        let table: &[(&[&str], bool, &[&str])] = &[
            (&[], false, &[]),
            (&["a"], false, &["a:0"]),
            (&["a", "a", "a"], true, &["a:012"]),
            (&["a", "b", "a", "c"], false, &["a:02", "b:1", "c:3"]),
            (&["a", "b", "a", "c"], true, &["a:0", "b:1", "a:2", "c:3"]),
            (&["b", "b", "a", "b"], true, &["b:01", "a:2", "b:3"]),
        ];
        for &(channels, keep_order, want) in table {
            let items: Vec<Arc<Encoded>> = channels
                .iter()
                .enumerate()
                .map(|(i, ch)| Arc::new(Encoded::new(stream_item(ch, &i.to_string()))))
                .collect();
            let runs: Vec<String> = channel_runs(&items, keep_order)
                .iter()
                .map(|run| {
                    let content: String = run
                        .iter()
                        .map(|e| e.stream_raw())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .collect();
                    format!("{}:{content}", run[0].item.channel)
                })
                .collect();
            assert_eq!(runs, want, "{channels:?} keep_order={keep_order}");
        }
    }

    #[test]
    fn a_prefix_subscription_hears_every_channel_under_it_once_and_in_order() {
        use crate::codec::wildcard::key;
        let (reg, inbox) = wired();
        let on = |chs: &[&str]| SubSpec {
            channels: chs.iter().map(|c| c.to_string()).collect(),
            ..spec()
        };
        let all = reg.subscribe(on(&[&key("news.")]));
        // On a channel and on a prefix over it (two ways, and two
        // overlapping prefixes): each item once.
        let both = reg.subscribe(on(&["news.a", &key("news."), &key("news.a")]));
        let exact = reg.subscribe(on(&["news.a"]));
        let other = reg.subscribe(on(&[&key("sport.")]));
        reg.bus.publish(
            vec![
                stream_item("news.a", "1"),
                stream_item("news.b", "2"),
                stream_item("newsx", "-"),
                stream_item("news.a", "3"),
                stream_item("news.", "4"),
                stream_item("news", "-"),
            ],
            None,
        );
        drain(&reg, &inbox);
        assert_eq!(received(&all), "1234", "in the order published");
        assert_eq!(received(&both), "1234");
        assert_eq!(received(&exact), "13");
        assert_eq!(received(&other), "");
        // Items on a prefix key name no channel in `Grip-Last`.
        assert!(all.last_ids().is_empty());
        assert_eq!(reg.subscriptions(), 6);
        // Counts are per channel; a prefix is none.
        let counts = reg.channel_counts().expect("changed");
        assert_eq!(counts.get("news.a"), Some(&2));
        assert_eq!(counts.len(), 1);
        // Gone: the prefix's length is uncounted, the bus no longer routes.
        drop((all, both, other));
        assert!(reg.prefix_lens.borrow().is_empty());
        reg.bus.publish(vec![stream_item("news.b", "x")], None);
        let mut items = Vec::new();
        inbox.take(usize::MAX, &mut items);
        assert!(items.is_empty(), "no core listens to news.b");
    }

    #[test]
    fn a_prefix_subscription_keeps_its_filters_and_its_join_mark() {
        use crate::codec::wildcard::key;
        let (reg, inbox) = wired();
        let alice = reg.subscribe(SubSpec {
            channels: vec![key("room.")],
            meta: vec![("user".into(), "alice".into())],
            ..spec()
        });
        reg.set_chans(
            &alice,
            vec![ChanState {
                channel: key("room."),
                name: key("room."),
                filters: Filters::from_names(vec![filter::Name::SkipSelf]),
                prev_id: None,
            }],
        );
        let mut own = stream_item("room.1", "mine");
        own.meta = vec![("sender".into(), "alice".into())];
        reg.bus.publish(vec![own, stream_item("room.2", "+")], None);
        // One who subscribes to the prefix while those are queued gets
        // only what is published after it.
        let late = reg.subscribe(SubSpec {
            channels: vec![key("room.")],
            ..spec()
        });
        reg.bus.publish(vec![stream_item("room.3", "!")], None);
        drain(&reg, &inbox);
        assert_eq!(received(&alice), "+!", "skip-self drops her own message");
        assert_eq!(received(&late), "!");
        // A prefix has no history to resume from.
        assert_eq!(reg.resume(&late, &key("room."), "1"), Resumed::Gap);
    }

    #[test]
    fn the_sweep_sends_keep_alives_times_out_long_polls_and_fires_link_timers() {
        let (reg, _inbox) = wired();
        let now = Instant::now();
        let stream = reg.subscribe(SubSpec {
            keep_alive: Some(KeepAlive {
                data: Bytes::from_static(b":\n"),
                timeout: 10,
                mode: KeepAliveMode::Idle,
            }),
            ..kind_spec(HoldKind::Stream, true)
        });
        let poll = reg.subscribe(SubSpec {
            timeout: Some(Duration::from_secs(30)),
            ..kind_spec(HoldKind::Response, false)
        });
        let linked = reg.subscribe(spec());
        reg.set_link_at(&linked, Some(now + Duration::from_secs(5)));
        let idle = reg.subscribe(spec());
        assert_eq!(reg.timed.borrow().len(), 3, "the idle one is not swept");
        reg.sweep(now + Duration::from_secs(6));
        assert_eq!(messages(&linked), ["refetch"]);
        assert!(messages(&stream).is_empty(), "written to 6 s ago");
        assert_eq!(reg.timed.borrow().len(), 2, "the link timer fired once");
        stream.wrote(now + Duration::from_secs(6));
        reg.sweep(now + Duration::from_secs(15));
        assert!(messages(&stream).is_empty(), "idle for 9 s only");
        reg.sweep(now + Duration::from_secs(16));
        assert_eq!(messages(&stream), ["data 2\\r\\n:\\n\\r\\n"]);
        reg.sweep(now + Duration::from_secs(31));
        assert_eq!(messages(&poll), ["timeout"]);
        reg.sweep(now + Duration::from_secs(90));
        assert!(messages(&poll).is_empty(), "a timeout is sent once");
        assert!(messages(&idle).is_empty());
        reg.set_keep_alive(&stream, None);
        assert_eq!(reg.timed.borrow().len(), 0, "setters re-time on their own");
    }

    #[test]
    fn the_byte_limit_holds_only_while_the_socket_is_full() {
        let reg = registry(100, 1000);
        let sub = reg.subscribe(spec());
        // Waiting for its turn on a busy core is not being slow.
        for _ in 0..5 {
            sub.push(data(400), reg.limits, &reg.stats);
        }
        assert!(!sub.dropped());
        assert_eq!(sub.queued_bytes(), 2000);
        // Its socket turns out full with more than the limit queued.
        assert!(reg.blocked(&sub));
        assert!(sub.dropped());
        assert_eq!(sub.queued_bytes(), 0, "the queue is freed at once");
        assert_eq!((reg.stats.drops.get(), reg.stats.stalls.get()), (1, 0));
        sub.push(data(1), reg.limits, &reg.stats);
        assert_eq!(sub.queued_bytes(), 0, "a dropped subscriber takes nothing");
    }

    #[test]
    fn a_blocked_subscriber_takes_one_message_of_any_size_then_its_limit() {
        let reg = registry(100, 1000);
        let sub = reg.subscribe(spec());
        assert!(!reg.blocked(&sub));
        sub.push(data(5000), reg.limits, &reg.stats);
        assert!(!sub.dropped(), "an empty queue takes a message of any size");
        sub.push(data(10), reg.limits, &reg.stats);
        assert!(sub.dropped(), "5010 bytes queued while blocked");
        // Unblocked, a subscriber keeping up takes large messages in turn.
        let reg = registry(100, 1000);
        let sub = reg.subscribe(spec());
        let waker = std::task::Waker::noop();
        for _ in 0..3 {
            sub.push(data(5000), reg.limits, &reg.stats);
            assert!(matches!(sub.poll_msg(waker), Some(Msg::Data(_))));
        }
        assert!(!sub.dropped());
        assert_eq!(sub.queued_bytes(), 0);
    }

    #[test]
    fn queued_bytes_follow_pops_and_gathered_parts() {
        let reg = registry(100, usize::MAX);
        let sub = reg.subscribe(spec());
        let waker = std::task::Waker::noop();
        for n in [10, 20, 30, 40] {
            sub.push(data(n), reg.limits, &reg.stats);
        }
        sub.push(Msg::Close, reg.limits, &reg.stats);
        assert_eq!(sub.queued_bytes(), 100);
        let Some(Msg::Data(first)) = sub.poll_msg(waker) else {
            panic!("data first")
        };
        assert_eq!(first.len(), 10);
        let mut parts = Vec::new();
        sub.take_data_parts(&mut parts, 60 - first.len());
        let lens = |p: &[Bytes]| p.iter().map(Bytes::len).collect::<Vec<_>>();
        assert_eq!((lens(&parts), sub.queued_bytes()), (vec![20, 30], 40));
        sub.take_data_parts(&mut parts, usize::MAX);
        assert_eq!((lens(&parts), sub.queued_bytes()), (vec![20, 30, 40], 0));
        assert!(
            matches!(sub.poll_msg(waker), Some(Msg::Close)),
            "the close is next"
        );
    }

    #[test]
    fn a_gathered_write_takes_at_most_max_parts() {
        let reg = registry(1000, usize::MAX);
        let sub = reg.subscribe(spec());
        for _ in 0..MAX_PARTS + 5 {
            sub.push(data(1), reg.limits, &reg.stats);
        }
        // One message was taken already: the write has room for the rest.
        let mut parts = Vec::new();
        sub.take_data_parts(&mut parts, usize::MAX);
        assert_eq!(parts.len(), MAX_PARTS - 1);
        assert_eq!(sub.queued_bytes(), 6);
    }

    #[test]
    fn the_message_limit_and_stalls_are_counted_apart() {
        let reg = registry(2, usize::MAX);
        let a = reg.subscribe(spec());
        for _ in 0..3 {
            a.push(data(1), reg.limits, &reg.stats);
        }
        assert!(a.dropped());
        let b = reg.subscribe(spec());
        reg.stalled(&b);
        reg.stalled(&b);
        assert!(b.dropped());
        assert_eq!((reg.stats.drops.get(), reg.stats.stalls.get()), (1, 1));
    }
}
