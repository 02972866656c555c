//! A counting global allocator, per thread so parallel tests do not mix: how many
//! allocations an endpoint's own calls make, and the bytes held.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::netsim::Endpoint;

/// Counts allocations on the thread that makes them; a test binary installs it with
/// `#[global_allocator]`.
pub struct Counting;

thread_local! {
    pub static COUNTING: Cell<bool> = const { Cell::new(false) };
    pub static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    pub static LIVE: Cell<i64> = const { Cell::new(0) };
    pub static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn note(delta: i64, is_alloc: bool) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
    if is_alloc && COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
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

/// Counts allocations made inside the wrapped endpoint's calls only, so the
/// simulator's own bookkeeping does not count.
pub struct Counted<E>(pub E);

pub fn counted<T>(f: impl FnOnce() -> T) -> T {
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    r
}

impl<E: Endpoint> Endpoint for Counted<E> {
    fn handle_datagram(&mut self, now: u32, d: &[u8]) {
        counted(|| self.0.handle_datagram(now, d))
    }
    fn handle_timeout(&mut self, now: u32) {
        counted(|| self.0.handle_timeout(now))
    }
    fn poll_timeout(&self) -> Option<u32> {
        counted(|| self.0.poll_timeout())
    }
    fn drain_transmits(&mut self, send: &mut dyn FnMut(&[u8])) {
        // The sink is the simulator's: count only the endpoint's own work.
        COUNTING.with(|c| c.set(true));
        self.0.drain_transmits(&mut |d| {
            COUNTING.with(|c| c.set(false));
            send(d);
            COUNTING.with(|c| c.set(true));
        });
        COUNTING.with(|c| c.set(false));
    }
    fn can_write(&self) -> bool {
        self.0.can_write()
    }
    fn write(&mut self, now: u32, data: &[u8]) -> usize {
        counted(|| self.0.write(now, data))
    }
    fn read(&mut self, buf: &mut [u8]) -> usize {
        counted(|| self.0.read(buf))
    }
    fn done(&self) -> bool {
        self.0.done()
    }
}
