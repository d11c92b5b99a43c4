//! A client connection's task, and a held stream run as one small state
//! machine (issue 16, item 4: an idle connection's future as small as the
//! state it needs).
//!
//! A request is served by `http::serve_client`'s future, boxed; a stream
//! hold (`Grip-Hold: stream`, the test target's `/stream`) is set up
//! inside it, several futures deep (`serve_client` → `handle` → the
//! route's → `grip::hold`), each sized for the largest of its own steps.
//! Once the hold is set up those futures end: the connection, the request
//! head and the stream's own state (`grip::HeldStream`) are handed here,
//! as one `HeldConn`, and polled by hand. Waiting and delivering are done
//! inline (`grip::poll_event`, `grip::Writing`: a delivery allocates
//! nothing); the rare steps (the head's write, a next link's fetch, the
//! stream's end) run as boxed futures that own the `HeldConn` while they
//! run. When the stream ends with the connection kept, a new request
//! future takes it on.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use crate::codec::http1::RequestHead;
use crate::conn::grip::{self, HeldStream, HoldEvent, Writing, Written};
use crate::conn::http::{Client, Outcome};
use crate::shard::Shard;
use crate::subs::Msg;

type Serving = Pin<Box<dyn Future<Output = Option<Box<HeldConn>>>>>;
type Step = Pin<Box<dyn Future<Output = (Box<HeldConn>, Option<Outcome>)>>>;

/// A client connection's task: serving requests, or holding a stream.
pub struct ConnTask {
    state: State,
}

enum State {
    /// Reading and answering requests (`http::serve_client`); ends with
    /// the connection closed, or a stream handed off.
    Serving(Serving),
    /// A held stream waiting for its next message, or writing one.
    Held(Box<HeldConn>),
    /// A held stream's rare step.
    Step(Step),
    /// The connection's end (`Connection::linger_close`).
    Closing(Pin<Box<dyn Future<Output = ()>>>),
    Done,
}

impl ConnTask {
    pub fn new(serving: impl Future<Output = Option<Box<HeldConn>>> + 'static) -> ConnTask {
        ConnTask {
            state: State::Serving(Box::pin(serving)),
        }
    }
}

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            this.state = match std::mem::replace(&mut this.state, State::Done) {
                State::Serving(mut f) => match f.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = State::Serving(f);
                        return Poll::Pending;
                    }
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Ready(Some(h)) => State::Step(step(h, Rare::Open)),
                },
                State::Held(mut h) => match h.poll_held(cx) {
                    Poll::Pending => {
                        this.state = State::Held(h);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(rare)) => State::Step(step(h, rare)),
                    Poll::Ready(Err(end)) => h.finish(end),
                },
                State::Step(mut f) => match f.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = State::Step(f);
                        return Poll::Pending;
                    }
                    Poll::Ready((h, None)) => State::Held(h),
                    Poll::Ready((h, Some(end))) => h.finish(end),
                },
                State::Closing(mut f) => match f.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = State::Closing(f);
                        return Poll::Pending;
                    }
                    Poll::Ready(()) => return Poll::Ready(()),
                },
                State::Done => return Poll::Ready(()),
            };
        }
    }
}

/// A held stream's connection and all it keeps while held.
pub struct HeldConn {
    c: Client,
    /// The request, for the access log and the stream's steps.
    head: RequestHead,
    /// When the request started (`Shard::clock`), for the access log.
    started: Option<Instant>,
    stream: HeldStream,
    /// A delivery under way.
    writing: Option<Writing>,
}

/// A held stream's rare steps, each run as a boxed future.
enum Rare {
    /// The head and initial body.
    Open,
    Close,
    Error(String),
    Refetch,
}

impl HeldConn {
    /// The hand-off of `http::serve_client`: `stats` is the connection's
    /// id on the stats socket, if it has one (closed when the stream ends).
    /// Takes the hand-off's box itself (`HoldEnd::Held` is boxed so the
    /// futures it passes through stay small), freed here.
    #[allow(clippy::boxed_local)]
    pub fn new(
        c: Client,
        head: RequestHead,
        started: Option<Instant>,
        stats: Option<String>,
        stream: Box<HeldStream>,
    ) -> Box<HeldConn> {
        let mut stream = *stream;
        stream.stats = stats;
        Box::new(HeldConn {
            c,
            head,
            started,
            stream,
            writing: None,
        })
    }

    fn end(&self, keep: bool) -> Outcome {
        let s = &self.stream;
        grip::done(s.code, s.bytes, &s.ctx(&self.head), keep)
    }

    /// Waits for the stream's next message and writes it: what the
    /// stream spends its life in. Returns a rare step to run, or the
    /// stream's end.
    ///
    /// On the io_uring data path, while it waits idle (nothing being
    /// written) the stream's subscriber carries the socket's ring slot, so
    /// that a fan-out sends a message straight to the socket instead of
    /// queueing it and waking this task (`subs::Sub::send_direct`); every
    /// poll takes the slot back first (and the body bytes so sent, for the
    /// access log), so nothing is sent directly while the task writes,
    /// runs a rare step or ends.
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Result<Rare, Outcome>> {
        {
            let s = &mut self.stream;
            s.sub.set_direct(None);
            s.bytes += s.sub.take_direct_bytes();
        }
        loop {
            if let Some(w) = self.writing.as_mut() {
                let s = &self.stream;
                let r = ready!(w.poll(&s.shard, &mut self.c, &s.sub, cx));
                if let Some(w) = self.writing.take() {
                    w.end(&s.sub, r);
                }
                match r {
                    Written::Done => {}
                    Written::Gone => return Poll::Ready(Err(self.end(false))),
                    Written::Dropped => {
                        grip::dropped_warning(&s.shard, &self.c, "stream");
                        return Poll::Ready(Err(self.end(false)));
                    }
                }
            }
            let s = &mut self.stream;
            let event = match grip::poll_event(&mut self.c, &s.sub, cx) {
                Poll::Ready(e) => e,
                Poll::Pending => {
                    s.sub.set_direct(self.c.conn.ring_slot());
                    return Poll::Pending;
                }
            };
            match event {
                HoldEvent::Msg(Msg::Data(b)) => {
                    // The access log counts body bytes, not chunk framing.
                    let measure = if s.http10 {
                        <[u8]>::len
                    } else {
                        crate::codec::chunked::payload_len
                    };
                    let (w, n) = Writing::new(&s.sub, b, measure);
                    s.bytes += n;
                    self.writing = Some(w);
                }
                HoldEvent::Msg(Msg::Close) => return Poll::Ready(Ok(Rare::Close)),
                HoldEvent::Msg(Msg::Error(why)) => return Poll::Ready(Ok(Rare::Error(why))),
                HoldEvent::Msg(Msg::Refetch) => return Poll::Ready(Ok(Rare::Refetch)),
                HoldEvent::Msg(
                    Msg::Response(_)
                    | Msg::ResponseBody(..)
                    | Msg::Timeout
                    | Msg::WsClose(..)
                    | Msg::Refresh,
                ) => {}
                HoldEvent::ClientGone => return Poll::Ready(Err(self.end(false))),
                HoldEvent::Dropped => {
                    grip::dropped_warning(&s.shard, &self.c, "stream");
                    return Poll::Ready(Err(self.end(false)));
                }
            }
        }
    }

    /// Runs a rare step: `None` when the stream goes on.
    async fn rare(&mut self, rare: Rare) -> Option<Outcome> {
        let HeldConn {
            c, head, stream, ..
        } = self;
        let HeldStream {
            shard,
            sub,
            open,
            links,
            route,
            target,
            connection_id,
            code,
            bytes,
            http10,
            debug,
            ..
        } = stream;
        let ctx = grip::link_ctx(
            head,
            route.as_deref(),
            target,
            *debug,
            connection_id.as_deref(),
        );
        match rare {
            Rare::Open => {
                let open = open.take()?;
                grip::open_stream(shard, c, &ctx, sub, open, *code, *bytes).await
            }
            Rare::Close => Some(grip::end_stream(shard, c, &ctx, *code, *bytes).await),
            Rare::Error(why) => {
                Some(grip::stream_failed(shard, c, &ctx, *code, *bytes, &why).await)
            }
            Rare::Refetch => grip::refetch(shard, c, &ctx, sub, links, *http10, *code, bytes).await,
        }
    }

    /// The stream ended as `end`: its gone link, its subscription, the
    /// access log, then the connection goes on to its next request or
    /// closes.
    fn finish(self: Box<Self>, end: Outcome) -> State {
        let HeldConn {
            mut c,
            head,
            started,
            stream,
            writing,
        } = *self;
        drop(writing);
        if let Some(url) = stream.gone() {
            grip::send_gone(&stream.shard, &stream.ctx(&head), url);
        }
        let shard: Rc<Shard> = stream.shard.clone();
        drop(stream);
        crate::conn::http::log_exchange(&shard, &mut c, &head, &end, started);
        if end.keep_alive && !shard.draining() {
            State::Serving(Box::pin(crate::conn::http::serve_client(shard, c)))
        } else {
            State::Closing(Box::pin(async move { c.conn.linger_close().await }))
        }
    }
}

/// A rare step as a future that owns the connection while it runs.
fn step(mut h: Box<HeldConn>, rare: Rare) -> Step {
    Box::pin(async move {
        let end = h.rare(rare).await;
        (h, end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle held stream's whole state is a `HeldConn` in one box, and
    /// the task's `ConnTask` (PERFORMANCE.md, "Per-connection byte
    /// budget"): a field that grows them grows every held stream. The
    /// bounds are today's sizes; raise them knowingly.
    #[test]
    fn a_held_stream_stays_small() {
        let held = std::mem::size_of::<HeldConn>();
        let task = std::mem::size_of::<ConnTask>();
        eprintln!("HeldConn {held} bytes, ConnTask {task} bytes");
        assert!(held <= 592, "HeldConn is {held} bytes");
        assert!(task <= 24, "ConnTask is {task} bytes");
    }
}
