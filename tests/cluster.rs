//! A cluster, black-box: three corepin nodes joined through a real broker
//! (Debian's nats-server, then redis-server), HAProxy in TCP mode in front
//! spreading the subscribers, as in the README's "Running a cluster".
//!
//! Each suite checks that publishes made through node 1 (HTTP API), node 3
//! (control socket, and `corepin publish`) and straight to the broker reach
//! every subscriber once and in order, that (channel, id) dedup and
//! prev-id ordering hold across nodes; that killing the broker (-9) in the
//! middle of a stream of publishes gets those publishes errors, never a
//! 200 for a message that is then lost, and that after a restart the nodes
//! reconnect and later publishes arrive; and that a node killed and
//! restarted rejoins.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Nats,
    Redis,
}

/// A port free right now (for the servers that cannot report the one
/// they bound: redis-server, HAProxy).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A free port below the kernel's ephemeral range, for a server that must
/// come back on the same port after a kill -9 (the broker, a restarted
/// node): port-0 binds and outgoing connections, this machine's and other
/// tests', take their ports from the ephemeral range, so none of them can
/// take this one while its server is down.
/// A program Debian installs, by name: Debian puts nats-server and haproxy
/// in /usr/sbin, which a user's PATH may lack.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (tests/run.sh installs it)"))
}

static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn restartable_port() -> u16 {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768);
    let base = 10_000u16.min(low / 2);
    let span = u32::from(low - base);
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos())
        ^ std::process::id();
    for _ in 0..1000 {
        // xorshift: a different candidate each time.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let port = base + (x % span) as u16;
        // Never the same port twice in this process (the suites run in
        // parallel, and a port is only reserved once its server binds it).
        let mut taken = TAKEN.lock().expect("lock");
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
    panic!("no free port below {low}");
}

fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn temp_dir(tag: &str) -> PathBuf {
    let out = Command::new("mktemp")
        .args(["-d", &format!("/tmp/corepin-{tag}-XXXXXX")])
        .output()
        .expect("mktemp");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A broker process on 127.0.0.1, restartable on the same port.
struct Broker {
    kind: Kind,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Servers started so far (names their log files).
    starts: usize,
}

impl Broker {
    fn start(kind: Kind, dir: &Path) -> Broker {
        let mut b = Broker {
            kind,
            port: 0,
            dir: dir.to_path_buf(),
            child: None,
            starts: 0,
        };
        b.spawn();
        b
    }

    /// Starts the server on `self.port` (picked once) and waits until it
    /// accepts connections. Both keep what they acknowledged across a
    /// kill -9, as the README asks of a production broker: NATS with
    /// JetStream's file store, Redis with its append-only file.
    fn spawn(&mut self) {
        self.starts += 1;
        if self.port == 0 {
            self.port = restartable_port();
        }
        let log = self
            .dir
            .join(format!("{:?}-{}.log", self.kind, self.starts));
        let store = self.dir.join(format!("{:?}-store", self.kind));
        std::fs::create_dir_all(&store).expect("store dir");
        let store = store.to_str().expect("utf-8 dir").to_string();
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Nats => {
                let mut c = Command::new(program("nats-server"));
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &store]);
                c
            }
            Kind::Redis => {
                let mut c = Command::new(program("redis-server"));
                c.args(["--port", &port, "--bind", "127.0.0.1"]).args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    // Written and synced before the reply: with the default
                    // (everysec) a busy disk makes Redis postpone the write
                    // while it already answers, and a kill -9 then loses
                    // publishes the nodes were told are stored.
                    "--appendfsync",
                    "always",
                    "--dir",
                    &store,
                ]);
                c
            }
        };
        let out = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the {:?} server (tests/run.sh installs it): {e}",
                    self.kind
                )
            });
        let child = std::sync::Mutex::new(child);
        // Ready: NATS once it says so (JetStream is up then too), Redis
        // once it answers PING (it loads its file first).
        wait_until("the broker to be ready", || {
            if let Ok(Some(status)) = child.lock().expect("lock").try_wait() {
                panic!(
                    "the {:?} server exited ({status}): {}",
                    self.kind,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            match self.kind {
                Kind::Nats => std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("Server is ready"),
                Kind::Redis => self.ping(),
            }
        });
        self.child = Some(child.into_inner().expect("lock"));
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(TIMEOUT));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line.trim() == "+PONG"
    }

    fn url(&self) -> String {
        match self.kind {
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Publishes a payload as a backend would without any node's address,
    /// the way the README says, and waits for the broker's acknowledgement:
    /// NATS, a request on `corepin.publish` that JetStream answers once
    /// stored; Redis, `XADD corepin.publish MAXLEN ~ 100000 * publish JSON`.
    fn publish_direct(&self, payload: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the broker");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        match self.kind {
            Kind::Nats => {
                r.read_line(&mut line).expect("INFO");
                assert!(line.starts_with("INFO"), "{line}");
                write!(
                    s,
                    "CONNECT {{\"verbose\":false}}\r\nSUB direct.ack 1\r\nPUB corepin.publish direct.ack {}\r\n{payload}\r\n",
                    payload.len()
                )
                .expect("publish");
                line.clear();
                r.read_line(&mut line).expect("MSG");
                assert!(line.starts_with("MSG direct.ack 1"), "{line}");
                line.clear();
                r.read_line(&mut line).expect("ack");
                assert!(
                    line.contains("\"stream\":\"corepin\"") && line.contains("\"seq\":"),
                    "JetStream acknowledged: {line}"
                );
            }
            Kind::Redis => {
                let args = [
                    "XADD",
                    "corepin.publish",
                    "MAXLEN",
                    "~",
                    "100000",
                    "*",
                    "publish",
                    payload,
                ];
                let mut cmd = format!("*{}\r\n", args.len());
                for a in args {
                    cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
                }
                s.write_all(cmd.as_bytes()).expect("publish");
                r.read_line(&mut line).expect("reply");
                assert!(line.starts_with('$'), "XADD answered {line}");
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// HAProxy in TCP mode, round-robin over the nodes, each checked with
/// `GET /health` on its control port (a node cut off from the broker
/// answers 503 there and gets no new clients).
///
/// `timeout check 5s`: without it HAProxy gives a check only `inter`
/// (200 ms) to be answered, and on a loaded machine a debug build's
/// `/health` can take longer; with `fall 1` every node was then marked
/// down at once ("Layer7 timeout, check duration: 240ms" in its log) and
/// the balancer closed new connections. A refused connection or a 503
/// still takes a node out at the next check.
struct Haproxy {
    port: u16,
    child: Child,
    /// HAProxy's stderr: in the foreground it reports there every server
    /// it marks up or down, and why.
    log: PathBuf,
}

impl Haproxy {
    fn start(dir: &Path, nodes: &[(u16, u16)]) -> Haproxy {
        let port = free_port();
        let mut servers = String::new();
        for (i, (listen, control)) in nodes.iter().enumerate() {
            servers.push_str(&format!(
                "  server n{} 127.0.0.1:{listen} check port {control} inter 200ms fall 1 rise 1\n",
                i + 1
            ));
        }
        let cfg = format!(
            "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n  timeout check 5s\n\
             frontend subscribers\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\
             backend nodes\n  balance roundrobin\n  option httpchk\n  http-check send meth GET uri /health\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let log = dir.join("haproxy.log");
        let child = Command::new(program("haproxy"))
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("haproxy.log"))
            .spawn()
            .expect("start haproxy (tests/run.sh installs it)");
        let h = Haproxy { port, child, log };
        wait_until("haproxy to listen", || accepts(port));
        h
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What HAProxy has said so far (server state changes included).
    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One corepin node and what it needs to be restarted as itself.
struct Node {
    name: String,
    cp: Option<Corepin>,
    listen: u16,
    control: u16,
    socket: PathBuf,
    url: String,
}

impl Node {
    fn start(name: &str, dir: &Path, url: &str) -> Node {
        let mut n = Node {
            name: name.into(),
            cp: None,
            listen: restartable_port(),
            control: restartable_port(),
            socket: dir.join(format!("{name}.sock")),
            url: url.into(),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let listen = format!("127.0.0.1:{}", self.listen);
        let control = format!("127.0.0.1:{}", self.control);
        let socket = self.socket.to_str().expect("utf-8 path").to_string();
        let cp = Corepin::start_in(
            &[
                "--listen",
                &listen,
                "--control-http",
                &control,
                "--control-socket",
                &socket,
                "--workers",
                "1",
                "--route",
                "* test",
                "--cluster",
                &self.url,
                "--node",
                &self.name,
            ],
            false,
        );
        assert_eq!(cp.port, self.listen);
        self.cp = Some(cp);
    }

    fn cp(&self) -> &Corepin {
        self.cp.as_ref().expect("running")
    }

    fn kill9(&mut self) {
        if let Some(mut cp) = self.cp.take() {
            let _ = cp.child.kill();
            let _ = cp.child.wait();
        }
        // The kernel tears down a dead process's io_uring in the
        // background, and the listening sockets it still referenced stay
        // open until then: a node restarted at once can find its own
        // ports taken by its ghost.
        wait_until("the killed node's ports to be released", || {
            [self.listen, self.control]
                .iter()
                .all(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
    }

    fn healthy(&self) -> bool {
        let mut c = Conn::open(self.cp().control_addr());
        c.send(b"GET /health HTTP/1.1\r\nHost: c\r\n\r\n");
        c.read().is_some_and(|r| r.status == 200)
    }

    /// Publishes through the HTTP API: Ok on 200, else the status and body.
    fn publish_http(&self, body: &str) -> Result<(), String> {
        let r = self.cp().publish(body);
        match r.status {
            200 => Ok(()),
            s => Err(format!("{s} {}", r.text())),
        }
    }

    /// Publishes through the control socket (one JSON line).
    fn publish_socket(&self, body: &str) -> Result<(), String> {
        socket_publish(&self.socket, body)
    }

    fn subscriptions(&self) -> u64 {
        metric(self.cp(), "corepin_subscriptions")
    }
}

fn item(content: &str, id: Option<&str>, prev: Option<&str>) -> String {
    let mut it = serde_json::json!({"channel": "c", "formats": {"http-stream": {"content": format!("{content}\n")}}});
    if let Some(id) = id {
        it["id"] = id.into();
    }
    if let Some(p) = prev {
        it["prev-id"] = p.into();
    }
    serde_json::json!({ "items": [it] }).to_string()
}

/// A subscriber through HAProxy, reading lines on a thread until `end`.
struct Sub {
    lines: Arc<Mutex<Vec<String>>>,
    done: thread::JoinHandle<()>,
}

impl Sub {
    fn open(addr: SocketAddr) -> Sub {
        let mut s = Stream::open(addr, "/stream?channel=c");
        assert_eq!(s.head.status, 200);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let into = lines.clone();
        let done = thread::spawn(move || {
            let mut partial = String::new();
            while let Some(chunk) = s.chunk() {
                partial.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    let line = line.trim_end().to_string();
                    let end = line == "end";
                    into.lock().expect("lock").push(line);
                    if end {
                        return;
                    }
                }
            }
        });
        Sub { lines, done }
    }

    fn has(&self, line: &str) -> bool {
        self.lines.lock().expect("lock").iter().any(|l| l == line)
    }

    /// Waits for `end`; returns every line received.
    fn finish(self) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        while !self.done.is_finished() {
            assert!(
                Instant::now() < deadline,
                "no `end` within {TIMEOUT:?}: got {:?}",
                self.lines.lock().map(|l| l.clone())
            );
            thread::sleep(Duration::from_millis(10));
        }
        let lines = self.lines.lock().expect("lock").clone();
        lines
    }
}

fn suite(kind: Kind) {
    let dir = temp_dir(&format!("cluster-{kind:?}"));
    let mut broker = Broker::start(kind, &dir);
    let url = broker.url();
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Node::start(n, &dir, &url))
        .collect();
    for n in &nodes {
        assert!(n.healthy(), "{} connected", n.name);
    }
    let ports: Vec<(u16, u16)> = nodes.iter().map(|n| (n.listen, n.control)).collect();
    let lb = Haproxy::start(&dir, &ports);
    wait_until("haproxy to see every node up", || {
        // Each node takes one of three new connections once all are up.
        let probes: Vec<_> = (0..3)
            .map(|_| Stream::open(lb.addr(), "/stream?channel=probe"))
            .collect();
        let all = nodes.iter().all(|n| n.subscriptions() >= 1);
        drop(probes);
        wait_until("probes to leave", || {
            nodes.iter().all(|n| n.subscriptions() == 0)
        });
        all
    });

    // Six subscribers through the balancer: two on each node.
    let subs: Vec<Sub> = (0..6).map(|_| Sub::open(lb.addr())).collect();
    wait_until("the subscribers on every node", || {
        nodes.iter().map(Node::subscriptions).sum::<u64>() == 6
    });
    for n in &nodes {
        assert_eq!(n.subscriptions(), 2, "{} holds two subscribers", n.name);
    }

    // One publish after the other through node 1 (HTTP), node 3 (control
    // socket) and straight to the broker: every subscriber, on every node,
    // gets each once, in order.
    let mut expected = Vec::new();
    for i in 0..30 {
        let content = format!("a{i}");
        let body = item(&content, None, None);
        match i % 3 {
            0 => nodes[0].publish_http(&body).expect("published via n1"),
            1 => nodes[2].publish_socket(&body).expect("published via n3"),
            _ => broker.publish_direct(&body),
        }
        expected.push(content);
    }
    // `corepin publish` through node 3's socket.
    let out = Command::new(env!("CARGO_BIN_EXE_corepin"))
        .args(["publish", "c", "cli", "--socket"])
        .arg(&nodes[2].socket)
        .output()
        .expect("corepin publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expected.push("cli".into());
    // The same (channel, id) through two nodes and the broker: once.
    nodes[0]
        .publish_http(&item("dup", Some("d1"), None))
        .expect("dup via n1");
    nodes[2]
        .publish_socket(&item("dup", Some("d1"), None))
        .expect("dup via n3");
    broker.publish_direct(&item("dup", Some("d1"), None));
    expected.push("dup".into());
    // prev-id order across nodes: p2 (after p1) comes first through node
    // 3 and waits on every node until p1 comes through node 1.
    nodes[0]
        .publish_http(&item("p0", Some("p0"), None))
        .expect("p0");
    nodes[2]
        .publish_socket(&item("p2", Some("p2"), Some("p1")))
        .expect("p2");
    nodes[0]
        .publish_http(&item("p1", Some("p1"), Some("p0")))
        .expect("p1");
    expected.extend(["p0", "p1", "p2"].map(String::from));
    for s in &subs {
        let deadline = Instant::now() + TIMEOUT;
        while !s.has("p2") {
            assert!(
                Instant::now() < deadline,
                "phase 1 incomplete: {:?}",
                s.lines.lock().map(|l| l.clone())
            );
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            *s.lines.lock().expect("lock"),
            expected,
            "once each, in order"
        );
    }

    // Kill the broker in the middle of a stream of publishes through nodes
    // 1 and 3, restart it, and keep publishing.
    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    let refused = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (acked, refused, stop) = (acked.clone(), refused.clone(), stop.clone());
        let n1 = (nodes[0].cp().control_addr(), nodes[0].socket.clone());
        let n3 = nodes[2].socket.clone();
        thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = item(&format!("b{i}"), None, None);
                let r = if i % 2 == 0 {
                    let mut c = Conn::open(n1.0);
                    c.send(format!("POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
                    match c.read() {
                        Some(r) if r.status == 200 => Ok(()),
                        Some(r) => Err(format!("{} {}", r.status, r.text())),
                        None => Err("no answer".into()),
                    }
                } else {
                    socket_publish(&n3, &body)
                };
                match r {
                    Ok(()) => acked.lock().expect("lock").push(i),
                    Err(e) => refused.lock().expect("lock").push((i, e)),
                }
                i += 1;
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    wait_until("publishes before the kill", || {
        acked.lock().expect("lock").len() >= 20
    });
    broker.kill9();
    wait_until("publishes refused while the broker is down", || {
        refused.lock().expect("lock").len() >= 5
    });
    wait_until("every node to report the broker down", || {
        nodes.iter().all(|n| !n.healthy())
    });
    let acked_before_restart = acked.lock().expect("lock").len();
    broker.spawn();
    wait_until("every node to reconnect", || {
        nodes.iter().all(Node::healthy)
    });
    wait_until("publishes after the restart", || {
        acked.lock().expect("lock").len() >= acked_before_restart + 20
    });
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher");
    nodes[0]
        .publish_http(&item("end", None, None))
        .expect("end");
    let acked = acked.lock().expect("lock").clone();
    let refused = refused.lock().expect("lock").clone();
    // Every refusal is a clear cluster error: "nothing was published"
    // (the broker was not connected: it must reach nobody), or "may or may
    // not" (sent as the broker died, unacknowledged: it may reach
    // subscribers, once).
    let mut not_sent = Vec::new();
    for (i, why) in &refused {
        assert!(
            why.starts_with("503 cluster: ")
                || why.contains("\"ok\":false") && why.contains("cluster: "),
            "b{i} refused with a clear error: {why}"
        );
        if why.contains("nothing was published") {
            not_sent.push(*i);
        } else {
            assert!(why.contains("may or may not"), "b{i}: {why}");
        }
    }
    assert!(
        !not_sent.is_empty(),
        "publishes during the outage were refused"
    );
    let last_refused = refused.iter().map(|r| r.0).max().unwrap_or(0);
    assert!(
        acked.iter().any(|&i| i > last_refused),
        "later publishes were acknowledged"
    );
    for (k, s) in subs.into_iter().enumerate() {
        let lines = s.finish();
        let got: Vec<usize> = lines
            .iter()
            .filter_map(|l| l.strip_prefix('b').and_then(|n| n.parse().ok()))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let dups: Vec<_> = got.iter().filter(|i| !seen.insert(**i)).collect();
        assert!(dups.is_empty(), "subscriber {k}: delivered twice: {dups:?}");
        let ghosts: Vec<_> = got.iter().filter(|i| not_sent.contains(i)).collect();
        assert!(
            ghosts.is_empty(),
            "subscriber {k}: refused as not published, yet delivered: {ghosts:?}"
        );
        // Acknowledged publishes: all there, in the order acknowledged.
        let got_acked: Vec<usize> = got.iter().copied().filter(|i| acked.contains(i)).collect();
        assert_eq!(
            got_acked, acked,
            "subscriber {k}: every acknowledged publish, in order (refused: {refused:?})"
        );
        assert_eq!(lines.last().map(String::as_str), Some("end"));
    }
    for n in &nodes {
        let m = n
            .cp()
            .control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
            .text();
        for line in [
            "corepin_cluster_broker_connected 1",
            "corepin_cluster_reconnects_total 1",
            "corepin_cluster_messages_missed_total 0",
            "corepin_cluster_stream_resets_total 0",
        ] {
            assert!(m.contains(line), "{}: {line} in {m}", n.name);
        }
    }

    // A node killed and restarted rejoins: new subscribers reach it through
    // the balancer, and publishes through it and to it reach everyone.
    nodes[1].kill9();
    nodes[1].spawn();
    assert!(nodes[1].healthy(), "n2 connected again");
    let mut subs = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while nodes[1].subscriptions() == 0 || subs.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no subscriber reached the restarted node; subscriptions per node {:?}; haproxy said:\n{}",
            nodes.iter().map(Node::subscriptions).collect::<Vec<_>>(),
            lb.said()
        );
        subs.push(Sub::open(lb.addr()));
        wait_until("the new subscriber to register", || {
            nodes.iter().map(Node::subscriptions).sum::<u64>() == subs.len() as u64
        });
    }
    nodes[1]
        .publish_http(&item("c1", None, None))
        .expect("via the restarted node");
    nodes[0]
        .publish_http(&item("c2", None, None))
        .expect("via n1");
    broker.publish_direct(&item("c3", None, None));
    nodes[2]
        .publish_socket(&item("end", None, None))
        .expect("via n3");
    for s in subs {
        assert_eq!(
            s.finish(),
            ["c1", "c2", "c3", "end"],
            "every subscriber, every node"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn socket_publish(path: &Path, body: &str) -> Result<(), String> {
    let mut v: serde_json::Value = serde_json::from_str(body).expect("json");
    v["method"] = "publish".into();
    let mut s = UnixStream::connect(path).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(format!("{v}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    match answer.contains("\"ok\":true") {
        true => Ok(()),
        false => Err(answer),
    }
}

#[test]
fn a_nats_cluster_behind_haproxy_delivers_every_publish_once_through_broker_and_node_failures() {
    suite(Kind::Nats);
}

#[test]
fn a_redis_cluster_behind_haproxy_delivers_every_publish_once_through_broker_and_node_failures() {
    suite(Kind::Redis);
}

#[test]
fn a_node_started_while_nats_is_down_says_so_and_joins_when_it_comes() {
    late_broker(Kind::Nats);
}

#[test]
fn a_node_started_while_redis_is_down_says_so_and_joins_when_it_comes() {
    late_broker(Kind::Redis);
}

fn late_broker(kind: Kind) {
    let dir = temp_dir(&format!("cluster-late-{kind:?}"));
    let port = restartable_port();
    let mut broker = Broker {
        kind,
        port,
        dir: dir.clone(),
        child: None,
        starts: 0,
    };
    let url = broker.url();
    let cp = Corepin::start_grip(&["--workers", "1", "--cluster", &url, "--node", "late"]);
    cp.wait_stderr("the broker is not reachable yet");
    let r = cp.control("GET /health HTTP/1.1\r\nHost: c\r\n\r\n");
    assert_eq!(r.status, 503);
    assert!(
        r.text().contains(&format!("broker {url} not connected")),
        "{}",
        r.text()
    );
    let r = cp.publish(&item("x", None, None));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("nothing was published"), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    broker.spawn();
    wait_until("the node to connect", || {
        cp.control("GET /health HTTP/1.1\r\nHost: c\r\n\r\n").status == 200
    });
    let mut s = Stream::open(cp.addr(), "/stream?channel=c");
    cp.publish_stream("c", "hello\n");
    assert_eq!(s.read_text(6), "hello\n");
    // The counters reach /metrics at its next refresh (four a second).
    for line in [
        "corepin_cluster_broker_connected 1",
        "corepin_cluster_publishes_out_total 1",
        "corepin_cluster_publishes_in_total 1",
        "corepin_cluster_publishes_refused_total{reason=\"unavailable\"} 1",
    ] {
        wait_until(line, || {
            cp.control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
                .text()
                .contains(line)
        });
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broker_messages_that_are_not_publishes_are_skipped_counted_and_logged_on_nats() {
    junk(Kind::Nats);
}

#[test]
fn broker_messages_that_are_not_publishes_are_skipped_counted_and_logged_on_redis() {
    junk(Kind::Redis);
}

/// A publisher writing to the broker directly is held to what the HTTP
/// API takes: a message that is not a valid publish, or is larger than
/// `publish.max_body_bytes`, reaches nobody and is counted; the next one
/// is delivered.
fn junk(kind: Kind) {
    let dir = temp_dir(&format!("cluster-junk-{kind:?}"));
    let broker = Broker::start(kind, &dir);
    let cfg = dir.join("corepin.toml");
    std::fs::write(&cfg, "[publish]\nmax_body_bytes = 2048\n").expect("config");
    let url = broker.url();
    let cp = Corepin::start_grip(&[
        "--config",
        cfg.to_str().expect("utf-8 path"),
        "--workers",
        "1",
        "--cluster",
        &url,
        "--node",
        "j",
    ]);
    wait_until("the node to connect", || {
        cp.control("GET /health HTTP/1.1\r\nHost: c\r\n\r\n").status == 200
    });
    let mut s = Stream::open(cp.addr(), "/stream?channel=c");
    broker.publish_direct("not json");
    broker.publish_direct(&item(&"x".repeat(3000), None, None));
    broker.publish_direct(
        r#"{"items":[{"channel":"c","formats":{"http-stream":{"content":"a"}}}],"bogus":1}"#,
    );
    broker.publish_direct(&item("ok", None, None));
    assert_eq!(s.read_text(3), "ok\n", "only the valid publish arrives");
    let m = cp
        .control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
        .text();
    assert!(
        m.contains("corepin_cluster_messages_invalid_total 3\n"),
        "{m}"
    );
    let log = cp.wait_stderr("is not a valid publish, skipped");
    assert!(log.contains("corepin.publish"), "{log}");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP relay in front of the broker for one node: cutting it cuts that
/// node alone off the broker (its connections dropped, new ones refused)
/// while the others keep publishing; restoring it lets the node back in on
/// the same address.
struct Relay {
    port: u16,
    to: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let mut r = Relay {
            port: restartable_port(),
            to,
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            acceptor: None,
        };
        r.restore();
        r
    }

    fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("relay port");
        self.stop.store(false, Ordering::SeqCst);
        let (stop, conns, to) = (self.stop.clone(), self.conns.clone(), self.to);
        self.acceptor = Some(thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (
                        server.try_clone().expect("clone"),
                        client.try_clone().expect("clone"),
                    ),
                ] {
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
                let mut all = conns.lock().expect("lock");
                all.push(client);
                all.push(server);
            }
        }));
    }

    fn cut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so that it sees `stop` and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.acceptor.take() {
            a.join().expect("relay acceptor");
        }
        for c in self.conns.lock().expect("lock").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

#[test]
fn a_node_cut_off_from_nats_gets_what_others_published_meanwhile_once_back() {
    resume(Kind::Nats);
}

#[test]
fn a_node_cut_off_from_redis_gets_what_others_published_meanwhile_once_back() {
    resume(Kind::Redis);
}

/// What the broker's stream buys over pub/sub: a node that loses the
/// broker while the others publish resumes where it stopped, and its
/// subscribers get every publish another node acknowledged meanwhile, in
/// order, nothing counted as missed.
fn resume(kind: Kind) {
    let dir = temp_dir(&format!("cluster-resume-{kind:?}"));
    let broker = Broker::start(kind, &dir);
    let mut relay = Relay::start(broker.port);
    let scheme = broker
        .url()
        .split("://")
        .next()
        .expect("scheme")
        .to_string();
    let n1 = Node::start("n1", &dir, &broker.url());
    let n2 = Node::start("n2", &dir, &format!("{scheme}://127.0.0.1:{}", relay.port));
    wait_until("both nodes to connect", || n1.healthy() && n2.healthy());
    let mut s = Stream::open(n2.cp().addr(), "/stream?channel=c");
    n1.publish_http(&item("r0", None, None)).expect("r0");
    assert_eq!(s.read_text(3), "r0\n");

    relay.cut();
    wait_until("n2 to report the broker lost", || !n2.healthy());
    let r = n2.cp().publish(&item("x", None, None));
    assert_eq!(r.status, 503, "n2 refuses while cut off: {}", r.text());
    for i in 1..=5 {
        n1.publish_http(&item(&format!("r{i}"), None, None))
            .expect("n1 still publishes");
    }
    relay.restore();
    wait_until("n2 to reconnect", || n2.healthy());
    assert_eq!(
        s.read_text(15),
        "r1\nr2\nr3\nr4\nr5\n",
        "what n1 published while n2 was cut off, in order"
    );
    n2.publish_http(&item("r6", None, None))
        .expect("n2 publishes again");
    assert_eq!(s.read_text(3), "r6\n");
    let m = n2
        .cp()
        .control("GET /metrics HTTP/1.1\r\nHost: c\r\n\r\n")
        .text();
    for line in [
        "corepin_cluster_reconnects_total 1\n",
        "corepin_cluster_messages_missed_total 0\n",
        "corepin_cluster_stream_resets_total 0\n",
        "corepin_cluster_publishes_refused_total{reason=\"unavailable\"} 1\n",
    ] {
        assert!(m.contains(line), "{line} in {m}");
    }
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}
