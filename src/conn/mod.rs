//! Per-connection drivers: one async task per client connection reads,
//! parses with the sans-IO codecs, acts, and writes.

pub mod body;
pub mod grip;
pub mod http;
pub mod ws;
