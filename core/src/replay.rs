//! Replay protection on the receive path, a kcpgate extension that needs nothing
//! from the peer.
//!
//! Every datagram of an encrypting method carries a random nonce that the sender
//! never reuses, and that no one without the key can change without failing the
//! checksum. So a datagram whose nonce was seen before is a copy: a replay, or the
//! network's duplicate, and either way carries nothing new. [`RecentNonces`]
//! remembers the last nonces exactly, in a fixed amount of memory: each session
//! keeps one, and the listener's [`crate::admission::OpeningGate`] one for the
//! datagrams that opened sessions.

/// The nonce of a datagram as 64 bits: its bytes folded by XOR, 8 at a time. The
/// nonce is random, so the fold is as good as a hash. `None` when the method has no
/// nonce of 8 bytes or more (`null`), and then nothing can be recognised.
pub fn fingerprint(nonce: &[u8]) -> Option<u64> {
    if nonce.len() < 8 {
        return None;
    }
    let mut folded = 0u64;
    for chunk in nonce.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        folded ^= u64::from_le_bytes(word);
    }
    Some(folded)
}

/// The last `capacity` distinct fingerprints, exactly: a ring in arrival order,
/// indexed by an open-addressing table of twice the size. The memory is taken on
/// the first insert, so an unused log costs nothing, and never grows after.
#[derive(Clone)]
pub struct RecentNonces {
    capacity: usize,
    /// Fingerprints in arrival order; `next` is the oldest once the ring is full.
    ring: Vec<u64>,
    next: usize,
    /// Linear-probing table of ring positions + 1 (0: empty).
    slots: Vec<u32>,
}

impl core::fmt::Debug for RecentNonces {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RecentNonces({} of {})", self.ring.len(), self.capacity)
    }
}

impl RecentNonces {
    /// A log of the last `capacity` fingerprints (rounded up to a power of two, at
    /// least 2, at most 2³⁰).
    pub fn new(capacity: usize) -> RecentNonces {
        let capacity = capacity.clamp(2, 1 << 30).next_power_of_two();
        RecentNonces { capacity, ring: Vec::new(), next: 0, slots: Vec::new() }
    }

    /// How many fingerprints it remembers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The bytes it holds once used: 8 per remembered fingerprint and 8 of index.
    pub fn memory_bytes(&self) -> usize {
        self.capacity * (8 + 2 * 4)
    }

    /// Fingerprints remembered now.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Whether `fingerprint` is among those remembered.
    pub fn contains(&self, fingerprint: u64) -> bool {
        !self.slots.is_empty() && self.find(fingerprint).is_ok()
    }

    /// Records `fingerprint`, forgetting the oldest when full; false (and nothing
    /// changes) if it is remembered already.
    pub fn insert(&mut self, fingerprint: u64) -> bool {
        if self.slots.is_empty() {
            self.ring = Vec::with_capacity(self.capacity);
            self.slots = vec![0; 2 * self.capacity];
        }
        if self.find(fingerprint).is_ok() {
            return false;
        }
        let position = self.next;
        if self.ring.len() == self.capacity {
            let oldest = self.ring[position];
            let at = self.find(oldest).expect("every ring entry is indexed");
            self.remove_slot(at);
            self.ring[position] = fingerprint;
        } else {
            self.ring.push(fingerprint);
        }
        let free = self.find(fingerprint).expect_err("just checked absent");
        self.slots[free] = position as u32 + 1;
        self.next = (position + 1) % self.capacity;
        true
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, fingerprint: u64) -> usize {
        // Fibonacci hashing: the high bits of the product spread any input.
        (fingerprint.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask()
    }

    /// `Ok(slot)` holding `fingerprint`, or `Err(slot)`: the empty slot where it
    /// would go. The table is at most half full, so there is always one.
    fn find(&self, fingerprint: u64) -> Result<usize, usize> {
        let mut i = self.home(fingerprint);
        loop {
            match self.slots[i] {
                0 => return Err(i),
                s if self.ring[s as usize - 1] == fingerprint => return Ok(i),
                _ => i = (i + 1) & self.mask(),
            }
        }
    }

    /// Empties slot `i` and moves later entries of its probe run back, so every
    /// entry stays reachable from its home slot (deletion without tombstones).
    fn remove_slot(&mut self, mut i: usize) {
        let mask = self.mask();
        self.slots[i] = 0;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s == 0 {
                return;
            }
            let home = self.home(self.ring[s as usize - 1]);
            // The entry at j may stay if its home lies cyclically in (i, j].
            let stays = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !stays {
                self.slots[i] = s;
                self.slots[j] = 0;
                i = j;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn fingerprints_fold_the_whole_nonce() {
        assert_eq!(fingerprint(&[]), None);
        assert_eq!(fingerprint(&[1; 7]), None);
        assert_eq!(fingerprint(&1u64.to_le_bytes()), Some(1));
        let mut gcm = [0u8; 12];
        gcm[8] = 1;
        assert_eq!(fingerprint(&gcm), Some(1), "the tail of a 12-byte nonce counts");
        let mut cfb = [0u8; 16];
        cfb[15] = 0x80;
        assert_eq!(fingerprint(&cfb), Some(0x80 << 56));
    }

    /// Against a plain model, with a tiny table so probe runs wrap and collide.
    #[test]
    fn remembers_exactly_the_last_capacity_fingerprints() {
        for capacity in [2usize, 4, 8, 64] {
            let mut log = RecentNonces::new(capacity);
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut x = 0x1234_5678_u64;
            for step in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // A small alphabet, so repeats are frequent: some remembered, some forgotten.
                let fp = x % (3 * capacity as u64);
                let fresh = !model.contains(&fp);
                assert_eq!(log.insert(fp), fresh, "capacity {capacity}, step {step}, fp {fp}");
                if fresh {
                    if model.len() == capacity {
                        model.pop_front();
                    }
                    model.push_back(fp);
                }
                assert_eq!(log.len(), model.len());
                for probe in 0..3 * capacity as u64 {
                    assert_eq!(log.contains(probe), model.contains(&probe), "capacity {capacity}, step {step}");
                }
            }
        }
    }

    #[test]
    fn takes_no_memory_until_used() {
        let log = RecentNonces::new(512);
        assert_eq!((log.ring.capacity(), log.slots.capacity()), (0, 0));
        assert!(!log.contains(7));
        assert_eq!(log.memory_bytes(), 512 * 16);
    }
}
