//! TLS to backends, from a routes line to a connection's settings: the
//! first line of the input is parsed as a route; every `ssl` target's
//! destination (`upstream::Dest::of`) and server name (`tls::client::
//! server_name`, SNI and the name verified) are worked out, and the rest
//! of the input is resolved as a next/gone link against it
//! (`upstream::link_dest`).
//! Invariant: nothing panics; a destination keeps the target's address and
//! TLS settings; a link that resolves has a request target starting with
//! `/`, a non-empty address with a port, and TLS exactly when it is
//! https:// or relative to a TLS target.
#![no_main]

use corepin::route::{Routes, Target};
use corepin::tls::client::server_name;
use corepin::upstream::{link_dest, Dest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (line, link) = s.split_once('\n').unwrap_or((s, ""));
    let Ok(routes) = Routes::parse([line]) else {
        return;
    };
    for route in routes.iter() {
        for t in &route.targets {
            let Target::Backend(b) = t else { continue };
            let dest = Dest::of(b);
            assert_eq!(dest.addr, b.addr);
            assert_eq!(dest.tls.is_some(), b.ssl);
            if let Some(tls) = &dest.tls {
                assert_eq!(tls.insecure, b.insecure);
                assert_eq!(tls.name, b.host);
                let _ = server_name(&b.addr, b.host.as_deref());
            }
            if let Some((to, path)) = link_dest(link, Some(&dest)) {
                assert!(path.starts_with('/'), "{link:?} -> {path:?}");
                assert!(!to.addr.is_empty() && to.addr.contains(':'), "{link:?}");
                let want_tls = link.starts_with("https://")
                    || (link.starts_with('/') && dest.tls.is_some());
                assert_eq!(to.tls.is_some(), want_tls, "{link:?}");
            }
        }
    }
});
