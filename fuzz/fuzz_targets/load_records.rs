//! Invariant: corepin-load's message scanner finds the same records however
//! its input is split and never keeps more than a record's worth of it; the
//! per-subscriber tracker counts arbitrary sequence numbers (edges of u64
//! included) exactly as a model that remembers every number does; a
//! worker's latency JSON, whatever it holds, merges without a panic.
#![no_main]

use corepin_load::record::{check_scan_split_invariant, check_track_against_model, Latency};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    check_scan_split_invariant(input, cut as usize);
    // Three bytes a number: small ones exercise the window, a set high bit
    // in the first byte moves the number next to u64::MAX.
    let seqs: Vec<u64> = input
        .chunks_exact(3)
        .map(|c| {
            let n = u64::from(u16::from_le_bytes([c[1], c[2]]));
            if c[0] & 0x80 != 0 {
                u64::MAX - n
            } else {
                n
            }
        })
        .collect();
    check_track_against_model(&seqs);
    if let Ok(v) = serde_json::from_slice(input) {
        Latency::new().add_json(&v);
    }
});
