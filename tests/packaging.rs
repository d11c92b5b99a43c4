//! The packaging files (README "Packaging"): the container and Debian
//! configs pass `corepin check`, the Debian config stays the embedded
//! default but for its control socket, the seccomp profile is Docker's
//! format and allows io_uring, and the paths the Dockerfile, the systemd
//! unit and Cargo.toml's `[package.metadata.deb]` name agree with each
//! other. The package itself is built, installed and run by
//! tests/deb_smoke.sh (in CI).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs `corepin ARGS` to completion (bounded); returns (exit code, stdout, stderr).
fn corepin(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corepin");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("corepin {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    let _ = child.stdout.take().map(|mut o| o.read_to_string(&mut out));
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    (status.code(), out, err)
}

#[test]
fn the_container_and_debian_configs_pass_check() {
    for file in ["config/container.toml", "config/debian.toml"] {
        let file = path(file);
        let file = file.to_str().expect("utf-8 path");
        let (code, out, err) = corepin(&["check", "--config", file]);
        assert_eq!(code, Some(0), "{file}: {err}");
        assert_eq!(out, "config ok\nroute: * test\n", "{file}");
    }
}

/// The lines after the header comment (everything up to the first blank line).
fn body(text: &str) -> &str {
    let end = text
        .find("\n\n")
        .expect("a header comment, then a blank line");
    &text[end + 2..]
}

#[test]
fn the_debian_config_is_the_default_but_for_the_control_socket() {
    let default = read("config/corepin.toml");
    let debian = read("config/debian.toml");
    let default_line = "control_socket = \"/tmp/corepin.sock\"\n";
    let debian_line = "control_socket = \"/run/corepin/corepin.sock\"\n";
    assert!(body(&default).contains(default_line));
    assert_eq!(
        body(&debian),
        body(&default).replacen(default_line, debian_line, 1),
        "config/debian.toml must stay config/corepin.toml (every field, comment and default) \
         with only its control_socket changed: copy the change over"
    );
    // /run/corepin is the unit's RuntimeDirectory, made for the service.
    let unit = read("config/corepin.service");
    assert!(unit.lines().any(|l| l == "RuntimeDirectory=corepin"));
}

const ACTIONS: &[&str] = &[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
];
const OPS: &[&str] = &[
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string"))
        .collect()
}

/// Checks one `includes`/`excludes` filter of a syscall rule.
fn check_filter(v: &Value, what: &str) {
    let allowed: BTreeSet<&str> = ["arches", "caps", "minKernel"].into();
    assert!(keys(v).is_subset(&allowed), "{what}: {:?}", keys(v));
    for k in ["arches", "caps"] {
        if let Some(list) = v.get(k) {
            assert!(!strings(list).is_empty(), "{what}.{k} is empty");
        }
    }
    if let Some(caps) = v.get("caps") {
        assert!(
            strings(caps).iter().all(|c| c.starts_with("CAP_")),
            "{what}"
        );
    }
    if let Some(k) = v.get("minKernel") {
        let k = k.as_str().expect("minKernel is a string");
        assert!(
            k.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{what}: {k}"
        );
    }
}

#[test]
fn the_seccomp_profile_is_dockers_format_and_allows_io_uring() {
    let text = read("config/seccomp-io_uring.json");
    let p: Value = serde_json::from_str(&text).expect("valid JSON");

    // Docker's seccomp profile format (what `docker run --security-opt
    // seccomp=FILE` reads): deny by default with EPERM, allow by name.
    let top: BTreeSet<&str> = ["defaultAction", "defaultErrnoRet", "archMap", "syscalls"].into();
    assert_eq!(keys(&p), top);
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(p["defaultErrnoRet"], 1);
    let arches: Vec<&str> = p["archMap"]
        .as_array()
        .expect("archMap")
        .iter()
        .map(|a| a["architecture"].as_str().expect("architecture"))
        .collect();
    assert!(arches.contains(&"SCMP_ARCH_X86_64") && arches.contains(&"SCMP_ARCH_AARCH64"));
    for a in p["archMap"].as_array().expect("archMap") {
        let sub = &a["subArchitectures"];
        assert!(sub.is_null() || strings(sub).iter().all(|s| s.starts_with("SCMP_ARCH_")));
    }

    let rule_keys: BTreeSet<&str> = [
        "names", "action", "errnoRet", "args", "includes", "excludes", "comment",
    ]
    .into();
    let mut unconditional = BTreeSet::new();
    let rules = p["syscalls"].as_array().expect("syscalls");
    for (i, r) in rules.iter().enumerate() {
        let what = format!("syscalls[{i}]");
        assert!(keys(r).is_subset(&rule_keys), "{what}: {:?}", keys(r));
        let action = r["action"].as_str().expect("action");
        assert!(ACTIONS.contains(&action), "{what}: {action}");
        if r.get("errnoRet").is_some() {
            assert_eq!(action, "SCMP_ACT_ERRNO", "{what}: errnoRet without ERRNO");
        }
        let names = strings(&r["names"]);
        assert!(!names.is_empty(), "{what}");
        for n in &names {
            assert!(
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{what}: '{n}' is not a syscall name"
            );
        }
        if let Some(args) = r.get("args") {
            for a in args.as_array().expect("args") {
                let ak: BTreeSet<&str> = ["index", "value", "valueTwo", "op"].into();
                assert!(keys(a).is_subset(&ak), "{what}");
                assert!(a["index"].as_u64().is_some_and(|i| i < 6), "{what}");
                assert!(a["value"].as_u64().is_some(), "{what}");
                assert!(OPS.contains(&a["op"].as_str().expect("op")), "{what}");
            }
        }
        for f in ["includes", "excludes"] {
            if let Some(v) = r.get(f) {
                check_filter(v, &format!("{what}.{f}"));
            }
        }
        let conditional = ["args", "includes", "excludes"]
            .iter()
            .any(|k| r.get(k).is_some());
        if action == "SCMP_ACT_ALLOW" && !conditional {
            for n in names {
                assert!(unconditional.insert(n), "{n} is listed twice");
            }
        }
    }

    // What corepin needs: io_uring allowed whatever the container's
    // capabilities or architecture ...
    for n in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(
            unconditional.contains(n),
            "{n} is not allowed unconditionally"
        );
    }
    // ... threads (clone3 answers ENOSYS so that glibc falls back to
    // clone, which is allowed without namespace flags) ...
    let only = |name: &str| -> Vec<&Value> {
        rules
            .iter()
            .filter(|r| strings(&r["names"]) == [name])
            .collect()
    };
    let clone3 = only("clone3");
    assert_eq!(clone3.len(), 1);
    assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
    assert_eq!(clone3[0]["errnoRet"], 38);
    assert!(only("clone")
        .iter()
        .any(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("includes").is_none()));
    // ... and what it does on every core: locked memory for io_uring's
    // buffers, pinning, sockets, timers and eventfds.
    for n in [
        "mlock",
        "mmap",
        "sched_setaffinity",
        "accept4",
        "bind",
        "listen",
        "setsockopt",
        "epoll_wait",
        "eventfd2",
        "timerfd_create",
        "futex",
        "rt_sigaction",
        "membarrier",
    ] {
        assert!(unconditional.contains(n), "{n} is not allowed");
    }
    // Docker's default denials stay denied.
    for n in [
        "mount",
        "unshare",
        "setns",
        "bpf",
        "ptrace",
        "kexec_load",
        "reboot",
    ] {
        assert!(
            !unconditional.contains(n),
            "{n} must not be allowed unconditionally"
        );
    }
}

/// The port of an "ADDR:PORT" string.
fn port(addr: &str) -> &str {
    addr.rsplit(':').next().expect("ADDR:PORT")
}

#[test]
fn the_dockerfile_unit_and_deb_metadata_name_the_same_paths() {
    // Cargo.toml: binary to /usr/bin, the Debian config as the conffile,
    // the unit found in config/.
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let deb = &cargo["package"]["metadata"]["deb"];
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let a = a.as_array().expect("[source, dest, mode]");
            (
                a[0].as_str().expect("source").to_string(),
                a[1].as_str().expect("dest").to_string(),
            )
        })
        .collect();
    for (src, dest) in [
        ("target/release/corepin", "usr/bin/"),
        ("config/debian.toml", "etc/corepin/corepin.toml"),
    ] {
        assert!(
            assets.iter().any(|(s, d)| s == src && d == dest),
            "Cargo.toml [package.metadata.deb] assets: no {src} -> {dest}"
        );
    }
    for (src, _) in &assets {
        if !src.starts_with("target/") {
            assert!(path(src).is_file(), "asset {src} is missing");
        }
    }
    let units = deb["systemd-units"]["unit-scripts"]
        .as_str()
        .expect("unit-scripts");
    assert!(path(units).join("corepin.service").is_file());

    // The unit runs that binary on that config.
    let unit = read("config/corepin.service");
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/corepin run --config /etc/corepin/corepin.toml"),
        "config/corepin.service ExecStart"
    );

    // The Dockerfile installs config/container.toml where its command reads
    // it, and exposes the ports that config listens on.
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().collect();
    assert!(lines.contains(&"COPY config/container.toml /etc/corepin/corepin.toml"));
    assert!(lines.contains(&"ENTRYPOINT [\"/usr/bin/corepin\"]"));
    assert!(lines.contains(&"CMD [\"run\", \"--config\", \"/etc/corepin/corepin.toml\"]"));
    let container: toml::Value = toml::from_str(&read("config/container.toml")).expect("toml");
    let listen = container["listen"].as_array().expect("listen");
    let mut ports: Vec<&str> = listen
        .iter()
        .map(|a| port(a.as_str().expect("address")))
        .collect();
    ports.push(port(
        container["control_http"].as_str().expect("control_http"),
    ));
    let expose = lines
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    assert_eq!(expose.split(' ').collect::<Vec<_>>(), ports);
    // Inside a container, loopback cannot be reached from outside.
    for a in listen {
        assert!(a.as_str().is_some_and(|a| a.starts_with("0.0.0.0:")));
    }
    assert!(path(".dockerignore").is_file());
}
