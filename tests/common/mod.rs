//! Test equipment for the black-box tests, one concern per module:
//!
//! - `process`: the real corepin binary started on port 0 (it reports
//!   where it listens through `--ready-file`, not through its log), its
//!   output, signals and exit; Python backends; files the tests write.
//! - `backend`: a small programmable HTTP backend on threads.
//! - `client`: raw client connections (keep-alive requests, held
//!   streams) and the publish API.
//! - `http`: HTTP/1.1 as the test side reads and writes it.
//! - `browser`: headless Chromium for the tests a real browser judges.
//! - `certs`: a CA and the certificates it signs, made at test time.
//! - `metrics`: what corepin's /metrics says, and publishing once a
//!   subscriber has subscribed.
//!
//! Tests wait on facts (a line, a file, a count, an answer), never on a
//! pause; every wait has a timeout so a broken build fails instead of
//! hanging.

#![allow(dead_code, unused_imports)]

mod backend;
mod browser;
mod certs;
mod client;
mod http;
mod metrics;
mod process;

pub use backend::*;
pub use browser::*;
pub use certs::*;
pub use client::*;
pub use http::*;
pub use metrics::*;
pub use process::*;

use std::thread;
use std::time::{Duration, Instant};

/// How long any one wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// How often a wait looks again at what it waits for.
pub const POLL: Duration = Duration::from_millis(20);

/// Waits until `f` is true (looking every `POLL`), or panics after the
/// timeout.
pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(POLL);
    }
}
