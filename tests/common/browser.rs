//! Headless Chromium for the tests that need a real browser.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts headless Chromium on `url`, with its profile under `dir` and its
/// log in `dir/chromium.log`, in a process group of its own so that
/// `kill_browser` ends its helpers too.
pub fn start_chromium(url: &str, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("chromium.log")).expect("log");
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("start chromium")
}

/// Kills the browser `start_chromium` started, helpers included.
pub fn kill_browser(browser: &mut Child) {
    // SAFETY: kill(2) on the process group the test started (chromium
    // and its helpers), nothing else.
    unsafe {
        libc::kill(-(browser.id() as i32), libc::SIGKILL);
    }
    let _ = browser.wait();
}
