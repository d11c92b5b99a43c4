//! The per-core backend client: connecting with a timeout, and a pool of
//! idle keep-alive connections bounded per backend address. Owned by one
//! core; nothing here is shared across threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpStream;

use crate::buf::{BufPool, BUF_SIZE};
use crate::codec::http1::{parse_response, HeadError, HeadLimits, ResponseHead};
use crate::connection::{Connection, ReadError};
use crate::route::{Backend, Target};

/// Why a backend could not be reached.
#[derive(Debug)]
pub enum ConnectError {
    /// Name resolution gave no address.
    Resolve(String),
    /// The connect did not finish within the timeout (504).
    Timeout,
    /// Refused, unreachable, or another socket error (502).
    Failed(io::Error),
    /// The route names no backend target.
    NoTarget,
}

impl ConnectError {
    /// The answer a client gets when no target could be reached.
    pub fn answer(&self) -> (u16, &'static str) {
        match self {
            ConnectError::Timeout => (504, "upstream connect timed out"),
            ConnectError::Resolve(_) => (502, "upstream name does not resolve"),
            ConnectError::Failed(_) => (502, "upstream unreachable"),
            ConnectError::NoTarget => (502, "no backend target"),
        }
    }
}

/// Whether a connection may come from the idle pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Always a new connection.
    Fresh,
    /// A pooled one if there is one; with `check`, one the backend closed
    /// meanwhile is skipped (one extra syscall); without it, the caller
    /// must be able to retry the request.
    Pooled { check: bool },
}

/// A connection to a backend.
pub struct Upstream {
    pub conn: Connection,
    /// Came from the idle pool (so it may have been closed meanwhile).
    pub reused: bool,
    key: Rc<str>,
}

impl Upstream {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Reads a final response head, skipping interim (1xx) answers other
    /// than 101, under the connection's read timeout.
    pub async fn read_response(
        &mut self,
        limits: &HeadLimits,
        was_head: bool,
    ) -> Result<ResponseHead, ReadError<HeadError>> {
        let max = limits.max_head_bytes.max(BUF_SIZE) + 1;
        loop {
            let r = self
                .conn
                .read_head(max, None, |b| parse_response(b, limits, was_head))
                .await?;
            if !(100..200).contains(&r.status) || r.status == 101 {
                return Ok(r);
            }
        }
    }

    /// Reads a final response head within `timeout`; `None` on garbage,
    /// timeout or close.
    pub async fn read_head(
        &mut self,
        limits: &HeadLimits,
        was_head: bool,
        timeout: Duration,
    ) -> Option<ResponseHead> {
        self.conn.set_read_timeout(Some(timeout));
        self.read_response(limits, was_head).await.ok()
    }
}

/// The core's idle connections and resolved addresses.
pub struct Pool {
    idle: RefCell<HashMap<Rc<str>, Vec<Connection>>>,
    resolved: RefCell<HashMap<Rc<str>, SocketAddr>>,
    max_idle: usize,
    bufs: Rc<BufPool>,
    /// The core, for log lines.
    core: usize,
}

impl Pool {
    pub fn new(max_idle: usize, bufs: Rc<BufPool>, core: usize) -> Self {
        Pool {
            idle: RefCell::new(HashMap::new()),
            resolved: RefCell::new(HashMap::new()),
            max_idle,
            bufs,
            core,
        }
    }

    fn key(&self, addr: &str) -> Rc<str> {
        if let Some((k, _)) = self.resolved.borrow().get_key_value(addr) {
            return k.clone();
        }
        Rc::from(addr)
    }

    fn resolve(&self, key: &Rc<str>) -> Result<SocketAddr, ConnectError> {
        if let Some(a) = self.resolved.borrow().get(key) {
            return Ok(*a);
        }
        let addr = match key.parse::<SocketAddr>() {
            Ok(a) => a,
            // Names are resolved once per core and cached: a blocking lookup
            // happens at most once per backend name.
            Err(_) => key
                .to_socket_addrs()
                .ok()
                .and_then(|mut it| it.next())
                .ok_or_else(|| ConnectError::Resolve(key.to_string()))?,
        };
        self.resolved.borrow_mut().insert(key.clone(), addr);
        Ok(addr)
    }

    /// An idle pooled connection to `addr`, if one is there. With `check`,
    /// one that the backend has closed meanwhile is skipped (one extra
    /// syscall); without it, the caller must be able to retry the request.
    pub fn take_idle(&self, addr: &str, check: bool) -> Option<Upstream> {
        let mut idle = self.idle.borrow_mut();
        let (key, list) = idle
            .get_key_value(addr)
            .map(|(k, _)| k.clone())
            .and_then(|k| {
                let list = idle.get_mut(&k)?;
                Some((k, list))
            })?;
        while let Some(conn) = list.pop() {
            if !check || conn.looks_alive() {
                return Some(Upstream {
                    conn,
                    reused: true,
                    key,
                });
            }
        }
        None
    }

    /// A new connection to `addr`.
    pub async fn connect(&self, addr: &str, timeout: Duration) -> Result<Upstream, ConnectError> {
        let key = self.key(addr);
        let sa = self.resolve(&key)?;
        let stream = match TcpStream::connect_timeout(sa, timeout).await {
            Ok(s) => s,
            Err(e) => {
                let e: io::Error = e.into();
                return Err(if e.kind() == io::ErrorKind::TimedOut {
                    ConnectError::Timeout
                } else {
                    ConnectError::Failed(e)
                });
            }
        };
        let conn = Connection::tcp(stream, self.bufs.clone());
        conn.set_nodelay();
        Ok(Upstream {
            conn,
            reused: false,
            key,
        })
    }

    /// A connection to the first reachable backend of `targets[from..]`
    /// (a route's failover targets, in order), with the index of the
    /// target it reached; otherwise why the last one failed. The one
    /// place where failover happens.
    pub async fn connect_first<'t>(
        &self,
        targets: &'t [Target],
        from: usize,
        reuse: Reuse,
        timeout: Duration,
    ) -> Result<(usize, Upstream, &'t Backend), ConnectError> {
        let mut last = ConnectError::NoTarget;
        for (i, target) in targets.iter().enumerate().skip(from) {
            let Target::Backend(b) = target else { continue };
            if let Reuse::Pooled { check } = reuse {
                if let Some(up) = self.take_idle(&b.addr, check) {
                    return Ok((i, up, b));
                }
            }
            match self.connect(&b.addr, timeout).await {
                Ok(up) => return Ok((i, up, b)),
                Err(e) => {
                    match &e {
                        ConnectError::Timeout => {
                            warn!("core {}: connect to {} timed out", self.core, b.addr)
                        }
                        ConnectError::Resolve(name) => {
                            warn!("core {}: cannot resolve {name}", self.core)
                        }
                        ConnectError::Failed(e) => {
                            debug!("core {}: connect to {} failed: {e}", self.core, b.addr)
                        }
                        ConnectError::NoTarget => {}
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Keeps a finished connection for reuse, if there is room.
    pub fn put_idle(&self, up: Upstream) {
        if self.max_idle == 0 || up.conn.has_input() {
            return;
        }
        up.conn.set_read_timeout(None);
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(up.key.clone()).or_default();
        if list.len() < self.max_idle {
            list.push(up.conn);
        }
    }

    /// Idle connections held, for stats.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}
