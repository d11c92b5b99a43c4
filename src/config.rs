//! Configuration: the TOML file struct (serde, unknown fields refused) and
//! its one-time conversion into the validated, typed `Config` that the
//! rest of corepin uses. Every error names the field it is about.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::codec::http1::{HeadLimits, MAX_HEADERS_CEILING};
use crate::route::Routes;

/// The embedded default configuration (identical to config/corepin.toml).
pub const DEFAULT_TOML: &str = include_str!("../config/corepin.toml");

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    listen: Option<Vec<String>>,
    control_http: Option<String>,
    control_socket: Option<String>,
    control_socket_mode: Option<String>,
    workers: Option<usize>,
    routes: Option<Vec<String>>,
    routes_file: Option<String>,
    limits: FileLimits,
    timeouts: FileTimeouts,
    upstream: FileUpstream,
    grip: FileGrip,
    publish: FilePublish,
    log: FileLog,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileGrip {
    sig_key: Option<String>,
    sig_iss: Option<String>,
    max_channels: Option<usize>,
    subscriber_queue: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FilePublish {
    auth: Option<String>,
    key: Option<String>,
    iss: Option<String>,
    user: Option<String>,
    password: Option<String>,
    max_body_bytes: Option<usize>,
    max_inflight_bytes: Option<usize>,
    max_backlog_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileLimits {
    max_head_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_uri_bytes: Option<usize>,
    max_request_body_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileTimeouts {
    client_header: Option<f64>,
    client_idle: Option<f64>,
    client_body: Option<f64>,
    client_write: Option<f64>,
    upstream_connect: Option<f64>,
    upstream_read: Option<f64>,
    shutdown_grace: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileUpstream {
    max_idle_per_target: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileLog {
    level: Option<String>,
    access_log: Option<bool>,
}

/// Diagnostic log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }
}

/// Where the routes came from, so a reload can read them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutesSource {
    Inline(Vec<String>),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub head: HeadLimits,
    /// 0 = unlimited.
    pub max_request_body: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub client_header: Duration,
    pub client_idle: Duration,
    pub client_body: Duration,
    pub client_write: Duration,
    pub upstream_connect: Duration,
    pub upstream_read: Duration,
    pub shutdown_grace: Duration,
}

/// GRIP settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Grip {
    /// Decoded signing key; `None` = no Grip-Sig.
    pub sig_key: Option<Vec<u8>>,
    pub sig_iss: String,
    pub max_channels: usize,
    pub subscriber_queue: usize,
}

/// How the publish API authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishAuth {
    None,
    Bearer { key: Vec<u8>, iss: Option<String> },
    Basic { user: String, password: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub auth: PublishAuth,
    pub max_body: usize,
    /// Estimated memory of publishes being parsed at once (429 past it).
    pub max_inflight: usize,
    /// Estimated memory of items queued for one core (503 past it).
    pub max_backlog: usize,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub control_http: Option<SocketAddr>,
    pub control_socket: Option<PathBuf>,
    /// Permission bits of the control socket file.
    pub control_socket_mode: u32,
    /// 0 = every core.
    pub workers: usize,
    pub routes: Routes,
    pub routes_source: RoutesSource,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub max_idle_per_target: usize,
    pub grip: Grip,
    pub publish: Publish,
    pub log_level: Level,
    pub access_log: bool,
}

/// Command-line values that replace the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<String>,
    pub control_http: Option<String>,
    pub control_socket: Option<String>,
    pub routes: Vec<String>,
    pub workers: Option<usize>,
    pub log_level: Option<String>,
}

/// A configuration error: one line naming the field or flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(field: &str, msg: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{field}: {msg}")))
}

/// Resolves `host:port` to one socket address.
pub fn parse_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    match s.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(a)) => Ok(a),
        _ => fail(field, format!("'{s}' is not a host:port address")),
    }
}

fn secs(field: &str, v: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    let v = v.unwrap_or(default);
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0 * 365.0) {
        return fail(field, format!("{v} is not a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn ranged(
    field: &str,
    v: Option<usize>,
    default: usize,
    lo: usize,
    hi: usize,
) -> Result<usize, ConfigError> {
    let v = v.unwrap_or(default);
    if v < lo || v > hi {
        return fail(field, format!("{v} is outside {lo}..={hi}"));
    }
    Ok(v)
}

/// Reads a routes file into lines.
pub fn read_routes_file(path: &std::path::Path) -> Result<Routes, ConfigError> {
    let text = std::fs::read_to_string(path)
        .or_else(|e| fail("routes_file", format!("{}: {e}", path.display())))?;
    Routes::parse(text.lines()).or_else(|e| fail("routes_file", format!("{}: {e}", path.display())))
}

impl Config {
    /// Parses and validates TOML text with overrides applied; `origin`
    /// names the file in errors.
    pub fn from_toml(text: &str, origin: &str, ov: &Overrides) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let msg = e.message().replace('\n', " ");
            ConfigError(match line {
                Some(l) => format!("{origin}: line {l}: {msg}"),
                None => format!("{origin}: {msg}"),
            })
        })?;
        Self::validate(file, ov)
    }

    /// The embedded default with overrides.
    pub fn default_with(ov: &Overrides) -> Result<Config, ConfigError> {
        Self::from_toml(DEFAULT_TOML, "embedded config", ov)
    }

    /// Reads a config file with overrides.
    pub fn load(path: &std::path::Path, ov: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("--config: {}: {e}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string(), ov)
    }

    fn validate(f: FileConfig, ov: &Overrides) -> Result<Config, ConfigError> {
        let listen = if ov.listen.is_empty() {
            let l = f.listen.unwrap_or_else(|| vec!["127.0.0.1:7999".into()]);
            l.iter()
                .map(|a| parse_addr("listen", a))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            ov.listen
                .iter()
                .map(|a| parse_addr("--listen", a))
                .collect::<Result<Vec<_>, _>>()?
        };
        if listen.is_empty() {
            return fail("listen", "at least one address is needed");
        }
        let control_http = match &ov.control_http {
            Some(a) if a.is_empty() => None,
            Some(a) => Some(parse_addr("--control-http", a)?),
            None => match f.control_http.as_deref().unwrap_or("127.0.0.1:5561") {
                "" => None,
                a => Some(parse_addr("control_http", a)?),
            },
        };
        let control_socket = match ov.control_socket.as_deref().or(f.control_socket.as_deref()) {
            Some("") => None,
            Some(p) => Some(PathBuf::from(p)),
            None => Some(PathBuf::from("/tmp/corepin.sock")),
        };
        let mode_text = f.control_socket_mode.as_deref().unwrap_or("0600");
        let control_socket_mode = u32::from_str_radix(mode_text, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                ConfigError(format!(
                    "control_socket_mode: '{mode_text}' is not an octal mode like \"0600\""
                ))
            })?;
        let workers = ov.workers.or(f.workers).unwrap_or(0);
        if workers > 4096 {
            return fail("workers", format!("{workers} is more than 4096"));
        }
        let (routes, routes_source) = if !ov.routes.is_empty() {
            let r = Routes::parse(ov.routes.iter().map(String::as_str))
                .or_else(|e| fail("--route", e))?;
            (r, RoutesSource::Inline(ov.routes.clone()))
        } else {
            match (f.routes, f.routes_file) {
                (Some(_), Some(_)) => {
                    return fail("routes_file", "give either routes or routes_file, not both")
                }
                (_, Some(path)) => {
                    let path = PathBuf::from(path);
                    (read_routes_file(&path)?, RoutesSource::File(path))
                }
                (lines, None) => {
                    let lines = lines.unwrap_or_else(|| vec!["* test".into()]);
                    let r = Routes::parse(lines.iter().map(String::as_str))
                        .or_else(|e| fail("routes", e))?;
                    (r, RoutesSource::Inline(lines))
                }
            }
        };
        if routes.is_empty() {
            return fail("routes", "no route is defined");
        }
        let l = f.limits;
        let head = HeadLimits {
            max_head_bytes: ranged(
                "limits.max_head_bytes",
                l.max_head_bytes,
                16384,
                256,
                1 << 20,
            )?,
            max_headers: ranged(
                "limits.max_headers",
                l.max_headers,
                100,
                1,
                MAX_HEADERS_CEILING,
            )?,
            max_uri_bytes: ranged("limits.max_uri_bytes", l.max_uri_bytes, 8192, 16, 1 << 20)?,
        };
        let limits = Limits {
            head,
            max_request_body: l.max_request_body_bytes.unwrap_or(100 << 20),
        };
        let t = f.timeouts;
        let timeouts = Timeouts {
            client_header: secs("timeouts.client_header", t.client_header, 10.0)?,
            client_idle: secs("timeouts.client_idle", t.client_idle, 60.0)?,
            client_body: secs("timeouts.client_body", t.client_body, 60.0)?,
            client_write: secs("timeouts.client_write", t.client_write, 60.0)?,
            upstream_connect: secs("timeouts.upstream_connect", t.upstream_connect, 5.0)?,
            upstream_read: secs("timeouts.upstream_read", t.upstream_read, 60.0)?,
            shutdown_grace: secs("timeouts.shutdown_grace", t.shutdown_grace, 5.0)?,
        };
        let max_idle_per_target = ranged(
            "upstream.max_idle_per_target",
            f.upstream.max_idle_per_target,
            64,
            0,
            100_000,
        )?;
        let g = f.grip;
        let sig_key = match g.sig_key.as_deref() {
            None | Some("") => None,
            Some(k) => Some(crate::jwt::key_bytes(k).or_else(|e| fail("grip.sig_key", e))?),
        };
        let grip = Grip {
            sig_key,
            sig_iss: g.sig_iss.unwrap_or_else(|| "corepin".into()),
            max_channels: ranged("grip.max_channels", g.max_channels, 20, 1, 1000)?,
            subscriber_queue: ranged(
                "grip.subscriber_queue",
                g.subscriber_queue,
                1024,
                1,
                1 << 20,
            )?,
        };
        for r in routes.iter() {
            if let Some(k) = &r.sig_key {
                crate::jwt::key_bytes(k)
                    .or_else(|e| fail("routes", format!("sig_key of '{}': {e}", r.line)))?;
            }
        }
        let p = f.publish;
        let auth = match p.auth.as_deref().unwrap_or("none") {
            "none" => PublishAuth::None,
            "bearer" => {
                let key = p.key.as_deref().unwrap_or("");
                if key.is_empty() {
                    return fail("publish.key", "auth = \"bearer\" needs a key");
                }
                PublishAuth::Bearer {
                    key: crate::jwt::key_bytes(key).or_else(|e| fail("publish.key", e))?,
                    iss: p.iss.filter(|i| !i.is_empty()),
                }
            }
            "basic" => {
                let user = p.user.unwrap_or_default();
                if user.is_empty() {
                    return fail("publish.user", "auth = \"basic\" needs a user");
                }
                PublishAuth::Basic {
                    user,
                    password: p.password.unwrap_or_default(),
                }
            }
            other => {
                return fail(
                    "publish.auth",
                    format!("'{other}' is not none, bearer or basic"),
                )
            }
        };
        let publish = Publish {
            auth,
            max_body: ranged(
                "publish.max_body_bytes",
                p.max_body_bytes,
                1 << 20,
                1024,
                64 << 20,
            )?,
            max_inflight: ranged(
                "publish.max_inflight_bytes",
                p.max_inflight_bytes,
                256 << 20,
                1024,
                1 << 40,
            )?,
            max_backlog: ranged(
                "publish.max_backlog_bytes",
                p.max_backlog_bytes,
                64 << 20,
                1024,
                1 << 40,
            )?,
        };
        let log_level = match &ov.log_level {
            Some(s) => Level::parse(s).ok_or_else(|| {
                ConfigError(format!(
                    "--log-level: '{s}' is not error, warn, info or debug"
                ))
            })?,
            None => {
                let s = f.log.level.as_deref().unwrap_or("info");
                Level::parse(s).ok_or_else(|| {
                    ConfigError(format!(
                        "log.level: '{s}' is not error, warn, info or debug"
                    ))
                })?
            }
        };
        Ok(Config {
            listen,
            control_http,
            control_socket,
            control_socket_mode,
            workers,
            routes,
            routes_source,
            limits,
            timeouts,
            max_idle_per_target,
            grip,
            publish,
            log_level,
            access_log: f.log.access_log.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_matches_the_documented_defaults() {
        let c = Config::default_with(&Overrides::default()).expect("valid default");
        let empty = Config::from_toml("", "empty", &Overrides::default()).expect("valid");
        assert_eq!(
            c, empty,
            "config/corepin.toml must show the built-in defaults"
        );
        assert_eq!(
            c.listen,
            vec!["127.0.0.1:7999".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.control_http, Some("127.0.0.1:5561".parse().unwrap()));
        assert_eq!(c.control_socket, Some(PathBuf::from("/tmp/corepin.sock")));
        assert_eq!(c.routes.iter().count(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("lisen = []", "unknown field `lisen`"),
            ("[limits]\nmax_headers = 1000", "limits.max_headers"),
            ("[timeouts]\nclient_idle = -1", "timeouts.client_idle"),
            ("[timeouts]\nbogus = 1", "unknown field `bogus`"),
            ("listen = [\"nope\"]", "listen: 'nope'"),
            ("routes = [\"* nothere\"]", "routes: line 1"),
            ("[log]\nlevel = \"loud\"", "log.level"),
            ("workers = \"two\"", "line 1"),
            ("routes = [\"* test\"]\nroutes_file = \"x\"", "routes_file"),
            (
                "routes_file = \"/nonexistent/routes\"",
                "routes_file: /nonexistent/routes",
            ),
        ];
        for (text, needle) in cases {
            let e = Config::from_toml(text, "t.toml", &Overrides::default()).expect_err(text);
            assert!(e.0.contains(needle), "{text:?} gave {e}");
            assert!(!e.0.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn overrides_replace_file_values() {
        let ov = Overrides {
            listen: vec!["127.0.0.1:0".into(), "127.0.0.1:0".into()],
            control_http: Some(String::new()),
            routes: vec!["* 127.0.0.1:9".into()],
            workers: Some(1),
            log_level: Some("warn".into()),
            ..Overrides::default()
        };
        let c = Config::default_with(&ov).expect("valid");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.control_http, None);
        assert_eq!(c.workers, 1);
        assert_eq!(c.log_level, Level::Warn);
        assert_eq!(
            c.routes_source,
            RoutesSource::Inline(vec!["* 127.0.0.1:9".into()])
        );
        let bad = Overrides {
            routes: vec!["* x".into()],
            ..Overrides::default()
        };
        assert!(Config::default_with(&bad)
            .expect_err("bad")
            .0
            .starts_with("--route: "));
    }
}
