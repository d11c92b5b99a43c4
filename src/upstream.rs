//! The per-core backend client: connecting with a timeout (and, for `ssl`
//! targets and https:// links, a TLS handshake within the same timeout),
//! and a pool of idle keep-alive connections bounded per backend. Owned by
//! one core; nothing here is shared across threads.
//!
//! TLS connections pool apart from plain ones to the same address, and by
//! the name they were verified against: a pooled connection is only reused
//! for the same address, name and `insecure` setting.

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
use crate::tls::client::{server_name, CoreClients};
use crate::tls::HandshakeError;

/// Where a connection goes: an address, and how TLS is spoken to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    /// `host:port` (`[v6]:port`).
    pub addr: String,
    /// TLS to it (`ssl` targets, https:// links); `None`: plain TCP.
    pub tls: Option<TlsDest>,
}

/// TLS settings of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsDest {
    /// The name to verify and send as SNI instead of the address's host
    /// (a target's `host=`).
    pub name: Option<String>,
    /// Skip certificate verification (`insecure`).
    pub insecure: bool,
}

impl Dest {
    /// Plain TCP to `addr`.
    pub fn plain(addr: &str) -> Dest {
        Dest {
            addr: addr.to_string(),
            tls: None,
        }
    }

    /// A route's backend target.
    pub fn of(b: &Backend) -> Dest {
        Dest {
            addr: b.addr.clone(),
            tls: b.ssl.then(|| TlsDest {
                name: b.host.clone(),
                insecure: b.insecure,
            }),
        }
    }

    /// The idle pool's key: the address for plain TCP; for TLS, the
    /// address, the name and `insecure` (a space never occurs in either).
    fn pool_key<'a>(addr: &'a str, tls: Option<&TlsDest>) -> std::borrow::Cow<'a, str> {
        match tls {
            None => addr.into(),
            Some(t) => format!(
                "{addr} tls {} {}",
                t.name.as_deref().unwrap_or("-"),
                if t.insecure { "insecure" } else { "verify" }
            )
            .into(),
        }
    }
}

/// Where a next or gone link points: the destination and the request
/// target. A link is `http://host[:port]/path`, `https://host[:port]/path`
/// (TLS, verified against the CA store by the URL's host) or a path on
/// `base`, the route's backend (reached as the route reaches it, TLS
/// included). `None`: not a URL (`http::Uri`), another scheme, no host,
/// user information (corepin would not send it), or a path with no
/// backend (the test target).
pub fn link_dest(url: &str, base: Option<&Dest>) -> Option<(Dest, String)> {
    if url.starts_with('/') {
        return Some((base?.clone(), url.to_string()));
    }
    let uri: http::Uri = url.parse().ok()?;
    let (tls, default_port) = match uri.scheme_str()? {
        "http" => (None, 80),
        "https" => (
            Some(TlsDest {
                name: None,
                insecure: false,
            }),
            443,
        ),
        _ => return None,
    };
    let authority = uri.authority()?;
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return None;
    }
    let port = match authority.port_u16() {
        Some(port) => port,
        // Something follows the host that is not a port.
        None if authority.as_str() != authority.host() => return None,
        None => default_port,
    };
    let addr = format!("{}:{port}", authority.host());
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
        None => "/".to_string(),
    };
    Some((Dest { addr, tls }, path))
}

/// Why a backend could not be reached.
#[derive(Debug)]
pub enum ConnectError {
    /// Name resolution gave no address.
    Resolve(String),
    /// The connect did not finish within the timeout (504).
    Timeout,
    /// The TLS handshake failed (a certificate not trusted, no common
    /// protocol) or TLS could not be set up (502); why, for the log.
    Tls(String),
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
            ConnectError::Tls(_) => (502, "upstream TLS handshake failed"),
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
    /// This core's TLS client configurations.
    tls: CoreClients,
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
            tls: CoreClients::default(),
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
    pub fn take_idle(&self, to: &Dest, check: bool) -> Option<Upstream> {
        self.take_idle_key(&Dest::pool_key(&to.addr, to.tls.as_ref()), check)
    }

    fn take_idle_key(&self, pool_key: &str, check: bool) -> Option<Upstream> {
        let mut idle = self.idle.borrow_mut();
        let (key, list) = idle
            .get_key_value(pool_key)
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

    /// A new plain TCP connection to `addr`.
    pub async fn connect(&self, addr: &str, timeout: Duration) -> Result<Upstream, ConnectError> {
        self.connect_tls(addr, None, timeout).await
    }

    /// A new connection to `to`: TCP, then for TLS the handshake, all
    /// within `timeout`.
    pub async fn connect_to(&self, to: &Dest, timeout: Duration) -> Result<Upstream, ConnectError> {
        self.connect_tls(&to.addr, to.tls.as_ref(), timeout).await
    }

    async fn connect_tls(
        &self,
        addr: &str,
        tls: Option<&TlsDest>,
        timeout: Duration,
    ) -> Result<Upstream, ConnectError> {
        let started = std::time::Instant::now();
        let key = self.key(addr);
        let sa = self.resolve(&key)?;
        // Settled before connecting: a name no certificate can carry, or
        // no CA store, fails without touching the network.
        let tls = match tls {
            None => None,
            Some(t) => {
                let name = server_name(addr, t.name.as_deref()).map_err(ConnectError::Tls)?;
                let config = self.tls.config(t.insecure).map_err(ConnectError::Tls)?;
                Some((name, config, Rc::<str>::from(Dest::pool_key(addr, Some(t)))))
            }
        };
        if tls.is_none() {
            if let Some(ring) = crate::uring::current() {
                // The io_uring data path: the backend socket is the ring's
                // from its connect on (no descriptor handed over).
                let conn = connect_ring(&ring, sa, timeout).await?;
                return Ok(Upstream {
                    conn: Connection::ring(conn, self.bufs.clone()),
                    reused: false,
                    key,
                });
            }
        }
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
        let Some((name, config, tls_key)) = tls else {
            let conn = Connection::tcp(stream, self.bufs.clone());
            conn.set_nodelay();
            return Ok(Upstream {
                conn,
                reused: false,
                key,
            });
        };
        let _ = stream.set_nodelay(true);
        let mut conn = Connection::tls_client(stream, self.bufs.clone(), config, name)
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let left = timeout.saturating_sub(started.elapsed());
        match conn.handshake(left).await {
            Ok(()) => Ok(Upstream {
                conn,
                reused: false,
                key: tls_key,
            }),
            Err(HandshakeError::Timeout) => Err(ConnectError::Timeout),
            Err(e) => Err(ConnectError::Tls(e.to_string())),
        }
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
            let tls = b.ssl.then(|| TlsDest {
                name: b.host.clone(),
                insecure: b.insecure,
            });
            if let Reuse::Pooled { check } = reuse {
                if let Some(up) = self.take_idle_key(&Dest::pool_key(&b.addr, tls.as_ref()), check)
                {
                    return Ok((i, up, b));
                }
            }
            match self.connect_tls(&b.addr, tls.as_ref(), timeout).await {
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
                        ConnectError::Tls(why) => {
                            warn!("core {}: TLS to {} failed: {why}", self.core, b.addr)
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

/// Connects through the core's ring (`TCP_NODELAY` set), racing `timeout`
/// (a ring connect has none; dropping it cancels it).
async fn connect_ring(
    ring: &crate::uring::Uring,
    sa: SocketAddr,
    timeout: Duration,
) -> Result<crate::uring::UringStream, ConnectError> {
    let connect = async { ring.connect(sa).await.map_err(ConnectError::Failed) };
    let expire = async {
        glommio::timer::sleep(timeout).await;
        Err(ConnectError::Timeout)
    };
    futures_lite::future::or(connect, expire).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_as_a_table() {
        let tls = |name: Option<&str>, insecure| {
            Some(TlsDest {
                name: name.map(String::from),
                insecure,
            })
        };
        let base = Dest {
            addr: "10.0.0.1:8443".into(),
            tls: tls(Some("api.internal"), false),
        };
        // url, and the address, TLS settings and path it resolves to
        type Case = (
            &'static str,
            Option<(&'static str, Option<TlsDest>, &'static str)>,
        );
        let cases: &[Case] = &[
            ("http://a.test/x?y", Some(("a.test:80", None, "/x?y"))),
            ("http://a.test:8080", Some(("a.test:8080", None, "/"))),
            (
                "https://a.test/p",
                Some(("a.test:443", tls(None, false), "/p")),
            ),
            (
                "https://a.test:9443/p",
                Some(("a.test:9443", tls(None, false), "/p")),
            ),
            (
                "https://[::1]/p",
                Some(("[::1]:443", tls(None, false), "/p")),
            ),
            (
                "https://[::1]:8443/",
                Some(("[::1]:8443", tls(None, false), "/")),
            ),
            // A relative link goes where the route goes, TLS settings and all.
            (
                "/next?x",
                Some(("10.0.0.1:8443", tls(Some("api.internal"), false), "/next?x")),
            ),
            ("http://a.test?q", Some(("a.test:80", None, "/?q"))),
            ("ftp://a.test/", None),
            ("https:///p", None),
            ("http://user@a.test/p", None),
            ("http://a.test:x/p", None),
            ("http://a test/p", None),
            ("http://:80/p", None),
            ("next", None),
            ("", None),
        ];
        for (url, want) in cases {
            let got = link_dest(url, Some(&base));
            let want = want.as_ref().map(|(a, t, p)| {
                (
                    Dest {
                        addr: a.to_string(),
                        tls: t.clone(),
                    },
                    p.to_string(),
                )
            });
            assert_eq!(got, want, "{url}");
        }
        assert_eq!(link_dest("/p", None), None, "no backend: the test target");
    }

    #[test]
    fn tls_pools_apart_by_name_and_verification() {
        let key = |addr, tls: Option<TlsDest>| Dest::pool_key(addr, tls.as_ref()).into_owned();
        let t = |name: Option<&str>, insecure| TlsDest {
            name: name.map(String::from),
            insecure,
        };
        let keys = [
            key("a:1", None),
            key("a:1", Some(t(None, false))),
            key("a:1", Some(t(None, true))),
            key("a:1", Some(t(Some("x.test"), false))),
            key("a:2", Some(t(None, false))),
        ];
        assert_eq!(keys[0], "a:1", "plain connections pool by address alone");
        for (i, k) in keys.iter().enumerate() {
            for other in &keys[i + 1..] {
                assert_ne!(k, other);
            }
        }
    }
}
