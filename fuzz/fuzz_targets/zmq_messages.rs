//! Invariant: reading a ZeroMQ publish message (a topic before the first
//! NUL, when there is one) or a command never panics; an accepted publish
//! is one item on a non-empty channel, the topic when one was given; every
//! refusal has a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corepin::codec::zmqmsg::check_publish_invariant(data);
});
