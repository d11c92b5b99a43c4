//! The per-core backend client: connecting with a timeout (and, for `ssl`
//! targets and https:// links, a TLS handshake within the same timeout),
//! and a pool of idle keep-alive connections bounded per backend. Owned by
//! one core; nothing here is shared across threads.
//!
//! TLS connections pool apart from plain ones to the same address, and by
//! the name they were verified against: a pooled connection is only reused
//! for the same address, name and `insecure` setting.
//!
//! Outbound policy (the target property `untrusted`): a connection for an
//! untrusted target, or for a link one of its responses points to, is only
//! made to an address outside the loopback, private and link-local ranges
//! ([`denied`]); Pushpin's connection manager refuses the same ranges for
//! untrusted targets (and only for them: trusted targets, the default,
//! ignore its policies). Such connections pool apart, so a connection a
//! trusted target opened is never lent to an untrusted one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
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
    /// The outbound policy applies (`untrusted`): internal addresses are
    /// refused.
    pub untrusted: bool,
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
            untrusted: false,
        }
    }

    /// A route's backend target.
    pub fn of(b: &Backend) -> Dest {
        Dest {
            addr: b.addr.clone(),
            tls: b.ssl.then(|| TlsDest {
                name: b.tls_name().map(String::from),
                insecure: b.insecure,
            }),
            untrusted: b.untrusted,
        }
    }

    /// The idle pool's key: the address for plain TCP; for TLS, the
    /// address, the name and `insecure` (a space never occurs in either);
    /// ` untrusted` after either for the outbound policy's connections.
    fn pool_key(&self) -> String {
        let mut key = match &self.tls {
            None => self.addr.clone(),
            Some(t) => format!(
                "{} tls {} {}",
                self.addr,
                t.name.as_deref().unwrap_or("-"),
                if t.insecure { "insecure" } else { "verify" }
            ),
        };
        if self.untrusted {
            key.push_str(" untrusted");
        }
        key
    }
}

/// The outbound policy's refused ranges: Pushpin's `--deny-out-internal`
/// list (loopback 127.0.0.0/8 and ::1, private 10.0.0.0/8, 172.16.0.0/12,
/// 192.168.0.0/16 and fc00::/7, link-local 169.254.0.0/16 and fe80::/10),
/// and, beyond Pushpin's list, the unspecified addresses 0.0.0.0/8 and ::
/// (a connect to them reaches this host) and IPv4 addresses written as
/// IPv4-mapped IPv6 (`::ffff:127.0.0.1` is 127.0.0.1).
pub fn denied(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            a == 127
                || a == 10
                || a == 0
                || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 168)
                || (a == 169 && b == 254)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Where a next or gone link points: the destination and the request
/// target. A link is `http://host[:port]/path`, `https://host[:port]/path`
/// (TLS, verified against the CA store by the URL's host) or a path on
/// `base`, the route's backend (reached as the route reaches it, TLS
/// included). `None`: not a URL (`http::Uri`), another scheme, no host,
/// user information (corepin would not send it), or a path with no
/// backend (the test target). A link from an `untrusted` target's
/// response is untrusted too, wherever it points (as in Pushpin).
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
    let untrusted = base.is_some_and(|b| b.untrusted);
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
        None => "/".to_string(),
    };
    Some((
        Dest {
            addr,
            tls,
            untrusted,
        },
        path,
    ))
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
    /// Every address of an `untrusted` target is one the outbound policy
    /// refuses (502); the address, for the log.
    Policy(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Resolve(name) => write!(f, "cannot resolve {name}"),
            ConnectError::Timeout => f.write_str("connect timed out"),
            ConnectError::Tls(why) => write!(f, "TLS failed: {why}"),
            ConnectError::Failed(e) => write!(f, "connect failed: {e}"),
            ConnectError::NoTarget => f.write_str("no backend target"),
            ConnectError::Policy(at) => write!(
                f,
                "refused: untrusted target, and {at} is an internal address (loopback, private or link-local)"
            ),
        }
    }
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
            ConnectError::Policy(_) => (
                502,
                "upstream address refused: the target is untrusted and the address is internal",
            ),
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
    /// Boxed once, when connected: a request moves its `Upstream` out of
    /// the idle pool, through the exchange and back, and each move copied
    /// the whole `Connection` (a glommio stream inline, ~200 bytes).
    pub conn: Box<Connection>,
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

/// The idle connections of one pool key, with the key itself: a look-up
/// by a borrowed `&str` reaches the `Rc` to hand to the `Upstream`.
struct Idle {
    key: Rc<str>,
    /// Boxes, not values: the box goes out with the connection and back.
    #[allow(clippy::vec_box)]
    conns: Vec<Box<Connection>>,
}

/// The core's idle connections and resolved addresses.
pub struct Pool {
    idle: RefCell<HashMap<Rc<str>, Idle>>,
    resolved: RefCell<HashMap<Rc<str>, Vec<SocketAddr>>>,
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

    /// The address to connect to: the first one `key` resolves to, or
    /// (`untrusted`) the first the outbound policy allows; when it allows
    /// none, `Policy` naming the first refused.
    fn resolve(&self, key: &Rc<str>, untrusted: bool) -> Result<SocketAddr, ConnectError> {
        if !self.resolved.borrow().contains_key(key) {
            let addrs: Vec<SocketAddr> = match key.parse::<SocketAddr>() {
                Ok(a) => vec![a],
                // Names are resolved once per core and cached: a blocking
                // lookup happens at most once per backend name.
                Err(_) => key
                    .to_socket_addrs()
                    .map(|it| it.collect())
                    .unwrap_or_default(),
            };
            if addrs.is_empty() {
                return Err(ConnectError::Resolve(key.to_string()));
            }
            self.resolved.borrow_mut().insert(key.clone(), addrs);
        }
        let resolved = self.resolved.borrow();
        let addrs = resolved
            .get(key)
            .ok_or_else(|| ConnectError::Resolve(key.to_string()))?;
        if !untrusted {
            return addrs
                .first()
                .copied()
                .ok_or_else(|| ConnectError::Resolve(key.to_string()));
        }
        match addrs.iter().find(|a| !denied(a.ip())) {
            Some(a) => Ok(*a),
            None => Err(ConnectError::Policy(
                addrs.first().map(|a| a.to_string()).unwrap_or_default(),
            )),
        }
    }

    /// An idle pooled connection to `addr`, if one is there. With `check`,
    /// one that the backend has closed meanwhile is skipped (one extra
    /// syscall); without it, the caller must be able to retry the request.
    pub fn take_idle(&self, to: &Dest, check: bool) -> Option<Upstream> {
        self.take_idle_key(&to.pool_key(), check)
    }

    fn take_idle_key(&self, pool_key: &str, check: bool) -> Option<Upstream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(pool_key)?;
        while let Some(conn) = list.conns.pop() {
            if !check || conn.looks_alive() {
                return Some(Upstream {
                    conn,
                    reused: true,
                    key: list.key.clone(),
                });
            }
        }
        None
    }

    /// A new plain TCP connection to `addr`.
    pub async fn connect(&self, addr: &str, timeout: Duration) -> Result<Upstream, ConnectError> {
        self.connect_to(&Dest::plain(addr), timeout).await
    }

    /// A new connection to `to`: TCP, then for TLS the handshake, all
    /// within `timeout`. An `untrusted` destination whose addresses are
    /// all internal is refused (`Policy`) without a connect.
    pub async fn connect_to(&self, to: &Dest, timeout: Duration) -> Result<Upstream, ConnectError> {
        let started = std::time::Instant::now();
        let addr = to.addr.as_str();
        let key = self.key(addr);
        let sa = self.resolve(&key, to.untrusted)?;
        // Plain connections pool by address (policy connections apart).
        let plain_key = if to.untrusted {
            Rc::<str>::from(to.pool_key())
        } else {
            key
        };
        // Settled before connecting: a name no certificate can carry, or
        // no CA store, fails without touching the network.
        let tls = match &to.tls {
            None => None,
            Some(t) => {
                let name = server_name(addr, t.name.as_deref()).map_err(ConnectError::Tls)?;
                let config = self.tls.config(t.insecure).map_err(ConnectError::Tls)?;
                Some((name, config, Rc::<str>::from(to.pool_key())))
            }
        };
        if tls.is_none() {
            if let Some(ring) = crate::uring::current() {
                // The io_uring data path: the backend socket is the ring's
                // from its connect on (no descriptor handed over).
                let conn = connect_ring(&ring, sa, timeout).await?;
                return Ok(Upstream {
                    conn: Box::new(Connection::ring(conn, self.bufs.clone())),
                    reused: false,
                    key: plain_key,
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
            let conn = Box::new(Connection::tcp(stream, self.bufs.clone()));
            conn.set_nodelay();
            return Ok(Upstream {
                conn,
                reused: false,
                key: plain_key,
            });
        };
        let _ = stream.set_nodelay(true);
        let mut conn = Box::new(
            Connection::tls_client(stream, self.bufs.clone(), config, name)
                .map_err(|e| ConnectError::Tls(e.to_string()))?,
        );
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
            if let Reuse::Pooled { check } = reuse {
                // A plain, trusted target pools by its address as written:
                // looked up borrowed, with no `Dest` or key built per
                // request (the common keep-alive case).
                let up = if !b.ssl && !b.untrusted {
                    self.take_idle_key(&b.addr, check)
                } else {
                    self.take_idle(&Dest::of(b), check)
                };
                if let Some(up) = up {
                    return Ok((i, up, b));
                }
            }
            match self.connect_to(&Dest::of(b), timeout).await {
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
                        ConnectError::Policy(at) => warn!(
                            "core {}: connect to {} refused: untrusted target, and {at} is an internal address (loopback, private or link-local)",
                            self.core, b.addr
                        ),
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
        let list = idle.entry(up.key.clone()).or_insert_with(|| Idle {
            key: up.key.clone(),
            conns: Vec::new(),
        });
        if list.conns.len() < self.max_idle {
            list.conns.push(up.conn);
        }
    }

    /// Idle connections held, for stats.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(|l| l.conns.len()).sum()
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
            untrusted: false,
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
                        untrusted: false,
                    },
                    p.to_string(),
                )
            });
            assert_eq!(got, want, "{url}");
        }
        assert_eq!(link_dest("/p", None), None, "no backend: the test target");
        // An untrusted target's links, wherever they point, are untrusted.
        let base = Dest {
            untrusted: true,
            ..base
        };
        for url in ["/next", "http://a.test/x", "https://b.test/y"] {
            let (d, _) = link_dest(url, Some(&base)).expect(url);
            assert!(d.untrusted, "{url}");
        }
    }

    #[test]
    fn outbound_policy_ranges() {
        let refused = [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "febf::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ];
        let allowed = [
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "169.253.0.1",
            "11.0.0.1",
            "2001:db8::1",
            "fec0::1",
            "::ffff:8.8.8.8",
        ];
        for a in refused {
            assert!(denied(a.parse().expect(a)), "{a} must be refused");
        }
        for a in allowed {
            assert!(!denied(a.parse().expect(a)), "{a} must be allowed");
        }
    }

    #[test]
    fn tls_pools_apart_by_name_and_verification() {
        let key = |addr: &str, tls: Option<TlsDest>| {
            Dest {
                addr: addr.into(),
                tls,
                untrusted: false,
            }
            .pool_key()
        };
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
            Dest {
                untrusted: true,
                ..Dest::plain("a:1")
            }
            .pool_key(),
        ];
        assert_eq!(keys[0], "a:1", "plain connections pool by address alone");
        for (i, k) in keys.iter().enumerate() {
            for other in &keys[i + 1..] {
                assert_ne!(k, other);
            }
        }
    }
}
