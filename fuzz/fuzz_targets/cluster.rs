//! Invariant: the cluster's parsers (broker URLs, broker messages with
//! their `corepin` envelope, Redis stream entry ids) never panic; what they
//! accept round-trips (`corepin::cluster::check_input_invariant`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::cluster::check_input_invariant(data);
});
