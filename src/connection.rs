//! The only code that touches a socket (mini-redis's `Connection` is the
//! model): a [`Connection`] owns one byte stream (its [`Transport`]), the
//! bytes read from it and not yet consumed, and the way output leaves it.
//! Client connections, backend connections and control connections are all
//! one; the codecs parse what it holds and encode what it sends.
//!
//! Reading: [`Connection::fill`] reads once more into the input buffer
//! (pooled, and given back whenever it is empty, so an idle connection
//! holds none); [`Connection::read_head`] is the one parse-or-read loop
//! every head reader uses.
//!
//! Writing: [`Connection::write_all`] sends bytes the caller built (heads,
//! short answers, frames); [`Connection::poll_write_parts`] sends a list of
//! shared `Bytes` (a subscriber's queued messages) in one gathered send,
//! never copying them. Both end with the transport's flush, a no-op on
//! plain TCP, the point where a TLS stream pushes out its buffered records.
//!
//! Where the next transports plug in (each is a variant of [`Transport`]
//! and one arm in each of its methods; nothing above this module changes):
//! - TLS (issue 15): `Tls(Box<ServerTlsStream<TcpStream>>)` for client
//!   connections (made by `Connection::start_tls` after the sniff, from a
//!   `Tcp` connection whose buffered bytes become the handshake's prefix)
//!   and `TlsClient(Box<ClientTlsStream<TcpStream>>)` for `ssl` targets
//!   (made in `upstream::Pool::connect`). Reads and writes go through the
//!   stream's `poll_read`/`poll_write`; `poll_write_parts` writes the parts
//!   one by one into rustls (which copies to encrypt anyway) and flushes;
//!   timeouts stay on the inner `TcpStream`; a drain's `SHUT_RD` reads as
//!   `UnexpectedEof`, which every reader already takes as the peer gone.
//! - io_uring (issue 16): `Uring(Box<UringIo>)`, made by
//!   [`Connection::client`] when the core runs the ring data path
//!   (`data_path = "uring"`). `poll_fill` waits on the ring's multishot
//!   receive, then copies the provided buffer's bytes into the input buffer
//!   (which gives the provided buffer back at once); writes hand shared
//!   `Bytes` to the ring without waiting for the kernel (the sends of one
//!   loop turn go in one submission), and wait only while more than
//!   `URING_UNSENT_MAX` bytes are unsent, as a full socket buffer makes a
//!   TCP write wait. The ring has no per-operation timeouts: a read that
//!   waits sets a deadline in the core's deadline queue (not a timer, and
//!   between the driver's busy turns not even a clock read: it starts from
//!   the next turn's reading; the driver wakes the reader when it passes),
//!   and a write that waits races a glommio timer.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;

use crate::buf::{BufPool, FillError, InBuf, BUF_SIZE};
use crate::tls::{ClientTlsStream, HandshakeError, ServerTlsStream};
use crate::uring::UringStream;

/// Most iovecs handed to one gathered send.
const MAX_IOVECS: usize = 64;

/// On the io_uring data path, a write waits only while more than this many
/// bytes handed to the ring are still unsent (the ring's stand-in for a
/// full socket buffer); a flush returns once at most this many are left.
const URING_UNSENT_MAX: usize = 64 * 1024;

/// The byte stream under a connection.
pub enum Transport {
    /// Plain TCP, through glommio.
    Tcp(TcpStream),
    /// A client connection on a TLS listener, after its handshake began
    /// (`Connection::start_tls`).
    Tls(Box<ServerTlsStream<TcpStream>>),
    /// TLS to an `ssl` target (`Connection::connect_tls`).
    TlsClient(Box<ClientTlsStream<TcpStream>>),
    /// Plain TCP through the core's own io_uring (`data_path = "uring"`).
    Uring(Box<UringIo>),
}

impl Transport {
    /// The glommio TCP stream under the transport (socket options,
    /// timeouts); `None` on the ring.
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Transport::Tcp(s) => Some(s),
            Transport::Tls(s) => Some(s.get_ref()),
            Transport::TlsClient(s) => Some(s.get_ref()),
            Transport::Uring(_) => None,
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_) | Transport::TlsClient(_))
    }

    /// The transport as one writer (every variant is `Unpin`, so a plain
    /// `Pin::new` suffices): `Connection`'s `AsyncWrite` goes through here.
    fn writer(&mut self) -> Pin<&mut (dyn AsyncWrite + Unpin)> {
        match self {
            Transport::Tcp(s) => Pin::new(s),
            Transport::Tls(s) => Pin::new(s.as_mut()),
            Transport::TlsClient(s) => Pin::new(s.as_mut()),
            Transport::Uring(u) => Pin::new(u.as_mut()),
        }
    }
}

/// A socket on the io_uring data path, with the timeouts that glommio's
/// sockets keep themselves (a ring operation has none).
pub struct UringIo {
    stream: UringStream,
    /// Set through `&Connection` (as glommio's socket options are); a new
    /// value also restarts a wait in progress (`*_reset`).
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
    read_reset: Cell<bool>,
    write_reset: Cell<bool>,
    /// A read waits with its deadline set in the ring (a queue slot, not
    /// a timer: see `UringStream::set_read_deadline`).
    read_waiting: bool,
    /// Runs while a write waits, with the unsent bytes when it was armed:
    /// it fires as a timeout only if nothing was sent meanwhile.
    write_timer: Option<(Timer, usize)>,
}

impl UringIo {
    fn new(stream: UringStream) -> UringIo {
        UringIo {
            stream,
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
            read_reset: Cell::new(false),
            write_reset: Cell::new(false),
            read_waiting: false,
            write_timer: None,
        }
    }

    /// Ready when data, the end of the stream or an error can be read; a
    /// wait longer than the read timeout is `TimedOut`.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stream.poll_readable(cx).is_ready() {
            if std::mem::take(&mut self.read_waiting) {
                self.stream.set_read_deadline(None);
            }
            return Poll::Ready(Ok(()));
        }
        if self.read_reset.replace(false) {
            // A new timeout: the wait starts again.
            self.read_waiting = false;
        }
        if !self.read_waiting {
            self.read_waiting = true;
            self.stream.set_read_deadline(self.read_timeout.get());
        } else if self.stream.take_read_timeout() {
            self.read_waiting = false;
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }

    /// Ready once at most `max` handed-over bytes are unsent (or a send
    /// failed). While it waits, the write timeout applies from the last
    /// progress: a timer that fires after some bytes went out is re-armed.
    fn poll_unsent_at_most(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<()>> {
        loop {
            let unsent = self.stream.unsent();
            if unsent <= max {
                self.write_timer = None;
                // An earlier send's failure is reported here (without a
                // waker: the send's completion must not wake this task).
                return match self.stream.send_error() {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Ready(Ok(())),
                };
            }
            match self.stream.poll_flush(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => {
                    self.write_timer = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {}
            }
            if self.write_reset.replace(false) {
                self.write_timer = None;
            }
            let Some(t) = self.write_timeout.get() else {
                return Poll::Pending;
            };
            let (timer, at) = self
                .write_timer
                .get_or_insert_with(|| (Timer::new(t), unsent));
            if *at > unsent {
                // Progress since the timer started: the wait starts again.
                *timer = Timer::new(t);
                *at = unsent;
            }
            if Pin::new(timer).poll(cx).is_ready() {
                if self.stream.unsent() < *at {
                    self.write_timer = None;
                    continue;
                }
                self.write_timer = None;
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            return Poll::Pending;
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        if bytes.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match self.poll_unsent_at_most(cx, URING_UNSENT_MAX) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        self.stream.start_send_copy(&[bytes])?;
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        match self.poll_unsent_at_most(cx, URING_UNSENT_MAX) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let mut parts = [&[][..]; 16];
        let mut k = 0;
        for b in bufs {
            if k == parts.len() {
                break;
            }
            parts[k] = b;
            k += 1;
        }
        let taken: usize = parts[..k].iter().map(|p| p.len()).sum();
        self.stream.start_send_copy(&parts[..k])?;
        Poll::Ready(Ok(taken))
    }

    /// Hands every part not yet handed over to the ring (one `sendmsg` per
    /// loop turn, the `Bytes` shared, not copied), then waits only if too
    /// much is unsent.
    fn poll_write_parts(
        &mut self,
        cx: &mut Context<'_>,
        parts: &[Bytes],
        progress: &mut PartsProgress,
    ) -> Poll<io::Result<()>> {
        if !progress.done(parts) {
            let first = parts[progress.part].slice(progress.offset..);
            let rest = &parts[progress.part + 1..];
            let n = first.len() + rest.iter().map(Bytes::len).sum::<usize>();
            if rest.is_empty() {
                self.stream.start_send(first)?;
            } else {
                let mut all = Vec::with_capacity(rest.len() + 1);
                all.push(first);
                all.extend(rest.iter().cloned());
                self.stream.start_send_vectored(&all)?;
            }
            progress.advance(parts, n);
        }
        self.poll_unsent_at_most(cx, URING_UNSENT_MAX)
    }

    /// Everything sent, then the write side shut down.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_unsent_at_most(cx, 0) {
            Poll::Ready(Ok(())) => Poll::Ready(self.stream.shutdown_write()),
            other => other,
        }
    }
}

/// How reading a head ended when it did not produce one.
#[derive(Debug)]
pub enum ReadError<E> {
    /// The bytes do not parse.
    Parse(E),
    /// The peer closed before a whole head came.
    Closed,
    /// The read timed out (a deadline given to `read_head`, or the
    /// connection's read timeout).
    TimedOut,
    /// The head grew past the buffer limit without completing.
    TooLarge,
    /// The socket failed.
    Failed(io::Error),
}

/// How a read ended when it brought no bytes.
fn read_error<E>(e: FillError) -> ReadError<E> {
    match e {
        FillError::Full => ReadError::TooLarge,
        FillError::Io(e) => match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ReadError::TimedOut,
            _ => ReadError::Failed(e),
        },
    }
}

/// Where a gathered send of parts has got to; kept by the caller between
/// polls (a fresh one starts at the first byte).
#[derive(Debug, Default, Clone, Copy)]
pub struct PartsProgress {
    /// The first part not wholly sent, and the bytes of it already sent.
    part: usize,
    offset: usize,
    /// The last attempt found the socket full: the next waits for room
    /// through the transport (which keeps its write timeout).
    waiting: bool,
    /// Bytes sent so far.
    pub sent: usize,
}

impl PartsProgress {
    fn advance(&mut self, parts: &[Bytes], mut n: usize) {
        self.sent += n;
        while n > 0 && self.part < parts.len() {
            let left = parts[self.part].len() - self.offset;
            if n >= left {
                n -= left;
                self.part += 1;
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
        while self.part < parts.len() && parts[self.part].len() == self.offset {
            self.part += 1;
            self.offset = 0;
        }
    }

    fn done(&self, parts: &[Bytes]) -> bool {
        self.part >= parts.len()
    }
}

/// One connection: its transport and its unconsumed input.
pub struct Connection {
    io: Transport,
    input: InBuf,
    /// Bytes read over the connection's life.
    read: u64,
}

impl Connection {
    /// A connection over an accepted or connected TCP stream.
    pub fn tcp(stream: TcpStream, bufs: Rc<BufPool>) -> Connection {
        Connection {
            io: Transport::Tcp(stream),
            input: InBuf::new(bufs),
            read: 0,
        }
    }

    /// A client connection over an accepted TCP stream: through the
    /// core's io_uring when it runs that data path (`data_path = "uring"`),
    /// else through glommio as `Connection::tcp`.
    pub fn client(stream: TcpStream, bufs: Rc<BufPool>) -> Connection {
        let Some(ring) = crate::uring::current() else {
            return Connection::tcp(stream, bufs);
        };
        // glommio's stream gives no descriptor away: the ring takes a
        // duplicate and glommio's own is closed with its stream.
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor the stream owns.
        let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            // Out of descriptors: serve this one through glommio.
            return Connection::tcp(stream, bufs);
        }
        drop(stream);
        // SAFETY: a fresh descriptor owned by nothing else.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Connection {
            io: Transport::Uring(Box::new(UringIo::new(ring.stream(fd)))),
            input: InBuf::new(bufs),
            read: 0,
        }
    }

    /// A connection over a stream already on the core's ring (a backend
    /// connected through it).
    pub fn ring(stream: UringStream, bufs: Rc<BufPool>) -> Connection {
        Connection {
            io: Transport::Uring(Box::new(UringIo::new(stream))),
            input: InBuf::new(bufs),
            read: 0,
        }
    }

    /// True when the connection goes through the core's io_uring.
    pub fn is_uring(&self) -> bool {
        matches!(self.io, Transport::Uring(_))
    }

    // ---- the transport's settings

    /// Turns a plain connection accepted on a TLS listener into a TLS
    /// one: the bytes already read (the sniffed ClientHello) are handed
    /// to rustls first, then the handshake runs until done or `deadline`
    /// passes. On `Err` the connection is gone (drop it after counting).
    pub async fn start_tls(
        self,
        config: Arc<rustls::ServerConfig>,
        deadline: Duration,
    ) -> Result<Connection, HandshakeError> {
        let Connection {
            io,
            mut input,
            read,
        } = self;
        let Transport::Tcp(tcp) = io else {
            return Err(HandshakeError::Io(io::Error::other(
                "TLS started twice on one connection",
            )));
        };
        let prefix_len = input.len();
        let mut tls = ServerTlsStream::accept(tcp, config, input.data())?;
        input.consume(prefix_len);
        input.release();
        // The inner socket's own timeout must not end the handshake
        // before the deadline does.
        let _ = tls.get_ref().set_read_timeout(Some(deadline));
        tls.handshake(glommio::timer::sleep(deadline)).await?;
        Ok(Connection {
            io: Transport::Tls(Box::new(tls)),
            input,
            read,
        })
    }

    /// A TLS connection to a backend over a connected TCP stream; the
    /// handshake runs with the first write or read (or `handshake`).
    pub fn tls_client(
        stream: TcpStream,
        bufs: Rc<BufPool>,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Connection, rustls::Error> {
        Ok(Connection {
            io: Transport::TlsClient(Box::new(ClientTlsStream::connect(stream, config, name)?)),
            input: InBuf::new(bufs),
            read: 0,
        })
    }

    /// Completes a client handshake within `deadline` (a no-op on other
    /// transports).
    pub async fn handshake(&mut self, deadline: Duration) -> Result<(), HandshakeError> {
        match &mut self.io {
            Transport::TlsClient(s) => s.handshake(glommio::timer::sleep(deadline)).await,
            _ => Ok(()),
        }
    }

    /// True when the bytes are TLS-protected.
    pub fn is_tls(&self) -> bool {
        self.io.is_tls()
    }

    /// The socket's slot in the core's ring when it is plain TCP on the
    /// io_uring data path (what a fan-out may send to directly,
    /// `uring::Uring::send_if_idle`); `None` through glommio or TLS.
    pub fn ring_slot(&self) -> Option<u32> {
        match &self.io {
            Transport::Uring(u) => Some(u.stream.slot()),
            _ => None,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        match &self.io {
            Transport::Uring(u) => u.stream.as_raw_fd(),
            io => io.tcp().map_or(-1, |t| t.as_raw_fd()),
        }
    }

    /// The socket, borrowed, for socket options.
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is the transport's own and stays open for
        // as long as `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.raw_fd()) }
    }

    pub fn set_nodelay(&self) {
        match self.io.tcp() {
            Some(t) => {
                let _ = t.set_nodelay(true);
            }
            None => {
                let _ = socket2::SockRef::from(&self.fd()).set_nodelay(true);
            }
        }
    }

    /// Each read waits at most this long (`None`: for ever).
    pub fn set_read_timeout(&self, t: Option<Duration>) {
        self.set_timeout(t, true);
    }

    /// Each write waits at most this long for the socket to take a byte.
    pub fn set_write_timeout(&self, t: Option<Duration>) {
        self.set_timeout(t, false);
    }

    fn set_timeout(&self, t: Option<Duration>, read: bool) {
        if let Transport::Uring(u) = &self.io {
            let (timeout, reset) = match read {
                true => (&u.read_timeout, &u.read_reset),
                false => (&u.write_timeout, &u.write_reset),
            };
            timeout.set(t);
            // A wait in progress starts again with the new timeout.
            reset.set(true);
        } else if let Some(s) = self.io.tcp() {
            let _ = match read {
                true => s.set_read_timeout(t),
                false => s.set_write_timeout(t),
            };
        }
    }

    /// Makes closing reset the connection: bytes the kernel still holds
    /// for a peer that does not read are discarded at once, not kept
    /// while the kernel probes a zero window.
    pub fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(&self.fd()).set_linger(Some(Duration::ZERO));
    }

    /// True when the socket is open, idle and not closed by the peer:
    /// nothing to read and no end of stream (for pooled connections).
    pub fn looks_alive(&self) -> bool {
        if !self.input.is_empty() {
            return false;
        }
        if let Transport::Uring(u) = &self.io {
            // The ring's receive takes what arrives: a peek sees nothing.
            return u.stream.rx_idle();
        }
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        match socket2::SockRef::from(&self.fd())
            .recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }

    // ---- input

    /// The bytes read and not yet consumed.
    pub fn input(&self) -> &[u8] {
        self.input.data()
    }

    pub fn input_len(&self) -> usize {
        self.input.len()
    }

    pub fn has_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// Marks `n` input bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.input.consume(n);
    }

    /// Polls one read into the input buffer, holding at most `max`
    /// unconsumed bytes. `Ok(0)` is the end of the stream; a full buffer is
    /// `FillError::Full` (see `ReadError::TooLarge`).
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<usize, FillError>> {
        let r = match &mut self.io {
            Transport::Tcp(s) => self.input.poll_fill(cx, s, max),
            Transport::Tls(s) => self.input.poll_fill(cx, s.as_mut(), max),
            Transport::TlsClient(s) => self.input.poll_fill(cx, s.as_mut(), max),
            Transport::Uring(u) => match u.poll_readable(cx) {
                // The input buffer is taken only once bytes are there.
                Poll::Ready(Ok(())) => self.input.poll_fill(cx, &mut u.stream, max),
                Poll::Ready(Err(e)) => Poll::Ready(Err(FillError::Io(e))),
                Poll::Pending => Poll::Pending,
            },
        };
        if let Poll::Ready(Ok(n)) = r {
            self.read += n as u64;
        }
        r
    }

    /// Bytes read over the connection's life (whether anything at all came
    /// since some earlier point).
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reads once more (see `poll_fill`).
    pub async fn fill(&mut self, max: usize) -> Result<usize, FillError> {
        futures_lite::future::poll_fn(|cx| self.poll_fill(cx, max)).await
    }

    /// Parses a head from the input, reading more until `parse` completes
    /// one (`Ok(Some((consumed, head)))`) or fails, the peer closes, or a
    /// read fails. The buffer holds at most `max` bytes. With `deadline`,
    /// the reads after the first incomplete parse must all finish within
    /// that much time (a slow head is refused as a whole, however it
    /// trickles); otherwise each read has the connection's read timeout.
    pub async fn read_head<T, E>(
        &mut self,
        max: usize,
        deadline: Option<Duration>,
        mut parse: impl FnMut(&[u8]) -> Result<Option<(usize, T)>, E>,
    ) -> Result<T, ReadError<E>> {
        // The deadline is taken only when the head did not arrive whole.
        let mut until: Option<Instant> = None;
        loop {
            match parse(self.input()) {
                Ok(Some((n, head))) => {
                    self.consume(n);
                    return Ok(head);
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Parse(e)),
            }
            if let Some(d) = deadline {
                let at = *until.get_or_insert_with(|| Instant::now() + d);
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ReadError::TimedOut);
                }
                self.set_read_timeout(Some(left));
            }
            match self.fill(max).await {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) => return Err(read_error(e)),
            }
        }
    }

    // ---- output

    /// Writes all of `bytes`, then flushes.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        AsyncWriteExt::write_all(self, bytes).await?;
        AsyncWriteExt::flush(self).await
    }

    /// Polls a gathered send of `parts` (shared bytes, never copied),
    /// continuing from `progress`; ready once every byte is sent, then
    /// flushed. One `sendmsg` takes up to `MAX_IOVECS` parts; once the
    /// socket is full, the rest waits for room through the transport,
    /// whose write timeout then applies.
    pub fn poll_write_parts(
        &mut self,
        cx: &mut Context<'_>,
        parts: &[Bytes],
        progress: &mut PartsProgress,
    ) -> Poll<io::Result<()>> {
        progress.advance(parts, 0);
        if self.io.is_tls() {
            return self.poll_write_parts_tls(cx, parts, progress);
        }
        if let Transport::Uring(u) = &mut self.io {
            return u.poll_write_parts(cx, parts, progress);
        }
        while !progress.done(parts) {
            if !progress.waiting && progress.part + 1 == parts.len() {
                // One part left (the common delivery): a plain send.
                let rest = &parts[progress.part][progress.offset..];
                match socket2::SockRef::from(&self.fd())
                    .send_with_flags(rest, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                {
                    Ok(n) => {
                        progress.advance(parts, n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => progress.waiting = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if !progress.waiting {
                let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
                let mut k = 0;
                for (i, p) in parts[progress.part..].iter().enumerate().take(MAX_IOVECS) {
                    let from = if i == 0 { progress.offset } else { 0 };
                    iov[k] = IoSlice::new(&p[from..]);
                    k += 1;
                }
                match socket2::SockRef::from(&self.fd())
                    .send_vectored_with_flags(&iov[..k], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                {
                    Ok(n) => {
                        progress.advance(parts, n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => progress.waiting = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            // The socket is full: the transport waits for room (and keeps
            // its write timeout, restarted at every byte it takes).
            let rest = &parts[progress.part][progress.offset..];
            match Pin::new(&mut *self).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    progress.waiting = false;
                    progress.advance(parts, n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut *self).poll_flush(cx)
    }

    /// `poll_write_parts` through rustls: the parts go into its buffer in
    /// gathered writes (it copies them to encrypt anyway), then a flush.
    fn poll_write_parts_tls(
        &mut self,
        cx: &mut Context<'_>,
        parts: &[Bytes],
        progress: &mut PartsProgress,
    ) -> Poll<io::Result<()>> {
        while !progress.done(parts) {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let mut k = 0;
            for (i, p) in parts[progress.part..].iter().enumerate().take(MAX_IOVECS) {
                let from = if i == 0 { progress.offset } else { 0 };
                iov[k] = IoSlice::new(&p[from..]);
                k += 1;
            }
            match Pin::new(&mut *self).poll_write_vectored(cx, &iov[..k]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => progress.advance(parts, n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut *self).poll_flush(cx)
    }

    /// Sends all of `parts` in gathered sends (see `poll_write_parts`).
    pub async fn write_parts(&mut self, parts: &[Bytes]) -> io::Result<()> {
        let mut progress = PartsProgress::default();
        futures_lite::future::poll_fn(|cx| self.poll_write_parts(cx, parts, &mut progress)).await
    }

    /// Sends what the socket takes now, without waiting: the last words to
    /// a peer being dropped for not reading (a WebSocket close frame).
    /// On TLS the bytes are encrypted after any records rustls still
    /// holds, and what the socket takes of those goes now.
    pub fn send_now(&mut self, bytes: &[u8]) {
        if let Transport::Uring(u) = &self.io {
            if u.stream.unsent() > 0 {
                // A direct send would cut into the ring's queued bytes.
                return;
            }
        }
        let mut sink = SendNow(self.raw_fd());
        match &mut self.io {
            Transport::Tls(s) => s.send_now(bytes, &mut sink),
            Transport::TlsClient(s) => s.send_now(bytes, &mut sink),
            _ => {
                let _ = io::Write::write(&mut sink, bytes);
            }
        }
    }

    // ---- the end

    /// Shuts down the write side (after a flush).
    pub async fn close(&mut self) {
        let _ = AsyncWriteExt::close(self).await;
    }

    /// Closes our side, then reads and discards what the peer still sends
    /// (bounded in time and bytes), so an answer sent before the peer
    /// finished its request is not destroyed by a reset.
    pub async fn linger_close(&mut self) {
        self.close().await;
        self.input.release();
        self.set_read_timeout(Some(Duration::from_millis(500)));
        let mut discarded = 0usize;
        while discarded < 4 << 20 {
            match self.fill(BUF_SIZE).await {
                Ok(n) if n > 0 => {
                    discarded += n;
                    self.input.release();
                }
                _ => break,
            }
        }
    }
}

/// A socket written without waiting (`MSG_DONTWAIT`): a full socket is
/// `WouldBlock`.
struct SendNow(RawFd);

impl io::Write for SendNow {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.0 < 0 {
            return Err(io::ErrorKind::NotConnected.into());
        }
        // SAFETY: the descriptor belongs to the connection that made this
        // writer and outlives it (`send_now` borrows the connection).
        let fd = unsafe { BorrowedFd::borrow_raw(self.0) };
        socket2::SockRef::from(&fd).send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The ring as a writer: a write hands bytes over and waits only while too
/// much is unsent; a flush returns once at most `URING_UNSENT_MAX` bytes are
/// left (the ring's stand-in for a socket buffer that took them).
impl AsyncWrite for UringIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        UringIo::poll_write(self.get_mut(), cx, bytes)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        UringIo::poll_write_vectored(self.get_mut(), cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_unsent_at_most(cx, URING_UNSENT_MAX)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        UringIo::poll_close(self.get_mut(), cx)
    }
}

/// A connection writes through its transport's writer: the one place that
/// chooses by variant, so each `AsyncWrite` method below is one line
/// (and a new transport is one arm in `Transport::writer`).
impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io.writer().poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io.writer().poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io.writer().poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io.writer().poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_on_the_ring_is_small() {
        // The per-connection budget in PERFORMANCE.md ("wired into client
        // connections"): the transport in the connection, its boxed state.
        let transport = std::mem::size_of::<Transport>();
        let uring = std::mem::size_of::<UringIo>();
        let tcp = std::mem::size_of::<TcpStream>();
        let conn = std::mem::size_of::<Connection>();
        println!("Connection {conn} B (Transport {transport} B); UringIo {uring} B boxed; glommio TcpStream {tcp} B");
        assert!(uring <= 160, "UringIo {uring}");
    }

    fn parts(lens: &[usize]) -> Vec<Bytes> {
        lens.iter().map(|&n| Bytes::from(vec![b'x'; n])).collect()
    }

    #[test]
    fn progress_through_parts_as_a_table() {
        // part lengths, bytes sent in each step, (part, offset) after each
        type Case = (
            &'static [usize],
            &'static [usize],
            &'static [(usize, usize)],
        );
        let cases: &[Case] = &[
            (&[3, 4], &[2, 1, 4], &[(0, 2), (1, 0), (2, 0)]),
            (&[3, 4], &[7], &[(2, 0)]),
            (&[3, 0, 4], &[3, 4], &[(2, 0), (3, 0)]),
            (&[0, 0, 5], &[0, 5], &[(2, 0), (3, 0)]),
            (
                &[5],
                &[1, 1, 1, 1, 1],
                &[(0, 1), (0, 2), (0, 3), (0, 4), (1, 0)],
            ),
        ];
        for (lens, steps, after) in cases {
            let p = parts(lens);
            let mut pr = PartsProgress::default();
            for (i, (&n, &(part, offset))) in steps.iter().zip(after.iter()).enumerate() {
                pr.advance(&p, n);
                assert_eq!((pr.part, pr.offset), (part, offset), "{lens:?} step {i}");
            }
            assert!(pr.done(&p), "{lens:?}");
            assert_eq!(pr.sent, lens.iter().sum::<usize>(), "{lens:?}");
        }
    }
}
