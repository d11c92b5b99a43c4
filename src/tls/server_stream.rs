//! The server side's TLS stream: rustls's unbuffered connection
//! (`UnbufferedServerConnection`) between an inner `AsyncRead +
//! AsyncWrite` (a glommio `TcpStream`) and the HTTP/WebSocket codecs,
//! itself `AsyncRead + AsyncWrite`, with the same calls as the buffered
//! `TlsStream` the client side uses (`accept`, `handshake`, `send_now`).
//!
//! Why unbuffered: memory per idle connection. rustls's buffered
//! `ServerConnection` keeps a 4 KiB receive buffer ready before every
//! read, and keeps it while the connection waits, so an idle TLS
//! subscriber cost 4 KiB more than it needs (PERFORMANCE.md, "TLS
//! provider"). Here the buffers are this stream's own and each is held
//! only while it holds bytes:
//! - `incoming`: ciphertext read from the socket and not yet processed
//!   (rustls decrypts records in it); taken from a per-thread spare list
//!   for a read and given back as soon as it is empty, so a connection
//!   waiting for its peer holds none (as corepin's own read buffer);
//! - `plain`: decrypted bytes the caller's buffer had no room for (a
//!   record is decrypted by rustls and copied once, straight into the
//!   caller's buffer when it fits);
//! - `out`: encrypted records not yet written to the socket; like
//!   `incoming`, given back to a per-thread spare list once written, so a
//!   response costs no allocation of ours.
//!
//! Writing: `poll_write` encrypts into `out` and pushes as much as the
//! socket takes; the rest goes out on the next write or on `poll_flush`
//! (call `flush` after the last write of a response or batch). Several
//! slices of one vectored write are gathered first and encrypted as one
//! (rustls's unbuffered `encrypt` takes one slice), so a subscriber's
//! message parts leave in one record, not one each.
//!
//! Closing: `poll_close` sends close_notify, flushes, and closes the
//! inner stream. A peer's close_notify reads as end of stream (`Ok(0)`); a
//! peer that drops the TCP connection without one reads as
//! `UnexpectedEof` (a truncation).

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;

use super::stream::HandshakeError;

/// Room for one whole record as it arrives: 2^14 bytes of plaintext,
/// TLS 1.2's 2048 bytes of most expansion, the 5-byte header.
const RECORD_ROOM: usize = (1 << 14) + 2048 + 5;

/// Most ciphertext held unprocessed: a handshake message may span records
/// up to rustls's limit of 64 KiB.
const INCOMING_MAX: usize = 0x1_0000 + RECORD_ROOM;

/// Most plaintext one write call encrypts (what is left is the caller's
/// next write).
const WRITE_MAX: usize = 1 << 16;

/// Spare `incoming` buffers kept per thread (one core's connections).
const SPARE_MAX: usize = 64;

/// Spare `out` buffers kept per thread, and the largest kept: a write
/// usually leaves at once, so a core needs few.
const SPARE_OUT_MAX: usize = 16;
const SPARE_OUT_ROOM: usize = RECORD_ROOM;

/// Most capacity the per-thread gathering buffer keeps between writes.
const GATHER_KEEP: usize = RECORD_ROOM;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SPARE_OUT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// An empty `out` buffer, with room from an earlier write when a spare is
/// at hand (no allocation per response).
fn take_out() -> Vec<u8> {
    SPARE_OUT.with(|s| s.borrow_mut().pop()).unwrap_or_default()
}

fn give_out(mut b: Vec<u8>) {
    if b.capacity() > 0 && b.capacity() <= SPARE_OUT_ROOM {
        b.clear();
        SPARE_OUT.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_OUT_MAX {
                s.push(b);
            }
        });
    }
}

fn take_buf() -> Vec<u8> {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; RECORD_ROOM])
}

fn give_buf(b: Vec<u8>) {
    if b.len() == RECORD_ROOM {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_MAX {
                s.push(b);
            }
        });
    }
}

/// Where processing the records held stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    /// The handshake needs more bytes from the peer.
    Blocked,
    /// Application data may be sent (and what was given was encrypted);
    /// every whole record held was processed.
    Traffic,
    /// Both sides sent close_notify.
    Closed,
}

/// A server-side TLS stream over the byte stream `IO` (see the module doc).
pub struct ServerTlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// `incoming[..filled]`: ciphertext not yet processed. Empty (no
    /// allocation) whenever `filled` is 0.
    incoming: Vec<u8>,
    filled: usize,
    /// `plain[plain_at..]`: decrypted bytes not yet read; empty (freed)
    /// once read.
    plain: Vec<u8>,
    plain_at: usize,
    /// `out[sent..]`: encrypted records not yet written; freed once sent.
    out: Vec<u8>,
    sent: usize,
    /// A protocol error, its alert queued in `out`; reported once.
    /// Boxed: a `rustls::Error` is 64 bytes, every connection would carry
    /// them for the rare one that fails.
    failed: Option<Box<rustls::Error>>,
    /// close_notify queued.
    closing: bool,
    /// The peer's close_notify arrived.
    peer_closed: bool,
}

impl<IO> ServerTlsStream<IO> {
    /// Starts a server handshake on `io`. `prefix`: bytes already read
    /// from `io` (the ones `sniff::classify` looked at); they are
    /// processed first. Drive the handshake with `handshake` or
    /// `poll_handshake`.
    pub fn accept(
        io: IO,
        config: Arc<ServerConfig>,
        prefix: &[u8],
    ) -> Result<Self, HandshakeError> {
        let conn = UnbufferedServerConnection::new(config).map_err(HandshakeError::Protocol)?;
        let mut s = ServerTlsStream {
            io,
            conn,
            incoming: Vec::new(),
            filled: 0,
            plain: Vec::new(),
            plain_at: 0,
            out: Vec::new(),
            sent: 0,
            failed: None,
            closing: false,
            peer_closed: false,
        };
        if !prefix.is_empty() {
            if prefix.len() > RECORD_ROOM {
                return Err(HandshakeError::Io(io::Error::other(
                    "TLS prefix longer than a record",
                )));
            }
            s.incoming = take_buf();
            s.incoming[..prefix.len()].copy_from_slice(prefix);
            s.filled = prefix.len();
            if let Err(e) = s.process(None, false, &mut [], &mut 0) {
                s.fail(e);
            }
            s.settle();
        }
        Ok(s)
    }

    /// The rustls connection: ALPN, version, cipher suite, whether the
    /// handshake resumed.
    pub fn conn(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Gives back buffers that hold nothing.
    fn settle(&mut self) {
        if self.filled == 0 && !self.incoming.is_empty() {
            give_buf(std::mem::take(&mut self.incoming));
        }
        if self.plain_at >= self.plain.len() && self.plain.capacity() > 0 {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
        if self.sent >= self.out.len() && self.out.capacity() > 0 {
            give_out(std::mem::take(&mut self.out));
            self.sent = 0;
        }
    }

    /// Runs rustls over the records held until it needs more bytes or may
    /// send application data: handshake records and alerts it produces
    /// go to `out`, application data to `dst` (the caller's read buffer,
    /// `*got` bytes of it filled here) while it has room and nothing is
    /// waiting in `plain`, the rest to `plain`. Once it may send, `send`
    /// is encrypted into `out`, and with `close_notify` so is a
    /// close_notify alert.
    fn process(
        &mut self,
        send: Option<&[u8]>,
        close_notify: bool,
        dst: &mut [u8],
        got: &mut usize,
    ) -> Result<Reached, rustls::Error> {
        let ServerTlsStream {
            conn,
            incoming,
            filled,
            plain,
            plain_at,
            out,
            peer_closed,
            ..
        } = self;
        loop {
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut incoming[..*filled]);
            let mut reached = None;
            match state {
                Err(e) => reached = Some(Err(e)),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => {
                                discard += rec.discard;
                                let p = rec.payload;
                                // Straight into the caller's buffer (no
                                // copy of ours in between) unless bytes
                                // read earlier are still waiting.
                                let n = if *plain_at >= plain.len() {
                                    let n = p.len().min(dst.len() - *got);
                                    dst[*got..*got + n].copy_from_slice(&p[..n]);
                                    *got += n;
                                    n
                                } else {
                                    0
                                };
                                if n < p.len() {
                                    plain.extend_from_slice(&p[n..]);
                                }
                            }
                            Err(e) => {
                                reached = Some(Err(e));
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::PeerClosed) => *peer_closed = true,
                Ok(ConnectionState::Closed) => reached = Some(Ok(Reached::Closed)),
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    if out.capacity() == 0 {
                        *out = take_out();
                    }
                    let at = out.len();
                    let mut room = 512;
                    loop {
                        out.resize(at + room, 0);
                        match e.encode(&mut out[at..]) {
                            Ok(n) => {
                                out.truncate(at + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(s)) => room = s.required_size,
                            Err(EncodeError::AlreadyEncoded) => {
                                out.truncate(at);
                                break;
                            }
                        }
                    }
                }
                // The records are in `out`, ahead of anything written
                // later; they reach the socket with the next flush.
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::BlockedHandshake) => reached = Some(Ok(Reached::Blocked)),
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let mut r = Ok(Reached::Traffic);
                    if let Some(data) = send.filter(|d| !d.is_empty()) {
                        // Room for the records: the data, and per record
                        // at most 64 bytes of header, type, padding and tag
                        // (TLS 1.3: 22; TLS 1.2 GCM: 29).
                        let room = data.len() + 64 * (data.len() / (1 << 14) + 1);
                        if let Err(e) = append(out, room, |buf| w.encrypt(data, buf)) {
                            r = Err(e);
                        }
                    }
                    if close_notify && r.is_ok() {
                        if let Err(e) = append(out, 64, |buf| w.queue_close_notify(buf)) {
                            r = Err(e);
                        }
                    }
                    reached = Some(r);
                }
                // Early data is off (`max_early_data_size = 0`), so rustls
                // never offers it; anything else is a state this code does
                // not know.
                Ok(other) => {
                    reached = Some(Err(rustls::Error::General(format!(
                        "unexpected TLS connection state {other:?}"
                    ))))
                }
            }
            if discard > 0 {
                incoming.copy_within(discard..*filled, 0);
                *filled -= discard;
            }
            if *peer_closed {
                // Nothing after a close_notify counts (RFC 8446 §6.1).
                *filled = 0;
            }
            if let Some(r) = reached {
                return r;
            }
        }
    }

    /// Keeps `e` and queues the alert rustls made for it.
    fn fail(&mut self, e: rustls::Error) {
        self.failed = Some(Box::new(e));
        self.filled = 0;
        let ServerTlsStream { conn, out, .. } = self;
        for _ in 0..4 {
            let status = conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let _ = append(out, 512, |buf| {
                        e.encode(buf).map_err(|e| match e {
                            EncodeError::InsufficientSize(s) => EncryptError::InsufficientSize(s),
                            EncodeError::AlreadyEncoded => EncryptError::EncryptExhausted,
                        })
                    });
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    break;
                }
                _ => break,
            }
        }
    }
}

/// Appends what `f` writes into a buffer to `out` (`room` bytes at
/// first), growing the room to what `f` says it needs.
fn append(
    out: &mut Vec<u8>,
    mut room: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), rustls::Error> {
    if out.capacity() == 0 {
        *out = take_out();
    }
    let at = out.len();
    loop {
        out.resize(at + room, 0);
        match f(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(s)) if s.required_size > room => {
                room = s.required_size
            }
            Err(e) => {
                out.truncate(at);
                return Err(rustls::Error::General(format!("TLS encrypt: {e}")));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ServerTlsStream<IO> {
    /// Writes `out` to the socket until it is all sent.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.settle();
        Poll::Ready(Ok(()))
    }

    /// Reads what the socket has into `incoming`. `Ok(0)`: end of stream.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.is_empty() {
            self.incoming = take_buf();
        }
        if self.filled == self.incoming.len() {
            if self.incoming.len() >= INCOMING_MAX {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message too large",
                )));
            }
            let grown = (self.incoming.len() * 2).min(INCOMING_MAX);
            self.incoming.resize(grown, 0);
        }
        let r = Pin::new(&mut self.io).poll_read(cx, &mut self.incoming[self.filled..]);
        if let Poll::Ready(Ok(n)) = r {
            self.filled += n;
        }
        self.settle();
        r
    }

    /// Drives the handshake to its end (our last flight, and the session
    /// tickets, written out). Safe to call again after it completed.
    pub fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandshakeError>> {
        loop {
            if let Err(e) = ready!(self.poll_flush_out(cx)) {
                return Poll::Ready(Err(match self.failed.take() {
                    Some(f) => HandshakeError::from_rustls(*f),
                    None => HandshakeError::from_io(e),
                }));
            }
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Err(HandshakeError::from_rustls(*e)));
            }
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match self.process(None, false, &mut [], &mut 0) {
                Err(e) => {
                    // Loop once more to send the alert.
                    self.fail(e);
                    continue;
                }
                Ok(Reached::Closed) => return Poll::Ready(Err(HandshakeError::Closed)),
                Ok(_) => {}
            }
            self.settle();
            if self.sent < self.out.len() || !self.conn.is_handshaking() {
                continue;
            }
            if self.peer_closed {
                return Poll::Ready(Err(HandshakeError::Closed));
            }
            match ready!(self.poll_read_tls(cx)) {
                Ok(0) => return Poll::Ready(Err(HandshakeError::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(HandshakeError::from_io(e))),
            }
        }
    }

    /// The handshake, cut off when `deadline` completes first.
    pub async fn handshake<D: Future<Output = ()>>(
        &mut self,
        deadline: D,
    ) -> Result<(), HandshakeError> {
        let hs = std::future::poll_fn(|cx| self.poll_handshake(cx));
        futures_lite::future::or(hs, async {
            deadline.await;
            Err(HandshakeError::Timeout)
        })
        .await
    }

    /// Encrypts `bytes` after whatever is already queued, then writes
    /// queued records to `sink` until it takes no more (a non-blocking
    /// writer: `WouldBlock` ends it); the rest stays queued. No waiting and
    /// no waker: the last words to a peer being dropped.
    pub fn send_now(&mut self, bytes: &[u8], sink: &mut impl Write) {
        if self.failed.is_some() || self.closing || self.conn.is_handshaking() {
            return;
        }
        match self.process(Some(bytes), false, &mut [], &mut 0) {
            Ok(Reached::Traffic) => {}
            Ok(_) => return,
            Err(e) => return self.fail(e),
        }
        while self.sent < self.out.len() {
            match sink.write(&self.out[self.sent..]) {
                Ok(n) if n > 0 => self.sent += n,
                _ => break,
            }
        }
        self.settle();
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerTlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                let rest = &this.plain[this.plain_at..];
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                this.plain_at += n;
                this.settle();
                return Poll::Ready(Ok(n));
            }
            if let Some(e) = &this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    (**e).clone(),
                )));
            }
            if this.conn.is_handshaking() {
                // Reading before the handshake is done: finish it first.
                if let Err(e) = ready!(this.poll_handshake(cx)) {
                    return Poll::Ready(Err(io::Error::other(e)));
                }
                continue;
            }
            if this.peer_closed {
                return Poll::Ready(Ok(0));
            }
            let mut got = 0;
            match this.process(None, false, buf, &mut got) {
                Ok(Reached::Closed) => return Poll::Ready(Ok(got)),
                Ok(_) => {}
                Err(e) => {
                    this.fail(e.clone());
                    // Best effort: tell the peer why before the caller
                    // drops us.
                    let _ = this.poll_flush_out(cx);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
            // Records that need an answer (a TLS 1.3 KeyUpdate): send it
            // now if the socket takes it, else with the next write.
            if this.sent < this.out.len() {
                if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            this.settle();
            if got > 0 {
                return Poll::Ready(Ok(got));
            }
            if this.plain_at < this.plain.len() || this.peer_closed {
                continue;
            }
            match ready!(this.poll_read_tls(cx)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerTlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // What earlier writes left goes first, so `out` holds at most one
        // call's worth.
        ready!(this.poll_flush_out(cx))?;
        if this.conn.is_handshaking() && this.failed.is_none() {
            if let Err(e) = ready!(this.poll_handshake(cx)) {
                return Poll::Ready(Err(io::Error::other(e)));
            }
        }
        if let Some(e) = &this.failed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                (**e).clone(),
            )));
        }
        let total = bufs.iter().map(|b| b.len()).sum::<usize>().min(WRITE_MAX);
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let r = match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) if b.len() >= total => this.process(Some(&b[..total]), false, &mut [], &mut 0),
            _ => GATHER.with(|g| {
                // One gathering buffer per thread, kept between writes.
                let mut v = std::mem::take(&mut *g.borrow_mut());
                for b in bufs {
                    let take = (total - v.len()).min(b.len());
                    v.extend_from_slice(&b[..take]);
                }
                let r = this.process(Some(&v), false, &mut [], &mut 0);
                v.clear();
                if v.capacity() <= GATHER_KEEP {
                    *g.borrow_mut() = v;
                }
                r
            }),
        };
        match r {
            Ok(Reached::Traffic) => {}
            Ok(_) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Err(e) => {
                this.fail(e.clone());
                let _ = this.poll_flush_out(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
        match this.poll_flush_out(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Accepted either way: what is still queued goes out on the
            // next write or flush.
            _ => Poll::Ready(Ok(total)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            if this.failed.is_none() && !this.conn.is_handshaking() {
                if let Err(e) = this.process(None, true, &mut [], &mut 0) {
                    this.fail(e);
                }
            }
        }
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}
