//! TLS crypto-provider benchmark: rustls over aws-lc-rs against rustls over
//! ring, in memory (a client and a server connection pumping records to
//! each other in one process, no sockets), measured in process CPU time
//! (getrusage), which stays stable while other work shares the cores.
//!
//! Run: `cargo bench --bench tls_provider` (about a minute). Under
//! `cargo test` (no `--bench` argument) every case runs once, as a smoke
//! test that the handshakes complete and the bytes arrive intact.
//!
//! Rows: full handshakes per CPU-second (TLS 1.3 and 1.2, ECDSA P-256 and
//! RSA 2048 certificates, X25519 key exchange, both providers; plus
//! aws-lc-rs with the X25519MLKEM768 hybrid that current browsers and
//! OpenSSL 3.5 offer), resumed handshakes (tickets), and bulk
//! encrypt+decrypt throughput for 1 KiB and 16 KiB writes. A third
//! column is what corepin ships: aws-lc-rs with ring's AEAD. "server %" is
//! the share of the CPU time spent inside the server connection's calls
//! (thread CPU clock around them): what a corepin core pays.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes into the timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the clock id is valid on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[derive(Clone, Copy, PartialEq)]
enum Key {
    Ecdsa,
    Rsa,
}

struct Certs {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

fn certs(kind: Key) -> Certs {
    let alg = match kind {
        Key::Ecdsa => &rcgen::PKCS_ECDSA_P256_SHA256,
        Key::Rsa => &rcgen::PKCS_RSA_SHA256,
    };
    let ca_key = rcgen::KeyPair::generate_for(alg).expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["bench.example".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("leaf");
    Certs {
        ca: ca.der().clone(),
        chain: vec![leaf.der().clone()],
        key: key.serialize_der(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    AwsLc,
    Ring,
    /// What corepin ships (`corepin::tls::provider`): aws-lc-rs with
    /// ring's AEAD for the records.
    Corepin,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::AwsLc => "aws-lc-rs",
            Provider::Ring => "ring",
            Provider::Corepin => "aws-lc-rs + ring AEAD (corepin)",
        }
    }

    fn provider(self, kx: &'static dyn SupportedKxGroup) -> Arc<CryptoProvider> {
        let mut p = match self {
            Provider::AwsLc => rustls::crypto::aws_lc_rs::default_provider(),
            Provider::Ring => rustls::crypto::ring::default_provider(),
            Provider::Corepin => (*corepin::tls::provider()).clone(),
        };
        p.kx_groups = vec![kx];
        Arc::new(p)
    }

    fn x25519(self) -> &'static dyn SupportedKxGroup {
        match self {
            Provider::AwsLc | Provider::Corepin => rustls::crypto::aws_lc_rs::kx_group::X25519,
            Provider::Ring => rustls::crypto::ring::kx_group::X25519,
        }
    }

    fn ticketer(self) -> Arc<dyn rustls::server::ProducesTickets> {
        match self {
            Provider::AwsLc | Provider::Corepin => rustls::crypto::aws_lc_rs::Ticketer::new(),
            Provider::Ring => rustls::crypto::ring::Ticketer::new(),
        }
        .expect("ticketer")
    }
}

struct Pair {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// Server and client configs as corepin builds them (ALPN http/1.1,
/// tickets, no stateful cache), one protocol version.
fn pair(
    p: Provider,
    kx: &'static dyn SupportedKxGroup,
    c: &Certs,
    tls13: bool,
    resume: bool,
) -> Pair {
    let version: &[&rustls::SupportedProtocolVersion] = if tls13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12]
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone()));
    let mut server = ServerConfig::builder_with_provider(p.provider(kx))
        .with_protocol_versions(version)
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(c.chain.clone(), key)
        .expect("server cert");
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    server.ticketer = p.ticketer();
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let mut roots = RootCertStore::empty();
    roots.add(c.ca.clone()).expect("root");
    let mut client = ClientConfig::builder_with_provider(p.provider(kx))
        .with_protocol_versions(version)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        client.resumption = rustls::client::Resumption::disabled();
    }
    Pair {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

/// Time spent inside server calls, for the "server %" column.
struct Meter {
    server: Duration,
}

impl Meter {
    fn server<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = thread_cpu();
        let r = f();
        self.server += thread_cpu() - t;
        r
    }
}

fn client_to_server(
    c: &mut ClientConnection,
    s: &mut ServerConnection,
    buf: &mut Vec<u8>,
    m: &mut Meter,
) {
    buf.clear();
    while c.wants_write() {
        c.write_tls(buf).expect("client write_tls");
    }
    m.server(|| {
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read_tls");
            s.process_new_packets().expect("server process");
        }
    });
}

fn server_to_client(
    s: &mut ServerConnection,
    c: &mut ClientConnection,
    buf: &mut Vec<u8>,
    m: &mut Meter,
) {
    buf.clear();
    m.server(|| {
        while s.wants_write() {
            s.write_tls(buf).expect("server write_tls");
        }
    });
    let mut rd = &buf[..];
    while !rd.is_empty() {
        c.read_tls(&mut rd).expect("client read_tls");
        c.process_new_packets().expect("client process");
    }
}

/// One handshake to completion, tickets included; returns whether it
/// resumed.
fn handshake(p: &Pair, buf: &mut Vec<u8>, m: &mut Meter) -> (ClientConnection, ServerConnection) {
    let name = ServerName::try_from("bench.example").expect("name");
    let mut c = ClientConnection::new(p.client.clone(), name).expect("client");
    let mut s = m.server(|| ServerConnection::new(p.server.clone()).expect("server"));
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
        client_to_server(&mut c, &mut s, buf, m);
        server_to_client(&mut s, &mut c, buf, m);
    }
    assert_eq!(s.alpn_protocol(), Some(&b"http/1.1"[..]));
    (c, s)
}

struct Sample {
    per_cpu_sec: f64,
    server_share: f64,
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.per_cpu_sec.total_cmp(&b.per_cpu_sec));
    v.swap_remove(v.len() / 2)
}

/// Runs `op` (returning units done) until `budget` of process CPU time has
/// passed; `quick` runs it once.
fn measure(quick: bool, budget: Duration, mut op: impl FnMut(&mut Meter) -> u64) -> Sample {
    let runs = if quick { 1 } else { 3 };
    let mut samples = Vec::new();
    for _ in 0..runs {
        let mut m = Meter {
            server: Duration::ZERO,
        };
        let start = cpu_time();
        let mut units = 0u64;
        loop {
            units += op(&mut m);
            let spent = cpu_time() - start;
            if quick || spent >= budget {
                samples.push(Sample {
                    per_cpu_sec: units as f64 / spent.as_secs_f64().max(1e-9),
                    server_share: m.server.as_secs_f64() / spent.as_secs_f64().max(1e-9),
                });
                break;
            }
        }
    }
    median(samples)
}

fn full_handshakes(quick: bool, p: &Pair) -> Sample {
    let mut buf = Vec::with_capacity(32 << 10);
    measure(quick, Duration::from_millis(700), |m| {
        let (c, s) = handshake(p, &mut buf, m);
        assert!(matches!(
            c.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        ));
        drop(s);
        1
    })
}

fn resumed_handshakes(quick: bool, p: &Pair) -> Sample {
    let mut buf = Vec::with_capacity(32 << 10);
    let mut warm = Meter {
        server: Duration::ZERO,
    };
    handshake(p, &mut buf, &mut warm);
    measure(quick, Duration::from_millis(700), |m| {
        let (c, _s) = handshake(p, &mut buf, m);
        assert_eq!(
            c.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "ticket resumption"
        );
        1
    })
}

/// Bytes per CPU-second through client encrypt + server decrypt (the
/// server half is what a core pays per byte received; sending costs the
/// same cipher the other way).
fn bulk(quick: bool, p: &Pair, size: usize) -> Sample {
    let mut buf = Vec::with_capacity(64 << 10);
    let mut m0 = Meter {
        server: Duration::ZERO,
    };
    let (mut c, mut s) = handshake(p, &mut buf, &mut m0);
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut out = vec![0u8; size];
    measure(quick, Duration::from_millis(700), |m| {
        let rounds = 64;
        for _ in 0..rounds {
            c.writer().write_all(&payload).expect("write");
            client_to_server(&mut c, &mut s, &mut buf, m);
            m.server(|| {
                s.reader().read_exact(&mut out).expect("read");
            });
        }
        assert_eq!(out, payload);
        assert_eq!(
            c.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384)
        );
        (rounds * size) as u64
    })
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let ecdsa = certs(Key::Ecdsa);
    let rsa = certs(Key::Rsa);
    let providers = [Provider::AwsLc, Provider::Ring, Provider::Corepin];
    if quick {
        println!("smoke run (one of each, not a measurement): cargo bench --bench tls_provider");
    }
    println!("| case | provider | per CPU-second | server % |");
    println!("|---|---|---:|---:|");
    let row = |case: &str, p: &str, s: Sample, unit: &str| {
        println!(
            "| {case} | {p} | {:.0}{unit} | {:.0}% |",
            s.per_cpu_sec,
            s.server_share * 100.0
        );
    };
    for (tls13, v) in [(true, "TLS 1.3"), (false, "TLS 1.2")] {
        for (key, k) in [(Key::Ecdsa, "ECDSA P-256"), (Key::Rsa, "RSA 2048")] {
            let c = if key == Key::Ecdsa { &ecdsa } else { &rsa };
            for p in providers {
                let pr = pair(p, p.x25519(), c, tls13, false);
                row(
                    &format!("full handshake, {v}, {k}, X25519"),
                    p.name(),
                    full_handshakes(quick, &pr),
                    "",
                );
            }
            if tls13 {
                let pq = rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768;
                let pr = pair(Provider::AwsLc, pq, c, tls13, false);
                row(
                    &format!("full handshake, {v}, {k}, X25519MLKEM768"),
                    "aws-lc-rs",
                    full_handshakes(quick, &pr),
                    "",
                );
            }
        }
        for p in providers {
            let pr = pair(p, p.x25519(), &ecdsa, tls13, true);
            row(
                &format!("resumed handshake (ticket), {v}"),
                p.name(),
                resumed_handshakes(quick, &pr),
                "",
            );
        }
    }
    for size in [1024usize, 16384] {
        for p in providers {
            let pr = pair(p, p.x25519(), &ecdsa, true, false);
            let s = bulk(quick, &pr, size);
            let mib = Sample {
                per_cpu_sec: s.per_cpu_sec / (1 << 20) as f64,
                server_share: s.server_share,
            };
            row(
                &format!("bulk {} KiB writes, TLS 1.3 AES-256-GCM", size / 1024),
                p.name(),
                mib,
                " MiB",
            );
        }
    }
}
