//! Invariant: for any query string, the channel-count query parser answers
//! without panicking, and an accepted query names a non-empty channel or
//! prefix free of control characters, or a `top` from 1 to `MAX_TOP`.
#![no_main]

use corepin::codec::counts::{Query, MAX_NAME, MAX_TOP};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let clean = |n: &str| n.len() <= MAX_NAME && !n.bytes().any(|b| b < 0x20 || b == 0x7f);
    match Query::from_url(Some(s)) {
        Ok(Query::Channel(c)) => assert!(!c.is_empty() && clean(&c)),
        Ok(Query::Top { prefix, top }) => {
            assert!(clean(&prefix) && (1..=MAX_TOP).contains(&top))
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
