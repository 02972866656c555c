//! The simulated network's parts: a [`Link`] for each direction, with seeded
//! impairments (random loss, Gilbert–Elliott bursty loss, one-way delay with
//! jitter, reordering, duplication and a bandwidth cap with a drop-tail queue), and
//! [`Transfer`], a checked byte stream. [`super::pair::Pair`] runs them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use kcpgate_core::endpoint::{Endpoint, SessionId};
use kcpgate_core::smux::Read;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::counting::counted;

/// Gilbert–Elliott two-state loss: the link flips between a good and a bad state
/// once per packet; each state has its own loss probability.
#[derive(Debug, Clone, Copy)]
pub struct GilbertElliott {
    pub p_good_to_bad: f64,
    pub p_bad_to_good: f64,
    pub loss_good: f64,
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// Long-run loss rate.
    pub fn mean_loss(&self) -> f64 {
        let bad = self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good);
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// Impairments of one direction.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    pub delay_us: u64,
    /// Uniform extra delay in `0..=jitter_us` (can reorder on its own).
    pub jitter_us: u64,
    pub loss: f64,
    /// Drop every n-th datagram (0 = off): loss without a random tail.
    pub drop_every: u64,
    pub bursty: Option<GilbertElliott>,
    pub duplicate: f64,
    /// Probability that a packet is held back by `reorder_extra_us`.
    pub reorder: f64,
    pub reorder_extra_us: u64,
    /// Bits per second; `None` is unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops.
    pub queue_bytes: u64,
}

impl LinkConfig {
    pub fn ideal(delay_us: u64) -> LinkConfig {
        LinkConfig {
            delay_us,
            jitter_us: 0,
            loss: 0.0,
            drop_every: 0,
            bursty: None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_extra_us: 0,
            bandwidth_bps: None,
            queue_bytes: u64::MAX,
        }
    }
}

/// What a link did, so a test can report realised impairment.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkStats {
    pub offered: u64,
    pub delivered: u64,
    /// Random and bursty loss.
    pub lost: u64,
    /// Drops at the full bottleneck queue.
    pub queue_drops: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub bytes_delivered: u64,
}

impl LinkStats {
    pub fn dropped(&self) -> u64 {
        self.lost + self.queue_drops
    }
}

struct InFlight {
    at_us: u64,
    seq: u64,
    buf: usize,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

/// One direction of the network.
pub struct Link {
    cfg: LinkConfig,
    rng: Xoshiro256PlusPlus,
    bad_state: bool,
    busy_until_us: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<InFlight>>,
    buffers: Vec<Vec<u8>>,
    free: Vec<usize>,
    pub stats: LinkStats,
}

impl Link {
    pub fn new(cfg: LinkConfig, seed: u64) -> Link {
        Link {
            cfg,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            bad_state: false,
            busy_until_us: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            buffers: Vec::new(),
            free: Vec::new(),
            stats: LinkStats::default(),
        }
    }

    /// Changes the impairments from now on (e.g. a blackout).
    pub fn config_mut(&mut self) -> &mut LinkConfig {
        &mut self.cfg
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen::<f64>() < p
    }

    fn lost(&mut self) -> bool {
        if self.cfg.drop_every > 0 && self.stats.offered % self.cfg.drop_every == 0 {
            return true;
        }
        if let Some(ge) = self.cfg.bursty {
            let flip = if self.bad_state { ge.p_bad_to_good } else { ge.p_good_to_bad };
            if self.chance(flip) {
                self.bad_state = !self.bad_state;
            }
            let p = if self.bad_state { ge.loss_bad } else { ge.loss_good };
            if self.chance(p) {
                return true;
            }
        }
        let p = self.cfg.loss;
        self.chance(p)
    }

    fn enqueue(&mut self, at_us: u64, datagram: &[u8]) {
        let buf = match self.free.pop() {
            Some(i) => i,
            None => {
                self.buffers.push(Vec::new());
                self.buffers.len() - 1
            }
        };
        self.buffers[buf].clear();
        self.buffers[buf].extend_from_slice(datagram);
        self.seq += 1;
        self.heap.push(Reverse(InFlight { at_us, seq: self.seq, buf }));
    }

    /// Offers a datagram to the link at `now_us`.
    pub fn send(&mut self, now_us: u64, datagram: &[u8]) {
        self.stats.offered += 1;
        if self.lost() {
            self.stats.lost += 1;
            return;
        }
        let mut depart = now_us;
        if let Some(bps) = self.cfg.bandwidth_bps {
            let start = self.busy_until_us.max(now_us);
            let backlog_bytes = (start - now_us) * bps / 8 / 1_000_000;
            if backlog_bytes + datagram.len() as u64 > self.cfg.queue_bytes {
                self.stats.queue_drops += 1;
                return;
            }
            self.busy_until_us = start + (datagram.len() as u64 * 8 * 1_000_000).div_ceil(bps);
            depart = self.busy_until_us;
        }
        let jitter = if self.cfg.jitter_us > 0 { self.rng.gen_range(0..=self.cfg.jitter_us) } else { 0 };
        let mut at = depart + self.cfg.delay_us + jitter;
        if self.chance(self.cfg.reorder) {
            self.stats.reordered += 1;
            at += self.cfg.reorder_extra_us;
        }
        self.enqueue(at, datagram);
        if self.chance(self.cfg.duplicate) {
            self.stats.duplicated += 1;
            let extra = self.rng.gen_range(0..=self.cfg.delay_us / 4);
            self.enqueue(at + extra, datagram);
        }
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(p)| p.at_us)
    }

    /// Hands every datagram due at `now_us` to `deliver`.
    pub fn deliver_due(&mut self, now_us: u64, mut deliver: impl FnMut(&[u8])) {
        while let Some(Reverse(p)) = self.heap.peek() {
            if p.at_us > now_us {
                break;
            }
            let Reverse(p) = self.heap.pop().expect("peeked");
            self.stats.delivered += 1;
            self.stats.bytes_delivered += self.buffers[p.buf].len() as u64;
            deliver(&self.buffers[p.buf]);
            self.free.push(p.buf);
        }
    }
}

/// Deterministic content for a transfer: byte `i` of stream `seed`.
pub fn pattern_byte(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i as u8)
}

/// Writes a deterministic byte stream and checks the one coming back.
pub struct Transfer {
    pub send_seed: u64,
    pub send_total: u64,
    pub sent: u64,
    pub recv_seed: u64,
    pub recv_total: u64,
    pub received: u64,
    /// Offset of the first wrong byte received, if any.
    pub first_mismatch: Option<u64>,
    pub chunk: usize,
    /// Write at most this many bytes per simulated ms (0: as fast as the window allows).
    pub pace_bytes_per_ms: u64,
    start_ms: Option<u64>,
    /// (stream offset after a write, sim ms of the write), for delivery delays.
    pub writes: Vec<(u64, u64)>,
    /// (bytes received so far, sim ms), after every read that returned data.
    pub arrivals: Vec<(u64, u64)>,
    scratch: Vec<u8>,
}

impl Transfer {
    pub fn new(send_seed: u64, send_total: u64, recv_seed: u64, recv_total: u64) -> Transfer {
        Transfer {
            send_seed,
            send_total,
            sent: 0,
            recv_seed,
            recv_total,
            received: 0,
            first_mismatch: None,
            chunk: 8192,
            pace_bytes_per_ms: 0,
            start_ms: None,
            writes: Vec::new(),
            arrivals: Vec::new(),
            scratch: vec![0; 65536],
        }
    }

    /// Paced writes of `chunk` bytes, `bytes_per_ms` on average.
    pub fn paced(mut self, chunk: usize, bytes_per_ms: u64) -> Transfer {
        self.chunk = chunk;
        self.pace_bytes_per_ms = bytes_per_ms;
        self
    }

    /// When a paced sender wants to write next (sim µs), if it is waiting on pacing.
    pub fn next_write_us(&self, now_us: u64) -> Option<u64> {
        if self.pace_bytes_per_ms == 0 || self.sent >= self.send_total {
            return None;
        }
        // A write already due waits for the window, i.e. for the next event.
        let start = self.start_ms.unwrap_or(now_us / 1000);
        let due_ms = start + (self.sent + self.chunk as u64).div_ceil(self.pace_bytes_per_ms) - 1;
        (due_ms * 1000 > now_us).then_some(due_ms * 1000)
    }

    /// Delay from each write to the arrival of its last byte, in sim ms, sorted.
    pub fn delivery_delays(sender: &Transfer, receiver: &Transfer) -> Vec<u64> {
        let mut delays = Vec::with_capacity(sender.writes.len());
        let mut arrivals = receiver.arrivals.iter().peekable();
        let mut last = None;
        for &(end, at) in &sender.writes {
            while let Some(&&(got, t)) = arrivals.peek() {
                last = Some((got, t));
                if got >= end {
                    break;
                }
                arrivals.next();
            }
            if let Some((got, t)) = last {
                if got >= end {
                    delays.push(t - at);
                }
            }
        }
        delays.sort_unstable();
        delays
    }

    pub fn done(&self) -> bool {
        self.sent == self.send_total && self.received >= self.recv_total
    }

    /// Writes while stream `sid` of session `id` takes bytes (and pacing allows),
    /// reads and verifies whatever arrived. `now_us` is simulator time.
    pub fn pump(&mut self, now: u32, now_us: u64, ep: &mut Endpoint<u32>, id: SessionId, sid: u32) {
        let now_ms = now_us / 1000;
        let start = *self.start_ms.get_or_insert(now_ms);
        while self.sent < self.send_total {
            let n = (self.send_total - self.sent).min(self.chunk as u64) as usize;
            if self.pace_bytes_per_ms > 0 {
                let allowed = (now_ms - start + 1) * self.pace_bytes_per_ms;
                if self.sent + n as u64 > allowed {
                    break;
                }
            }
            for (k, b) in self.scratch[..n].iter_mut().enumerate() {
                *b = pattern_byte(self.send_seed, self.sent + k as u64);
            }
            let took = counted(|| ep.write(id, sid, &self.scratch[..n])).expect("the stream takes writes");
            if took == 0 {
                break;
            }
            self.sent += took as u64;
            self.writes.push((self.sent, now_ms));
            if took < n {
                break;
            }
        }
        loop {
            let n = match counted(|| ep.read(now, id, sid, &mut self.scratch)).expect("the stream reads") {
                Read::Data(n) => n,
                Read::Eof => panic!("the peer finished a transfer stream"),
                Read::WouldBlock => break,
            };
            for (k, &b) in self.scratch[..n].iter().enumerate() {
                let at = self.received + k as u64;
                if self.first_mismatch.is_none() && (at >= self.recv_total || b != pattern_byte(self.recv_seed, at)) {
                    self.first_mismatch = Some(at);
                }
            }
            self.received += n as u64;
            self.arrivals.push((self.received, now_ms));
        }
    }
}
