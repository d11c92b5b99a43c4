//! JSON Web Tokens, as GRIP uses them: `Grip-Sig` on requests to backends
//! (claims `iss` and `exp`) and `Authorization: Bearer` on the publish API.
//! A key is an HMAC secret (HS256) or, as Pushpin reads a key file
//! starting `-----BEGIN`, a PEM key: an EC P-256 key signs ES256, an RSA
//! key RS256 (private keys sign, public keys verify; the token's `alg`
//! must be the key's). A core signs through its [`Signer`], which keeps
//! each token for a minute.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::rc::Rc;

type HmacSha256 = Hmac<Sha256>;

/// A key requests are signed with, and the issuer its tokens name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigKey {
    pub key: Rc<[u8]>,
    pub iss: Rc<str>,
}

/// One core's `Grip-Sig` signing: the configured default key and issuer,
/// and the tokens made lately. A token is valid for an hour and reused for
/// a minute, so signing costs one HMAC per minute per key, not one per
/// request. Plain per-core data. The default key, its issuer and the
/// cached tokens are shared (`Rc`), so a request signed with the defaults
/// allocates nothing (it made three copies per proxied request before).
pub struct Signer {
    default_key: Option<Rc<[u8]>>,
    default_iss: Rc<str>,
    /// (key, when to sign anew, token). The renewal is on the monotonic
    /// clock as the core's ring turn read it (`crate::clock`): a reuse
    /// reads no wall clock.
    cache: std::cell::RefCell<Vec<(SigKey, std::time::Instant, Rc<str>)>>,
}

impl Signer {
    /// `grip.sig_key` and `grip.sig_iss`: what routes without their own
    /// sign with.
    pub fn new(default_key: Option<Vec<u8>>, default_iss: String) -> Signer {
        Signer {
            default_key: default_key.map(Rc::from),
            default_iss: Rc::from(default_iss),
            cache: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// The key requests on a route sign with: the route's `sig_key` and
    /// `sig_iss`, each falling back to the default; none when there is no
    /// key at all.
    pub fn key_for(&self, key: Option<&[u8]>, iss: Option<&str>) -> Option<SigKey> {
        let key = match key {
            Some(k) => Rc::from(k),
            None => self.default_key.clone()?,
        };
        let iss = match iss {
            Some(i) => Rc::from(i),
            None => self.default_iss.clone(),
        };
        Some(SigKey { key, iss })
    }

    /// A token for `key`, good for at least 59 more minutes.
    pub fn token(&self, key: &SigKey) -> Rc<str> {
        let at = crate::clock::now();
        let mut cache = self.cache.borrow_mut();
        if let Some((_, _, t)) = cache.iter().find(|(k, renew, _)| k == key && at < *renew) {
            return t.clone();
        }
        // Valid for an hour, signed anew after a minute.
        let exp = now() + 3600;
        let t: Rc<str> = Rc::from(sign(&key.key, &key.iss, exp));
        cache.retain(|(k, _, _)| k != key);
        let renew = at + std::time::Duration::from_secs(60);
        cache.push((key.clone(), renew, t.clone()));
        t
    }
}

/// Key text as configured: `base64:...` is decoded, anything else is used
/// as its bytes (Pushpin's convention).
pub fn key_bytes(text: &str) -> Result<Vec<u8>, String> {
    match text.strip_prefix("base64:") {
        Some(b) => STANDARD
            .decode(b.trim())
            .map_err(|_| "key after 'base64:' is not valid base64".to_string()),
        None => Ok(text.as_bytes().to_vec()),
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts every key length"),
    }
}

/// True for a PEM key (Pushpin: a key file starting `-----BEGIN`).
pub fn is_pem(key: &[u8]) -> bool {
    key.starts_with(b"-----BEGIN")
}

/// A PEM private key and the algorithm it signs with.
#[cfg(feature = "aws-lc")]
fn pem_signing(key: &[u8]) -> Result<(jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm), String> {
    use jsonwebtoken::{Algorithm, EncodingKey};
    EncodingKey::from_ec_pem(key)
        .map(|k| (k, Algorithm::ES256))
        .or_else(|_| EncodingKey::from_rsa_pem(key).map(|k| (k, Algorithm::RS256)))
        .map_err(|_| {
            "is not a PEM EC (P-256) or RSA private key (PKCS#8, or PKCS#1 for RSA)".to_string()
        })
}

/// A PEM public key and the algorithm it verifies.
#[cfg(feature = "aws-lc")]
fn pem_verifying(key: &[u8]) -> Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm)> {
    use jsonwebtoken::{Algorithm, DecodingKey};
    DecodingKey::from_ec_pem(key)
        .map(|k| (k, Algorithm::ES256))
        .or_else(|_| DecodingKey::from_rsa_pem(key).map(|k| (k, Algorithm::RS256)))
        .ok()
}

/// Checks a key that will sign `Grip-Sig`: a PEM key must be an EC P-256
/// or RSA private key that signs (tried once, so a key that parses but
/// cannot sign, such as a P-384 key, is refused at start-up).
pub fn check_signing_key(key: &[u8]) -> Result<(), String> {
    if !is_pem(key) {
        return Ok(());
    }
    check_pem_signing(key)
}

#[cfg(feature = "aws-lc")]
fn check_pem_signing(key: &[u8]) -> Result<(), String> {
    let (k, alg) = pem_signing(key)?;
    jsonwebtoken::crypto::sign(b"check", &k, alg)
        .map(|_| ())
        .map_err(|e| format!("cannot sign with this PEM key ({e}): ES256 needs a P-256 key"))
}

#[cfg(feature = "aws-lc")]
fn check_pem_verifying(key: &[u8]) -> Result<(), String> {
    pem_verifying(key)
        .map(|_| ())
        .ok_or_else(|| "is not a PEM EC (P-256) or RSA public key".to_string())
}

#[cfg(not(feature = "aws-lc"))]
fn check_pem_signing(_: &[u8]) -> Result<(), String> {
    Err("is a PEM key (ES256/RS256): this build has no aws-lc (feature aws-lc)".into())
}

#[cfg(not(feature = "aws-lc"))]
fn check_pem_verifying(_: &[u8]) -> Result<(), String> {
    check_pem_signing(&[])
}

/// Checks a key that will verify tokens: a PEM key must be an EC P-256 or
/// RSA public key.
pub fn check_verifying_key(key: &[u8]) -> Result<(), String> {
    if !is_pem(key) {
        return Ok(());
    }
    check_pem_verifying(key)
}

/// Signs `{"iss":iss,"exp":exp}`: HS256 with a secret, ES256 or RS256 with
/// a PEM key (checked by [`check_signing_key`] when configured; should it
/// still fail, the token carries no signature, which no backend accepts,
/// and the failure is logged).
pub fn sign(key: &[u8], iss: &str, exp: u64) -> String {
    if is_pem(key) {
        return sign_pem(key, iss, exp);
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let signing_input = format!("{header}.{}", claims(iss, exp));
    let mut m = mac(key);
    m.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

fn claims(iss: &str, exp: u64) -> String {
    let iss = serde_json::Value::from(iss);
    URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":{iss},"exp":{exp}}}"#))
}

#[cfg(feature = "aws-lc")]
fn sign_pem(key: &[u8], iss: &str, exp: u64) -> String {
    let (k, alg) = match pem_signing(key) {
        Ok(x) => x,
        Err(e) => {
            warn!("Grip-Sig: the signing key {e}; the token is unsigned");
            return format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
                claims(iss, exp)
            );
        }
    };
    let name = if alg == jsonwebtoken::Algorithm::ES256 {
        "ES256"
    } else {
        "RS256"
    };
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{name}","typ":"JWT"}}"#));
    let input = format!("{header}.{}", claims(iss, exp));
    match jsonwebtoken::crypto::sign(input.as_bytes(), &k, alg) {
        Ok(sig) => format!("{input}.{sig}"),
        Err(e) => {
            warn!("Grip-Sig: signing with the PEM key failed ({e}); the token is unsigned");
            format!("{input}.")
        }
    }
}

#[cfg(not(feature = "aws-lc"))]
fn sign_pem(_key: &[u8], iss: &str, exp: u64) -> String {
    warn!("Grip-Sig: PEM keys need the aws-lc feature; the token is unsigned");
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        claims(iss, exp)
    )
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyError {
    Malformed,
    Algorithm,
    Signature,
    Expired,
    Issuer,
}

/// Verifies a token: its signature (HS256 with a secret; ES256 or RS256
/// with a PEM public key, the token's `alg` matching the key's), `exp` (if
/// present) against `now`, and `iss` when `iss` is given.
pub fn verify(token: &str, key: &[u8], iss: Option<&str>, now: u64) -> Result<(), VerifyError> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(VerifyError::Malformed)?;
    let alg = header.get("alg").and_then(|a| a.as_str());
    if is_pem(key) {
        verify_pem(key, alg, h, p, s)?;
    } else {
        if alg != Some("HS256") {
            return Err(VerifyError::Algorithm);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| VerifyError::Malformed)?;
        let mut m = mac(key);
        m.update(h.as_bytes());
        m.update(b".");
        m.update(p.as_bytes());
        m.verify_slice(&sig).map_err(|_| VerifyError::Signature)?;
    }
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(VerifyError::Malformed)?;
    if let Some(exp) = claims.get("exp") {
        match exp.as_u64() {
            Some(e) if e > now => {}
            _ => return Err(VerifyError::Expired),
        }
    }
    if let Some(want) = iss {
        if claims.get("iss").and_then(|i| i.as_str()) != Some(want) {
            return Err(VerifyError::Issuer);
        }
    }
    Ok(())
}

#[cfg(feature = "aws-lc")]
fn verify_pem(key: &[u8], alg: Option<&str>, h: &str, p: &str, s: &str) -> Result<(), VerifyError> {
    let (k, want) = pem_verifying(key).ok_or(VerifyError::Signature)?;
    let name = if want == jsonwebtoken::Algorithm::ES256 {
        "ES256"
    } else {
        "RS256"
    };
    if alg != Some(name) {
        return Err(VerifyError::Algorithm);
    }
    let input = format!("{h}.{p}");
    match jsonwebtoken::crypto::verify(s, input.as_bytes(), &k, want) {
        Ok(true) => Ok(()),
        Ok(false) => Err(VerifyError::Signature),
        Err(_) => Err(VerifyError::Malformed),
    }
}

#[cfg(not(feature = "aws-lc"))]
fn verify_pem(_: &[u8], _: Option<&str>, _: &str, _: &str, _: &str) -> Result<(), VerifyError> {
    Err(VerifyError::Algorithm)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signer_reuses_its_tokens_and_falls_back_to_the_defaults() {
        let s = Signer::new(Some(b"dflt".to_vec()), "corepin".into());
        assert_eq!(Signer::new(None, "x".into()).key_for(None, None), None);
        let d = s.key_for(None, None).expect("default key");
        assert_eq!((&*d.key, &*d.iss), (&b"dflt"[..], "corepin"));
        let r = s.key_for(Some(b"route"), Some("app")).expect("route key");
        assert_eq!((&*r.key, &*r.iss), (&b"route"[..], "app"));
        let t = s.token(&d);
        assert_eq!(s.token(&d), t, "reused");
        assert!(verify(&t, b"dflt", Some("corepin"), now()).is_ok());
        assert!(verify(&s.token(&r), b"route", Some("app"), now()).is_ok());
    }

    #[test]
    fn round_trip_and_refusals() {
        let t = sign(b"secret", "corepin", 2000);
        assert_eq!(verify(&t, b"secret", Some("corepin"), 1000), Ok(()));
        assert_eq!(
            verify(&t, b"other", None, 1000),
            Err(VerifyError::Signature)
        );
        assert_eq!(verify(&t, b"secret", None, 2000), Err(VerifyError::Expired));
        assert_eq!(
            verify(&t, b"secret", Some("x"), 1000),
            Err(VerifyError::Issuer)
        );
        assert_eq!(
            verify("a.b", b"secret", None, 0),
            Err(VerifyError::Malformed)
        );
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode("{}")
        );
        assert_eq!(
            verify(&none, b"secret", None, 0),
            Err(VerifyError::Algorithm)
        );
    }

    #[test]
    fn known_vector() {
        // RFC 7515-style check computed independently (Python's hmac/hashlib):
        // HS256 over the header and {"iss":"pushpin","exp":1700000000} with key "changeme".
        let t = sign(b"changeme", "pushpin", 1_700_000_000);
        let sig = t.rsplit('.').next().unwrap_or("");
        assert_eq!(sig, "iJHPJSh6W9O6YubO_HFgzpWjniFdBfI-V1hhOaq0xkc");
    }

    #[test]
    fn base64_keys() {
        assert_eq!(key_bytes("base64:c2VjcmV0").unwrap(), b"secret");
        assert_eq!(key_bytes("plain").unwrap(), b"plain");
        assert!(key_bytes("base64:!!").is_err());
    }

    /// Keys made by openssl for this test: (private PEM, public PEM).
    fn openssl_key(dir: &std::path::Path, name: &str, args: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let key = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub"));
        let run = |a: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(a)
                .output()
                .unwrap_or_else(|e| panic!("openssl (the tests need it): {e}"));
            assert!(
                out.status.success(),
                "openssl {a:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let k = key.to_str().expect("path");
        let mut gen = vec!["genpkey"];
        gen.extend_from_slice(args);
        gen.extend_from_slice(&["-out", k]);
        run(&gen);
        run(&[
            "pkey",
            "-in",
            k,
            "-pubout",
            "-out",
            public.to_str().expect("path"),
        ]);
        (
            std::fs::read(&key).expect("key"),
            std::fs::read(&public).expect("public key"),
        )
    }

    /// ES256 with an EC P-256 key and RS256 with an RSA key, made by
    /// openssl: what one signs the other's public key verifies; the alg
    /// must be the key's (an HS256 token "signed" with the public key's
    /// bytes is refused); a P-384 key and a public key cannot sign.
    #[test]
    #[cfg(feature = "aws-lc")]
    fn pem_keys_sign_es256_and_rs256() {
        let dir = std::env::temp_dir().join(format!("corepin-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (ec, ec_pub) = openssl_key(
            &dir,
            "ec",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let (rsa, rsa_pub) = openssl_key(
            &dir,
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let (p384, _) = openssl_key(
            &dir,
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        );
        for (key, public, alg, other) in [
            (&ec, &ec_pub, "ES256", &rsa_pub),
            (&rsa, &rsa_pub, "RS256", &ec_pub),
        ] {
            assert_eq!(check_signing_key(key), Ok(()));
            assert_eq!(check_verifying_key(public), Ok(()));
            let t = sign(key, "pushpin", 2000);
            let header = URL_SAFE_NO_PAD
                .decode(t.split('.').next().unwrap_or(""))
                .expect("b64");
            assert_eq!(
                header,
                format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()
            );
            assert_eq!(verify(&t, public, Some("pushpin"), 1000), Ok(()), "{alg}");
            assert_eq!(verify(&t, public, None, 2000), Err(VerifyError::Expired));
            assert_eq!(verify(&t, other, None, 1000), Err(VerifyError::Algorithm));
            let mut forged = t.clone();
            forged.replace_range(forged.len() - 4.., "AAAA");
            assert_eq!(
                verify(&forged, public, None, 1000),
                Err(VerifyError::Signature)
            );
            // The public key's bytes as an HMAC secret: alg confusion.
            let hs = {
                let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
                let input = format!("{header}.{}", claims("pushpin", 2000));
                let mut m = mac(public);
                m.update(input.as_bytes());
                format!(
                    "{input}.{}",
                    URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
                )
            };
            assert_eq!(verify(&hs, public, None, 1000), Err(VerifyError::Algorithm));
            assert!(
                check_signing_key(public).is_err(),
                "a public key cannot sign"
            );
        }
        let e = check_signing_key(&p384).expect_err("P-384");
        assert!(e.contains("P-256"), "{e}");
        assert!(check_signing_key(b"-----BEGIN PRIVATE KEY-----\n").is_err());
        assert!(check_verifying_key(b"-----BEGIN PUBLIC KEY-----\n").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
