//! Invariant: for any first bytes of a connection on a TLS port, the
//! classifier never panics; an answer given for a prefix never changes as
//! more bytes arrive; `sniff::DECISIVE_BYTES` bytes always get an answer;
//! `Tls` means the bytes start 0x16 0x03 and `PlainHttp` means they start
//! with a method token and a space.
//! (`corepin::tls::sniff::check_classify_invariants` asserts these.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::tls::sniff::check_classify_invariants(data);
});
