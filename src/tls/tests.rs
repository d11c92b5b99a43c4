//! Tests of certificate loading, SNI choice, validation messages, reload,
//! and the handshake outcomes the server configuration promises, with
//! certificates made at test time (rcgen) and connections pumped in
//! memory. Over real sockets: tests/tls.rs.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

use super::certs::{CertSource, CertStore};
use super::names::CertName;
use super::server::{Reloadable, ServerTls};
use super::stream::HandshakeError;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "corepin-tls-unit-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).expect("temp dir");
        TempDir(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca() -> Ca {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "corepin unit test CA");
    let cert = p.self_signed(&key).expect("CA");
    Ca { cert, key }
}

/// A leaf for `names` signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    leaf_with(ca, names, |_| {})
}

fn leaf_with(
    ca: &Ca,
    names: &[&str],
    f: impl FnOnce(&mut rcgen::CertificateParams),
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or("x"),
    );
    f(&mut p);
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

fn pair(dir: &TempDir, stem: &str, pem: &(String, String)) {
    dir.write(&format!("{stem}.crt"), &pem.0);
    dir.write(&format!("{stem}.key"), &pem.1);
}

fn load(source: &CertSource) -> Result<CertStore, Vec<String>> {
    CertStore::load(source, &super::provider(), SystemTime::now())
        .map_err(|ps| ps.into_iter().map(|p| p.0).collect())
}

/// The first DNS name of the certificate `pick` chooses for `sni`.
fn picked(store: &CertStore, sni: Option<&str>) -> Option<String> {
    use x509_cert::der::Decode;
    let ck = store.pick(sni)?;
    let cert = x509_cert::Certificate::from_der(&ck.cert[0]).expect("x509");
    Some(cert.tbs_certificate.subject.to_string())
}

#[test]
fn a_directory_is_chosen_from_by_sni() {
    let ca = ca();
    let dir = TempDir::new();
    pair(&dir, "api.example.com", &leaf(&ca, &["api.example.com"]));
    pair(&dir, "_.example.com", &leaf(&ca, &["*.example.com"]));
    pair(
        &dir,
        "*.apps.example.org",
        &leaf(&ca, &["*.apps.example.org"]),
    );
    pair(&dir, "default", &leaf(&ca, &["default.test"]));
    dir.write("README", "not a certificate");
    std::fs::create_dir(dir.0.join("old")).expect("subdir");
    let store = load(&CertSource::Dir(dir.0.clone())).expect("loads");
    let cn = |s: &str| Some(format!("CN={s}"));
    for (sni, want) in [
        (Some("api.example.com"), cn("api.example.com")),
        (Some("API.Example.COM"), cn("api.example.com")),
        (Some("api.example.com."), cn("api.example.com")),
        (Some("www.example.com"), cn("*.example.com")),
        (Some("x.apps.example.org"), cn("*.apps.example.org")),
        // One label only (RFC 6125): not two, not none.
        (Some("a.b.example.com"), cn("default.test")),
        (Some("example.com"), cn("default.test")),
        (Some("apps.example.org"), cn("default.test")),
        (Some("other.test"), cn("default.test")),
        (None, cn("default.test")),
    ] {
        assert_eq!(picked(&store, sni), want, "{sni:?}");
    }
    let names: Vec<String> = store.loaded().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        names,
        [
            "*.apps.example.org",
            "*.example.com",
            "api.example.com",
            "default"
        ]
    );
    assert!(store.has_default());
}

#[test]
fn without_a_default_unknown_names_get_nothing() {
    let ca = ca();
    let dir = TempDir::new();
    pair(&dir, "a.test", &leaf(&ca, &["a.test"]));
    let store = load(&CertSource::Dir(dir.0.clone())).expect("loads");
    assert!(store.pick(Some("a.test")).is_some());
    assert!(store.pick(Some("b.test")).is_none());
    assert!(store.pick(None).is_none());
    assert!(!store.has_default());
    assert_eq!(store.loaded()[0].0, CertName::Exact("a.test".into()));
}

#[test]
fn an_explicit_pair_serves_every_name() {
    let ca = ca();
    let dir = TempDir::new();
    let (c, k) = leaf(&ca, &["site.test"]);
    let cert = dir.write("site.pem", &c);
    let key = dir.write("site-key.pem", &k);
    let store = load(&CertSource::Pair { cert, key }).expect("loads");
    assert_eq!(
        picked(&store, Some("anything.test")),
        Some("CN=site.test".into())
    );
    assert_eq!(picked(&store, None), Some("CN=site.test".into()));
}

/// Every problem is one line that names its file, and all are reported.
#[test]
fn problems_name_the_file() {
    let ca = ca();
    let dir = TempDir::new();
    let good = leaf(&ca, &["good.test"]);
    let other = leaf(&ca, &["other.test"]);
    pair(&dir, "good.test", &good);
    // Key of another certificate.
    dir.write("mismatch.test.crt", &good.0);
    dir.write("mismatch.test.key", &other.1);
    // Expired, and not yet valid.
    pair(
        &dir,
        "expired.test",
        &leaf_with(&ca, &["expired.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }),
    );
    pair(
        &dir,
        "future.test",
        &leaf_with(&ca, &["future.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2400, 1, 1);
            p.not_after = rcgen::date_time_ymd(2401, 1, 1);
        }),
    );
    // Not PEM at all, and a key file without a key.
    dir.write("text.test.crt", "hello\n");
    dir.write("text.test.key", &good.1);
    dir.write("nokey.test.crt", &good.0);
    dir.write("nokey.test.key", &good.0);
    // Layout: halves missing, a partial wildcard, a duplicate wildcard, a .pem.
    dir.write("lonely.test.crt", &good.0);
    dir.write("orphan.test.key", &good.1);
    pair(&dir, "f*.example.com", &good);
    pair(&dir, "_.dup.test", &leaf(&ca, &["*.dup.test"]));
    pair(&dir, "*.dup.test", &leaf(&ca, &["*.dup.test"]));
    dir.write("bundle.pem", &good.0);
    // A file that cannot be read (a dangling link; root reads any mode).
    dir.write("unreadable.test.crt", &good.0);
    std::os::unix::fs::symlink(dir.0.join("gone"), dir.0.join("unreadable.test.key"))
        .expect("symlink");

    let problems = load(&CertSource::Dir(dir.0.clone())).expect_err("problems");
    let d = dir.0.display();
    let expect = [
        format!("{d}/mismatch.test.key: private key does not match the certificate in {d}/mismatch.test.crt"),
        format!("{d}/expired.test.crt: certificate expired on 2001-01-01T00:00:00Z"),
        format!("{d}/future.test.crt: certificate is not valid before 2400-01-01T00:00:00Z"),
        format!("{d}/text.test.crt: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        format!("{d}/nokey.test.key: holds no PEM private key"),
        format!("{d}/lonely.test.crt: no matching key file lonely.test.key"),
        format!("{d}/orphan.test.key: no matching certificate orphan.test.crt"),
        format!("{d}/f*.example.com.crt: 'f*.example.com' is not a host name: it has a '*'"),
        format!("{d}/bundle.pem: is not read"),
        format!("{d}/unreadable.test.key: cannot read: "),
    ];
    for want in &expect {
        assert!(
            problems.iter().any(|p| p.starts_with(want.as_str())),
            "missing {want:?} in {problems:#?}"
        );
    }
    // The two spellings of one wildcard: whichever is second is refused.
    assert!(
        problems
            .iter()
            .any(|p| p.contains("dup.test.crt: serves the same name (*.dup.test) as ")),
        "{problems:#?}"
    );
    assert_eq!(problems.len(), expect.len() + 1, "{problems:#?}");
    for p in &problems {
        assert!(!p.contains('\n'), "one line: {p}");
    }
}

#[test]
fn pair_and_directory_errors() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing.crt");
    let e = load(&CertSource::Pair {
        cert: missing.clone(),
        key: dir.0.join("missing.key"),
    })
    .expect_err("missing");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with(&format!("{}: cannot read: ", missing.display())));
    let garbled = dir.write(
        "garbled.crt",
        "-----BEGIN CERTIFICATE-----\nMIIB!!!notbase64\n-----END CERTIFICATE-----\n",
    );
    let ca = ca();
    let key = dir.write("k.key", &leaf(&ca, &["k.test"]).1);
    let e = load(&CertSource::Pair {
        cert: garbled.clone(),
        key,
    })
    .expect_err("garbled");
    assert!(
        e[0].starts_with(&format!(
            "{}: not a PEM certificate file",
            garbled.display()
        )),
        "{e:?}"
    );
    let empty = TempDir::new();
    let e = load(&CertSource::Dir(empty.0.clone())).expect_err("empty");
    assert_eq!(
        e,
        [format!(
            "{}: holds no HOST.crt + HOST.key pair",
            empty.0.display()
        )]
    );
    let e = load(&CertSource::Dir(empty.0.join("nope"))).expect_err("no dir");
    assert!(e[0].contains("nope: cannot read the directory"), "{e:?}");
}

#[test]
fn reload_keeps_the_old_configuration_on_error() {
    let ca = ca();
    let dir = TempDir::new();
    pair(&dir, "default", &leaf(&ca, &["one.test"]));
    let mut r = Reloadable::new(CertSource::Dir(dir.0.clone())).expect("first build");
    let first = r.current();
    dir.write("default.key", "broken");
    let e = r.reload().expect_err("bad key");
    assert!(
        e.starts_with("certificates not reloaded, keeping the old ones: ")
            && e.contains("default.key: holds no PEM private key"),
        "{e}"
    );
    assert!(Arc::ptr_eq(&first, &r.current()), "old config kept");
    pair(&dir, "default", &leaf(&ca, &["two.test"]));
    let second = r.reload().expect("good again");
    assert!(!Arc::ptr_eq(&first, &second));
    assert!(Arc::ptr_eq(&second, &r.current()));
    assert_eq!(picked_from(&r), Some("CN=two.test".into()));
    // Tickets from before the reload still resume: the ticket key is kept.
    assert!(Arc::ptr_eq(&first.ticketer, &second.ticketer));
}

fn picked_from(r: &Reloadable) -> Option<String> {
    picked(r.store(), None)
}

/// Pumps records between two in-memory connections until both are done
/// or one fails; returns the server's error.
fn pump(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    for _ in 0..20 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
            s.process_new_packets()?;
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
            if c.process_new_packets().is_err() {
                break;
            }
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            return Ok(());
        }
    }
    panic!("handshake did not finish")
}

fn client(ca: &Ca, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let mut c = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

#[test]
fn handshake_outcomes_in_memory() {
    let ca = ca();
    let dir = TempDir::new();
    pair(&dir, "a.test", &leaf(&ca, &["a.test"]));
    let tls = ServerTls::new(CertSource::Dir(dir.0.clone())).expect("tls");
    let (config, _) = tls.build().expect("build");
    let name = |s: &str| ServerName::try_from(s.to_string()).expect("name");
    let reason = |alpn: &[&[u8]], sni: &str| {
        let mut c = ClientConnection::new(client(&ca, alpn), name(sni)).expect("client");
        let mut s = ServerConnection::new(config.clone()).expect("server");
        match pump(&mut c, &mut s) {
            Ok(()) => {
                let mut plain = [0u8; 5];
                c.writer().write_all(b"hello").expect("write");
                pump(&mut c, &mut s).expect("data");
                s.reader().read_exact(&mut plain).expect("read");
                assert_eq!(&plain, b"hello");
                let alpn = s.alpn_protocol().map(String::from_utf8_lossy);
                format!("ok {}", alpn.as_deref().unwrap_or("no ALPN"))
            }
            Err(e) => HandshakeError::from_rustls(e).reason().to_string(),
        }
    };
    assert_eq!(reason(&[b"h2", b"http/1.1"], "a.test"), "ok http/1.1");
    assert_eq!(reason(&[], "a.test"), "ok no ALPN");
    assert_eq!(reason(&[b"h2"], "a.test"), "alpn_mismatch");
    assert_eq!(reason(&[b"http/1.1"], "b.test"), "no_certificate");
}

/// An in-memory byte stream for a `ServerTlsStream`: reads take at most
/// `step` bytes of what the client wrote (none there is `Pending`, as an
/// empty socket); writes go to `tx` whole.
struct Mem {
    rx: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
    tx: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
    step: usize,
}

impl futures_lite::AsyncRead for Mem {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut rx = self.rx.borrow_mut();
        if rx.is_empty() {
            return std::task::Poll::Pending;
        }
        let n = rx.len().min(buf.len()).min(self.step);
        buf[..n].copy_from_slice(&rx[..n]);
        rx.drain(..n);
        std::task::Poll::Ready(Ok(n))
    }
}

impl futures_lite::AsyncWrite for Mem {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.tx.borrow_mut().extend_from_slice(b);
        std::task::Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// What the server wrote, into the client.
fn to_client(c: &mut ClientConnection, tx: &std::cell::RefCell<Vec<u8>>) {
    let mut t = tx.borrow_mut();
    let mut rd = &t[..];
    while !rd.is_empty() {
        c.read_tls(&mut rd).expect("client read");
        c.process_new_packets().expect("client process");
    }
    t.clear();
}

#[test]
fn server_stream_handles_records_split_at_any_size() {
    use futures_lite::{AsyncRead, AsyncWrite};
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    let ca = ca();
    let dir = TempDir::new();
    pair(&dir, "a.test", &leaf(&ca, &["a.test"]));
    let (config, _) = ServerTls::new(CertSource::Dir(dir.0.clone()))
        .expect("tls")
        .build()
        .expect("build");
    // Three records' worth each way, so records and reads never line up.
    let upload: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let answer: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
    for step in [1, 2, 3, 5, 7, 64, 1000, 5000, 17_000, 1 << 20] {
        let rx = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let tx = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let io = Mem {
            rx: rx.clone(),
            tx: tx.clone(),
            step,
        };
        let mut cx = Context::from_waker(Waker::noop());
        let name = ServerName::try_from("a.test").expect("name");
        let mut c = ClientConnection::new(client(&ca, &[b"http/1.1"]), name).expect("client");
        // The ClientHello's first bytes as the sniffed prefix.
        while c.wants_write() {
            c.write_tls(&mut *rx.borrow_mut()).expect("client write");
        }
        let prefix: Vec<u8> = rx.borrow_mut().drain(..5).collect();
        let mut s = super::ServerTlsStream::accept(io, config.clone(), &prefix).expect("accept");
        let mut done = false;
        for _ in 0..200_000 {
            while c.wants_write() {
                c.write_tls(&mut *rx.borrow_mut()).expect("client write");
            }
            match s.poll_handshake(&mut cx) {
                Poll::Ready(r) => {
                    r.expect("handshake");
                    done = true;
                }
                Poll::Pending => {}
            }
            to_client(&mut c, &tx);
            if done && !c.is_handshaking() {
                break;
            }
        }
        assert!(done && !c.is_handshaking(), "step {step}: handshake");
        assert_eq!(s.conn().alpn_protocol(), Some(&b"http/1.1"[..]));
        // The upload, then close_notify: read in small pieces until the
        // end of the stream.
        c.writer().write_all(&upload).expect("upload");
        c.send_close_notify();
        while c.wants_write() {
            c.write_tls(&mut *rx.borrow_mut()).expect("client write");
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        let mut ended = false;
        for _ in 0..200_000 {
            match Pin::new(&mut s).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(0)) => {
                    ended = true;
                    break;
                }
                Poll::Ready(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Poll::Ready(Err(e)) => panic!("step {step}: read: {e}"),
                Poll::Pending => panic!("step {step}: pending with bytes to read"),
            }
        }
        assert!(ended, "step {step}: no end of stream");
        assert!(got == upload, "step {step}: upload differs");
        // The answer in three slices of one vectored write, then close.
        let parts = [&answer[..10], &answer[10..30_000], &answer[30_000..]];
        let mut sent = 0;
        while sent < answer.len() {
            let mut from = sent;
            let mut slices = Vec::new();
            for p in parts {
                if from >= p.len() {
                    from -= p.len();
                    continue;
                }
                slices.push(std::io::IoSlice::new(&p[from..]));
                from = 0;
            }
            match Pin::new(&mut s).poll_write_vectored(&mut cx, &slices) {
                Poll::Ready(Ok(n)) => sent += n,
                other => panic!("step {step}: write: {other:?}"),
            }
        }
        assert!(Pin::new(&mut s).poll_close(&mut cx).is_ready());
        // Fed to the client a piece at a time, its plaintext taken as it
        // comes (rustls holds only so much unread).
        let mut back = Vec::new();
        let wire = std::mem::take(&mut *tx.borrow_mut());
        let mut rd = &wire[..];
        let mut closed = false;
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
            c.process_new_packets().expect("client process");
            match c.reader().read_to_end(&mut back) {
                Ok(_) => closed = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("step {step}: the client read {e}"),
            }
        }
        assert!(closed, "step {step}: no close_notify");
        assert!(back == answer, "step {step}: answer differs");
    }
}
