//! Invariant: for any bytes, request-target normalisation never panics; an
//! accepted target comes out in origin form with a path that starts with
//! `/` and holds no `//`, no `.` or `..` segment (literal or encoded) and
//! no byte a path may not carry literally; normalising it again changes
//! nothing (idempotence); any authority it returns is a valid Host value.
//! (`corepin::codec::uri::check_uri_invariants` asserts these.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::codec::uri::check_uri_invariants(data);
});
