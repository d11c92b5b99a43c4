//! corepin-load's modes and the parsers they share, as a library so the
//! fuzz targets under fuzz/ can drive the parsers (the response reader,
//! the WebSocket event reader, the message scanner) directly. The binary
//! in main.rs only dispatches on the mode.

pub mod args;
pub mod echo;
pub mod fanout;
pub mod grip_backend;
pub mod http;
pub mod lockstep;
pub mod net;
pub mod proxy;
pub mod publish;
pub mod record;
pub mod soak;
pub mod soak_worker;
pub mod storm;
pub mod storm_backend;
pub mod subscribe;
pub mod tls;
pub mod ws_echo;
