//! Reed–Solomon FEC, wire-compatible with kcp-go (docs/protocol.md §4).
//!
//! A data shard is `seqid u32 | 0x00F1 u16 | size u16 | KCP datagram`, with
//! `size = 2 + datagram length`; a parity shard is `seqid u32 | 0x00F2 u16 | parity`.
//! Every `data + parity` consecutive seqids form a group. The RS code protects each
//! data shard's bytes from the size field on, zero-padded to the group's longest.

use reed_solomon_erasure::galois_8::ReedSolomon;
use std::sync::Arc;

/// Packet type of a data shard (kcp-go `typeData`).
pub const TYPE_DATA: u16 = 0x00F1;
/// Packet type of a parity shard (kcp-go `typeParity`).
pub const TYPE_PARITY: u16 = 0x00F2;
/// kcp-go's out-of-band datagrams (not used by kcptun; dropped here).
pub const TYPE_OOB: u16 = 0x00F3;
/// seqid + type.
pub const HEADER_LEN: usize = 6;
/// seqid + type + size: what a data shard adds in front of a KCP datagram.
pub const DATA_HEADER_LEN: usize = 8;
/// Parity is skipped for a group whose last data shard came this long (ms) after
/// the one before it (kcp-go's `maxFECEncodeLatency`).
pub const MAX_ENCODE_LATENCY_MS: u32 = 500;
/// kcpgate also skips parity for a group that took this long (ms) from its first
/// data shard to its last: fewer than two shards a second, keep-alives and ACKs of
/// an idle session, where KCP's own retransmission comes long before a group
/// completes. kcp-go looks at the last gap only, so an idle session that sends a
/// keep-alive and an ACK a moment apart makes parity for every other group.
pub const MAX_GROUP_AGE_MS: u32 = 5000;
/// Largest shard body handled (an Ethernet-size datagram).
pub const MAX_UNIT: usize = 1500;
/// How many groups behind the newest a decoder keeps.
const KEEP_GROUPS: u32 = 3;
/// Samples the auto-tuner looks at.
const TUNE_SAMPLES: usize = 258;

/// Where the sequence numbers of a `(data, parity)` code wrap: the largest multiple
/// of the group size that fits a u32, so a group never straddles the wrap.
pub fn paws(data: usize, parity: usize) -> u32 {
    let n = (data + parity) as u32;
    (u32::MAX / n) * n
}

/// A `(data, parity)` shard configuration that kcp-go accepts, with its
/// Reed-Solomon codec. Clones share the codec (its tables are several KiB), so a
/// configuration cloned into every session costs one codec in all.
#[derive(Clone)]
pub struct Shards {
    /// Data shards per group.
    pub data: usize,
    /// Parity shards per group.
    pub parity: usize,
    codec: Arc<ReedSolomon>,
}

impl PartialEq for Shards {
    fn eq(&self, other: &Shards) -> bool {
        (self.data, self.parity) == (other.data, other.parity)
    }
}

impl Eq for Shards {}

impl core::fmt::Debug for Shards {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Shards({}/{})", self.data, self.parity)
    }
}

impl Shards {
    /// `None` when FEC is off (either count 0) or the group would exceed 256 shards.
    pub fn new(data: usize, parity: usize) -> Option<Shards> {
        if data == 0 || parity == 0 || data + parity > 256 {
            return None;
        }
        let codec = Arc::new(ReedSolomon::new(data, parity).ok()?);
        Some(Shards { data, parity, codec })
    }

    /// Shards per group, data and parity.
    pub fn total(&self) -> usize {
        self.data + self.parity
    }
}

/// FEC counters (kcp-go SNMP names in the comments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FecStats {
    /// `FECFullShardSet`: groups complete without recovery.
    pub full_shard_sets: u64,
    /// `FECRecovered`: data shards rebuilt.
    pub recovered: u64,
    /// `FECErrs`: RS failures, and recovered units with an impossible size.
    pub errors: u64,
    /// `FECParityShards`: parity shards accepted by the decoder.
    pub parity_shards: u64,
    /// Shards dropped as duplicates, out of range, or while re-tuning.
    pub dropped: u64,
    /// Times the decoder re-tuned itself to the peer's shard counts.
    pub retunes: u64,
}

/// Shard buffers are allocated on first use in three sizes: one for keep-alives and
/// ACKs, one for short messages (game traffic), and the whole unit once a longer
/// datagram comes. A buffer is thus allocated at most three times and never grows
/// afterwards, and a quiet session holds only small ones.
const UNIT_SIZES: [usize; 3] = [64, 256, MAX_UNIT];

fn reserve_unit(buf: &mut Vec<u8>, len: usize) {
    if buf.capacity() < len {
        let size = UNIT_SIZES.into_iter().find(|&s| s >= len).unwrap_or(MAX_UNIT);
        buf.reserve_exact(size - buf.len());
    }
}

fn fill(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.clear();
    reserve_unit(buf, bytes.len());
    buf.extend_from_slice(bytes);
}

// ------------------------------------------------------------------- encoder

/// Adds FEC headers to outgoing KCP datagrams and makes the parity shards.
pub struct FecEncoder {
    shards: Shards,
    paws: u32,
    next: u32,
    /// Data units of the group being built (size field + datagram), padded at encode.
    units: Vec<Vec<u8>>,
    parity: Vec<Vec<u8>>,
    filled: usize,
    longest: usize,
    last_data_ms: u32,
    /// When the group being built got its first data shard.
    group_start_ms: u32,
    parity_ready: bool,
    parity_first_seqid: u32,
    /// What the encoder counted.
    pub stats: FecStats,
}

impl core::fmt::Debug for FecEncoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FecEncoder").field("shards", &self.shards).field("next", &self.next).finish()
    }
}

impl FecEncoder {
    /// An encoder for groups of `shards`.
    pub fn new(shards: Shards) -> FecEncoder {
        FecEncoder {
            paws: paws(shards.data, shards.parity),
            shards,
            next: 0,
            units: Vec::new(),
            parity: Vec::new(),
            filled: 0,
            longest: 0,
            last_data_ms: 0,
            group_start_ms: 0,
            parity_ready: false,
            parity_first_seqid: 0,
            stats: FecStats::default(),
        }
    }

    /// The shard counts it encodes with.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Starts numbering at `seqid` (taken modulo the wrap point) instead of 0, e.g.
    /// to exercise the wrap.
    pub fn with_next_seqid(mut self, seqid: u32) -> FecEncoder {
        self.next = seqid % self.paws;
        self
    }

    /// The seqid the next shard gets.
    pub fn next_seqid(&self) -> u32 {
        self.next
    }

    /// Turns `shard` into a data shard: `shard` is the 8 header bytes this function
    /// writes, followed by the KCP datagram. Returns how many parity shards are now
    /// ready for [`FecEncoder::write_parity`] (0 unless this completed a group).
    pub fn encode(&mut self, now_ms: u32, shard: &mut [u8]) -> usize {
        assert!(shard.len() >= DATA_HEADER_LEN && shard.len() - HEADER_LEN <= MAX_UNIT, "shard size out of range");
        let size = (shard.len() - HEADER_LEN) as u16;
        shard[0..4].copy_from_slice(&self.next.to_le_bytes());
        shard[4..6].copy_from_slice(&TYPE_DATA.to_le_bytes());
        shard[6..8].copy_from_slice(&size.to_le_bytes());
        self.advance(1);

        if self.units.is_empty() {
            self.units = (0..self.shards.data).map(|_| Vec::new()).collect();
            self.parity = (0..self.shards.parity).map(|_| Vec::new()).collect();
        }
        if self.filled == 0 {
            self.group_start_ms = now_ms;
        }
        let unit = &shard[HEADER_LEN..];
        fill(&mut self.units[self.filled], unit);
        self.longest = self.longest.max(unit.len());
        self.filled += 1;
        let gap = now_ms.wrapping_sub(self.last_data_ms);
        self.last_data_ms = now_ms;
        self.parity_ready = false;
        if self.filled < self.shards.data {
            return 0;
        }

        // The group is complete: parity follows at once, unless the group took too long.
        let first_parity = self.next;
        self.advance(self.shards.parity as u32);
        let (filled, longest) = (self.filled, self.longest);
        self.filled = 0;
        self.longest = 0;
        if gap >= MAX_ENCODE_LATENCY_MS || now_ms.wrapping_sub(self.group_start_ms) >= MAX_GROUP_AGE_MS {
            return 0;
        }
        for u in &mut self.units[..filled] {
            reserve_unit(u, longest);
            u.resize(longest, 0);
        }
        for p in &mut self.parity {
            p.clear();
            reserve_unit(p, longest);
            p.resize(longest, 0);
        }
        if self.shards.codec.encode_sep(&self.units, &mut self.parity).is_err() {
            self.stats.errors += 1;
            return 0;
        }
        self.parity_ready = true;
        self.parity_first_seqid = first_parity;
        self.shards.parity
    }

    /// Writes parity shard `i` of the group just completed (header + parity bytes)
    /// into `out`, which must hold [`FecEncoder::parity_len`] bytes; returns the length.
    pub fn write_parity(&self, i: usize, out: &mut [u8]) -> usize {
        assert!(self.parity_ready && i < self.shards.parity, "no such parity shard");
        let seqid = (self.parity_first_seqid + i as u32) % self.paws;
        let p = &self.parity[i];
        out[0..4].copy_from_slice(&seqid.to_le_bytes());
        out[4..6].copy_from_slice(&TYPE_PARITY.to_le_bytes());
        out[HEADER_LEN..HEADER_LEN + p.len()].copy_from_slice(p);
        HEADER_LEN + p.len()
    }

    /// Length of each parity shard of the group just completed.
    pub fn parity_len(&self) -> usize {
        HEADER_LEN + self.parity.first().map_or(0, Vec::len)
    }

    fn advance(&mut self, n: u32) {
        self.next = ((u64::from(self.next) + u64::from(n)) % u64::from(self.paws)) as u32;
    }
}

// ------------------------------------------------------------------- decoder

struct Group {
    id: u32,
    /// Shard bodies (bytes after the 6-byte header) by index within the group.
    bodies: Vec<Vec<u8>>,
    present: Vec<bool>,
    count: usize,
    live: bool,
}

/// Gives a body that holds no buffer one from `spare`, if there is one.
fn take_spare(body: &mut Vec<u8>, spare: &mut Vec<Vec<u8>>) {
    if body.capacity() == 0 {
        *body = spare.pop().unwrap_or_default();
    }
}

impl Group {
    /// Hands the group's shard buffers to `spare`; the group holds none afterwards.
    fn release(&mut self, spare: &mut Vec<Vec<u8>>) {
        for body in &mut self.bodies {
            if body.capacity() > 0 {
                spare.push(core::mem::take(body));
            }
        }
    }
}

/// Collects FEC shards per group and rebuilds lost data shards.
pub struct FecDecoder {
    shards: Shards,
    paws: u32,
    groups: Vec<Group>,
    newest: Option<u32>,
    /// Recent (type, seqid) samples for auto-tuning, oldest overwritten first.
    samples: Vec<(u16, u32)>,
    sample_at: usize,
    needs_tuning: bool,
    /// Data indices being rebuilt (reused between recoveries).
    missing: Vec<usize>,
    /// Shard buffers of finished or expired groups, for the next shards. A session
    /// thus holds buffers only for the shards it is waiting on, not for every
    /// (group, index) it has ever seen.
    spare: Vec<Vec<u8>>,
    /// What the decoder counted.
    pub stats: FecStats,
}

impl core::fmt::Debug for FecDecoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FecDecoder").field("shards", &self.shards).field("newest", &self.newest).finish()
    }
}

impl FecDecoder {
    /// A decoder for groups of `shards` (it re-tunes to the peer's).
    pub fn new(shards: Shards) -> FecDecoder {
        FecDecoder {
            paws: paws(shards.data, shards.parity),
            shards,
            groups: Vec::new(),
            newest: None,
            samples: Vec::new(),
            sample_at: 0,
            needs_tuning: false,
            missing: Vec::new(),
            spare: Vec::new(),
            stats: FecStats::default(),
        }
    }

    /// The shard counts it decodes with now.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Groups currently collecting shards (`FECShardSet`).
    pub fn groups_held(&self) -> usize {
        self.groups.iter().filter(|g| g.live).count()
    }

    /// Newest group id seen (`FECShardMin`).
    pub fn newest_group(&self) -> Option<u32> {
        self.newest
    }

    fn group_count(&self) -> u32 {
        self.paws / self.shards.total() as u32
    }

    /// Signed distance between two group ids on the wrapping group-id circle.
    fn group_diff(&self, a: u32, b: u32) -> i64 {
        let n = i64::from(self.group_count());
        let d = (i64::from(a) - i64::from(b)).rem_euclid(n);
        if d > n / 2 {
            d - n
        } else {
            d
        }
    }

    /// Takes one FEC shard (`packet` starts at the seqid). Rebuilt data shards are
    /// passed to `recovered` as KCP datagrams, in ascending order.
    pub fn decode(&mut self, packet: &[u8], mut recovered: impl FnMut(&[u8])) {
        if packet.len() < HEADER_LEN || packet.len() - HEADER_LEN > MAX_UNIT {
            self.stats.dropped += 1;
            return;
        }
        let seqid = u32::from_le_bytes(packet[0..4].try_into().expect("4 bytes"));
        let kind = u16::from_le_bytes(packet[4..6].try_into().expect("2 bytes"));
        self.sample(kind, seqid);
        if seqid >= self.paws {
            self.stats.dropped += 1;
            return;
        }
        let total = self.shards.total();
        let index = seqid as usize % total;
        let expected = if index < self.shards.data { TYPE_DATA } else { TYPE_PARITY };
        if kind != expected {
            self.needs_tuning = true;
        }
        if self.needs_tuning {
            self.stats.dropped += 1;
            self.try_tune();
            return;
        }

        let id = seqid / total as u32;
        match self.newest {
            Some(n) if self.group_diff(id, n) <= 0 => {
                if self.group_diff(n, id) > i64::from(KEEP_GROUPS) {
                    self.stats.dropped += 1;
                    return;
                }
            }
            _ => {
                self.newest = Some(id);
                self.expire();
            }
        }
        let slot = self.group_slot(id);
        let group = &mut self.groups[slot];
        if group.present[index] {
            self.stats.dropped += 1;
            return;
        }
        if kind == TYPE_PARITY {
            self.stats.parity_shards += 1;
        }
        let body = &mut group.bodies[index];
        take_spare(body, &mut self.spare);
        fill(body, &packet[HEADER_LEN..]);
        group.present[index] = true;
        group.count += 1;
        if group.count < self.shards.data {
            return;
        }

        // Enough shards: this is the one attempt for what the group holds now.
        let data = self.shards.data;
        group.count = 0;
        group.live = false;
        let missing = group.present[..data].iter().filter(|p| !**p).count();
        if missing == 0 {
            group.present.iter_mut().for_each(|p| *p = false);
            group.release(&mut self.spare);
            self.stats.full_shard_sets += 1;
            return;
        }
        // Pad what is present to the longest body and size the holes to match.
        let longest = group.bodies.iter().zip(&group.present).filter(|(_, p)| **p).map(|(b, _)| b.len()).max();
        let longest = longest.unwrap_or(0);
        for body in &mut group.bodies {
            take_spare(body, &mut self.spare);
            reserve_unit(body, longest);
            body.resize(longest, 0);
        }
        self.missing.clear();
        self.missing.extend((0..data).filter(|&i| !group.present[i]));
        let result = {
            let mut slices: [(&mut [u8], bool); 256] = core::array::from_fn(|_| (&mut [][..], false));
            for ((slot, body), present) in slices.iter_mut().zip(group.bodies.iter_mut()).zip(&group.present) {
                *slot = (body.as_mut_slice(), *present);
            }
            self.shards.codec.reconstruct_data(&mut slices[..total])
        };
        group.present.iter_mut().for_each(|p| *p = false);
        if result.is_err() {
            self.stats.errors += 1;
        } else {
            for &i in &self.missing {
                let unit = &self.groups[slot].bodies[i];
                if unit.len() < 2 {
                    self.stats.errors += 1;
                    continue;
                }
                let size = usize::from(u16::from_le_bytes([unit[0], unit[1]]));
                if size < 2 || size > unit.len() {
                    self.stats.errors += 1;
                    continue;
                }
                self.stats.recovered += 1;
                recovered(&unit[2..size]);
            }
        }
        self.groups[slot].release(&mut self.spare);
    }

    fn group_slot(&mut self, id: u32) -> usize {
        if let Some(i) = self.groups.iter().position(|g| g.live && g.id == id) {
            return i;
        }
        let total = self.shards.total();
        let i = match self.groups.iter().position(|g| !g.live) {
            Some(i) => i,
            None => {
                self.groups.push(Group {
                    id,
                    bodies: (0..total).map(|_| Vec::new()).collect(),
                    present: vec![false; total],
                    count: 0,
                    live: false,
                });
                self.groups.len() - 1
            }
        };
        let g = &mut self.groups[i];
        g.id = id;
        g.live = true;
        g.count = 0;
        g.present.iter_mut().for_each(|p| *p = false);
        i
    }

    /// Drops groups more than [`KEEP_GROUPS`] behind the newest.
    fn expire(&mut self) {
        let Some(newest) = self.newest else { return };
        for i in 0..self.groups.len() {
            if self.groups[i].live && self.group_diff(newest, self.groups[i].id) > i64::from(KEEP_GROUPS) {
                self.groups[i].live = false;
                self.groups[i].release(&mut self.spare);
            }
        }
    }

    fn sample(&mut self, kind: u16, seqid: u32) {
        if self.samples.len() < TUNE_SAMPLES {
            // Exactly the ring's size: growth by doubling would hold twice that.
            self.samples.reserve_exact(TUNE_SAMPLES - self.samples.len());
            self.samples.push((kind, seqid));
        } else {
            self.samples[self.sample_at] = (kind, seqid);
        }
        self.sample_at = (self.sample_at + 1) % TUNE_SAMPLES;
    }

    /// Looks for the peer's (data, parity) in the recent samples: sorted by seqid and
    /// without gaps, the first complete run of data shards and the parity run after it.
    fn try_tune(&mut self) {
        let Some(found) = detect_shards(&self.samples) else { return };
        self.needs_tuning = false;
        if found != self.shards {
            *self = FecDecoder { stats: self.stats, ..FecDecoder::new(found) };
            self.stats.retunes += 1;
        }
    }
}

/// The auto-tuner's detection (docs/protocol.md §4): `None` if the samples do not show one full
/// data run followed by a parity run over consecutive seqids.
fn detect_shards(samples: &[(u16, u32)]) -> Option<Shards> {
    let mut sorted: Vec<(u32, u16)> = samples.iter().map(|&(k, s)| (s, k)).collect();
    sorted.sort_unstable();
    sorted.dedup_by_key(|e| e.0);
    let mut data_run = 0;
    let mut parity_run = 0;
    let mut state = 0; // 0: looking for a rising edge into data, 1: counting data, 2: counting parity
    for w in sorted.windows(2) {
        let ((s0, k0), (s1, k1)) = (w[0], w[1]);
        if s1 != s0 + 1 {
            return None;
        }
        match state {
            0 if k0 == TYPE_PARITY && k1 == TYPE_DATA => {
                state = 1;
                data_run = 1;
            }
            1 if k1 == TYPE_DATA => data_run += 1,
            1 if k1 == TYPE_PARITY => {
                state = 2;
                parity_run = 1;
            }
            2 if k1 == TYPE_PARITY => parity_run += 1,
            2 if k1 == TYPE_DATA => return Shards::new(data_run, parity_run).filter(|s| s.total() < 256),
            _ => {}
        }
    }
    None
}
