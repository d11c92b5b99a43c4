//! Invariant: for any bytes, a client's resume id (`Last-Event-ID`) is
//! accepted exactly when it is non-empty UTF-8 of at most 256 bytes with
//! no control character, and returned unchanged; a channel history fed
//! ids cut from the bytes keeps its counts and per-channel bound and
//! replays only later items of the channel, in order.
//! (`corepin::history::check_resume_invariants` asserts these.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::history::check_resume_invariants(data);
});
