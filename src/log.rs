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

/// A core's access-log buffer, and which optional fields it writes.
#[derive(Default)]
pub struct AccessLog {
    buf: Vec<u8>,
    /// Omit the client's address (Pushpin's `log_from = false`).
    hide_client: bool,
    /// Add `ua="..."` (Pushpin's `log_user_agent`).
    user_agent: bool,
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
    /// The request's User-Agent, as sent.
    pub user_agent: Option<&'a [u8]>,
}

impl AccessLog {
    /// A log writing the client's address when `client`, and the
    /// User-Agent when `user_agent`.
    pub fn new(client: bool, user_agent: bool) -> AccessLog {
        AccessLog {
            buf: Vec::new(),
            hide_client: !client,
            user_agent,
        }
    }

    pub fn record(&mut self, e: &AccessEntry<'_>) {
        let _ = write!(self.buf, "{} core={} ", Timestamp::now(), e.core);
        if self.hide_client {
            self.buf.extend_from_slice(b"client=-");
        } else {
            let _ = write!(self.buf, "client={}", e.client);
        }
        let _ = write!(
            self.buf,
            " \"{} {}\" {} {} {} {:.3}ms",
            e.method,
            e.path.escape_debug(),
            e.status,
            e.bytes,
            e.target,
            e.duration.as_secs_f64() * 1000.0
        );
        if self.user_agent {
            if let Some(ua) = e.user_agent {
                // Escaped: a header value is the client's text, and a log
                // line must stay one line of printable text.
                self.buf.extend_from_slice(b" ua=\"");
                for &b in ua {
                    match b {
                        b'"' | b'\\' => {
                            self.buf.push(b'\\');
                            self.buf.push(b);
                        }
                        0x20..=0x7e => self.buf.push(b),
                        _ => {
                            let _ = write!(self.buf, "\\x{b:02x}");
                        }
                    }
                }
                self.buf.push(b'"');
            }
        }
        self.buf.push(b'\n');
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// The lines written and not flushed yet (tests).
    pub fn pending(&self) -> &[u8] {
        &self.buf
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
    fn optional_fields_and_escapes() {
        let entry = |ua: Option<&'static [u8]>| AccessEntry {
            core: 1,
            client: "10.0.0.1:5000".parse().expect("addr"),
            method: "GET",
            path: "/x",
            status: 200,
            bytes: 3,
            target: "test",
            duration: Duration::from_millis(2),
            user_agent: ua,
        };
        let line = |log: &AccessLog| {
            let s = String::from_utf8(log.pending().to_vec()).expect("utf-8");
            s.split_once(' ')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or(s)
        };
        let mut plain = AccessLog::new(true, false);
        plain.record(&entry(Some(b"curl/8")));
        assert_eq!(
            line(&plain),
            "core=1 client=10.0.0.1:5000 \"GET /x\" 200 3 test 2.000ms\n"
        );
        let mut both = AccessLog::new(false, true);
        both.record(&entry(Some(b"a \"b\" \\ \x01\xff")));
        assert_eq!(
            line(&both),
            "core=1 client=- \"GET /x\" 200 3 test 2.000ms ua=\"a \\\"b\\\" \\\\ \\x01\\xff\"\n"
        );
        let mut none = AccessLog::new(true, true);
        none.record(&entry(None));
        assert!(!line(&none).contains("ua="));
        // Nothing is flushed by these tests: the buffer is dropped.
        for log in [&mut plain, &mut both, &mut none] {
            log.buf.clear();
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = Timestamp(UNIX_EPOCH + Duration::from_millis(1_795_855_301_123));
        assert_eq!(t.to_string(), "2026-11-28T08:41:41.123Z");
        let t = Timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(t.to_string(), "2000-02-29T00:00:00.000Z");
    }
}
