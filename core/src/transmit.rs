//! Outgoing datagrams, batched in one reusable arena.
//!
//! Every datagram lives in a slot of `stride` bytes: `header_room` free bytes in front
//! (for the FEC and crypto headers the lower layers write in place), the datagram
//! body, and free bytes after it (for an AEAD tag). The arena keeps its capacity
//! after [`TransmitQueue::clear`], so a connection in steady state allocates
//! nothing to send.

/// A batch of outgoing datagrams. See the module docs.
#[derive(Debug, Clone)]
pub struct TransmitQueue {
    arena: Vec<u8>,
    lens: Vec<usize>,
    stride: usize,
}

impl TransmitQueue {
    /// A queue whose slots hold `stride` bytes each.
    pub fn new(stride: usize) -> TransmitQueue {
        TransmitQueue { arena: Vec::new(), lens: Vec::new(), stride }
    }

    /// Bytes per slot.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Changes the slot size. Pending datagrams are kept; a datagram longer than
    /// the new stride is truncated to it.
    pub fn set_stride(&mut self, stride: usize) {
        if stride == self.stride {
            return;
        }
        let old = core::mem::replace(self, TransmitQueue::new(stride));
        for datagram in old.iter() {
            let n = datagram.len().min(stride);
            self.push_slot()[..n].copy_from_slice(&datagram[..n]);
            self.set_len(self.len() - 1, n);
        }
    }

    /// Number of datagrams queued.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether no datagram is queued.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Appends an empty datagram and returns its whole slot (`stride` bytes, contents
    /// unspecified). Its length is 0 until [`TransmitQueue::set_len`].
    pub fn push_slot(&mut self) -> &mut [u8] {
        let start = self.lens.len() * self.stride;
        let end = start + self.stride;
        if self.arena.len() < end {
            self.arena.resize(end, 0);
        }
        self.lens.push(0);
        &mut self.arena[start..end]
    }

    /// The whole slot of datagram `i`, `stride` bytes.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.stride;
        &mut self.arena[start..start + self.stride]
    }

    /// Sets the length of datagram `i` (at most `stride`).
    pub fn set_len(&mut self, i: usize, len: usize) {
        assert!(len <= self.stride, "datagram longer than its slot");
        self.lens[i] = len;
    }

    /// Removes the last datagram (used to drop an empty one).
    pub fn pop(&mut self) {
        self.lens.pop();
    }

    /// Datagram `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = i * self.stride;
        &self.arena[start..start + self.lens[i]]
    }

    /// Datagram `i`, mutable (for in-place encryption).
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.stride;
        &mut self.arena[start..start + self.lens[i]]
    }

    /// All queued datagrams, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.lens.len()).map(move |i| self.get(i))
    }

    /// Forgets every queued datagram; the memory is kept for reuse.
    pub fn clear(&mut self) {
        self.lens.clear();
    }
}
