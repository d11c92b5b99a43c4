//! Invariant: for any string taken as a certificate file stem or as a
//! client's SNI name, neither the stem parser nor the lookup panics; a
//! stem that parses round-trips through its display form, an exact name
//! is a lower-case host name without `*`, a wildcard covers at least two
//! labels; lookup keys are the lower-case name and the part after exactly
//! one non-empty label, so an exact file and a one-label wildcard file
//! are both found.
//! (`corepin::tls::names::check_name_invariants` asserts these.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        corepin::tls::names::check_name_invariants(s);
    }
});
