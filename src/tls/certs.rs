//! The server's certificates: one explicit PEM cert/key pair, or a
//! directory in Pushpin's layout (see `names`), loaded and checked once
//! (start-up, `corepin check`, reload) into a `CertStore` that picks a
//! certificate per connection by SNI.
//!
//! Choice per connection: the exact host name, else the wildcard for its
//! parent (one label, RFC 6125), else `default`. With no match and no
//! default the handshake fails: rustls answers the ClientHello with a
//! fatal `access_denied` alert and the stream reports
//! `HandshakeError::NoCertificate` (reason `no_certificate`). Serving some
//! unrelated certificate instead (as nginx does with its first server)
//! would only move the failure to the client's name check.
//!
//! Every problem found is one line naming the file: unreadable, not PEM,
//! no certificate or key in it, a key that does not match its
//! certificate, a certificate expired or not yet valid.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use crate::config::TlsCerts as CertSource;

use super::names::{lookup_keys, parse_stem, CertName};

/// One problem with a certificate or key file: a line naming the file.
pub use crate::codec::Invalid as CertProblem;

fn problem(path: &Path, what: impl fmt::Display) -> CertProblem {
    CertProblem(format!("{}: {what}", path.display()).replace(['\n', '\r'], " "))
}

/// Certificates by name, ready for the handshake.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// What was loaded from where, sorted by name, for `corepin check`.
    loaded: Vec<(CertName, PathBuf)>,
}

impl CertStore {
    /// Loads and checks every certificate of `source` as of `now`; every
    /// problem is reported, not only the first.
    pub fn load(
        source: &CertSource,
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> Result<CertStore, Vec<CertProblem>> {
        let mut store = CertStore::default();
        let mut problems = Vec::new();
        match source {
            CertSource::Pair { cert, key } => match load_pair(cert, key, provider, now) {
                Ok(ck) => {
                    store.default = Some(Arc::new(ck));
                    store.loaded.push((CertName::Default, cert.clone()));
                }
                Err(p) => problems.extend(p),
            },
            CertSource::Dir(dir) | CertSource::DirWithDefault { dir, .. } => {
                let default = match source {
                    CertSource::DirWithDefault { default, .. } => Some(default.as_str()),
                    _ => None,
                };
                for entry in dir_pairs(dir, default, &mut problems) {
                    match load_pair(&entry.cert, &entry.key, provider, now) {
                        Ok(ck) => store.insert(entry.name, entry.cert, Arc::new(ck)),
                        Err(p) => problems.extend(p),
                    }
                }
                if problems.is_empty() && store.loaded.is_empty() {
                    problems.push(problem(dir, "holds no HOST.crt + HOST.key pair"));
                }
            }
        }
        if problems.is_empty() {
            store.loaded.sort_by_key(|(n, _)| n.to_string());
            Ok(store)
        } else {
            Err(problems)
        }
    }

    fn insert(&mut self, name: CertName, path: PathBuf, ck: Arc<CertifiedKey>) {
        match &name {
            CertName::Default => self.default = Some(ck),
            CertName::Exact(n) => {
                self.exact.insert(n.clone(), ck);
            }
            CertName::Wildcard(s) => {
                self.wildcard.insert(s.clone(), ck);
            }
        }
        self.loaded.push((name, path));
    }

    /// The certificate for a client that sent `sni` (or none).
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let by_name = sni.and_then(|sni| {
            let (exact, suffix) = lookup_keys(sni);
            self.exact
                .get(&*exact)
                .or_else(|| suffix.and_then(|s| self.wildcard.get(&*s)))
        });
        by_name.or(self.default.as_ref())
    }

    /// The names served and the certificate file of each, sorted.
    pub fn loaded(&self) -> &[(CertName, PathBuf)] {
        &self.loaded
    }

    /// Whether clients without a matching name get a certificate.
    pub fn has_default(&self) -> bool {
        self.default.is_some()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).cloned()
    }
}

struct DirEntry {
    name: CertName,
    cert: PathBuf,
    key: PathBuf,
}

/// The `HOST.crt` + `HOST.key` pairs of `dir`, in file-name order
/// (`default_stem`'s pair, when given, is the default); layout problems
/// go to `problems`. Files with other extensions (a
/// README, `.srl`, ...) and subdirectories are not certificates and are
/// left alone; `.pem` files are reported, since they look meant to serve.
fn dir_pairs(
    dir: &Path,
    default_stem: Option<&str>,
    problems: &mut Vec<CertProblem>,
) -> Vec<DirEntry> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(problem(dir, format!("cannot read the directory: {e}")));
            return Vec::new();
        }
    };
    let mut files: Vec<String> = Vec::new();
    for e in entries {
        match e {
            Ok(e) if e.path().is_dir() => {}
            Ok(e) => match e.file_name().into_string() {
                Ok(n) => files.push(n),
                Err(n) => problems.push(problem(
                    &dir.join(n),
                    "file name is not UTF-8 (certificate files are named HOST.crt)",
                )),
            },
            Err(e) => problems.push(problem(dir, format!("cannot read the directory: {e}"))),
        }
    }
    files.sort();
    let mut out = Vec::new();
    let mut seen: HashMap<CertName, String> = HashMap::new();
    for f in &files {
        let path = dir.join(f);
        if let Some(stem) = f.strip_suffix(".crt") {
            let parsed = if default_stem == Some(stem) {
                Ok(CertName::Default)
            } else {
                parse_stem(stem)
            };
            let name = match parsed {
                Ok(n) => n,
                Err(e) => {
                    problems.push(problem(&path, e));
                    continue;
                }
            };
            let key = format!("{stem}.key");
            if !files.contains(&key) {
                problems.push(problem(&path, format!("no matching key file {key}")));
                continue;
            }
            if let Some(other) = seen.get(&name) {
                problems.push(problem(
                    &path,
                    format!("serves the same name ({name}) as {other}"),
                ));
                continue;
            }
            seen.insert(name.clone(), f.clone());
            out.push(DirEntry {
                name,
                cert: path,
                key: dir.join(key),
            });
        } else if let Some(stem) = f.strip_suffix(".key") {
            if !files.contains(&format!("{stem}.crt")) {
                problems.push(problem(
                    &path,
                    format!("no matching certificate {stem}.crt"),
                ));
            }
        } else if f.ends_with(".pem") {
            problems.push(problem(
                &path,
                "is not read: certificates are named HOST.crt with their key in HOST.key",
            ));
        }
    }
    out
}

/// Loads one certificate chain and its key and checks them.
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<CertifiedKey, Vec<CertProblem>> {
    let mut problems = Vec::new();
    let chain = read_chain(cert_path, now, &mut problems);
    let key = read_key(key_path, provider, &mut problems);
    let (Some(chain), Some(key)) = (chain, key) else {
        return Err(problems);
    };
    let ck = CertifiedKey::new(chain, key);
    // `InconsistentKeys::Unknown`: the key cannot say its public half;
    // nothing to compare.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        ck.keys_match()
    {
        problems.push(problem(
            key_path,
            format!(
                "private key does not match the certificate in {}",
                cert_path.display()
            ),
        ));
    }
    if problems.is_empty() {
        Ok(ck)
    } else {
        Err(problems)
    }
}

fn read_file(path: &Path, problems: &mut Vec<CertProblem>) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(problem(path, format!("cannot read: {e}")));
            None
        }
    }
}

fn read_chain(
    path: &Path,
    now: SystemTime,
    problems: &mut Vec<CertProblem>,
) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = read_file(path, problems)?;
    let chain: Vec<CertificateDer<'static>> =
        match CertificateDer::pem_slice_iter(&bytes).collect::<Result<_, _>>() {
            Ok(c) => c,
            Err(e) => {
                problems.push(problem(path, format!("not a PEM certificate file: {e}")));
                return None;
            }
        };
    if chain.is_empty() {
        problems.push(problem(
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
        return None;
    }
    let before = problems.len();
    for (i, der) in chain.iter().enumerate() {
        let which = if i == 0 {
            "certificate".to_string()
        } else {
            format!("certificate {} of the chain", i + 1)
        };
        if let Err(why) = check_validity(der, now) {
            problems.push(problem(path, format!("{which} {why}")));
        }
    }
    (problems.len() == before).then_some(chain)
}

fn read_key(
    path: &Path,
    provider: &CryptoProvider,
    problems: &mut Vec<CertProblem>,
) -> Option<Arc<dyn rustls::sign::SigningKey>> {
    let bytes = read_file(path, problems)?;
    let der = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => k,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            problems.push(problem(
                path,
                "holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            ));
            return None;
        }
        Err(e) => {
            problems.push(problem(path, format!("not a PEM private key file: {e}")));
            return None;
        }
    };
    match provider.key_provider.load_private_key(der) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(problem(path, format!("unusable private key: {e}")));
            None
        }
    }
}

/// `Err` with the reason when `der` is not an X.509 certificate valid at
/// `now`.
pub fn check_validity(der: &[u8], now: SystemTime) -> Result<(), String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("is not a valid X.509 certificate: {e}"))?;
    let v = &cert.tbs_certificate.validity;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    if now < v.not_before.to_unix_duration() {
        return Err(format!("is not valid before {}", v.not_before));
    }
    if now > v.not_after.to_unix_duration() {
        return Err(format!("expired on {}", v.not_after));
    }
    Ok(())
}
