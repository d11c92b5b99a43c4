//! Sans-IO codecs: pure functions and state machines over byte slices.
//!
//! Nothing in this module touches a socket, an executor or a clock. Parsers
//! return `Ok(None)` (or consume less than they were given) on short input;
//! that is never an error. Encoders append to a caller-owned buffer.

pub mod bodypatch;
pub mod chunked;
pub mod cors;
pub mod counts;
pub mod filter;
pub mod grip;
pub mod heads;
pub mod http1;
pub mod json;
pub mod jsonp;
pub mod publish;
pub mod response;
pub mod sockjs;
pub mod tnetstring;
pub mod uri;
pub mod wildcard;
pub mod ws;
pub mod wscontrol;
pub mod wsevents;
pub mod wshandshake;
pub mod wssession;
pub mod zmqmsg;

/// Input refused, with the one line a user is shown for it (a 400 or 502
/// reason, a close reason, a startup error). Every parser in corepin —
/// these codecs, and the config, routes, CLI and certificate readers —
/// answers with this one type; each module names it for what it reads
/// (`publish::PublishError`, `config::ConfigError`, ...) so a signature
/// still says which input was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}
