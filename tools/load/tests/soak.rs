//! `corepin-load soak` and `grip-backend` as real processes against a real
//! corepin: a few seconds of the soak run (benches/soak.sh runs it for ten
//! minutes) must hold subscribers of every kind through the backend, find
//! every message due to a healthy subscriber, and say so in its JSON.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_corepin-load");

/// A child process killed when dropped, also when the test fails midway.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grip_backend(hold_log: &std::path::Path) -> (Reaped, u16) {
    let mut child = Reaped(
        Command::new(LOAD)
            .args(["grip-backend", "127.0.0.1:0", "--hold-log"])
            .arg(hold_log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("grip backend"),
    );
    let mut line = String::new();
    let stdout = child.0.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("port line");
    (child, line.trim().parse().expect("port"))
}

/// corepin (the workspace's binary) with `routes`; its client and control
/// HTTP addresses.
fn corepin(routes: &[String]) -> (Reaped, SocketAddr, SocketAddr) {
    let bin = PathBuf::from(LOAD).with_file_name("corepin");
    assert!(
        bin.exists(),
        "{} is missing: run with `cargo test --workspace`",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--control-http", "127.0.0.1:0"])
        .args(["--control-socket", "", "--log-level", "info"]);
    for r in routes {
        cmd.args(["--route", r]);
    }
    let mut child = Reaped(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start corepin"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut addr, mut control) = (None, None);
    while addr.is_none() || control.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("corepin reports its ports");
        let Some(rest) = line.split("listening on ").nth(1) else {
            continue;
        };
        let a: Option<SocketAddr> = rest.split(' ').next().and_then(|a| a.parse().ok());
        if line.contains("(clients)") {
            addr = a;
        } else if line.contains("(control http)") {
            control = a;
        }
    }
    (
        child,
        addr.expect("client address"),
        control.expect("control address"),
    )
}

fn n(v: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} in {v}"))
}

#[test]
fn a_short_soak_finds_every_message_due_to_healthy_subscribers() {
    let dir = std::env::temp_dir().join(format!("corepin-soak-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let holds = dir.join("holds.log");
    let (_backend, port) = grip_backend(&holds);
    let (_c, to, control) = corepin(&[
        format!("*,path_beg=/wsoh 127.0.0.1:{port},over_http"),
        format!("* 127.0.0.1:{port}"),
    ]);
    // Healthy sessions last to the end of the run, so every message is
    // due to them; slow and never-reading ones come and go.
    let flags = format!(
        "soak --to {to} --publish-to {control} --seconds 6 --slots 80 --workers 2 \
         --channels 8 --hot-channels 2 --rate 40 --burst-every 2 --burst-items 40 \
         --hot-items 5 --hot-size 2000 --lifetime-s 60-70 --slow-lifetime-s 1-2 \
         --ramp-s 1 --grace-s 1 --hold-log {}",
        holds.display()
    );
    let out = Command::new(LOAD)
        .args(flags.split_whitespace())
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run the soak");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(n(&v, "healthy.lost"), 0, "{v}");
    assert_eq!(n(&v, "healthy.duplicated"), 0, "{v}");
    assert_eq!(n(&v, "healthy.out_of_order"), 0, "{v}");
    // Every kind was subscribed and had messages due, and got them.
    for kind in ["stream", "ws", "ws_over_http"] {
        let g = format!("groups.healthy/{kind}");
        assert!(n(&v, &format!("{g}.subscribed")) > 0, "{kind}: {v}");
        assert!(n(&v, &format!("{g}.expected")) > 0, "{kind}: {v}");
        assert!(
            n(&v, &format!("{g}.received")) >= n(&v, &format!("{g}.expected")),
            "{kind}: {v}"
        );
    }
    // Long-polls were answered, each held request counted from when the
    // backend answered it.
    let polls = n(&v, "groups.healthy/longpoll.polls");
    assert!(polls > 0, "{v}");
    assert_eq!(n(&v, "groups.healthy/longpoll.holds_logged"), polls, "{v}");
    // The bursts went out, and nothing failed on the way.
    assert!(n(&v, "publish.bursts") >= 2, "{v}");
    assert_eq!(v["publish"]["errors"], serde_json::json!({}), "{v}");
    assert_eq!(v["workers_summary"]["errors"], serde_json::json!({}), "{v}");
    assert!(n(&v, "records") > 80, "sessions churned: {v}");
    // corepin's own counters were read.
    assert!(
        v["metrics_during_run"]["corepin_deliveries_total"].as_f64() > Some(0.0),
        "{v}"
    );
}
