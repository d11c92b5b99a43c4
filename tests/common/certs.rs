//! Certificates made at test time, so no private key is ever committed:
//! a CA, and the leaves it signs written as `STEM.crt` + `STEM.key` where
//! the test wants them (a certificates directory, a backend's files).

use std::path::{Path, PathBuf};

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.self_signed(&key).expect("CA");
        Ca { cert, key }
    }

    /// The CA certificate written as `dir/name`, for clients to trust.
    pub fn write_pem(&self, dir: impl AsRef<Path>, name: &str) -> PathBuf {
        let path = dir.as_ref().join(name);
        std::fs::write(&path, self.cert.pem()).expect("CA file");
        path
    }

    /// A leaf for `names` (the first is its CN) as `dir/stem.crt` +
    /// `dir/stem.key`.
    pub fn leaf_into(&self, dir: impl AsRef<Path>, stem: &str, names: &[&str]) {
        self.leaf_with(dir, stem, names, |_| {})
    }

    /// As `leaf_into`, with `f` changing the leaf first (an expired
    /// one, say).
    pub fn leaf_with(
        &self,
        dir: impl AsRef<Path>,
        stem: &str,
        names: &[&str],
        f: impl FnOnce(&mut rcgen::CertificateParams),
    ) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("leaf"),
        );
        f(&mut p);
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("leaf");
        let dir = dir.as_ref();
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).expect("crt");
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("key");
    }
}
