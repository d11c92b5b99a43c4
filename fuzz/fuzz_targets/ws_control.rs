//! Invariant: a WebSocket control message (the JSON after `c:`), whatever
//! its bytes, never panics the parser; a refusal is one non-empty line; an
//! accepted subscribe names a non-empty channel that can sit in a header
//! line, and an accepted message to send is valid for its frame type
//! (`codec::wscontrol::check_parse_invariant`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::codec::wscontrol::check_parse_invariant(data);
});
