//! How a core hears from outside: the wake protocol, the commands and the
//! links that carry them, in one place.
//!
//! Each core owns one end of a Unix socket pair, its wake socket. Other
//! threads write single bytes to the other end:
//!
//! - `PUBLISH` (written by the bus): items wait in the core's inbox;
//! - `COMMAND` (written by `CoreLinks`): `Command`s wait on the core's
//!   channel;
//! - `DRAIN` (written by the server on a signal): stop accepting, drain.
//!
//! Bytes written while a core is busy pile up and are read together, so
//! many wakes of one kind make one. A publish made on the core itself
//! writes no byte: it kicks the core's delivery task (`Kick`) directly.
//! The core reads its end with `listen`; a closed socket means a drain.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crossbeam_channel::{Receiver, Sender};
use futures_lite::AsyncReadExt;

use crate::route::Routes;

/// The wake byte that means "publishes are waiting".
pub const PUBLISH: u8 = b'P';
/// The wake byte that means "commands are waiting".
pub const COMMAND: u8 = b'C';
/// The wake byte that means "stop accepting and drain".
pub const DRAIN: u8 = b'T';

/// What one read of a wake socket asks for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wakes {
    pub publish: bool,
    pub command: bool,
    pub drain: bool,
}

impl Wakes {
    /// The wakes in `bytes` (unknown bytes are ignored: a byte is only
    /// ever written by this module's senders).
    pub fn of(bytes: &[u8]) -> Wakes {
        Wakes {
            publish: bytes.contains(&PUBLISH),
            command: bytes.contains(&COMMAND),
            drain: bytes.contains(&DRAIN),
        }
    }
}

/// Reads a core's end of its wake socket, calling `on` for each read,
/// until the socket closes or fails (the caller then drains).
pub async fn listen(mut wake: glommio::net::UnixStream, mut on: impl FnMut(Wakes)) {
    let mut bytes = [0u8; 64];
    loop {
        match wake.read(&mut bytes).await {
            Ok(0) | Err(_) => return,
            Ok(n) => on(Wakes::of(&bytes[..n])),
        }
    }
}

/// Something only a core can do, sent to it by the control plane.
pub enum Command {
    /// Use these routes for new requests from now on.
    Routes(Arc<Routes>),
    /// Use this TLS configuration (reloaded certificates) for new
    /// connections from now on.
    Tls(Arc<rustls::ServerConfig>),
    /// Which of these Connection-Ids are connected here?
    Conncheck(Vec<String>, Sender<Vec<String>>),
    /// Make WebSocket-over-HTTP sessions send a request to their backend
    /// now (Pushpin's `refresh`); answers how many were found here.
    Refresh(Refresh, Sender<usize>),
    /// Send to, or close, the held connection with this Connection-Id;
    /// answers how that went (`NotHere` when it is not on this core).
    Target(String, Target, Sender<Applied>),
}

pub use crate::targets::{Applied, Target};

/// Which sessions a `refresh` is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// The session with this Connection-Id.
    Cid(String),
    /// Every WebSocket subscribed to this channel.
    Channel(String),
}

/// Ways to reach every core from a control thread.
pub struct CoreLinks {
    wakes: Vec<UnixStream>,
    commands: Vec<Sender<Command>>,
}

impl CoreLinks {
    /// Links over `wakes` (clones of the cores' wake sockets); returns the
    /// per-core command receivers in the same order.
    pub fn new(wakes: Vec<UnixStream>) -> (CoreLinks, Vec<Receiver<Command>>) {
        let (commands, receivers) = wakes.iter().map(|_| crossbeam_channel::unbounded()).unzip();
        (CoreLinks { wakes, commands }, receivers)
    }

    /// Writes a wake byte to every core.
    pub fn wake_all(&self, byte: u8) {
        for mut w in &self.wakes {
            let _ = w.write_all(&[byte]);
        }
    }

    /// Sends every core its own `make()`, then wakes them all.
    pub fn send_all(&self, make: impl Fn() -> Command) {
        for c in &self.commands {
            let _ = c.send(make());
        }
        self.wake_all(COMMAND);
    }

    /// Sends core `core` the command and wakes it.
    pub fn send_to(&self, core: usize, command: Command) {
        if let (Some(c), Some(mut w)) = (self.commands.get(core), self.wakes.get(core)) {
            let _ = c.send(command);
            let _ = w.write_all(&[COMMAND]);
        }
    }

    pub fn cores(&self) -> usize {
        self.commands.len()
    }
}

/// A wake-up for one task on this core: `kick` before or while the task
/// waits makes its next `wait` return at once; many kicks make one wake.
#[derive(Default)]
pub struct Kick {
    due: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Kick {
    pub fn kick(&self) {
        self.due.set(true);
        let waiting = self.waker.borrow_mut().take();
        if let Some(w) = waiting {
            w.wake();
        }
    }

    pub async fn wait(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.due.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_read_together_ask_for_each_kind_once() {
        assert_eq!(Wakes::of(b""), Wakes::default());
        let all = Wakes::of(b"PPCPT");
        assert!(all.publish && all.command && all.drain);
        assert_eq!(
            Wakes::of(b"CC"),
            Wakes {
                command: true,
                ..Wakes::default()
            }
        );
        assert_eq!(Wakes::of(b"x"), Wakes::default());
    }
}
