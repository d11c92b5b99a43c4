//! `corepin run --pushpin-config FILE`: Pushpin's pushpin.conf read as
//! Pushpin reads it (Qt's INI format; `[global] include`; `{libdir}`,
//! `{rundir}` and `{ipc_prefix}` in values; `port_offset` added to the
//! publish port and to `tcp://` specs; `routesfile` and `sig_key=file:`
//! relative to the file's folder), turned into corepin's settings
//! (`https_ports` served with the certificates of `runner/certs` beside
//! the file, as Pushpin's runner hands them to its connection manager;
//! see `pushpin_certs`). What
//! corepin cannot do yet is collected and reported in one warning line;
//! the settings that only wire Pushpin's own processes together are
//! recognised and need nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, Overrides};

/// Pushpin's compiled-in `libdir` in Debian's package.
pub const DEFAULT_LIBDIR: &str = "/usr/lib/pushpin";
/// Longest pushpin.conf read.
const MAX_FILE: u64 = 1 << 20;

/// A value as Qt reads it: a string, or a list when it holds an unquoted
/// comma.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    List(Vec<String>),
}

impl Value {
    /// The value as one string (a list joined with `,`, as the settings
    /// that take a list are read back).
    pub fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::List(v) => v.join(","),
        }
    }

    /// The value as a list (a string is a list of one; an empty string a
    /// list of none).
    pub fn list(&self) -> Vec<String> {
        match self {
            Value::Str(s) if s.is_empty() => Vec::new(),
            Value::Str(s) => vec![s.clone()],
            Value::List(v) => v.clone(),
        }
    }
}

/// A pushpin.conf error: which file and line, and what.
fn fail<T>(msg: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(msg.to_string()))
}

/// Unquotes one element: `"..."` with `\\`, `\"`, `\n`, `\r`, `\t` (Qt's
/// other escapes are refused rather than guessed), spaces around trimmed.
fn unquote(s: &str) -> Result<String, String> {
    let s = s.trim_matches([' ', '\t']);
    let mut out = String::new();
    let mut chars = s.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(o) => return Err(format!("unsupported escape \\{o}")),
                None => return Err("a value ends with '\\'".into()),
            },
            c => out.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    Ok(out)
}

/// Splits a raw value at unquoted commas; an unquoted `;` starts a
/// comment, as in Qt.
fn split_value(raw: &str) -> Result<Value, String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in raw.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ';' && !quoted {
            break;
        } else if c == ',' && !quoted {
            parts.push(String::new());
            continue;
        }
        if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    let parts = parts
        .iter()
        .map(|p| unquote(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if parts.len() == 1 {
        Value::Str(parts.into_iter().next().unwrap_or_default())
    } else {
        Value::List(parts)
    })
}

/// Parses INI text into `section/key -> value` (keys of `[General]` or
/// before any section have no `section/`). `#` and `;` lines are comments.
/// A later key replaces an earlier one, as in Qt.
pub fn parse_ini(text: &str, origin: &str) -> Result<BTreeMap<String, Value>, ConfigError> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some((name, _)) = rest.split_once(']') else {
                return fail(format!("{origin}: line {n}: '[' without ']'"));
            };
            let name = name.trim();
            if name.is_empty() || name.contains('/') {
                return fail(format!(
                    "{origin}: line {n}: '[{name}]' is not a section name"
                ));
            }
            section = if name.eq_ignore_ascii_case("general") {
                String::new()
            } else {
                format!("{name}/")
            };
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return fail(format!(
                "{origin}: line {n}: '{}' is not key=value",
                line.trim_end().escape_debug()
            ));
        };
        let key = key.trim_end_matches([' ', '\t']);
        if key.is_empty() {
            return fail(format!("{origin}: line {n}: empty key"));
        }
        if key.contains('/') {
            return fail(format!(
                "{origin}: line {n}: key '{key}' holds '/' (Qt reads it as a section separator)"
            ));
        }
        let value = split_value(value)
            .map_err(|e| ConfigError(format!("{origin}: line {n}: {key}: {e}")))?;
        out.insert(format!("{section}{key}"), value);
    }
    Ok(out)
}

/// Reads a file of at most [`MAX_FILE`] bytes.
fn read(path: &Path, what: &str) -> Result<String, ConfigError> {
    let too_big = std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_FILE);
    if too_big {
        return fail(format!(
            "{what}: {} is larger than {MAX_FILE} bytes",
            path.display()
        ));
    }
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{what}: {}: {e}", path.display())))
}

/// How corepin treats a pushpin.conf key it does not map.
enum Unmapped {
    /// Wiring between Pushpin's own processes (ZeroMQ specs, binaries,
    /// ipc modes): nothing to do in a single process.
    Internal,
    /// Not supported: reported when set to anything but `default` (the
    /// value under which corepin already behaves the same).
    Unsupported {
        default: Option<&'static str>,
        why: &'static str,
    },
}

const STATS: &str =
    "corepin's conn-max messages carry a ttl of 3/2 of the report interval (at least 60 s)";

/// Keys corepin knows but does not map to a setting.
fn kind(key: &str) -> Option<Unmapped> {
    let internal = [
        "global/include",
        "global/libdir",
        "global/ipc_prefix",
        "global/port_offset",
        "global/rundir",
        "runner/rundir",
        "runner/services",
        "runner/condure_bin",
        "runner/mongrel2_bin",
        "runner/m2sh_bin",
        "runner/zurl_bin",
        "proxy/ipc_file_mode",
        "proxy/updates_check",
        "proxy/organization_name",
    ];
    if internal.contains(&key) {
        return Some(Unmapped::Internal);
    }
    // Pushpin's process-to-process specs (`*_spec`, `*_specs`) other than
    // the public ZeroMQ interfaces listed below.
    let public_zmq = [
        "handler/push_in_spec",
        "handler/push_in_sub_spec",
        "handler/push_in_sub_specs",
        "handler/command_spec",
        "handler/stats_spec",
    ];
    if (key.ends_with("_spec") || key.ends_with("_specs")) && !public_zmq.contains(&key) {
        return Some(Unmapped::Internal);
    }
    let u = |default, why| Some(Unmapped::Unsupported { default, why });
    match key {
        // The proxy's report interval only paces its reports to the
        // handler, inside Pushpin.
        "proxy/stats_report_interval" => Some(Unmapped::Internal),
        "proxy/stats_connections_max_ttl" => u(Some("60"), STATS),
        "runner/local_ports" => u(Some(""), "Unix-socket listeners are not supported"),
        "runner/logdir" => u(None, "corepin logs to stdout and stderr"),
        "runner/allow_compression" => u(Some("false"), "corepin does not compress"),
        "proxy/set_x_forwarded_protocol" => u(
            Some("proto-only"),
            "corepin always sends X-Forwarded-Proto (http or https)",
        ),
        "proxy/x_forwarded_for_trusted" => u(
            Some(""),
            "it applies to clients signed with upstream_key, which corepin does not support",
        ),
        "proxy/orig_headers_need_mark" => u(Some(""), "not supported"),
        "proxy/accept_pushpin_route" => {
            u(Some("false"), "the Pushpin-Route header is not supported")
        }
        "proxy/cdn_loop" => u(Some(""), "CDN-Loop is not written"),
        "proxy/upstream_key" => u(Some(""), "chaining GRIP proxies is not supported"),
        "proxy/workers" => u(Some("1"), "corepin runs one worker per core (--workers)"),
        "proxy/max_open_requests" | "handler/prometheus_port" | "proxy/prometheus_port" => u(
            Some(""),
            "not supported (corepin serves /metrics on the publish address)",
        ),
        "handler/push_in_http_max_headers_size" => u(
            Some("10000"),
            "the publish API shares the client head limit (client_buffer_size)",
        ),
        "handler/message_rate" | "handler/message_hwm" => {
            u(None, "corepin does not rate-limit deliveries")
        }
        "handler/message_block_size" => u(Some(""), "corepin does not count blocks"),
        "handler/message_wait" => u(Some("5000"), "corepin waits 5000 ms for out-of-order items"),
        "handler/id_cache_ttl" => u(Some("60"), "corepin remembers item ids for 60 s"),
        "handler/share_all" => u(Some("false"), "not supported"),
        _ => None,
    }
}

/// The settings read from a pushpin.conf.
#[derive(Debug)]
pub struct PushpinConf {
    pub config: Config,
    /// One line naming every setting corepin does not support (with its
    /// value), or `None`.
    pub warning: Option<String>,
}

/// Pushpin's log levels (0 error .. 3 debug, more is more verbose).
fn level(n: u32) -> &'static str {
    match n {
        0 => "error",
        1 => "warn",
        2 => "info",
        _ => "debug",
    }
}

/// `PORT` (every address) or `ADDR:PORT` / `[V6]:PORT`, as the runner reads
/// `http_port`.
fn listen_addr(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.contains(':') {
        let p: u16 = s.parse().map_err(|_| format!("'{s}' is not a port"))?;
        return Ok(format!("0.0.0.0:{p}"));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not ADDR:PORT"))?;
    let p: u16 = port
        .parse()
        .map_err(|_| format!("'{s}' has no valid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(if host.contains(':') {
        format!("[{host}]:{p}")
    } else {
        format!("{host}:{p}")
    })
}

/// The certificates Pushpin's runner serves on `https_ports`: the
/// directory `runner/certs` beside pushpin.conf, holding `HOST.crt` +
/// `HOST.key` (`_.DOMAIN` for a wildcard), chosen by the client's SNI
/// name, and for each port `default_PORT.crt` + `.key` for clients whose
/// name matches none (the port as written; without one the handshake
/// fails, as in Pushpin). corepin serves one default on every TLS port:
/// several ports' defaults must be the same files' contents. Notes for
/// the start-up warning go to `notes`. `Ok`: the directory and the stem
/// of its default pair, if any.
fn pushpin_certs(
    conf_dir: &Path,
    listen_tls: &[String],
    notes: &mut Vec<String>,
) -> Result<(PathBuf, Option<String>), String> {
    let rel = conf_dir.join("runner").join("certs");
    let dir = std::path::absolute(&rel).unwrap_or(rel);
    if let Err(e) = std::fs::read_dir(&dir) {
        return Err(format!(
            "the certificates directory {} (Pushpin's runner/certs beside pushpin.conf) cannot be read: {e}",
            dir.display()
        ));
    }
    let mut ports: Vec<u16> = Vec::new();
    for a in listen_tls {
        let port = a
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let stems: Vec<String> = ports.iter().map(|p| format!("default_{p}")).collect();
    let present: Vec<&String> = stems
        .iter()
        .filter(|s| dir.join(format!("{s}.crt")).exists())
        .collect();
    let Some(first) = present.first() else {
        if dir.join("default.crt").exists() {
            notes.push(format!(
                "{}/default.crt is served as the default certificate (corepin's name for it; Pushpin's is default_PORT.crt, and it would send default.crt only to clients asking for the name 'default')",
                dir.display()
            ));
        }
        return Ok((dir, None));
    };
    let contents = |stem: &str| -> Result<(Vec<u8>, Vec<u8>), String> {
        let read = |ext: &str| {
            let p = dir.join(format!("{stem}.{ext}"));
            std::fs::read(&p).map_err(|e| format!("{}: cannot read: {e}", p.display()))
        };
        Ok((read("crt")?, read("key")?))
    };
    if present.len() > 1 {
        let want = contents(first)?;
        for other in &present[1..] {
            if contents(other)? != want {
                return Err(format!(
                    "{first}.crt and {other}.crt (with their keys) differ: corepin serves one default certificate on every TLS port"
                ));
            }
        }
    }
    if present.len() < stems.len() {
        let missing: Vec<&str> = stems
            .iter()
            .filter(|s| !present.contains(s))
            .map(|s| s.as_str())
            .collect();
        notes.push(format!(
            "{first}.crt is the default certificate on every TLS port, also where Pushpin would have none ({} missing)",
            missing.join(", ")
        ));
    }
    let default = first.to_string();
    Ok((dir, Some(default)))
}

/// Adds `offset` to the port of every `tcp://HOST:PORT` in `s`, as
/// Pushpin's `port_offset` does.
fn offset_tcp_ports(s: &str, offset: i64) -> String {
    if offset == 0 || !s.contains("tcp://") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("tcp://") {
        let (before, spec) = rest.split_at(at + 6);
        out.push_str(before);
        let end = spec.find([',', ' ']).unwrap_or(spec.len());
        let (one, tail) = spec.split_at(end);
        match one.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => {
                let p = port.parse::<i64>().unwrap_or(0) + offset;
                out.push_str(&format!("{host}:{p}"));
            }
            _ => out.push_str(one),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Reads `path` and the routes file it names into corepin's settings,
/// with command-line overrides applied as for `--config`.
pub fn load(path: &Path, ov: &Overrides) -> Result<PushpinConf, ConfigError> {
    let origin = path.display().to_string();
    let text = read(path, "--pushpin-config")?;
    let main = parse_ini(&text, &origin)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let raw = |k: &str| main.get(k).map(Value::text);
    let libdir = raw("global/libdir").unwrap_or_else(|| DEFAULT_LIBDIR.into());
    let rundir = raw("global/rundir")
        .or_else(|| raw("runner/rundir"))
        .unwrap_or_default();
    let ipc_prefix = raw("global/ipc_prefix").unwrap_or_else(|| "pushpin-".into());
    let offset: i64 = match raw("global/port_offset") {
        None => 0,
        Some(v) if v.is_empty() => 0,
        Some(v) => v.parse().map_err(|_| {
            ConfigError(format!(
                "{origin}: [global] port_offset: '{v}' is not a number"
            ))
        })?,
    };
    let vars = |s: &str| {
        let s = s
            .replace("{libdir}", &libdir)
            .replace("{rundir}", &rundir)
            .replace("{ipc_prefix}", &ipc_prefix);
        offset_tcp_ports(&s, offset)
    };
    // The include (Debian: internal.conf, Pushpin's process wiring) is
    // read when present: its keys lose to the main file's.
    let mut all = BTreeMap::new();
    if let Some(inc) = raw("global/include").filter(|i| !i.is_empty()) {
        let inc = if inc == "internal.conf" {
            "{libdir}/internal.conf".to_string()
        } else {
            inc
        };
        let inc = dir.join(vars(&inc));
        if inc.exists() {
            let t = read(&inc, "include")?;
            all = parse_ini(&t, &inc.display().to_string())?;
        }
    }
    all.extend(main);
    let get = |k: &str| {
        all.get(k).map(|v| match v {
            Value::Str(s) => Value::Str(vars(s)),
            Value::List(l) => Value::List(l.iter().map(|s| vars(s)).collect()),
        })
    };
    let text_of = |k: &str| get(k).map(|v| v.text());
    let section_key = |k: &str| {
        let (s, n) = k.split_once('/').unwrap_or(("", k));
        format!("[{s}] {n}")
    };
    let bad = |k: &str, why: String| ConfigError(format!("{origin}: {}: {why}", section_key(k)));
    let number = |k: &str| -> Result<Option<i64>, ConfigError> {
        match text_of(k) {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| bad(k, format!("'{v}' is not a number"))),
        }
    };
    let boolean = |k: &str| -> Result<Option<bool>, ConfigError> {
        match text_of(k).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) if v.is_empty() || v == "false" || v == "0" => Ok(Some(false)),
            Some(v) if v == "true" || v == "1" => Ok(Some(true)),
            Some(v) => Err(bad(k, format!("'{v}' is not true or false"))),
        }
    };

    let mut t = toml::Table::new();
    let mut limits = toml::Table::new();
    let mut grip = toml::Table::new();
    let mut publish = toml::Table::new();
    let mut log = toml::Table::new();
    let mut forwarding = toml::Table::new();
    let mut mapped: Vec<&str> = Vec::new();

    // Clients.
    mapped.push("runner/http_port");
    let ports = get("runner/http_port")
        .map(|v| v.list())
        .unwrap_or_default();
    let listen = ports
        .iter()
        .map(|p| listen_addr(p).map_err(|e| bad("runner/http_port", e)))
        .collect::<Result<Vec<_>, _>>()?;
    // TLS clients, as Pushpin's runner serves `https_ports`.
    mapped.push("runner/https_ports");
    let https = get("runner/https_ports")
        .map(|v| v.list())
        .unwrap_or_default();
    let listen_tls = https
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| listen_addr(p).map_err(|e| bad("runner/https_ports", e)))
        .collect::<Result<Vec<_>, _>>()?;
    if listen.is_empty()
        && ov.listen.is_empty()
        && listen_tls.is_empty()
        && ov.listen_tls.is_empty()
    {
        return Err(bad(
            "runner/http_port",
            "no port to listen on (neither http_port nor https_ports is set; local_ports is not supported)".into(),
        ));
    }
    t.insert("listen".into(), listen.into());
    // Pushpin's certificates live in `runner/certs` beside pushpin.conf
    // (no setting names it); certificate flags on the command line win.
    let mut notes: Vec<String> = Vec::new();
    let cert_flags = ov.tls_cert.is_some() || ov.tls_key.is_some() || ov.tls_certs_dir.is_some();
    let pushpin_certs = if listen_tls.is_empty() || cert_flags {
        None
    } else {
        let (certs_dir, default) = pushpin_certs(&dir, &listen_tls, &mut notes)
            .map_err(|e| bad("runner/https_ports", e))?;
        let mut tls = toml::Table::new();
        tls.insert("certs_dir".into(), certs_dir.display().to_string().into());
        t.insert("tls".into(), toml::Value::Table(tls));
        Some(match default {
            Some(default) => crate::config::TlsCerts::DirWithDefault {
                dir: certs_dir,
                default,
            },
            None => crate::config::TlsCerts::Dir(certs_dir),
        })
    };
    t.insert("listen_tls".into(), listen_tls.into());
    mapped.push("runner/client_buffer_size");
    if let Some(n) = number("runner/client_buffer_size")? {
        limits.insert("max_head_bytes".into(), n.into());
    }
    mapped.push("runner/log_level");
    if let Some(v) = get("runner/log_level") {
        // `N` for every part, or `part:N` per Pushpin process; corepin is
        // one process: the plain `N` counts.
        for part in v.list() {
            if !part.contains(':') {
                let n: u32 = part.trim().parse().map_err(|_| {
                    bad(
                        "runner/log_level",
                        format!("'{part}' is not a level number"),
                    )
                })?;
                log.insert("level".into(), level(n).into());
            }
        }
    }
    // Over the cap, new client connections are refused (503) and counted.
    mapped.push("runner/client_maxconn");
    if let Some(n) = number("runner/client_maxconn")? {
        let n = usize::try_from(n)
            .map_err(|_| bad("runner/client_maxconn", format!("{n} is negative")))?;
        limits.insert(
            "max_connections".into(),
            i64::try_from(n).unwrap_or(i64::MAX).into(),
        );
    }

    // Routes.
    mapped.push("proxy/routesfile");
    match text_of("proxy/routesfile").filter(|r| !r.is_empty()) {
        Some(r) => {
            t.insert(
                "routes_file".into(),
                dir.join(r).display().to_string().into(),
            );
        }
        None if ov.routes.is_empty() => {
            return Err(bad("proxy/routesfile", "no routes file is named".into()));
        }
        None => {}
    }
    mapped.push("proxy/debug");
    boolean("proxy/debug")?;

    // Pushpin's default is on (handlerapp.cpp), as in its shipped file.
    mapped.push("handler/update_on_first_subscription");
    grip.insert(
        "update_on_first_subscription".into(),
        boolean("handler/update_on_first_subscription")?
            .unwrap_or(true)
            .into(),
    );

    // Signing requests to backends.
    mapped.push("proxy/sig_iss");
    let iss = text_of("proxy/sig_iss").filter(|i| !i.is_empty());
    grip.insert(
        "sig_iss".into(),
        iss.unwrap_or_else(|| "pushpin".into()).into(),
    );
    mapped.push("proxy/sig_key");
    let sig_key = match text_of("proxy/sig_key").filter(|k| !k.is_empty()) {
        Some(k) => {
            Some(crate::route::key_from_config(&k, &dir).map_err(|e| bad("proxy/sig_key", e))?)
        }
        None => None,
    };
    // Pushpin signs only with a key it read (its shipped pushpin.conf has
    // sig_key=changeme); without one, or with an empty one (which 1.41
    // turns into an empty HMAC secret), corepin does not sign.
    if sig_key.is_none() {
        grip.insert("sign".into(), false.into());
    }

    // Forwarding.
    mapped.push("proxy/accept_x_forwarded_protocol");
    if let Some(b) = boolean("proxy/accept_x_forwarded_protocol")? {
        forwarding.insert("accept_x_forwarded_protocol".into(), b.into());
    }
    mapped.push("proxy/x_forwarded_for");
    forwarding.insert(
        "x_forwarded_for".into(),
        text_of("proxy/x_forwarded_for").unwrap_or_default().into(),
    );

    // Publishing.
    mapped.push("handler/push_in_http_addr");
    mapped.push("handler/push_in_http_port");
    let control_http = match number("handler/push_in_http_port")? {
        Some(p) if p > 0 => {
            let p = p + offset;
            let port = u16::try_from(p).map_err(|_| {
                bad(
                    "handler/push_in_http_port",
                    format!("{p} (with port_offset) is not a port"),
                )
            })?;
            let addr = text_of("handler/push_in_http_addr")
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into());
            listen_addr(&format!("{addr}:{port}"))
                .map_err(|e| bad("handler/push_in_http_addr", e))?
        }
        _ => String::new(),
    };
    t.insert("control_http".into(), control_http.into());
    mapped.push("handler/push_in_http_max_body_size");
    if let Some(n) = number("handler/push_in_http_max_body_size")? {
        publish.insert("max_body_bytes".into(), n.into());
    }
    mapped.push("handler/connection_subscription_max");
    if let Some(n) = number("handler/connection_subscription_max")? {
        grip.insert("max_channels".into(), n.into());
    }

    // ZeroMQ interfaces, as Pushpin's handler reads them.
    let mut zmq = toml::Table::new();
    for (key, field) in [
        ("handler/push_in_spec", "push_in_spec"),
        ("handler/command_spec", "command_spec"),
        ("handler/stats_spec", "stats_spec"),
        ("handler/stats_format", "stats_format"),
    ] {
        mapped.push(key);
        if let Some(v) = text_of(key).map(|v| v.trim().to_string()) {
            zmq.insert(field.into(), v.into());
        }
    }
    mapped.push("handler/push_in_sub_specs");
    mapped.push("handler/push_in_sub_spec");
    let mut sub_specs: Vec<String> = get("handler/push_in_sub_specs")
        .map(|v| v.list())
        .unwrap_or_default();
    if let Some(one) = text_of("handler/push_in_sub_spec").filter(|s| !s.trim().is_empty()) {
        sub_specs.push(one);
    }
    let sub_specs: Vec<String> = sub_specs
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if !sub_specs.is_empty() {
        zmq.insert("push_in_sub_specs".into(), sub_specs.into());
    }
    mapped.push("handler/push_in_sub_connect");
    if let Some(b) = boolean("handler/push_in_sub_connect")? {
        zmq.insert("push_in_sub_connect".into(), b.into());
    }
    for (key, field) in [
        ("handler/stats_report_interval", "stats_report_interval"),
        ("handler/stats_subscription_ttl", "stats_subscription_ttl"),
        ("handler/subscription_linger", "subscription_linger"),
    ] {
        mapped.push(key);
        if let Some(n) = number(key)? {
            let n = u64::try_from(n).map_err(|_| bad(key, format!("{n} is negative")))?;
            zmq.insert(field.into(), i64::try_from(n).unwrap_or(i64::MAX).into());
        }
    }
    // `conn` messages, on by default as in Pushpin.
    mapped.push("global/stats_connection_send");
    if let Some(b) = boolean("global/stats_connection_send")? {
        zmq.insert("stats_connection_send".into(), b.into());
    }
    mapped.push("global/stats_connection_ttl");
    if let Some(n) = number("global/stats_connection_ttl")? {
        let n = u64::try_from(n)
            .map_err(|_| bad("global/stats_connection_ttl", format!("{n} is negative")))?;
        zmq.insert(
            "stats_connection_ttl".into(),
            i64::try_from(n).unwrap_or(i64::MAX).into(),
        );
    }

    // The handler's mode is the one its public ZeroMQ sockets get (the
    // proxy's applies to Pushpin's internal sockets only).
    mapped.push("handler/ipc_file_mode");
    if let Some(m) = text_of("handler/ipc_file_mode") {
        zmq.insert("ipc_file_mode".into(), m.trim().to_string().into());
    }

    mapped.push("proxy/sockjs_url");
    if let Some(u) = text_of("proxy/sockjs_url") {
        t.insert("sockjs_url".into(), u.trim().to_string().into());
    }

    mapped.push("proxy/auto_cross_origin");
    if let Some(b) = boolean("proxy/auto_cross_origin")? {
        t.insert("auto_cross_origin".into(), b.into());
    }

    // The access log's optional fields.
    mapped.push("proxy/log_from");
    if let Some(b) = boolean("proxy/log_from")? {
        log.insert("access_log_client".into(), b.into());
    }
    mapped.push("proxy/log_user_agent");
    if let Some(b) = boolean("proxy/log_user_agent")? {
        log.insert("access_log_user_agent".into(), b.into());
    }

    // Pushpin's Prometheus names carry its prefix (the handler's, else the
    // proxy's) in corepin's /metrics.
    mapped.push("handler/prometheus_prefix");
    mapped.push("proxy/prometheus_prefix");
    let prefixes: Vec<String> = ["handler/prometheus_prefix", "proxy/prometheus_prefix"]
        .iter()
        .filter_map(|k| text_of(k).map(|v| v.trim().to_string()))
        .filter(|v| !v.is_empty())
        .collect();
    if let [a, b] = prefixes.as_slice() {
        if a != b {
            return Err(bad(
                "handler/prometheus_prefix",
                format!(
                    "'{a}' differs from [proxy] prometheus_prefix '{b}': corepin serves one set of Pushpin's metric names"
                ),
            ));
        }
    }
    let mut metrics = toml::Table::new();
    if let Some(p) = prefixes.first() {
        metrics.insert("pushpin_prefix".into(), p.clone().into());
    }

    // The control socket lives in Pushpin's run directory, and so may
    // ipc:// ZeroMQ endpoints (Debian's stats_spec): it is made, as
    // Pushpin's runner makes it, when something is put there.
    if !rundir.is_empty() {
        let run = std::path::absolute(&rundir).unwrap_or_else(|_| PathBuf::from(&rundir));
        let ipc_there = zmq.values().any(|v| {
            let specs: Vec<&str> = match v {
                toml::Value::String(s) => vec![s.as_str()],
                toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_str).collect(),
                _ => Vec::new(),
            };
            specs
                .iter()
                .any(|s| s.starts_with("ipc://") && s.contains(rundir.as_str()))
        });
        if ov.control_socket.is_none() || ipc_there {
            std::fs::create_dir_all(&run).map_err(|e| {
                bad(
                    "global/rundir",
                    format!("cannot create {}: {e}", run.display()),
                )
            })?;
        }
        t.insert(
            "control_socket".into(),
            run.join("corepin.sock").display().to_string().into(),
        );
    }

    for (name, s) in [
        ("limits", limits),
        ("grip", grip),
        ("publish", publish),
        ("log", log),
        ("forwarding", forwarding),
        ("zmq", zmq),
        ("metrics", metrics),
    ] {
        if !s.is_empty() {
            t.insert(name.into(), toml::Value::Table(s));
        }
    }

    // What is left: report what corepin cannot do.
    let mut unsupported = Vec::new();
    for (key, v) in &all {
        if mapped.contains(&key.as_str()) {
            continue;
        }
        let shown = section_key(key);
        let value = match get(key) {
            Some(v) => v.text(),
            None => v.text(),
        };
        match kind(key) {
            Some(Unmapped::Internal) => {}
            Some(Unmapped::Unsupported { default, why }) => {
                if default.is_none_or(|d| !d.eq_ignore_ascii_case(value.trim())) {
                    unsupported.push(format!("{shown}={value} ({why})"));
                }
            }
            None => unsupported.push(format!("{shown}={value} (unknown to corepin)")),
        }
    }
    let origin_routes = format!("{origin} (as corepin settings)");
    let mut config = Config::from_table(t, &origin_routes, ov)?;
    if pushpin_certs.is_some() {
        config.tls = pushpin_certs;
        // Pushpin reads a certificate again when its file changes.
        config.tls_watch = true;
    }
    if let Some(k) = sig_key {
        config.grip.public_default_key = k == crate::config::DEFAULT_SIG_KEY.as_bytes();
        config.grip.sig_key = Some(k);
    }
    let mut parts = Vec::new();
    if !unsupported.is_empty() {
        parts.push(format!(
            "settings corepin does not support yet, ignored: {}",
            unsupported.join("; ")
        ));
    }
    parts.extend(notes);
    let warning = (!parts.is_empty()).then(|| format!("{origin}: {}", parts.join("; ")));
    Ok(PushpinConf { config, warning })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ini_as_qt_does() {
        let text = "\
; a comment
# another
top=1
[Proxy]
a = plain value ; comment
b=one, two ,three
c=\"quoted, with comma\"
d=\"esc \\\"q\\\" \\\\ \\t\"
e=
[general]
f=g
[x]
a=first
a=second
";
        let m = parse_ini(text, "t.conf").expect("valid");
        let s = |k: &str| m.get(k).cloned();
        assert_eq!(s("top"), Some(Value::Str("1".into())));
        assert_eq!(s("Proxy/a"), Some(Value::Str("plain value".into())));
        assert_eq!(
            s("Proxy/b"),
            Some(Value::List(vec![
                "one".into(),
                "two".into(),
                "three".into()
            ]))
        );
        assert_eq!(s("Proxy/c"), Some(Value::Str("quoted, with comma".into())));
        assert_eq!(s("Proxy/d"), Some(Value::Str("esc \"q\" \\ \t".into())));
        assert_eq!(s("Proxy/e"), Some(Value::Str(String::new())));
        assert_eq!(s("f"), Some(Value::Str("g".into())));
        assert_eq!(s("x/a"), Some(Value::Str("second".into())));
        for (bad, needle) in [
            ("[proxy", "line 1: '[' without ']'"),
            ("[p]\njust words", "line 2: 'just words' is not key=value"),
            ("=x", "empty key"),
            ("/=\n\n", "holds '/'"),
            ("[]\nk=v", "'[]' is not a section name"),
            ("[a/b]\nk=v", "not a section name"),
            ("k=\"open", "unterminated quote"),
            ("k=\"\\q\"", "unsupported escape"),
        ] {
            let e = parse_ini(bad, "t.conf").expect_err(bad);
            assert!(e.0.contains(needle), "{bad:?}: {e}");
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("corepin-ppconf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn maps_a_pushpin_conf_onto_corepin_settings() {
        let d = dir("map");
        std::fs::write(d.join("routes"), "*,path_beg=/a 127.0.0.1:9\n* test\n").expect("routes");
        std::fs::write(d.join("k"), "736563726574").expect("key");
        std::fs::write(
            d.join("inc.conf"),
            "[handler]\npush_in_http_addr=127.0.0.2\n[proxy]\nzurl_out_specs=ipc://x\n",
        )
        .expect("inc");
        let text = format!(
            "[global]\ninclude=inc.conf\nrundir={}/run\nport_offset=10\n[runner]\nhttp_port=7999, 127.0.0.1:8000\nlog_level=3\nclient_buffer_size=4096\nclient_maxconn=123\n[proxy]\nroutesfile=routes\nauto_cross_origin=true\nsig_key=file:k\nx_forwarded_for=truncate:0,append\naccept_x_forwarded_protocol=true\nlog_from=false\nlog_user_agent=true\nprometheus_prefix=pp_\n[handler]\npush_in_http_port=5561\nipc_file_mode=770\nconnection_subscription_max=7\npush_in_http_max_body_size=2048\ncommand_spec=tcp://127.0.0.1:5563\npush_in_spec=tcp://127.0.0.1:5560\npush_in_sub_specs=tcp://127.0.0.1:5562,ipc://x\npush_in_sub_connect=true\nstats_spec=ipc:///r/{{ipc_prefix}}stats\nstats_format=json\nstats_report_interval=0\nstats_subscription_ttl=30\nsubscription_linger=5\nprometheus_prefix=pp_\n",
            d.display()
        );
        std::fs::write(d.join("pushpin.conf"), text).expect("conf");
        let p = load(&d.join("pushpin.conf"), &Overrides::default()).expect("loads");
        let c = &p.config;
        let addrs: Vec<String> = c.listen.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, vec!["0.0.0.0:7999", "127.0.0.1:8000"]);
        // The include's address, the main file's port plus port_offset.
        assert_eq!(
            c.control_http.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.2:5571")
        );
        assert_eq!(c.control_socket, Some(d.join("run/corepin.sock")));
        assert!(d.join("run").is_dir());
        assert_eq!(c.log_level, crate::config::Level::Debug);
        assert_eq!(c.limits.head.max_head_bytes, 4096);
        assert_eq!(c.grip.max_channels, 7);
        assert_eq!(c.publish.max_body, 2048);
        assert_eq!(c.grip.sig_key.as_deref(), Some(&b"secret"[..]));
        assert_eq!(c.grip.sig_iss, "pushpin");
        assert!(c.forwarding.accept_x_forwarded_protocol);
        assert_eq!(c.forwarding.xff.truncate, Some(0));
        assert!(c.forwarding.xff.append);
        assert_eq!(c.routes.iter().count(), 2);
        assert_eq!(
            c.routes_source,
            crate::config::RoutesSource::File(d.join("routes"))
        );
        assert_eq!(p.config.limits.max_connections, 123);
        // port_offset applies to tcp:// specs too.
        let z = &c.zmq;
        assert_eq!(z.command_spec.as_deref(), Some("tcp://127.0.0.1:5573"));
        assert_eq!(z.push_in_spec.as_deref(), Some("tcp://127.0.0.1:5570"));
        assert_eq!(z.push_in_sub_specs, vec!["tcp://127.0.0.1:5572", "ipc://x"]);
        assert!(z.push_in_sub_connect);
        assert_eq!(z.stats_spec.as_deref(), Some("ipc:///r/pushpin-stats"));
        assert_eq!(z.stats_format, crate::config::StatsFormat::Json);
        assert_eq!(
            (
                z.stats_report_interval,
                z.stats_subscription_ttl,
                z.subscription_linger
            ),
            (0, 30, 5)
        );
        assert!(!c.access_log_client && c.access_log_user_agent);
        assert_eq!(c.metrics_pushpin_prefix, "pp_");
        assert!(c.auto_cross_origin);
        assert_eq!(c.zmq.ipc_file_mode, Some(0o770));
        // Every setting in it is one corepin serves (Pushpin's conn stats
        // included, on as Pushpin's defaults ask): no warning.
        let w = p.warning.unwrap_or_default();
        assert!(!w.contains("client_maxconn"), "{w}");
        assert!(!w.contains("stats_connection"), "{w}");
        assert!(c.zmq.stats_connection_send && c.zmq.stats_connection_ttl == 120);
        assert!(
            !w.contains("zurl_out_specs")
                && !w.contains("sig_key")
                && !w.contains("_spec")
                && !w.contains("log_"),
            "{w}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn defaults_as_pushpin_has_them() {
        let d = dir("defaults");
        std::fs::write(d.join("routes"), "* test\n").expect("routes");
        std::fs::write(
            d.join("pushpin.conf"),
            "[runner]\nhttp_port=7999\n[proxy]\nroutesfile=routes\n",
        )
        .expect("conf");
        let p = load(&d.join("pushpin.conf"), &Overrides::default()).expect("loads");
        let c = &p.config;
        assert_eq!(
            c.control_http, None,
            "no push_in_http_port: no publish server"
        );
        assert_eq!(c.grip.sig_key, None);
        assert_eq!(c.grip.sig_iss, "pushpin");
        // Pushpin's empty x_forwarded_for passes the client's along.
        assert_eq!(c.forwarding.xff.truncate, None);
        assert!(!c.forwarding.xff.append);
        assert_eq!(p.warning, None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn errors_name_the_setting() {
        let d = dir("errors");
        std::fs::write(d.join("routes"), "* test\n").expect("routes");
        for (body, needle) in [
            (
                "[runner]\nhttp_port=x\n[proxy]\nroutesfile=routes",
                "[runner] http_port: 'x' is not a port",
            ),
            (
                "[proxy]\nroutesfile=routes",
                "[runner] http_port: no port to listen on",
            ),
            (
                "[runner]\nhttp_port=1\n",
                "[proxy] routesfile: no routes file is named",
            ),
            (
                "[runner]\nhttp_port=1\n[proxy]\nroutesfile=nothere",
                "routes_file: ",
            ),
            (
                "[global]\nport_offset=a\n",
                "[global] port_offset: 'a' is not a number",
            ),
            (
                "[runner]\nhttp_port=1\nlog_level=loud\n[proxy]\nroutesfile=routes",
                "[runner] log_level",
            ),
            (
                "[runner]\nhttp_port=1\n[proxy]\nroutesfile=routes\nsig_key=file:none",
                "[proxy] sig_key: cannot read",
            ),
            (
                "[runner]\nhttp_port=1\n[proxy]\nroutesfile=routes\ndebug=maybe",
                "[proxy] debug: 'maybe' is not true or false",
            ),
        ] {
            std::fs::write(d.join("p.conf"), body).expect("conf");
            let e = load(&d.join("p.conf"), &Overrides::default()).expect_err(body);
            assert!(e.0.contains(needle), "{body:?}: {e}");
            assert!(!e.0.contains('\n'), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A pushpin.conf with `runner` lines and a routes file in `d`.
    fn conf_with(d: &Path, runner: &str) -> PathBuf {
        std::fs::write(d.join("routes"), "* test\n").expect("routes");
        let p = d.join("pushpin.conf");
        std::fs::write(
            &p,
            format!("[runner]\n{runner}\n[proxy]\nroutesfile=routes\n"),
        )
        .expect("conf");
        p
    }

    /// `runner/certs` beside the conf, with `stem.crt` + `stem.key` for
    /// each stem (contents as given: `load` only looks at the layout; the
    /// certificates themselves are checked by `tls`).
    fn certs_dir(d: &Path, pairs: &[(&str, &str)]) -> PathBuf {
        let c = d.join("runner/certs");
        std::fs::create_dir_all(&c).expect("certs dir");
        for (stem, content) in pairs {
            std::fs::write(c.join(format!("{stem}.crt")), content).expect("crt");
            std::fs::write(c.join(format!("{stem}.key")), content).expect("key");
        }
        std::path::absolute(&c).expect("absolute")
    }

    #[test]
    fn https_ports_serve_runner_certs_with_the_ports_default() {
        use crate::config::TlsCerts;
        let d = dir("https");
        let certs = certs_dir(&d, &[("default_443", "a"), ("api.example.com", "b")]);
        std::fs::write(certs.join("README"), "Empty directory.\n").expect("readme");
        let conf = conf_with(&d, "http_port=7999\nhttps_ports=443, 127.0.0.1:8443");
        let p = load(&conf, &Overrides::default()).expect("loads");
        let addrs: Vec<String> = p.config.listen_tls.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, vec!["0.0.0.0:443", "127.0.0.1:8443"]);
        assert_eq!(
            p.config.tls,
            Some(TlsCerts::DirWithDefault {
                dir: certs.clone(),
                default: "default_443".into()
            })
        );
        // Changed files are picked up without a signal, as in Pushpin.
        assert!(p.config.tls_watch);
        // 8443 has no default of its own: corepin serves 443's there too,
        // and says so.
        let w = p.warning.expect("a note");
        assert!(
            w.contains("default_443.crt is the default certificate on every TLS port, also where Pushpin would have none (default_8443 missing)"),
            "{w}"
        );
        assert!(!w.contains("https_ports="), "https_ports is served: {w}");
        // The same default on both ports: nothing to say.
        certs_dir(&d, &[("default_8443", "a")]);
        let p = load(&conf, &Overrides::default()).expect("loads");
        assert_eq!(p.warning, None);
        // Different defaults cannot both be served.
        certs_dir(&d, &[("default_8443", "c")]);
        let e = load(&conf, &Overrides::default()).expect_err("two defaults");
        assert!(
            e.0.contains("[runner] https_ports: default_443.crt and default_8443.crt (with their keys) differ: corepin serves one default certificate on every TLS port"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn https_ports_without_a_default_or_certs_dir() {
        use crate::config::TlsCerts;
        let d = dir("https-nodefault");
        let conf = conf_with(&d, "https_ports=127.0.0.1:0");
        // No runner/certs: refused, naming where it was looked for.
        let e = load(&conf, &Overrides::default()).expect_err("no certs dir");
        let want = format!(
            "[runner] https_ports: the certificates directory {}/runner/certs (Pushpin's runner/certs beside pushpin.conf) cannot be read: No such file or directory",
            std::path::absolute(&d).expect("abs").display()
        );
        assert!(e.0.contains(&want), "{e}");
        assert!(!e.0.contains('\n'), "{e}");
        // Host certificates only: served by SNI, no default (as Pushpin).
        let certs = certs_dir(&d, &[("api.example.com", "b")]);
        let p = load(&conf, &Overrides::default()).expect("https only");
        assert!(p.config.listen.is_empty());
        assert_eq!(p.config.listen_tls.len(), 1);
        assert_eq!(p.config.tls, Some(TlsCerts::Dir(certs.clone())));
        assert_eq!(p.warning, None);
        // corepin's own default.crt is served as the default, with a note.
        certs_dir(&d, &[("default", "x")]);
        let p = load(&conf, &Overrides::default()).expect("loads");
        let w = p.warning.expect("note");
        assert!(
            w.contains("/default.crt is served as the default certificate"),
            "{w}"
        );
        // Certificate flags win over runner/certs.
        let ov = Overrides {
            tls_certs_dir: Some("/elsewhere".into()),
            ..Overrides::default()
        };
        let p = load(&conf, &ov).expect("flags");
        assert_eq!(p.config.tls, Some(TlsCerts::Dir("/elsewhere".into())));
        assert!(
            !p.config.tls_watch,
            "a flag's directory reloads as corepin's do"
        );
        // Bad ports are refused by name; no port at all too.
        for (runner, needle) in [
            ("https_ports=x", "[runner] https_ports: 'x' is not a port"),
            ("https_ports=1.2.3.4:99999", "[runner] https_ports: '1.2.3.4:99999' has no valid port"),
            ("https_ports=", "[runner] http_port: no port to listen on (neither http_port nor https_ports is set"),
        ] {
            let conf = conf_with(&d, runner);
            let e = load(&conf, &Overrides::default()).expect_err(runner);
            assert!(e.0.contains(needle), "{runner}: {e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn port_offset_moves_tcp_specs() {
        assert_eq!(
            offset_tcp_ports("tcp://127.0.0.1:5560", 10),
            "tcp://127.0.0.1:5570"
        );
        assert_eq!(
            offset_tcp_ports("tcp://a:1,ipc://x,tcp://[::1]:2", 5),
            "tcp://a:6,ipc://x,tcp://[::1]:7"
        );
        assert_eq!(offset_tcp_ports("ipc://x", 5), "ipc://x");
    }

    #[test]
    fn listen_addresses_as_the_runner_reads_them() {
        assert_eq!(listen_addr("7999").as_deref(), Ok("0.0.0.0:7999"));
        assert_eq!(listen_addr("127.0.0.1:80").as_deref(), Ok("127.0.0.1:80"));
        assert_eq!(listen_addr("[::1]:80").as_deref(), Ok("[::1]:80"));
        assert!(listen_addr("x").is_err());
        assert!(listen_addr("a:99999").is_err());
    }
}
