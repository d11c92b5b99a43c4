//! The command line: subcommands and flags parsed into a `Command`. Errors
//! are one line naming the flag (the binary exits 2 on them).

use std::path::PathBuf;

pub use crate::client::PublishFormat;
use crate::config::Overrides;

pub const USAGE: &str = "\
usage: corepin [run] [--config FILE | --pushpin-config FILE] [--listen ADDR]...
               [--control-http ADDR]
               [--control-socket PATH] [--route LINE]... [--workers N (0 = every core)]
               [--history-messages N]
               [--log-level error|warn|info|debug]
               [--listen-tls ADDR]... [--tls-cert FILE --tls-key FILE]
               [--tls-certs-dir DIR] [--ready-file PATH]
               [--cluster nats://HOST:PORT | redis://HOST:PORT]... [--node NAME]
               [--data-path glommio|uring]
       corepin check --config FILE | --pushpin-config FILE
       corepin publish CHANNEL CONTENT [--http-response|--ws-message|--close]
                       [--id ID] [--prev-id ID] [--socket PATH | --http URL]
       corepin stats [--socket PATH]
       corepin channels [CHANNEL] [--prefix P] [--top N] [--socket PATH | --http URL]
       corepin connection CONNECTION-ID (--message TEXT | --close [--code N])
                          [--socket PATH | --http URL]
       corepin --help | --version

Without --config, corepin runs its embedded default (config/corepin.toml):
clients on 127.0.0.1:7999, every request routed to the built-in test target.
--pushpin-config runs from a Pushpin pushpin.conf and the routes file it
names (unsupported settings are named in one warning line).
--ready-file writes the bound addresses as JSON to PATH once every core
accepts (for launchers and tests that use port 0).
--cluster joins other corepin nodes through a NATS or Redis broker: every
publish goes through it and reaches every node (README: Running a cluster).";

/// The configuration file a command reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFile {
    /// `--config`: corepin's TOML.
    Toml(PathBuf),
    /// `--pushpin-config`: a Pushpin pushpin.conf.
    Pushpin(PathBuf),
}

#[derive(Debug)]
pub enum Command {
    Run {
        config: Option<ConfigFile>,
        overrides: Overrides,
    },
    Check {
        config: Option<ConfigFile>,
        overrides: Overrides,
    },
    Publish {
        channel: String,
        content: String,
        format: PublishFormat,
        id: Option<String>,
        prev_id: Option<String>,
        /// `--http URL`; otherwise the socket.
        http: Option<String>,
        socket: PathBuf,
    },
    Stats {
        socket: PathBuf,
    },
    /// Subscriber counts per channel.
    Channels {
        query: crate::codec::counts::Query,
        /// `--http URL` (the control API's base); otherwise the socket.
        http: Option<String>,
        socket: PathBuf,
    },
    /// Send to, or close, one connection by its Connection-Id.
    Connection {
        /// The control socket's `connection` request.
        request: serde_json::Value,
        /// The control API's `http://host:port`, instead of the socket.
        http: Option<String>,
        socket: PathBuf,
    },
    Help,
    Version,
}

/// The control socket the CLI talks to by default (the embedded config's).
pub const DEFAULT_SOCKET: &str = "/tmp/corepin.sock";

fn parse_publish(args: impl Iterator<Item = String>) -> Result<Command, CliError> {
    let mut args = args.peekable();
    let mut positional = Vec::new();
    let (mut format, mut id, mut prev_id, mut http) = (PublishFormat::Stream, None, None, None);
    let mut socket = PathBuf::from(DEFAULT_SOCKET);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--http-response" => format = PublishFormat::HttpResponse,
            "--ws-message" => format = PublishFormat::WsMessage,
            "--close" => format = PublishFormat::Close,
            "--id" => id = Some(value(&mut args, "--id")?),
            "--prev-id" => prev_id = Some(value(&mut args, "--prev-id")?),
            "--socket" => socket = PathBuf::from(value(&mut args, "--socket")?),
            "--http" => http = Some(value(&mut args, "--http")?),
            f if f.starts_with("--") => {
                return Err(CliError(format!(
                    "{f}: unknown flag for publish (see --help)"
                )))
            }
            _ => positional.push(a),
        }
    }
    let mut positional = positional.into_iter();
    let channel = positional
        .next()
        .ok_or_else(|| CliError("publish: CHANNEL is required".into()))?;
    let content = match (positional.next(), format) {
        (Some(c), _) => c,
        (None, PublishFormat::Close) => String::new(),
        (None, _) => return Err(CliError("publish: CONTENT is required".into())),
    };
    if let Some(extra) = positional.next() {
        return Err(CliError(format!(
            "'{extra}': unexpected argument for publish"
        )));
    }
    Ok(Command::Publish {
        channel,
        content,
        format,
        id,
        prev_id,
        http,
        socket,
    })
}

fn parse_stats(args: impl Iterator<Item = String>) -> Result<Command, CliError> {
    let mut args = args.peekable();
    let mut socket = PathBuf::from(DEFAULT_SOCKET);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => socket = PathBuf::from(value(&mut args, "--socket")?),
            other => return Err(CliError(format!("{other}: unknown argument for stats"))),
        }
    }
    Ok(Command::Stats { socket })
}

fn parse_channels(args: impl Iterator<Item = String>) -> Result<Command, CliError> {
    let mut args = args.peekable();
    let (mut channel, mut prefix, mut top, mut http) = (None, None, None, None);
    let mut socket = PathBuf::from(DEFAULT_SOCKET);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--prefix" => prefix = Some(value(&mut args, "--prefix")?),
            "--top" => top = Some(value(&mut args, "--top")?),
            "--socket" => socket = PathBuf::from(value(&mut args, "--socket")?),
            "--http" => http = Some(value(&mut args, "--http")?),
            f if f.starts_with("--") => {
                return Err(CliError(format!(
                    "{f}: unknown flag for channels (see --help)"
                )))
            }
            _ if channel.is_none() => channel = Some(a),
            _ => return Err(CliError(format!("'{a}': unexpected argument for channels"))),
        }
    }
    let query =
        crate::codec::counts::Query::build(channel.as_deref(), prefix.as_deref(), top.as_deref())
            .map_err(|e| CliError(format!("channels: {e}")))?;
    Ok(Command::Channels {
        query,
        http,
        socket,
    })
}

fn parse_connection(args: impl Iterator<Item = String>) -> Result<Command, CliError> {
    let mut args = args.peekable();
    let mut req = serde_json::json!({"method": "connection"});
    let mut socket = PathBuf::from(DEFAULT_SOCKET);
    let mut http = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            // Whatever the connection's kind, it takes TEXT: a WebSocket as
            // a text message, a stream and a long-poll with a newline added
            // (as `corepin publish` sends them).
            "--message" => {
                let text = value(&mut args, "--message")?;
                req["ws-message"] = serde_json::json!({ "content": text });
                req["http-stream"] = serde_json::json!({ "content": format!("{text}\n") });
                req["http-response"] = serde_json::json!({ "body": format!("{text}\n") });
            }
            "--close" => req["action"] = "close".into(),
            "--code" => {
                let c = value(&mut args, "--code")?;
                let n: u16 = c
                    .parse()
                    .map_err(|_| CliError(format!("--code: '{c}' is not a close code")))?;
                req["code"] = n.into();
            }
            "--socket" => socket = PathBuf::from(value(&mut args, "--socket")?),
            "--http" => http = Some(value(&mut args, "--http")?),
            f if f.starts_with("--") => {
                return Err(CliError(format!(
                    "{f}: unknown flag for connection (see --help)"
                )))
            }
            _ if req.get("id").is_none() => req["id"] = a.into(),
            _ => {
                return Err(CliError(format!(
                    "'{a}': unexpected argument for connection"
                )))
            }
        }
    }
    crate::control_socket::connection_request(&req).map_err(CliError)?;
    Ok(Command::Connection {
        request: req,
        http,
        socket,
    })
}

pub use crate::codec::Invalid as CliError;

fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, CliError> {
    args.next()
        .ok_or_else(|| CliError(format!("{flag}: missing value")))
}

/// Parses `args` (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, CliError> {
    let mut args = args.into_iter().peekable();
    match args.peek().map(String::as_str) {
        Some("publish") => {
            args.next();
            return parse_publish(args);
        }
        Some("stats") => {
            args.next();
            return parse_stats(args);
        }
        Some("channels") => {
            args.next();
            return parse_channels(args);
        }
        Some("connection") => {
            args.next();
            return parse_connection(args);
        }
        _ => {}
    }
    let sub = match args.peek().map(String::as_str) {
        Some("run") | Some("check") => args.next(),
        _ => None,
    };
    let mut config = None;
    let mut ov = Overrides::default();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut val = |flag: &str| match inline.clone() {
            Some(v) => Ok(v),
            None => value(&mut args, flag),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--config" | "-c" | "--pushpin-config" => {
                if config.is_some() {
                    return Err(CliError(
                        "give one of --config and --pushpin-config, once".into(),
                    ));
                }
                let path = PathBuf::from(val(&flag)?);
                config = Some(if flag == "--pushpin-config" {
                    ConfigFile::Pushpin(path)
                } else {
                    ConfigFile::Toml(path)
                });
            }
            "--listen" => ov.listen.push(val("--listen")?),
            "--control-http" => ov.control_http = Some(val("--control-http")?),
            "--control-socket" => ov.control_socket = Some(val("--control-socket")?),
            "--route" => ov.routes.push(val("--route")?),
            "--workers" => {
                // 0 = every core, as `workers = 0` in the config file.
                let v = val("--workers")?;
                let n = v.parse::<usize>().map_err(|_| {
                    CliError(format!(
                        "--workers: '{v}' is not a number of cores (0 = every core)"
                    ))
                })?;
                ov.workers = Some(n);
            }
            "--log-level" => ov.log_level = Some(val("--log-level")?),
            "--history-messages" => {
                let v = val("--history-messages")?;
                let n = v.parse::<usize>().map_err(|_| {
                    CliError(format!(
                        "--history-messages: '{v}' is not a number of items (0 = off)"
                    ))
                })?;
                ov.history_messages = Some(n);
            }
            // TLS (issue 15).
            "--listen-tls" => ov.listen_tls.push(val("--listen-tls")?),
            "--tls-cert" => ov.tls_cert = Some(val("--tls-cert")?),
            "--tls-key" => ov.tls_key = Some(val("--tls-key")?),
            "--tls-certs-dir" => ov.tls_certs_dir = Some(val("--tls-certs-dir")?),
            "--ready-file" => ov.ready_file = Some(val("--ready-file")?),
            // Cluster (issue 17).
            "--cluster" => ov.cluster.push(val("--cluster")?),
            "--node" => ov.node = Some(val("--node")?),
            // io_uring data path (issue 16).
            "--data-path" => ov.data_path = Some(val("--data-path")?),
            other if other.starts_with('-') => {
                return Err(CliError(format!("{other}: unknown flag (see --help)")))
            }
            other => {
                return Err(CliError(format!(
                    "'{other}': unexpected argument (see --help)"
                )))
            }
        }
    }
    Ok(match sub.as_deref() {
        Some("check") => {
            if ov.ready_file.is_some() {
                return Err(CliError(
                    "--ready-file: only `corepin run` reports where it listens".into(),
                ));
            }
            if config.is_none() {
                return Err(CliError(
                    "check: --config FILE (or --pushpin-config FILE) is required".into(),
                ));
            }
            Command::Check {
                config,
                overrides: ov,
            }
        }
        _ => Command::Run {
            config,
            overrides: ov,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_run_and_overrides() {
        let Ok(Command::Run { config, overrides }) = p(&[
            "--listen",
            "127.0.0.1:0",
            "--listen=127.0.0.1:1",
            "--route",
            "* test",
            "--workers",
            "2",
            "--control-http",
            "",
            "--config",
            "x.toml",
        ]) else {
            panic!("not run")
        };
        assert_eq!(config, Some(ConfigFile::Toml(PathBuf::from("x.toml"))));
        let Ok(Command::Run { config, .. }) =
            p(&["run", "--pushpin-config", "/etc/pushpin/pushpin.conf"])
        else {
            panic!("not run")
        };
        assert_eq!(
            config,
            Some(ConfigFile::Pushpin(PathBuf::from(
                "/etc/pushpin/pushpin.conf"
            )))
        );
        assert_eq!(overrides.listen, vec!["127.0.0.1:0", "127.0.0.1:1"]);
        assert_eq!(overrides.routes, vec!["* test"]);
        assert_eq!(overrides.workers, Some(2));
        assert_eq!(overrides.control_http.as_deref(), Some(""));
        assert!(matches!(p(&["run"]), Ok(Command::Run { .. })));
        let Ok(Command::Run { overrides, .. }) = p(&["--workers", "0"]) else {
            panic!("--workers 0 is every core")
        };
        assert_eq!(overrides.workers, Some(0));
        let Ok(Command::Run { overrides, .. }) = p(&["--history-messages", "64"]) else {
            panic!("--history-messages runs")
        };
        assert_eq!(overrides.history_messages, Some(64));
        assert!(
            p(&["--history-messages", "lots"]).is_err_and(
                |e| e.0 == "--history-messages: 'lots' is not a number of items (0 = off)"
            )
        );
        let Ok(Command::Run { overrides, .. }) = p(&["--ready-file", "/run/x.json"]) else {
            panic!("--ready-file runs")
        };
        assert_eq!(overrides.ready_file.as_deref(), Some("/run/x.json"));
        assert!(matches!(p(&[]), Ok(Command::Run { .. })));
        assert!(matches!(
            p(&["check", "--config", "f"]),
            Ok(Command::Check { .. })
        ));
    }

    #[test]
    fn errors_name_the_flag() {
        for (args, needle) in [
            (&["--workers", "-1"][..], "--workers: '-1'"),
            (&["--workers", "x"][..], "--workers: 'x'"),
            (&["--listen"][..], "--listen: missing value"),
            (&["--bogus"][..], "--bogus: unknown flag"),
            (
                &["check"][..],
                "--config FILE (or --pushpin-config FILE) is required",
            ),
            (&["stray"][..], "'stray': unexpected"),
            (&["publish"][..], "CHANNEL is required"),
            (&["publish", "c"][..], "CONTENT is required"),
            (
                &["publish", "c", "x", "--bogus"][..],
                "--bogus: unknown flag",
            ),
            (&["stats", "--socket"][..], "--socket: missing value"),
            (
                &["--config", "a", "--pushpin-config", "b"][..],
                "one of --config and --pushpin-config",
            ),
            (&["--pushpin-config"][..], "--pushpin-config: missing value"),
            (&["--listen-tls"][..], "--listen-tls: missing value"),
            (&["--tls-cert"][..], "--tls-cert: missing value"),
            (&["--tls-key"][..], "--tls-key: missing value"),
            (&["--tls-certs-dir"][..], "--tls-certs-dir: missing value"),
            (&["--ready-file"][..], "--ready-file: missing value"),
            (
                &["check", "--config", "c", "--ready-file", "r"][..],
                "--ready-file: only `corepin run`",
            ),
            (&["--cluster"][..], "--cluster: missing value"),
            (&["--node"][..], "--node: missing value"),
        ] {
            let e = p(args).expect_err(needle).0;
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn parses_cluster_flags() {
        let Ok(Command::Run { overrides, .. }) = p(&[
            "--cluster",
            "nats://a:1",
            "--cluster=nats://b:2",
            "--node",
            "web-1",
        ]) else {
            panic!("not run")
        };
        assert_eq!(overrides.cluster, vec!["nats://a:1", "nats://b:2"]);
        assert_eq!(overrides.node.as_deref(), Some("web-1"));
    }

    #[test]
    fn parses_tls_flags() {
        let Ok(Command::Check { overrides, .. }) = p(&[
            "check",
            "--config",
            "c.toml",
            "--listen-tls",
            "127.0.0.1:0",
            "--listen-tls=[::1]:8443",
            "--tls-cert",
            "a.crt",
            "--tls-key=a.key",
            "--tls-certs-dir",
            "d",
        ]) else {
            panic!("not check")
        };
        assert_eq!(overrides.listen_tls, vec!["127.0.0.1:0", "[::1]:8443"]);
        assert_eq!(overrides.tls_cert.as_deref(), Some("a.crt"));
        assert_eq!(overrides.tls_key.as_deref(), Some("a.key"));
        assert_eq!(overrides.tls_certs_dir.as_deref(), Some("d"));
    }

    #[test]
    fn channels_subcommand() {
        use crate::codec::counts::Query;
        let Ok(Command::Channels { query, http, .. }) = p(&["channels", "a"]) else {
            panic!()
        };
        assert_eq!((query, http), (Query::Channel("a".into()), None));
        let Ok(Command::Channels { query, http, .. }) = p(&[
            "channels",
            "--prefix",
            "r.",
            "--top",
            "3",
            "--http",
            "http://h:1",
        ]) else {
            panic!()
        };
        let top = Query::Top {
            prefix: "r.".into(),
            top: 3,
        };
        assert_eq!((query, http.as_deref()), (top, Some("http://h:1")));
        assert!(p(&["channels", "a", "--top", "2"]).is_err());
        assert!(p(&["channels", "--top"]).is_err());
        assert!(p(&["channels", "--bogus"]).is_err());
    }
}
