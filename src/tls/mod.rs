//! TLS at the edge and to backends, with rustls: certificates by SNI
//! (`certs`, `names`), the server and client configurations (`server`,
//! `client`), sans-IO stream adapters for any `AsyncRead + AsyncWrite`
//! (`server_stream` for a TLS listener's connections, over rustls's
//! unbuffered API so an idle one holds no buffer; `stream`, buffered, for
//! TLS to backends), and the first-bytes classifier that answers plaintext HTTP
//! on a TLS port (`sniff`). No glommio types here: the connection layer
//! hands in its socket and a timer future.
//!
//! How a TLS listener's connection goes (for the `Connection` layer):
//! 1. read up to `sniff::DECISIVE_BYTES` bytes into the connection's
//!    buffer until `sniff::classify` answers;
//! 2. `PlainHttp`: write `sniff::PLAINTEXT_RESPONSE`, shut down the write
//!    side, drain what the client sends for a moment, close; `Other`:
//!    close, count `HandshakeError::NotTls`;
//! 3. `Tls`: `ServerTlsStream::accept(socket, core_config.clone(), &buf)`
//!    then `.handshake(glommio::timer::sleep(timeout)).await`; on `Err`
//!    count `e.reason()` and drop the stream;
//! 4. from then on read and write the `ServerTlsStream` where the socket
//!    was used, `flush` after each response or batch, `close` at the end.
//!
//! Crypto provider: aws-lc-rs, chosen by measurement (PERFORMANCE.md,
//! "TLS provider"; `benches/tls_provider.rs`), with ring's AEAD for the
//! records, chosen by measurement too (`provider`; an idle connection's
//! keys are 190 bytes smaller).
//!
//! Kernel TLS (kTLS), investigated: not available, and `tls.ktls = true`
//! is refused. The kernels here are built without `CONFIG_TLS` (and
//! without module support): `setsockopt(TCP_ULP, "tls")` fails with
//! ENOENT and there is no /proc/net/tls_stat. Even where the kernel has
//! it, the `ktls` crate drives tokio sockets; doing it by hand
//! (rustls's `dangerous_extract_secrets`, then `TCP_ULP` and
//! `TLS_TX`/`TLS_RX` on glommio's fd) would leave glommio's plain
//! `recv`s facing the non-data records kTLS hands up with a control
//! message (a close_notify, a TLS 1.3 KeyUpdate or NewSessionTicket),
//! which a plain read answers with EIO; it would need a recvmsg path in
//! the runtime, and after a KeyUpdate a rekey that rustls no longer
//! tracks. Worth revisiting with the io_uring data path and a kernel
//! that has it; until then rustls encrypts in userspace.

pub mod certs;
pub mod client;
pub mod names;
pub mod server;
pub mod server_stream;
pub mod sniff;
pub mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::ProducesTickets;

use crate::config::Config;
use crate::route::Target;

pub use certs::{CertProblem, CertStore};
pub use server::{Reloadable, ServerTls};
pub use server_stream::ServerTlsStream;
pub use stream::{ClientTlsStream, HandshakeError, TlsStream};

// The crypto provider, by cargo feature (Cargo.toml): aws-lc normally
// (with ring's AEAD when both are on, the default: `provider`), ring only
// in builds that leave aws-lc out (the fuzz targets).
#[cfg(feature = "aws-lc")]
use rustls::crypto::aws_lc_rs as crypto;
#[cfg(all(feature = "ring", not(feature = "aws-lc")))]
use rustls::crypto::ring as crypto;
#[cfg(not(any(feature = "aws-lc", feature = "ring")))]
compile_error!("corepin needs a crypto provider: feature `aws-lc` (the default) or `ring`");

/// The crypto provider every TLS configuration of corepin uses.
///
/// With aws-lc: aws-lc-rs for everything (key exchange with the
/// X25519MLKEM768 hybrid, signatures, hashes and the key schedule,
/// tickets) except the record layer's AEAD, which is ring's (the same
/// cipher suites, in aws-lc-rs's order). Why, measured (PERFORMANCE.md,
/// "TLS memory per connection"): aws-lc-rs keeps each AES-GCM key in a
/// C allocation of its own (about 600 bytes, two per connection, 1,229
/// bytes with their boxes), ring inline in rustls's box (560 bytes
/// each): 190 bytes less for every TLS connection, idle ones included,
/// at the same bulk cost ("TLS provider": bulk a wash).
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(all(feature = "aws-lc", feature = "ring"))]
    return Arc::new(CryptoProvider {
        cipher_suites: ring_aead_suites().clone(),
        ..crypto::default_provider()
    });
    #[cfg(not(all(feature = "aws-lc", feature = "ring")))]
    Arc::new(crypto::default_provider())
}

/// aws-lc-rs's cipher suites with ring's AEAD for the records: each
/// suite made once per process (rustls wants them `'static`).
#[cfg(all(feature = "aws-lc", feature = "ring"))]
fn ring_aead_suites() -> &'static Vec<rustls::SupportedCipherSuite> {
    use rustls::SupportedCipherSuite as S;
    static SUITES: std::sync::OnceLock<Vec<S>> = std::sync::OnceLock::new();
    let common = |c: &rustls::CipherSuiteCommon| rustls::CipherSuiteCommon {
        suite: c.suite,
        hash_provider: c.hash_provider,
        confidentiality_limit: c.confidentiality_limit,
    };
    SUITES.get_or_init(|| {
        let ring = rustls::crypto::ring::ALL_CIPHER_SUITES;
        crypto::default_provider()
            .cipher_suites
            .iter()
            .map(|s| {
                let twin = ring.iter().find(|r| r.suite() == s.suite());
                match (s, twin) {
                    (S::Tls13(a), Some(S::Tls13(r))) => {
                        S::Tls13(Box::leak(Box::new(rustls::Tls13CipherSuite {
                            common: common(&a.common),
                            aead_alg: r.aead_alg,
                            ..**a
                        })))
                    }
                    (S::Tls12(a), Some(S::Tls12(r))) => {
                        S::Tls12(Box::leak(Box::new(rustls::Tls12CipherSuite {
                            common: common(&a.common),
                            aead_alg: r.aead_alg,
                            ..**a
                        })))
                    }
                    // A suite ring does not have stays aws-lc-rs's.
                    _ => *s,
                }
            })
            .collect()
    })
}

/// A session-ticket key (rotated by rustls), made once per process.
pub fn ticketer() -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    crypto::Ticketer::new()
}

/// What `corepin check` says about a config's TLS settings: lines to
/// print on success (what is served, warnings), and problems (one line
/// each; any makes the check fail).
#[derive(Debug, Default)]
pub struct CheckReport {
    pub info: Vec<String>,
    pub problems: Vec<String>,
}

/// Validates the TLS listeners' certificates and the TLS-to-backend
/// targets as start-up would.
pub fn check(cfg: &Config) -> CheckReport {
    let mut report = CheckReport::default();
    if let Some(source) = &cfg.tls {
        match Reloadable::new(source.clone()) {
            Ok(r) => {
                for (name, path) in r.store().loaded() {
                    report
                        .info
                        .push(format!("tls: {name} <- {}", path.display()));
                }
                if !r.store().has_default() {
                    report.info.push(
                        "tls: no default certificate: clients whose SNI name matches none are refused in the handshake"
                            .into(),
                    );
                }
            }
            Err(problems) => report.problems.extend(problems.into_iter().map(|p| p.0)),
        }
    }
    report.info.extend(cfg.routes.warnings());
    let mut need_roots = false;
    for route in cfg.routes.iter() {
        for t in &route.targets {
            let Target::Backend(b) = t else { continue };
            if !b.ssl {
                continue;
            }
            if let Err(e) = client::server_name(&b.addr, b.tls_name()) {
                report
                    .problems
                    .push(format!("routes: '{}': target {}: {e}", route.line, b.addr));
            }
            if b.insecure {
                report.info.push(warn_insecure(&b.addr));
            } else {
                need_roots = true;
            }
        }
    }
    if need_roots {
        match client::system_roots() {
            Ok(roots) => report.info.push(format!(
                "tls: {} CA certificates in the system store for ssl targets",
                roots.len()
            )),
            Err(e) => report.problems.push(format!("routes: ssl targets: {e}")),
        }
    }
    report
}

/// The start-up warning for a target that skips verification.
pub fn warn_insecure(addr: &str) -> String {
    format!(
        "warning: target {addr} is reached over TLS without verifying its certificate (insecure)"
    )
}

/// What `corepin run` (and a routes reload) checks of the `ssl`
/// targets before serving them: every target's name can be verified,
/// and the CA store is there when a target is verified. `Ok`: the
/// warnings to log, one per `insecure` target and the routes' own
/// ([`crate::route::Routes::warnings`]); `Err`: the one line why
/// not.
pub fn backend_targets(routes: &crate::route::Routes) -> Result<Vec<String>, String> {
    let mut warnings = routes.warnings();
    let mut need_roots = false;
    for route in routes.iter() {
        for t in &route.targets {
            let Target::Backend(b) = t else { continue };
            if !b.ssl {
                continue;
            }
            client::server_name(&b.addr, b.tls_name())
                .map_err(|e| format!("routes: '{}': target {}: {e}", route.line, b.addr))?;
            if b.insecure {
                let w = warn_insecure(&b.addr);
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            } else {
                need_roots = true;
            }
        }
    }
    if need_roots {
        client::shared_roots().map_err(|e| format!("routes: ssl targets: {e}"))?;
    }
    Ok(warnings)
}
