//! The Redis adapter (redis-rs, Redis streams). Publishes are appended to
//! the stream `PREFIX.publish` (`XADD ... * publish JSON`); each node reads
//! the stream in order (`XREAD BLOCK`) from the last entry it read, so a
//! node that lost the broker for a while resumes where it stopped instead
//! of missing what other nodes published meanwhile. Two connections: one
//! for `XADD` (multiplexed, pipelined), one for the blocking `XREAD`. A
//! failed connection closes both and they are opened again with backoff.
//!
//! What confirms a publish: the reply to `XADD`, sent once the entry is in
//! the stream (and, with `appendonly yes`, written to the append-only file
//! first). Pub/sub has no such point: Redis drops a message it has not yet
//! written to a subscriber's socket when it dies, after having answered
//! the publisher.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use redis::Value;
use tokio::sync::mpsc;

use super::bridge::{Ctx, Sending};
use super::{backoff, Failure, Outgoing, CONFIRM_TIMEOUT, CONNECT_TIMEOUT};

/// The stream's entries carry the publish in this field.
pub const FIELD: &str = "publish";
/// `XADD ... MAXLEN ~ N`: the stream keeps about this many entries, enough
/// to cover a node's reconnection (seconds) at any realistic publish rate.
pub const STREAM_MAX_ENTRIES: u64 = 100_000;
/// Entries asked for per `XREAD`, and how long it blocks when there are
/// none (an idle connection is thereby checked every second).
const BATCH: usize = 1000;
const BLOCK: Duration = Duration::from_secs(1);

/// A stream entry id, `MILLISECONDS-SEQUENCE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EntryId(pub u64, pub u64);

impl EntryId {
    pub fn parse(text: &[u8]) -> Option<EntryId> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        let num = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        Some(EntryId(num(ms)?, num(seq)?))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One entry of an `XREAD` reply: its id and its publish (or why it has
/// none).
pub type Entry = (EntryId, Result<Vec<u8>, String>);

/// The entries of an `XREAD` reply for one stream (RESP2: nil, or
/// `[[key, [[id, [field, value, ...]], ...]]]`).
pub fn entries(v: Value) -> Result<Vec<Entry>, String> {
    let streams = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(a) => a,
        other => return Err(format!("XREAD answered {other:?}")),
    };
    let mut out = Vec::new();
    for s in streams {
        let not_a_stream = || "XREAD: a stream that is not [key, entries]".to_string();
        let Value::Array(kv) = s else {
            return Err(not_a_stream());
        };
        let Ok([_key, Value::Array(list)]) = <[Value; 2]>::try_from(kv) else {
            return Err(not_a_stream());
        };
        for e in list {
            let Value::Array(e) = e else {
                return Err("XREAD: an entry that is not [id, fields]".into());
            };
            let mut e = e.into_iter();
            let (Some(Value::BulkString(id)), Some(fields), None) = (e.next(), e.next(), e.next())
            else {
                return Err("XREAD: an entry that is not [id, fields]".into());
            };
            let id = EntryId::parse(&id)
                .ok_or_else(|| format!("XREAD: an entry id {:?}", String::from_utf8_lossy(&id)))?;
            out.push((id, publish_field(fields)));
        }
    }
    Ok(out)
}

/// The `publish` field of an entry's fields; any other field is refused by
/// name.
fn publish_field(fields: Value) -> Result<Vec<u8>, String> {
    let Value::Array(fields) = fields else {
        return Err("the entry's fields are not a list".into());
    };
    let mut it = fields.into_iter();
    let mut found = None;
    while let Some(name) = it.next() {
        let (Value::BulkString(name), Some(Value::BulkString(value))) = (name, it.next()) else {
            return Err("the entry's fields are not name/value strings".into());
        };
        if name != FIELD.as_bytes() {
            return Err(format!(
                "{}: unknown field (an entry holds one field, {FIELD})",
                String::from_utf8_lossy(&name).escape_debug()
            ));
        }
        if found.replace(value).is_some() {
            return Err(format!("{FIELD}: given twice"));
        }
    }
    found.ok_or_else(|| format!("the entry has no {FIELD} field"))
}

/// What `XINFO STREAM` says that matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamInfo {
    pub length: u64,
    pub last_generated: EntryId,
    /// Redis 7 and later: entries ever added, and the largest id removed.
    pub entries_added: Option<u64>,
    pub max_deleted: Option<EntryId>,
}

/// Reads an `XINFO STREAM` reply (RESP2: a flat name/value list).
pub fn stream_info(v: &Value) -> Result<StreamInfo, String> {
    let Value::Array(a) = v else {
        return Err(format!("XINFO STREAM answered {v:?}"));
    };
    let mut info = StreamInfo::default();
    let mut last = None;
    let id = |v: &Value| match v {
        Value::BulkString(b) => EntryId::parse(b),
        Value::SimpleString(s) => EntryId::parse(s.as_bytes()),
        _ => None,
    };
    for pair in a.chunks(2) {
        let [name, value] = pair else { continue };
        match (name_of(name), value) {
            (Some("length"), Value::Int(n)) => info.length = (*n).max(0) as u64,
            (Some("last-generated-id"), v) => last = id(v),
            (Some("entries-added"), Value::Int(n)) => info.entries_added = Some((*n).max(0) as u64),
            (Some("max-deleted-entry-id"), v) => info.max_deleted = id(v),
            _ => {}
        }
    }
    info.last_generated = last.ok_or("XINFO STREAM: no last-generated-id")?;
    Ok(info)
}

fn name_of(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Where this node is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    /// The last entry read (or, at start, the stream's last).
    last: EntryId,
    /// How many entries the stream had ever been given up to and including
    /// `last` (its `entries-added` then; Redis 7 and later).
    added: Option<u64>,
}

impl Position {
    /// The next entry is read.
    fn advance(&mut self, id: EntryId) {
        self.last = id;
        self.added = self.added.map(|n| n + 1);
    }
}

/// What a reconnecting node makes of the stream it finds: where to read
/// from, and what it lost meanwhile (`missed` messages, or a stream made
/// anew).
#[derive(Debug, PartialEq, Eq)]
enum Resume {
    From(Position),
    Missed(Position, u64),
    Reset,
}

fn resume(pos: Position, now: Option<StreamInfo>) -> Resume {
    let Some(now) = now else {
        // No stream at all: it was removed, or the broker lost it, unless
        // there never was one.
        return if pos.last == EntryId::default() {
            Resume::From(pos)
        } else {
            Resume::Reset
        };
    };
    if now.last_generated < pos.last {
        return Resume::Reset;
    }
    if let (Some(then), Some(added)) = (pos.added, now.entries_added) {
        if added < then {
            return Resume::Reset;
        }
        if now.max_deleted.is_some_and(|m| m > pos.last) {
            // Trimming removes the oldest first: every entry left is newer
            // than this node's position, and the others added since were
            // trimmed before this node read them.
            let n = (added - then).saturating_sub(now.length);
            return Resume::Missed(pos, n);
        }
    }
    Resume::From(pos)
}

/// Where a node that has just started reads from: what is added next.
fn start(now: Option<StreamInfo>) -> Position {
    match now {
        None => Position {
            last: EntryId::default(),
            added: Some(0),
        },
        Some(i) => Position {
            last: i.last_generated,
            added: i.entries_added,
        },
    }
}

pub(super) async fn run(ctx: Rc<Ctx>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let url = ctx.cluster.settings.brokers[0].clone();
    let key = ctx.cluster.settings.subject();
    let client = match redis::Client::open(url.full()) {
        Ok(c) => c,
        Err(e) => {
            error!("cluster: {url}: {e}");
            ctx.down(&format!("{url}: {e}"));
            while let Some(o) = rx.recv().await {
                ctx.refuse(o, Failure::Unavailable(format!("{url}: {e}")));
            }
            return;
        }
    };
    let mut pos: Option<Position> = None;
    let mut attempt = 0usize;
    loop {
        match connect(&ctx, &client, &key, &mut pos).await {
            Ok((conn, read_conn, p)) => {
                attempt = 0;
                ctx.connected(None);
                let (why, at) = serve(&ctx, &mut rx, conn, read_conn, &key, p).await;
                pos = Some(at);
                match why {
                    Some(why) => ctx.down(&why),
                    None => return,
                }
            }
            Err(e) => ctx.down(&e),
        }
        // Wait before the next attempt; publishes meanwhile are refused.
        let pause = tokio::time::sleep(backoff(attempt));
        attempt += 1;
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                out = rx.recv() => match out {
                    Some(o) => {
                        let why = ctx.cluster.unhealthy().unwrap_or_default();
                        ctx.refuse(o, Failure::Unavailable(why.trim_end().to_string()));
                    }
                    None => return,
                },
            }
        }
        ctx.sweep();
    }
}

/// Opens both connections and works out where to read from.
async fn connect(
    ctx: &Ctx,
    client: &redis::Client,
    key: &str,
    pos: &mut Option<Position>,
) -> Result<
    (
        redis::aio::MultiplexedConnection,
        redis::aio::MultiplexedConnection,
        Position,
    ),
    String,
> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONFIRM_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    let read_conn = client
        .get_multiplexed_async_connection_with_config(
            &config.set_response_timeout(Some(BLOCK + CONFIRM_TIMEOUT)),
        )
        .await
        .map_err(|e| e.to_string())?;
    let info: Option<StreamInfo> = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async::<Value>(&mut conn)
        .await
    {
        Ok(v) => Some(stream_info(&v).map_err(|e| format!("{key}: {e}"))?),
        Err(e) if e.to_string().contains("no such key") => None,
        Err(e) => return Err(format!("XINFO STREAM {key}: {e}")),
    };
    let p = match *pos {
        None => start(info),
        Some(p) => match resume(p, info) {
            Resume::From(p) => p,
            Resume::Missed(p, n) => {
                ctx.missed(
                    n,
                    &format!("the stream {key} was trimmed (MAXLEN) past them before this node read them"),
                );
                p
            }
            Resume::Reset => {
                ctx.reset(&format!(
                    "the stream {key} was made anew (a broker restarted without persistence, or the key was removed)"
                ));
                start(None)
            }
        },
    };
    *pos = Some(p);
    Ok((conn, read_conn, p))
}

/// Serves a connected link until it fails (`Some(why)`) or the node stops
/// (`None`); returns where reading got to.
async fn serve(
    ctx: &Rc<Ctx>,
    rx: &mut mpsc::UnboundedReceiver<Outgoing>,
    conn: redis::aio::MultiplexedConnection,
    read_conn: redis::aio::MultiplexedConnection,
    key: &str,
    pos: Position,
) -> (Option<String>, Position) {
    let at = Rc::new(Cell::new(pos));
    let mut reader =
        tokio::task::spawn_local(read(ctx.clone(), read_conn, key.to_string(), at.clone()));
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    let why = loop {
        tokio::select! {
            biased;
            why = &mut reader => break Some(why.unwrap_or_else(|e| format!("the reader stopped: {e}"))),
            out = rx.recv() => match out {
                Some(o) => publish(ctx, &conn, key, o),
                None => break None,
            },
            _ = sweep.tick() => ctx.sweep(),
        }
    };
    reader.abort();
    (why, at.get())
}

/// Reads the stream and hands each entry to the bus, until it fails.
async fn read(
    ctx: Rc<Ctx>,
    mut conn: redis::aio::MultiplexedConnection,
    key: String,
    at: Rc<Cell<Position>>,
) -> String {
    loop {
        let r = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(at.get().last.to_string())
            .query_async::<Value>(&mut conn)
            .await;
        let list = match r.map_err(|e| e.to_string()).and_then(entries) {
            Ok(l) => l,
            Err(e) => return format!("XREAD {key}: {e}"),
        };
        for (id, publish) in list {
            ctx.flow().await;
            match publish {
                Ok(payload) => ctx.receive(&payload),
                Err(e) => ctx.invalid(&format!("entry {id}: {e}")),
            }
            // Past it only once it is handed over: a reader stopped in
            // between reads it again.
            let mut p = at.get();
            p.advance(id);
            at.set(p);
        }
    }
}

/// Sends one `XADD` on its own task (replies come back in order on the
/// multiplexed connection); the reply confirms it.
fn publish(ctx: &Rc<Ctx>, conn: &redis::aio::MultiplexedConnection, key: &str, o: Outgoing) {
    let Sending { payload, done, at } = ctx.keep_items(o);
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key)
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_MAX_ENTRIES)
        .arg("*")
        .arg(FIELD)
        .arg(&payload[..]);
    let (ctx, mut conn) = (ctx.clone(), conn.clone());
    tokio::task::spawn_local(async move {
        match cmd.query_async::<Value>(&mut conn).await {
            Ok(_) => ctx.confirmed(at, done),
            Err(e) => ctx.unconfirmed(done, format!("XADD failed: {e}")),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entry_ids() {
        assert_eq!(EntryId::parse(b"1733-7"), Some(EntryId(1733, 7)));
        assert_eq!(EntryId(0, 0).to_string(), "0-0");
        for bad in [
            &b""[..],
            b"1",
            b"1-",
            b"-1",
            b"a-1",
            b"1-2-3",
            b"+1-2",
            b"99999999999999999999-0",
        ] {
            assert_eq!(EntryId::parse(bad), None, "{bad:?}");
        }
        assert!(EntryId(2, 0) > EntryId(1, 9));
    }

    #[test]
    fn xread_replies() {
        assert_eq!(entries(Value::Nil), Ok(vec![]));
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("corepin.publish"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("5-0"),
                    Value::Array(vec![bulk("publish"), bulk("{\"items\":[]}")]),
                ]),
                Value::Array(vec![
                    bulk("5-1"),
                    Value::Array(vec![bulk("other"), bulk("x")]),
                ]),
                Value::Array(vec![bulk("6-0"), Value::Array(vec![])]),
                Value::Array(vec![
                    bulk("7-0"),
                    Value::Array(vec![bulk("publish"), bulk("a"), bulk("publish"), bulk("b")]),
                ]),
            ]),
        ])]);
        let got = entries(reply).expect("valid");
        assert_eq!(got[0], (EntryId(5, 0), Ok(b"{\"items\":[]}".to_vec())));
        assert_eq!(got[1].0, EntryId(5, 1));
        assert!(got[1]
            .1
            .as_ref()
            .expect_err("other")
            .contains("other: unknown field"));
        assert!(got[2]
            .1
            .as_ref()
            .expect_err("none")
            .contains("no publish field"));
        assert!(got[3]
            .1
            .as_ref()
            .expect_err("twice")
            .contains("given twice"));
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk("k")])]),
            Value::Array(vec![Value::Array(vec![
                bulk("k"),
                Value::Array(vec![bulk("1-0")]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk("k"),
                Value::Array(vec![Value::Array(vec![bulk("x"), Value::Array(vec![])])]),
            ])]),
        ] {
            assert!(entries(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn xinfo_replies() {
        let v = Value::Array(vec![
            bulk("length"),
            Value::Int(3),
            bulk("radix-tree-keys"),
            Value::Int(1),
            bulk("last-generated-id"),
            bulk("9-2"),
            bulk("max-deleted-entry-id"),
            bulk("4-0"),
            bulk("entries-added"),
            Value::Int(12),
            bulk("first-entry"),
            Value::Nil,
        ]);
        assert_eq!(
            stream_info(&v),
            Ok(StreamInfo {
                length: 3,
                last_generated: EntryId(9, 2),
                entries_added: Some(12),
                max_deleted: Some(EntryId(4, 0)),
            })
        );
        // Redis 6: no entries-added, no max-deleted-entry-id.
        let v = Value::Array(vec![
            bulk("length"),
            Value::Int(0),
            bulk("last-generated-id"),
            bulk("0-0"),
        ]);
        assert_eq!(stream_info(&v).expect("valid").entries_added, None);
        assert!(stream_info(&Value::Array(vec![bulk("length"), Value::Int(0)])).is_err());
    }

    #[test]
    fn resuming_after_a_reconnection() {
        let pos = Position {
            last: EntryId(10, 0),
            added: Some(100),
        };
        let info = |last: EntryId, added: u64, deleted: EntryId, length: u64| StreamInfo {
            length,
            last_generated: last,
            entries_added: Some(added),
            max_deleted: Some(deleted),
        };
        // Nothing trimmed past this node: resume.
        assert_eq!(
            resume(pos, Some(info(EntryId(20, 0), 110, EntryId(3, 0), 50))),
            Resume::From(pos)
        );
        // Trimmed past it: 10 added since, 7 left: 3 missed.
        assert_eq!(
            resume(pos, Some(info(EntryId(20, 0), 110, EntryId(15, 0), 7))),
            Resume::Missed(pos, 3)
        );
        // Made anew: fewer ever added than up to this node's position, an
        // older last id, or no stream at all.
        assert_eq!(
            resume(pos, Some(info(EntryId(30, 0), 99, EntryId(0, 0), 2))),
            Resume::Reset
        );
        assert_eq!(
            resume(pos, Some(info(EntryId(9, 0), 200, EntryId(0, 0), 2))),
            Resume::Reset
        );
        assert_eq!(resume(pos, None), Resume::Reset);
        // A stream that never existed stays new.
        let fresh = start(None);
        assert_eq!(resume(fresh, None), Resume::From(fresh));
        // Reading advances the count with the position.
        let mut p = start(Some(info(EntryId(5, 0), 40, EntryId(0, 0), 40)));
        p.advance(EntryId(6, 0));
        assert_eq!(
            p,
            Position {
                last: EntryId(6, 0),
                added: Some(41)
            }
        );
        // Redis 6 (no entries-added): only the last id tells.
        let old = Position {
            last: EntryId(10, 0),
            added: None,
        };
        let mut i = info(EntryId(20, 0), 0, EntryId(15, 0), 1);
        i.entries_added = None;
        assert_eq!(resume(old, Some(i)), Resume::From(old));
    }
}
