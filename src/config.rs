//! Configuration: the TOML file struct (serde, unknown fields refused) and
//! its one-time conversion into the validated, typed `Config` that the
//! rest of corepin uses. Every error names the field it is about.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
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
    auto_cross_origin: Option<bool>,
    sockjs_url: Option<String>,
    limits: FileLimits,
    timeouts: FileTimeouts,
    upstream: FileUpstream,
    grip: FileGrip,
    publish: FilePublish,
    log: FileLog,
    forwarding: FileForwarding,
    // TLS (issue 15).
    listen_tls: Option<Vec<String>>,
    tls: FileTls,
    zmq: FileZmq,
    metrics: FileMetrics,
    // Cluster (issue 17).
    cluster: FileCluster,
    // io_uring data path (issue 16).
    data_path: Option<String>,
    history: FileHistory,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileHistory {
    messages: Option<usize>,
    seconds: Option<u64>,
    max_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileMetrics {
    pushpin_prefix: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileZmq {
    push_in_spec: Option<String>,
    push_in_sub_specs: Option<Vec<String>>,
    push_in_sub_connect: Option<bool>,
    command_spec: Option<String>,
    stats_spec: Option<String>,
    stats_format: Option<String>,
    stats_report_interval: Option<u64>,
    stats_subscription_ttl: Option<u64>,
    stats_connection_send: Option<bool>,
    stats_connection_ttl: Option<u64>,
    subscription_linger: Option<u64>,
    ipc_file_mode: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileCluster {
    brokers: Option<Vec<String>>,
    prefix: Option<String>,
    node: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileTls {
    cert: Option<String>,
    key: Option<String>,
    certs_dir: Option<String>,
    ktls: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileForwarding {
    trusted_proxies: Option<Vec<String>>,
    x_forwarded_for: Option<String>,
    x_forwarded_for_trusted: Option<String>,
    accept_x_forwarded_protocol: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileGrip {
    sign: Option<bool>,
    sig_key: Option<String>,
    sig_iss: Option<String>,
    max_channels: Option<usize>,
    subscriber_queue: Option<usize>,
    subscriber_queue_bytes: Option<usize>,
    update_on_first_subscription: Option<bool>,
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
    max_connections: Option<usize>,
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
    ws_keep_alive_min: Option<f64>,
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
    access_log_client: Option<bool>,
    access_log_user_agent: Option<bool>,
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
    /// `--route` flags.
    Flags(Vec<String>),
    /// The config file's `routes = [...]`.
    Inline(Vec<String>),
    /// `routes_file`.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub head: HeadLimits,
    /// 0 = unlimited.
    pub max_request_body: u64,
    /// Open client connections, all cores together; 0 = derived from the
    /// file limit at start-up (`server::connection_cap`).
    pub max_connections: usize,
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
    /// The shortest WebSocket-over-HTTP `Keep-Alive-Interval` honoured
    /// (a backend asking for less gets this).
    pub ws_keep_alive_min: Duration,
}

/// Pushpin's default signing key: public, so a warning says so.
pub const DEFAULT_SIG_KEY: &str = "changeme";
/// Pushpin's default `Grip-Sig` issuer.
pub const DEFAULT_SIG_ISS: &str = "pushpin";

/// The start-up warning for signing with the public default key.
pub const PUBLIC_KEY_WARNING: &str = "grip.sig_key is Pushpin's public default \"changeme\": backends that check Grip-Sig cannot tell corepin from anyone else; set [grip] sig_key to a secret (or sign = false)";

/// GRIP settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Grip {
    /// Decoded signing key; `None` = no Grip-Sig (`sign = false`; routes
    /// with their own `sig_key` still sign).
    pub sig_key: Option<Vec<u8>>,
    pub sig_iss: String,
    /// Signing with Pushpin's public default key `changeme` (warned about
    /// once at start-up).
    pub public_default_key: bool,
    pub max_channels: usize,
    pub subscriber_queue: usize,
    /// Bytes queued for a subscriber whose socket is full.
    pub subscriber_queue_bytes: usize,
    /// Pushpin's `update_on_first_subscription`: a second after a channel
    /// gets its first subscriber on a core, that core's held HTTP
    /// subscribers on it re-fetch (long-polls ask again, streams fetch
    /// their next link).
    pub update_on_first_subscription: bool,
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

pub use crate::codec::heads::XffRule;

/// Reads an `X-Forwarded-For` rule (`truncate:N`, `append`, both, or
/// neither) for the field `field`.
fn parse_xff_rule(field: &str, text: &str) -> Result<XffRule, ConfigError> {
    let mut rule = XffRule {
        truncate: None,
        append: false,
    };
    for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if token == "append" {
            if rule.append {
                return fail(field, "'append' is given twice");
            }
            rule.append = true;
        } else if let Some(n) = token.strip_prefix("truncate:") {
            if rule.truncate.is_some() {
                return fail(field, "'truncate:N' is given twice");
            }
            let n = n
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= 100)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "{field}: '{token}' needs a number of entries from 0 to 100"
                    ))
                })?;
            rule.truncate = Some(n);
        } else {
            return fail(
                field,
                format!("'{token}' is not truncate:N or append (e.g. \"truncate:0,append\")"),
            );
        }
    }
    Ok(rule)
}

/// An address range (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(field: &str, text: &str) -> Result<Cidr, ConfigError> {
        let bad = || {
            ConfigError(format!(
                "{field}: '{text}' is not an IP address or a CIDR range like 10.0.0.0/8"
            ))
        };
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        let cidr = Cidr { net, bits };
        if cidr.host_bits() {
            return fail(
                field,
                format!("'{text}' has bits set past the /{bits} prefix"),
            );
        }
        Ok(cidr)
    }

    /// `ip` as a number, and its width in bits.
    fn bits_of(ip: IpAddr) -> (u128, u32) {
        match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    /// The first `self.bits` bits of `ip`.
    fn prefix(&self, ip: IpAddr) -> u128 {
        let (v, width) = Self::bits_of(ip);
        match u32::from(self.bits) {
            0 => 0,
            keep => v >> (width - keep),
        }
    }

    /// True when the network address has bits set past the prefix.
    fn host_bits(&self) -> bool {
        let (v, width) = Self::bits_of(self.net);
        let host = width - u32::from(self.bits);
        host > 0 && v & (u128::MAX >> (128 - host)) != 0
    }

    /// True when `ip` is in this range (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.net.is_ipv4() && self.prefix(ip) == self.prefix(self.net)
    }
}

/// Which forwarding headers corepin believes from whom (`[forwarding]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarding {
    /// Peers whose forwarding headers are kept (a proxy in front).
    pub trusted_proxies: Vec<Cidr>,
    /// `X-Forwarded-For` from any other peer.
    pub xff: XffRule,
    /// `X-Forwarded-For` from a trusted proxy.
    pub xff_trusted: XffRule,
    /// A client's `X-Forwarded-Proto: https` (or `wss`) makes the request
    /// count as https; otherwise corepin says `http`.
    pub accept_x_forwarded_protocol: bool,
}

impl Forwarding {
    /// True when `peer` is a trusted proxy.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(peer))
    }

    /// What the policy says for a request from `peer`.
    pub fn policy(&self, peer: IpAddr) -> crate::codec::heads::ForwardPolicy {
        let trusted = self.trusts(peer);
        crate::codec::heads::ForwardPolicy {
            trusted,
            xff: if trusted { self.xff_trusted } else { self.xff },
            accept_x_forwarded_protocol: self.accept_x_forwarded_protocol,
            tls: false,
        }
    }
}

/// Where the TLS listeners' certificates come from (`[tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsCerts {
    /// `cert` + `key`: one PEM certificate chain and key for every client.
    Pair { cert: PathBuf, key: PathBuf },
    /// `certs_dir`: Pushpin's layout, chosen by SNI (see `tls::names`).
    Dir(PathBuf),
    /// A directory as `Dir` whose default certificate is the file pair
    /// `DEFAULT.crt` + `DEFAULT.key`: Pushpin's runner names a TLS port's
    /// default `default_PORT` (`pushpin_conf`).
    DirWithDefault { dir: PathBuf, default: String },
}

/// Why `ktls = true` is refused (see `tls`'s module doc for the findings).
pub const KTLS_REFUSAL: &str =
    "kernel TLS offload is not supported: the kernels corepin is tested on \
have no TLS ULP (CONFIG_TLS), and glommio's socket reads cannot take the TLS control records \
a kTLS socket hands up; rustls encrypts in userspace. Remove the key (or set it to false)";

/// The default `sockjs_url`: the sockjs-client release the iframe page
/// bootstraps (it must match the version the pages load).
pub const DEFAULT_SOCKJS_URL: &str =
    "https://cdn.jsdelivr.net/npm/sockjs-client@1.6.1/dist/sockjs.min.js";

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
    /// What each channel's history keeps (`[history]`; off by default).
    pub history: crate::history::HistoryLimits,
    pub log_level: Level,
    pub access_log: bool,
    pub forwarding: Forwarding,
    /// TLS listeners (`listen_tls`); empty: none.
    pub listen_tls: Vec<SocketAddr>,
    /// Their certificates; `Some` exactly when `listen_tls` is not empty.
    pub tls: Option<TlsCerts>,
    /// Reload the certificates when their directory changes, as Pushpin
    /// does with `runner/certs` (set by `--pushpin-config`; otherwise
    /// SIGHUP and the control socket's `reload` do it).
    pub tls_watch: bool,
    /// `--ready-file`: where to report the bound addresses once every core
    /// accepts (`server::run`).
    pub ready_file: Option<PathBuf>,
    /// The access log names the client's address (Pushpin's `log_from`).
    pub access_log_client: bool,
    /// The access log names the client's User-Agent (`log_user_agent`).
    pub access_log_user_agent: bool,
    /// ZeroMQ interfaces compatible with Pushpin's (`[zmq]`).
    pub zmq: Zmq,
    /// Put before Pushpin's metric names in /metrics (Pushpin's
    /// `prometheus_prefix`).
    pub metrics_pushpin_prefix: String,
    /// The broker that joins this node to others; `None`: runs alone.
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// Automatic cross-origin on every HTTP request, as if each route had
    /// `aco` (Pushpin's `auto_cross_origin`).
    pub auto_cross_origin: bool,
    /// The script the SockJS iframe page loads (Pushpin's `sockjs_url`).
    pub sockjs_url: String,
    /// How client sockets are read and written (`data_path`).
    pub data_path: DataPath,
}

/// How client connections' sockets are read and written (`data_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPath {
    /// glommio's `TcpStream`: a readiness poll, then a `recv`/`send`.
    #[default]
    Glommio,
    /// corepin's own per-core io_uring (`src/uring`): multishot receive
    /// into provided buffers, sends batched per loop turn.
    Uring,
}

impl DataPath {
    pub fn parse(field: &str, v: &str) -> Result<DataPath, ConfigError> {
        match v {
            "glommio" => Ok(DataPath::Glommio),
            "uring" => Ok(DataPath::Uring),
            _ => Err(ConfigError(format!(
                "{field}: '{}' is not a data path (glommio or uring)",
                v.escape_debug()
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DataPath::Glommio => "glommio",
            DataPath::Uring => "uring",
        }
    }
}

/// The encoding of the ZeroMQ stats socket.
pub use crate::codec::zmqmsg::StatsFormat;

/// `[zmq]`: Pushpin's ZeroMQ interfaces. A spec is `tcp://HOST:PORT` or
/// `ipc://PATH`; an empty one turns its socket off.
#[derive(Debug, Clone, PartialEq)]
pub struct Zmq {
    /// PULL socket (bound) taking one item per message.
    pub push_in_spec: Option<String>,
    /// SUB socket taking (channel, item) messages; bound, or connected to
    /// publishers' PUB sockets when `push_in_sub_connect`.
    pub push_in_sub_specs: Vec<String>,
    pub push_in_sub_connect: bool,
    /// ROUTER socket (bound) answering commands (REQ or DEALER clients).
    pub command_spec: Option<String>,
    /// PUB socket (bound) writing stats messages.
    pub stats_spec: Option<String>,
    pub stats_format: StatsFormat,
    /// Seconds between `report` messages; 0: none.
    pub stats_report_interval: u64,
    /// The `ttl` of `sub` messages, which are sent again every 3/4 of it.
    pub stats_subscription_ttl: u64,
    /// `conn` messages for every request and WebSocket (Pushpin's
    /// `stats_connection_send`, on by default).
    pub stats_connection_send: bool,
    /// The `ttl` of `conn` messages, which are sent again every 3/4 of it.
    pub stats_connection_ttl: u64,
    /// Seconds a channel's long-poll subscription outlives its last
    /// long-poll (so clients polling again keep it).
    pub subscription_linger: u64,
    /// Permissions given to the socket files of bound `ipc://` endpoints
    /// (Pushpin's `ipc_file_mode`); `None`: as ZeroMQ makes them.
    pub ipc_file_mode: Option<u32>,
}

impl Default for Zmq {
    fn default() -> Self {
        Zmq {
            push_in_spec: None,
            push_in_sub_specs: Vec::new(),
            push_in_sub_connect: false,
            command_spec: None,
            stats_spec: None,
            stats_format: StatsFormat::TnetString,
            stats_report_interval: 10,
            stats_subscription_ttl: 60,
            stats_connection_send: true,
            stats_connection_ttl: 120,
            subscription_linger: 60,
            ipc_file_mode: None,
        }
    }
}

impl Zmq {
    /// Whether any socket is configured.
    pub fn enabled(&self) -> bool {
        self.push_in_spec.is_some()
            || !self.push_in_sub_specs.is_empty()
            || self.command_spec.is_some()
            || self.stats_spec.is_some()
    }
}

/// A ZeroMQ endpoint as Pushpin writes it: `tcp://HOST:PORT` (`*` for
/// every address when bound) or `ipc://PATH`.
pub fn zmq_spec(field: &str, s: &str) -> Result<String, ConfigError> {
    if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return fail(
            field,
            format!("'{}' holds a space or control character", s.escape_debug()),
        );
    }
    if let Some(rest) = s.strip_prefix("tcp://") {
        // `*` as the port: bind a free one.
        let ok = rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && (p == "*" || p.parse::<u16>().is_ok()));
        if !ok {
            return fail(field, format!("'{s}' is not tcp://HOST:PORT"));
        }
        return Ok(s.to_string());
    }
    if let Some(path) = s.strip_prefix("ipc://") {
        if path.is_empty() {
            return fail(field, format!("'{s}' names no path"));
        }
        return Ok(s.to_string());
    }
    fail(
        field,
        format!("'{s}' is not a ZeroMQ endpoint corepin serves (tcp://HOST:PORT or ipc://PATH)"),
    )
}

fn validate_zmq(z: FileZmq) -> Result<Zmq, ConfigError> {
    let one = |field: &str, v: Option<String>| -> Result<Option<String>, ConfigError> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => zmq_spec(field, s).map(Some),
        }
    };
    let d = Zmq::default();
    let stats_format = match z.stats_format.as_deref().unwrap_or("tnetstring") {
        "tnetstring" => StatsFormat::TnetString,
        "json" => StatsFormat::Json,
        other => {
            return fail(
                "zmq.stats_format",
                format!("'{other}' is not tnetstring or json"),
            )
        }
    };
    let ttl = z.stats_subscription_ttl.unwrap_or(d.stats_subscription_ttl);
    if !(1..=86_400).contains(&ttl) {
        return fail(
            "zmq.stats_subscription_ttl",
            format!("{ttl} is not 1-86400"),
        );
    }
    let conn_ttl = z.stats_connection_ttl.unwrap_or(d.stats_connection_ttl);
    if !(1..=86_400).contains(&conn_ttl) {
        return fail(
            "zmq.stats_connection_ttl",
            format!("{conn_ttl} is not 1-86400"),
        );
    }
    let report = z.stats_report_interval.unwrap_or(d.stats_report_interval);
    if report > 86_400 {
        return fail(
            "zmq.stats_report_interval",
            format!("{report} is more than 86400"),
        );
    }
    let linger = z.subscription_linger.unwrap_or(d.subscription_linger);
    if linger > 86_400 {
        return fail(
            "zmq.subscription_linger",
            format!("{linger} is more than 86400"),
        );
    }
    let ipc_file_mode = match z.ipc_file_mode.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(m) => match u32::from_str_radix(m, 8) {
            Ok(mode) if mode <= 0o777 => Some(mode),
            _ => {
                return fail(
                    "zmq.ipc_file_mode",
                    format!("'{m}' is not an octal file mode (such as 660)"),
                )
            }
        },
    };
    Ok(Zmq {
        ipc_file_mode,
        push_in_spec: one("zmq.push_in_spec", z.push_in_spec)?,
        push_in_sub_specs: z
            .push_in_sub_specs
            .unwrap_or_default()
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| zmq_spec("zmq.push_in_sub_specs", s))
            .collect::<Result<_, _>>()?,
        push_in_sub_connect: z.push_in_sub_connect.unwrap_or(false),
        command_spec: one("zmq.command_spec", z.command_spec)?,
        stats_spec: one("zmq.stats_spec", z.stats_spec)?,
        stats_format,
        stats_report_interval: report,
        stats_subscription_ttl: ttl,
        stats_connection_send: z.stats_connection_send.unwrap_or(d.stats_connection_send),
        stats_connection_ttl: conn_ttl,
        subscription_linger: linger,
    })
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
    // TLS (issue 15).
    pub listen_tls: Vec<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_certs_dir: Option<String>,
    pub ready_file: Option<String>,
    // Cluster (issue 17).
    pub cluster: Vec<String>,
    pub node: Option<String>,
    /// `--history-messages N`.
    pub history_messages: Option<usize>,
    // io_uring data path (issue 16).
    pub data_path: Option<String>,
}

/// A configuration error: one line naming the field or flag.
pub use crate::codec::Invalid as ConfigError;

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

/// The WebSocket-over-HTTP keep-alive minimum Pushpin applies, and the
/// default of `timeouts.ws_keep_alive_min`.
pub const WS_KEEP_ALIVE_MIN: f64 = 20.0;
/// The lowest `timeouts.ws_keep_alive_min` accepted: a backend may not
/// turn a session into a request a second or faster, whatever it asks.
const WS_KEEP_ALIVE_FLOOR: f64 = 1.0;

/// `timeouts.ws_keep_alive_min`: whole or fractional seconds from
/// `WS_KEEP_ALIVE_FLOOR` to an hour.
fn keep_alive_min(v: Option<f64>) -> Result<Duration, ConfigError> {
    let field = "timeouts.ws_keep_alive_min";
    let v = v.unwrap_or(WS_KEEP_ALIVE_MIN);
    if !(WS_KEEP_ALIVE_FLOOR..=3600.0).contains(&v) {
        return fail(
            field,
            format!("{v} is outside {WS_KEEP_ALIVE_FLOOR}..=3600 seconds"),
        );
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
fn parse_routes_file(path: &std::path::Path) -> Result<Routes, ConfigError> {
    let text = std::fs::read_to_string(path)
        .or_else(|e| fail("routes_file", format!("{}: {e}", path.display())))?;
    // `sig_key=file:` paths in a routes file are relative to its folder.
    let base = crate::route::base_dir_of(path);
    Routes::parse_in(text.lines(), &base)
        .or_else(|e| fail("routes_file", format!("{}: {e}", path.display())))
}

/// Reads and validates the routes from their source. Start-up and every
/// reload (SIGHUP, the control socket's `reload`) run this one function,
/// so a reload refuses whatever start-up would refuse (a bad `sig_key`
/// included: keys are decoded as each line is parsed).
pub fn load_routes(source: &RoutesSource) -> Result<Routes, ConfigError> {
    let (routes, field) = match source {
        RoutesSource::Flags(lines) => {
            let r = Routes::parse_indexed(lines.iter().map(String::as_str)).map_err(|(i, e)| {
                let line = lines.get(i).map_or("", String::as_str);
                ConfigError(format!("--route '{}': {e}", line.escape_debug()))
            })?;
            (r, "--route".to_string())
        }
        RoutesSource::Inline(lines) => {
            let r = Routes::parse_indexed(lines.iter().map(String::as_str))
                .map_err(|(i, e)| ConfigError(format!("routes[{i}]: {e}")))?;
            (r, "routes".to_string())
        }
        RoutesSource::File(path) => (
            parse_routes_file(path)?,
            format!("routes_file: {}", path.display()),
        ),
    };
    if routes.is_empty() {
        return fail(&field, "no route is defined");
    }
    Ok(routes)
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Parses and validates TOML text with overrides applied; `origin`
    /// names the file in errors.
    pub fn from_toml(text: &str, origin: &str, ov: &Overrides) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let msg = e.message().replace('\n', " ");
            ConfigError(match line {
                Some(l) => format!("{origin}: line {l}: {msg}"),
                None => format!("{origin}: {msg}"),
            })
        })?;
        // Errors about the file's fields name the file; those about a
        // command-line flag name the flag alone.
        Self::validate(file, ov).map_err(|e| {
            if e.0.starts_with("--") {
                e
            } else {
                ConfigError(format!("{origin}: {}", e.0))
            }
        })
    }

    /// Validates settings given as a TOML table (what `--pushpin-config`
    /// builds from a pushpin.conf) with overrides; `origin` names where
    /// they came from in errors.
    pub fn from_table(
        table: toml::Table,
        origin: &str,
        ov: &Overrides,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("{origin}: {}", e.message())))?;
        Self::validate(file, ov).map_err(|e| {
            if e.0.starts_with("--") {
                e
            } else {
                ConfigError(format!("{origin}: {}", e.0))
            }
        })
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
        // A TLS listener alone is enough (Pushpin's https_ports without an
        // http_port).
        let tls_listens =
            !ov.listen_tls.is_empty() || f.listen_tls.as_ref().is_some_and(|l| !l.is_empty());
        if listen.is_empty() && !tls_listens {
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
        // 0 means every core, from the file and from --workers alike.
        let (workers, field) = match ov.workers {
            Some(n) => (n, "--workers"),
            None => (f.workers.unwrap_or(0), "workers"),
        };
        if workers > 4096 {
            return fail(field, format!("{workers} is more than 4096"));
        }
        let routes_source = if !ov.routes.is_empty() {
            RoutesSource::Flags(ov.routes.clone())
        } else {
            match (f.routes, f.routes_file) {
                (Some(_), Some(_)) => {
                    return fail("routes_file", "give either routes or routes_file, not both")
                }
                (_, Some(path)) => RoutesSource::File(PathBuf::from(path)),
                (lines, None) => {
                    RoutesSource::Inline(lines.unwrap_or_else(|| vec!["* test".into()]))
                }
            }
        };
        let routes = load_routes(&routes_source)?;
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
            max_connections: ranged(
                "limits.max_connections",
                l.max_connections,
                0,
                0,
                100_000_000,
            )?,
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
            ws_keep_alive_min: keep_alive_min(t.ws_keep_alive_min)?,
        };
        let max_idle_per_target = ranged(
            "upstream.max_idle_per_target",
            f.upstream.max_idle_per_target,
            64,
            0,
            100_000,
        )?;
        let g = f.grip;
        // Pushpin signs every request by default, with key "changeme" and
        // issuer "pushpin"; GRIP libraries take a valid Grip-Sig as the
        // sign that a request came through the proxy.
        let sign = g.sign.unwrap_or(true);
        let key_text = g.sig_key.as_deref().unwrap_or(DEFAULT_SIG_KEY);
        if key_text.is_empty() {
            return fail(
                "grip.sig_key",
                "must not be empty (set grip.sign = false to send requests unsigned)",
            );
        }
        let sig_key = if sign {
            let k = crate::jwt::key_bytes(key_text).or_else(|e| fail("grip.sig_key", e))?;
            crate::jwt::check_signing_key(&k).or_else(|e| fail("grip.sig_key", e))?;
            Some(k)
        } else {
            None
        };
        let sig_iss = g.sig_iss.unwrap_or_else(|| DEFAULT_SIG_ISS.into());
        if sign && sig_iss.is_empty() {
            return fail(
                "grip.sig_iss",
                "must not be empty (set grip.sign = false to send requests unsigned)",
            );
        }
        let grip = Grip {
            public_default_key: sig_key.as_deref() == Some(DEFAULT_SIG_KEY.as_bytes()),
            sig_key,
            sig_iss,
            max_channels: ranged("grip.max_channels", g.max_channels, 20, 1, 1000)?,
            subscriber_queue: ranged(
                "grip.subscriber_queue",
                g.subscriber_queue,
                1024,
                1,
                1 << 20,
            )?,
            subscriber_queue_bytes: ranged(
                "grip.subscriber_queue_bytes",
                g.subscriber_queue_bytes,
                1 << 20,
                1024,
                1 << 30,
            )?,
            update_on_first_subscription: g.update_on_first_subscription.unwrap_or(false),
        };
        let history = {
            let h = &f.history;
            let (messages, field) = match ov.history_messages {
                Some(n) => (Some(n), "--history-messages"),
                None => (h.messages, "history.messages"),
            };
            let seconds = h.seconds.unwrap_or(3600);
            if seconds > 7 * 86400 {
                return fail(
                    "history.seconds",
                    format!("{seconds} is more than 604800 (7 days)"),
                );
            }
            crate::history::HistoryLimits {
                messages: ranged(field, messages, 0, 0, 100_000)?,
                max_age: (seconds > 0).then(|| Duration::from_secs(seconds)),
                max_bytes: ranged("history.max_bytes", h.max_bytes, 1 << 20, 1024, 1 << 30)?,
            }
        };
        let p = f.publish;
        let auth = match p.auth.as_deref().unwrap_or("none") {
            "none" => PublishAuth::None,
            "bearer" => {
                let key = p.key.as_deref().unwrap_or("");
                if key.is_empty() {
                    return fail("publish.key", "auth = \"bearer\" needs a key");
                }
                PublishAuth::Bearer {
                    key: crate::jwt::key_bytes(key)
                        .and_then(|k| crate::jwt::check_verifying_key(&k).map(|()| k))
                        .or_else(|e| fail("publish.key", e))?,
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
        let fw = f.forwarding;
        let forwarding = Forwarding {
            trusted_proxies: fw
                .trusted_proxies
                .unwrap_or_default()
                .iter()
                .map(|t| Cidr::parse("forwarding.trusted_proxies", t))
                .collect::<Result<_, _>>()?,
            xff: parse_xff_rule(
                "forwarding.x_forwarded_for",
                fw.x_forwarded_for.as_deref().unwrap_or("truncate:0,append"),
            )?,
            xff_trusted: parse_xff_rule(
                "forwarding.x_forwarded_for_trusted",
                fw.x_forwarded_for_trusted.as_deref().unwrap_or("append"),
            )?,
            accept_x_forwarded_protocol: fw.accept_x_forwarded_protocol.unwrap_or(false),
        };
        let (listen_tls, tls) = validate_tls(f.listen_tls, f.tls, ov, &listen)?;
        let zmq = validate_zmq(f.zmq)?;
        let metrics_pushpin_prefix = f.metrics.pushpin_prefix.unwrap_or_default();
        // A Prometheus metric name: [a-zA-Z_:][a-zA-Z0-9_:]*.
        let name_ok = metrics_pushpin_prefix.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
        });
        if !name_ok {
            return fail(
                "metrics.pushpin_prefix",
                format!(
                    "'{}' cannot start a Prometheus metric name (letters, digits, '_' and ':', not starting with a digit)",
                    metrics_pushpin_prefix.escape_debug()
                ),
            );
        }
        let fc = f.cluster;
        let cluster = crate::cluster::settings::validate(crate::cluster::settings::Given {
            brokers: if ov.cluster.is_empty() {
                ("cluster.brokers".into(), fc.brokers.unwrap_or_default())
            } else {
                ("--cluster".into(), ov.cluster.clone())
            },
            prefix: fc.prefix,
            node: match (&ov.node, fc.node) {
                (Some(n), _) => Some(("--node".into(), n.clone())),
                (None, Some(n)) => Some(("cluster.node".into(), n)),
                (None, None) => None,
            },
        })
        .map_err(ConfigError)?;
        let sockjs_url = f
            .sockjs_url
            .clone()
            .unwrap_or_else(|| DEFAULT_SOCKJS_URL.to_string());
        if crate::codec::sockjs::iframe_page(&sockjs_url).is_none() || sockjs_url.is_empty() {
            return Err(ConfigError(format!(
                "sockjs_url {sockjs_url:?} cannot go into the iframe page (no quotes, <, >, backslashes or control characters)"
            )));
        }
        let data_path = match (&ov.data_path, f.data_path.as_deref()) {
            (Some(v), _) => DataPath::parse("--data-path", v)?,
            (None, Some(v)) => DataPath::parse("data_path", v)?,
            (None, None) => DataPath::default(),
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
            history,
            log_level,
            access_log: f.log.access_log.unwrap_or(true),
            forwarding,
            listen_tls,
            tls,
            tls_watch: false,
            ready_file: match ov.ready_file.as_deref() {
                Some("") => return fail("--ready-file", "a file path is needed"),
                p => p.map(PathBuf::from),
            },
            access_log_client: f.log.access_log_client.unwrap_or(true),
            access_log_user_agent: f.log.access_log_user_agent.unwrap_or(false),
            zmq,
            metrics_pushpin_prefix,
            cluster,
            auto_cross_origin: f.auto_cross_origin.unwrap_or(false),
            sockjs_url,
            data_path,
        })
    }
}

/// `listen_tls` and `[tls]` (or their flags) into addresses and a
/// certificate source; each needs the other.
fn validate_tls(
    listen_tls: Option<Vec<String>>,
    t: FileTls,
    ov: &Overrides,
    listen: &[SocketAddr],
) -> Result<(Vec<SocketAddr>, Option<TlsCerts>), ConfigError> {
    let (listen_field, addrs) = if ov.listen_tls.is_empty() {
        ("listen_tls", listen_tls.unwrap_or_default())
    } else {
        ("--listen-tls", ov.listen_tls.clone())
    };
    let listen_tls = addrs
        .iter()
        .map(|a| parse_addr(listen_field, a))
        .collect::<Result<Vec<_>, _>>()?;
    for a in &listen_tls {
        if a.port() != 0 && listen.contains(a) {
            return fail(
                listen_field,
                format!("{a} is also a plaintext listen address"),
            );
        }
    }
    if t.ktls == Some(true) {
        return fail("tls.ktls", KTLS_REFUSAL);
    }
    let set = |v: Option<String>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    let from_flags = ov.tls_cert.is_some() || ov.tls_key.is_some() || ov.tls_certs_dir.is_some();
    let (cert, key, dir, names) = if from_flags {
        (
            set(ov.tls_cert.clone()),
            set(ov.tls_key.clone()),
            set(ov.tls_certs_dir.clone()),
            ["--tls-cert", "--tls-key", "--tls-certs-dir"],
        )
    } else {
        (
            set(t.cert),
            set(t.key),
            set(t.certs_dir),
            ["tls.cert", "tls.key", "tls.certs_dir"],
        )
    };
    let [cert_f, key_f, dir_f] = names;
    let certs = match (cert, key, dir) {
        (None, None, None) => None,
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return fail(
                dir_f,
                format!("give either {cert_f} and {key_f} or {dir_f}, not both"),
            )
        }
        (Some(_), None, None) => return fail(key_f, format!("{cert_f} needs {key_f}")),
        (None, Some(_), None) => return fail(cert_f, format!("{key_f} needs {cert_f}")),
        (Some(cert), Some(key), None) => Some(TlsCerts::Pair { cert, key }),
        (None, None, Some(dir)) => Some(TlsCerts::Dir(dir)),
    };
    match (&certs, listen_tls.is_empty()) {
        (None, false) => fail(
            listen_field,
            if listen_field.starts_with("--") {
                "TLS listeners need certificates: set --tls-cert and --tls-key, or --tls-certs-dir"
            } else {
                "TLS listeners need certificates: set tls.cert and tls.key, or tls.certs_dir"
            },
        ),
        (Some(c), true) => fail(
            if matches!(c, TlsCerts::Dir(_)) {
                dir_f
            } else {
                cert_f
            },
            "certificates are set but no listen_tls (--listen-tls) address serves them",
        ),
        _ => Ok((listen_tls, certs)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_from_the_file_and_the_flags() {
        let none = Config::from_toml("", "f", &Overrides::default()).expect("valid");
        assert_eq!(none.cluster, None, "alone unless a broker is given");
        let text = "[cluster]\nbrokers = [\"redis://10.0.0.1:6380\"]\nprefix = \"prod\"\nnode = \"web-2\"\n";
        let c = Config::from_toml(text, "f", &Overrides::default())
            .expect("valid")
            .cluster
            .expect("a cluster");
        assert_eq!(c.kind, crate::cluster::BrokerKind::Redis);
        assert_eq!((c.prefix.as_str(), c.node.as_str()), ("prod", "web-2"));
        let ov = Overrides {
            cluster: vec!["nats://127.0.0.1:4222".into()],
            node: Some("n9".into()),
            ..Overrides::default()
        };
        let c = Config::from_toml(text, "f", &ov)
            .expect("valid")
            .cluster
            .expect("a cluster");
        assert_eq!(c.kind, crate::cluster::BrokerKind::Nats, "--cluster wins");
        assert_eq!((c.prefix.as_str(), c.node.as_str()), ("prod", "n9"));
        for (text, ov, why) in [
            (
                "[cluster]\nbrokers = [\"http://x\"]\n",
                Overrides::default(),
                "f: cluster.brokers: 'http://x'",
            ),
            (
                "[cluster]\nnode = \"a\"\n",
                Overrides::default(),
                "f: cluster.node: a node name needs a broker",
            ),
            (
                "[cluster]\nbogus = 1\n",
                Overrides::default(),
                "unknown field `bogus`",
            ),
            (
                "",
                Overrides {
                    cluster: vec!["redis://h:1/3".into()],
                    ..Overrides::default()
                },
                "--cluster: 'redis://h:1/3'",
            ),
        ] {
            let e = Config::from_toml(text, "f", &ov).expect_err(why).0;
            assert!(e.contains(why), "{why}: {e}");
        }
    }

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
        assert_eq!(c.timeouts.ws_keep_alive_min, Duration::from_secs(20));
        assert_eq!(c.ready_file, None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("lisen = []", "unknown field `lisen`"),
            ("[limits]\nmax_headers = 1000", "limits.max_headers"),
            ("[timeouts]\nclient_idle = -1", "timeouts.client_idle"),
            ("[timeouts]\nbogus = 1", "unknown field `bogus`"),
            (
                "[timeouts]\nws_keep_alive_min = 0.5",
                "timeouts.ws_keep_alive_min: 0.5 is outside 1..=3600",
            ),
            (
                "[timeouts]\nws_keep_alive_min = 3601",
                "timeouts.ws_keep_alive_min: 3601 is outside 1..=3600",
            ),
            (
                "[timeouts]\nws_keep_alive_min = nan",
                "timeouts.ws_keep_alive_min: NaN is outside 1..=3600",
            ),
            ("listen = [\"nope\"]", "listen: 'nope'"),
            (
                "routes = [\"* test\", \"* nothere\"]",
                "t.toml: routes[1]: target 'nothere' is not host:port",
            ),
            (
                "routes = [\"*,sig_key=base64:!! a:1\"]",
                "t.toml: routes[0]: sig_key: key after 'base64:' is not valid base64",
            ),
            ("routes = []", "t.toml: routes: no route is defined"),
            ("listen = [\"nope\"]", "t.toml: listen: 'nope'"),
            (
                "workers = 1\nlisen = []",
                "t.toml: line 2: unknown field `lisen`",
            ),
            (
                "[timeouts]\nbogus = 1",
                "t.toml: line 2: unknown field `bogus`",
            ),
            (
                "\n\n[limits]\n\nbogus = 1",
                "t.toml: line 5: unknown field `bogus`",
            ),
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
            RoutesSource::Flags(vec!["* 127.0.0.1:9".into()])
        );
        let bad = Overrides {
            routes: vec!["* test".into(), "* x".into()],
            ..Overrides::default()
        };
        assert_eq!(
            Config::default_with(&bad).expect_err("bad").0,
            "--route '* x': target 'x' is not host:port or 'test'"
        );
    }

    #[test]
    fn forwarding_trusts_no_client_by_default() {
        let c = Config::default_with(&Overrides::default()).expect("valid");
        let f = &c.forwarding;
        assert!(f.trusted_proxies.is_empty());
        assert_eq!(
            f.xff,
            XffRule {
                truncate: Some(0),
                append: true
            }
        );
        assert!(!f.accept_x_forwarded_protocol);
        assert!(!f.trusts("127.0.0.1".parse().unwrap()));
        let peer = b"9.9.9.9";
        assert_eq!(
            f.xff.apply(vec![b"1.1.1.1", b"2.2.2.2"], peer),
            vec![&peer[..]]
        );
        assert_eq!(
            f.xff_trusted.apply(vec![b"1.1.1.1"], peer),
            vec![&b"1.1.1.1"[..], peer]
        );
    }

    #[test]
    fn history_settings_ranges_and_the_flag() {
        let ok = |text: &str, ov: &Overrides| {
            Config::from_toml(text, "t.toml", ov)
                .expect("valid")
                .history
        };
        let d = ok("", &Overrides::default());
        assert_eq!(d, crate::history::HistoryLimits::default());
        assert_eq!(d.messages, 0, "off by default");
        let h = ok(
            "[history]\nmessages = 50\nseconds = 0\nmax_bytes = 4096",
            &Overrides::default(),
        );
        assert_eq!((h.messages, h.max_age, h.max_bytes), (50, None, 4096));
        let flag = Overrides {
            history_messages: Some(7),
            ..Overrides::default()
        };
        assert_eq!(ok("[history]\nmessages = 50", &flag).messages, 7);
        for (text, ov, want) in [
            (
                "[history]\nmessages = 100001",
                Overrides::default(),
                "history.messages: 100001 is outside 0..=100000",
            ),
            (
                "",
                Overrides {
                    history_messages: Some(200_000),
                    ..Overrides::default()
                },
                "--history-messages: 200000 is outside 0..=100000",
            ),
            (
                "[history]\nseconds = 604801",
                Overrides::default(),
                "history.seconds: 604801 is more than 604800 (7 days)",
            ),
            (
                "[history]\nmax_bytes = 10",
                Overrides::default(),
                "history.max_bytes: 10 is outside 1024..=1073741824",
            ),
            (
                "[history]\nchannels = 3",
                Overrides::default(),
                "unknown field `channels`",
            ),
        ] {
            let e = Config::from_toml(text, "t.toml", &ov).expect_err(text);
            assert!(e.0.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn forwarding_rules_and_ranges() {
        let text = "[forwarding]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\", \"192.168.1.7\", \"fd00::/8\"]\nx_forwarded_for = \"\"\nx_forwarded_for_trusted = \" truncate:1 , append \"\naccept_x_forwarded_protocol = true";
        let c = Config::from_toml(text, "t.toml", &Overrides::default()).expect("valid");
        let f = &c.forwarding;
        for yes in [
            "10.1.2.3",
            "::1",
            "192.168.1.7",
            "::ffff:10.0.0.1",
            "fd12::1",
        ] {
            assert!(f.trusts(yes.parse().unwrap()), "{yes}");
        }
        for no in ["11.0.0.1", "192.168.1.8", "::2", "127.0.0.1", "fe80::1"] {
            assert!(!f.trusts(no.parse().unwrap()), "{no}");
        }
        assert_eq!(
            f.xff,
            XffRule {
                truncate: None,
                append: false
            }
        );
        assert_eq!(f.xff.apply(vec![b"1.1.1.1"], b"p"), vec![&b"1.1.1.1"[..]]);
        assert_eq!(
            f.xff_trusted.apply(vec![b"a", b"b", b"c"], b"p"),
            vec![&b"c"[..], &b"p"[..]]
        );
        assert!(f.accept_x_forwarded_protocol);
        let all = "[forwarding]\ntrusted_proxies = [\"0.0.0.0/0\", \"::/0\"]";
        let c = Config::from_toml(all, "t.toml", &Overrides::default()).expect("valid");
        assert!(c.forwarding.trusts("203.0.113.9".parse().unwrap()));
        assert!(c.forwarding.trusts("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn forwarding_errors_name_the_field_and_value() {
        let cases = [
            (
                "x_forwarded_for = \"append,prepend\"",
                "forwarding.x_forwarded_for: 'prepend'",
            ),
            (
                "x_forwarded_for = \"truncate:x\"",
                "forwarding.x_forwarded_for: 'truncate:x'",
            ),
            ("x_forwarded_for = \"truncate:1000\"", "0 to 100"),
            ("x_forwarded_for = \"append,append\"", "given twice"),
            (
                "x_forwarded_for_trusted = \"keep\"",
                "forwarding.x_forwarded_for_trusted: 'keep'",
            ),
            (
                "trusted_proxies = [\"10.0.0.0/33\"]",
                "forwarding.trusted_proxies: '10.0.0.0/33'",
            ),
            (
                "trusted_proxies = [\"proxy.local\"]",
                "forwarding.trusted_proxies: 'proxy.local'",
            ),
            ("trusted_proxies = [\"10.0.0.1/8\"]", "past the /8 prefix"),
            ("accept_x_forwarded_protocol = \"yes\"", "line 2"),
            (
                "x_forwarded_host = true",
                "unknown field `x_forwarded_host`",
            ),
        ];
        for (body, needle) in cases {
            let text = format!("[forwarding]\n{body}");
            let e = Config::from_toml(&text, "t.toml", &Overrides::default()).expect_err(body);
            assert!(e.0.contains(needle), "{body:?} gave {e}");
        }
    }

    #[test]
    fn tls_listeners_and_certificates() {
        let ov = Overrides::default();
        let c = Config::from_toml(
            "listen_tls = [\"127.0.0.1:0\"]\n[tls]\ncert = \"a.crt\"\nkey = \"a.key\"\nktls = false",
            "t.toml",
            &ov,
        )
        .expect("valid");
        assert_eq!(
            c.listen_tls,
            vec!["127.0.0.1:0".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.tls,
            Some(TlsCerts::Pair {
                cert: "a.crt".into(),
                key: "a.key".into()
            })
        );
        let c = Config::from_toml(
            "listen_tls = [\"127.0.0.1:0\"]\n[tls]\ncerts_dir = \"/etc/certs\"",
            "t.toml",
            &ov,
        )
        .expect("valid");
        assert_eq!(c.tls, Some(TlsCerts::Dir("/etc/certs".into())));
        // Flags replace the file's certificate source as a whole.
        let flags = Overrides {
            listen_tls: vec!["127.0.0.1:0".into(), "[::1]:0".into()],
            tls_certs_dir: Some("d".into()),
            ..Overrides::default()
        };
        let c =
            Config::from_toml("[tls]\ncert = \"a\"\nkey = \"b\"", "t.toml", &flags).expect("valid");
        assert_eq!(c.listen_tls.len(), 2);
        assert_eq!(c.tls, Some(TlsCerts::Dir("d".into())));
        // TLS listeners alone are enough; no listener at all is not.
        let c = Config::from_toml(
            "listen = []\nlisten_tls = [\"127.0.0.1:0\"]\n[tls]\ncerts_dir = \"c\"",
            "t.toml",
            &ov,
        )
        .expect("TLS only");
        assert!(c.listen.is_empty() && c.listen_tls.len() == 1);
        let e = Config::from_toml("listen = []", "t.toml", &ov).expect_err("none");
        assert!(
            e.0.contains("listen: at least one address is needed"),
            "{e}"
        );
    }

    #[test]
    fn tls_errors_name_the_field() {
        let cases = [
            ("listen_tls = [\"127.0.0.1:0\"]", "listen_tls: TLS listeners need certificates"),
            ("[tls]\ncert = \"a\"\nkey = \"b\"", "tls.cert: certificates are set but no listen_tls"),
            ("[tls]\ncerts_dir = \"d\"", "tls.certs_dir: certificates are set"),
            ("listen_tls = [\"x\"]", "listen_tls: 'x'"),
            ("listen_tls = [\"127.0.0.1:0\"]\n[tls]\ncert = \"a\"", "tls.key: tls.cert needs tls.key"),
            ("listen_tls = [\"127.0.0.1:0\"]\n[tls]\nkey = \"a\"", "tls.cert: tls.key needs tls.cert"),
            (
                "listen_tls = [\"127.0.0.1:0\"]\n[tls]\ncert = \"a\"\nkey = \"b\"\ncerts_dir = \"d\"",
                "tls.certs_dir: give either tls.cert and tls.key or tls.certs_dir",
            ),
            ("[tls]\nktls = true", "tls.ktls: kernel TLS offload is not supported"),
            ("[tls]\nsession_cache = true", "unknown field `session_cache`"),
            (
                "listen = [\"127.0.0.1:8443\"]\nlisten_tls = [\"127.0.0.1:8443\"]\n[tls]\ncerts_dir = \"d\"",
                "listen_tls: 127.0.0.1:8443 is also a plaintext listen address",
            ),
        ];
        for (text, needle) in cases {
            let e = Config::from_toml(text, "t.toml", &Overrides::default()).expect_err(text);
            assert!(e.0.contains(needle), "{text:?} gave {e}");
            assert!(!e.0.contains('\n'), "one line: {e}");
        }
        let flags = [
            (
                Overrides {
                    listen_tls: vec!["127.0.0.1:0".into()],
                    tls_cert: Some("a".into()),
                    ..Overrides::default()
                },
                "--tls-key: --tls-cert needs --tls-key",
            ),
            (
                Overrides {
                    listen_tls: vec!["nope".into()],
                    ..Overrides::default()
                },
                "--listen-tls: 'nope'",
            ),
            (
                Overrides {
                    listen_tls: vec!["127.0.0.1:0".into()],
                    ..Overrides::default()
                },
                "--listen-tls: TLS listeners need certificates: set --tls-cert and --tls-key, or --tls-certs-dir",
            ),
        ];
        for (ov, needle) in flags {
            let e = Config::default_with(&ov).expect_err(needle);
            assert!(e.0.contains(needle), "{ov:?} gave {e}");
        }
    }
}
