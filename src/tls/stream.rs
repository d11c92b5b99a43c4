//! A TLS stream over any byte stream: rustls's connection object between
//! an inner `AsyncRead + AsyncWrite` (a glommio `TcpStream`, say) and the
//! HTTP/WebSocket codecs, itself `AsyncRead + AsyncWrite`. No runtime and
//! no timer of its own: the handshake deadline is a future the caller
//! passes (on a core, `glommio::timer::sleep(d)`).
//!
//! Copies: rustls reads records from the socket straight into its own
//! buffer and writes its encrypted records straight to the socket (the
//! `io::Read`/`io::Write` shims below pass the buffers through); plaintext
//! is copied once out of (or into) rustls, as with any stream read.
//!
//! Writing: `poll_write` encrypts into rustls's buffer and pushes as much
//! as the socket takes; what it could not push goes out on the next write
//! or on `poll_flush`. So, as with any buffered writer, call `flush` after
//! the last write of a response or a batch of messages.
//!
//! Closing: `poll_close` sends close_notify, flushes, and closes the
//! inner stream. A peer's close_notify reads as end of stream (`Ok(0)`);
//! a peer that drops the TCP connection without one reads as an
//! `UnexpectedEof` error (a truncation, which a length-delimited HTTP
//! message would notice anyway).

use std::future::Future;
use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig, ClientConnection, ConnectionCommon, SideData};

/// Why a handshake failed; `reason()` is the metrics label.
#[derive(Debug)]
pub enum HandshakeError {
    /// The deadline passed first.
    Timeout,
    /// The first bytes were not a TLS handshake (see `sniff`); a plaintext
    /// HTTP request is answered separately.
    NotTls,
    /// No certificate for the client's SNI name and no default.
    NoCertificate,
    /// The client offered ALPN protocols, none of them `http/1.1`.
    AlpnMismatch,
    /// The peer sent a fatal alert (e.g. it does not trust our
    /// certificate).
    Alert(AlertDescription),
    /// The peer broke the protocol or shares no version, cipher suite or
    /// group with us.
    Protocol(rustls::Error),
    /// The peer closed or reset the connection mid-handshake.
    Closed,
    /// Another socket error.
    Io(io::Error),
}

impl HandshakeError {
    /// A short label for `/metrics` and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::NotTls => "not_tls",
            HandshakeError::NoCertificate => "no_certificate",
            HandshakeError::AlpnMismatch => "alpn_mismatch",
            HandshakeError::Alert(_) => "alert",
            HandshakeError::Protocol(_) => "bad_handshake",
            HandshakeError::Closed => "closed",
            HandshakeError::Io(_) => "io",
        }
    }

    /// Every label `reason` gives, for registering counters up front.
    pub const REASONS: [&'static str; 8] = [
        "timeout",
        "not_tls",
        "no_certificate",
        "alpn_mismatch",
        "alert",
        "bad_handshake",
        "closed",
        "io",
    ];

    pub(super) fn from_rustls(e: rustls::Error) -> HandshakeError {
        match e {
            rustls::Error::NoApplicationProtocol => HandshakeError::AlpnMismatch,
            rustls::Error::AlertReceived(a) => HandshakeError::Alert(a),
            // What rustls says when the resolver gives no certificate
            // (a test pins this text).
            rustls::Error::General(ref s) if s == "no server certificate chain resolved" => {
                HandshakeError::NoCertificate
            }
            e => HandshakeError::Protocol(e),
        }
    }

    pub(super) fn from_io(e: io::Error) -> HandshakeError {
        match e.kind() {
            // The socket's own read or write timeout (corepin sets the
            // header timeout on it at accept) can fire before the
            // handshake's deadline does: the same cause, the same reason.
            io::ErrorKind::TimedOut => HandshakeError::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => HandshakeError::Closed,
            _ => HandshakeError::Io(e),
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Timeout => f.write_str("TLS handshake timed out"),
            HandshakeError::NotTls => f.write_str("not a TLS handshake"),
            HandshakeError::NoCertificate => {
                f.write_str("no certificate for the requested server name")
            }
            HandshakeError::AlpnMismatch => {
                f.write_str("client offered no application protocol we speak (http/1.1)")
            }
            HandshakeError::Alert(a) => write!(f, "peer sent alert {a:?}"),
            HandshakeError::Protocol(e) => write!(f, "bad TLS handshake: {e}"),
            HandshakeError::Closed => f.write_str("peer closed during the TLS handshake"),
            HandshakeError::Io(e) => write!(f, "TLS handshake: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A TLS stream: rustls's buffered connection `C` over the byte stream
/// `IO`.
pub struct TlsStream<IO, C> {
    io: IO,
    conn: C,
    /// A protocol error found while reading, its alert queued; reported
    /// once the alert is flushed.
    failed: Option<rustls::Error>,
    /// close_notify queued.
    closing: bool,
}

/// The client side: TLS to backends. (A TLS listener's connections use
/// `server_stream::ServerTlsStream`, over rustls's unbuffered API.)
pub type ClientTlsStream<IO> = TlsStream<IO, ClientConnection>;

impl<IO> TlsStream<IO, ClientConnection> {
    /// Starts a client handshake to `name` on `io`.
    pub fn connect(
        io: IO,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, rustls::Error> {
        Ok(TlsStream {
            io,
            conn: ClientConnection::new(config, name)?,
            failed: None,
            closing: false,
        })
    }
}

/// `io::Read`/`io::Write` over a poll-based stream for rustls's
/// `read_tls`/`write_tls`: `Pending` becomes `WouldBlock` (the waker is
/// registered by the inner poll).
struct SyncIo<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
}

fn would_block<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl<IO: AsyncRead + Unpin> Read for SyncIo<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        would_block(Pin::new(&mut *self.io).poll_read(self.cx, buf))
    }
}

impl<IO: AsyncWrite + Unpin> Write for SyncIo<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        would_block(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        would_block(Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        would_block(Pin::new(&mut *self.io).poll_flush(self.cx))
    }
}

fn pending_on_would_block<T>(r: io::Result<T>) -> Poll<io::Result<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

impl<IO, C, SD> TlsStream<IO, C>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// The rustls connection: ALPN, SNI, version, cipher suite, whether
    /// the handshake resumed.
    pub fn conn(&self) -> &C {
        &self.conn
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    pub fn into_inner(self) -> (IO, C) {
        (self.io, self.conn)
    }

    /// Encrypts `bytes` after whatever is already queued, then writes
    /// queued records to `sink` until it takes no more (a non-blocking
    /// writer: `WouldBlock` ends it); the rest stays queued. No waiting and
    /// no waker: the last words to a peer being dropped.
    pub fn send_now(&mut self, bytes: &[u8], sink: &mut impl Write) {
        if self.failed.is_some() || self.conn.writer().write_all(bytes).is_err() {
            return;
        }
        while self.conn.wants_write() {
            match self.conn.write_tls(sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }

    /// Writes queued TLS records (one `writev` per call, as rustls hands
    /// them out) until none is left.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut w = SyncIo {
                io: &mut self.io,
                cx,
            };
            match ready!(pending_on_would_block(self.conn.write_tls(&mut w))) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads what the socket has into rustls and processes it. `Ok(0)`:
    /// the socket reached end of stream. A protocol error is kept in
    /// `failed` (its alert queued) and returned as `InvalidData`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut r = SyncIo {
            io: &mut self.io,
            cx,
        };
        let n = ready!(pending_on_would_block(self.conn.read_tls(&mut r)))?;
        if let Err(e) = self.conn.process_new_packets() {
            self.failed = Some(e.clone());
            // Best effort: tell the peer why before the caller drops us.
            let _ = self.poll_flush_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(n))
    }

    /// Drives the handshake to its end (our last flight, and on a server
    /// the session tickets, written out). Safe to call again after it
    /// completed.
    pub fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandshakeError>> {
        loop {
            match ready!(self.poll_flush_tls(cx)) {
                Ok(()) => {}
                Err(e) => {
                    let failed = self.failed.take();
                    return Poll::Ready(Err(match failed {
                        Some(f) => HandshakeError::from_rustls(f),
                        None => HandshakeError::from_io(e),
                    }));
                }
            }
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Err(HandshakeError::from_rustls(e)));
            }
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            let mut r = SyncIo {
                io: &mut self.io,
                cx,
            };
            match ready!(pending_on_would_block(self.conn.read_tls(&mut r))) {
                Ok(0) => return Poll::Ready(Err(HandshakeError::Closed)),
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        // Loop once more to send the alert rustls queued.
                        self.failed = Some(e);
                    }
                }
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
}

impl<IO, C, SD> AsyncRead for TlsStream<IO, C>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: DerefMut + Deref<Target = ConnectionCommon<SD>> + Unpin,
    SD: SideData,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Some(e) = &this.failed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e.clone())));
            }
            if this.conn.is_handshaking() {
                // Reading before the handshake is done: finish it first.
                if let Err(e) = ready!(this.poll_handshake(cx)) {
                    return Poll::Ready(Err(io::Error::other(e)));
                }
                continue;
            }
            ready!(this.poll_fill(cx))?;
            // Records that need an answer (a TLS 1.3 KeyUpdate): send it
            // now if the socket takes it, else with the next write.
            if this.conn.wants_write() {
                if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl<IO, C, SD> AsyncWrite for TlsStream<IO, C>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: DerefMut + Deref<Target = ConnectionCommon<SD>> + Unpin,
    SD: SideData,
{
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
        // What earlier writes left in rustls goes first, so its buffer
        // holds at most one call's worth.
        ready!(this.poll_flush_tls(cx))?;
        let n = this.conn.writer().write_vectored(bufs)?;
        match this.poll_flush_tls(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Accepted either way: what is still queued goes out on the
            // next write or flush.
            _ => Poll::Ready(Ok(n)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.conn.send_close_notify();
            this.closing = true;
        }
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}
