//! Reloads the routes when the routes file changes, as Pushpin does: a
//! plain thread waits on inotify events for the file's folder (so an
//! editor's write-and-rename or a symlink swap is seen too), lets a burst
//! of events settle, and when the file's bytes differ from the last ones
//! seen, runs the same reload as SIGHUP. A file that does not load keeps
//! the old routes, and the log says why.
//!
//! Under `--pushpin-config` the certificates directory (`runner/certs`)
//! is watched the same way, since Pushpin picks up a changed certificate
//! file without a signal: when its `.crt`/`.key` files' bytes change, the
//! certificates are reloaded as SIGHUP reloads them (a bad file keeps the
//! old ones).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control_socket::ControlPlane;

/// Quiet time after the last event before the file is read.
const SETTLE: Duration = Duration::from_millis(100);
/// Longest a burst of events may delay a reload.
const SETTLE_MAX: Duration = Duration::from_secs(1);

/// An inotify descriptor, closed on drop.
struct Inotify(libc::c_int);

impl Drop for Inotify {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

impl Inotify {
    /// Watches `dir` for entries being written, created, moved or removed.
    fn watch(dir: &Path) -> std::io::Result<Inotify> {
        // SAFETY: inotify_init1 takes flags only and returns a new fd.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let me = Inotify(fd);
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("the folder name holds a NUL byte"))?;
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MODIFY
            | libc::IN_ATTRIB
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO;
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        if unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(me)
    }

    /// Waits up to `timeout` (`None`: for ever) for events and discards
    /// them; true when there were some.
    fn wait(&self, timeout: Option<Duration>) -> bool {
        let mut p = libc::pollfd {
            fd: self.0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: one pollfd we own, for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n <= 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: reads at most buf.len() bytes into our stack buffer.
        let r = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
        r > 0
    }
}

/// Starts the watcher thread for `file`. Fails when inotify cannot watch
/// its folder (the caller logs it; SIGHUP still reloads).
pub fn spawn(file: PathBuf, plane: Arc<ControlPlane>) -> Result<(), String> {
    let dir = crate::route::base_dir_of(&file);
    let ino = Inotify::watch(&dir)
        .map_err(|e| format!("cannot watch {} for changes: {e}", dir.display()))?;
    let mut last = std::fs::read(&file).ok();
    std::thread::Builder::new()
        .name("corepin-routes-watch".into())
        .spawn(move || loop {
            if !ino.wait(None) {
                continue;
            }
            let burst = Instant::now();
            while burst.elapsed() < SETTLE_MAX && ino.wait(Some(SETTLE)) {}
            let now = std::fs::read(&file).ok();
            if now.is_none() || now == last {
                // Gone (a rename in progress, or removed: the old routes
                // stay), or another file of the folder changed.
                continue;
            }
            last = now;
            match plane.reload() {
                Ok(n) => info!(
                    "routes file {} changed: routes reloaded ({n} routes)",
                    file.display()
                ),
                Err(e) => error!(
                    "routes file {} changed: reload refused, keeping the old routes: {e}",
                    file.display()
                ),
            }
        })
        .map_err(|e| format!("cannot start the routes watcher: {e}"))?;
    Ok(())
}

/// The `.crt` and `.key` files of `dir` and their bytes, by name (what
/// a certificate reload reads).
fn certs_state(dir: &Path) -> Vec<(std::ffi::OsString, Option<Vec<u8>>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .filter(|n| {
                    let b = n.as_bytes();
                    b.ends_with(b".crt") || b.ends_with(b".key")
                })
                .map(|n| {
                    let bytes = std::fs::read(dir.join(&n)).ok();
                    (n, bytes)
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Starts the watcher thread for the certificates directory `dir`: a
/// change to its certificate or key files reloads the certificates on
/// every core. Fails when inotify cannot watch it (the caller logs it;
/// SIGHUP still reloads).
pub fn spawn_certs(dir: PathBuf, plane: Arc<ControlPlane>) -> Result<(), String> {
    let ino = Inotify::watch(&dir)
        .map_err(|e| format!("cannot watch {} for changes: {e}", dir.display()))?;
    let mut last = certs_state(&dir);
    std::thread::Builder::new()
        .name("corepin-certs-watch".into())
        .spawn(move || loop {
            if !ino.wait(None) {
                continue;
            }
            let burst = Instant::now();
            while burst.elapsed() < SETTLE_MAX && ino.wait(Some(SETTLE)) {}
            let now = certs_state(&dir);
            if now == last {
                continue;
            }
            last = now;
            match plane.reload_tls() {
                Some(Ok(())) => info!(
                    "certificates in {} changed: certificates reloaded",
                    dir.display()
                ),
                Some(Err(e)) => error!("certificates in {} changed: {e}", dir.display()),
                None => {}
            }
        })
        .map_err(|e| format!("cannot start the certificates watcher: {e}"))?;
    Ok(())
}
