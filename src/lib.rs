//! corepin: a thread-per-core realtime reverse proxy speaking GRIP.
//!
//! The module map (dependencies flow from the leaves up):
//!
//! - Leaves, no IO: `codec` (HTTP/1.1, chunked, WebSocket, GRIP
//!   instructions, publish items, every head corepin writes), `config`
//!   (file -> validated `Config`), `route` (routes file and selection),
//!   `cli` (arguments), `pushpin_conf` (reading a `pushpin.conf`), `jwt`
//!   (Grip-Sig and publish tokens), `log`, `stats` and `metrics` (per-core
//!   counters, Prometheus text), `tls` (certificates, rustls configs, a
//!   sans-IO TLS stream over any transport).
//! - Cross-core: `bus` (publishes fanned out to every core's inbox),
//!   `cluster` (publishes shared between nodes through a broker),
//!   `subs` (a core's subscriptions and their bounded queues), `history`
//!   (each channel's recent items, for resuming subscribers).
//! - Runtime-facing (glommio types live only here): `buf` (pooled read
//!   buffers), `wake` (how a core hears from outside: wake bytes,
//!   `Command`s, the links to every core), `connection` (the one type that touches a socket),
//!   `upstream` (backend connections, failover, the idle pool), `conn`
//!   (per-connection drivers: HTTP, GRIP holds, WebSocket), `control`
//!   (the publish HTTP API), `testtarget`, `shard` (one core's accept
//!   loops, connections and drains; it is handed the connection handlers
//!   by `server`, and knows nothing of HTTP), `server` (executors and
//!   signals), `uring` (corepin's own per-core io_uring data path, the
//!   `data_path = "uring"` option), `clock` (the time as the core's ring
//!   driver read it at the start of its turn).
//! - Plain threads: `control_socket` (the Unix control socket), `watch`
//!   (routes-file reloads), `memtrim` (giving memory back after a peak),
//!   `client` (the `corepin publish`/`stats` commands), `zmq_sockets`
//!   (Pushpin's ZeroMQ interfaces).

#[macro_use]
pub mod log;
pub mod buf;
pub mod bus;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod conn;
pub mod connection;
pub mod control;
pub mod control_socket;
pub mod history;
pub mod jwt;
pub mod memtrim;
pub mod metrics;
pub mod pushpin_conf;
pub mod route;
pub mod server;
pub mod shard;
pub mod stats;
pub mod subs;
pub mod targets;
pub mod testtarget;
pub mod tls;
pub mod upstream;
pub mod uring;
pub mod wake;
pub mod watch;
#[cfg(feature = "zmq")]
pub mod zmq_sockets;
