//! Invariant: the tnetstring parser never panics; a value it accepts
//! re-encodes to bytes that decode to the same value, no proper prefix of
//! it parses as a value, and whole-message decoding agrees with it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::codec::tnetstring::check_invariant(data);
});
