//! Host names and certificate file names: Pushpin's `certs_dir` layout
//! (`HOST.crt` + `HOST.key`, `default.crt` + `default.key`, wildcards as
//! `_.example.com` or `*.example.com`) and the lookup of a client's SNI
//! name in it. Sans-IO: strings in, names out.
//!
//! Wildcards follow RFC 6125 §6.4.3: `*` stands for exactly one whole
//! label, only the left-most one, so `*.example.com` matches
//! `a.example.com` but neither `example.com` nor `a.b.example.com`.
//! Partial-label wildcards (`f*.example.com`) are refused, and so is a
//! wildcard over fewer than two labels (`*.com`).

use std::borrow::Cow;
use std::fmt;

/// What a certificate file stem (the name without `.crt`/`.key`) serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertName {
    /// `default`: clients that send no SNI name, or one nothing else
    /// matches.
    Default,
    /// One host name, lower-case.
    Exact(String),
    /// `*.SUFFIX`: the lower-case suffix after the wildcard label.
    Wildcard(String),
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertName::Default => f.write_str("default"),
            CertName::Exact(n) => f.write_str(n),
            CertName::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Why a file stem is not a certificate name.
pub use crate::codec::Invalid as NameError;

/// Longest DNS name (RFC 1035 §2.3.4, without the root dot).
const MAX_NAME: usize = 253;
/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// Checks `name` is a host name of letters, digits, `-` and `_` in
/// labels of 1 to 63 characters (what SNI carries); `Ok` gives its
/// number of labels.
fn check_host(name: &str) -> Result<usize, String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("is longer than {MAX_NAME} characters"));
    }
    let mut labels = 0;
    for label in name.split('.') {
        labels += 1;
        if label.is_empty() {
            return Err("has an empty label".into());
        }
        if label.len() > MAX_LABEL {
            return Err(format!("has a label longer than {MAX_LABEL} characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(if c == '*' {
                "has a '*' that is not a whole left-most label (partial wildcards are not supported)"
                    .into()
            } else {
                format!("has a character {c:?} that a host name cannot hold")
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label that starts or ends with '-'".into());
        }
    }
    Ok(labels)
}

/// The name a certificate file stem serves: `default`, a host name, or a
/// wildcard written `_.SUFFIX` or `*.SUFFIX`. Case is folded.
pub fn parse_stem(stem: &str) -> Result<CertName, NameError> {
    let bad = |why: String| Err(NameError(format!("'{stem}' {why}")));
    let lower = stem.to_ascii_lowercase();
    if lower == "default" {
        return Ok(CertName::Default);
    }
    if let Some(suffix) = lower
        .strip_prefix("_.")
        .or_else(|| lower.strip_prefix("*."))
    {
        return match check_host(suffix) {
            Ok(n) if n >= 2 => Ok(CertName::Wildcard(suffix.to_string())),
            Ok(_) => bad("is a wildcard over a single label (at least *.example.com)".into()),
            Err(e) => bad(format!("is not a wildcard host name: its suffix {e}")),
        };
    }
    match check_host(&lower) {
        Ok(_) => Ok(CertName::Exact(lower)),
        Err(e) => bad(format!("is not a host name: it {e}")),
    }
}

/// The keys to look a client's SNI name up by: the exact name (lower
/// case, without a trailing dot) and the suffix a wildcard certificate
/// for it would be filed under (the name without its first label), when
/// the name has more than one label.
pub fn lookup_keys(sni: &str) -> (Cow<'_, str>, Option<Cow<'_, str>>) {
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    let exact: Cow<'_, str> = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(sni.to_ascii_lowercase())
    } else {
        Cow::Borrowed(sni)
    };
    let suffix = match &exact {
        Cow::Borrowed(s) => wildcard_suffix(s).map(Cow::Borrowed),
        Cow::Owned(s) => wildcard_suffix(s).map(|x| Cow::Owned(x.to_string())),
    };
    (exact, suffix)
}

fn wildcard_suffix(name: &str) -> Option<&str> {
    match name.split_once('.') {
        Some((label, rest)) if !label.is_empty() && !rest.is_empty() => Some(rest),
        _ => None,
    }
}

/// Fuzz and test invariant: for any string, neither function panics; a
/// stem that parses names what it says (an exact name is a lower-case
/// host name with no `*`; a wildcard suffix has two or more labels) and
/// its `Display` form parses back to the same name; the lookup keys of a
/// name are its lower-case form and, when present, the part after exactly
/// one non-empty label, so an exact name finds its own file and
/// `label.SUFFIX` finds the wildcard file for `SUFFIX`.
pub fn check_name_invariants(s: &str) {
    if let Ok(name) = parse_stem(s) {
        assert_eq!(parse_stem(&name.to_string()).as_ref(), Ok(&name));
        match &name {
            CertName::Default => assert!(s.eq_ignore_ascii_case("default")),
            CertName::Exact(n) => {
                assert!(!n.contains('*') && *n == n.to_ascii_lowercase());
                assert_eq!(lookup_keys(n).0, n.as_str());
            }
            CertName::Wildcard(suffix) => {
                assert!(suffix.split('.').count() >= 2);
                let host = format!("a.{suffix}");
                assert_eq!(lookup_keys(&host).1.as_deref(), Some(suffix.as_str()));
            }
        }
    }
    let (exact, suffix) = lookup_keys(s);
    let trimmed = s.strip_suffix('.').unwrap_or(s);
    assert_eq!(*exact, trimmed.to_ascii_lowercase());
    if let Some(suffix) = suffix {
        let label = &exact[..exact.len() - suffix.len() - 1];
        assert!(!label.is_empty() && !label.contains('.'));
        assert_eq!(format!("{label}.{suffix}"), *exact);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems() {
        let exact = |s: &str| -> Result<CertName, &str> { Ok(CertName::Exact(s.into())) };
        let wild = |s: &str| -> Result<CertName, &str> { Ok(CertName::Wildcard(s.into())) };
        let cases: &[(&str, Result<CertName, &str>)] = &[
            ("default", Ok(CertName::Default)),
            ("example.com", exact("example.com")),
            ("API.Example.com", exact("api.example.com")),
            ("localhost", exact("localhost")),
            ("_dmarc.example.com", exact("_dmarc.example.com")),
            ("_.example.com", wild("example.com")),
            ("*.Example.com", wild("example.com")),
            ("*.a.b.example.com", wild("a.b.example.com")),
            ("*.com", Err("single label")),
            ("_.com", Err("single label")),
            ("f*.example.com", Err("partial wildcards")),
            ("a.*.example.com", Err("partial wildcards")),
            ("*", Err("partial wildcards")),
            ("*.*.example.com", Err("partial wildcards")),
            ("", Err("is empty")),
            ("example..com", Err("empty label")),
            ("example.com.", Err("empty label")),
            (".example.com", Err("empty label")),
            ("-a.example.com", Err("'-'")),
            ("a b.com", Err("' '")),
            ("é.com", Err("'é'")),
            ("Default", Ok(CertName::Default)),
        ];
        for (stem, want) in cases {
            let got = parse_stem(stem);
            match want {
                Ok(n) => assert_eq!(got.as_ref(), Ok(n), "{stem}"),
                Err(needle) => {
                    let e = got.expect_err(stem).0;
                    assert!(
                        e.contains(needle) && e.contains(&format!("'{stem}'")),
                        "{stem}: {e}"
                    );
                }
            }
            check_name_invariants(stem);
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(parse_stem(&long).expect_err("long label").0.contains("63"));
        let long = vec!["abcdefgh"; 30].join(".");
        assert!(parse_stem(&long).expect_err("long name").0.contains("253"));
    }

    #[test]
    fn lookups_take_one_label_off() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("a.example.com", "a.example.com", Some("example.com")),
            ("A.Example.COM", "a.example.com", Some("example.com")),
            ("a.b.example.com", "a.b.example.com", Some("b.example.com")),
            ("example.com.", "example.com", Some("com")),
            ("localhost", "localhost", None),
            ("", "", None),
            (".", "", None),
            (".com", ".com", None),
            ("a.", "a", None),
        ];
        for (sni, exact, suffix) in cases {
            let (e, s) = lookup_keys(sni);
            assert_eq!((&*e, s.as_deref()), (*exact, *suffix), "{sni}");
            check_name_invariants(sni);
        }
    }
}
