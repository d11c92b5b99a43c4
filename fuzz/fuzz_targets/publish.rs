//! Invariant: the publish parser never panics, accepts only JSON that
//! serde_json accepts (a root object with a non-empty `items` list, every
//! item with a channel and a format), returns the same items and the same
//! errors item by item as whole, and gives every refusal a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::codec::publish::check_parse_invariant(data);
});
