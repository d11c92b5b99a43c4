//! The per-core backend client: connecting with a timeout, and a pool of
//! idle keep-alive connections bounded per backend address. Owned by one
//! core; nothing here is shared across threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpStream;

use crate::buf::{BufPool, InBuf, BUF_SIZE};
use crate::codec::http1::{parse_response, HeadLimits, ResponseHead};

/// Why a backend could not be reached.
#[derive(Debug)]
pub enum ConnectError {
    /// Name resolution gave no address.
    Resolve(String),
    /// The connect did not finish within the timeout (504).
    Timeout,
    /// Refused, unreachable, or another socket error (502).
    Failed(io::Error),
}

/// A connection to a backend with its read buffer.
pub struct Upstream {
    pub stream: TcpStream,
    pub inbuf: InBuf,
    /// Came from the idle pool (so it may have been closed meanwhile).
    pub reused: bool,
    key: Rc<str>,
}

impl Upstream {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Reads a final response head (skipping 1xx other than 101) within
    /// `timeout`; `None` on garbage, timeout or close.
    pub async fn read_head(
        &mut self,
        limits: &HeadLimits,
        was_head: bool,
        timeout: Duration,
    ) -> Option<ResponseHead> {
        let _ = self.stream.set_read_timeout(Some(timeout));
        loop {
            match parse_response(self.inbuf.data(), limits, was_head) {
                Ok(Some((n, r))) => {
                    self.inbuf.consume(n);
                    if (100..200).contains(&r.status) && r.status != 101 {
                        continue;
                    }
                    return Some(r);
                }
                Ok(None) => {}
                Err(_) => return None,
            }
            match self
                .inbuf
                .fill(&mut self.stream, limits.max_head_bytes.max(BUF_SIZE) + 1)
                .await
            {
                Ok(n) if n > 0 => {}
                _ => return None,
            }
        }
    }
}

/// The core's idle connections and resolved addresses.
pub struct Pool {
    idle: RefCell<HashMap<Rc<str>, Vec<TcpStream>>>,
    resolved: RefCell<HashMap<Rc<str>, SocketAddr>>,
    max_idle: usize,
    bufs: Rc<BufPool>,
}

/// True when an idle pooled socket still looks usable: nothing to read and
/// not closed by the peer.
fn idle_socket_alive(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv on a valid, owned socket fd into a one-byte stack buffer;
    // MSG_PEEK | MSG_DONTWAIT neither consumes data nor blocks.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

impl Pool {
    pub fn new(max_idle: usize, bufs: Rc<BufPool>) -> Self {
        Pool {
            idle: RefCell::new(HashMap::new()),
            resolved: RefCell::new(HashMap::new()),
            max_idle,
            bufs,
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
        while let Some(stream) = list.pop() {
            if !check || idle_socket_alive(&stream) {
                return Some(Upstream {
                    stream,
                    inbuf: InBuf::new(self.bufs.clone()),
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
        let _ = stream.set_nodelay(true);
        Ok(Upstream {
            stream,
            inbuf: InBuf::new(self.bufs.clone()),
            reused: false,
            key,
        })
    }

    /// Keeps a finished connection for reuse, if there is room.
    pub fn put_idle(&self, up: Upstream) {
        if self.max_idle == 0 || !up.inbuf.is_empty() {
            return;
        }
        let _ = up.stream.set_read_timeout(None);
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(up.key.clone()).or_default();
        if list.len() < self.max_idle {
            list.push(up.stream);
        }
    }

    /// Idle connections held, for stats.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}
