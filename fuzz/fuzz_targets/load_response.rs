//! Invariant: corepin-load's response reader and its WebSocket event reader
//! never panic and find the same events (and the same failure) in their
//! input however it is split.
#![no_main]

use corepin_load::http::{check_split_invariant, check_ws_split_invariant};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    check_split_invariant(input, cut as usize);
    check_ws_split_invariant(input, cut as usize);
});
