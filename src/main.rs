//! The `corepin` binary: arguments -> Config -> server::run.

use std::process::ExitCode;

use corepin::cli::{self, Command, ConfigFile};
use corepin::client;
use corepin::config::{Config, Overrides};

/// The config, and the one warning line naming what a pushpin.conf sets
/// that corepin does not support.
fn load(config: Option<&ConfigFile>, ov: &Overrides) -> Result<(Config, Option<String>), String> {
    match config {
        Some(ConfigFile::Toml(path)) => Config::load(path, ov).map(|c| (c, None)),
        Some(ConfigFile::Pushpin(path)) => {
            corepin::pushpin_conf::load(path, ov).map(|p| (p.config, p.warning))
        }
        None => Config::default_with(ov).map(|c| (c, None)),
    }
    .map_err(|e| e.0)
}

fn main() -> ExitCode {
    let cmd = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corepin: {}", e.0);
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("corepin {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Publish {
            channel,
            content,
            format,
            id,
            prev_id,
            http,
            socket,
        } => {
            let body = client::publish_body(
                &channel,
                &content,
                format,
                id.as_deref(),
                prev_id.as_deref(),
            );
            let result = match http {
                Some(url) => client::http_publish(&url, &body),
                None => {
                    let mut req = body;
                    req["method"] = "publish".into();
                    client::socket_request(&socket, &req).and_then(|a| {
                        match a.get("ok").and_then(|o| o.as_bool()) {
                            Some(true) => Ok(()),
                            _ => Err(format!(
                                "publish refused: {}",
                                a.get("error").and_then(|e| e.as_str()).unwrap_or("?")
                            )),
                        }
                    })
                }
            };
            match result {
                Ok(()) => {
                    println!("Published");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("corepin: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Stats { socket } => {
            match client::socket_request(&socket, &serde_json::json!({"method": "stats"})) {
                Ok(v) => {
                    print!("{}", client::format_stats(&v));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("corepin: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Channels {
            query,
            http,
            socket,
        } => match client::channels(&query, http.as_deref(), &socket) {
            Ok(list) => {
                for (channel, n) in list {
                    println!("{n}\t{channel}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("corepin: {e}");
                ExitCode::from(1)
            }
        },
        Command::Connection {
            request,
            http,
            socket,
        } => {
            let answer = match &http {
                Some(url) => client::http_connection(url, &request),
                None => client::socket_request(&socket, &request),
            };
            match answer {
                Ok(a) if a.get("ok").and_then(|o| o.as_bool()) == Some(true) => {
                    println!("ok");
                    ExitCode::SUCCESS
                }
                Ok(a) => {
                    eprintln!(
                        "corepin: {}",
                        a.get("error").and_then(|e| e.as_str()).unwrap_or("?")
                    );
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("corepin: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { config, overrides } => match load(config.as_ref(), &overrides) {
            Ok((cfg, warning)) => {
                let tls = corepin::tls::check(&cfg);
                if !tls.problems.is_empty() {
                    for p in &tls.problems {
                        eprintln!("corepin: {p}");
                    }
                    return ExitCode::from(2);
                }
                if let Some(w) = warning {
                    println!("warning: {w}");
                }
                println!("config ok");
                for r in cfg.routes.iter() {
                    println!("route: {}", r.line);
                }
                for line in &tls.info {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("corepin: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, overrides } => {
            let (cfg, warning) = match load(config.as_ref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("corepin: {e}");
                    return ExitCode::from(2);
                }
            };
            let tls_warnings = match corepin::tls::backend_targets(&cfg.routes) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("corepin: {e}");
                    return ExitCode::from(2);
                }
            };
            corepin::log::set_level(cfg.log_level);
            for w in tls_warnings {
                corepin::warn!("{w}");
            }
            if let Some(w) = warning {
                corepin::warn!("{w}");
            }
            if let Err(e) = corepin::server::check_runtime() {
                eprintln!("corepin: {e}");
                return ExitCode::from(2);
            }
            if let Err(e) = corepin::uring::trace::check_env() {
                eprintln!("corepin: {e}");
                return ExitCode::from(2);
            }
            // Once corepin can run: an environment it cannot run in is
            // reported alone.
            if cfg.grip.public_default_key {
                corepin::warn!("{}", corepin::config::PUBLIC_KEY_WARNING);
            }
            // The system allocator, with freed memory given back after
            // peaks (src/memtrim.rs says why not another allocator).
            corepin::memtrim::spawn();
            match corepin::server::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("corepin: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
