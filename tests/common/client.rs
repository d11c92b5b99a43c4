//! Test clients over real sockets: keep-alive connections, raw exchanges,
//! held HTTP streams, and the control API's publish endpoint.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{read_head_only, read_response, Corepin, Response, TIMEOUT};

/// A client socket whose receive buffer is small (`SO_RCVBUF` 4 KiB), so
/// the server's writes fill it (and then the server's own socket buffer)
/// quickly.
pub fn small_window_client(addr: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect(&addr.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s
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

    /// True when the server ends the connection (EOF or a reset) within
    /// `d`; false when `d` passes first or the server sends more bytes.
    pub fn closed_within(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut b = [0u8; 1];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.r.get_ref().set_read_timeout(Some(left));
            match self.r.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => return false,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // WouldBlock/TimedOut: the timeout passed.
                Err(_) => return false,
            }
        }
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
        if self.conn.r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(line.trim(), 16).ok()?;
        if size == 0 {
            let mut end = String::new();
            let _ = self.conn.r.read_line(&mut end);
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

impl Corepin {
    /// POSTs a publish body; returns the response.
    pub fn publish(&self, json: &str) -> Response {
        self.control(&format!(
            "POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        ))
    }

    /// Sends a raw request to the control API and reads the response. An
    /// answer that does not come says how it failed (the read timed out,
    /// the connection was closed or reset, and after how long), with the
    /// end of corepin's log: an unanswered publish is a bug to find.
    pub fn control(&self, raw_request: &str) -> Response {
        let mut c = Conn::open(self.control_addr());
        let local = c.w.local_addr().ok();
        c.send(raw_request.as_bytes());
        let started = Instant::now();
        let first = match c.r.fill_buf() {
            Ok([]) => Some("closed by corepin (EOF) before any answer".to_string()),
            Ok(_) => None,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Some(format!("no answer: the read timed out ({e})"))
            }
            Err(e) => Some(format!("no answer: {:?} ({e})", e.kind())),
        };
        let failed = |what: &str| -> ! {
            let elapsed = started.elapsed().as_secs_f64();
            let log = self.stderr.lock().map(|l| l.clone()).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(40)..];
            panic!(
                "control request from {local:?}: {what} after {elapsed:.3} s\nrequest: {:?}\nits socket (/proc/net/tcp):\n{}\ncorepin's threads:\n{}\ncorepin's log (last {} lines):\n{}",
                raw_request.lines().next().unwrap_or(""),
                tcp_lines(local.map_or(0, |a| a.port())),
                threads(self.child.id()),
                tail.len(),
                tail.join("\n")
            )
        };
        if let Some(what) = first {
            failed(&what);
        }
        c.read()
            .unwrap_or_else(|| failed("the answer was cut short (closed, reset or timed out)"))
    }

    /// Publishes `content` on `channel` as http-stream.
    pub fn publish_stream(&self, channel: &str, content: &str) {
        let body = serde_json::json!({"items":[{"channel":channel,"formats":{"http-stream":{"content":content}}}]});
        let r = self.publish(&body.to_string());
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// The lines of /proc/net/tcp for connections on local port `port` (both
/// ends, as the kernel sees them: state, send and receive queues), so a
/// request that got no answer shows whether corepin ever read it.
pub fn tcp_lines(port: u16) -> String {
    let hex = format!(":{port:04X} ");
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut out: Vec<&str> = table.lines().take(1).collect();
    out.extend(table.lines().filter(|l| l.contains(&hex)));
    out.join("\n")
}

/// Each thread of process `pid`: name, state, where it sleeps in the
/// kernel (wchan) and its CPU time in ticks, so a stall shows whether a
/// core's thread was runnable (starved), asleep in io_uring, or blocked.
pub fn threads(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    let mut out = Vec::new();
    for t in dir.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        // After the ")" that ends the name: state, then fields 4.., of
        // which utime and stime are the 14th and 15th.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, r)| r.split_whitespace().collect());
        out.push(format!(
            "{} {:<20} state {} wchan {} utime {} stime {}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            rest.first().unwrap_or(&"?"),
            read("wchan").trim(),
            rest.get(11).unwrap_or(&"?"),
            rest.get(12).unwrap_or(&"?"),
        ));
    }
    out.sort();
    out.join("\n")
}

/// A control-socket path for one test, unique to this test process.
pub fn control_socket_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("corepin-{tag}-{}.sock", std::process::id()))
}

/// Sends one line on the control socket at `path`; returns the answer.
pub fn ask_control(path: &std::path::Path, line: &str) -> serde_json::Value {
    let s = std::os::unix::net::UnixStream::connect(path).expect("connect control socket");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    w.write_all(format!("{line}\n").as_bytes()).expect("write");
    let mut a = String::new();
    BufReader::new(s).read_line(&mut a).expect("answer");
    serde_json::from_str(&a).expect("JSON answer")
}
