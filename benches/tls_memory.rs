//! Heap held by one server-side TLS connection, as corepin configures it
//! (`tls::Reloadable`, ECDSA P-256 certificate): after the handshake and
//! one request/response, and while it waits for the next bytes. Two
//! ways: rustls's buffered `ServerConnection` (which readies a 4 KiB
//! receive buffer before every read and keeps it while waiting), and
//! corepin's `ServerTlsStream` over rustls's unbuffered connection (what
//! a TLS listener's connections use), driven over an in-memory byte
//! stream. A counting global allocator measures live bytes; the client is
//! dropped first so only the server's allocations remain.
//!
//! Run: `cargo bench --bench tls_memory`. Under `cargo test` it runs the
//! same (it is quick) as a smoke test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use corepin::config::TlsCerts;
use corepin::tls::{Reloadable, ServerTlsStream};
use futures_lite::{AsyncRead, AsyncWrite};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// The same live allocations in glibc malloc's chunk sizes (size plus
/// its 8-byte header, rounded up to 16, at least 32), so they compare
/// with `mallinfo2`'s in-use figure.
static CHUNKS: AtomicIsize = AtomicIsize::new(0);

/// Live allocations by requested size (sizes below `SIZES`; the rest in
/// the last slot), so the kept connections' allocations can be itemised:
/// a size with N (or 2N) live allocations more is one per connection.
const SIZES: usize = 4097;
static BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];

fn by_size(size: usize, d: isize) {
    BY_SIZE[size.min(SIZES - 1)].fetch_add(d, Ordering::Relaxed);
}

fn chunk(size: usize) -> isize {
    (size + 8).div_ceil(16).max(2) as isize * 16
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counter is only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        CHUNKS.fetch_add(chunk(l.size()), Ordering::Relaxed);
        by_size(l.size(), 1);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        CHUNKS.fetch_sub(chunk(l.size()), Ordering::Relaxed);
        by_size(l.size(), -1);
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        CHUNKS.fetch_add(chunk(new) - chunk(l.size()), Ordering::Relaxed);
        by_size(l.size(), -1);
        by_size(new, 1);
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// glibc malloc's own figures: bytes in chunks in use (every allocation,
/// Rust's and aws-lc's C ones, with malloc's headers) and bytes taken
/// from the system for the main arena. Exact only with the per-thread
/// cache off (its parked chunks count as in use): `main` re-runs the
/// bench with `GLIBC_TUNABLES=glibc.malloc.tcache_count=0`.
fn malloc_in_use() -> (isize, isize) {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks as isize, m.arena as isize)
}

/// A reader with nothing to give yet, as an idle socket.
struct Idle;

impl Read for Idle {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

fn pump(c: &mut ClientConnection, s: &mut ServerConnection, buf: &mut Vec<u8>) {
    for _ in 0..10 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(buf).expect("client write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
            s.process_new_packets().expect("server process");
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(buf).expect("server write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
            c.process_new_packets().expect("client process");
        }
    }
}

/// An in-memory byte stream for the server: it reads what the client
/// wrote to `rx` (nothing there is `Pending`, as an idle socket) and
/// writes to `tx`. Both vectors are made with their room before counting.
struct Mem {
    rx: Rc<RefCell<Vec<u8>>>,
    tx: Rc<RefCell<Vec<u8>>>,
}

impl AsyncRead for Mem {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut rx = self.rx.borrow_mut();
        if rx.is_empty() {
            return Poll::Pending;
        }
        let n = rx.len().min(buf.len());
        buf[..n].copy_from_slice(&rx[..n]);
        rx.drain(..n);
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Mem {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.tx.borrow_mut().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Moves the client's records to the server's stream and back, `rounds`
/// times, calling `step` on the server in between.
fn exchange(
    c: &mut ClientConnection,
    rx: &RefCell<Vec<u8>>,
    tx: &RefCell<Vec<u8>>,
    mut step: impl FnMut(),
) {
    for _ in 0..10 {
        while c.wants_write() {
            c.write_tls(&mut *rx.borrow_mut()).expect("client write");
        }
        step();
        let mut t = tx.borrow_mut();
        let mut rd = &t[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
            c.process_new_packets().expect("client process");
        }
        t.clear();
    }
}

/// The same handshake and request/response through `ServerTlsStream`;
/// prints its rows.
fn unbuffered(server: &Arc<rustls::ServerConfig>, client: &Arc<ClientConfig>) {
    let rx = Rc::new(RefCell::new(Vec::with_capacity(64 << 10)));
    let tx = Rc::new(RefCell::new(Vec::with_capacity(64 << 10)));
    let mut cx = Context::from_waker(Waker::noop());
    let mut sbuf = [0u8; 256];
    let base = live();
    let io = Mem {
        rx: rx.clone(),
        tx: tx.clone(),
    };
    let mut s = ServerTlsStream::accept(io, server.clone(), &[]).expect("server");
    let fresh = live() - base;
    {
        let name = ServerName::try_from("mem.test").expect("name");
        let mut c = ClientConnection::new(client.clone(), name).expect("client");
        exchange(&mut c, &rx, &tx, || {
            let _ = s.poll_handshake(&mut cx);
        });
        assert!(!c.is_handshaking());
        c.writer()
            .write_all(b"GET / HTTP/1.1\r\nHost: mem.test\r\n\r\n")
            .expect("write");
        let mut got = 0;
        exchange(&mut c, &rx, &tx, || {
            if let Poll::Ready(Ok(n)) = Pin::new(&mut s).poll_read(&mut cx, &mut sbuf) {
                got += n;
            }
        });
        assert_eq!(got, 34);
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut wrote = false;
        exchange(&mut c, &rx, &tx, || {
            if !wrote {
                let w = Pin::new(&mut s).poll_write(&mut cx, resp);
                assert!(matches!(w, Poll::Ready(Ok(n)) if n == resp.len()));
                wrote = true;
            }
            let _ = Pin::new(&mut s).poll_flush(&mut cx);
        });
        let mut back = [0u8; 64];
        let n = c.reader().read(&mut back).expect("response");
        assert_eq!(&back[..n], resp);
    }
    let used = live() - base;
    assert!(Pin::new(&mut s).poll_read(&mut cx, &mut sbuf).is_pending());
    let idle = live() - base;
    drop(s);
    let elsewhere = live() - base;
    println!();
    println!("| corepin's ServerTlsStream (unbuffered), TLS 1.3, ECDSA P-256 | heap bytes |");
    println!("|---|---:|");
    println!(
        "| the ServerTlsStream value itself, over a glommio TcpStream (inline in its Box) | {} |",
        std::mem::size_of::<ServerTlsStream<glommio::net::TcpStream>>()
    );
    println!("| new, before the ClientHello | {fresh} |");
    println!(
        "| after the handshake and one request/response | {} |",
        used - elsewhere
    );
    println!(
        "| idle, waiting for the next bytes (a read pending) | {} |",
        idle - elsewhere
    );
}

/// `n` connections through `ServerTlsStream`, each with a handshake and
/// one request/response, all kept (idle) at the end: what each costs in
/// all of malloc's memory, Rust's and aws-lc's alike.
fn many(what: &str, server: &Arc<rustls::ServerConfig>, client: &Arc<ClientConfig>, n: usize) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut sbuf = [0u8; 256];
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut kept = Vec::with_capacity(n);
    // One warm-up connection first: the provider's and the configs'
    // lazily made state is not a connection's.
    for i in 0..=n {
        if i == 1 {
            kept.clear();
        }
        let rx = Rc::new(RefCell::new(Vec::with_capacity(16 << 10)));
        let tx = Rc::new(RefCell::new(Vec::with_capacity(16 << 10)));
        let io = Mem {
            rx: rx.clone(),
            tx: tx.clone(),
        };
        let mut s = ServerTlsStream::accept(io, server.clone(), &[]).expect("server");
        {
            let name = ServerName::try_from("mem.test").expect("name");
            let mut c = ClientConnection::new(client.clone(), name).expect("client");
            exchange(&mut c, &rx, &tx, || {
                let _ = s.poll_handshake(&mut cx);
            });
            c.writer()
                .write_all(b"GET / HTTP/1.1\r\nHost: mem.test\r\n\r\n")
                .expect("write");
            exchange(&mut c, &rx, &tx, || {
                let _ = Pin::new(&mut s).poll_read(&mut cx, &mut sbuf);
            });
            let mut wrote = false;
            exchange(&mut c, &rx, &tx, || {
                if !wrote {
                    let _ = Pin::new(&mut s).poll_write(&mut cx, resp);
                    wrote = true;
                }
                let _ = Pin::new(&mut s).poll_flush(&mut cx);
            });
        }
        assert!(Pin::new(&mut s).poll_read(&mut cx, &mut sbuf).is_pending());
        // The in-memory stream's own vectors are not the connection's.
        *rx.borrow_mut() = Vec::new();
        *tx.borrow_mut() = Vec::new();
        kept.push(Box::new(s));
        if i == 0 {
            // Counting starts after the warm-up.
            START.with(|st| {
                *st.borrow_mut() = (live(), CHUNKS.load(Ordering::Relaxed), malloc_in_use())
            });
            SIZES_AT_START.with(|st| {
                let mut st = st.borrow_mut();
                for (i, c) in BY_SIZE.iter().enumerate() {
                    st[i] = c.load(Ordering::Relaxed);
                }
            });
        }
    }
    let (a_live, a_chunks, (a_used, a_arena)) =
        (live(), CHUNKS.load(Ordering::Relaxed), malloc_in_use());
    let (s_live, s_chunks, (s_used, s_arena)) = START.with(|st| *st.borrow());
    let per = |x: isize| x as f64 / n as f64;
    println!();
    println!(
        "| {n} idle connections through ServerTlsStream (boxed), TLS 1.3, ECDSA P-256, {what}, per connection | bytes |"
    );
    println!("|---|---:|");
    println!("| Rust heap, as asked for | {:.0} |", per(a_live - s_live));
    println!(
        "| Rust heap, in malloc's chunk sizes (with headers) | {:.0} |",
        per(a_chunks - s_chunks)
    );
    println!(
        "| all of malloc in use (Rust and aws-lc's C allocations) | {:.0} |",
        per(a_used - s_used)
    );
    println!(
        "| so aws-lc's own (C) allocations | {:.0} |",
        per((a_used - s_used) - (a_chunks - s_chunks))
    );
    println!(
        "| main arena's growth (in use plus holes left by handshakes) | {:.0} |",
        per(a_arena - s_arena)
    );
    println!();
    println!(
        "| Rust allocations each connection keeps, by size (bytes asked for) | per connection |"
    );
    println!("|---|---:|");
    SIZES_AT_START.with(|st| {
        let st = st.borrow();
        for (i, c) in BY_SIZE.iter().enumerate() {
            let more = c.load(Ordering::Relaxed) - st[i];
            // Half of the connections or more: a per-connection allocation.
            if more * 2 >= n as isize {
                let size = if i == SIZES - 1 {
                    ">4096".to_string()
                } else {
                    i.to_string()
                };
                println!("| {size} | {:.2} |", per(more));
            }
        }
    });
    drop(kept);
}

thread_local! {
    static SIZES_AT_START: RefCell<Vec<isize>> = RefCell::new(vec![0; SIZES]);
    static START: RefCell<(isize, isize, (isize, isize))> = const { RefCell::new((0, 0, (0, 0))) };
}

fn main() {
    // The malloc figures need malloc's per-thread cache off (see
    // `malloc_in_use`): run again with it off, once.
    const TUNABLE: &str = "glibc.malloc.tcache_count=0";
    if !std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.contains(TUNABLE)) {
        let exe = std::env::current_exe().expect("exe");
        let status = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", TUNABLE)
            .status()
            .expect("re-run");
        std::process::exit(status.code().unwrap_or(1));
    }
    let dir = std::env::temp_dir().join(format!("corepin-tls-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_p.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["mem.test".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("leaf");
    std::fs::write(dir.join("default.crt"), leaf.pem()).expect("write");
    std::fs::write(dir.join("default.key"), key.serialize_pem()).expect("write");
    let server = Reloadable::new(TlsCerts::Dir(dir.clone()))
        .expect("certs")
        .current();
    let _ = std::fs::remove_dir_all(&dir);
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let mut client = ClientConfig::builder_with_provider(corepin::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = Arc::new(client);
    let mut buf = Vec::with_capacity(64 << 10);

    let base = live();
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let fresh = live() - base;
    {
        let name = ServerName::try_from("mem.test").expect("name");
        let mut c = ClientConnection::new(client.clone(), name).expect("client");
        pump(&mut c, &mut s, &mut buf);
        c.writer()
            .write_all(b"GET / HTTP/1.1\r\nHost: mem.test\r\n\r\n")
            .expect("write");
        pump(&mut c, &mut s, &mut buf);
        let mut req = [0u8; 34];
        s.reader().read_exact(&mut req).expect("request");
        s.writer()
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .expect("response");
        pump(&mut c, &mut s, &mut buf);
        assert!(!s.is_handshaking());
    }
    let used = live() - base;
    let _ = s.read_tls(&mut Idle);
    let idle = live() - base;
    drop(s);
    // What stays after the drop is not the connection's: the client's
    // ticket cache (in its config) and the provider's lazily made state.
    let elsewhere = live() - base;
    println!("| server connection, TLS 1.3, ECDSA P-256 | heap bytes |");
    println!("|---|---:|");
    println!(
        "| the ServerConnection value itself (inline where it is kept) | {} |",
        std::mem::size_of::<ServerConnection>()
    );
    println!("| new, before the ClientHello | {fresh} |");
    println!(
        "| after the handshake and one request/response | {} |",
        used - elsewhere
    );
    println!(
        "| idle, waiting for the next bytes (a read pending) | {} |",
        idle - elsewhere
    );
    unbuffered(&server, &client);
    // Full handshakes each (no client ticket cache), as a crowd of new
    // subscribers makes.
    let mut fresh_client = (*client).clone();
    fresh_client.resumption = rustls::client::Resumption::disabled();
    let fresh_client = Arc::new(fresh_client);
    many(
        "corepin's configuration (aws-lc-rs, ring's AEAD)",
        &server,
        &fresh_client,
        200,
    );
    // The same with one provider for everything: where the AEAD keys
    // live (aws-lc-rs keeps each in a C allocation of its own, ring inline
    // in rustls's boxes), and whether a ChaCha20-Poly1305 key is smaller
    // than an AES-GCM one (not in ring: one enum holds either).
    use rustls::crypto::{aws_lc_rs, ring};
    let der = (vec![leaf.der().clone()], key.serialize_der());
    let with = |p: rustls::crypto::CryptoProvider, chacha_first: bool| {
        let ticketer = corepin::tls::ticketer().expect("ticketer");
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                der.0.clone(),
                rustls::pki_types::PrivateKeyDer::Pkcs8(der.1.clone().into()),
            )
            .expect("cert");
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c.ticketer = ticketer;
        c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        c.ignore_client_order = chacha_first;
        Arc::new(c)
    };
    let chacha_first = || {
        let mut p = ring::default_provider();
        p.cipher_suites.sort_by_key(|s| {
            !matches!(
                s.suite(),
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            )
        });
        p
    };
    many(
        "aws-lc-rs alone, AES-256-GCM",
        &with(aws_lc_rs::default_provider(), false),
        &fresh_client,
        200,
    );
    many(
        "ring alone, AES-256-GCM",
        &with(ring::default_provider(), false),
        &fresh_client,
        200,
    );
    many(
        "ring alone, ChaCha20-Poly1305 (server's order)",
        &with(chacha_first(), true),
        &fresh_client,
        200,
    );
    println!();
    println!("| inline sizes | bytes |");
    println!("|---|---:|");
    println!(
        "| rustls UnbufferedServerConnection | {} |",
        std::mem::size_of::<rustls::server::UnbufferedServerConnection>()
    );
    println!(
        "| glommio TcpStream | {} |",
        std::mem::size_of::<glommio::net::TcpStream>()
    );
    println!(
        "| rustls::Error | {} |",
        std::mem::size_of::<rustls::Error>()
    );
}
