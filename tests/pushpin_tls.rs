//! A Pushpin deployment's TLS, run by corepin unchanged: pushpin.conf's
//! `[runner] https_ports` served with the certificates Pushpin's runner
//! reads, `runner/certs` beside pushpin.conf (`HOST.crt` + `HOST.key`,
//! `_.DOMAIN` wildcards, `default_PORT` for clients whose name matches
//! none), over real sockets with curl and `openssl s_client`;
//! `corepin check --pushpin-config` listing and refusing them; a missing
//! or bad certificates directory named. Certificates are made at test
//! time.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;

/// A Pushpin deployment in a folder of its own: pushpin.conf with the
/// given `[runner]` lines, its routes file, `runner/certs`, and the CA
/// clients trust.
struct Deployment {
    dir: TempDir,
    conf: String,
    certs: PathBuf,
    ca: Ca,
    ca_file: String,
}

fn deployment(runner: &str, routes: &str) -> Deployment {
    let dir = TempDir::new("pptls");
    let d = dir.path();
    std::fs::write(
        d.join("pushpin.conf"),
        format!(
            "[global]\nrundir={}/run\n\n[runner]\nservices=condure,pushpin-proxy,pushpin-handler\n{runner}\nlog_level=2\n\n[proxy]\nroutesfile=routes\n",
            d.display()
        ),
    )
    .expect("pushpin.conf");
    std::fs::write(d.join("routes"), routes).expect("routes");
    let certs = d.join("runner/certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    // What Pushpin's package ships there.
    std::fs::write(certs.join("README"), "Empty directory.\n").expect("README");
    let ca = Ca::new("pushpin tls test CA");
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).expect("ca");
    Deployment {
        conf: d.join("pushpin.conf").display().to_string(),
        certs,
        ca,
        ca_file: ca_file.display().to_string(),
        dir,
    }
}

/// Runs a client bounded by its own timeout flag.
fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("spawn")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// curl over https to `host` (resolved to 127.0.0.1:`port`), trusting
/// only the deployment's CA: `Ok(body)` or `Err(why)`.
fn curl_https(d: &Deployment, host: &str, port: u16) -> Result<String, String> {
    let o = output(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert", &d.ca_file])
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .arg(format!("https://{host}:{port}/x")),
    );
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(text(&o))
    }
}

/// The subject CN of the certificate corepin serves on `port` to a client
/// sending `sni` (or none), seen by `openssl s_client`; `None` when the
/// handshake fails.
fn served_cn(port: u16, sni: Option<&str>) -> Option<String> {
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"));
    match sni {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let o = output(&mut cmd);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    out.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(|s| s.rsplit("CN = ").next().unwrap_or(s).trim().to_string())
}

fn corepin(args: &[&str]) -> Output {
    output(
        Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_corepin"))
            .args(args),
    )
}

#[test]
fn https_ports_serve_runner_certs_by_sni_beside_http_port() {
    let backend = Backend::fixed("from the backend");
    let d = deployment(
        // Port 0 (a free port; tests use no fixed ports): its default is
        // default_0, by Pushpin's rule default_PORT.
        "http_port=127.0.0.1:0\nhttps_ports=127.0.0.1:0",
        &format!("* {}\n", backend.addr),
    );
    d.ca.leaf_with(&d.certs, "default_0", &["localhost"], |_| {});
    d.ca.leaf_with(&d.certs, "api.example.com", &["api.example.com"], |_| {});
    d.ca.leaf_with(&d.certs, "_.example.org", &["*.example.org"], |_| {});

    // check lists what would be served, one line each.
    let o = corepin(&["check", "--pushpin-config", &d.conf]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let c = d.certs.display();
    for line in [
        format!("tls: *.example.org <- {c}/_.example.org.crt"),
        format!("tls: api.example.com <- {c}/api.example.com.crt"),
        format!("tls: default <- {c}/default_0.crt"),
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in {out}");
    }
    assert!(!out.contains("warning"), "{out}");

    let cp = Corepin::start_in(&["--pushpin-config", &d.conf], false);
    let port = cp.tls_port();
    // The plain port, as before.
    let o = output(
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(cp.url("/x")),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from the backend");
    assert_eq!(backend.last().header("x-forwarded-proto"), Some("http"));
    // The TLS port: curl checks the name, so each answer shows the right
    // certificate was chosen.
    for host in ["api.example.com", "www.example.org", "localhost"] {
        assert_eq!(
            curl_https(&d, host, port).as_deref(),
            Ok("from the backend"),
            "{host}"
        );
        assert_eq!(backend.last().header("x-forwarded-proto"), Some("https"));
    }
    // A name with no certificate of its own, or none at all: the port's
    // default (curl then refuses it for the name, as it should).
    assert_eq!(
        served_cn(port, Some("api.example.com")).as_deref(),
        Some("api.example.com")
    );
    assert_eq!(
        served_cn(port, Some("a.example.org")).as_deref(),
        Some("*.example.org")
    );
    assert_eq!(
        served_cn(port, Some("other.example.net")).as_deref(),
        Some("localhost")
    );
    assert_eq!(served_cn(port, None).as_deref(), Some("localhost"));
    let e = curl_https(&d, "other.example.net", port).expect_err("wrong name");
    assert!(e.contains("other.example.net"), "{e}");
}

#[test]
fn the_port_written_in_https_ports_names_the_default() {
    let backend = Backend::fixed("ok");
    let d = deployment(
        "http_port=127.0.0.1:0\nhttps_ports=8443",
        &format!("* {}\n", backend.addr),
    );
    d.ca.leaf_with(&d.certs, "default_8443", &["default.test"], |_| {});
    d.ca.leaf_with(&d.certs, "api.example.com", &["api.example.com"], |_| {});
    let o = corepin(&["check", "--pushpin-config", &d.conf]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "tls: default <- {}/default_8443.crt",
            d.certs.display()
        )),
        "{out}"
    );
    // --listen-tls moves the port (as --listen moves http_port); the
    // certificates stay those of the file's port 8443.
    let cp = Corepin::start_in(
        &["--pushpin-config", &d.conf, "--listen-tls", "127.0.0.1:0"],
        false,
    );
    let port = cp.tls_port();
    assert_eq!(served_cn(port, None).as_deref(), Some("default.test"));
    assert_eq!(curl_https(&d, "default.test", port).as_deref(), Ok("ok"));
    assert_eq!(curl_https(&d, "api.example.com", port).as_deref(), Ok("ok"));
}

#[test]
fn https_ports_alone_serve_without_a_default_as_pushpin() {
    let backend = Backend::fixed("tls only");
    let d = deployment("https_ports=127.0.0.1:0", &format!("* {}\n", backend.addr));
    d.ca.leaf_with(&d.certs, "api.example.com", &["api.example.com"], |_| {});
    let o = corepin(&["check", "--pushpin-config", &d.conf]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("tls: no default certificate: clients whose SNI name matches none are refused in the handshake"),
        "{out}"
    );
    // No plain port: the ready file is read here (the helper wants one).
    let ready = d.dir.path().join("ready.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(["--pushpin-config", &d.conf, "--ready-file"])
        .arg(&ready)
        .args(["--control-http", "", "--control-socket", ""])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("corepin");
    let started = Instant::now();
    let ready: serde_json::Value = loop {
        if let Ok(t) = std::fs::read_to_string(&ready) {
            break serde_json::from_str(&t).expect("ready json");
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("corepin exited: {status}");
        }
        assert!(started.elapsed() < TIMEOUT, "no ready file");
        std::thread::sleep(POLL);
    };
    assert_eq!(ready["listen"], serde_json::json!([]));
    let port: u16 = ready["listen_tls"][0]
        .as_str()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
        .expect("TLS address");
    assert_eq!(
        curl_https(&d, "api.example.com", port).as_deref(),
        Ok("tls only")
    );
    // No default_PORT: a name without a certificate is refused in the
    // handshake, as Pushpin's connmgr refuses it.
    assert_eq!(served_cn(port, Some("other.example.net")), None);
    assert_eq!(served_cn(port, None), None);
    let _ = child.kill();
    let _ = child.wait();
}

/// corepin refusing to check or start (exit status 2, or 1 from a
/// start-up that failed): its error lines (`run` logs its start-up before it reads the certificates).
fn refused(args: &[&str]) -> String {
    let o = corepin(args);
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "{args:?}: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.starts_with("corepin: "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn a_missing_or_bad_certificates_directory_is_named() {
    let d = deployment("http_port=127.0.0.1:0\nhttps_ports=443", "* test\n");
    let c = d.certs.display().to_string();
    let run_args = [
        "run",
        "--pushpin-config",
        &d.conf,
        "--control-http",
        "",
        "--control-socket",
        "",
    ];
    // Only Pushpin's README there: nothing to serve.
    for args in [&["check", "--pushpin-config", &d.conf][..], &run_args[..]] {
        let err = refused(args);
        assert_eq!(
            err.trim_end(),
            format!("corepin: {c}: holds no HOST.crt + HOST.key pair"),
            "{args:?}"
        );
    }
    // Bad files: one line each, naming the file.
    d.ca.leaf_with(&d.certs, "default_443", &["default.test"], |_| {});
    d.ca.leaf_with(&d.certs, "old.example.com", &["old.example.com"], |p| {
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    d.ca.leaf_with(&d.certs, "api.example.com", &["api.example.com"], |_| {});
    let other_key = std::fs::read(d.certs.join("default_443.key")).expect("key");
    std::fs::write(d.certs.join("api.example.com.key"), other_key).expect("swap key");
    for args in [&["check", "--pushpin-config", &d.conf][..], &run_args[..]] {
        let err = refused(args);
        let lines: Vec<&str> = err.lines().collect();
        let want = [
            format!("corepin: {c}/api.example.com.key: private key does not match the certificate in {c}/api.example.com.crt"),
            format!("corepin: {c}/old.example.com.crt: certificate expired on 2002-01-01T00:00:00Z"),
        ];
        assert_eq!(lines.len(), want.len(), "{args:?}: {err}");
        for (line, w) in lines.iter().zip(&want) {
            assert!(line.starts_with(w.as_str()), "{line:?} should start {w:?}");
        }
    }
    // No runner/certs at all.
    std::fs::remove_dir_all(&d.certs).expect("rm certs");
    for args in [&["check", "--pushpin-config", &d.conf][..], &run_args[..]] {
        let err = refused(args);
        assert_eq!(
            err.trim_end(),
            format!(
                "corepin: {}: [runner] https_ports: the certificates directory {c} (Pushpin's runner/certs beside pushpin.conf) cannot be read: No such file or directory (os error 2)",
                d.conf
            ),
            "{args:?}"
        );
    }
}

#[test]
fn a_changed_certificate_file_is_served_without_a_signal() {
    let backend = Backend::fixed("ok");
    let d = deployment(
        "http_port=127.0.0.1:0\nhttps_ports=127.0.0.1:0",
        &format!("* {}\n", backend.addr),
    );
    d.ca.leaf_with(&d.certs, "default_0", &["first.test"], |_| {});
    let cp = Corepin::start_in(&["--pushpin-config", &d.conf], false);
    cp.wait_stderr(&format!("watching {} for changes", d.certs.display()));
    let port = cp.tls_port();
    assert_eq!(served_cn(port, None).as_deref(), Some("first.test"));
    // A renewed certificate, moved into place as a deployment tool would.
    let staging = d.dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    d.ca.leaf_with(&staging, "default_0", &["second.test"], |_| {});
    for ext in ["key", "crt"] {
        std::fs::rename(
            staging.join(format!("default_0.{ext}")),
            d.certs.join(format!("default_0.{ext}")),
        )
        .expect("rename");
    }
    cp.wait_stderr("certificates reloaded");
    wait_until("the renewed certificate", || {
        served_cn(port, None).as_deref() == Some("second.test")
    });
    assert_eq!(curl_https(&d, "second.test", port).as_deref(), Ok("ok"));
    // A bad file keeps the certificates in force, and the log says why.
    std::fs::write(d.certs.join("bad.example.com.crt"), "not PEM\n").expect("bad");
    std::fs::write(d.certs.join("bad.example.com.key"), "not PEM\n").expect("bad");
    let line = cp.wait_stderr("bad.example.com.crt");
    assert!(
        line.contains(&format!(
            "certificates in {} changed: certificates not reloaded, keeping the old ones:",
            d.certs.display()
        )),
        "{line}"
    );
    assert_eq!(served_cn(port, None).as_deref(), Some("second.test"));
}
