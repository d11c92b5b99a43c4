//! TLS to backends (the `ssl` target property): the client configuration,
//! the system CA store, and the server name a target is reached by.
//!
//! Trust: the system's CA store as OpenSSL finds it, read once at start-up
//! by `rustls-native-certs` (Debian: /etc/ssl/certs/ca-certificates.crt;
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` override it as they do for OpenSSL and
//! curl). A target with `insecure` skips certificate verification (the
//! handshake's signatures are still checked, so the connection is at
//! least to whoever holds the presented key); start-up warns about it.
//!
//! ALPN `http/1.1`. Resumption: rustls's in-memory session cache is one
//! `Mutex`; build one `ClientConfig` per core (`client_config` is cheap:
//! the roots are shared) so cores never contend for it.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::server::ALPN_HTTP11;

/// The system CA store, read once per process on first use (start-up
/// reads it when a route has a verified `ssl` target; a reload that adds
/// one reads it then). Every core's client configuration shares it.
pub fn shared_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: std::sync::OnceLock<Result<Arc<RootCertStore>, String>> =
        std::sync::OnceLock::new();
    ROOTS.get_or_init(system_roots).clone()
}

/// One core's client configurations for TLS to backends, verified and
/// `insecure`, each made on first use (so a core keeps its own session
/// cache and no lock is shared between cores).
#[derive(Default)]
pub struct CoreClients {
    verified: std::cell::OnceCell<Arc<ClientConfig>>,
    insecure: std::cell::OnceCell<Arc<ClientConfig>>,
}

impl CoreClients {
    /// The configuration for a target, verifying its certificate or not.
    pub fn config(&self, insecure: bool) -> Result<Arc<ClientConfig>, String> {
        let cell = if insecure {
            &self.insecure
        } else {
            &self.verified
        };
        if let Some(c) = cell.get() {
            return Ok(c.clone());
        }
        let roots = if insecure {
            Arc::new(RootCertStore::empty())
        } else {
            shared_roots()?
        };
        let c = client_config(roots, insecure)?;
        Ok(cell.get_or_init(|| c).clone())
    }
}

/// Reads the system CA store. `Err` names what is missing; certificates
/// that fail to parse are skipped (a CA bundle always has a few odd ones),
/// but an empty result is an error.
pub fn system_roots() -> Result<Arc<RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!(
            "no CA certificates found in the system store{why}: install ca-certificates, or set SSL_CERT_FILE"
        ));
    }
    Ok(Arc::new(roots))
}

/// A client configuration: verifying against `roots`, or (`insecure`)
/// not verifying the backend's certificate at all.
pub fn client_config(
    roots: Arc<RootCertStore>,
    insecure: bool,
) -> Result<Arc<ClientConfig>, String> {
    let provider = super::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The name a backend is reached by (SNI and certificate check): the
/// target's `host=` when set (without a port), else the host of its
/// `host:port`. An IP address sends no SNI and is checked against the
/// certificate's IP addresses.
pub fn server_name(addr: &str, host: Option<&str>) -> Result<ServerName<'static>, String> {
    let name = host_part(host.unwrap_or(addr));
    let name = name.strip_suffix('.').unwrap_or(name);
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(name.to_string()).map_err(|_| {
        format!("'{name}' is not a host name a TLS certificate can be checked against")
    })
}

/// `host` from `host:port`, `[v6]:port`, `[v6]` or `host`.
fn host_part(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => s,
    }
}

/// `insecure`: accepts any certificate, still checks that the handshake
/// was signed by the presented key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_targets() {
        let dns = |s: &str| ServerName::try_from(s.to_string()).expect("name");
        let cases: &[(&str, Option<&str>, Result<ServerName<'static>, &str>)] = &[
            ("api.example.com:443", None, Ok(dns("api.example.com"))),
            (
                "10.0.0.1:443",
                Some("api.example.com"),
                Ok(dns("api.example.com")),
            ),
            (
                "10.0.0.1:443",
                Some("api.example.com:8443"),
                Ok(dns("api.example.com")),
            ),
            ("api.example.com.:443", None, Ok(dns("api.example.com"))),
            (
                "127.0.0.1:8443",
                None,
                Ok(ServerName::IpAddress(
                    "127.0.0.1".parse::<IpAddr>().expect("ip").into(),
                )),
            ),
            (
                "[::1]:8443",
                None,
                Ok(ServerName::IpAddress(
                    "::1".parse::<IpAddr>().expect("ip").into(),
                )),
            ),
            (
                "x:1",
                Some("bad name!"),
                Err("'bad name!' is not a host name"),
            ),
            ("x:1", Some("a..b"), Err("'a..b'")),
        ];
        for (addr, host, want) in cases {
            match (server_name(addr, *host), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{addr} {host:?}"),
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{addr}: {e}"),
                (got, _) => panic!("{addr} {host:?}: {got:?}"),
            }
        }
    }
}
