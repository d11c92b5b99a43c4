//! Invariant: for any bytes, SockJS URL classification, the `xhr_send` /
//! `jsonp_send` / framed WebSocket payload parsers and the form decoder
//! answer without panicking; accepted session ids are valid ids, accepted
//! messages fit the message limit and survive a round trip through an
//! `a[...]` frame; a JSON-P frame is one script line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::codec::sockjs::check_invariants(data);
});
