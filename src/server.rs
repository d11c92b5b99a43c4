//! Start-up and shutdown: binds every listening socket (one per core per
//! address, SO_REUSEPORT, backlog 4096), starts one pinned glommio
//! executor per core, and turns signals into wake-ups for the shards.

use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use glommio::{LocalExecutorBuilder, LocalExecutorPoolBuilder, Placement, PoolPlacement};
use socket2::{Domain, Protocol, Socket, Type};

use crate::bus::{Bus, CoreInbox};
use crate::cluster::{Cluster, Publisher};
use crate::config::{Config, TlsCerts};
use crate::control_socket::{self, ControlPlane, SocketFile};
use crate::shard::{self, ShardStart};
use crate::stats::Board;
use crate::wake::{Command, CoreLinks};
use crossbeam_channel::Receiver;

/// Listen backlog per socket.
pub(crate) const BACKLOG: i32 = 4096;
/// io_uring registered-buffer memory per executor: small, so that the
/// locked-memory limit of an ordinary user is enough.
pub(crate) const IO_MEMORY: usize = 1 << 20;

/// The lowest RLIMIT_MEMLOCK glommio 0.9 starts an executor under
/// (`Reactor::new`'s `MIN_MEMLOCK_LIMIT`).
const MIN_MEMLOCK: u64 = 512 * 1024;

/// The soft RLIMIT_MEMLOCK in bytes (`None`: unlimited or unreadable).
fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// Starts and stops one executor configured like those `run` starts, so
/// that an environment that cannot run them (the locked-memory limit too
/// low, io_uring blocked by a seccomp profile) is reported, with what to do,
/// before anything is bound or announced. The binary exits 2 on it.
pub fn check_runtime() -> Result<(), String> {
    let r = LocalExecutorBuilder::new(Placement::Unbound)
        .name("corepin-probe")
        .io_memory(IO_MEMORY)
        .spawn(|| async {})
        .and_then(|h| h.join());
    let Err(e) = r else { return Ok(()) };
    match memlock_limit() {
        Some(limit) if limit < MIN_MEMLOCK => Err(format!(
            "the locked-memory limit is {limit} bytes, below the {MIN_MEMLOCK} corepin's io_uring executors need: raise it (ulimit -l 8192 in the shell, LimitMEMLOCK=8M in a systemd unit, --ulimit memlock=8388608 with docker run)"
        )),
        _ => Err(format!(
            "cannot start an io_uring executor: {e} (in a container, the seccomp profile must allow io_uring_setup, io_uring_enter and io_uring_register: see the README)"
        )),
    }
}

/// A listening socket with SO_REUSEPORT, not yet owned by an executor.
fn bind(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit it: small writes go out at once without a
    // setsockopt per connection.
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s)
}

/// Fails when another process listens on `addr`. SO_REUSEPORT would let
/// a second corepin (or anything else bound with it) share the port and
/// silently take part of the traffic; a probe without it is refused
/// instead, as nginx or Pushpin would be. Port 0 needs no probe.
fn ensure_free(addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    // SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not count.
    let _ = probe.set_reuse_address(true);
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "cannot listen on {addr}: another process is listening there"
        )),
        Err(e) => Err(format!("cannot listen on {addr}: {e}")),
    }
}

/// Binds `n` sockets on `addr` (resolving port 0 once so every core shares
/// the same port); returns them and the address actually bound.
fn bind_group(addr: SocketAddr, n: usize) -> Result<(Vec<Socket>, SocketAddr), String> {
    ensure_free(addr)?;
    let first = bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let actual = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| format!("cannot read the address bound for {addr}"))?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind(actual).map_err(|e| format!("cannot listen on {actual}: {e}"))?);
    }
    Ok((all, actual))
}

/// Cores available to run on.
pub fn available_cores() -> usize {
    core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Raises the soft limit on open files to the hard limit (as Go programs
/// and many servers do: the soft default, often 1024, is far below what a
/// proxy holding connections needs); returns the limit now in force.
fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised rlimit value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The cap on client connections: `max_connections` when set, else the
/// file limit less a reserve (a tenth and 64 more, at most half) for
/// backend connections, listeners, executors and the control plane, so
/// that corepin refuses clients cleanly before it runs out of descriptors.
pub fn connection_cap(max_connections: usize, file_limit: u64) -> usize {
    if max_connections > 0 {
        return max_connections;
    }
    let files = usize::try_from(file_limit).unwrap_or(usize::MAX);
    let reserve = (files / 10).saturating_add(64).min(files / 2);
    (files - reserve).max(1)
}

/// What one shard is handed: client listeners, control listeners, its wake
/// socket end and its bus inbox.
struct ShardParts {
    listeners: Vec<RawFd>,
    tls_listeners: Vec<RawFd>,
    control: Vec<RawFd>,
    wake: RawFd,
    inbox: CoreInbox,
    commands: Receiver<Command>,
}

/// What each shard takes at start-up, handed out by index.
struct Startup {
    cfg: Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    bus: Arc<Bus>,
    board: Arc<Board>,
    conn_limit: Arc<shard::ConnLimit>,
    publisher: Publisher,
    per_shard: Mutex<Vec<Option<ShardParts>>>,
    ready: Option<ReadyFile>,
    /// Cores whose drain has not finished (`ShardStart::draining_cores`).
    draining_cores: Arc<std::sync::atomic::AtomicUsize>,
    plane: Arc<ControlPlane>,
}

/// `--ready-file`: the bound addresses as one JSON object, written once
/// every core accepts, so a launcher that asked for port 0 learns the
/// ports without reading the log. The file is created empty beside its
/// final name at start-up (a path that cannot be written fails then, before
/// anything is served), filled and renamed into place by the last core to
/// start (a reader sees no file or the whole of it), and removed at exit.
struct ReadyFile {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: Mutex<Option<std::fs::File>>,
    json: String,
    /// Cores yet to start accepting.
    waiting: std::sync::atomic::AtomicUsize,
}

impl ReadyFile {
    fn create(path: &std::path::Path, workers: usize) -> Result<ReadyFile, String> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(name);
        let file = std::fs::File::create(&tmp)
            .map_err(|e| format!("--ready-file {}: {e}", path.display()))?;
        Ok(ReadyFile {
            path: path.to_path_buf(),
            tmp,
            file: Mutex::new(Some(file)),
            json: String::new(),
            waiting: std::sync::atomic::AtomicUsize::new(workers),
        })
    }

    /// One more core accepts; the last one writes the file.
    fn core_accepting(&self) {
        use std::io::Write;
        if self
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            != 1
        {
            return;
        }
        let Some(mut file) = self.file.lock().ok().and_then(|mut f| f.take()) else {
            return;
        };
        let written = file
            .write_all(self.json.as_bytes())
            .and_then(|()| std::fs::rename(&self.tmp, &self.path));
        match written {
            Ok(()) => info!("ready: addresses in {}", self.path.display()),
            Err(e) => error!("--ready-file {}: {e}", self.path.display()),
        }
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Drives `fut`, calling `then` once its first poll has returned: what
/// `fut` does before its first await has been done by then (for
/// `shard::run`, spawning its accept loops).
async fn after_first_poll<F: std::future::Future>(fut: F, then: impl FnOnce()) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut then = Some(then);
    std::future::poll_fn(|cx| {
        let r = fut.as_mut().poll(cx);
        if let Some(t) = then.take() {
            t();
        }
        r
    })
    .await
}

/// Runs corepin until SIGTERM/SIGINT; returns after every shard drained.
pub fn run(cfg: Config) -> Result<(), String> {
    let workers = if cfg.workers == 0 {
        available_cores()
    } else {
        cfg.workers
    };
    let ka_min = cfg.timeouts.ws_keep_alive_min.as_secs_f64();
    if ka_min < crate::config::WS_KEEP_ALIVE_MIN {
        warn!("timeouts.ws_keep_alive_min = {ka_min}: WebSocket-over-HTTP backends may ask for a request every {ka_min} s per session (the usual minimum is {} s)", crate::config::WS_KEEP_ALIVE_MIN);
    }
    let mut ready = match &cfg.ready_file {
        Some(path) => Some(ReadyFile::create(path, workers)?),
        None => None,
    };
    let file_limit = raise_file_limit();
    let cap = connection_cap(cfg.limits.max_connections, file_limit);
    info!("up to {cap} client connections (file limit {file_limit})");
    let conn_limit = shard::ConnLimit::new(cap, file_limit, workers);
    let mut listeners: Vec<Vec<RawFd>> = vec![Vec::new(); workers];
    let mut bound = serde_json::json!({
        "pid": std::process::id(),
        "listen": [],
        "listen_tls": [],
        "control_http": [],
        "control_socket": cfg.control_socket.as_ref().map(|p| p.to_string_lossy().into_owned()),
    });
    for addr in &cfg.listen {
        let (sockets, actual) = bind_group(*addr, workers)?;
        info!("listening on {actual} (clients)");
        if let Some(l) = bound["listen"].as_array_mut() {
            l.push(actual.to_string().into());
        }
        for (i, s) in sockets.into_iter().enumerate() {
            listeners[i].push(s.into_raw_fd());
        }
    }
    // Certificates load before anything TLS is bound: a bad one stops
    // start-up with one line each.
    let tls = match &cfg.tls {
        Some(source) => Some(
            crate::tls::Reloadable::new(source.clone()).map_err(|problems| {
                problems
                    .into_iter()
                    .map(|p| p.0)
                    .collect::<Vec<_>>()
                    .join("\ncorepin: ")
            })?,
        ),
        None => None,
    };
    let tls_config = tls.as_ref().map(|t| t.current());
    let mut tls_listeners: Vec<Vec<RawFd>> = vec![Vec::new(); workers];
    for addr in &cfg.listen_tls {
        let (sockets, actual) = bind_group(*addr, workers)?;
        info!("listening on {actual} (TLS clients)");
        if let Some(l) = bound["listen_tls"].as_array_mut() {
            l.push(actual.to_string().into());
        }
        for (i, s) in sockets.into_iter().enumerate() {
            tls_listeners[i].push(s.into_raw_fd());
        }
    }
    let mut control: Vec<Vec<RawFd>> = vec![Vec::new(); workers];
    if let Some(addr) = cfg.control_http {
        let (sockets, actual) = bind_group(addr, workers)?;
        info!("listening on {actual} (control http)");
        if let Some(l) = bound["control_http"].as_array_mut() {
            l.push(actual.to_string().into());
        }
        for (i, s) in sockets.into_iter().enumerate() {
            control[i].push(s.into_raw_fd());
        }
    }
    let mut wakers = Vec::with_capacity(workers);
    let mut link_wakers = Vec::with_capacity(workers);
    let mut theirs_all = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (ours, theirs) =
            StdUnixStream::pair().map_err(|e| format!("cannot create a wake socket: {e}"))?;
        ours.set_nonblocking(true)
            .map_err(|e| format!("cannot configure a wake socket: {e}"))?;
        link_wakers.push(
            ours.try_clone()
                .map_err(|e| format!("cannot clone a wake socket: {e}"))?,
        );
        wakers.push(ours);
        theirs_all.push(theirs.into_raw_fd());
    }
    let limits = crate::bus::Limits {
        inflight: cfg.publish.max_inflight,
        backlog: cfg.publish.max_backlog,
        history: cfg.history,
    };
    let (bus, inboxes) = Bus::new(wakers, limits);
    // In a cluster, this node's publishes go to the broker, and the bridge
    // feeds the bus with every node's (this one's included).
    let publisher = match &cfg.cluster {
        Some(settings) => Publisher::Cluster(Cluster::start(
            settings.clone(),
            cfg.publish.max_body,
            bus.clone(),
        )?),
        None => Publisher::Local,
    };
    let (links, command_rxs) = CoreLinks::new(link_wakers);
    let board = Board::new(workers);
    let plane = Arc::new(ControlPlane {
        bus: bus.clone(),
        board: board.clone(),
        links,
        routes: cfg.routes_source.clone(),
        publisher: publisher.clone(),
        tls: tls.map(Mutex::new),
    });
    // Pushpin's ZeroMQ interfaces, when configured: bound now (a spec
    // that cannot be bound stops start-up), served by their own thread.
    if cfg.zmq.enabled() {
        #[cfg(feature = "zmq")]
        crate::zmq_sockets::start(&cfg.zmq, plane.clone())?;
        #[cfg(not(feature = "zmq"))]
        return Err(
            "zmq: this corepin was built without ZeroMQ (the `zmq` feature): remove [zmq] or rebuild with it"
                .into(),
        );
    }
    let _socket_file = match &cfg.control_socket {
        Some(path) => {
            let listener = control_socket::bind(path, cfg.control_socket_mode)?;
            info!("control socket at {}", path.display());
            control_socket::spawn(listener, plane.clone());
            Some(SocketFile(path.clone()))
        }
        None => None,
    };
    let per_shard = listeners
        .into_iter()
        .zip(tls_listeners)
        .zip(control)
        .zip(theirs_all)
        .zip(inboxes)
        .zip(command_rxs)
        .map(
            |(((((listeners, tls_listeners), control), wake), inbox), commands)| {
                Some(ShardParts {
                    listeners,
                    tls_listeners,
                    control,
                    wake,
                    inbox,
                    commands,
                })
            },
        )
        .collect();
    // The routes file is reloaded when it changes, as Pushpin does.
    if let crate::config::RoutesSource::File(path) = &cfg.routes_source {
        match crate::watch::spawn(path.clone(), plane.clone()) {
            Ok(()) => info!("watching {} for changes", path.display()),
            Err(e) => warn!("{e}: the routes reload on SIGHUP only"),
        }
    }
    // So are the certificates from a pushpin.conf's runner/certs.
    if let (true, Some(TlsCerts::Dir(dir) | TlsCerts::DirWithDefault { dir, .. })) =
        (cfg.tls_watch, &cfg.tls)
    {
        match crate::watch::spawn_certs(dir.clone(), plane.clone()) {
            Ok(()) => info!("watching {} for changes", dir.display()),
            Err(e) => warn!("{e}: the certificates reload on SIGHUP only"),
        }
    }
    if let Some(r) = ready.as_mut() {
        r.json = format!("{bound}\n");
    }
    spawn_signal_thread(plane.clone())?;
    info!("running on {workers} cores");
    info!("data path: {}", startup_data_path(&cfg));
    if cfg.data_path == crate::config::DataPath::Uring {
        // A kernel or a sandbox that refuses the ring (or its provided
        // buffers) is reported before any core starts.
        crate::uring::Uring::new(crate::uring::Config::default()).map_err(|e| {
            format!("data_path = \"uring\": cannot set up corepin's io_uring: {e} (use data_path = \"glommio\")")
        })?;
    }

    let startup = Arc::new(Startup {
        cfg,
        tls: tls_config,
        bus,
        board,
        conn_limit,
        publisher,
        per_shard: Mutex::new(per_shard),
        ready,
        draining_cores: Arc::new(std::sync::atomic::AtomicUsize::new(workers)),
        plane,
    });
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(workers, None))
        .name("corepin")
        .io_memory(IO_MEMORY)
        .on_all_shards(move || async move {
            let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let taken = startup
                .per_shard
                .lock()
                .ok()
                .and_then(|mut v| v.get_mut(index).and_then(Option::take));
            let Some(parts) = taken else {
                error!("shard {index} found no start-up state");
                return;
            };
            // The io_uring data path: this core's own ring, driven inside
            // glommio; client connections read and write through it.
            let driver = match startup.cfg.data_path {
                crate::config::DataPath::Glommio => None,
                crate::config::DataPath::Uring => {
                    match crate::uring::Uring::new(crate::uring::Config::default()) {
                        Ok(ring) => {
                            if index == 0 {
                                info!(
                                    "data path: io_uring ({} ring)",
                                    ring.mode().name()
                                );
                            }
                            crate::uring::set_current(Some(ring.clone()));
                            Some((ring.clone(), glommio::spawn_local(ring.drive())))
                        }
                        Err(e) => {
                            error!("core {index}: cannot set up the io_uring data path: {e}");
                            std::process::exit(1);
                        }
                    }
                }
            };
            let run = shard::run(ShardStart {
                index,
                cfg: Rc::new(startup.cfg.clone()),
                listeners: parts.listeners,
                tls_listeners: parts.tls_listeners,
                tls: startup.tls.clone(),
                control: parts.control,
                bus: startup.bus.clone(),
                inbox: parts.inbox,
                board: startup.board.clone(),
                commands: parts.commands,
                wake: parts.wake,
                conn_limit: startup.conn_limit.clone(),
                publisher: startup.publisher.clone(),
                draining_cores: startup.draining_cores.clone(),
                plane: startup.plane.clone(),
                handlers: shard::Handlers {
                    client: |shard, conn, peer| {
                        Box::pin(crate::conn::http::serve(shard, conn, peer))
                    },
                    control: |shard, conn, peer| Box::pin(crate::control::serve(shard, conn, peer)),
                },
            });
            // shard::run spawns its accept loops before its first await.
            after_first_poll(run, || {
                if let Some(r) = &startup.ready {
                    r.core_accepting();
                }
            })
            .await;
            if let Some((ring, task)) = driver {
                crate::uring::set_current(None);
                ring.stop();
                let _ = task.await;
                let st = ring.stats();
                info!(
                    "core {index}: io_uring data path: {} enters for {} sends ({} sendmsg, {} short), {} receives armed, {} completions, {} sleeps, {} early submits, {} backend connects, {} accepted ({} accepts armed, {} of them one-shot, {} accept errors), {} sent straight from a fan-out",
                    st.enters, st.sends, st.sendmsgs, st.short_sends, st.recv_arms, st.completions, st.sleeps, st.early_submits, st.connects,
                    st.accepted, st.accept_arms, st.accept_oneshots, st.accept_errors, st.direct_sends
                );
            }
        })
        .map_err(|e| format!("cannot start executors: {e}"))?;
    for r in handles.join_all() {
        if let Err(e) = r {
            return Err(format!("an executor failed: {e}"));
        }
    }
    info!("stopped");
    Ok(())
}

/// How client sockets are driven, as the start-up log says it.
fn startup_data_path(cfg: &Config) -> &'static str {
    match cfg.data_path {
        crate::config::DataPath::Glommio => "glommio",
        crate::config::DataPath::Uring => "uring (corepin's own io_uring per core)",
    }
}

/// Turns SIGTERM/SIGINT into a drain of every shard (a second SIGINT, a
/// second Ctrl-C, exits at once; repeated SIGTERMs keep draining), and
/// SIGHUP into a reload of the routes.
fn spawn_signal_thread(plane: Arc<ControlPlane>) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("corepin-signals".into())
        .spawn(move || {
            let mut draining = false;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    match plane.reload_all("SIGHUP") {
                        Ok(n) => info!("SIGHUP: routes reloaded ({n} routes)"),
                        Err(e) => error!("SIGHUP: reload refused, keeping the old routes: {e}"),
                    }
                    continue;
                }
                if draining && sig == SIGINT {
                    warn!("second signal {sig}: exiting now");
                    std::process::exit(1);
                }
                if draining {
                    continue;
                }
                draining = true;
                info!("signal {sig}: draining");
                plane.links.wake_all(crate::wake::DRAIN);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::connection_cap;

    #[test]
    fn the_connection_cap_leaves_a_reserve_of_descriptors() {
        assert_eq!(connection_cap(5, 1024), 5, "max_connections wins");
        for (files, cap) in [
            (64, 32),
            (1024, 858),
            (20_000, 17_936),
            (1_048_576, 943_655),
            (0, 1),
        ] {
            assert_eq!(connection_cap(0, files), cap, "file limit {files}");
        }
        assert!(connection_cap(0, u64::MAX) > 0);
    }
}
