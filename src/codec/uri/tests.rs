use super::*;

/// Normalises `raw` and returns (path-and-query, authority) as text.
fn norm(raw: &str) -> Result<(String, Option<String>), UriError> {
    check_uri_invariants(raw.as_bytes());
    normalize_target(raw.as_bytes()).map(|t| {
        (
            String::from_utf8_lossy(&t.path_and_query).into_owned(),
            t.authority.map(|a| String::from_utf8_lossy(a).into_owned()),
        )
    })
}

#[test]
fn origin_form_in_normal_form_is_borrowed() {
    for raw in [
        "/",
        "/a",
        "/a/b/",
        "/a.b/c-d_e~f",
        "/a;b=c/d",
        "/x?y=../..//z",
        "/%2F",
    ] {
        let t = normalize_target(raw.as_bytes()).expect(raw);
        assert!(
            matches!(t.path_and_query, Cow::Borrowed(_)),
            "{raw} was copied"
        );
        assert_eq!(&t.path_and_query[..], raw.as_bytes());
    }
}

#[test]
fn paths_are_normalised() {
    let cases = [
        // dot-segments (RFC 3986 §5.2.4)
        ("/./admin", "/admin"),
        ("/a/../admin", "/admin"),
        ("/../admin", "/admin"),
        ("/../../..", "/"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/./b/../c", "/a/c"),
        ("/a/..b/c", "/a/..b/c"),
        ("/a/.../c", "/a/.../c"),
        // repeated slashes
        ("//admin", "/admin"),
        ("/a//b///c", "/a/b/c"),
        ("/a//", "/a/"),
        ("///", "/"),
        // percent-encoded dots and unreserved characters
        ("/%2e%2e/admin", "/admin"),
        ("/x/%2E%2e/admin", "/admin"),
        ("/x/.%2e/admin", "/admin"),
        ("/%2e/admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/%7Euser", "/~user"),
        // other encodings kept, hex upper-cased; %2F is not a separator
        ("/a%2fb", "/a%2Fb"),
        ("/a%2F..%2Fb", "/a%2F..%2Fb"),
        ("/%2e%2e%2fadmin", "/..%2Fadmin"),
        ("/a%20b", "/a%20b"),
        ("/%c3%a9", "/%C3%A9"),
        // bytes a URI cannot carry literally are encoded
        ("/é", "/%C3%A9"),
        ("/a\"b", "/a%22b"),
        ("/{x}", "/%7Bx%7D"),
        // the query is kept as sent
        ("//a/../b?x=/../&y=%2e", "/b?x=/../&y=%2e"),
        ("/a/./?", "/a/?"),
    ];
    for (raw, want) in cases {
        assert_eq!(norm(raw), Ok((want.to_string(), None)), "{raw}");
    }
}

#[test]
fn absolute_form_becomes_origin_form_and_authority() {
    let cases = [
        ("http://public/admin", "/admin", "public"),
        ("HTTP://Example.COM:8080/a?b", "/a?b", "Example.COM:8080"),
        ("https://h", "/", "h"),
        ("http://h?q=1", "/?q=1", "h"),
        ("http://h//x/../y", "/y", "h"),
        ("http://[::1]:80/", "/", "[::1]:80"),
        ("http://10.0.0.1/", "/", "10.0.0.1"),
        // an @ in the path is data; only the authority may not hold one
        ("http://a/b@c", "/b@c", "a"),
    ];
    for (raw, path, auth) in cases {
        assert_eq!(
            norm(raw),
            Ok((path.to_string(), Some(auth.to_string()))),
            "{raw}"
        );
    }
}

#[test]
fn bad_targets_are_refused_with_a_reason() {
    let cases = [
        ("*", "asterisk-form"),
        ("example.com:443", "path or an http URI"),
        ("ftp://h/x", "path or an http URI"),
        ("ws://h/x", "path or an http URI"),
        ("http://user:pw@h/x", "userinfo"),
        ("http:///x", "invalid host"),
        ("http://a b/", "invalid host"),
        ("http://h:99999/", "invalid host"),
        ("http://[zz]/", "invalid host"),
        ("/a#frag", "fragment"),
        ("/a%zz", "invalid percent-encoding"),
        ("/a%2", "invalid percent-encoding"),
        ("/a%", "invalid percent-encoding"),
        ("/a\\..\\b", "backslash"),
        ("/a/..;x/b", "dot-segment with parameters"),
        ("/a/.;x/b", "dot-segment with parameters"),
        ("/a/%2e%2e;/b", "dot-segment with parameters"),
        ("", "path or an http URI"),
        ("a/b", "path or an http URI"),
    ];
    for (raw, needle) in cases {
        match norm(raw) {
            Err(e) => assert!(e.contains(needle), "{raw}: {e}"),
            Ok(t) => panic!("{raw} accepted as {t:?}"),
        }
    }
}

#[test]
fn host_syntax() {
    for ok in [
        "",
        "a",
        "example.com",
        "example.com:8080",
        "example.com:",
        "EXAMPLE.com",
        "a-b_c~d.e",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:8080",
        "[2001:db8::1]",
        "x!$&'()*+,;=",
        "h:65535",
    ] {
        assert!(valid_authority(ok.as_bytes()), "{ok:?} refused");
    }
    for bad in [
        "a/b@c",
        "a@b",
        "a/b",
        "a b",
        "a:b",
        "a:1:2",
        "h:65536",
        "h:000001",
        "h%41",
        "[::1",
        "[::1]x",
        "[::1]:x",
        "[fe80::1%25eth0]",
        "[v1.x]",
        "::1",
        "a?b",
        "a#b",
        "é",
    ] {
        assert!(!valid_authority(bad.as_bytes()), "{bad:?} accepted");
    }
}

/// A deterministic stand-in for the fuzz target: generated targets built
/// from the pieces that matter keep the invariants.
#[test]
fn generated_targets_keep_the_invariants() {
    let pieces: &[&[u8]] = &[
        b"/",
        b"//",
        b".",
        b"..",
        b"%2e",
        b"%2E",
        b"%2f",
        b"%",
        b"%4",
        b"a",
        b"?",
        b";",
        b"\\",
        b"http://",
        b"h",
        b":80",
        b"@",
        b"#",
        b"\xc3\xa9",
        b"%41",
        b" ",
        b"[::1]",
        b"*",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20_000 {
        let mut input = Vec::new();
        for _ in 0..(seed % 10) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            input.extend_from_slice(pieces[(seed >> 40) as usize % pieces.len()]);
        }
        seed = seed.wrapping_add(0x2545_f491);
        check_uri_invariants(&input);
    }
}
