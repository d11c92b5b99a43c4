//! Invariant: the chunked decoder never panics, never consumes more than
//! it is given, and yields the same data and the same verdict however the
//! input is split (the first byte picks the split point).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    corepin::codec::chunked::check_split_invariant(input, cut as usize);
});
