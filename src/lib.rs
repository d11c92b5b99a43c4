//! corepin: a thread-per-core realtime reverse proxy speaking GRIP.
//!
//! Leaves (no IO): `codec`, `config`, `route`, `cli`, `pushpin_conf`. Runtime-facing
//! (glommio types live only here): `buf`, `conn`, `upstream`, `shard`,
//! `server`, `testtarget`. `tls` takes any stream and a timer future.

#[macro_use]
pub mod log;
pub mod buf;
pub mod bus;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod conn;
pub mod control;
pub mod control_socket;
pub mod jwt;
pub mod memtrim;
pub mod metrics;
pub mod pushpin_conf;
pub mod route;
pub mod server;
pub mod shard;
pub mod stats;
pub mod subs;
pub mod testtarget;
pub mod tls;
pub mod upstream;
pub mod watch;
