//! Invariant: for any text, the pushpin.conf (Qt INI) reader never
//! panics, and every key it returns is non-empty.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(map) = corepin::pushpin_conf::parse_ini(text, "fuzz") {
        for (k, v) in &map {
            assert!(!k.is_empty() && !k.ends_with('/'));
            let _ = (v.text(), v.list());
        }
    }
});
