//! A programmable test backend: a thread per connection on 127.0.0.1:0,
//! a handler deciding each answer, and a record of what reached it.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

use super::{ok_response, read_request, Seen, TIMEOUT};

/// What a backend handler does with a connection after a request.
pub enum Reply {
    /// Write these bytes and keep serving the connection.
    Bytes(Vec<u8>),
    /// Write these bytes and close.
    Close(Vec<u8>),
    /// The handler wrote (or deliberately did not write) on its own; close.
    Done,
}

pub type Handler = dyn Fn(&Seen, &mut TcpStream) -> Reply + Send + Sync;

/// A threaded test backend on 127.0.0.1:0.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(
        handler: impl Fn(&Seen, &mut TcpStream) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (seen, connections, stop) = (seen.clone(), connections.clone(), stop.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let (seen, handler) = (seen.clone(), handler.clone());
                    thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(TIMEOUT));
                        let mut w = stream.try_clone().expect("clone");
                        let mut r = BufReader::new(stream);
                        while let Some(req) = read_request(&mut r) {
                            if let Ok(mut s) = seen.lock() {
                                s.push(req.clone());
                            }
                            match handler(&req, &mut w) {
                                Reply::Bytes(b) => {
                                    if w.write_all(&b).is_err() {
                                        break;
                                    }
                                }
                                Reply::Close(b) => {
                                    let _ = w.write_all(&b);
                                    break;
                                }
                                Reply::Done => break,
                            }
                        }
                    });
                }
            });
        }
        Backend {
            addr,
            seen,
            connections,
            stop,
        }
    }

    /// A backend answering every request 200 with `body`.
    pub fn fixed(body: &'static str) -> Backend {
        Backend::start(move |_, _| Reply::Bytes(ok_response(body)))
    }

    pub fn route(&self) -> String {
        format!("* {}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request reached the backend")
    }

    /// How many requests have reached the backend.
    pub fn requests(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// A gate a backend handler waits at until the test opens it: a slow
/// backend whose answer comes exactly when the test has seen what it
/// needed, instead of after a guessed pause. Clones share the gate.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Lets every waiter (present and future) through.
    pub fn open(&self) {
        let (open, cv) = &*self.0;
        if let Ok(mut o) = open.lock() {
            *o = true;
        }
        cv.notify_all();
    }

    /// Waits until the gate opens (true) or the test timeout passes (false).
    pub fn wait(&self) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        let (open, cv) = &*self.0;
        let Ok(mut o) = open.lock() else { return false };
        while !*o {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match cv.wait_timeout(o, left) {
                Ok((g, _)) => o = g,
                Err(_) => return false,
            }
        }
        true
    }
}

/// A port nothing listens on.
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
