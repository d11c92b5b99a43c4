//! Streaming a message body from one socket to another without buffering
//! it whole: at most one read buffer and one output buffer are in flight,
//! and a slow reader stalls the writer (backpressure), never a buffer.

use std::io;

use futures_lite::{AsyncWrite, AsyncWriteExt};

use crate::buf::{FillError, BUF_SIZE};
use crate::codec::chunked::{self, ChunkError, ChunkedDecoder};
use crate::codec::http1::BodyKind;
use crate::connection::Connection;

/// Below this, a head and the first body bytes go out in one write.
const COALESCE_MAX: usize = 64 * 1024;

/// Where a relay failed: the side that was read, or the side written.
#[derive(Debug)]
pub enum RelayError {
    /// Reading the source failed (timeouts included).
    Read(FillError),
    /// The source ended before the body was complete.
    Truncated,
    /// The source's chunked framing was invalid.
    BadChunk(ChunkError),
    /// The body is larger than the limit.
    TooLarge,
    /// Writing to the destination failed.
    Write(io::Error),
}

/// How to frame the body on the destination side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    /// Bytes as they are (Content-Length, or close-delimited).
    Raw,
    /// Re-encoded as chunks, ended with the last chunk.
    Chunked,
}

/// A relay in progress: the head (`prefix`) goes out with the first data.
pub struct Relay<'a> {
    pub prefix: &'a mut Vec<u8>,
    pub out: &'a mut Vec<u8>,
    /// 0 = unlimited.
    pub limit: u64,
}

async fn write<D: AsyncWrite + Unpin>(dst: &mut D, bytes: &[u8]) -> Result<(), RelayError> {
    dst.write_all(bytes).await.map_err(RelayError::Write)
}

async fn fill(src: &mut Connection) -> Result<(), RelayError> {
    match src.fill(BUF_SIZE).await {
        Ok(0) => Err(RelayError::Truncated),
        Ok(_) => Ok(()),
        Err(e) => Err(RelayError::Read(e)),
    }
}

impl Relay<'_> {
    /// Writes the pending prefix and output.
    async fn flush<D: AsyncWrite + Unpin>(&mut self, dst: &mut D) -> Result<(), RelayError> {
        if !self.prefix.is_empty() {
            self.prefix.extend_from_slice(self.out);
            self.out.clear();
            write(dst, self.prefix).await?;
            self.prefix.clear();
        } else if !self.out.is_empty() {
            write(dst, self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends `data` now, joined to the prefix when that is still pending.
    async fn send<D: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut D,
        data: &[u8],
    ) -> Result<(), RelayError> {
        if !self.prefix.is_empty() && self.prefix.len() + data.len() <= COALESCE_MAX {
            self.prefix.extend_from_slice(data);
            return self.flush(dst).await;
        }
        self.flush(dst).await?;
        write(dst, data).await
    }

    /// Relays a body of kind `kind` read from `src` (what its input
    /// buffer holds first) to `dst`. Returns the number of body bytes
    /// relayed. The prefix is always sent, even for an empty body.
    pub async fn run<D: AsyncWrite + Unpin>(
        &mut self,
        src: &mut Connection,
        dst: &mut D,
        kind: BodyKind,
        framing: OutFraming,
    ) -> Result<u64, RelayError> {
        let mut total = 0u64;
        match kind {
            BodyKind::Empty => {}
            BodyKind::Length(n) => {
                if self.limit > 0 && n > self.limit {
                    return Err(RelayError::TooLarge);
                }
                let mut remaining = n;
                while remaining > 0 {
                    if !src.has_input() {
                        self.flush(dst).await?;
                        fill(src).await?;
                    }
                    let take = src
                        .input_len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    self.send(dst, &src.input()[..take]).await?;
                    src.consume(take);
                    remaining -= take as u64;
                    total += take as u64;
                }
            }
            BodyKind::Chunked => {
                let mut dec = ChunkedDecoder::new();
                loop {
                    if !src.has_input() {
                        self.flush(dst).await?;
                        fill(src).await?;
                    }
                    let d = dec.decode(src.input()).map_err(RelayError::BadChunk)?;
                    total += d.data.len() as u64;
                    if self.limit > 0 && total > self.limit {
                        return Err(RelayError::TooLarge);
                    }
                    match framing {
                        OutFraming::Chunked => chunked::write_chunk(self.out, d.data),
                        OutFraming::Raw => self.out.extend_from_slice(d.data),
                    }
                    let (consumed, done) = (d.consumed, d.done);
                    src.consume(consumed);
                    if done {
                        break;
                    }
                    if self.out.len() >= BUF_SIZE {
                        self.flush(dst).await?;
                    }
                }
                if framing == OutFraming::Chunked {
                    self.out.extend_from_slice(chunked::LAST_CHUNK);
                }
            }
            BodyKind::UntilClose => loop {
                if !src.has_input() {
                    self.flush(dst).await?;
                    match fill(src).await {
                        Err(RelayError::Truncated) => break,
                        r => r?,
                    }
                }
                let data = src.input();
                total += data.len() as u64;
                if self.limit > 0 && total > self.limit {
                    return Err(RelayError::TooLarge);
                }
                match framing {
                    OutFraming::Chunked => chunked::write_chunk(self.out, data),
                    OutFraming::Raw => self.out.extend_from_slice(data),
                }
                let n = data.len();
                src.consume(n);
            },
        }
        if kind == BodyKind::UntilClose && framing == OutFraming::Chunked {
            self.out.extend_from_slice(chunked::LAST_CHUNK);
        }
        self.flush(dst).await?;
        Ok(total)
    }
}
