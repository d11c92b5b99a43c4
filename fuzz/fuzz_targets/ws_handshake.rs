//! Invariant: for any bytes, splitting `Sec-WebSocket-Extensions` into the
//! GRIP extension and the rest never panics and never passes `grip` on to
//! the client; sorting a backend message under the extension never panics
//! and yields a suffix of the message.
//! (`corepin::codec::wshandshake::check_handshake_invariants` asserts these.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::codec::wshandshake::check_handshake_invariants(data);
});
