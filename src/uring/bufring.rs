//! The provided-buffer ring: one block of equal buffers whose ids the kernel
//! picks from when a multishot receive has data. A buffer belongs either to
//! the kernel (it is in the ring) or to exactly one socket (its data is not
//! yet consumed); it goes back to the ring as soon as it is consumed.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// "No buffer" in the per-socket lists linked through `next`.
pub(crate) const NIL: u16 = u16::MAX;

const PAGE: usize = 4096;

pub(crate) struct BufRing {
    /// `count` ring entries, page aligned (the kernel requires it).
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    /// `count * size` bytes of buffer memory.
    data: NonNull<u8>,
    data_layout: Layout,
    count: u16,
    size: u32,
    /// Our tail: the next entry to fill. Published to the kernel by `publish`.
    tail: u16,
    published: u16,
    /// Buffers currently in the ring (the kernel may pick them).
    in_kernel: u32,
    /// Per buffer: the next buffer held by the same socket, or `NIL`.
    pub(crate) next: Box<[u16]>,
    /// Per held buffer: bytes the kernel wrote into it.
    pub(crate) len: Box<[u32]>,
    pub(crate) bgid: u16,
    /// Set once the kernel may have touched the memory and we could not be
    /// sure it is done with it: the memory is then leaked, never freed.
    pub(crate) leak: bool,
}

impl BufRing {
    /// `count` buffers of `size` bytes; `count` must be a power of two below
    /// 32768 (the kernel's limit), `size` a non-zero multiple of 64.
    pub(crate) fn new(count: u16, size: u32, bgid: u16) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 1 << 15 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "uring: buffers must be a power of two up to 32768, size non-zero",
            ));
        }
        let bad = |_| io::Error::from(io::ErrorKind::InvalidInput);
        let entries_layout =
            Layout::from_size_align(count as usize * std::mem::size_of::<BufRingEntry>(), PAGE)
                .map_err(bad)?;
        let data_layout =
            Layout::from_size_align(count as usize * size as usize, PAGE).map_err(bad)?;
        // SAFETY: both layouts have a non-zero size (count >= 1, size >= 1).
        // Zeroed memory: large blocks come from fresh anonymous pages, so the
        // buffers cost resident memory only once the kernel first fills them.
        let entries = unsafe { alloc::alloc_zeroed(entries_layout) } as *mut BufRingEntry;
        let entries = NonNull::new(entries).ok_or(io::ErrorKind::OutOfMemory)?;
        // SAFETY: as above.
        let data = match NonNull::new(unsafe { alloc::alloc_zeroed(data_layout) }) {
            Some(d) => d,
            None => {
                // SAFETY: allocated just above with this layout, never shared.
                unsafe { alloc::dealloc(entries.as_ptr() as *mut u8, entries_layout) };
                return Err(io::ErrorKind::OutOfMemory.into());
            }
        };
        let mut ring = BufRing {
            entries,
            entries_layout,
            data,
            data_layout,
            count,
            size,
            tail: 0,
            published: 0,
            in_kernel: 0,
            next: vec![NIL; count as usize].into_boxed_slice(),
            len: vec![0; count as usize].into_boxed_slice(),
            bgid,
            leak: false,
        };
        for bid in 0..count {
            ring.give(bid);
        }
        Ok(ring)
    }

    /// Tells the kernel about the ring (before any receive uses `bgid`).
    pub(crate) fn register(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        self.publish();
        // SAFETY: the entries stay allocated and at this address until the
        // ring is dropped, and `Core`'s drop unregisters or leaks them first.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.as_ptr() as u64,
                self.count,
                self.bgid,
                0,
            )
        }
    }

    pub(crate) fn count(&self) -> u16 {
        self.count
    }

    pub(crate) fn in_kernel(&self) -> u32 {
        self.in_kernel
    }

    /// A receive completion handed `bid` to us.
    pub(crate) fn took(&mut self, bid: u16, len: u32) {
        self.in_kernel = self.in_kernel.saturating_sub(1);
        self.len[bid as usize] = len.min(self.size);
        self.next[bid as usize] = NIL;
    }

    /// Puts `bid` back in the ring (visible to the kernel after `publish`).
    pub(crate) fn give(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let slot = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `slot < count`, inside the entries allocation; entries past
        // the published tail are not read by the kernel, so writing them is
        // not a race.
        let e = unsafe { &mut *self.entries.as_ptr().add(slot) };
        e.set_addr(self.data.as_ptr() as u64 + bid as u64 * self.size as u64);
        e.set_len(self.size);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.in_kernel += 1;
        self.len[bid as usize] = 0;
        self.next[bid as usize] = NIL;
    }

    /// Makes every `give` so far visible to the kernel.
    pub(crate) fn publish(&mut self) {
        if self.tail == self.published {
            return;
        }
        // SAFETY: the tail field overlays the `resv` of entry 0, inside the
        // page-aligned allocation; the kernel reads it with acquire ordering,
        // so a release store publishes the entries written before it.
        let tail = unsafe { BufRingEntry::tail(self.entries.as_ptr()) } as *const AtomicU16;
        // SAFETY: `tail` is a valid, aligned u16 in our allocation.
        unsafe { (*tail).store(self.tail, Ordering::Release) };
        self.published = self.tail;
    }

    /// The bytes `[off, len)` of a buffer the kernel handed to us.
    pub(crate) fn bytes(&self, bid: u16, off: u32) -> &[u8] {
        let len = self.len[bid as usize];
        let off = off.min(len);
        // SAFETY: `bid < count` (checked by the caller through `took`), so the
        // range lies in the data allocation; the buffer is out of the ring
        // (held by a socket) until `give`, so the kernel does not write it,
        // and it needs `&mut self` to give it back while this borrow lives.
        unsafe {
            std::slice::from_raw_parts(
                self.data
                    .as_ptr()
                    .add(bid as usize * self.size as usize + off as usize),
                (len - off) as usize,
            )
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: allocated in `new` with these layouts; `Core` unregisters the
        // ring and waits for every receive before dropping us, or sets `leak`.
        unsafe {
            alloc::dealloc(self.entries.as_ptr() as *mut u8, self.entries_layout);
            alloc::dealloc(self.data.as_ptr(), self.data_layout);
        }
    }
}
