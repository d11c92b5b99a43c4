//! Headless Chromium for the tests that need a real browser.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Waits for the report a test page writes to `report` (within `limit`,
/// which only turns a hang into a failure), then kills the browser; with
/// no report, panics with what Chromium logged under `dir`.
pub fn page_report(
    browser: &mut Child,
    report: &Path,
    dir: &Path,
    limit: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(report) {
            break Some(t);
        }
        if Instant::now() > deadline || browser.try_wait().ok().flatten().is_some() {
            break None;
        }
        std::thread::sleep(super::POLL);
    };
    kill_browser(browser);
    let text = text.unwrap_or_else(|| {
        panic!(
            "no report from the page; chromium said:\n{}",
            std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default()
        )
    });
    serde_json::from_str(&text).expect("report JSON")
}

/// An EventSource page's report's `seen` list: (id, data) per event.
pub fn seen_events(r: &serde_json::Value) -> Vec<(String, String)> {
    r["seen"]
        .as_array()
        .expect("seen")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or("").to_string(),
                e["data"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}
