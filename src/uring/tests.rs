//! The driver over real loopback sockets: each test runs a glommio executor
//! with a ring and its driver task, and plain blocking std sockets on other
//! threads as peers.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::LocalExecutorBuilder;

use super::*;

/// Runs `body` on a fresh glommio executor with a ring and its driver.
fn with_ring<F, Fut>(cfg: Config, body: F)
where
    F: FnOnce(Uring) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let ring = Uring::new(cfg).expect("ring");
            let driver = glommio::spawn_local(ring.clone().drive());
            body(ring.clone()).await;
            ring.stop();
            driver.await.expect("driver");
        })
        .expect("executor")
        .join()
        .expect("join");
}

/// Waits (inside the executor) until `cond` holds; a bounded wait on an
/// observable fact, failing the test with `what` if it never comes.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never happened: {what}"
        );
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

/// A stream on the ring for an accepted std socket.
/// A peer that connects to `addr`, waits for the word on the returned
/// sender, then resets the connection (SO_LINGER 0: its close sends RST
/// instead of FIN).
fn resetting_peer(addr: SocketAddr) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let c = TcpStream::connect(addr).expect("connect");
        rx.recv().expect("go");
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(c);
    });
    (peer, tx)
}

fn accept_std(ring: &Uring, l: &TcpListener) -> UringStream {
    let (s, _) = l.accept().expect("accept");
    ring.stream(OwnedFd::from(s))
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn read_exact(s: &mut UringStream, n: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match s.recv_buf().await.expect("recv") {
            Some(mut b) => {
                let k = b.len().min(n - got.len());
                got.extend_from_slice(&b[..k]);
                b.consume(k);
            }
            None => panic!("EOF after {} of {n} bytes", got.len()),
        }
    }
    got
}

async fn read_to_end(s: &mut UringStream) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    while let Some(mut b) = s.recv_buf().await? {
        got.extend_from_slice(&b);
        let n = b.len();
        b.consume(n);
    }
    Ok(got)
}

fn echo_in(mode: RingMode) {
    let (l, addr) = listener();
    let peer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"ping one").expect("write");
        let mut buf = [0u8; 8];
        c.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"PING ONE");
    });
    let cfg = Config {
        mode,
        ..Config::default()
    };
    with_ring(cfg, move |ring| async move {
        let mode = ring.mode();
        let mut lst = ring.listener(OwnedFd::from(l));
        let mut s = lst.accept().await.expect("accept");
        let got = read_exact(&mut s, 8).await;
        assert_eq!(s.held_buffers(), 0, "a consumed buffer goes back at once");
        assert_eq!(
            ring.buffers_free(),
            1024,
            "every buffer is back in the ring ({mode:?})"
        );
        s.send(&Bytes::from(got.to_ascii_uppercase()))
            .await
            .expect("send");
        drop(s);
        drop(lst);
        until("closes and cancels complete", || ring.in_flight() == 0).await;
    });
    peer.join().expect("peer");
}

#[test]
fn echo_with_defer_taskrun() {
    echo_in(RingMode::Defer);
}

#[test]
fn echo_with_coop_taskrun() {
    echo_in(RingMode::Coop);
}

#[test]
fn echo_with_plain_ring() {
    echo_in(RingMode::Plain);
}

#[test]
fn kernel_6_accepts_defer_taskrun() {
    // This is the mode the proxy measurements use; a kernel that refuses it
    // falls back (logged), which the tests above cover.
    with_ring(Config::default(), |ring| async move {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let major: u32 = release
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major >= 6 {
            assert_eq!(ring.mode(), RingMode::Defer, "kernel {release}");
        }
    });
}

/// DEFER_TASKRUN defers completions until the ring is entered; the eventfd
/// must still tell a sleeping driver that there is work. Checked here on
/// the raw core, without glommio: the eventfd is readable once data arrives
/// even though nothing entered the ring, and only while enabled.
#[test]
fn deferred_completions_signal_the_eventfd_only_while_enabled() {
    let (l, addr) = listener();
    let mut core = ring::Core::new(Config::default()).expect("core");
    if core.mode != RingMode::Defer {
        return;
    }
    let mut peer = TcpStream::connect(addr).expect("connect");
    let (s, _) = l.accept().expect("accept");
    let i = core.add_sock(OwnedFd::from(s), true);
    core.turn(false).expect("turn"); // submits the receive
    let readable = |fd: i32, ms: i32| {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    };
    let efd = core.efd.as_raw_fd();
    // Disabled (the driver is busy): data arrives, no signal.
    peer.write_all(b"a").expect("write");
    assert!(!readable(efd, 200), "signalled while disabled");
    assert_eq!(
        core.turn(false).expect("turn"),
        1,
        "the deferred completion runs at the enter"
    );
    assert_eq!(core.head(i), Some(&b"a"[..]));
    core.consume(i, 1);
    // Enabled (the driver sleeps): the arrival signals before any enter.
    core.set_eventfd(true);
    peer.write_all(b"b").expect("write");
    assert!(readable(efd, 5000), "no signal for deferred work");
    assert_eq!(core.turn(false).expect("turn"), 1);
    assert_eq!(core.head(i), Some(&b"b"[..]));
    core.consume(i, 1);
    core.drop_sock(i);
    core.turn(false).expect("turn");
}

#[test]
fn vectored_and_queued_sends_arrive_in_order() {
    let (l, addr) = listener();
    let chunks: Vec<Vec<u8>> = (0..300)
        .map(|k| pattern(1 + (k * 37) % 900, k as u8))
        .collect();
    let expect: Vec<u8> = chunks.concat();
    let total = expect.len();
    let peer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        let mut got = vec![0u8; total];
        c.read_exact(&mut got).expect("read");
        assert!(got == expect, "bytes out of order or corrupted");
    });
    with_ring(Config::default(), move |ring| async move {
        let s = accept_std(&ring, &l);
        let bytes: Vec<Bytes> = chunks.into_iter().map(Bytes::from).collect();
        // Some as vectored batches, some one at a time while a send is in
        // flight: all go out in order.
        s.start_send_vectored(&bytes[..100]).expect("queue");
        for b in &bytes[100..200] {
            s.start_send(b.clone()).expect("queue");
        }
        s.send_vectored(&bytes[200..]).await.expect("send");
        assert_eq!(s.unsent(), 0);
        let st = ring.stats();
        assert!(st.sendmsgs >= 1, "a vectored send used sendmsg: {st:?}");
        assert!(
            st.sends < 150,
            "sends handed over while one is in flight are coalesced: {st:?}"
        );
    });
    peer.join().expect("peer");
}

#[test]
fn copied_writes_arrive_in_order_and_do_not_borrow_the_callers_buffer() {
    let (l, addr) = listener();
    // Rounds of: a copy handed over alone (it goes into the socket's send
    // arena), a gathered copy and a shared send queued behind it while the
    // first is in flight (their own Bytes). One round's copy is far larger
    // than the socket buffers (it may complete short; the arena is then
    // too large to be pooled).
    let rounds: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = (0..40)
        .map(|k| {
            let n = if k == 20 {
                8 << 20
            } else {
                1 + (k * 53) % 3000
            };
            (
                pattern(n, k as u8),
                pattern(1 + (k * 17) % 500, (k + 100) as u8),
                pattern(1 + (k * 29) % 700, (k + 200) as u8),
            )
        })
        .collect();
    let mut expect = Vec::new();
    for (a, b, c) in &rounds {
        expect.extend_from_slice(a);
        expect.extend_from_slice(b);
        expect.extend_from_slice(c);
    }
    let total = expect.len();
    let peer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        let mut got = vec![0u8; total];
        c.read_exact(&mut got).expect("read");
        assert!(got == expect, "bytes out of order or corrupted");
    });
    with_ring(Config::default(), move |ring| async move {
        let s = accept_std(&ring, &l);
        let mut scratch: Vec<u8> = Vec::new();
        for (a, b, c) in rounds {
            scratch.clear();
            scratch.extend_from_slice(&a);
            s.start_send_copy(&[&scratch]).expect("copy");
            // The caller reuses its buffer at once: what was handed over
            // must not change.
            scratch.fill(0xAA);
            scratch.clear();
            scratch.extend_from_slice(&b[..b.len() / 2]);
            s.start_send_copy(&[&scratch, &b[b.len() / 2..]])
                .expect("copy");
            scratch.fill(0x55);
            s.start_send(Bytes::from(c)).expect("shared");
            s.flush().await.expect("flush");
            assert_eq!(s.unsent(), 0);
        }
    });
    peer.join().expect("peer");
}

#[test]
fn short_sends_are_continued_by_the_driver() {
    let (l, addr) = listener();
    const N: usize = 16 << 20;
    let started = Arc::new(AtomicBool::new(false));
    let go = started.clone();
    let peer = std::thread::spawn(move || {
        let c = TcpStream::connect(addr).expect("connect");
        // Read only once the send is in flight, so it cannot fit at once.
        while !go.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut got = Vec::with_capacity(N);
        let mut c = c;
        c.read_to_end(&mut got).expect("read");
        assert_eq!(got.len(), N);
        assert!(got == pattern(N, 7), "corrupted");
    });
    with_ring(Config::default(), move |ring| async move {
        let s = accept_std(&ring, &l);
        s.start_send(Bytes::from(pattern(N, 7))).expect("queue");
        // Nobody reads yet and the socket buffers hold well under 16 MiB
        // (tcp_wmem + tcp_rmem maxima), so the first send completes short.
        let r = ring.clone();
        until("a short send", move || r.stats().short_sends > 0).await;
        started.store(true, Ordering::Release);
        s.flush().await.expect("flush");
        let st = ring.stats();
        assert_eq!(st.sent_bytes, N as u64);
        s.shutdown_write().expect("shutdown");
    });
    peer.join().expect("peer");
}

#[test]
fn a_reset_is_reported_to_the_reader_and_the_sender() {
    let (l, addr) = listener();
    let (peer, tx) = resetting_peer(addr);
    with_ring(Config::default(), move |ring| async move {
        let mut s = accept_std(&ring, &l);
        tx.send(()).expect("go");
        let e = read_to_end(&mut s).await.expect_err("a reset, not EOF");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        // The stream then reads as ended; sends fail.
        assert!(read_to_end(&mut s).await.expect("ended").is_empty());
        let r = s.send(&Bytes::from_static(b"x")).await;
        assert!(r.is_err(), "a send on a reset socket fails");
        assert!(
            s.start_send(Bytes::from_static(b"y")).is_err(),
            "the error sticks"
        );
    });
    peer.join().expect("peer");
}

#[test]
fn end_of_stream_after_the_data() {
    let (l, addr) = listener();
    let peer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(&pattern(100_000, 3)).expect("write");
        c.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).expect("read");
        assert_eq!(rest, b"bye");
    });
    with_ring(Config::default(), move |ring| async move {
        let mut s = accept_std(&ring, &l);
        let got = read_to_end(&mut s).await.expect("read");
        assert!(got == pattern(100_000, 3));
        assert_eq!(s.held_buffers(), 0);
        s.send(&Bytes::from_static(b"bye")).await.expect("send");
    });
    peer.join().expect("peer");
}

/// With fewer buffers than data in flight, receives end with ENOBUFS; the
/// data waits in the sockets and the receives are re-armed once readers
/// return buffers. Nothing is lost or reordered.
#[test]
fn an_exhausted_buffer_ring_rearms_and_loses_nothing() {
    let (l, addr) = listener();
    const PEERS: usize = 6;
    const EACH: usize = 200_000;
    let peers: Vec<_> = (0..PEERS)
        .map(|k| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).expect("connect");
                c.write_all(&pattern(EACH, k as u8)).expect("write");
                c.shutdown(Shutdown::Write).expect("shutdown");
                let mut ack = [0u8; 2];
                c.read_exact(&mut ack).expect("ack");
                assert_eq!(&ack, b"ok");
            })
        })
        .collect();
    let cfg = Config {
        buffers: 4,
        buffer_size: 1024,
        hold_per_socket: 64,
        ..Config::default()
    };
    with_ring(cfg, move |ring| async move {
        let streams: Vec<UringStream> = (0..PEERS).map(|_| accept_std(&ring, &l)).collect();
        let r = ring.clone();
        until("the ring runs dry", move || r.stats().enobufs > 0).await;
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                glommio::spawn_local(async move {
                    let got = read_to_end(&mut s).await.expect("read");
                    // Which peer this is: its first byte is its seed.
                    let seed = got[0];
                    assert_eq!(got.len(), EACH);
                    assert!(
                        got == pattern(EACH, seed),
                        "peer {seed}: data lost or reordered"
                    );
                    s.send(&Bytes::from_static(b"ok")).await.expect("ack");
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let st = ring.stats();
        assert!(st.enobufs > 0 && st.recv_arms > PEERS as u64, "{st:?}");
        assert_eq!(ring.buffers_free(), 4, "every buffer back");
    });
    for p in peers {
        p.join().expect("peer");
    }
}

/// A reader that does not read holds at most `hold_per_socket` buffers: its
/// multishot receive is cancelled (it terminates, F_MORE clear) and
/// re-armed when the reader catches up.
#[test]
fn a_slow_reader_pauses_its_receive_and_resumes() {
    let (l, addr) = listener();
    const N: usize = 1 << 20;
    let peer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(&pattern(N, 9)).expect("write");
        c.shutdown(Shutdown::Write).expect("shutdown");
    });
    let cfg = Config {
        hold_per_socket: 2,
        ..Config::default()
    };
    with_ring(cfg, move |ring| async move {
        let mut s = accept_std(&ring, &l);
        let r = ring.clone();
        until("the receive pauses", move || r.stats().recv_paused > 0).await;
        // Paused: most of the data waits in the socket, not in our buffers
        // (the turn that asks for the cancellation may still take what the
        // kernel received in the same enter, so the bound is loose).
        assert!(s.held_buffers() < N / 4096 / 2, "held {}", s.held_buffers());
        let got = read_to_end(&mut s).await.expect("read");
        assert!(got == pattern(N, 9), "data lost or reordered");
        let st = ring.stats();
        assert!(st.recv_arms > 1, "re-armed after the pause: {st:?}");
        assert_eq!(ring.buffers_free(), 1024);
    });
    peer.join().expect("peer");
}

/// Dropping a stream cancels its receive and its stuck send; the `Bytes`
/// of the send stays alive until the kernel's completion, then is freed;
/// the fd is closed (the peer sees the end).
#[test]
fn dropping_a_stream_cancels_then_frees_then_closes() {
    struct Owner(Vec<u8>, Arc<AtomicBool>);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl Drop for Owner {
        fn drop(&mut self) {
            self.1.store(true, Ordering::Release);
        }
    }
    let (l, addr) = listener();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        socket2::SockRef::from(&c)
            .set_recv_buffer_size(65536)
            .expect("rcvbuf");
        rx.recv().expect("dropped");
        // The stream was dropped with a send stuck: we see some of it, then
        // the end (or a reset), never a hang.
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
        assert!(sink.len() < 8 << 20);
    });
    with_ring(Config::default(), move |ring| async move {
        let s = accept_std(&ring, &l);
        socket2::SockRef::from(&s)
            .set_send_buffer_size(16384)
            .expect("sndbuf");
        let freed = Arc::new(AtomicBool::new(false));
        let big = Bytes::from_owner(Owner(vec![1u8; 8 << 20], freed.clone()));
        s.start_send(big).expect("queue");
        let r = ring.clone();
        until("the send is in flight", move || {
            r.stats().sends > 0 && r.in_flight() >= 2
        })
        .await;
        drop(s);
        tx.send(()).expect("tell");
        until("cancel, send and close complete", || ring.in_flight() == 0).await;
        assert!(
            freed.load(Ordering::Acquire),
            "the send's Bytes is freed after its completion"
        );
    });
    peer.join().expect("peer");
}

#[test]
fn connect_through_the_ring_and_refused() {
    let (l, addr) = listener();
    // A port with nothing listening: bind, note the port, close.
    let closed = {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind");
        t.local_addr().expect("addr")
    };
    let peer = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        let mut b = [0u8; 5];
        c.read_exact(&mut b).expect("read");
        c.write_all(&b).expect("write");
    });
    with_ring(Config::default(), move |ring| async move {
        let e = ring.connect(closed).await.err().expect("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        let mut s = ring.connect(addr).await.expect("connect");
        s.send(&Bytes::from_static(b"hello")).await.expect("send");
        assert_eq!(read_exact(&mut s, 5).await, b"hello");
        drop(s);
        until("all closed", || ring.in_flight() == 0).await;
    });
    peer.join().expect("peer");
}

/// The seam the `Connection` type uses today: `InBuf::fill` over any
/// `AsyncRead`. Over the ring an idle connection holds neither an `InBuf`
/// buffer nor a provided buffer.
#[test]
fn inbuf_reads_through_the_ring_and_holds_nothing_idle() {
    let (l, addr) = listener();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        rx.recv().expect("idle checked");
        c.write_all(b"more").expect("write");
    });
    with_ring(Config::default(), move |ring| async move {
        let pool = std::rc::Rc::new(crate::buf::BufPool::default());
        let mut inbuf = crate::buf::InBuf::new(pool);
        let mut s = accept_std(&ring, &l);
        let mut head = Vec::new();
        while head.len() < 18 {
            inbuf.fill(&mut s, 65536).await.expect("fill");
            head.extend_from_slice(inbuf.data());
            let n = inbuf.len();
            inbuf.consume(n);
        }
        assert_eq!(head, b"GET / HTTP/1.1\r\n\r\n");
        assert!(inbuf.is_empty());
        assert_eq!(s.held_buffers(), 0);
        assert_eq!(ring.buffers_free(), 1024);
        tx.send(()).expect("go");
        inbuf.fill(&mut s, 65536).await.expect("fill");
        assert_eq!(inbuf.data(), b"more");
    });
    peer.join().expect("peer");
}

/// Many connections at once through multishot accept, each echoed by its
/// own task, with a `poll_fn` that polls receive and flush together.
#[test]
fn many_connections_through_multishot_accept() {
    let (l, addr) = listener();
    const CONNS: usize = 200;
    let peers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut cs: Vec<TcpStream> = (0..CONNS / 4)
                    .map(|_| TcpStream::connect(addr).expect("connect"))
                    .collect();
                for round in 0..5u8 {
                    for (k, c) in cs.iter_mut().enumerate() {
                        c.write_all(&[t as u8, k as u8, round]).expect("write");
                    }
                    for (k, c) in cs.iter_mut().enumerate() {
                        let mut b = [0u8; 3];
                        c.read_exact(&mut b).expect("read");
                        assert_eq!(b, [t as u8, k as u8, round]);
                    }
                }
            })
        })
        .collect();
    with_ring(Config::default(), move |ring| async move {
        let mut lst = ring.listener(OwnedFd::from(l));
        let mut tasks = Vec::new();
        for _ in 0..CONNS {
            let mut s = lst.accept().await.expect("accept");
            tasks.push(glommio::spawn_local(async move {
                let mut echoed = 0;
                futures_lite::future::poll_fn(|cx| loop {
                    // Receive and send progress polled in one place, as a
                    // WebSocket session polls several sources.
                    if let std::task::Poll::Ready(r) = s.poll_flush(cx) {
                        r.expect("flush");
                    }
                    let data = match s.poll_recv_buf(cx) {
                        std::task::Poll::Ready(Ok(Some(mut b))) => {
                            let data = Bytes::copy_from_slice(&b);
                            b.consume(data.len());
                            data
                        }
                        std::task::Poll::Ready(Ok(None)) => return std::task::Poll::Ready(()),
                        std::task::Poll::Ready(Err(e)) => panic!("{e}"),
                        std::task::Poll::Pending => return std::task::Poll::Pending,
                    };
                    echoed += data.len();
                    s.start_send(data).expect("send");
                })
                .await;
                s.flush().await.expect("flush");
                echoed
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await;
        }
        assert_eq!(total, CONNS * 15);
        assert!(
            ring.stats().accept_arms < CONNS as u64,
            "multishot: one arm, many accepts"
        );
        assert_eq!(ring.buffers_free(), 1024);
    });
    for p in peers {
        p.join().expect("peer");
    }
}

/// The per-connection cost of an idle stream: its handle plus its slot in
/// the core (no read buffer, no send state). PERFORMANCE.md quotes these.
#[test]
fn an_idle_stream_costs_a_handle_and_a_slot() {
    let handle = std::mem::size_of::<UringStream>();
    let slot = std::mem::size_of::<ring::Sock>();
    println!(
        "idle stream: handle {handle} B + core slot {slot} B; while sending, a pooled Tx of {} B",
        std::mem::size_of::<ring::Tx>()
    );
    assert!(handle <= 16, "handle {handle}");
    // 64 bytes of socket state and 16 of read deadline (issue 16: a
    // deadline per socket in place of a glommio timer per wait).
    assert!(slot <= 80, "slot {slot}");
}

/// Waits until `s` is readable (`false`) or its read deadline passes (`true`).
async fn readable_or_timed_out(s: &mut UringStream) -> bool {
    futures_lite::future::poll_fn(|cx| {
        if s.poll_readable(cx).is_ready() {
            return std::task::Poll::Ready(false);
        }
        if s.take_read_timeout() {
            return std::task::Poll::Ready(true);
        }
        std::task::Poll::Pending
    })
    .await
}

/// A read deadline is a slot in the core's queue, not a timer: a read that
/// waits past it is woken and told so; a deadline moved later re-queues its
/// entry rather than firing early; a cleared one never fires; many sockets
/// share the queue and each times out once.
#[test]
fn read_deadlines_time_out_only_reads_that_wait_past_them() {
    with_ring(Config::default(), |ring| async move {
        let (l, a) = listener();
        // A silent peer: the read times out, no sooner than its deadline.
        let _p1 = TcpStream::connect(a).expect("connect");
        let mut s1 = accept_std(&ring, &l);
        let started = Instant::now();
        s1.set_read_deadline(Some(Duration::from_millis(40)));
        assert!(readable_or_timed_out(&mut s1).await, "s1 should time out");
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert!(!s1.take_read_timeout(), "a timeout is reported once");

        // Moved later (the queued 20 ms entry must not fire), and cleared:
        // both get their peer's bytes, sent well after 20 ms.
        let p2 = TcpStream::connect(a).expect("connect");
        let mut s2 = accept_std(&ring, &l);
        let p3 = TcpStream::connect(a).expect("connect");
        let mut s3 = accept_std(&ring, &l);
        s2.set_read_deadline(Some(Duration::from_millis(20)));
        s2.set_read_deadline(Some(Duration::from_secs(60)));
        s3.set_read_deadline(Some(Duration::from_millis(20)));
        s3.set_read_deadline(None);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            for mut p in [p2, p3] {
                p.write_all(b"late").expect("write");
            }
        });
        assert!(!readable_or_timed_out(&mut s2).await, "s2 timed out early");
        assert!(
            !readable_or_timed_out(&mut s3).await,
            "s3's cleared deadline fired"
        );
        assert_eq!(read_exact(&mut s2, 4).await, b"late");
        assert_eq!(read_exact(&mut s3, 4).await, b"late");
        writer.join().expect("writer");

        // Many waiting reads, deadlines in any order: each times out once.
        let mut peers = Vec::new();
        let mut streams = Vec::new();
        for i in 0..50u64 {
            peers.push(TcpStream::connect(a).expect("connect"));
            let s = accept_std(&ring, &l);
            s.set_read_deadline(Some(Duration::from_millis(10 + (i * 7) % 50)));
            streams.push(s);
        }
        for s in streams.iter_mut() {
            assert!(readable_or_timed_out(s).await, "a read did not time out");
        }
        drop(peers);
    });
}

/// Between the driver's busy turns a deadline is not started from a clock
/// read of its own but from the next turn's reading (`start_deadlines`):
/// never earlier than when it was set, so it cannot fire early; re-set or
/// cleared before that turn, only the last setting counts; and a dropped
/// socket's deadline is forgotten. Checked on the raw core.
#[test]
fn a_deadline_set_between_turns_starts_at_the_next_turn() {
    let (l, addr) = listener();
    let mut core = ring::Core::new(Config::default()).expect("core");
    let mut socks = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(TcpStream::connect(addr).expect("connect"));
        let (s, _) = l.accept().expect("accept");
        socks.push(core.add_sock(OwnedFd::from(s), true));
    }
    let (a, b, c) = (socks[0], socks[1], socks[2]);
    core.parking.turning = true;
    let set_at = Instant::now();
    core.set_rx_deadline(a, Some(Duration::from_millis(30)));
    core.set_rx_deadline(b, Some(Duration::from_millis(5)));
    core.set_rx_deadline(b, Some(Duration::from_secs(60)));
    core.set_rx_deadline(c, Some(Duration::from_millis(5)));
    core.drop_sock(c);
    assert_eq!(core.next_deadline(), None, "deferred: nothing queued yet");
    std::thread::sleep(Duration::from_millis(20));
    // The next turn reads the clock 20 ms after the deadlines were set.
    let turn = Instant::now();
    core.start_deadlines(turn);
    let first = core.next_deadline().expect("a's deadline queued");
    assert!(
        first >= core.ms_at(set_at + Duration::from_millis(50)),
        "a's 30 ms start at the turn, not when set"
    );
    assert!(
        first <= core.ms_at(turn + Duration::from_millis(31)),
        "a's deadline is 30 ms after the turn's reading, rounded up"
    );
    // Only `a` is due 30 ms after the turn; `b` (moved to 60 s) and the
    // dropped `c` are not.
    assert_eq!(core.expire(first), 1);
    assert!(core.take_rx_timeout(a));
    assert!(!core.take_rx_timeout(b));
    assert!(!core.take_rx_timeout(c));
    assert!(core.next_deadline().is_some_and(|at| at >= first + 59_000));
    // Outside busy turns a deadline is started at once.
    core.parking.turning = false;
    core.set_rx_deadline(a, Some(Duration::from_millis(10)));
    assert!(core.next_deadline().is_some_and(|at| at < first + 59_000));
    for i in [a, b] {
        core.drop_sock(i);
    }
    core.turn(false).expect("turn");
}

/// A fan-out's sends leave in batches of `submit_batch` as they are handed
/// over, not all after the last one at the driver's next turn.
#[test]
fn a_fan_out_is_submitted_as_it_is_handed_over() {
    let (l, addr) = listener();
    let n = 100;
    let peers = std::thread::spawn(move || {
        let conns: Vec<TcpStream> = (0..n)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        for mut c in conns {
            let mut got = [0u8; 5];
            c.read_exact(&mut got).expect("read");
            assert_eq!(&got, b"hello");
        }
    });
    let cfg = Config {
        submit_batch: 16,
        ..Config::default()
    };
    with_ring(cfg, move |ring| async move {
        let streams: Vec<UringStream> = (0..n).map(|_| accept_std(&ring, &l)).collect();
        // The receives armed above are in the kernel once the driver turns.
        until("receives submitted", || ring.stats().submitted >= n as u64).await;
        let before = ring.stats();
        let msg = Bytes::from_static(b"hello");
        for s in &streams {
            s.start_send(msg.clone()).expect("queue");
        }
        // No await since: only the batches can have gone in.
        let st = ring.stats();
        assert!(st.early_submits > before.early_submits, "{st:?}");
        assert!(st.submitted >= before.submitted + 96, "{st:?}");
        for s in &streams {
            s.flush().await.expect("flush");
        }
    });
    peers.join().expect("peers");
}

/// The fan-out's direct send: taken only by an idle socket (nothing queued
/// or in flight, no error), given back otherwise, and what it took goes out
/// in order with what the socket's own task hands over behind it, a short
/// send's rest included; a reset or dropped socket takes nothing.
#[test]
fn a_direct_send_goes_only_to_an_idle_socket_and_keeps_order() {
    let (l, addr) = listener();
    // Well over the socket buffers' maxima (tcp_wmem + tcp_rmem), so the
    // send cannot fit while nobody reads.
    const N: usize = 16 << 20;
    let started = Arc::new(AtomicBool::new(false));
    let go = started.clone();
    let peer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        let mut first = [0u8; 3];
        c.read_exact(&mut first).expect("read");
        assert_eq!(&first, b"abc");
        while !go.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("read");
        assert_eq!(got.len(), N + 2);
        assert!(got[..N] == pattern(N, 3)[..], "the large send, whole");
        assert_eq!(&got[N..], b"de", "then what was handed over behind it");
    });
    with_ring(Config::default(), move |ring| async move {
        let s = accept_std(&ring, &l);
        let slot = s.slot();
        ring.send_if_idle(slot, Bytes::from_static(b"a"))
            .expect("an idle socket takes it");
        // In flight now: given back, whole, for the task's own path.
        let back = ring
            .send_if_idle(slot, Bytes::from_static(b"b"))
            .expect_err("busy");
        assert_eq!(&back[..], b"b");
        s.start_send(back).expect("queue");
        s.flush().await.expect("flush");
        ring.send_if_idle(slot, Bytes::from_static(b"c"))
            .expect("idle again");
        s.flush().await.expect("flush");
        // A large one nobody reads yet: it completes short and the ring
        // sends the rest itself; meanwhile the socket is not idle.
        ring.send_if_idle(slot, Bytes::from(pattern(N, 3)))
            .expect("idle");
        let r = ring.clone();
        until("a short send", move || r.stats().short_sends > 0).await;
        assert!(ring.send_if_idle(slot, Bytes::from_static(b"x")).is_err());
        s.start_send(Bytes::from_static(b"d")).expect("queue");
        s.start_send(Bytes::from_static(b"e")).expect("queue");
        started.store(true, Ordering::Release);
        s.flush().await.expect("flush");
        assert_eq!(ring.stats().direct_sends, 3);
        s.shutdown_write().expect("shutdown");
        drop(s);
        // The dropped stream's slot takes nothing.
        assert!(ring.send_if_idle(slot, Bytes::from_static(b"y")).is_err());
        assert!(ring
            .send_if_idle(u32::MAX - 1, Bytes::from_static(b"z"))
            .is_err());
    });
    peer.join().expect("peer");

    // A reset socket: the receive sees it and a direct send is refused.
    let (l, addr) = listener();
    let (peer, tx) = resetting_peer(addr);
    with_ring(Config::default(), move |ring| async move {
        let mut s = accept_std(&ring, &l);
        tx.send(()).expect("go");
        let e = read_to_end(&mut s).await.expect_err("a reset");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        let back = ring
            .send_if_idle(s.slot(), Bytes::from_static(b"late"))
            .expect_err("a reset socket takes nothing");
        assert_eq!(&back[..], b"late");
        assert_eq!(ring.stats().direct_sends, 0);
    });
    peer.join().expect("peer");
}
