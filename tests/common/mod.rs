//! Test equipment: start the real corepin binary on port 0, small
//! programmable backends, and raw HTTP clients over real sockets. Every
//! wait has a timeout so a broken build fails instead of hanging.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A running corepin process, killed on drop.
pub struct Corepin {
    pub child: Child,
    pub port: u16,
    pub control_port: Option<u16>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(
    r: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
    ready: Option<mpsc::Sender<String>>,
) {
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if let Some(tx) = &ready {
                let _ = tx.send(line.clone());
            }
            if let Ok(mut v) = into.lock() {
                v.push(line);
            }
        }
    });
}

impl Corepin {
    /// Starts corepin with `args` plus `--listen 127.0.0.1:0` and waits
    /// until it listens.
    pub fn start(args: &[&str]) -> Corepin {
        Self::start_in(args, true)
    }

    pub fn start_in(args: &[&str], add_listen: bool) -> Corepin {
        Self::start_wrapped(&[], args, add_listen)
    }

    /// Starts corepin under a wrapper command that execs it (such as
    /// `prlimit --nofile=64:64`), so the child is still corepin.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str], add_listen: bool) -> Corepin {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_corepin"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_corepin")),
        };
        if add_listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--control-http") {
            cmd.args(["--control-http", ""]);
        }
        if !args.contains(&"--control-socket") {
            cmd.args(["--control-socket", ""]);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start corepin");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        collect(child.stdout.take().expect("stdout"), stdout.clone(), None);
        collect(
            child.stderr.take().expect("stderr"),
            stderr.clone(),
            Some(tx),
        );
        let deadline = Instant::now() + TIMEOUT;
        let mut port = None;
        let mut control_port = None;
        while Instant::now() < deadline {
            let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "corepin exited early: {status}: {:?}",
                        stderr.lock().map(|v| v.clone())
                    );
                }
                continue;
            };
            let port_of = |l: &str| {
                l.rsplit(':')
                    .next()
                    .and_then(|p| p.split_whitespace().next())
                    .and_then(|p| p.parse::<u16>().ok())
            };
            if line.contains("listening on") && line.contains("(clients)") && port.is_none() {
                let addr = line
                    .split("listening on ")
                    .nth(1)
                    .unwrap_or("")
                    .split(' ')
                    .next()
                    .unwrap_or("");
                port = port_of(addr);
            }
            if line.contains("listening on") && line.contains("(control http)") {
                let addr = line
                    .split("listening on ")
                    .nth(1)
                    .unwrap_or("")
                    .split(' ')
                    .next()
                    .unwrap_or("");
                control_port = port_of(addr);
            }
            if line.contains("running on") {
                break;
            }
        }
        let port = port.expect("corepin did not report its port");
        Corepin {
            child,
            port,
            control_port,
            stdout,
            stderr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
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
            thread::sleep(Duration::from_millis(20));
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
        thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "no line containing {needle:?} in {:?}",
        lines.lock().map(|v| v.clone())
    );
}

impl Drop for Corepin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first value of `name` (case-insensitive) in a header list.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A request as a test backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Reads one request (head and Content-Length or chunked body) from `r`.
pub fn read_request(r: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        let end = line == b"\r\n" || line == b"\n";
        head.extend_from_slice(&line);
        if end {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&head).ok()?;
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = get("content-length") {
        let n: usize = len.trim().parse().ok()?;
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = read_chunked(r)?;
    }
    Some(Seen {
        method: req.method?.to_string(),
        path: req.path?.to_string(),
        headers,
        body,
    })
}

/// Reads a chunked body (test side, deliberately simple).
pub fn read_chunked(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            let mut t = String::new();
            loop {
                t.clear();
                r.read_line(&mut t).ok()?;
                if t == "\r\n" || t.is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).ok()?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).ok()?;
    }
}

/// What a backend handler does with a connection after a request.
pub enum Reply {
    /// Write these bytes and keep serving the connection.
    Bytes(Vec<u8>),
    /// Write these bytes and close.
    Close(Vec<u8>),
    /// The handler wrote (or deliberately did not write) on its own; close.
    Done,
}

pub type Handler = dyn Fn(&Seen, &mut TcpStream) -> Reply + Send + Sync;

/// A threaded test backend on 127.0.0.1:0.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(
        handler: impl Fn(&Seen, &mut TcpStream) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (seen, connections, stop) = (seen.clone(), connections.clone(), stop.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let (seen, handler) = (seen.clone(), handler.clone());
                    thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(TIMEOUT));
                        let mut w = stream.try_clone().expect("clone");
                        let mut r = BufReader::new(stream);
                        while let Some(req) = read_request(&mut r) {
                            if let Ok(mut s) = seen.lock() {
                                s.push(req.clone());
                            }
                            match handler(&req, &mut w) {
                                Reply::Bytes(b) => {
                                    if w.write_all(&b).is_err() {
                                        break;
                                    }
                                }
                                Reply::Close(b) => {
                                    let _ = w.write_all(&b);
                                    break;
                                }
                                Reply::Done => break,
                            }
                        }
                    });
                }
            });
        }
        Backend {
            addr,
            seen,
            connections,
            stop,
        }
    }

    /// A backend answering every request 200 with `body`.
    pub fn fixed(body: &'static str) -> Backend {
        Backend::start(move |_, _| Reply::Bytes(ok_response(body)))
    }

    pub fn route(&self) -> String {
        format!("* {}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request reached the backend")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

pub fn ok_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A parsed response read by a test client.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `r`; `head_request` means no body.
pub fn read_response(r: &mut BufReader<TcpStream>, head_request: bool) -> Option<Response> {
    let resp = read_head_only(r)?;
    let status = resp.status;
    if status == 100 {
        return read_response(r, head_request);
    }
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 {
    } else if let Some(len) = resp.header("content-length") {
        body.resize(len.trim().parse().ok()?, 0);
        r.read_exact(&mut body).ok()?;
    } else if resp.header("transfer-encoding").is_some() {
        body = read_chunked(r)?;
    } else {
        r.read_to_end(&mut body).ok()?;
    }
    Some(Response { body, ..resp })
}

/// A keep-alive client connection.
pub struct Conn {
    pub w: TcpStream,
    pub r: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Conn {
            w: s.try_clone().expect("clone"),
            r: BufReader::new(s),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("write");
    }

    pub fn read(&mut self) -> Option<Response> {
        read_response(&mut self.r, false)
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read().expect("a response")
    }

    /// True when the server closed the connection (EOF within the timeout).
    pub fn closed_within(&mut self, d: Duration) -> bool {
        let _ = self.r.get_ref().set_read_timeout(Some(d));
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
            || matches!(self.r.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// Sends raw bytes on a new connection and returns everything read until
/// the server closes (or the timeout).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A port nothing listens on.
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Corepin {
    /// Starts corepin with a control HTTP port (for publishing).
    pub fn start_grip(args: &[&str]) -> Corepin {
        let mut all = vec!["--control-http", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Corepin::start(&all)
    }

    pub fn control_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.control_port.expect("control port")))
    }

    /// POSTs a publish body; returns the response.
    pub fn publish(&self, json: &str) -> Response {
        self.control(&format!(
            "POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        ))
    }

    /// Sends a raw request to the control API and reads the response.
    pub fn control(&self, raw_request: &str) -> Response {
        let mut c = Conn::open(self.control_addr());
        c.send(raw_request.as_bytes());
        c.read().expect("control response")
    }

    /// Publishes `content` on `channel` as http-stream.
    pub fn publish_stream(&self, channel: &str, content: &str) {
        let body = serde_json::json!({"items":[{"channel":channel,"formats":{"http-stream":{"content":content}}}]});
        let r = self.publish(&body.to_string());
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// A client holding an HTTP stream: reads the head, then chunks one by one.
pub struct Stream {
    pub conn: Conn,
    pub head: Response,
}

impl Stream {
    pub fn open(addr: SocketAddr, path: &str) -> Stream {
        Self::open_with(addr, path, "")
    }

    pub fn open_with(addr: SocketAddr, path: &str, headers: &str) -> Stream {
        let mut conn = Conn::open(addr);
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").as_bytes());
        let head = read_head_only(&mut conn.r).expect("stream head");
        Stream { conn, head }
    }

    /// The next chunk's data (`None` at the last chunk or on close).
    pub fn chunk(&mut self) -> Option<Vec<u8>> {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut self.conn.r, &mut line).ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(line.trim(), 16).ok()?;
        if size == 0 {
            let mut end = String::new();
            let _ = std::io::BufRead::read_line(&mut self.conn.r, &mut end);
            return None;
        }
        let mut data = vec![0u8; size + 2];
        self.conn.r.read_exact(&mut data).ok()?;
        data.truncate(size);
        Some(data)
    }

    /// Reads chunks until `want` bytes of content have arrived.
    pub fn read_text(&mut self, want: usize) -> String {
        let mut got = Vec::new();
        while got.len() < want {
            match self.chunk() {
                Some(c) => got.extend_from_slice(&c),
                None => break,
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}

/// Reads a response head without its body.
pub fn read_head_only(r: &mut BufReader<TcpStream>) -> Option<Response> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        let end = line == b"\r\n";
        head.extend_from_slice(&line);
        if end {
            break;
        }
    }
    parse_head(&head)
}

/// Waits until `f` is true (polling), or panics after the timeout.
pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a metric's value summed over its label sets, from one scrape.
pub fn metric(cp: &Corepin, name: &str) -> u64 {
    let r = cp.control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n");
    metric_sum(&r.text(), name)
}

/// A metric's value in a /metrics text, summed over its label sets.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A response head's status and fields (no body).
fn parse_head(head: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    res.parse(head).ok()?;
    Some(Response {
        status: res.code?,
        headers: res
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
    })
}

/// The repository root.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python of the test venv (tests/run.sh makes it).
pub fn python() -> std::path::PathBuf {
    std::env::var_os("COREPIN_PYTHON")
        .map(std::path::PathBuf::from)
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

/// The subscriptions corepin holds, read from `/metrics` on `control`.
pub fn subscriptions_at(control: SocketAddr) -> u64 {
    let mut c = Conn::open(control);
    c.send(b"GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n");
    let text = c.read().map(|r| r.text()).unwrap_or_default();
    metric_sum(&text, "corepin_subscriptions")
}

/// How often a core refreshes the counters /metrics reads (src/shard.rs
/// `sweep`), with a margin: a scrape may show the state this long ago.
const METRICS_LAG: Duration = Duration::from_millis(300);

/// The subscriptions corepin holds once the count has stopped changing: two
/// scrapes a refresh period apart agree, so the value is not a stale one from
/// before a change still in flight.
pub fn settled_subscriptions(control: SocketAddr) -> u64 {
    let mut last = subscriptions_at(control);
    loop {
        thread::sleep(METRICS_LAG);
        let now = subscriptions_at(control);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Publishes `body` to `control` on a thread, once corepin holds one more
/// subscription than when this is called (the client about to connect has
/// subscribed), so a slow client start cannot miss the message. The join
/// handle yields the publish answer's status.
pub fn publish_when_subscribed(control: SocketAddr, body: &'static str) -> thread::JoinHandle<u16> {
    let before = settled_subscriptions(control);
    thread::spawn(move || {
        wait_until("the client to subscribe", || {
            subscriptions_at(control) > before
        });
        let mut c = Conn::open(control);
        c.send(
            format!(
                "POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        c.read().expect("publish answer").status
    })
}
