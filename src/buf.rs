//! Per-core read buffers. A connection holds a buffer only while it has
//! unconsumed bytes: a read that finds the socket empty gives its buffer
//! back to the core's pool before waiting, so an idle connection costs no
//! buffer memory at all.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::AsyncRead;

/// Size of a pooled buffer.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept in a core's pool at most; the rest are freed.
const POOL_MAX: usize = 256;

/// A core's free buffers. Not shared across threads. Read buffers are
/// kept at full length (zeroed once, when first made); output buffers are
/// kept empty with their capacity, so neither is cleared on reuse.
#[derive(Default)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    free_out: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; BUF_SIZE])
    }

    pub fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if buf.len() == BUF_SIZE && free.len() < POOL_MAX {
            free.push(buf);
        }
    }

    /// An empty output buffer (length 0, pooled capacity).
    pub fn take_out(&self) -> Vec<u8> {
        self.free_out
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    /// Returns an output buffer taken with `take_out`; one that grew past
    /// the pooled size is freed instead.
    pub fn give_out(&self, mut buf: Vec<u8>) {
        let mut free = self.free_out.borrow_mut();
        if buf.capacity() <= 4 * BUF_SIZE && free.len() < POOL_MAX {
            buf.clear();
            free.push(buf);
        }
    }
}

/// Bytes read from a socket and not yet consumed: `buf[start..end]`.
pub struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pool: Rc<BufPool>,
}

impl InBuf {
    pub fn new(pool: Rc<BufPool>) -> Self {
        InBuf {
            buf: Vec::new(),
            start: 0,
            end: 0,
            pool,
        }
    }

    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks `n` bytes as consumed; an emptied buffer goes back to the pool.
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.end {
            self.release();
        }
    }

    /// Drops any buffered bytes and gives the buffer back.
    pub fn release(&mut self) {
        self.start = 0;
        self.end = 0;
        if !self.buf.is_empty() {
            self.pool.give(std::mem::take(&mut self.buf));
        }
    }

    /// Makes room to read at least one more byte, growing up to `max` total
    /// unconsumed bytes. Returns false when `max` is reached.
    fn make_room(&mut self, max: usize) -> bool {
        if self.buf.is_empty() {
            self.buf = self.pool.take();
        }
        if self.end < self.buf.len() {
            return true;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return true;
        }
        if self.buf.len() >= max {
            return false;
        }
        let grown = (self.buf.len() * 2).min(max.max(BUF_SIZE));
        self.buf.resize(grown, 0);
        true
    }

    /// Polls one read from `src` into the buffer, holding at most `max`
    /// unconsumed bytes. `Ok(0)` is end of stream; a full buffer is
    /// `FillError::Full`. While pending with nothing buffered, the buffer is
    /// back in the pool.
    pub fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        max: usize,
    ) -> Poll<Result<usize, FillError>> {
        if !self.make_room(max) {
            return Poll::Ready(Err(FillError::Full));
        }
        match Pin::new(src).poll_read(cx, &mut self.buf[self.end..]) {
            Poll::Ready(Ok(n)) => {
                self.end += n;
                if self.is_empty() {
                    self.release();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => {
                if self.is_empty() {
                    self.release();
                }
                Poll::Ready(Err(FillError::Io(e)))
            }
            Poll::Pending => {
                if self.is_empty() {
                    self.release();
                }
                Poll::Pending
            }
        }
    }

    /// Reads once more from `src` (see `poll_fill`).
    pub async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        src: &mut S,
        max: usize,
    ) -> Result<usize, FillError> {
        futures_lite::future::poll_fn(|cx| self.poll_fill(cx, src, max)).await
    }
}

/// Why a read into an `InBuf` brought no bytes.
#[derive(Debug)]
pub enum FillError {
    /// The buffer already holds its limit of unconsumed bytes: they must be
    /// consumed (or the input refused as too large) before reading more.
    Full,
    /// The read failed (a timeout is `TimedOut` or `WouldBlock`).
    Io(io::Error),
}

impl From<io::Error> for FillError {
    fn from(e: io::Error) -> FillError {
        FillError::Io(e)
    }
}

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillError::Full => f.write_str("input buffer full"),
            FillError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FillError {}

impl Drop for InBuf {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chunks(Vec<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            if self.0.is_empty() {
                return Poll::Pending;
            }
            let mut c = self.0.remove(0);
            let n = c.len().min(out.len());
            out[..n].copy_from_slice(&c[..n]);
            if n < c.len() {
                c.drain(..n);
                self.0.insert(0, c);
            }
            Poll::Ready(Ok(n))
        }
    }

    fn poll_once(b: &mut InBuf, src: &mut Chunks, max: usize) -> Poll<Result<usize, FillError>> {
        let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let mut cx = Context::from_waker(&waker);
        b.poll_fill(&mut cx, src, max)
    }

    #[test]
    fn idle_reads_hold_no_buffer() {
        let pool = Rc::new(BufPool::default());
        let mut b = InBuf::new(pool.clone());
        let mut src = Chunks(vec![b"hello".to_vec()]);
        assert!(matches!(
            poll_once(&mut b, &mut src, BUF_SIZE),
            Poll::Ready(Ok(5))
        ));
        assert_eq!(b.data(), b"hello");
        b.consume(5);
        assert!(b.buf.is_empty(), "consumed buffer goes back");
        assert!(poll_once(&mut b, &mut src, BUF_SIZE).is_pending());
        assert!(b.buf.is_empty(), "pending read holds no buffer");
        assert_eq!(pool.free.borrow().len(), 1);
    }

    #[test]
    fn grows_up_to_the_limit_then_refuses() {
        let pool = Rc::new(BufPool::default());
        let mut b = InBuf::new(pool);
        let mut src = Chunks(vec![vec![1u8; 3 * BUF_SIZE]]);
        let max = 2 * BUF_SIZE;
        let mut total = 0;
        loop {
            match poll_once(&mut b, &mut src, max) {
                Poll::Ready(Ok(n)) => total += n,
                Poll::Ready(Err(e)) => {
                    assert!(matches!(e, FillError::Full), "{e}");
                    break;
                }
                Poll::Pending => panic!("data was available"),
            }
        }
        assert_eq!(total, max);
        b.consume(10);
        assert!(
            matches!(poll_once(&mut b, &mut src, max), Poll::Ready(Ok(10))),
            "compacts"
        );
    }
}
