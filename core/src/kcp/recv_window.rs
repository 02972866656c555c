//! Out-of-order receive buffer: a ring indexed by sequence number.
//!
//! KCP only stores segments with `rcv_nxt ≤ sn < rcv_nxt + rcv_wnd`, so a ring of at
//! least `rcv_wnd` slots never holds two live sequence numbers in one slot, and
//! insert/lookup/take are O(1) without a sorted list.

#[derive(Debug)]
pub(crate) struct RecvWindow<T> {
    slots: Vec<Option<(u32, T)>>,
    len: usize,
}

impl<T> RecvWindow<T> {
    pub(crate) fn new(window: usize) -> RecvWindow<T> {
        let mut w = RecvWindow { slots: Vec::new(), len: 0 };
        w.ensure_capacity(window);
        w
    }

    /// Grows the ring to hold `window` consecutive sequence numbers. Never shrinks,
    /// so entries stored under a larger window stay addressable.
    pub(crate) fn ensure_capacity(&mut self, window: usize) {
        let cap = window.max(1).next_power_of_two();
        if cap <= self.slots.len() {
            return;
        }
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

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, sn: u32) -> bool {
        matches!(&self.slots[self.index(sn)], Some((s, _)) if *s == sn)
    }

    /// Stores `item` under `sn`. The caller has checked the window and `contains`.
    pub(crate) fn insert(&mut self, sn: u32, item: T) {
        let i = self.index(sn);
        debug_assert!(self.slots[i].is_none(), "receive window slot reused while live");
        if self.slots[i].replace((sn, item)).is_none() {
            self.len += 1;
        }
    }

    pub(crate) fn take(&mut self, sn: u32) -> Option<T> {
        let i = self.index(sn);
        match &self.slots[i] {
            Some((s, _)) if *s == sn => {
                self.len -= 1;
                self.slots[i].take().map(|(_, item)| item)
            }
            _ => None,
        }
    }
}
