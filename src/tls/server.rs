//! The server side's rustls configuration: TLS 1.2 and 1.3, ALPN
//! `http/1.1` only, certificates by SNI from a `CertStore`, resumption by
//! tickets. Built once and shared by every core (`Arc<ServerConfig>`:
//! rustls only reads it); a reload builds a whole new one and the caller
//! keeps the old one when that fails.
//!
//! Resumption: stateless tickets only. The ticket key (rustls's
//! `Ticketer`: AEAD keys rotated every 6 hours, the previous key still
//! accepted) is made once per process and carried over by reloads, so a
//! ticket issued on one core resumes on any other (SO_REUSEPORT spreads a
//! client's connections over the cores) and across certificate reloads.
//! No stateful session-ID cache: rustls's is one `Mutex` shared by every
//! core, taken on every handshake, and every TLS 1.3 client and nearly
//! every TLS 1.2 client resumes by ticket. A TLS 1.2 client without ticket
//! support does full handshakes. No 0-RTT early data (replayable).

use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ProducesTickets};
use rustls::ServerConfig;

use super::certs::{CertProblem, CertSource, CertStore};

/// The only application protocol offered: corepin speaks HTTP/1.1 (and
/// WebSocket over it). A client offering only `h2` gets a fatal
/// `no_application_protocol` alert; one offering no ALPN at all is served.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// What the server's TLS settings are built from; kept for reloads.
pub struct ServerTls {
    source: CertSource,
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Sets up from `source` with corepin's crypto provider; the ticket
    /// key is made here, once.
    pub fn new(source: CertSource) -> Result<ServerTls, Vec<CertProblem>> {
        let ticketer = super::ticketer().map_err(|e| {
            vec![CertProblem(format!(
                "TLS session tickets: cannot make a ticket key: {e}"
            ))]
        })?;
        Ok(ServerTls {
            source,
            provider: super::provider(),
            ticketer,
        })
    }

    pub fn source(&self) -> &CertSource {
        &self.source
    }

    /// Loads the certificates and builds a configuration; call again to
    /// reload (same ticket key). On `Err` nothing changed: keep serving the
    /// previous configuration and log the problems.
    pub fn build(&self) -> Result<(Arc<ServerConfig>, Arc<CertStore>), Vec<CertProblem>> {
        let store = Arc::new(CertStore::load(
            &self.source,
            &self.provider,
            SystemTime::now(),
        )?);
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| vec![CertProblem(format!("TLS versions: {e}"))])?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        config.ticketer = self.ticketer.clone();
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.max_early_data_size = 0;
        Ok((Arc::new(config), store))
    }
}

/// The configuration in force and how to rebuild it: what the server
/// keeps and hands to every core (see the module doc of `tls`).
#[derive(Debug)]
pub struct Reloadable {
    tls: ServerTls,
    current: Arc<ServerConfig>,
    store: Arc<CertStore>,
}

impl Reloadable {
    /// The first build; start-up fails on `Err`.
    pub fn new(source: CertSource) -> Result<Reloadable, Vec<CertProblem>> {
        let tls = ServerTls::new(source)?;
        let (current, store) = tls.build()?;
        Ok(Reloadable {
            tls,
            current,
            store,
        })
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.clone()
    }

    pub fn store(&self) -> &CertStore {
        &self.store
    }

    /// Reads every certificate again. `Ok`: the new configuration (hand
    /// it to every core); `Err`: one line saying why, the old
    /// configuration stays in force.
    pub fn reload(&mut self) -> Result<Arc<ServerConfig>, String> {
        match self.tls.build() {
            Ok((config, store)) => {
                self.current = config.clone();
                self.store = store;
                Ok(config)
            }
            Err(problems) => Err(format!(
                "certificates not reloaded, keeping the old ones: {}",
                problems
                    .iter()
                    .map(|p| p.0.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    }
}
