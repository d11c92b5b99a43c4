//! TLS over real loopback sockets, before the connection layer serves it:
//! a small glommio server in the test drives corepin's own pieces
//! (`tls::sniff` on the first bytes, `ServerTlsStream` for the handshake
//! and the bytes, `CertStore` choosing by SNI) and real clients talk to
//! it: curl with `--cacert`, `openssl s_client` (SNI, ALPN, TLS 1.2 and
//! 1.3, resumption, h2-only refusal), plain TCP (plaintext request,
//! garbage, a stalled handshake), and corepin's `ClientTlsStream` (TLS to
//! backends, verified and `insecure`). Also `corepin check` and
//! `corepin run` on TLS settings. Certificates are made at test time.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime};

mod common;

use common::Ca;
use corepin::config::TlsCerts;
use corepin::tls::sniff::{classify, Sniff, PLAINTEXT_RESPONSE};
use corepin::tls::{client, ClientTlsStream, Reloadable, ServerTlsStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream as GTcpStream;
use glommio::timer::sleep;
use glommio::LocalExecutorBuilder;
use rustls::ServerConfig;

const WAIT: Duration = Duration::from_secs(20);

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
            "corepin-tls-{}-{}-{nanos}",
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

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificates directory: `a.example.com`, `_.example.com`, and
/// (when `default`) a default; plus the CA file clients trust.
struct Certs {
    dir: TempDir,
    _ca_dir: TempDir,
    ca_file: String,
    ca: Ca,
}

fn certs(default: bool) -> Certs {
    let ca = Ca::new("corepin test CA");
    let dir = TempDir::new();
    ca.leaf_into(&dir.0, "a.example.com", &["a.example.com"]);
    ca.leaf_into(&dir.0, "_.example.com", &["*.example.com"]);
    if default {
        ca.leaf_into(&dir.0, "default", &["default.test", "localhost"]);
    }
    let ca_dir = TempDir::new();
    let ca_file = ca_dir.write("ca.pem", &ca.cert.pem());
    Certs {
        ca_file: ca_file.display().to_string(),
        dir,
        _ca_dir: ca_dir,
        ca,
    }
}

/// The test server: corepin's TLS pieces over glommio sockets. Each
/// connection's outcome (`served`, `plain_http`, or a handshake failure
/// reason) arrives on `events`.
struct Harness {
    addr: SocketAddr,
    events: mpsc::Receiver<String>,
}

impl Harness {
    fn start(config: Arc<ServerConfig>, timeout: Duration) -> Harness {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (tx, events) = mpsc::channel();
        LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move {
                let l = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                addr_tx.send(l.local_addr().expect("addr")).expect("send");
                loop {
                    let Ok(s) = l.accept().await else { continue };
                    let (config, tx) = (config.clone(), tx.clone());
                    glommio::spawn_local(async move {
                        let outcome = serve_one(s, config, timeout).await;
                        let _ = tx.send(outcome);
                    })
                    .detach();
                }
            })
            .expect("executor");
        Harness {
            addr: addr_rx.recv_timeout(WAIT).expect("listening"),
            events,
        }
    }

    fn next(&self) -> String {
        self.events.recv_timeout(WAIT).expect("an outcome")
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

async fn serve_one(mut s: GTcpStream, config: Arc<ServerConfig>, timeout: Duration) -> String {
    // 1. Classify the first bytes, within the handshake timeout.
    let mut first = [0u8; 64];
    let mut n = 0;
    let sniffed = futures_lite::future::or(
        async {
            loop {
                if let Some(k) = classify(&first[..n]) {
                    return Ok(k);
                }
                match s.read(&mut first[n..]).await {
                    Ok(0) | Err(_) => return Err("closed".to_string()),
                    Ok(m) => n += m,
                }
            }
        },
        async {
            sleep(timeout).await;
            Err("timeout".to_string())
        },
    )
    .await;
    match sniffed {
        Err(e) => e,
        Ok(Sniff::Other) => "not_tls".into(),
        Ok(Sniff::PlainHttp) => {
            let _ = s.write_all(PLAINTEXT_RESPONSE).await;
            let _ = s.shutdown(Shutdown::Write).await;
            // Lingering close: let the client's request in before closing.
            let mut sink = [0u8; 1024];
            let _ = futures_lite::future::or(
                async { while matches!(s.read(&mut sink).await, Ok(m) if m > 0) {} },
                sleep(timeout),
            )
            .await;
            "plain_http".into()
        }
        Ok(Sniff::Tls) => {
            // 2. The handshake, with the bytes already read. The
            // unbuffered connection does not tell the SNI name, so this
            // connection's resolver notes the one it was asked for.
            let sni = Arc::new(Mutex::new(None));
            let mut config = (*config).clone();
            config.cert_resolver = Arc::new(NoteSni {
                inner: config.cert_resolver.clone(),
                seen: sni.clone(),
            });
            let mut tls = match ServerTlsStream::accept(s, Arc::new(config), &first[..n]) {
                Ok(t) => t,
                Err(e) => return e.reason().into(),
            };
            if let Err(e) = tls.handshake(sleep(timeout)).await {
                return e.reason().into();
            }
            // 3. One request, one response, close_notify.
            let mut req = Vec::new();
            let mut buf = [0u8; 2048];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return "request cut".into(),
                    Ok(m) => req.extend_from_slice(&buf[..m]),
                }
            }
            let c = tls.conn();
            let line = String::from_utf8_lossy(&req);
            let sni = sni.lock().ok().and_then(|s| s.clone());
            let body = format!(
                "sni={} alpn={} version={} resumed={} request={}\n",
                sni.as_deref().unwrap_or("-"),
                c.alpn_protocol()
                    .map_or("-".into(), |a| String::from_utf8_lossy(a).into_owned()),
                c.protocol_version()
                    .map_or("-".into(), |v| format!("{v:?}")),
                c.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                line.lines().next().unwrap_or(""),
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if tls.write_all(resp.as_bytes()).await.is_err() || tls.flush().await.is_err() {
                return "write failed".into();
            }
            let _ = tls.close().await;
            "served".into()
        }
    }
}

/// A certificate resolver that notes the SNI name it was asked for.
#[derive(Debug)]
struct NoteSni {
    inner: Arc<dyn rustls::server::ResolvesServerCert>,
    seen: Arc<Mutex<Option<String>>>,
}

impl rustls::server::ResolvesServerCert for NoteSni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = hello.server_name().map(String::from);
        }
        self.inner.resolve(hello)
    }
}

fn server_config(certs: &Certs) -> Arc<ServerConfig> {
    Reloadable::new(TlsCerts::Dir(certs.dir.0.clone()))
        .expect("certificates load")
        .current()
}

fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("stdin write");
    drop(input);
    // Every client here is bounded by its own timeout flag.
    child.wait_with_output().expect("wait")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn curl(h: &Harness, certs: &Certs, host: &str, extra: &[&str]) -> Output {
    let port = h.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert", &certs.ca_file])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("https://{host}:{port}/hello"));
    run(&mut cmd, b"")
}

fn s_client(h: &Harness, certs: &Certs, args: &[&str]) -> Output {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &h.addr.to_string()])
        .args([
            "-CAfile",
            &certs.ca_file,
            "-verify_return_error",
            "-ign_eof",
        ])
        .args(args);
    run(
        &mut cmd,
        b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
}

#[test]
fn curl_gets_the_certificate_for_its_name() {
    let certs = certs(true);
    let h = Harness::start(server_config(&certs), WAIT);
    for (host, extra, version) in [
        ("a.example.com", &[][..], "TLSv1_3"),
        ("www.example.com", &[][..], "TLSv1_3"),
        ("a.example.com", &["--tls-max", "1.2"][..], "TLSv1_2"),
        ("localhost", &["--tlsv1.2"][..], "TLSv1_3"),
    ] {
        let o = curl(&h, &certs, host, extra);
        let out = text(&o);
        assert!(o.status.success(), "{host}: {out}");
        // curl checked the name against the certificate: SNI chose it.
        assert!(
            out.contains(&format!("sni={host} alpn=http/1.1 version={version}"))
                && out.contains("request=GET /hello HTTP/1.1"),
            "{host} {extra:?}: {out}"
        );
        assert_eq!(h.next(), "served");
    }
    // A name two labels under the wildcard gets the default certificate,
    // which curl refuses for that name (after the handshake: it checks
    // the name itself, then hangs up).
    let o = curl(&h, &certs, "x.y.example.com", &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("x.y.example.com"), "{}", text(&o));
    assert_eq!(h.next(), "request cut");
    for (sni, subject) in [
        ("x.y.example.com", "CN = default.test"),
        ("b.example.com", "CN = *.example.com"),
        ("A.EXAMPLE.COM", "CN = a.example.com"),
    ] {
        let o = s_client(&h, &certs, &["-servername", sni]);
        assert!(
            text(&o).contains(&format!("subject={subject}")),
            "{sni}: {}",
            text(&o)
        );
        assert_eq!(h.next(), "served");
    }
}

#[test]
fn openssl_s_client_versions_alpn_and_resumption() {
    let certs = certs(true);
    let h = Harness::start(server_config(&certs), WAIT);
    let sess = TempDir::new();
    let sess_file = sess.path("session.pem");
    for (version, proto) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let o = s_client(
            &h,
            &certs,
            &[
                version,
                "-servername",
                "a.example.com",
                "-alpn",
                "h2,http/1.1",
                "-sess_out",
                &sess_file,
            ],
        );
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        assert!(out.contains(&format!("New, {proto}")), "{out}");
        assert!(
            out.contains("sni=a.example.com alpn=http/1.1") && out.contains("resumed=false"),
            "{out}"
        );
        assert_eq!(h.next(), "served");
        // The ticket from that connection resumes the next one.
        let o = s_client(
            &h,
            &certs,
            &[
                version,
                "-servername",
                "a.example.com",
                "-sess_in",
                &sess_file,
            ],
        );
        let out = text(&o);
        assert!(out.contains(&format!("Reused, {proto}")), "{out}");
        assert!(out.contains("resumed=true"), "{out}");
        assert_eq!(h.next(), "served");
    }
    // No ALPN offered at all: served, no protocol agreed.
    let o = s_client(&h, &certs, &["-servername", "a.example.com"]);
    assert!(text(&o).contains("alpn=-"), "{}", text(&o));
    assert_eq!(h.next(), "served");
}

#[test]
fn an_h2_only_client_gets_no_application_protocol() {
    let certs = certs(true);
    let h = Harness::start(server_config(&certs), WAIT);
    let o = s_client(&h, &certs, &["-servername", "a.example.com", "-alpn", "h2"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("no application protocol"), "{out}");
    assert_eq!(h.next(), "alpn_mismatch");
}

#[test]
fn an_unknown_name_without_default_fails_the_handshake() {
    let certs = certs(false);
    let h = Harness::start(server_config(&certs), WAIT);
    let o = s_client(&h, &certs, &["-servername", "other.test"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("access denied"), "{out}");
    assert_eq!(h.next(), "no_certificate");
    // No SNI at all: the same.
    let o = s_client(&h, &certs, &["-noservername"]);
    assert!(text(&o).contains("access denied"), "{}", text(&o));
    assert_eq!(h.next(), "no_certificate");
    // The names it has still work.
    let o = curl(&h, &certs, "b.example.com", &[]);
    assert!(text(&o).contains("sni=b.example.com"), "{}", text(&o));
    assert_eq!(h.next(), "served");
}

#[test]
fn plaintext_on_the_tls_port_gets_400() {
    let certs = certs(true);
    let h = Harness::start(server_config(&certs), WAIT);
    let port = h.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/x"));
    let o = run(&mut cmd, b"");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "The plain HTTP request was sent to HTTPS port\n\n400",
        "{}",
        text(&o)
    );
    assert_eq!(h.next(), "plain_http");
}

#[test]
fn garbage_and_stalled_handshakes_are_cut() {
    let certs = certs(true);
    let h = Harness::start(server_config(&certs), Duration::from_millis(300));
    let closed = |mut s: TcpStream| {
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut rest = Vec::new();
        // EOF (Ok) or a reset both mean the server let go.
        let _ = s.read_to_end(&mut rest);
        rest
    };
    // Not TLS, not HTTP: closed without an answer.
    let mut s = TcpStream::connect(h.addr).expect("connect");
    s.write_all(b"\x00\x01\x02garbage").expect("write");
    assert!(closed(s).is_empty());
    assert_eq!(h.next(), "not_tls");
    // A handshake record that never completes: cut by the timeout.
    let mut s = TcpStream::connect(h.addr).expect("connect");
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00").expect("write");
    closed(s);
    assert_eq!(h.next(), "timeout");
    // Nothing at all.
    let s = TcpStream::connect(h.addr).expect("connect");
    closed(s);
    assert_eq!(h.next(), "timeout");
    // A whole handshake record holding a ClientHello of garbage:
    // rustls's alert, then closed.
    let mut s = TcpStream::connect(h.addr).expect("connect");
    s.write_all(b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xde\xad\xbe\xef")
        .expect("write");
    let answer = closed(s);
    assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:?}");
    assert_eq!(h.next(), "bad_handshake");
    // The peer hanging up mid-handshake.
    let mut s = TcpStream::connect(h.addr).expect("connect");
    s.write_all(b"\x16\x03\x01\x02\x00").expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    closed(s);
    assert_eq!(h.next(), "closed");
    // And the server still serves.
    let o = curl(&h, &certs, "a.example.com", &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(h.next(), "served");
}

/// corepin's client side (TLS to backends) against the server side.
fn fetch(addr: SocketAddr, roots_pem: Option<String>, insecure: bool, name: &str) -> String {
    let name = name.to_string();
    LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(pem) = roots_pem {
                use rustls::pki_types::pem::PemObject;
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.expect("pem")).expect("root");
                }
            }
            let config = client::client_config(Arc::new(roots), insecure).expect("config");
            let sn = client::server_name(&format!("{name}:443"), None).expect("name");
            let s = GTcpStream::connect(addr).await.expect("connect");
            let mut tls = ClientTlsStream::connect(s, config, sn).expect("client");
            if let Err(e) = tls.handshake(sleep(WAIT)).await {
                return format!("handshake: {}: {e}", e.reason());
            }
            tls.write_all(b"GET /backend HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            tls.flush().await.expect("flush");
            let mut resp = Vec::new();
            // Read to the server's close_notify: a clean end (Ok(0)).
            match tls.read_to_end(&mut resp).await {
                Ok(_) => String::from_utf8_lossy(&resp).into_owned(),
                Err(e) => format!("read: {e}"),
            }
        })
        .expect("executor")
        .join()
        .expect("join")
}

#[test]
fn tls_to_backends_verifies_or_not() {
    let certs = certs(true);
    let h = Harness::start(server_config(&certs), WAIT);
    let ca_pem = certs.ca.cert.pem();
    let ok = fetch(h.addr, Some(ca_pem.clone()), false, "a.example.com");
    assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    assert!(
        ok.contains("sni=a.example.com alpn=http/1.1 version=TLSv1_3"),
        "{ok}"
    );
    assert_eq!(h.next(), "served");
    // Untrusted: the client refuses; the server hears its alert.
    let other = Ca::new("another CA").cert.pem();
    let e = fetch(h.addr, Some(other), false, "a.example.com");
    assert!(
        e.starts_with("handshake: bad_handshake") && e.contains("UnknownIssuer"),
        "{e}"
    );
    assert_eq!(h.next(), "alert");
    // insecure: no verification, still encrypted and to the same server.
    let ok = fetch(h.addr, None, true, "a.example.com");
    assert!(ok.contains("sni=a.example.com"), "{ok}");
    assert_eq!(h.next(), "served");
}

fn corepin(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corepin"));
    cmd.args(args);
    run(&mut cmd, b"")
}

fn write_config(dir: &TempDir, body: &str) -> String {
    dir.write("corepin.toml", body).display().to_string()
}

#[test]
fn check_validates_certificates_one_line_each() {
    let ca = Ca::new("check CA");
    let dir = TempDir::new();
    ca.leaf_into(&dir.0, "good.test", &["good.test"]);
    ca.leaf_into(&dir.0, "default", &["default.test"]);
    let cfg_dir = TempDir::new();
    let cfg = write_config(
        &cfg_dir,
        &format!(
            "listen_tls = [\"127.0.0.1:0\"]\nroutes = [\"* test\"]\n[tls]\ncerts_dir = \"{}\"\n",
            dir.0.display()
        ),
    );
    let o = corepin(&["check", "--config", &cfg]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "tls: good.test <- {}/good.test.crt",
            dir.0.display()
        )) && out.contains("tls: default <- "),
        "{out}"
    );
    // Break it four ways.
    ca.leaf_with(&dir.0, "expired.test", &["expired.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    let good_key = std::fs::read_to_string(dir.0.join("good.test.key")).expect("key");
    ca.leaf_into(&dir.0, "mismatch.test", &["mismatch.test"]);
    dir.write("mismatch.test.key", &good_key);
    dir.write(
        "bad.test.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    dir.write("bad.test.key", &good_key);
    ca.leaf_into(&dir.0, "gone.test", &["gone.test"]);
    std::fs::remove_file(dir.0.join("gone.test.key")).expect("rm");
    std::os::unix::fs::symlink(dir.0.join("nowhere"), dir.0.join("gone.test.key")).expect("ln");
    let o = corepin(&["check", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    let d = dir.0.display();
    let want = [
        format!("corepin: {d}/bad.test.crt: not a PEM certificate file"),
        format!("corepin: {d}/expired.test.crt: certificate expired on 2002-01-01T00:00:00Z"),
        format!("corepin: {d}/gone.test.key: cannot read: No such file or directory"),
        format!("corepin: {d}/mismatch.test.key: private key does not match the certificate in {d}/mismatch.test.crt"),
    ];
    assert_eq!(lines.len(), want.len(), "{err}");
    for (line, w) in lines.iter().zip(&want) {
        assert!(line.starts_with(w.as_str()), "{line:?} should start {w:?}");
    }
    // The flags, with an explicit pair that does not match.
    let o = corepin(&[
        "check",
        "--config",
        &cfg,
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-cert",
        &format!("{d}/good.test.crt"),
        "--tls-key",
        &format!("{d}/default.key"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with(&format!(
            "corepin: {d}/default.key: private key does not match the certificate in {d}/good.test.crt"
        )),
        "{}",
        text(&o)
    );
}

#[test]
fn run_refuses_ssl_targets_without_a_ca_store_and_check_accepts_them() {
    let ca = Ca::new("run CA");
    let dir = TempDir::new();
    ca.leaf_into(&dir.0, "default", &["default.test"]);
    let d = dir.0.display().to_string();
    // An empty CA store: a verified target could never be reached.
    let empty_dir = TempDir::new();
    let empty = empty_dir.write("empty.pem", "");
    let o = run(
        Command::new(env!("CARGO_BIN_EXE_corepin"))
            .args(["run", "--listen", "127.0.0.1:0", "--control-http", ""])
            .args(["--control-socket", "", "--route", "* 127.0.0.1:9,ssl"])
            .env("SSL_CERT_FILE", &empty)
            .env_remove("SSL_CERT_DIR"),
        b"",
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .starts_with("corepin: routes: ssl targets: no CA certificates found"),
        "{}",
        text(&o)
    );
    // check validates the same settings and says what it would serve.
    let cfg_dir = TempDir::new();
    let cfg = write_config(
        &cfg_dir,
        "routes = [\"*,ssl=yes localhost:9,ssl,insecure\"]\n",
    );
    let o = corepin(&[
        "check",
        "--config",
        &cfg,
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-certs-dir",
        &d,
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("tls: default <- "), "{out}");
    assert!(
        out.contains("warning: target localhost:9 is reached over TLS without verifying its certificate (insecure)"),
        "{out}"
    );
    let o = corepin(&["check", "--config", &cfg, "--listen-tls", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("--listen-tls: TLS listeners need certificates"),
        "{}",
        text(&o)
    );
}

// ---- corepin itself serving TLS

/// corepin with a TLS listener serving `certs`' directory (and a plain
/// listener and the control API); the TLS port.
fn corepin_tls(certs: &Certs, args: &[&str]) -> (common::Corepin, u16) {
    corepin_tls_env(certs, &[], args)
}

/// `corepin_tls` with `env` added to corepin's environment.
fn corepin_tls_env(certs: &Certs, env: &[(&str, &str)], args: &[&str]) -> (common::Corepin, u16) {
    let d = certs.dir.0.display().to_string();
    let mut all = vec![
        "--control-http",
        "127.0.0.1:0",
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-certs-dir",
        &d,
    ];
    all.extend_from_slice(args);
    let cp = common::Corepin::start_env(env, &all);
    let port = cp.tls_port();
    (cp, port)
}

fn curl_to(port: u16, certs_ca: &str, host: &str, path: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert", certs_ca])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"));
    run(&mut cmd, b"")
}

/// The summed value of `corepin_tls_handshake_failures_total` for `reason`.
fn tls_failures(cp: &common::Corepin, reason: &str) -> u64 {
    let m = cp
        .control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
        .text();
    m.lines()
        .filter(|l| {
            l.starts_with("corepin_tls_handshake_failures_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn curl_through_the_tls_listener_reaches_the_backend_as_https() {
    let certs = certs(true);
    let over_tls = common::Backend::fixed("over tls");
    let over_tcp = common::Backend::fixed("over tcp");
    let (cp, port) = corepin_tls(
        &certs,
        &[
            "--route",
            &format!("*,ssl=yes {}", over_tls.addr),
            "--route",
            &format!("* {}", over_tcp.addr),
        ],
    );
    // Two requests on one kept-alive TLS connection, then a POST.
    let o = curl_to(
        port,
        &certs.ca_file,
        "a.example.com",
        "/one",
        &[&format!("https://a.example.com:{port}/two")],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "over tlsover tls");
    assert_eq!(
        over_tls
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let o = curl_to(
        port,
        &certs.ca_file,
        "www.example.com",
        "/p",
        &["-d", "body"],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "over tls",
        "{}",
        text(&o)
    );
    let seen = over_tls.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // The plain listener takes the other route, and says http.
    let mut c = common::Conn::open(cp.addr());
    let r = c.get("/plain");
    assert_eq!(r.text(), "over tcp");
    assert_eq!(over_tcp.last().header("x-forwarded-proto"), Some("http"));
    assert_eq!(tls_failures(&cp, "plain_http"), 0);
}

#[test]
fn s_client_gets_the_certificate_for_its_sni_name_from_corepin() {
    let certs = certs(true);
    let backend = common::Backend::fixed("sni");
    let (_cp, port) = corepin_tls(&certs, &["--route", &backend.route()]);
    for (name, cn) in [
        ("a.example.com", "CN=a.example.com"),
        ("www.example.com", "CN=*.example.com"),
        ("localhost", "CN=default.test"),
    ] {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", name, "-CAfile", &certs.ca_file])
            .args(["-verify_return_error", "-ign_eof", "-alpn", "http/1.1"]);
        let o = run(
            &mut cmd,
            b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let out = text(&o).replace("CN = ", "CN=");
        assert!(o.status.success(), "{out}");
        assert!(
            out.contains(&format!("subject={cn}")) || out.contains(&format!("s:{cn}")),
            "{name}: {out}"
        );
        assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
        assert!(out.contains("HTTP/1.1 200") && out.contains("sni"), "{out}");
    }
}

#[test]
fn plaintext_garbage_and_h2_only_on_corepin_tls_port() {
    let certs = certs(true);
    let backend = common::Backend::fixed("x");
    let (cp, port) = corepin_tls(&certs, &["--route", &backend.route()]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let answer = common::raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(answer.as_bytes(), PLAINTEXT_RESPONSE);
    assert_eq!(
        common::raw(addr, b"\x00\x01\x02garbage garbage garbage\r\n"),
        ""
    );
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string(), "-alpn", "h2"]);
    let o = run(&mut cmd, b"");
    assert!(!o.status.success(), "{}", text(&o));
    common::wait_until("the failures counted", || {
        tls_failures(&cp, "plain_http") == 1
            && tls_failures(&cp, "not_tls") == 1
            && tls_failures(&cp, "alpn_mismatch") == 1
    });
    // Others are unharmed.
    let o = curl_to(port, &certs.ca_file, "a.example.com", "/", &[]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "x", "{}", text(&o));
}

#[test]
fn python_websockets_over_wss_to_the_test_target() {
    let certs = certs(true);
    let (cp, port) = corepin_tls(&certs, &["--route", "* test"]);
    let publish = common::publish_when_subscribed(
        cp.control_addr(),
        1,
        r#"{"items":[{"channel":"w","formats":{"ws-message":{"content":"over wss"}}}]}"#,
    );
    let out = Command::new(common::python())
        .arg(common::root().join("tests/clients/ws_client.py"))
        .arg(format!("wss://localhost:{port}/ws?channel=w"))
        .args(["--recv", "1", "--close", "1000"])
        .env("SSL_CERT_FILE", &certs.ca_file)
        .output()
        .expect("ws client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("client: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(publish.join().expect("publish"), 200);
    assert_eq!(r["status"], 101, "{r}");
    assert_eq!(r["received"], serde_json::json!(["over wss"]), "{r}");
    assert_eq!(r["close"][0], 1000, "{r}");
}

/// A TLS client connection kept open by the test (rustls, trusting `cas`).
fn tls_client(port: u16, cas: &[&Ca]) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.cert.der().clone()).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    rustls::StreamOwned::new(conn, sock)
}

/// One keep-alive GET on `s`; the bytes read until the answer ends in `body`.
fn get_on(s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>, body: &str) -> String {
    s.write_all(b"GET /k HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(body.as_bytes()) {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn sighup_swaps_certificates_on_every_core_and_open_connections_go_on() {
    let old = Ca::new("old CA");
    let new = Ca::new("new CA");
    let dir = TempDir::new();
    old.leaf_into(&dir.0, "default", &["localhost"]);
    let d = dir.0.display().to_string();
    let backend = common::Backend::fixed("kept");
    let cp = common::Corepin::start(&[
        "--workers",
        "2",
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-certs-dir",
        &d,
        "--route",
        &backend.route(),
    ]);
    let port = cp.tls_port();
    // Connections on the old certificate, several so both cores hold some.
    let mut open: Vec<_> = (0..4).map(|_| tls_client(port, &[&old])).collect();
    for c in &mut open {
        assert!(get_on(c, "kept").starts_with("HTTP/1.1 200"));
    }
    new.leaf_into(&dir.0, "default", &["localhost"]);
    cp.signal(libc::SIGHUP);
    cp.wait_stderr("core 0: certificates reloaded");
    cp.wait_stderr("core 1: certificates reloaded");
    // New connections get the new certificate, on every core.
    for _ in 0..6 {
        let mut c = tls_client(port, &[&new]);
        assert!(get_on(&mut c, "kept").starts_with("HTTP/1.1 200"));
    }
    let mut stale = tls_client(port, &[&old]);
    let mut buf = [0u8; 16];
    let r = stale
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .and_then(|_| stale.read(&mut buf));
    assert!(!matches!(r, Ok(n) if n > 0), "the old CA is still trusted");
    // The connections made before the reload go on.
    for c in &mut open {
        assert!(get_on(c, "kept").starts_with("HTTP/1.1 200"));
    }
    // A bad file keeps the current certificates and says why.
    dir.write(
        "default.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    cp.signal(libc::SIGHUP);
    cp.wait_stderr("certificates not reloaded, keeping the old ones");
    let mut c = tls_client(port, &[&new]);
    assert!(get_on(&mut c, "kept").starts_with("HTTP/1.1 200"));
}

#[test]
fn a_stalled_handshake_on_corepin_is_cut_counted_as_timeout_and_others_are_served() {
    let certs = certs(true);
    let dir = TempDir::new();
    let cfg = write_config(&dir, "[timeouts]\nclient_header = 0.5\n");
    let backend = common::Backend::fixed("served");
    let (cp, port) = corepin_tls(&certs, &["--config", &cfg, "--route", &backend.route()]);
    // The first bytes of a ClientHello, then nothing.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("write");
    // Another client is served while that one waits.
    let o = curl_to(port, &certs.ca_file, "localhost", "/", &[]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "served", "{}", text(&o));
    stalled.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut rest = Vec::new();
    // EOF or a reset: corepin let go.
    let _ = stalled.read_to_end(&mut rest);
    let metrics = || {
        cp.control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
            .text()
            .lines()
            .filter(|l| l.starts_with("corepin_tls_handshake_failures_total{"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    common::wait_until("a handshake failure counted", || {
        metrics().lines().any(|l| !l.ends_with(" 0"))
    });
    assert_eq!(tls_failures(&cp, "timeout"), 1, "{}", metrics());
}

#[test]
fn control_socket_reload_swaps_certificates_and_refuses_a_bad_file_with_the_reason() {
    let old = Ca::new("old CA");
    let new = Ca::new("new CA");
    let dir = TempDir::new();
    old.leaf_into(&dir.0, "default", &["localhost"]);
    let d = dir.0.display().to_string();
    let sock = dir.path("control.sock");
    let backend = common::Backend::fixed("kept");
    let cp = common::Corepin::start(&[
        "--workers",
        "2",
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-certs-dir",
        &d,
        "--control-socket",
        &sock,
        "--route",
        &backend.route(),
    ]);
    let port = cp.tls_port();
    let reload = || -> serde_json::Value {
        use std::io::BufRead;
        let mut u = std::os::unix::net::UnixStream::connect(&sock).expect("control socket");
        u.set_read_timeout(Some(WAIT)).expect("timeout");
        u.write_all(b"{\"method\":\"reload\"}\n").expect("write");
        let mut answer = String::new();
        std::io::BufReader::new(u)
            .read_line(&mut answer)
            .expect("answer");
        serde_json::from_str(&answer).expect("JSON answer")
    };
    let mut held = tls_client(port, &[&old]);
    assert!(get_on(&mut held, "kept").starts_with("HTTP/1.1 200"));
    new.leaf_into(&dir.0, "default", &["localhost"]);
    let a = reload();
    assert_eq!(a["ok"], true, "{a}");
    cp.wait_stderr("core 0: certificates reloaded");
    cp.wait_stderr("core 1: certificates reloaded");
    for _ in 0..4 {
        let mut c = tls_client(port, &[&new]);
        assert!(get_on(&mut c, "kept").starts_with("HTTP/1.1 200"));
    }
    // The connection made before the reload goes on.
    assert!(get_on(&mut held, "kept").starts_with("HTTP/1.1 200"));
    // A bad file: the answer says why, and the certificates stay.
    dir.write(
        "default.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let a = reload();
    assert_eq!(a["ok"], false, "{a}");
    let why = a["error"].as_str().unwrap_or("");
    assert!(why.contains("default.crt"), "{a}");
    let mut c = tls_client(port, &[&new]);
    assert!(get_on(&mut c, "kept").starts_with("HTTP/1.1 200"));
}

#[test]
fn websocket_upgrades_and_websocket_over_http_over_tls_tell_the_backend_https() {
    let certs = certs(true);
    let passthrough = common::Backend::fixed("not a websocket");
    let over_http = common::Backend::fixed("not websocket events");
    let (_cp, port) = corepin_tls(
        &certs,
        &[
            "--route",
            &format!("*,path_beg=/oh {},over_http", over_http.addr),
            "--route",
            &format!("* {}", passthrough.addr),
        ],
    );
    for (path, backend) in [("/ws", &passthrough), ("/oh/ws", &over_http)] {
        let mut c = tls_client(port, &[&certs.ca]);
        c.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write");
        // Whatever corepin answers (neither backend accepts), the request
        // reached the backend first.
        let mut buf = [0u8; 512];
        let _ = c.read(&mut buf);
        common::wait_until("the backend saw the request", || backend.requests() > 0);
        let seen = backend.last();
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{path}");
    }
}

// ---- TLS to backends (the `ssl` target property)

/// An HTTPS backend (tests/backends/tls_http.py) serving a leaf of `ca`
/// for `names`; the backend and its port.
fn tls_backend(ca: &Ca, names: &[&str]) -> (common::PyBackend, TempDir) {
    let dir = TempDir::new();
    ca.leaf_into(&dir.0, "backend", names);
    let b = common::PyBackend::start(
        "tls_http.py",
        &[&dir.path("backend.crt"), &dir.path("backend.key")],
    );
    (b, dir)
}

/// A CA file holding `ca` alone, for corepin's `SSL_CERT_FILE`.
fn ca_file(ca: &Ca) -> (TempDir, String) {
    let dir = TempDir::new();
    let f = dir.write("ca.pem", &ca.cert.pem()).display().to_string();
    (dir, f)
}

#[test]
fn proxied_requests_grip_streams_and_next_links_reach_a_tls_backend() {
    let ca = Ca::new("backend CA");
    let (backend, _bdir) = tls_backend(&ca, &["localhost"]);
    let (_cdir, ca_pem) = ca_file(&ca);
    // SNI and verification by host=; the address is an IP.
    let route = format!("* 127.0.0.1:{},ssl,host=localhost", backend.port);
    let cp = common::Corepin::start_env(
        &[("SSL_CERT_FILE", &ca_pem)],
        &["--control-http", "127.0.0.1:0", "--route", &route],
    );
    // Proxied, twice on one client connection (the second on a pooled
    // TLS connection, if the backend kept it).
    let mut c = common::Conn::open(cp.addr());
    for path in ["/one", "/two"] {
        let r = c.get(path);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), format!("tls backend {path} proto=http"));
    }
    c.send(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.read().expect("answer");
    assert_eq!(r.text(), "tls backend /post proto=httphello");
    // A GRIP stream held by the TLS backend, then a publish.
    let mut s = common::Stream::open(cp.addr(), "/hold");
    assert_eq!(s.head.status, 200);
    assert_eq!(s.read_text(12), "stream open\n");
    common::wait_until("the stream subscribed", || {
        common::subscriptions_at(cp.control_addr()) == 1
    });
    cp.publish_stream("tls", "published\n");
    assert_eq!(s.read_text(10), "published\n");
    // A relative next link is fetched from the same backend over TLS.
    let mut l = common::Stream::open(cp.addr(), "/link");
    assert_eq!(l.read_text(7), "linked\n");
    assert_eq!(l.read_text(14), "next over tls\n");
    assert_eq!(l.chunk(), None, "the link's answer ends the stream");
}

#[test]
fn sequential_requests_to_a_tls_backend_reuse_one_tls_connection() {
    let ca = Ca::new("backend CA");
    let (backend, _bdir) = tls_backend(&ca, &["localhost"]);
    let (_cdir, ca_pem) = ca_file(&ca);
    let route = format!("* 127.0.0.1:{},ssl,host=localhost", backend.port);
    let cp = common::Corepin::start_env(
        &[("SSL_CERT_FILE", &ca_pem)],
        &["--control-http", "127.0.0.1:0", "--route", &route],
    );
    // One client connection (so one core and its pool): each answer is
    // relayed whole and the upstream connection pooled before the next
    // request is read, so the second request and the count find it.
    let mut c = common::Conn::open(cp.addr());
    for path in ["/one", "/two"] {
        let r = c.get(path);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), format!("tls backend {path} proto=http"));
    }
    let r = c.get("/conns");
    assert_eq!(
        r.text(),
        "connections=1",
        "three requests, one TLS connection (one handshake) at the backend"
    );
}

#[test]
fn a_next_link_stream_is_held_and_followed_for_an_https_client() {
    let certs = certs(true);
    let (backend, _bdir) = tls_backend(&certs.ca, &["localhost"]);
    let (_cdir, ca_pem) = ca_file(&certs.ca);
    let route = format!("* 127.0.0.1:{},ssl,host=localhost", backend.port);
    let (cp, port) = corepin_tls_env(&certs, &[("SSL_CERT_FILE", &ca_pem)], &["--route", &route]);
    // curl over https: the backend's hold with its first chunk, then, one
    // second later (the link's timeout), the next link's answer fetched
    // from the backend, which ends the stream.
    let o = curl_to(port, &certs.ca_file, "a.example.com", "/link", &["-N"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "linked\nnext over tls\n",
        "{}",
        text(&o)
    );
    assert_eq!(tls_failures(&cp, "timeout"), 0);
    assert_eq!(tls_failures(&cp, "alert"), 0);
}

#[test]
fn an_untrusted_or_misnamed_backend_is_502_and_insecure_skips_the_check() {
    let trusted = Ca::new("trusted CA");
    let stranger = Ca::new("stranger CA");
    let (good, _gdir) = tls_backend(&trusted, &["localhost"]);
    let (odd, _odir) = tls_backend(&stranger, &["localhost"]);
    let (_cdir, ca_pem) = ca_file(&trusted);
    let routes = [
        format!(
            "*,path_beg=/untrusted 127.0.0.1:{},ssl,host=localhost",
            odd.port
        ),
        format!("*,path_beg=/insecure 127.0.0.1:{},ssl,insecure", odd.port),
        format!(
            "*,path_beg=/misnamed 127.0.0.1:{},ssl,host=other.test",
            good.port
        ),
        format!("* 127.0.0.1:{},ssl,host=localhost", good.port),
    ];
    let mut args = vec!["--control-http", "127.0.0.1:0"];
    for r in &routes {
        args.extend(["--route", r.as_str()]);
    }
    let cp = common::Corepin::start_env(&[("SSL_CERT_FILE", &ca_pem)], &args);
    cp.wait_stderr(&format!(
        "warning: target 127.0.0.1:{} is reached over TLS without verifying its certificate (insecure)",
        odd.port
    ));
    let mut c = common::Conn::open(cp.addr());
    let r = c.get("/untrusted");
    assert_eq!(r.status, 502, "{}", r.text());
    cp.wait_stderr(&format!(
        "TLS to 127.0.0.1:{} failed: bad TLS handshake: invalid peer certificate: UnknownIssuer",
        odd.port
    ));
    let r = common::Conn::open(cp.addr()).get("/misnamed");
    assert_eq!(r.status, 502, "{}", r.text());
    cp.wait_stderr(&format!(
        "TLS to 127.0.0.1:{} failed: bad TLS handshake: invalid peer certificate: certificate not valid for name \"other.test\"",
        good.port
    ));
    let r = common::Conn::open(cp.addr()).get("/insecure");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "tls backend /insecure proto=http");
    let r = common::Conn::open(cp.addr()).get("/fine");
    assert_eq!(r.text(), "tls backend /fine proto=http");
}

#[test]
fn wss_to_corepin_passes_through_to_a_wss_backend() {
    let certs = certs(true);
    let bdir = TempDir::new();
    certs.ca.leaf_into(&bdir.0, "backend", &["localhost"]);
    let backend = common::PyBackend::start(
        "ws_echo.py",
        &[&bdir.path("backend.crt"), &bdir.path("backend.key")],
    );
    let route = format!("* 127.0.0.1:{},ssl,host=localhost", backend.port);
    let (_cp, port) = corepin_tls_env(
        &certs,
        &[("SSL_CERT_FILE", &certs.ca_file)],
        &["--route", &route],
    );
    let out = Command::new(common::python())
        .arg(common::root().join("tests/clients/ws_client.py"))
        .arg(format!("wss://localhost:{port}/echo"))
        .args(["--send", "over wss twice", "--recv", "1", "--close", "1000"])
        .env("SSL_CERT_FILE", &certs.ca_file)
        .output()
        .expect("ws client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("client: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["status"], 101, "{r}");
    assert_eq!(r["received"], serde_json::json!(["over wss twice"]), "{r}");
    assert_eq!(r["close"][0], 1000, "{r}");
}

/// `Connection::send_now` (a dropped WebSocket subscriber's close 1008)
/// on a TLS connection: the bytes are encrypted after what was written
/// before and reach the client, without waiting, before the connection
/// is dropped.
#[test]
fn send_now_on_a_tls_connection_reaches_the_client_encrypted() {
    use corepin::connection::Connection;
    let certs = certs(true);
    let config = server_config(&certs);
    let (addr_tx, addr_rx) = mpsc::channel();
    let server = LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            let l = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            addr_tx.send(l.local_addr().expect("addr")).expect("send");
            let s = l.accept().await.expect("accept");
            let bufs = std::rc::Rc::new(corepin::buf::BufPool::default());
            let conn = Connection::tcp(s, bufs);
            let mut conn = conn.start_tls(config, WAIT).await.expect("handshake");
            assert!(conn.is_tls());
            conn.write_all(b"first;").await.expect("write");
            // A WebSocket close 1008 "too slow", as drop_client sends it.
            conn.send_now(b"\x88\x0a\x03\xf0too slow");
            // Dropped without a close_notify, as a dropped client is.
            drop(conn);
        })
        .expect("executor");
    let addr: SocketAddr = addr_rx.recv_timeout(WAIT).expect("listening");
    let mut c = tls_client(addr.port(), &[&certs.ca]);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // The TCP close without close_notify ends it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("read: {e} after {got:?}"),
        }
    }
    server.join().expect("server");
    assert_eq!(got, b"first;\x88\x0a\x03\xf0too slow");
}

/// One TLS connection trusting `cas` (a fresh full handshake), two
/// keep-alive GETs answered `kept`; why not, if it failed.
fn two_gets(port: u16, cas: &[&Ca]) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca.cert.der().clone())
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    for _ in 0..2 {
        s.write_all(b"GET /r HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"kept") {
            match s.read(&mut buf) {
                Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&got))),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        if !got.starts_with(b"HTTP/1.1 200") {
            return Err(String::from_utf8_lossy(&got).into_owned());
        }
    }
    Ok(())
}

#[test]
fn certificates_reload_under_load_with_no_failed_handshake_or_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let old = Arc::new(Ca::new("reload old CA"));
    let new = Arc::new(Ca::new("reload new CA"));
    let dir = TempDir::new();
    old.leaf_into(&dir.0, "default", &["localhost"]);
    let d = dir.0.display().to_string();
    let backend = common::Backend::fixed("kept");
    let cp = common::Corepin::start(&[
        "--workers",
        "2",
        "--control-http",
        "127.0.0.1:0",
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-certs-dir",
        &d,
        "--route",
        &backend.route(),
    ]);
    let port = cp.tls_port();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    // Clients that trust both CAs open connection after connection.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, old, new) = (stop.clone(), ok.clone(), old.clone(), new.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match two_gets(port, &[&old, &new]) {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e),
                    }
                }
                failures
            })
        })
        .collect();
    let reloaded = |cp: &common::Corepin| {
        cp.stderr
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|l| l.contains("certificates reloaded"))
                    .count()
            })
            .unwrap_or(0)
    };
    for i in 0..6 {
        // Connections are being made when each reload lands.
        let before = ok.load(Ordering::Relaxed);
        common::wait_until("clients connecting", || {
            ok.load(Ordering::Relaxed) >= before + 10
        });
        let ca = if i % 2 == 0 { &new } else { &old };
        ca.leaf_into(&dir.0, "default", &["localhost"]);
        cp.signal(libc::SIGHUP);
        common::wait_until("both cores reloaded", || reloaded(&cp) >= 2 * (i + 1));
    }
    let before = ok.load(Ordering::Relaxed);
    common::wait_until("clients connecting after the reloads", || {
        ok.load(Ordering::Relaxed) >= before + 10
    });
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(
        !cp.stderr
            .lock()
            .expect("stderr")
            .iter()
            .any(|l| l.contains("not reloaded")),
        "every reload took"
    );
    for reason in corepin::tls::HandshakeError::REASONS {
        assert_eq!(tls_failures(&cp, reason), 0, "{reason}");
    }
    eprintln!(
        "{} connections, 2 requests each, over 6 reloads",
        ok.load(Ordering::Relaxed)
    );
}
