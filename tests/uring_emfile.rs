//! EMFILE at the process's file limit through the ring's multishot accept:
//! the accept error reaches the acceptor once, the pending connection waits
//! in the listen backlog, and the next accept after an fd is freed gets it.
//! Its own test binary (one test), because it lowers RLIMIT_NOFILE for the
//! whole process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;

use bytes::Bytes;
use corepin::uring::{Config, Uring};
use glommio::LocalExecutorBuilder;

fn nofile() -> libc::rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r
}

fn set_nofile(cur: u64, max: u64) {
    let r = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: setrlimit reads one rlimit we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
}

/// The lowest free fd number: the limit at which the next fd fails.
fn lowest_free_fd() -> u64 {
    // SAFETY: dup of stdin-or-anything; closed at once.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: the fd we just made.
    unsafe { libc::close(fd) };
    fd as u64
}

#[test]
fn accept_at_the_file_limit_reports_emfile_then_recovers() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let ring = Uring::new(Config::default()).expect("ring");
            let driver = glommio::spawn_local(ring.clone().drive());
            let mut lst = ring.listener(OwnedFd::from(l));
            // A connection that completes in the kernel's backlog, then no
            // fd number left below the limit.
            let mut client = TcpStream::connect(addr).expect("connect");
            let spare = TcpStream::connect(addr).expect("connect"); // an fd to give back later
            let saved = nofile();
            set_nofile(lowest_free_fd(), saved.rlim_max);
            let err = match lst.accept().await {
                Err(e) => e,
                Ok(_) => panic!("accepted above the file limit"),
            };
            assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
            assert!(ring.stats().accept_errors >= 1);
            // Free one fd number: the connection waiting in the backlog is
            // accepted by the re-armed accept.
            drop(spare);
            let mut s = lst.accept().await.expect("accepted after an fd was freed");
            set_nofile(saved.rlim_cur, saved.rlim_max);
            // The backlog is first in, first out: this is the client's.
            client.write_all(b"ping").expect("write");
            let mut got = Vec::new();
            while got.len() < 4 {
                let mut b = s.recv_buf().await.expect("recv").expect("data");
                got.extend_from_slice(&b);
                let n = b.len();
                b.consume(n);
            }
            assert_eq!(got, b"ping");
            s.send(&Bytes::from_static(b"pong")).await.expect("send");
            let mut back = [0u8; 4];
            client.read_exact(&mut back).expect("read");
            assert_eq!(&back, b"pong");
            drop(s);
            // Out of descriptors the listener took to one accept at a time:
            // an armed multishot would take every descriptor freed while
            // armed. Now one connection per accept asked for, however many
            // wait in the backlog...
            assert!(!lst.multishot());
            let waiting: Vec<TcpStream> = (0..3)
                .map(|_| TcpStream::connect(addr).expect("connect"))
                .collect();
            let before = ring.stats();
            let one = lst.accept().await.expect("one-shot accept");
            ring.turn(false).expect("turn");
            ring.turn(false).expect("turn");
            let after = ring.stats();
            assert_eq!(after.accepted, before.accepted + 1);
            assert_eq!(after.accept_oneshots, before.accept_oneshots + 1);
            // ... until the acceptor switches the multishot back on.
            lst.set_multishot(true);
            let two = lst.accept().await.expect("multishot accept");
            let three = lst.accept().await.expect("multishot accept");
            let st = ring.stats();
            assert_eq!(st.accept_oneshots, after.accept_oneshots);
            assert!(st.accept_arms > after.accept_arms);
            // The backlog's third connection was taken by the same arm.
            assert_eq!(st.accepted, after.accepted + 3);
            let queued = lst.accept().await.expect("queued by the multishot");
            // Switched off while armed (the cap's headroom ran low): the
            // multishot is cancelled and the waiting acceptor gets the next
            // connection through a one-shot accept.
            let armed = ring.stats().accept_arms;
            lst.set_multishot(false);
            let late = TcpStream::connect(addr).expect("connect");
            let four = lst.accept().await.expect("one-shot after the switch");
            let st = ring.stats();
            assert!(st.accept_arms > armed);
            assert!(st.accept_oneshots > after.accept_oneshots);
            drop((one, two, three, queued, four, waiting, late));
            drop(lst);
            ring.stop();
            driver.await.expect("driver");
        })
        .expect("executor")
        .join()
        .expect("join");
}
