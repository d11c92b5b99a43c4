//! The control socket: a Unix stream socket taking newline-delimited JSON
//! requests (`publish`, `stats`, `reload`, `conncheck`, `channels`), one JSON line
//! answered per request. Served by plain threads (the control plane may
//! block; executors never do), one per connection and at most
//! `MAX_CONNECTIONS` of them: a connection over that is answered with an
//! error line and closed. What only a core can do is sent to the cores
//! as `wake::Command`s.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bus::Bus;
use crate::codec::json::{self, NumText, Str};
use crate::config::{load_routes, RoutesSource};
use crate::stats::Board;

/// Longest request line accepted (a publish body plus framing).
const MAX_LINE: usize = 2 << 20;
/// Control socket connections served at once (one thread each).
pub const MAX_CONNECTIONS: usize = 64;

pub use crate::wake::{Applied, Command, CoreLinks, Refresh, Target};

/// Everything the control plane works with.
pub struct ControlPlane {
    pub bus: Arc<Bus>,
    pub board: Arc<Board>,
    pub links: CoreLinks,
    pub routes: RoutesSource,
    /// Where publishes go: the bus, or a cluster's broker.
    pub publisher: crate::cluster::Publisher,
    /// The TLS listeners' certificates (`None`: no TLS listener).
    pub tls: Option<Mutex<crate::tls::Reloadable>>,
}

impl ControlPlane {
    /// Re-reads the routes and hands them to every core; a bad source
    /// keeps the old routes. Returns the new route count.
    pub fn reload(&self) -> Result<usize, String> {
        // The same reading and validation as at start-up.
        let routes = load_routes(&self.routes).map_err(|e| e.0)?;
        for w in crate::tls::backend_targets(&routes)? {
            warn!("{w}");
        }
        let n = routes.iter().count();
        let routes = Arc::new(routes);
        self.links.send_all(|| Command::Routes(routes.clone()));
        Ok(n)
    }

    /// Reads the TLS listeners' certificates again and hands the new
    /// configuration to every core; a bad file keeps the old ones and says
    /// why. `None`: no TLS listener.
    pub fn reload_tls(&self) -> Option<Result<(), String>> {
        let tls = self.tls.as_ref()?;
        let Ok(mut tls) = tls.lock() else {
            return Some(Err(
                "certificates not reloaded: the TLS state is poisoned".into()
            ));
        };
        Some(tls.reload().map(|config| {
            self.links.send_all(|| Command::Tls(config.clone()));
        }))
    }

    /// Reloads the routes and the certificates (SIGHUP, the control
    /// socket's `reload`), logging how each went; the routes' result.
    pub fn reload_all(&self, why: &str) -> Result<usize, String> {
        match self.reload_tls() {
            Some(Ok(())) => info!("{why}: certificates reloaded"),
            Some(Err(e)) => error!("{why}: {e}"),
            None => {}
        }
        self.reload()
    }

    /// The ids among `ids` that some core has connected. Runs on a
    /// control-plane thread, never an executor, so it may wait for the
    /// cores' answers.
    #[allow(clippy::disallowed_methods)]
    pub fn conncheck(&self, ids: Vec<String>) -> Vec<String> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.links
            .send_all(|| Command::Conncheck(ids.clone(), tx.clone()));
        drop(tx);
        let mut found = Vec::new();
        for _ in 0..self.links.cores() {
            match rx.recv_timeout(Duration::from_secs(2)) {
                Ok(mut v) => found.append(&mut v),
                Err(_) => break,
            }
        }
        found.sort();
        found.dedup();
        found
    }

    /// Refreshes sessions on every core; returns how many were found.
    /// Runs on a control-plane thread (it waits for the cores' answers).
    #[allow(clippy::disallowed_methods)]
    pub fn refresh(&self, target: Refresh) -> usize {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.links
            .send_all(|| Command::Refresh(target.clone(), tx.clone()));
        drop(tx);
        let mut found = 0;
        for _ in 0..self.links.cores() {
            match rx.recv_timeout(Duration::from_secs(2)) {
                Ok(n) => found += n,
                Err(_) => break,
            }
        }
        found
    }

    /// Applies `action` to the connection `id` on the core that made the
    /// id (ids name their core); `NotHere` when it has no such connection,
    /// or the id is not one of corepin's. Runs on a control-plane thread.
    #[allow(clippy::disallowed_methods)]
    pub fn target(&self, id: &str, action: &Target) -> Applied {
        let Some(core) = crate::targets::owner(id, self.links.cores()) else {
            return Applied::NotHere;
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.links
            .send_to(core, Command::Target(id.to_string(), action.clone(), tx));
        rx.recv_timeout(Duration::from_secs(2))
            .unwrap_or(Applied::NotHere)
    }

    /// The control socket's answer to a `connection` request.
    pub fn connection(&self, v: &Value) -> Value {
        match connection_request(v) {
            Ok((id, action)) => match self.target(&id, &action) {
                Applied::Done => json!({"ok": true, "id": id}),
                a => json!({"ok": false, "id": id, "error": target_error(&id, &a)}),
            },
            Err(e) => json!({"ok": false, "error": e}),
        }
    }

    pub fn stats(&self) -> Value {
        let cores = self.board.all();
        let sum = |f: &dyn Fn(&crate::stats::Snapshot) -> u64| cores.iter().map(f).sum::<u64>();
        let b = &self.bus.stats;
        json!({
            "ok": true,
            "connections": sum(&|s| s.connections),
            "streams": sum(&|s| s.streams),
            "long_polls": sum(&|s| s.long_polls),
            "websockets": sum(&|s| s.websockets),
            "subscriptions": sum(&|s| s.subscriptions),
            "requests": sum(&|s| s.requests_by_class.iter().sum()),
            "publishes": b.publishes.load(Ordering::Relaxed),
            "published_items": b.items.load(Ordering::Relaxed),
            "deliveries": sum(&|s| s.deliveries),
            "drops": sum(&|s| s.drops + s.stalls),
            "deduplicated": b.deduplicated.load(Ordering::Relaxed),
            "reordered": b.reordered.load(Ordering::Relaxed),
            "cores": cores,
            "cluster": self.publisher.cluster().map(|c| c.stats_json()),
        })
    }

    /// Answers one request line.
    pub fn handle_line(&self, line: &[u8]) -> Value {
        let fail = |e: String| json!({"ok": false, "error": e});
        // A publish (the hot, and possibly large, request) is recognised
        // without building a tree, and parsed once, straight into items.
        if crate::codec::publish::root_member(line, "method") == Some(&b"\"publish\""[..]) {
            return match self.publish(line) {
                Ok(n) => json!({"ok": true, "published": n}),
                Err(e) => fail(e),
            };
        }
        let v: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return fail(format!("invalid JSON: {e}")),
        };
        match v.get("method").and_then(Value::as_str) {
            Some("publish") => match self.publish(line) {
                Ok(n) => json!({"ok": true, "published": n}),
                Err(e) => fail(e),
            },
            Some("stats") => self.stats(),
            Some("recover") => {
                self.bus.recover();
                json!({"ok": true})
            }
            Some("reload") => {
                let tls = self.reload_tls();
                match (self.reload(), tls) {
                    (Ok(n), None) => json!({"ok": true, "routes": n}),
                    (Ok(n), Some(Ok(()))) => {
                        info!("reload: certificates reloaded");
                        json!({"ok": true, "routes": n, "certificates": true})
                    }
                    (Err(e), _) => {
                        warn!("reload refused, keeping the old routes: {e}");
                        fail(e)
                    }
                    (Ok(_), Some(Err(e))) => {
                        warn!("reload: {e}");
                        fail(e)
                    }
                }
            }
            Some("conncheck") => match conncheck_ids(&v) {
                Ok(ids) => json!({"ok": true, "ids": self.conncheck(ids)}),
                Err(e) => fail(e),
            },
            Some("channels") => match channels_query(&v) {
                Ok(q) => {
                    let mut a = channels_json(&self.board, &q);
                    a["ok"] = true.into();
                    a
                }
                Err(e) => fail(e),
            },
            Some("connection") => self.connection(&v),
            Some(m) => fail(format!(
                "unknown method '{}' (publish, stats, reload, conncheck, recover, channels, connection)",
                m.escape_debug()
            )),
            None => fail("missing \"method\"".into()),
        }
    }

    /// A `publish` line: within the bus's memory bounds, parsed and handed
    /// out (this runs on a control-socket thread, never on a core). The
    /// error says why not: a bad item by name, "busy" or "backlog".
    fn publish(&self, line: &[u8]) -> Result<usize, String> {
        let refused = |r: crate::bus::Refused| match r {
            crate::bus::Refused::Busy { .. } => format!("busy: {r}"),
            crate::bus::Refused::Backlog { .. } => format!("backlog: {r}"),
        };
        self.bus.admit().map_err(refused)?;
        let mut budget = self.bus.reserve(line.len()).map_err(refused)?;
        let items = crate::codec::publish::parse_with(line, &["method"]).map_err(|e| e.0)?;
        let parsed: usize = items
            .iter()
            .map(|i| crate::bus::ITEM_OVERHEAD + i.payload_len())
            .sum();
        budget.grow(parsed).map_err(refused)?;
        let n = items.len();
        if let Some(c) = self.publisher.cluster() {
            // In a cluster the broker takes it; the bridge hands it to the
            // bus. This thread may wait for the broker's confirmation.
            let items_json = crate::codec::publish::root_member(line, "items").unwrap_or(b"[]");
            return c
                .submit(items_json, items)
                .and_then(crate::cluster::Ticket::wait)
                .map(|()| n)
                .map_err(|f| f.to_string());
        }
        self.bus.count_publish();
        self.bus.publish(items, None);
        Ok(n)
    }
}

pub use crate::targets::{no_connection, request as connection_request};

/// Why a `connection` request was not applied.
pub fn target_error(id: &str, a: &Applied) -> String {
    match a {
        Applied::NoFormat(kind, format) => format!(
            "connection '{}' is {kind}: the request has no {format}",
            id.escape_debug()
        ),
        _ => no_connection(id),
    }
}

/// The `conncheck` request's `ids`: a list of Connection-Ids (strings);
/// anything else in it is refused rather than skipped.
fn conncheck_ids(v: &Value) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Conncheck {
        #[serde(rename = "method")]
        _method: IgnoredAny,
        ids: Option<json::StrList>,
    }
    match json::from_value::<Conncheck>(v) {
        Ok(Conncheck { ids: Some(l), .. }) => Ok(l.0),
        Ok(_) => Err("conncheck needs \"ids\": [..]".into()),
        Err(e) => Err(format!("conncheck: {}", e.explain("", "", ""))),
    }
}

/// The `channels` request's query: members `channel`, `prefix` (strings)
/// and `top` (a number); any other member is refused by name.
fn channels_query(v: &Value) -> Result<crate::codec::counts::Query, String> {
    if !v.is_object() {
        return Err("a request is a JSON object".into());
    }
    let q: ChannelsRequest = json::from_value(v).map_err(|e| match e.unknown_field() {
        Some((_, k)) => format!(
            "channels: unknown member '{}' (channel, prefix, top)",
            k.escape_debug()
        ),
        None => e.explain("", "", ""),
    })?;
    crate::codec::counts::Query::build(
        q.channel.as_ref().map(|c| c.0.as_ref()),
        q.prefix.as_ref().map(|p| p.0.as_ref()),
        q.top.as_ref().map(|t| t.0.as_str()),
    )
}

/// The `channels` request's members (`method` is the control socket's).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsRequest<'a> {
    #[serde(default, rename = "method")]
    _method: Option<IgnoredAny>,
    #[serde(default, borrow)]
    channel: Option<Str<'a>>,
    #[serde(default, borrow)]
    prefix: Option<Str<'a>>,
    #[serde(default)]
    top: Option<NumText>,
}

/// Channel counts as JSON: `{"channels": [{"channel", "subscribers"}]}`.
pub fn channels_json(board: &Board, q: &crate::codec::counts::Query) -> Value {
    let list: Vec<Value> = board
        .channel_counts(q)
        .into_iter()
        .map(|(c, n)| json!({"channel": c, "subscribers": n}))
        .collect();
    json!({ "channels": list })
}

/// Binds the control socket: a stale file is replaced; a socket some
/// running corepin answers on is an error.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, String> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another corepin is running with control socket {} (stop it, or give --control-socket another path)",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale control socket {}: {e}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .map_err(|e| format!("cannot bind control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    Ok(l)
}

/// A control connection's place among the `MAX_CONNECTIONS`; given back
/// when its thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers a connection over `MAX_CONNECTIONS` with one error line, without
/// blocking the accepting thread, and closes it.
fn refuse(mut conn: UnixStream) {
    let _ = conn.set_nonblocking(true);
    let mut out = json!({
        "ok": false,
        "error": format!("too many control socket connections (at most {MAX_CONNECTIONS} at once); try again later"),
    })
    .to_string()
    .into_bytes();
    out.push(b'\n');
    let _ = conn.write_all(&out);
}

/// Serves the socket on background threads.
pub fn spawn(listener: UnixListener, plane: Arc<ControlPlane>) {
    let _ = std::thread::Builder::new()
        .name("corepin-control".into())
        .spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            // One report per 10 s of refusals and accept failures.
            let mut next_report = Instant::now();
            let mut unreported = 0u64;
            let mut report = |what: &str| {
                unreported += 1;
                if Instant::now() >= next_report {
                    warn!("control socket: {what} ({unreported} since the last report)");
                    unreported = 0;
                    next_report = Instant::now() + Duration::from_secs(10);
                }
            };
            for conn in listener.incoming() {
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, say: wait rather than spin.
                        report(&format!("accept failed: {e}"));
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::Relaxed);
                    report(&format!(
                        "{MAX_CONNECTIONS} connections open; refusing more"
                    ));
                    refuse(conn);
                    continue;
                }
                let slot = Slot(active.clone());
                let plane = plane.clone();
                let _ = std::thread::Builder::new()
                    .name("corepin-ctl-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        serve(conn, &plane)
                    });
            }
        });
}

fn serve(conn: UnixStream, plane: &ControlPlane) {
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut too_long = false;
        // Read one line, refusing (but draining) one longer than MAX_LINE.
        loop {
            let buf = match r.fill_buf() {
                Ok([]) => return,
                Ok(b) => b,
                Err(_) => return,
            };
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            if line.len() + chunk.len() <= MAX_LINE {
                line.extend_from_slice(chunk);
            } else {
                too_long = true;
            }
            let n = chunk.len();
            r.consume(n);
            if done {
                break;
            }
        }
        let text = line.trim_ascii();
        if text.is_empty() && !too_long {
            continue;
        }
        let answer = if too_long {
            json!({"ok": false, "error": format!("request line longer than {MAX_LINE} bytes")})
        } else {
            plane.handle_line(text)
        };
        let mut out = answer.to_string().into_bytes();
        out.push(b'\n');
        if w.write_all(&out).is_err() {
            return;
        }
    }
}

/// Removes the socket file at exit.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
