//! A counting global allocator, per thread so parallel tests do not mix: how many
//! allocations the calls made inside [`counted`] make, and the bytes held.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts allocations on the thread that makes them; a test binary installs it with
/// `#[global_allocator]`.
pub struct Counting;

thread_local! {
    pub static COUNTING: Cell<bool> = const { Cell::new(false) };
    pub static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    pub static LIVE: Cell<i64> = const { Cell::new(0) };
    pub static PEAK: Cell<i64> = const { Cell::new(0) };
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

fn note(delta: i64, is_alloc: bool) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
    let tracing = TRACING.try_with(Cell::get).unwrap_or(true);
    if is_alloc && !tracing && COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        // KCPGATE_TRACE_ALLOCATIONS=1 prints where each counted allocation was made.
        TRACING.with(|t| t.set(true));
        if std::env::var_os("KCPGATE_TRACE_ALLOCATIONS").is_some() {
            eprintln!("allocation of {delta} bytes\n{}", std::backtrace::Backtrace::force_capture());
        }
        TRACING.with(|t| t.set(false));
    }
}

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64, true);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as i64), false);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as i64 - layout.size() as i64, true);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` with its allocations counted: the simulator wraps every call into an
/// endpoint, so its own bookkeeping does not count.
pub fn counted<T>(f: impl FnOnce() -> T) -> T {
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    r
}
