//! Pushpin's ZeroMQ interfaces (`[zmq]`), on a thread of their own with
//! libzmq's blocking sockets, feeding the same bus as the HTTP publish API
//! and the control socket:
//!
//! - `push_in_spec`: a PULL socket (bound); each message is one item.
//! - `push_in_sub_specs`: a SUB socket (bound, or connected with
//!   `push_in_sub_connect`) subscribed to exactly the channels that have
//!   subscribers here, as Pushpin does (so a publisher's XPUB sends only
//!   what someone listens to); each message is (channel, item).
//! - `command_spec`: a ROUTER socket (bound) answering Pushpin's commands
//!   to REQ and DEALER clients: `conncheck`, `get-zmq-uris`, `recover`,
//!   `refresh`, `publish`; any other method is `method-not-found`.
//! - `stats_spec`: a PUB socket (bound) writing `sub` messages as channels
//!   gain and lose subscribers (and again every 3/4 of their ttl),
//!   `message` for each published item that has subscribers here (one per
//!   transport), `conn` as each request or WebSocket starts (again every
//!   3/4 of `stats_connection_ttl` while it lasts) and ends,
//!   `activity` and `counts` as requests arrive, and a
//!   `report` and a `conn-max` every `stats_report_interval`.
//!
//! Subscriptions reach this thread as events from the cores' registries
//! (`bus::SubWatch`); the message codecs are in `codec::zmqmsg`.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::bus::{ConnEvent, ConnOpen, Published, SubEvent, SubWatch, Watched};
use crate::codec::publish::Item;
use crate::codec::tnetstring::Value;
use crate::codec::zmqmsg::{self, StatsFormat};
use crate::config::Zmq;
use crate::control_socket::{ControlPlane, Refresh};

/// Messages a socket queues (Pushpin's handler uses a high-water mark of
/// the same order on its inputs).
const HWM: i32 = 100_000;
/// Messages taken from one input before the others get their turn.
const BATCH: usize = 1024;
/// How often the stats side looks at the counters when nothing happens.
const TICK: Duration = Duration::from_millis(250);

/// One line per 10 s for a recurring problem, with a count.
struct Warn {
    next: Instant,
    quiet: u64,
}

impl Warn {
    fn new() -> Warn {
        Warn {
            next: Instant::now(),
            quiet: 0,
        }
    }

    fn say(&mut self, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if now >= self.next {
            if self.quiet > 0 {
                warn!("{what} ({} more like it since the last report)", self.quiet);
            } else {
                warn!("{what}");
            }
            self.quiet = 0;
            self.next = now + Duration::from_secs(10);
        } else {
            self.quiet += 1;
        }
    }
}

fn socket(ctx: &zmq::Context, kind: zmq::SocketType, field: &str) -> Result<zmq::Socket, String> {
    let s = ctx
        .socket(kind)
        .map_err(|e| format!("{field}: cannot create a ZeroMQ socket: {e}"))?;
    // Closing never waits for unsent messages.
    let _ = s.set_linger(0);
    let _ = s.set_rcvhwm(HWM);
    let _ = s.set_sndhwm(HWM);
    Ok(s)
}

/// Binds `spec`; returns the endpoint bound (`tcp://127.0.0.1:*` picks
/// a free port, and the answer names it).
/// A bound `ipc://` endpoint's socket file gets `mode` (Pushpin's
/// `ipc_file_mode`).
fn bind(s: &zmq::Socket, field: &str, spec: &str, mode: Option<u32>) -> Result<String, String> {
    s.bind(spec)
        .map_err(|e| format!("{field}: cannot bind {spec}: {e}"))?;
    if let (Some(mode), Some(path)) = (mode, spec.strip_prefix("ipc://")) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("zmq.ipc_file_mode: cannot set {mode:o} on {path}: {e}"))?;
    }
    Ok(match s.get_last_endpoint() {
        Ok(Ok(actual)) => actual,
        _ => spec.to_string(),
    })
}

/// Binds every configured socket (errors name the setting) and starts the
/// thread that serves them.
pub fn start(cfg: &Zmq, plane: Arc<ControlPlane>) -> Result<(), String> {
    let ctx = zmq::Context::new();
    // `get-zmq-uris`' answer: the endpoints bound (Pushpin's names).
    let mut uris: Vec<(&'static str, String)> = Vec::new();
    let pull = match &cfg.push_in_spec {
        Some(spec) => {
            let s = socket(&ctx, zmq::PULL, "zmq.push_in_spec")?;
            let at = bind(&s, "zmq.push_in_spec", spec, cfg.ipc_file_mode)?;
            info!("listening on {at} (ZeroMQ PULL: publishes)");
            uris.push(("publish-pull", at));
            Some(s)
        }
        None => None,
    };
    let mut sub_at = Vec::new();
    let sub = if cfg.push_in_sub_specs.is_empty() {
        None
    } else {
        let s = socket(&ctx, zmq::SUB, "zmq.push_in_sub_specs")?;
        for spec in &cfg.push_in_sub_specs {
            if cfg.push_in_sub_connect {
                // As Pushpin: keep-alives find a publisher that vanished.
                let _ = s.set_tcp_keepalive(1);
                let _ = s.set_tcp_keepalive_idle(30);
                let _ = s.set_tcp_keepalive_cnt(6);
                let _ = s.set_tcp_keepalive_intvl(5);
                s.connect(spec)
                    .map_err(|e| format!("zmq.push_in_sub_specs: cannot connect to {spec}: {e}"))?;
                info!("connecting to {spec} (ZeroMQ SUB: publishes)");
            } else {
                let at = bind(&s, "zmq.push_in_sub_specs", spec, cfg.ipc_file_mode)?;
                info!("listening on {at} (ZeroMQ SUB: publishes)");
                sub_at.push(at);
            }
        }
        Some(s)
    };
    let router = match &cfg.command_spec {
        Some(spec) => {
            let s = socket(&ctx, zmq::ROUTER, "zmq.command_spec")?;
            let at = bind(&s, "zmq.command_spec", spec, cfg.ipc_file_mode)?;
            info!("listening on {at} (ZeroMQ commands)");
            uris.push(("command", at));
            Some(s)
        }
        None => None,
    };
    let stats = match &cfg.stats_spec {
        Some(spec) => {
            let s = socket(&ctx, zmq::PUB, "zmq.stats_spec")?;
            let at = bind(&s, "zmq.stats_spec", spec, cfg.ipc_file_mode)?;
            info!("listening on {at} (ZeroMQ stats)");
            Some(s)
        }
        None => None,
    };
    // The SUB socket's subscriptions and the `sub` stats follow the
    // cores' subscriptions.
    let events = if sub.is_some() || stats.is_some() {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| format!("cannot create a wake socket: {e}"))?;
        theirs
            .set_nonblocking(true)
            .and_then(|()| ours.set_nonblocking(true))
            .map_err(|e| format!("cannot configure a wake socket: {e}"))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let pending = Arc::new(AtomicBool::new(false));
        // Routed items are announced only when there is a stats socket:
        // without one the publish path pays a single branch.
        plane.bus.set_watch(SubWatch {
            tx,
            pending: pending.clone(),
            wake: theirs,
            published: stats.is_some(),
            conns: stats.is_some() && cfg.stats_connection_send,
        })?;
        Some(Events {
            rx,
            pending,
            wake: ours,
        })
    } else {
        None
    };
    // A connected SUB socket has nothing for publishers to reach.
    if let Some(first) = sub_at.into_iter().next() {
        uris.push(("publish-sub", first));
    }
    let mut t = Thread {
        _ctx: ctx,
        pull,
        sub,
        router,
        stats,
        events,
        plane,
        format: cfg.stats_format,
        from: format!("corepin_{}", std::process::id()),
        uris,
        ttl: cfg.stats_subscription_ttl,
        conn_ttl: cfg.stats_connection_ttl,
        conns: HashMap::new(),
        linger: Duration::from_secs(cfg.subscription_linger),
        report_every: Duration::from_secs(cfg.stats_report_interval),
        subs: HashMap::new(),
        channels: HashMap::new(),
        counters: Counters::default(),
        warn_pull: Warn::new(),
        warn_sub: Warn::new(),
        warn_cmd: Warn::new(),
    };
    std::thread::Builder::new()
        .name("corepin-zmq".into())
        .spawn(move || t.run())
        .map_err(|e| format!("cannot start the ZeroMQ thread: {e}"))?;
    Ok(())
}

/// This thread's end of the subscription events.
struct Events {
    /// Subscription changes, and routed items (with a stats socket only),
    /// in the order they happened.
    rx: Receiver<Watched>,
    pending: Arc<AtomicBool>,
    wake: UnixStream,
}

/// A channel's subscription in one mode, as the stats report it.
struct SubState {
    subscribers: i64,
    /// A long-poll channel with no subscriber left is kept this long.
    linger_until: Option<Instant>,
    /// When its `sub` message is due again.
    next_send: Instant,
}

/// The counters the stats were last computed from.
#[derive(Default)]
struct Counters {
    requests: u64,
    items: u64,
    deliveries: u64,
    /// Highest connection count seen since the last report.
    connections_max: u64,
    /// Connection-milliseconds since the last report (connections seen at
    /// each tick times the time since the one before).
    connection_ms: u128,
    last_tick: Option<Instant>,
    /// Long-poll responses written by publishes since the last report
    /// (the `message` counts of transport `http-response`).
    http_response_sent: u64,
    last_report: Option<Instant>,
}

struct Thread {
    pull: Option<zmq::Socket>,
    sub: Option<zmq::Socket>,
    router: Option<zmq::Socket>,
    stats: Option<zmq::Socket>,
    events: Option<Events>,
    plane: Arc<ControlPlane>,
    format: StatsFormat,
    from: String,
    /// `get-zmq-uris`' answer.
    uris: Vec<(&'static str, String)>,
    ttl: u64,
    /// The `ttl` of `conn` messages.
    conn_ttl: u64,
    /// Open requests and WebSockets, by id, with when their `conn`
    /// message is due again.
    conns: HashMap<String, (ConnOpen, Instant)>,
    linger: Duration,
    report_every: Duration,
    subs: HashMap<(&'static str, String), SubState>,
    /// Modes with a subscription, per channel: the SUB socket is
    /// subscribed to a channel while this is above zero.
    channels: HashMap<String, usize>,
    counters: Counters,
    warn_pull: Warn,
    warn_sub: Warn,
    warn_cmd: Warn,
    _ctx: zmq::Context,
}

impl Thread {
    fn run(&mut self) {
        let mut next_tick = Instant::now();
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            let (pull, sub, cmd, ev) = match self.poll(timeout) {
                Ok(r) => r,
                Err(e) => {
                    error!("ZeroMQ poll failed: {e}; the ZeroMQ interfaces stop");
                    return;
                }
            };
            if pull {
                self.take_publishes(false);
            }
            if sub {
                self.take_publishes(true);
            }
            if cmd {
                self.take_commands();
            }
            if ev {
                self.take_events();
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
        }
    }

    /// Waits for input; says which inputs are readable.
    fn poll(&self, timeout: Duration) -> Result<(bool, bool, bool, bool), zmq::Error> {
        let mut items = Vec::with_capacity(4);
        let mut which = Vec::with_capacity(4);
        for (i, s) in [&self.pull, &self.sub, &self.router]
            .into_iter()
            .enumerate()
        {
            if let Some(s) = s {
                items.push(s.as_poll_item(zmq::POLLIN));
                which.push(i);
            }
        }
        if let Some(e) = &self.events {
            items.push(zmq::PollItem::from_fd(e.wake.as_raw_fd(), zmq::POLLIN));
            which.push(3);
        }
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        zmq::poll(&mut items, ms)?;
        let mut out = [false; 4];
        for (item, i) in items.iter().zip(which) {
            out[i] = item.is_readable();
        }
        Ok((out[0], out[1], out[2], out[3]))
    }

    /// Reads what the PULL (or SUB) socket holds, a batch at a time, and
    /// publishes the items that parse.
    fn take_publishes(&mut self, from_sub: bool) {
        let (sock, field) = if from_sub {
            (&self.sub, "push_in_sub_specs")
        } else {
            (&self.pull, "push_in_spec")
        };
        let Some(sock) = sock else { return };
        let warn = if from_sub {
            &mut self.warn_sub
        } else {
            &mut self.warn_pull
        };
        loop {
            let mut items: Vec<Item> = Vec::new();
            let mut bytes = 0usize;
            while items.len() < BATCH {
                let parts = match sock.recv_multipart(zmq::DONTWAIT) {
                    Ok(p) => p,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => {
                        warn.say(format_args!("zmq.{field}: receive failed: {e}"));
                        break;
                    }
                };
                let parsed = match (from_sub, parts.as_slice()) {
                    (false, [msg]) => zmqmsg::publish_item(msg, None),
                    (true, [topic, msg]) => zmqmsg::publish_item(msg, Some(topic)),
                    (false, _) => {
                        warn.say(format_args!(
                            "zmq.{field}: a message of {} parts (one expected), skipped",
                            parts.len()
                        ));
                        continue;
                    }
                    (true, _) => {
                        warn.say(format_args!(
                            "zmq.{field}: a message of {} parts (channel and item expected), skipped",
                            parts.len()
                        ));
                        continue;
                    }
                };
                match parsed {
                    Ok(item) => {
                        bytes += parts.iter().map(Vec::len).sum::<usize>();
                        items.push(item);
                    }
                    Err(e) => warn.say(format_args!("zmq.{field}: item refused: {e}")),
                }
            }
            if items.is_empty() {
                return;
            }
            let full = items.len() == BATCH;
            if let Err(e) = publish(&self.plane, items, bytes) {
                warn.say(format_args!("zmq.{field}: items dropped: {e}"));
            }
            if !full {
                return;
            }
        }
    }

    fn take_commands(&mut self) {
        // Taken out while commands are answered (they need `self`).
        let Some(sock) = self.router.take() else {
            return;
        };
        self.serve_commands(&sock);
        self.router = Some(sock);
    }

    fn serve_commands(&mut self, sock: &zmq::Socket) {
        for _ in 0..BATCH {
            let parts = match sock.recv_multipart(zmq::DONTWAIT) {
                Ok(p) => p,
                Err(zmq::Error::EAGAIN) => return,
                Err(e) => {
                    self.warn_cmd
                        .say(format_args!("zmq.command_spec: receive failed: {e}"));
                    return;
                }
            };
            // The envelope (peer identities) up to the empty delimiter,
            // then the request: what REQ and DEALER clients send.
            let Some(delim) = parts.iter().position(Vec::is_empty) else {
                self.warn_cmd.say(format_args!(
                    "zmq.command_spec: a message without an envelope delimiter, skipped"
                ));
                continue;
            };
            let (envelope, content) = parts.split_at(delim);
            let answer = match &content[1..] {
                [req] => self.command(req),
                other => {
                    self.warn_cmd.say(format_args!(
                        "zmq.command_spec: a request of {} parts (one expected)",
                        other.len()
                    ));
                    zmqmsg::response(None, Err(("bad-format", None)))
                }
            };
            let mut out: Vec<&[u8]> = envelope.iter().map(Vec::as_slice).collect();
            out.push(b"");
            out.push(&answer);
            if let Err(e) = sock.send_multipart(out, zmq::DONTWAIT) {
                self.warn_cmd
                    .say(format_args!("zmq.command_spec: cannot answer: {e}"));
            }
        }
    }

    /// Answers one command.
    fn command(&mut self, wire: &[u8]) -> Vec<u8> {
        let req = match zmqmsg::request(wire) {
            Ok(r) => r,
            Err(bad) => {
                self.warn_cmd
                    .say(format_args!("zmq.command_spec: bad request: {}", bad.why));
                let why = Value::bytes(bad.why.into_bytes());
                return zmqmsg::response(bad.id.as_deref(), Err(("bad-format", Some(why))));
            }
        };
        let id = req.id.as_deref();
        let args = &req.args;
        match req.method.as_str() {
            "conncheck" => {
                let ids = match args.get("ids") {
                    Some(Value::List(l)) => l
                        .iter()
                        .map(|v| v.as_bytes().and_then(|b| std::str::from_utf8(b).ok()))
                        .collect::<Option<Vec<&str>>>(),
                    _ => None,
                };
                let Some(ids) = ids else {
                    return zmqmsg::response(id, Err(("bad-request", None)));
                };
                let found = self
                    .plane
                    .conncheck(ids.iter().map(|s| s.to_string()).collect());
                let list = found
                    .into_iter()
                    .map(|s| Value::bytes(s.into_bytes()))
                    .collect();
                zmqmsg::response(id, Ok(Value::List(list)))
            }
            "get-zmq-uris" => {
                let m = self
                    .uris
                    .iter()
                    .map(|(k, v)| (k.as_bytes().into(), Value::bytes(v.as_bytes())))
                    .collect();
                zmqmsg::response(id, Ok(Value::Map(m)))
            }
            "recover" => {
                self.plane.bus.recover();
                zmqmsg::response(id, Ok(Value::Null))
            }
            "refresh" => {
                let target = match (args.get("cid"), args.get("channel")) {
                    (Some(Value::Bytes(c)), _) => {
                        std::str::from_utf8(c).ok().map(|c| Refresh::Cid(c.into()))
                    }
                    (None, Some(Value::Bytes(ch))) => std::str::from_utf8(ch)
                        .ok()
                        .map(|c| Refresh::Channel(c.into())),
                    _ => None,
                };
                match target {
                    None => zmqmsg::response(id, Err(("bad-request", None))),
                    Some(t @ Refresh::Cid(_)) => match self.plane.refresh(t) {
                        0 => zmqmsg::response(id, Err(("item-not-found", None))),
                        _ => zmqmsg::response(id, Ok(Value::Null)),
                    },
                    Some(t) => {
                        self.plane.refresh(t);
                        zmqmsg::response(id, Ok(Value::Null))
                    }
                }
            }
            "publish" => {
                let bad = |why: String| {
                    zmqmsg::response(
                        id,
                        Err((
                            "bad-request",
                            Some(Value::bytes(format!("Invalid format: {why}").into_bytes())),
                        )),
                    )
                };
                let list = match args.get("items") {
                    Some(Value::List(l)) => l,
                    Some(_) => return bad("object contains 'items' with wrong type".into()),
                    None => return bad("object does not contain 'items'".into()),
                };
                let mut items = Vec::with_capacity(list.len());
                let mut bytes = 0;
                for (i, v) in list.iter().enumerate() {
                    let wire = v.to_vec();
                    bytes += wire.len();
                    match zmqmsg::publish_item(&wire, None) {
                        Ok(item) => items.push(item),
                        Err(e) => {
                            let e = e.0.strip_prefix("item").unwrap_or(&e.0);
                            return bad(format!("items[{i}]{e}"));
                        }
                    }
                }
                match publish(&self.plane, items, bytes) {
                    Ok(()) => zmqmsg::response(id, Ok(Value::Null)),
                    Err(e) => {
                        zmqmsg::response(id, Err(("busy", Some(Value::bytes(e.into_bytes())))))
                    }
                }
            }
            _ => zmqmsg::response(id, Err(("method-not-found", None))),
        }
    }

    /// Applies the subscription changes the cores reported.
    fn take_events(&mut self) {
        let Some(ev) = &self.events else { return };
        let mut buf = [0u8; 256];
        while matches!((&ev.wake).read(&mut buf), Ok(n) if n > 0) {}
        // Cleared before draining: a change queued after this point wakes
        // the thread again.
        ev.pending.store(false, Ordering::Release);
        let changes: Vec<Watched> = ev.rx.try_iter().collect();
        let now = Instant::now();
        for e in changes {
            match e {
                Watched::Sub(e) => self.change(e, now),
                Watched::Item(p) => self.message(p),
                Watched::Conn(c) => self.conn(c, now),
            }
        }
    }

    /// `message` stats for a routed item: one per transport it carries
    /// that has subscribers to its channel, with their count.
    fn message(&mut self, p: Published) {
        const TRANSPORTS: [(&str, &str); 3] = [
            ("response", "http-response"),
            ("stream", "http-stream"),
            ("ws", "ws-message"),
        ];
        // One key, its mode changed per transport.
        let mut key: (&'static str, String) = ("", p.channel);
        for ((mode, transport), carried) in TRANSPORTS.into_iter().zip(p.formats) {
            if !carried {
                continue;
            }
            key.0 = mode;
            let count = self.subs.get(&key).map_or(0, |s| s.subscribers.max(0));
            if count == 0 {
                continue;
            }
            if mode == "response" {
                self.counters.http_response_sent += count.unsigned_abs();
            }
            let mut fields = vec![("channel", Value::str(&key.1))];
            if let Some(id) = &p.id {
                fields.push(("item-id", Value::str(id)));
            }
            fields.push(("count", Value::Int(count)));
            fields.push(("transport", Value::str(transport)));
            self.stat("message", fields);
        }
    }

    fn change(&mut self, e: SubEvent, now: Instant) {
        let key = (e.mode, e.channel);
        match self.subs.get_mut(&key) {
            None if e.delta > 0 => {
                self.subs.insert(
                    key.clone(),
                    SubState {
                        subscribers: i64::from(e.delta),
                        linger_until: None,
                        next_send: now,
                    },
                );
                let n = self.channels.entry(key.1.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    if let Some(s) = &self.sub {
                        let _ = s.set_subscribe(key.1.as_bytes());
                    }
                }
                self.send_sub(&key, now);
            }
            None => {}
            Some(st) => {
                st.subscribers += i64::from(e.delta);
                if st.subscribers > 0 {
                    if st.linger_until.take().is_some() {
                        self.send_sub(&key, now);
                    } else {
                        // The new count goes out with the next tick.
                        st.next_send = now;
                    }
                } else if key.0 == "response" && !self.linger.is_zero() {
                    // As Pushpin: a long-poll channel lingers, since its
                    // clients are likely to poll again.
                    st.linger_until = Some(now + self.linger);
                } else {
                    self.remove(&key);
                }
            }
        }
    }

    /// A request or WebSocket started (`conn` message) or ended (`conn`
    /// with `unavailable`), as Pushpin's stats tell them.
    fn conn(&mut self, e: ConnEvent, now: Instant) {
        match e.open {
            Some(open) => {
                self.send_conn(&e.id, &open);
                let next = now + Duration::from_millis(self.conn_ttl * 750);
                self.conns.insert(e.id, (open, next));
            }
            None => {
                if self.conns.remove(&e.id).is_some() {
                    self.stat(
                        "conn",
                        vec![
                            ("id", Value::str(&e.id)),
                            ("unavailable", Value::Bool(true)),
                        ],
                    );
                }
            }
        }
    }

    fn send_conn(&self, id: &str, open: &ConnOpen) {
        let peer = open.peer.to_string();
        let mut fields = vec![
            ("id", Value::str(id)),
            ("type", Value::str(if open.ws { "ws" } else { "http" })),
            ("peer-address", Value::str(&peer)),
        ];
        if open.ssl {
            fields.push(("ssl", Value::Bool(true)));
        }
        fields.push((
            "ttl",
            Value::Int(i64::try_from(self.conn_ttl).unwrap_or(i64::MAX)),
        ));
        self.stat("conn", fields);
    }

    fn remove(&mut self, key: &(&'static str, String)) {
        if self.subs.remove(key).is_none() {
            return;
        }
        self.stat(
            "sub",
            vec![
                ("mode", Value::str(key.0)),
                ("channel", Value::str(&key.1)),
                ("unavailable", Value::Bool(true)),
            ],
        );
        if let Some(n) = self.channels.get_mut(&key.1) {
            *n -= 1;
            if *n == 0 {
                self.channels.remove(&key.1);
                if let Some(s) = &self.sub {
                    let _ = s.set_unsubscribe(key.1.as_bytes());
                }
            }
        }
    }

    fn send_sub(&mut self, key: &(&'static str, String), now: Instant) {
        let Some(st) = self.subs.get_mut(key) else {
            return;
        };
        st.next_send = now + Duration::from_millis(self.ttl * 750);
        let subscribers = st.subscribers.max(0);
        self.stat(
            "sub",
            vec![
                ("mode", Value::str(key.0)),
                ("channel", Value::str(&key.1)),
                (
                    "ttl",
                    Value::Int(i64::try_from(self.ttl).unwrap_or(i64::MAX)),
                ),
                ("subscribers", Value::Int(subscribers)),
            ],
        );
    }

    /// Writes one stats message (nothing when there is no stats socket).
    fn stat(&self, kind: &str, fields: Vec<(&str, Value<'_>)>) {
        let Some(sock) = &self.stats else { return };
        let mut m: Vec<(std::borrow::Cow<[u8]>, Value)> = Vec::with_capacity(fields.len() + 1);
        m.push((b"from"[..].into(), Value::str(&self.from)));
        m.extend(fields.into_iter().map(|(k, v)| (k.as_bytes().into(), v)));
        let msg = zmqmsg::stats_message(self.format, kind, &Value::Map(m));
        // A PUB socket drops what no subscriber takes; it never blocks.
        let _ = sock.send(msg, zmq::DONTWAIT);
    }

    /// Lingering subscriptions expire, others are announced again, and the
    /// counters become `activity`, `counts` and `report` messages.
    fn tick(&mut self, now: Instant) {
        let expired: Vec<(&'static str, String)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.linger_until.is_some_and(|t| now >= t))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.remove(&k);
        }
        let due: Vec<(&'static str, String)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.linger_until.is_none() && now >= s.next_send)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.send_sub(&k, now);
        }
        // Open requests and WebSockets are announced again every 3/4 of
        // their ttl, as Pushpin refreshes them.
        let again = now + Duration::from_millis(self.conn_ttl * 750);
        let due: Vec<String> = self
            .conns
            .iter_mut()
            .filter(|(_, (_, next))| now >= *next)
            .map(|(id, (_, next))| {
                *next = again;
                id.clone()
            })
            .collect();
        for id in due {
            if let Some((open, _)) = self.conns.get(&id) {
                self.send_conn(&id, open);
            }
        }
        if self.stats.is_none() {
            return;
        }
        let cores = self.plane.board.all();
        let requests: u64 = cores
            .iter()
            .map(|s| s.requests_by_class.iter().sum::<u64>())
            .sum();
        let connections: u64 = cores.iter().map(|s| s.connections).sum();
        let deliveries: u64 = cores.iter().map(|s| s.deliveries).sum();
        let items = self.plane.bus.stats.items.load(Ordering::Relaxed);
        let c = &mut self.counters;
        c.connections_max = c.connections_max.max(connections);
        if let Some(prev) = c.last_tick {
            c.connection_ms += u128::from(connections) * now.duration_since(prev).as_millis();
        }
        c.last_tick = Some(now);
        let new_requests = requests.saturating_sub(c.requests);
        c.requests = requests;
        if new_requests > 0 {
            let n = i64::try_from(new_requests).unwrap_or(i64::MAX);
            self.stat("activity", vec![("count", Value::Int(n))]);
            self.stat("counts", vec![("requests-received", Value::Int(n))]);
        }
        let c = &mut self.counters;
        let last = *c.last_report.get_or_insert(now);
        if self.report_every.is_zero() || now.duration_since(last) < self.report_every {
            return;
        }
        let int = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
        // Whole connection-minutes; the rest counts toward the next report.
        let minutes = c.connection_ms / 60_000;
        c.connection_ms %= 60_000;
        let max = c.connections_max;
        let fields = vec![
            ("connections", int(max)),
            ("minutes", int(u64::try_from(minutes).unwrap_or(u64::MAX))),
            ("received", int(items.saturating_sub(c.items))),
            ("sent", int(deliveries.saturating_sub(c.deliveries))),
            ("http-response-sent", int(c.http_response_sent)),
            (
                "duration",
                int(u64::try_from(now.duration_since(last).as_millis()).unwrap_or(u64::MAX)),
            ),
        ];
        c.items = items;
        c.deliveries = deliveries;
        c.connections_max = connections;
        c.http_response_sent = 0;
        c.last_report = Some(now);
        self.stat("report", fields);
        // The highest connection count of the period, valid until the
        // next one is due (with room for one late report).
        let ttl = (self.report_every.as_secs() * 3 / 2).max(60);
        self.stat("conn-max", vec![("max", int(max)), ("ttl", int(ttl))]);
    }
}

/// Hands items to the bus within its memory bounds, as the other publish
/// paths do; says why not when they are refused.
fn publish(plane: &ControlPlane, items: Vec<Item>, bytes: usize) -> Result<(), String> {
    let bus = &plane.bus;
    bus.admit().map_err(|r| format!("backlog: {r}"))?;
    let mut budget = bus.reserve(bytes).map_err(|r| format!("busy: {r}"))?;
    let parsed: usize = items
        .iter()
        .map(|i| crate::bus::ITEM_OVERHEAD + i.payload_len())
        .sum();
    budget.grow(parsed).map_err(|r| format!("busy: {r}"))?;
    bus.count_publish();
    bus.publish(items, None);
    Ok(())
}
