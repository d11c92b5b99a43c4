//! Invariant: subscription filters (over any content, meta and prev-ids),
//! build-id piece by piece, WebSocket control messages, Grip-Channel /
//! Grip-Set-Meta parameter lists and body patches never panic; verdicts
//! are deterministic, a piecewise build-id equals the whole one, and every
//! refusal has a one-line reason (`codec::filter::check_fuzz_invariants`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::codec::filter::check_fuzz_invariants(data);
});
