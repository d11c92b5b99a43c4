//! Processes the tests start: corepin itself, learning its addresses from
//! the JSON it writes to `--ready-file` once every core accepts; the Python
//! backends, which print their port; and the files tests hand them.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{POLL, TIMEOUT};

/// A running corepin process, killed on drop.
pub struct Corepin {
    pub child: Child,
    /// The first client address's port.
    pub port: u16,
    /// The control HTTP port, when there is one.
    pub control_port: Option<u16>,
    /// What corepin wrote to its ready file (see the README's command line).
    pub ready: serde_json::Value,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    dir: TempDir,
}

/// Collects a child's output lines as they come.
fn collect(r: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if let Ok(mut v) = into.lock() {
                v.push(line);
            }
        }
    });
}

/// The port of the first address in `ready[key]`.
fn first_port(ready: &serde_json::Value, key: &str) -> Option<u16> {
    ready[key]
        .as_array()?
        .first()?
        .as_str()?
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.port())
}

impl Corepin {
    /// Starts corepin with `args` plus `--listen 127.0.0.1:0` and waits
    /// until every core accepts.
    pub fn start(args: &[&str]) -> Corepin {
        Self::start_in(args, true)
    }

    pub fn start_in(args: &[&str], add_listen: bool) -> Corepin {
        Self::start_wrapped(&[], args, add_listen)
    }

    /// Starts corepin with a control HTTP port (for publishing).
    pub fn start_grip(args: &[&str]) -> Corepin {
        let mut all = vec!["--control-http", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Corepin::start(&all)
    }

    /// Starts corepin under a wrapper command that execs it (such as
    /// `prlimit --nofile=64:64`), so the child is still corepin.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str], add_listen: bool) -> Corepin {
        Self::start_full(wrapper, &[], args, add_listen)
    }

    /// Starts corepin (with `--listen 127.0.0.1:0`) with `env` added to
    /// its environment (`SSL_CERT_FILE`, say).
    pub fn start_env(env: &[(&str, &str)], args: &[&str]) -> Corepin {
        Self::start_full(&[], env, args, true)
    }

    fn start_full(
        wrapper: &[&str],
        env: &[(&str, &str)],
        args: &[&str],
        add_listen: bool,
    ) -> Corepin {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_corepin"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_corepin")),
        };
        let dir = TempDir::new("run");
        let ready_file = dir.path().join("ready.json");
        cmd.arg("--ready-file").arg(&ready_file);
        if add_listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--control-http") {
            cmd.args(["--control-http", ""]);
        }
        if !args.contains(&"--control-socket") {
            cmd.args(["--control-socket", ""]);
        }
        // The whole suite runs again over the io_uring data path with
        // `COREPIN_TEST_DATA_PATH=uring bash tests/run.sh`; set but empty
        // is the default data path, as unset is.
        if let Ok(path) = std::env::var("COREPIN_TEST_DATA_PATH") {
            if !path.is_empty() && !args.contains(&"--data-path") {
                cmd.args(["--data-path", &path]);
            }
        }
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start corepin");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().expect("stdout"), stdout.clone());
        collect(child.stderr.take().expect("stderr"), stderr.clone());
        let deadline = Instant::now() + TIMEOUT;
        // The file appears whole (written beside it, then renamed).
        let ready = loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                break serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("ready file {text:?}: {e}"));
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "corepin exited early: {status}: {:?}",
                    stderr.lock().map(|v| v.clone())
                );
            }
            assert!(
                Instant::now() < deadline,
                "corepin wrote no ready file: {:?}",
                stderr.lock().map(|v| v.clone())
            );
            thread::sleep(POLL);
        };
        let port = first_port(&ready, "listen").expect("corepin reports a client address");
        let control_port = first_port(&ready, "control_http");
        Corepin {
            child,
            port,
            control_port,
            ready,
            stdout,
            stderr,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The port of the first TLS listener, from the ready file.
    pub fn tls_port(&self) -> u16 {
        first_port(&self.ready, "listen_tls")
            .unwrap_or_else(|| panic!("no TLS address in {}", self.ready))
    }

    pub fn control_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.control_port.expect("control port")))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process by pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for exit; returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            thread::sleep(POLL);
        }
        None
    }

    /// Waits until a stdout line contains `needle`.
    pub fn wait_stdout(&self, needle: &str) -> String {
        wait_line(&self.stdout, needle)
    }

    pub fn wait_stderr(&self, needle: &str) -> String {
        wait_line(&self.stderr, needle)
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Corepin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wait_line(lines: &Arc<Mutex<Vec<String>>>, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if let Some(l) = lines
            .lock()
            .ok()
            .and_then(|v| v.iter().find(|l| l.contains(needle)).cloned())
        {
            return l;
        }
        thread::sleep(POLL);
    }
    panic!(
        "no line containing {needle:?} in {:?}",
        lines.lock().map(|v| v.clone())
    );
}

/// A directory of its own under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "corepin-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python of the test venv (tests/run.sh makes it).
pub fn python() -> PathBuf {
    std::env::var_os("COREPIN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/pyenv/bin/python"))
}

/// Writes a config file to a temp path and returns the path.
pub fn write_config(text: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "corepin-test-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

/// A Python backend process, killed on drop.
pub struct PyBackend {
    child: Child,
    pub port: u16,
}

impl PyBackend {
    /// Starts tests/backends/SCRIPT with ARGS; it prints its port.
    pub fn start(script: &str, args: &[&str]) -> PyBackend {
        let mut child = Command::new(python())
            .arg(root().join("tests/backends").join(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python backend (run tests/run.sh to install)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port line");
        let port = line.trim().parse().expect("backend port");
        PyBackend { child, port }
    }
}

impl Drop for PyBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
