//! HS256 JSON Web Tokens, as GRIP uses them: `Grip-Sig` on requests to
//! backends (claims `iss` and `exp`) and `Authorization: Bearer` on the
//! publish API. Only HS256 is accepted when verifying. A core signs
//! through its [`Signer`], which keeps each token for a minute.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A key requests are signed with, and the issuer its tokens name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigKey {
    pub key: Vec<u8>,
    pub iss: String,
}

/// One core's `Grip-Sig` signing: the configured default key and issuer,
/// and the tokens made lately. A token is valid for an hour and reused for
/// a minute, so signing costs one HMAC per minute per key, not one per
/// request. Plain per-core data.
pub struct Signer {
    default_key: Option<Vec<u8>>,
    default_iss: String,
    /// (key, expiry, token).
    cache: std::cell::RefCell<Vec<(SigKey, u64, String)>>,
}

impl Signer {
    /// `grip.sig_key` and `grip.sig_iss`: what routes without their own
    /// sign with.
    pub fn new(default_key: Option<Vec<u8>>, default_iss: String) -> Signer {
        Signer {
            default_key,
            default_iss,
            cache: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// The key requests on a route sign with: the route's `sig_key` and
    /// `sig_iss`, each falling back to the default; none when there is no
    /// key at all.
    pub fn key_for(&self, key: Option<&[u8]>, iss: Option<&str>) -> Option<SigKey> {
        let key = key
            .map(<[u8]>::to_vec)
            .or_else(|| self.default_key.clone())?;
        let iss = iss.unwrap_or(&self.default_iss).to_string();
        Some(SigKey { key, iss })
    }

    /// A token for `key`, good for at least 59 more minutes.
    pub fn token(&self, key: &SigKey) -> String {
        let now = now();
        let mut cache = self.cache.borrow_mut();
        if let Some((_, _, t)) = cache
            .iter()
            .find(|(k, exp, _)| k == key && *exp > now + 3540)
        {
            return t.clone();
        }
        let exp = now + 3600;
        let t = sign(&key.key, &key.iss, exp);
        cache.retain(|(k, _, _)| k != key);
        cache.push((key.clone(), exp, t.clone()));
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

/// Signs `{"iss":iss,"exp":exp}`.
pub fn sign(key: &[u8], iss: &str, exp: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let iss = serde_json::Value::from(iss);
    let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":{iss},"exp":{exp}}}"#));
    let signing_input = format!("{header}.{payload}");
    let mut m = mac(key);
    m.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signing_input}.{sig}")
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

/// Verifies an HS256 token: signature, `exp` (if present) against `now`,
/// and `iss` when `iss` is given.
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
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
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
        assert_eq!(
            (d.key.as_slice(), d.iss.as_str()),
            (&b"dflt"[..], "corepin")
        );
        let r = s.key_for(Some(b"route"), Some("app")).expect("route key");
        assert_eq!((r.key.as_slice(), r.iss.as_str()), (&b"route"[..], "app"));
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
}
