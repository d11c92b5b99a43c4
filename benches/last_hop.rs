//! The subscriber's last hop: N queued messages of S bytes written to a
//! TCP socket either joined (copied into one buffer, then one `send`) or
//! gathered (one `sendmsg` with an iovec per message, nothing copied).
//! This decides how `Connection::write_parts` sends a backlog
//! (PERFORMANCE.md, "Restructuring: before and after").
//!
//! The writer's own CPU time (CLOCK_THREAD_CPUTIME_ID) is measured, so a
//! loaded machine disturbs the figures little; a second thread drains the
//! loopback socket as fast as it can.
//!
//! Run: `cargo bench --bench last_hop`. Under `cargo test` (no `--bench`
//! argument) each case runs a few rounds as a smoke test: not a measurement.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::Bytes;

#[path = "common/cpu.rs"]
mod cpu;
use cpu::thread_cpu;

fn pair() -> (TcpStream, std::thread::JoinHandle<u64>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    let w = TcpStream::connect(addr).expect("connect");
    w.set_nodelay(true).expect("nodelay");
    (w, reader)
}

/// Writes `parts` whole with gathered sends.
fn send_gathered(sock: &socket2::SockRef<'_>, parts: &[Bytes]) {
    let (mut i, mut off) = (0, 0);
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len());
    while i < parts.len() {
        iov.clear();
        iov.push(IoSlice::new(&parts[i][off..]));
        iov.extend(parts[i + 1..].iter().map(|p| IoSlice::new(p)));
        let mut n = sock
            .send_vectored_with_flags(&iov, libc::MSG_NOSIGNAL)
            .expect("sendmsg");
        while n > 0 {
            let left = parts[i].len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
}

/// CPU nanoseconds per message of the writer, joined and gathered.
fn case(count: usize, size: usize, rounds: usize) -> (f64, f64) {
    let parts: Vec<Bytes> = (0..count).map(|_| Bytes::from(vec![b'x'; size])).collect();
    let mut joined = Vec::with_capacity(count * size);
    let (mut w, reader) = pair();
    let t0 = thread_cpu();
    for _ in 0..rounds {
        joined.clear();
        for p in &parts {
            joined.extend_from_slice(p);
        }
        w.write_all(&joined).expect("send");
    }
    let join = thread_cpu() - t0;
    let sock = socket2::SockRef::from(&w);
    let t1 = thread_cpu();
    for _ in 0..rounds {
        send_gathered(&sock, &parts);
    }
    let gather = thread_cpu() - t1;
    drop(w);
    let total = reader.join().expect("reader");
    assert_eq!(total, (2 * rounds * count * size) as u64);
    let per = |d: Duration| d.as_nanos() as f64 / (rounds * count) as f64;
    (per(join), per(gather))
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rounds = |count: usize, size: usize| {
        if bench {
            (64 << 20) / (count * size).max(1)
        } else {
            4
        }
        .clamp(4, 200_000)
    };
    if !bench {
        println!(
            "smoke run (a few rounds of each, not a measurement): cargo bench --bench last_hop"
        );
    }
    println!("| messages × bytes | joined: ns/msg | gathered: ns/msg | gathered ÷ joined |");
    println!("|---|---|---|---|");
    for size in [16usize, 100, 1000, 16_000] {
        for count in [1usize, 2, 4, 16, 64] {
            let (j, g) = case(count, size, rounds(count, size));
            println!(
                "| {count} × {size} | {j:.0} | {g:.0} | {:.2} |",
                g / j.max(1.0)
            );
        }
    }
}
