//! Invariant: the WebSocket frame reader (both roles) never panics, never
//! consumes more than given, and yields the same events or error however
//! its input is split; the WebSocket-over-HTTP event decoder never panics.
#![no_main]

use corepin::codec::ws::{check_split_invariant, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    check_split_invariant(Role::Server, input, cut as usize);
    check_split_invariant(Role::Client, input, cut as usize);
    let _ = corepin::codec::wsevents::decode(input);
});
