//! Heap held by one server-side TLS connection, as corepin configures it
//! (`tls::Reloadable`, ECDSA P-256 certificate): after the handshake and
//! one request/response, and while it waits for the next bytes (rustls
//! readies a 4 KiB receive buffer before every read). A counting global
//! allocator measures live bytes; the client is dropped first so only the
//! server's allocations remain.
//!
//! Run: `cargo bench --bench tls_memory`. Under `cargo test` it runs the
//! same (it is quick) as a smoke test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use corepin::config::TlsCerts;
use corepin::tls::Reloadable;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the
// counter is only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
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

fn main() {
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
}
