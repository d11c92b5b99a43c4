//! Heap slots for a connection's per-request futures, recycled per core.
//!
//! A connection's task boxes the future of the path a request takes, so
//! the task carries only that path's state while it runs and nothing of it
//! while the connection idles (PERFORMANCE.md, "Per-connection byte
//! budget"). The proxy path's future is about 2 KiB: above the allocator's
//! per-thread cache, so each request paid a full `malloc`/`free` of it
//! (with `malloc_consolidate`). [`Recycled`] boxes a future in a slot taken
//! from this thread's free list and gives the slot back when the future is
//! dropped, so a core reuses the same few slots request after request.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free slots kept per layout: enough for the requests one core has in
/// flight at once in the benchmarks (c=200 over 2 cores); more are freed,
/// so a peak leaves at most this many slots behind.
const KEEP: usize = 128;

/// This thread's free slots, by layout (a handful of future types).
struct Free(Vec<(Layout, Vec<NonNull<u8>>)>);

impl Drop for Free {
    fn drop(&mut self) {
        for (layout, slots) in self.0.drain(..) {
            for p in slots {
                // SAFETY: every slot in the list was allocated with this
                // layout (`Recycled::new`) and holds no live value.
                unsafe { dealloc(p.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static FREE: RefCell<Free> = const { RefCell::new(Free(Vec::new())) };
}

fn take(layout: Layout) -> Option<NonNull<u8>> {
    FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        f.0.iter_mut()
            .find(|(l, _)| *l == layout)
            .and_then(|(_, slots)| slots.pop())
    })
    .ok()
    .flatten()
}

/// Keeps `p` for reuse, or frees it when the list is full or the thread
/// is going away.
fn give(p: NonNull<u8>, layout: Layout) {
    let kept = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        let i = match f.0.iter().position(|(l, _)| *l == layout) {
            Some(i) => i,
            None => {
                f.0.push((layout, Vec::new()));
                f.0.len() - 1
            }
        };
        let slots = &mut f.0[i].1;
        if slots.len() < KEEP {
            slots.push(p);
            true
        } else {
            false
        }
    });
    if kept != Ok(true) {
        // SAFETY: `p` was allocated with `layout` and holds no live value.
        unsafe { dealloc(p.as_ptr(), layout) };
    }
}

/// A future on the heap, in a slot reused from this thread's free list:
/// what `Box::pin(f)` is, without an allocation per request in the steady
/// state.
pub struct Recycled<F: Future> {
    ptr: NonNull<F>,
}

impl<F: Future> Recycled<F> {
    pub fn new(f: F) -> Self {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            let ptr = NonNull::<F>::dangling();
            // SAFETY: a zero-sized value needs no memory; a dangling,
            // aligned pointer is valid for it.
            unsafe { ptr.as_ptr().write(f) };
            return Recycled { ptr };
        }
        let p = take(layout).unwrap_or_else(|| {
            // SAFETY: `layout` has a non-zero size (checked above).
            let p = unsafe { alloc(layout) };
            NonNull::new(p).unwrap_or_else(|| handle_alloc_error(layout))
        });
        let ptr = p.cast::<F>();
        // SAFETY: the slot is allocated for `F`'s layout and holds no live
        // value (fresh, or given back after its value was dropped).
        unsafe { ptr.as_ptr().write(f) };
        Recycled { ptr }
    }
}

// The future stays at its heap address for its whole life, whatever
// moves the handle: the handle itself may move freely.
impl<F: Future> Unpin for Recycled<F> {}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the value behind `ptr` is live until `drop` and never
        // moved out of its slot, so pinning it there is sound (as for a
        // `Pin<Box<F>>`); `self` is borrowed mutably, so this is the only
        // reference to it.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for Recycled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the value is live (written in `new`, dropped only here)
        // and dropped in place, as pinned data must be.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        if layout.size() != 0 {
            give(self.ptr.cast::<u8>(), layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn addr<F: Future>(r: &Recycled<F>) -> usize {
        r.ptr.as_ptr() as usize
    }

    fn run<F: Future>(f: F) -> F::Output {
        futures_lite::future::block_on(f)
    }

    #[test]
    fn a_slot_is_reused_and_its_value_dropped() {
        let witness = Rc::new(());
        let w = witness.clone();
        let a = Recycled::new(async move {
            let _w = w;
            [1u8; 3000].iter().map(|&b| b as u32).sum::<u32>()
        });
        let first = addr(&a);
        assert_eq!(run(a), 3000);
        assert_eq!(Rc::strong_count(&witness), 1, "the future was dropped");
        let w = witness.clone();
        let b = Recycled::new(async move {
            let _w = w;
            [1u8; 3000].iter().map(|&b| b as u32).sum::<u32>()
        });
        assert_eq!(addr(&b), first, "the same slot again");
        // Dropped before it ran: its captures are dropped all the same.
        drop(b);
        assert_eq!(Rc::strong_count(&witness), 1);
    }

    #[test]
    fn a_pending_future_keeps_its_slot_and_another_gets_a_new_one() {
        let (tx, rx) = async_channel_like();
        let a = Recycled::new(rx);
        let b = Recycled::new(async { 7 });
        assert_ne!(addr(&a), addr(&b));
        assert_eq!(run(b), 7);
        tx.set(5);
        assert_eq!(run(a), 5);
        let z = Recycled::new(async {});
        run(z);
    }

    /// A one-shot value: the receiving future is pending until it is set.
    fn async_channel_like() -> (Rc<std::cell::Cell<u32>>, impl Future<Output = u32>) {
        let v = Rc::new(std::cell::Cell::new(0));
        let r = v.clone();
        let f = futures_lite::future::poll_fn(move |_| match r.get() {
            0 => Poll::Pending,
            n => Poll::Ready(n),
        });
        (v, f)
    }
}
