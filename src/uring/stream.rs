//! The per-connection handles: [`UringStream`] (receive from held provided
//! buffers, queued sends of shared `Bytes`) and [`UringListener`]
//! (multishot accept). Both are an index into the core's tables plus the
//! shared core; dropping one cancels its operations and closes its fd once
//! the kernel is done with them.

use std::cell::RefCell;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};

use super::ring::Core;

/// Above this many unsent bytes, `AsyncWrite::poll_write` waits for the
/// socket to drain before taking more.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// A connected socket driven by the core's ring.
///
/// Receiving takes `&mut self` (one reader); sending takes `&self`, so a
/// task can receive and send on the same stream from one `poll_fn`.
pub struct UringStream {
    core: Rc<RefCell<Core>>,
    idx: u32,
}

impl UringStream {
    pub(super) fn new(core: Rc<RefCell<Core>>, idx: u32) -> Self {
        UringStream { core, idx }
    }

    /// The stream's slot in its core's ring, for [`super::Uring::send_if_idle`]
    /// (valid while this stream lives).
    pub fn slot(&self) -> u32 {
        self.idx
    }

    /// Ready when data, the end of the stream or an error can be read
    /// without waiting. Consumes nothing.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.core.borrow_mut().poll_readable(self.idx, cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub async fn readable(&mut self) {
        futures_lite::future::poll_fn(|cx| self.poll_readable(cx)).await
    }

    /// The oldest unconsumed received bytes, borrowed from the provided
    /// buffer they arrived in (no copy). `Ok(None)` is the end of the
    /// stream. Mark what was used with [`RecvBuf::consume`]; a buffer whose
    /// bytes are all consumed goes back to the ring when the `RecvBuf` drops.
    /// Data that arrived in several buffers comes one buffer at a time.
    pub fn poll_recv_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<RecvBuf<'_>>>> {
        let mut core = self.core.borrow_mut();
        if !core.poll_readable(self.idx, cx) {
            return Poll::Pending;
        }
        if let Some(b) = core.head(self.idx) {
            let (ptr, len) = (b.as_ptr(), b.len());
            drop(core);
            return Poll::Ready(Ok(Some(RecvBuf {
                stream: self,
                ptr,
                len,
                used: 0,
            })));
        }
        match core.rx_end(self.idx) {
            Ok(true) => Poll::Ready(Ok(None)),
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    pub async fn recv_buf(&mut self) -> io::Result<Option<RecvBuf<'_>>> {
        self.readable().await;
        self.take_buf()
    }

    /// After `readable`: the head buffer, the end of the stream or the error.
    fn take_buf(&mut self) -> io::Result<Option<RecvBuf<'_>>> {
        let mut core = self.core.borrow_mut();
        if let Some(b) = core.head(self.idx) {
            let (ptr, len) = (b.as_ptr(), b.len());
            drop(core);
            return Ok(Some(RecvBuf {
                stream: self,
                ptr,
                len,
                used: 0,
            }));
        }
        match core.rx_end(self.idx) {
            Ok(true) => Ok(None),
            Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        }
    }

    /// Copies received bytes into `out` (as many as are held and fit),
    /// returning each buffer to the ring as it empties. `Ok(0)` is the end of
    /// the stream (for a non-empty `out`).
    pub fn poll_recv_into(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut core = self.core.borrow_mut();
        if !core.poll_readable(self.idx, cx) {
            return Poll::Pending;
        }
        let mut n = 0;
        while n < out.len() {
            let Some(b) = core.head(self.idx) else { break };
            let k = b.len().min(out.len() - n);
            out[n..n + k].copy_from_slice(&b[..k]);
            core.consume(self.idx, k);
            n += k;
        }
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        match core.rx_end(self.idx) {
            Ok(true) => Poll::Ready(Ok(0)),
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// A read that waits from now on ends after `timeout` (then
    /// [`UringStream::take_read_timeout`] says so and the reader is woken);
    /// `None`, or data arriving first, clears it. A deadline is a slot in
    /// the core's queue, not a timer: setting one per wait is cheap.
    pub fn set_read_deadline(&self, timeout: Option<Duration>) {
        self.core.borrow_mut().set_rx_deadline(self.idx, timeout);
    }

    /// True once when the read deadline passed while the reader waited.
    pub fn take_read_timeout(&self) -> bool {
        self.core.borrow_mut().take_rx_timeout(self.idx)
    }

    /// True when nothing received is unread and the peer has not closed
    /// nor the socket failed (as far as the completions handled so far tell).
    pub fn rx_idle(&self) -> bool {
        self.core.borrow().rx_idle(self.idx)
    }

    /// Receive buffers this stream holds now (0 when idle).
    pub fn held_buffers(&self) -> usize {
        self.core.borrow().held(self.idx)
    }

    /// Hands `data` to the socket without waiting: it goes out in this loop
    /// turn's submission, or with the next send if one is in flight. An
    /// earlier send's error is returned here (and by every later call).
    pub fn start_send(&self, data: Bytes) -> io::Result<()> {
        self.core
            .borrow_mut()
            .queue_send(self.idx, &mut std::iter::once(data))
    }

    /// Like [`UringStream::start_send`] for several buffers: one `sendmsg`
    /// with an iovec per buffer (each `Bytes` is a reference count, not a copy).
    pub fn start_send_vectored(&self, data: &[Bytes]) -> io::Result<()> {
        self.core
            .borrow_mut()
            .queue_send(self.idx, &mut data.iter().cloned())
    }

    /// Hands a copy of `parts` (in order) to the socket without waiting,
    /// for callers that hold borrowed bytes: when nothing else is queued or
    /// in flight the copy goes into the socket's pooled send arena (no
    /// allocation), otherwise into one new `Bytes`.
    pub fn start_send_copy(&self, parts: &[&[u8]]) -> io::Result<()> {
        let total = parts.iter().map(|p| p.len()).sum();
        self.core.borrow_mut().queue_copy(self.idx, parts, total)
    }

    /// Ready when everything handed over has been sent (or failed).
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.core.borrow_mut().poll_flushed(self.idx, cx) {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    pub async fn flush(&self) -> io::Result<()> {
        futures_lite::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Sends all of `data` (short sends are continued by the driver).
    pub async fn send(&self, data: &Bytes) -> io::Result<()> {
        self.start_send(data.clone())?;
        self.flush().await
    }

    /// Sends all of `data`, in order, as one `sendmsg` where it fits.
    pub async fn send_vectored(&self, data: &[Bytes]) -> io::Result<()> {
        self.start_send_vectored(data)?;
        self.flush().await
    }

    /// The error that stopped this stream's sends, if one did (registers
    /// no waker, unlike `poll_flush`).
    pub fn send_error(&self) -> Option<io::Error> {
        self.core.borrow().tx_error(self.idx)
    }

    /// Bytes handed over and not yet confirmed sent (for slow-peer policy).
    pub fn unsent(&self) -> usize {
        self.core.borrow().unsent(self.idx)
    }

    /// Shuts down the sending side (a plain `shutdown(2)`; sends handed over
    /// before should be flushed first).
    pub fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: shutdown(2) on an fd this stream owns; no memory passed.
        if unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_WR) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for UringStream {
    fn as_raw_fd(&self) -> RawFd {
        self.core.borrow().fd(self.idx)
    }
}

impl AsFd for UringStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd stays open while the stream exists (it is closed
        // only after the stream is dropped).
        unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        self.core.borrow_mut().drop_sock(self.idx);
    }
}

impl AsyncRead for UringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_recv_into(cx, buf)
    }
}

/// Copies each write (`start_send_copy`; the native `start_send` takes
/// shared `Bytes` without a copy); waits only when `WRITE_HIGH_WATER` bytes
/// are still unsent.
impl AsyncWrite for UringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unsent() >= WRITE_HIGH_WATER {
            match this.poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map(|r| r.map(|()| 0)),
            }
        }
        this.start_send_copy(&[buf])?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        UringStream::poll_flush(self.get_mut(), cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match UringStream::poll_flush(this, cx) {
            Poll::Ready(Ok(())) => Poll::Ready(this.shutdown_write()),
            other => other,
        }
    }
}

/// Received bytes borrowed from a provided buffer (see
/// [`UringStream::poll_recv_buf`]). Holds the stream mutably, so the
/// buffer cannot go back to the kernel while its bytes are borrowed.
pub struct RecvBuf<'a> {
    stream: &'a mut UringStream,
    ptr: *const u8,
    len: usize,
    used: usize,
}

impl RecvBuf<'_> {
    /// Marks the first `n` bytes as used; the rest stays for the next read.
    pub fn consume(&mut self, n: usize) {
        self.used = (self.used + n).min(self.len);
    }
}

impl Deref for RecvBuf<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` are bytes the kernel wrote into a buffer
        // this stream holds; it goes back to the ring only through
        // `Core::consume` or `drop_sock`, and both need the stream, which
        // this guard borrows mutably until it drops.
        let all = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        &all[self.used..]
    }
}

impl Drop for RecvBuf<'_> {
    fn drop(&mut self) {
        if self.used > 0 {
            self.stream
                .core
                .borrow_mut()
                .consume(self.stream.idx, self.used);
        }
    }
}

/// A listening socket accepting through a multishot accept.
pub struct UringListener {
    core: Rc<RefCell<Core>>,
    idx: u32,
}

impl UringListener {
    pub(super) fn new(core: Rc<RefCell<Core>>, idx: u32) -> Self {
        UringListener { core, idx }
    }

    /// The next accepted connection as a stream (receive armed). An accept
    /// error (EMFILE at the process's file limit, ENFILE, ENOMEM) is
    /// returned once; the accept is re-armed by the next call, so back off
    /// before calling again: the connection waits in the listen backlog.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<UringStream>> {
        let r = self.core.borrow_mut().poll_accept(self.idx, cx);
        match r {
            Some(Ok(fd)) => Poll::Ready(Ok(self.adopt(fd))),
            Some(Err(e)) => Poll::Ready(Err(e)),
            None => Poll::Pending,
        }
    }

    pub async fn accept(&mut self) -> io::Result<UringStream> {
        futures_lite::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// The next accepted socket as a plain descriptor, not yet on the ring
    /// (an acceptor that may refuse it closes it at once; make it a stream
    /// with [`super::Uring::stream`]). Errors as [`UringListener::poll_accept`].
    pub async fn accept_fd(&mut self) -> io::Result<OwnedFd> {
        futures_lite::future::poll_fn(|cx| {
            let mut c = self.core.borrow_mut();
            match c.poll_accept(self.idx, cx) {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Accept with one multishot (the default) or one connection per
    /// accept asked for. After EMFILE or ENFILE the listener switches to
    /// one at a time by itself (an armed multishot would take every
    /// descriptor freed while armed, the acceptor's reserve included); the
    /// acceptor switches it back once descriptors are free again.
    pub fn set_multishot(&mut self, on: bool) {
        self.core.borrow_mut().set_multishot(self.idx, on);
    }

    pub fn multishot(&self) -> bool {
        self.core.borrow().multishot(self.idx)
    }

    /// An accepted socket inherits the listener's socket options (set
    /// `TCP_NODELAY` on the listener rather than a syscall per connection).
    fn adopt(&self, fd: OwnedFd) -> UringStream {
        let idx = self.core.borrow_mut().add_sock(fd, true);
        UringStream::new(self.core.clone(), idx)
    }
}

impl AsRawFd for UringListener {
    fn as_raw_fd(&self) -> RawFd {
        self.core.borrow().listener_fd(self.idx)
    }
}

impl Drop for UringListener {
    fn drop(&mut self) {
        self.core.borrow_mut().drop_listener(self.idx);
    }
}
