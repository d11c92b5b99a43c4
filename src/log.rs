//! Logging: diagnostics to stderr at a level set once at start-up, and the
//! per-core access log, buffered per core and written to stdout with one
//! `write(2)` per flush: the cores share only stdout's lock, taken once per
//! flush (not per line), so their flushes never interleave.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Level;

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the diagnostic level (once, at start-up).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one diagnostic line to stderr if `level` is enabled.
pub fn emit(level: Level, args: std::fmt::Arguments<'_>) {
    if enabled(level) {
        let tag = match level {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        };
        let mut line = Vec::with_capacity(128);
        let _ = writeln!(line, "{} corepin {tag}: {args}", Timestamp::now());
        let _ = std::io::stderr().write_all(&line);
    }
}

#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::emit($crate::config::Level::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::emit($crate::config::Level::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::emit($crate::config::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::emit($crate::config::Level::Debug, format_args!($($t)*)) } }

/// RFC 3339 UTC time with milliseconds, formatted without a date library.
pub struct Timestamp(SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(SystemTime::now())
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        // Civil-from-days (proleptic Gregorian), after H. Hinnant's algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            d.subsec_millis()
        )
    }
}

/// Size at which a core's access-log buffer is written out at once.
const FLUSH_AT: usize = 32 * 1024;

/// A core's access-log buffer.
#[derive(Default)]
pub struct AccessLog {
    buf: Vec<u8>,
}

/// One finished request, as logged.
pub struct AccessEntry<'a> {
    pub core: usize,
    pub client: std::net::SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub target: &'a str,
    pub duration: std::time::Duration,
}

impl AccessLog {
    pub fn record(&mut self, e: &AccessEntry<'_>) {
        let _ = writeln!(
            self.buf,
            "{} core={} client={} \"{} {}\" {} {} {} {:.3}ms",
            Timestamp::now(),
            e.core,
            e.client,
            e.method,
            e.path.escape_debug(),
            e.status,
            e.bytes,
            e.target,
            e.duration.as_secs_f64() * 1000.0
        );
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Writes buffered lines to stdout.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&self.buf);
            let _ = out.flush();
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = Timestamp(UNIX_EPOCH + Duration::from_millis(1_795_855_301_123));
        assert_eq!(t.to_string(), "2026-11-28T08:41:41.123Z");
        let t = Timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(t.to_string(), "2000-02-29T00:00:00.000Z");
    }
}
