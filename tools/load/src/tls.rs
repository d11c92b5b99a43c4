//! `--tls CA_FILE` for every mode that opens client connections (proxy,
//! subscribe, fanout, rooms, ws-echo): HTTPS and wss with rustls and
//! corepin's own client configuration (TLS 1.3 or 1.2, ALPN http/1.1),
//! trusting the CA certificates in CA_FILE. `--sni NAME` (default
//! `localhost`) is the name sent and verified; `--resume no` turns session
//! resumption off, so every handshake is a full one.
//!
//! `Stream` is a non-blocking client socket with or without TLS: `read`
//! gives plaintext until it would block (driving the handshake on the
//! way), `write_all` sends everything (waiting for room), so the modes'
//! readiness loops stay the same for both.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::args::{die, Args};
use crate::net;

/// The flags `Tls::from_args` reads.
pub const TLS_FLAGS: &[&str] = &["tls", "sni", "resume"];

/// What `--tls`, `--sni` and `--resume` asked for.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
    /// The flags as given, to hand to worker processes.
    pub ca_file: String,
    pub sni: String,
    pub resume: bool,
}

impl Tls {
    /// `None` without `--tls`; a bad file or flag is fatal, with one line.
    pub fn from_args(mode: &str, a: &Args) -> Option<Tls> {
        let ca_file = a.opt::<String>("tls")?;
        let resume = match a.string("resume", "yes").as_str() {
            "yes" => true,
            "no" => false,
            v => die(&format!("{mode}: --resume '{v}' is not yes or no")),
        };
        let sni = a.string("sni", "localhost");
        let name = ServerName::try_from(sni.clone())
            .unwrap_or_else(|_| die(&format!("{mode}: --sni '{sni}' is not a host name")));
        Some(Tls {
            config: config(mode, &ca_file, resume),
            name,
            ca_file,
            sni,
            resume,
        })
    }

    /// The same flags, for a worker process's command line.
    pub fn flags(&self) -> Vec<(&'static str, String)> {
        vec![
            ("tls", self.ca_file.clone()),
            ("sni", self.sni.clone()),
            ("resume", if self.resume { "yes" } else { "no" }.into()),
        ]
    }

    pub fn client(&self) -> std::io::Result<ClientConnection> {
        ClientConnection::new(self.config.clone(), self.name.clone()).map_err(std::io::Error::other)
    }
}

/// The client configuration trusting the certificates in `ca_file`.
pub fn config(mode: &str, ca_file: &str, resume: bool) -> Arc<ClientConfig> {
    let bad = |e: &dyn std::fmt::Display| -> ! { die(&format!("{mode}: --tls {ca_file}: {e}")) };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).unwrap_or_else(|e| bad(&e));
    for c in certs {
        let c = c.unwrap_or_else(|e| bad(&e));
        roots.add(c).unwrap_or_else(|e| bad(&e));
    }
    if roots.is_empty() {
        bad(&"no certificate in it");
    }
    let config = corepin::tls::client::client_config(Arc::new(roots), false)
        .unwrap_or_else(|e| die(&format!("{mode}: TLS: {e}")));
    if resume {
        return config;
    }
    let mut c = (*config).clone();
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// Writes what rustls has queued (a handshake flight, a request), waiting
/// for room as `net::write_all` does.
pub fn flush(tls: &mut ClientConnection, s: &mut TcpStream) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    let mut r = Ok(());
    while tls.wants_write() {
        if let Err(e) = tls.write_tls(s) {
            r = Err(e);
            break;
        }
    }
    s.set_nonblocking(true)?;
    r
}

/// A non-blocking client connection, plain or TLS.
pub struct Stream {
    pub s: TcpStream,
    pub tls: Option<ClientConnection>,
}

impl Stream {
    /// Connects connection `i` (from its loopback source address), with
    /// TCP_NODELAY, non-blocking; with `tls`, the handshake starts with
    /// the first `write_all` (rustls holds the bytes until it is done).
    pub fn connect(i: usize, to: SocketAddr, tls: Option<&Tls>) -> std::io::Result<Stream> {
        let s = net::connect_from(i, to)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let tls = tls.map(Tls::client).transpose()?;
        Ok(Stream { s, tls })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.tls.as_mut() {
            None => net::write_all(&mut self.s, bytes),
            Some(t) => {
                t.writer().write_all(bytes)?;
                flush(t, &mut self.s)
            }
        }
    }

    /// Plaintext into `buf`: `Ok(0)` at the end of the stream, `WouldBlock`
    /// when nothing more is there for now. A TLS failure (a certificate
    /// refused, an alert) is an `InvalidData` error saying `TLS: ...`.
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(t) = self.tls.as_mut() else {
            return self.s.read(buf);
        };
        loop {
            // Plaintext rustls already holds comes first: the socket may
            // have nothing more to say (level-triggered readiness would
            // not wake for it).
            match t.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if t.read_tls(&mut self.s)? == 0 {
                return Ok(0);
            }
            t.process_new_packets().map_err(|e| {
                // The alert rustls queued for the server, if it can go.
                let _ = flush(t, &mut self.s);
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("TLS: {e}"))
            })?;
            // The handshake's next flight, and what waited for it.
            flush(t, &mut self.s)?;
        }
    }

    /// The handshake is over (always, without TLS).
    pub fn handshaken(&self) -> bool {
        self.tls.as_ref().is_none_or(|t| !t.is_handshaking())
    }

    /// The handshake resumed a session.
    pub fn resumed(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.s.as_raw_fd()
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.s.as_fd()
    }
}
