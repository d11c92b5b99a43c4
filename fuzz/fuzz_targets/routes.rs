//! Invariant: for any text, the routes-line parser (Pushpin's syntax)
//! never panics; a line it accepts has at least one target, a path_beg
//! that starts with `/`, header= values without CR, LF or NUL, and every
//! request path it is asked about selects without panicking and rewrites
//! to a path that starts with `/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (line, path) = text.split_once('\n').unwrap_or((text, "/"));
    let _ = corepin::route::tokenize(line);
    let Ok(Some(route)) = corepin::route::parse_line_in(line, std::path::Path::new("/nonexistent"))
    else {
        return;
    };
    assert!(!route.targets.is_empty() || !route.zhttp.is_empty());
    if let Some(b) = &route.path_beg {
        assert!(b.starts_with('/'));
    }
    for h in &route.edits.headers {
        assert!(!h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
    }
    let _ = route.unsupported();
    let path = if path.starts_with('/') { path } else { "/" };
    let out = route.rewrite(path);
    assert!(out.starts_with('/'), "{out}");
    if let Ok(routes) = corepin::route::Routes::build(vec![(0, route)]) {
        let _ = routes.select(Some("example.com"), path, false);
        let _ = routes.select(None, path, true);
    }
});
