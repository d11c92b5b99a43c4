//! The least an HTTP/1.1 keep-alive reverse proxy does (read a GET head,
//! forward it on the connection's own upstream socket, read the response
//! head and its Content-Length body, write it back), three ways, to measure
//! what CPU per request each way of driving sockets costs:
//!
//! - `glommio`: glommio 0.9 `TcpStream`s (readiness poll, then a syscall);
//! - `uring`: corepin's `uring` driver hosted in glommio (multishot receive
//!   into provided buffers, queued sends, one enter per turn, the driver
//!   sleeping on the ring's eventfd through glommio);
//! - `uring-self`: the same driver and connection code under a minimal
//!   executor whose main loop is the ring (`Uring::turn(wait)`), no glommio.
//!
//! `uring_proxy --serve MODE LISTEN UPSTREAM THREADS` runs one (LISTEN may
//! have port 0; the bound address is printed). Without `--serve` (as `cargo
//! test` and `cargo bench` run it) it checks each mode against an in-process
//! backend; the measurement is `benches/uring_proxy.sh`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::process::{Command, Stdio};

use bytes::Bytes;
use corepin::uring::{Config, Uring, UringStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

const MAX_HEAD: usize = 64 * 1024;

fn find_end(h: &[u8]) -> Option<usize> {
    h.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .find_map(|line| {
            let (k, v) = line.split_at(line.iter().position(|&b| b == b':')?);
            k.eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&v[1..]).ok()?.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn too_big() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "head too large")
}

/// A listener on `addr` with SO_REUSEPORT, so each core binds its own.
fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

// ------------------------------------------------------------ on the driver

/// Reads one request head from `c` (zero-copy when it sits in one buffer).
async fn read_head(c: &mut UringStream, part: &mut Vec<u8>) -> io::Result<Option<Bytes>> {
    loop {
        if let Some(end) = find_end(part) {
            let head = Bytes::copy_from_slice(&part[..end]);
            part.drain(..end);
            return Ok(Some(head));
        }
        let Some(mut b) = c.recv_buf().await? else {
            return Ok(None);
        };
        if part.is_empty() {
            if let Some(end) = find_end(&b) {
                let head = Bytes::copy_from_slice(&b[..end]);
                b.consume(end);
                if !b.is_empty() {
                    part.extend_from_slice(&b);
                    let n = b.len();
                    b.consume(n);
                }
                return Ok(Some(head));
            }
        }
        part.extend_from_slice(&b);
        let n = b.len();
        b.consume(n);
        if part.len() > MAX_HEAD {
            return Err(too_big());
        }
    }
}

/// Reads one response (head + Content-Length body) from `u` into `out`.
async fn read_response(u: &mut UringStream, out: &mut Vec<u8>) -> io::Result<bool> {
    out.clear();
    let mut want = usize::MAX;
    while out.len() < want {
        let Some(mut b) = u.recv_buf().await? else {
            return Ok(false);
        };
        out.extend_from_slice(&b);
        let n = b.len();
        b.consume(n);
        if want == usize::MAX {
            if let Some(end) = find_end(out) {
                want = end + content_length(&out[..end]);
            } else if out.len() > MAX_HEAD {
                return Err(too_big());
            }
        }
    }
    Ok(true)
}

async fn conn_uring(ring: Uring, mut c: UringStream, up: SocketAddr) -> io::Result<()> {
    let mut u: Option<UringStream> = None;
    let mut part = Vec::new();
    let mut resp = Vec::new();
    loop {
        let Some(head) = read_head(&mut c, &mut part).await? else {
            return Ok(());
        };
        if u.is_none() {
            u = Some(ring.connect(up).await?);
        }
        let Some(us) = u.as_mut() else { return Ok(()) };
        us.start_send(head)?;
        if !read_response(us, &mut resp).await? {
            return Ok(());
        }
        // The client asks again only after this arrives: no need to wait.
        c.start_send(Bytes::copy_from_slice(&resp))?;
    }
}

async fn accept_loop(
    ring: Uring,
    l: TcpListener,
    up: SocketAddr,
    spawn: fn(Box<dyn Future<Output = ()>>),
) {
    let mut lst = ring.listener(OwnedFd::from(l));
    loop {
        match lst.accept().await {
            Ok(c) => {
                let ring = ring.clone();
                spawn(Box::new(async move {
                    let _ = conn_uring(ring, c, up).await;
                }));
            }
            Err(e) => {
                // Not expected in the runs (the limits are high); a crude
                // back-off that works under either executor.
                eprintln!("accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

fn spawn_glommio(f: Box<dyn Future<Output = ()>>) {
    glommio::spawn_local(Box::into_pin(f)).detach();
}

// ------------------------------------------------------------ on glommio

async fn conn_glommio(mut c: glommio::net::TcpStream, up: SocketAddr) -> io::Result<()> {
    let mut u: Option<glommio::net::TcpStream> = None;
    let mut buf = vec![0u8; 16384];
    let mut have = 0;
    let mut resp = Vec::new();
    let mut rbuf = vec![0u8; 16384];
    loop {
        let end = loop {
            if let Some(end) = find_end(&buf[..have]) {
                break end;
            }
            if have == buf.len() {
                return Err(too_big());
            }
            let n = c.read(&mut buf[have..]).await?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        };
        if u.is_none() {
            let s = glommio::net::TcpStream::connect(up).await?;
            s.set_nodelay(true)?;
            u = Some(s);
        }
        let Some(us) = u.as_mut() else { return Ok(()) };
        us.write_all(&buf[..end]).await?;
        buf.copy_within(end..have, 0);
        have -= end;
        resp.clear();
        let mut want = usize::MAX;
        while resp.len() < want {
            let n = us.read(&mut rbuf).await?;
            if n == 0 {
                return Ok(());
            }
            resp.extend_from_slice(&rbuf[..n]);
            if want == usize::MAX {
                if let Some(e) = find_end(&resp) {
                    want = e + content_length(&resp[..e]);
                }
            }
        }
        c.write_all(&resp).await?;
    }
}

// ------------------------------------------------------------ ring as main loop

thread_local! {
    static RUNQ: RefCell<VecDeque<async_task::Runnable>> = const { RefCell::new(VecDeque::new()) };
}

fn spawn_self(f: Box<dyn Future<Output = ()>>) {
    let schedule = |r| RUNQ.with(|q| q.borrow_mut().push_back(r));
    let (r, t) = async_task::spawn_local(Box::into_pin(f), schedule);
    r.schedule();
    t.detach();
}

/// Runs every ready task, then one ring turn (blocking in the kernel only
/// when nothing is ready): the shape of the raw probe's loop.
fn run_self(ring: &Uring) -> io::Result<()> {
    loop {
        while let Some(r) = RUNQ.with(|q| q.borrow_mut().pop_front()) {
            r.run();
        }
        ring.turn(true)?;
    }
}

// ------------------------------------------------------------ main

fn serve(mode: &str, listen: SocketAddr, up: SocketAddr, threads: usize) -> io::Result<()> {
    let first = reuseport_listener(listen)?;
    let addr = first.local_addr()?;
    println!("listening on {addr}");
    io::stdout().flush()?;
    let mut all = vec![first];
    for _ in 1..threads {
        all.push(reuseport_listener(addr)?);
    }
    let all = std::sync::Arc::new(std::sync::Mutex::new(all));
    // Experiments: URING_BUSY_TURNS=N, URING_RING=defer|coop|plain.
    let mut cfg = Config::default();
    if let Some(n) = std::env::var("URING_BUSY_TURNS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.busy_turns = n;
    }
    cfg.mode = match std::env::var("URING_RING").as_deref() {
        Ok("coop") => corepin::uring::RingMode::Coop,
        Ok("plain") => corepin::uring::RingMode::Plain,
        _ => corepin::uring::RingMode::Defer,
    };
    match mode {
        "glommio" | "uring" => {
            let uring = mode == "uring";
            LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(threads, None))
                .on_all_shards(move || async move {
                    let l = all.lock().ok().and_then(|mut v| v.pop());
                    let Some(l) = l else { return };
                    if uring {
                        let ring = match Uring::new(cfg) {
                            Ok(r) => r,
                            Err(e) => return eprintln!("ring: {e}"),
                        };
                        eprintln!("ring mode {:?}", ring.mode());
                        glommio::spawn_local(ring.clone().drive()).detach();
                        if std::env::var_os("URING_STATS").is_some() {
                            let r = ring.clone();
                            glommio::spawn_local(async move {
                                loop {
                                    glommio::timer::sleep(std::time::Duration::from_secs(5)).await;
                                    eprintln!("{:?}", r.stats());
                                }
                            })
                            .detach();
                        }
                        accept_loop(ring, l, up, spawn_glommio).await;
                    } else {
                        // SAFETY: the std listener's fd moves to glommio,
                        // which becomes its only owner.
                        let l = unsafe { glommio::net::TcpListener::from_raw_fd(l.into_raw_fd()) };
                        loop {
                            match l.accept().await {
                                Ok(c) => {
                                    let _ = c.set_nodelay(true);
                                    glommio::spawn_local(async move {
                                        let _ = conn_glommio(c, up).await;
                                    })
                                    .detach();
                                }
                                Err(e) => eprintln!("accept: {e}"),
                            }
                        }
                    }
                })
                .map_err(|e| io::Error::other(e.to_string()))?
                .join_all();
        }
        "uring-self" => {
            let cores = core_affinity::get_core_ids().unwrap_or_default();
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let all = all.clone();
                    let core = cores.get(t % cores.len().max(1)).copied();
                    let cfg = cfg.clone();
                    std::thread::spawn(move || -> io::Result<()> {
                        if let Some(c) = core {
                            core_affinity::set_for_current(c);
                        }
                        let l = all.lock().ok().and_then(|mut v| v.pop());
                        let Some(l) = l else { return Ok(()) };
                        let ring = Uring::new(cfg)?;
                        eprintln!("ring mode {:?}", ring.mode());
                        let r2 = ring.clone();
                        spawn_self(Box::new(accept_loop(r2, l, up, spawn_self)));
                        run_self(&ring)
                    })
                })
                .collect();
            for h in hs {
                let _ = h.join();
            }
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mode: glommio, uring or uring-self",
            ))
        }
    }
    Ok(())
}

/// A keep-alive HTTP backend answering every request with a 23-byte body.
fn backend() -> io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = find_end(&buf) {
                        buf.drain(..end);
                        let body = "hello from the backend\n";
                        let r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if c.write_all(r.as_bytes()).is_err() {
                            return;
                        }
                    }
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Starts this binary as a proxy in `mode`, sends keep-alive requests on a
/// few connections through it and checks every response.
fn smoke(mode: &str, up: SocketAddr) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["--serve", mode, "127.0.0.1:0", &up.to_string(), "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| {
        let out = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let addr: SocketAddr = line
            .trim()
            .trim_start_matches("listening on ")
            .parse()
            .map_err(io::Error::other)?;
        for _ in 0..4 {
            let mut c = TcpStream::connect(addr)?;
            for _ in 0..25 {
                c.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")?;
                let mut got = Vec::new();
                let mut chunk = [0u8; 1024];
                while find_end(&got).is_none_or(|e| got.len() < e + content_length(&got[..e])) {
                    let n = c.read(&mut chunk)?;
                    if n == 0 {
                        return Err(io::Error::other("proxy closed"));
                    }
                    got.extend_from_slice(&chunk[..n]);
                }
                if !got.ends_with(b"\r\n\r\nhello from the backend\n") {
                    return Err(io::Error::other(format!(
                        "bad response {:?}",
                        String::from_utf8_lossy(&got)
                    )));
                }
            }
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        let get = |i: usize| args.get(i).cloned().unwrap_or_default();
        let bad = |e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}"));
        let listen: SocketAddr = get(2).parse().map_err(bad)?;
        let up: SocketAddr = get(3).parse().map_err(bad)?;
        let threads: usize = get(4).parse().unwrap_or(2);
        return serve(&get(1), listen, up, threads);
    }
    println!("smoke run (correctness only, not a measurement): bash benches/uring_proxy.sh");
    let up = backend()?;
    for mode in ["glommio", "uring", "uring-self"] {
        smoke(mode, up)?;
        println!("{mode}: 100 proxied keep-alive requests answered");
    }
    Ok(())
}
