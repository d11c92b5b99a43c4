//! Invariant: for any bytes, request and response head parsing never
//! panics; a complete head never claims more bytes than it was given;
//! parsing a prefix never completes with a different length than the whole
//! (so a split read can never change how a head is framed); and a parsed
//! request's target is already in normal form and its Host valid (so what
//! routes match is what the backend receives).
#![no_main]

use corepin::codec::http1::{parse_request, parse_response, HeadLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        max_head_bytes: 4096,
        max_headers: 32,
        max_uri_bytes: 1024,
    };
    corepin::codec::http1::check_head_invariants(data, &limits);
    let _ = parse_response(data, &limits, data.first().is_some_and(|b| b & 1 == 1));
    let _ = parse_request(data, &limits);
});
