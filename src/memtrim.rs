//! Giving memory back after a peak. glibc's malloc keeps what is freed in
//! its arenas, so after a burst of connections or a subscriber backlog the
//! resident size stays at its high-water mark (96 MB after 19,000
//! connections left). A background thread looks every `EVERY` and, when
//! at least `FREED` bytes were freed since the low point it last saw,
//! asks malloc to return its free pages (`malloc_trim`). Chosen over
//! jemalloc and mimalloc by measurement: PERFORMANCE.md, "Memory after
//! peaks".

use std::time::Duration;

/// How often the allocator's free memory is looked at.
pub const EVERY: Duration = Duration::from_secs(10);
/// Freed bytes that make a trim worth it.
pub const FREED: usize = 4 << 20;

/// When to trim: `free` is the allocator's free heap now; `low` the least
/// seen since the last trim (updated here). A trim leaves `free` as it is
/// (the pages are returned, the bytes still count as free), so the next
/// one waits until that much more has been freed.
pub fn due(free: usize, low: &mut usize) -> bool {
    *low = (*low).min(free);
    if free.saturating_sub(*low) >= FREED {
        *low = free;
        return true;
    }
    false
}

/// Starts the trimming thread (glibc targets only; elsewhere a no-op).
pub fn spawn() {
    #[cfg(target_env = "gnu")]
    let _ = std::thread::Builder::new()
        .name("corepin-trim".into())
        .spawn(|| {
            let mut low = 0usize;
            loop {
                std::thread::sleep(EVERY);
                // SAFETY: mallinfo2 and malloc_trim only read and adjust
                // the allocator's own state, under its own locks.
                let free = unsafe { libc::mallinfo2() }.fordblks;
                if due(free, &mut low) {
                    let started = std::time::Instant::now();
                    // SAFETY: as above.
                    unsafe { libc::malloc_trim(0) };
                    debug!(
                        "returned free memory to the system ({} MiB free in the heap; took {:?})",
                        free >> 20,
                        started.elapsed()
                    );
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_peak() {
        let mut low = 0;
        let mb = |n: usize| n << 20;
        // Quiet start, then a peak is freed: one trim.
        assert!(!due(mb(2), &mut low));
        assert!(due(mb(90), &mut low));
        // The freed bytes still count as free afterwards: no trim again
        // until as much again has been freed.
        assert!(!due(mb(90), &mut low));
        assert!(!due(mb(93), &mut low));
        assert!(due(mb(95), &mut low));
        // The heap is used again (free falls), then freed again: one trim.
        assert!(!due(mb(10), &mut low));
        assert!(due(mb(80), &mut low));
        assert!(!due(mb(80), &mut low));
    }
}
