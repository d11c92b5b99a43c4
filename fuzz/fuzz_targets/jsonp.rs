//! Invariant: for any query (and any response, after a NUL), JSON-P
//! planning and wrapping never panic; an accepted request's callback is a
//! JavaScript identifier path, its method and header names are tokens and
//! its values carry no CR, LF or NUL; a wrapped answer's body starts with
//! `/**/CALLBACK(`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::codec::jsonp::check_invariants(data);
});
