//! Out-of-order receive buffer: a ring indexed by sequence number.
//!
//! KCP only stores segments with `rcv_nxt ≤ sn < rcv_nxt + rcv_wnd`. The ring grows
//! (by powers of two) to cover the farthest segment stored from `rcv_nxt`, so no two
//! live sequence numbers share a slot and insert/lookup/take are O(1) without a
//! sorted list. It starts empty: a quiet connection holds no slots at all, and one
//! that never sees reordering holds a handful.

#[derive(Debug)]
pub(crate) struct RecvWindow<T> {
    slots: Vec<Option<(u32, T)>>,
    len: usize,
}

/// Slots of the first allocation.
const MIN_SLOTS: usize = 16;

impl<T> RecvWindow<T> {
    pub(crate) fn new() -> RecvWindow<T> {
        RecvWindow { slots: Vec::new(), len: 0 }
    }

    /// Grows the ring to `cap` slots (a power of two), re-placing live entries.
    fn grow(&mut self, cap: usize) {
        let old = core::mem::take(&mut self.slots);
        self.slots.resize_with(cap, || None);
        for (sn, item) in old.into_iter().flatten() {
            let i = self.index(sn);
            self.slots[i] = Some((sn, item));
        }
    }

    fn index(&self, sn: u32) -> usize {
        sn as usize & (self.slots.len() - 1)
    }

    fn slot(&self, sn: u32) -> Option<usize> {
        (!self.slots.is_empty()).then(|| self.index(sn))
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, sn: u32) -> bool {
        self.slot(sn).is_some_and(|i| matches!(&self.slots[i], Some((s, _)) if *s == sn))
    }

    /// Stores `item` under `sn`. The caller has checked `contains`, and that every
    /// stored entry and `sn` lie at or after `base` (its `rcv_nxt`).
    pub(crate) fn insert(&mut self, base: u32, sn: u32, item: T) {
        let reach = sn.wrapping_sub(base) as usize + 1;
        if reach > self.slots.len() {
            self.grow(reach.next_power_of_two().max(MIN_SLOTS).max(self.slots.len() * 2));
        }
        let i = self.index(sn);
        debug_assert!(self.slots[i].is_none(), "receive window slot reused while live");
        if self.slots[i].replace((sn, item)).is_none() {
            self.len += 1;
        }
    }

    pub(crate) fn take(&mut self, sn: u32) -> Option<T> {
        let i = self.slot(sn)?;
        match &self.slots[i] {
            Some((s, _)) if *s == sn => {
                self.len -= 1;
                self.slots[i].take().map(|(_, item)| item)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_window_holds_no_slots_and_finds_nothing() {
        let mut w: RecvWindow<u8> = RecvWindow::new();
        assert_eq!(w.slots.len(), 0);
        assert!(!w.contains(5));
        assert_eq!(w.take(5), None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn it_grows_to_the_farthest_entry_and_keeps_every_entry_addressable() {
        let mut w = RecvWindow::new();
        let base = u32::MAX - 3; // the sequence space wraps inside the window
        w.insert(base, base.wrapping_add(1), 1);
        assert_eq!(w.slots.len(), MIN_SLOTS);
        w.insert(base, base.wrapping_add(700), 700);
        assert_eq!(w.slots.len(), 1024);
        w.insert(base, base.wrapping_add(17), 17);
        assert_eq!(w.len(), 3);
        for (d, v) in [(1, 1), (17, 17), (700, 700)] {
            assert!(w.contains(base.wrapping_add(d)));
            assert_eq!(w.take(base.wrapping_add(d)), Some(v));
        }
        assert_eq!(w.len(), 0);
        assert!(!w.contains(base.wrapping_add(1)), "a taken entry is gone");
    }

    #[test]
    fn sequence_numbers_a_ring_apart_are_told_apart() {
        let mut w = RecvWindow::new();
        w.insert(0, 3, 'a');
        assert!(!w.contains(3 + MIN_SLOTS as u32), "same slot, other sequence number");
        assert_eq!(w.take(3 + MIN_SLOTS as u32), None);
        assert_eq!(w.take(3), Some('a'));
    }
}
