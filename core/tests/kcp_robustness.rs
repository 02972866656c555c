//! Allocation and bad-input behaviour of a live KCP connection, measured with a
//! counting global allocator (per thread, so parallel tests do not mix).

mod support;

use std::cell::Cell;

use kcpgate_core::crypto::Method;
use kcpgate_core::fec::{FecDecoder, FecEncoder, Shards, DATA_HEADER_LEN};
use kcpgate_core::kcp::{Config, Header, Kcp, Mode, SegmentError, HEADER_LEN};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use support::counting::{counted, Counted, Counting, ALLOCATIONS, LIVE, PEAK};
use support::netsim::{Endpoint, Link, LinkConfig, Sim, Transfer};
use support::{client_config, crypto, server_config, session_config, DialerEndpoint, KcpEndpoint, ListenerEndpoint};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn lossy_link() -> LinkConfig {
    let mut l = LinkConfig::ideal(20_000);
    l.loss = 0.02;
    l.reorder = 0.01;
    l.reorder_extra_us = 15_000;
    l.duplicate = 0.01;
    l
}

/// Runs a 48 MiB transfer each way, warms up on the first quarter, and counts the
/// allocations KCP makes in the rest. Returns (segments sent, allocations).
fn steady_state_allocations(link: LinkConfig, seed: u64) -> (u64, u64) {
    let conv = 7;
    let total = 48u64 << 20;
    let mut sim = Sim::new(
        Counted(KcpEndpoint::new(conv, client_config(Mode::Fast3))),
        Counted(KcpEndpoint::new(conv, server_config(Mode::Fast3))),
        Link::new(link, seed),
        Link::new(link, seed + 1),
        Transfer::new(1, total, 2, total),
        Transfer::new(2, total, 1, total),
        0,
    );
    while sim.app_a.received < total / 4 {
        sim.run(100);
    }
    let before = ALLOCATIONS.with(Cell::get);
    let segments_before = sim.a.0.kcp.stats().out_segs + sim.b.0.kcp.stats().out_segs;
    let result = sim.run(600_000);
    assert!(result.finished);
    assert_eq!(sim.app_a.first_mismatch, None);
    assert_eq!(sim.app_b.first_mismatch, None);
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    let segments = sim.a.0.kcp.stats().out_segs + sim.b.0.kcp.stats().out_segs - segments_before;
    println!("seed {seed}: {segments} segments sent in steady state, {allocations} allocations");
    assert!(segments > 100_000, "the measured phase moved real traffic");
    (segments, allocations)
}

/// Under stationary conditions (periodic loss, fixed delay) every buffer, pool and
/// queue reaches its working size during the warm-up; after that KCP allocates
/// nothing at all, whatever it sends, receives, acknowledges or retransmits.
#[test]
fn steady_state_transfer_allocates_nothing() {
    let mut link = LinkConfig::ideal(20_000);
    link.drop_every = 50;
    let (_, allocations) = steady_state_allocations(link, 1);
    assert_eq!(allocations, 0, "steady-state KCP allocated");
}

/// Random loss, duplication and reordering keep setting new records for how many
/// out-of-order segments wait in the receive window; a record may take one more
/// payload buffer (the window bounds how many), so a few allocations remain — but
/// never one per packet: the bound here is one per 10,000 segments.
#[test]
fn random_loss_allocates_only_at_new_high_water_marks() {
    for seed in [1, 21, 33, 47] {
        let (segments, allocations) = steady_state_allocations(lossy_link(), seed);
        assert!(allocations <= segments / 10_000, "seed {seed}: {allocations} allocations for {segments} segments");
    }
}

/// Runs the whole pipeline (aes, optional FEC, KCP, the listener) under periodic
/// loss, warms up on half of a 32 MiB transfer each way, and returns the
/// allocations in the rest and the FEC recoveries there.
fn pipeline_steady_state(fec: Option<(usize, usize)>) -> (u64, u64) {
    let key = "alloc";
    let mut link = LinkConfig::ideal(20_000);
    link.drop_every = 50;
    let total = 32u64 << 20;
    let mut sim = Sim::new(
        Counted(DialerEndpoint::new(&session_config(Mode::Fast3, 128, 512, fec), crypto(Method::Aes256, key), 1)),
        Counted(ListenerEndpoint::new(session_config(Mode::Fast3, 1024, 1024, fec), crypto(Method::Aes256, key))),
        Link::new(link, 1),
        Link::new(link, 2),
        Transfer::new(1, total, 2, total),
        Transfer::new(2, total, 1, total),
        0,
    );
    while sim.app_a.received < total / 2 {
        sim.run(100);
    }
    let before = ALLOCATIONS.with(Cell::get);
    let recovered_before = sim.b.0.listener.snmp().fec_recovered;
    let out_before = sim.b.0.listener.snmp().out_pkts;
    assert!(sim.run(600_000).finished);
    assert_eq!((sim.app_a.first_mismatch, sim.app_b.first_mismatch), (None, None));
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    let snmp = sim.b.0.listener.snmp();
    let recovered = snmp.fec_recovered - recovered_before;
    println!(
        "pipeline fec {fec:?}: {} server datagrams out, {recovered} FEC recoveries in steady state, {allocations} allocations",
        snmp.out_pkts - out_before
    );
    (allocations, recovered)
}

/// Sealing, opening, FEC encoding, KCP and the session table: nothing allocates in
/// steady state.
#[test]
fn pipeline_steady_state_allocates_nothing() {
    assert_eq!(pipeline_steady_state(None).0, 0, "steady-state pipeline allocated");
}

/// FEC recovery on top: the Reed–Solomon crate inverts a decode matrix the first
/// time it meets an erasure pattern and caches it, and a shard buffer is allocated
/// the first time its slot is used (and once more for the first long datagram); so the only allocations left are
/// patterns and slots not seen before — far fewer than recoveries, and bounded by
/// the number of patterns a group can have and the slots the decoder keeps.
#[test]
fn fec_recovery_allocates_only_for_new_erasure_patterns() {
    let (allocations, recovered) = pipeline_steady_state(Some((10, 3)));
    assert!(recovered > 100, "the measured phase exercised FEC recovery");
    assert!(allocations * 10 <= recovered, "{allocations} allocations for {recovered} recoveries");
}

/// A quiet session (keep-alives, small game messages) receives a few shards per
/// group, and the parity of a finished group may come after it. The decoder must
/// hold buffers only for the shards it is waiting on (about two groups' worth), not
/// one for every (group slot, index) it has used: after 200 groups it holds no more
/// than two groups of small buffers plus its sample ring and tables, and the last
/// 100 groups allocate nothing.
#[test]
fn a_quiet_fec_stream_reuses_its_shard_buffers() {
    const SMALL_BUFFER: i64 = 64;
    let shards = Shards::new(10, 3).unwrap();
    let mut enc = FecEncoder::new(shards.clone());
    let mut dec = FecDecoder::new(shards);
    let mut now = 0u32;
    // Bytes the decoder kept: the net of what its calls allocated and freed.
    let mut held = 0i64;
    let mut group = |enc: &mut FecEncoder, dec: &mut FecDecoder, now: &mut u32| {
        let mut delivered = 0;
        for i in 0..10u8 {
            *now += 1;
            let mut shard = vec![0u8; DATA_HEADER_LEN + 40];
            shard[DATA_HEADER_LEN..].fill(i);
            let parity = enc.encode(*now, &mut shard);
            let mut parities: Vec<Vec<u8>> = (0..parity).map(|_| vec![0u8; enc.parity_len()]).collect();
            for (k, p) in parities.iter_mut().enumerate() {
                let n = enc.write_parity(k, p);
                p.truncate(n);
            }
            let live = LIVE.with(Cell::get);
            counted(|| {
                dec.decode(&shard[..], |_| delivered += 1);
                for p in &parities {
                    dec.decode(p, |_| delivered += 1);
                }
            });
            held += LIVE.with(Cell::get) - live;
        }
        assert_eq!(delivered, 0, "nothing was lost, so nothing is rebuilt");
    };
    for _ in 0..100 {
        group(&mut enc, &mut dec, &mut now);
    }
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..100 {
        group(&mut enc, &mut dec, &mut now);
    }
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    println!("decoder holds {held} bytes after 200 quiet groups; {allocations} allocations in the last 100");
    assert_eq!(allocations, 0);
    let sample_ring = 258 * 8;
    let tables = 2048;
    assert!(held <= 2 * 13 * SMALL_BUFFER + sample_ring + tables, "decoder holds {held} bytes");
    assert!(dec.stats.full_shard_sets >= 200);
}

#[derive(Default, Debug)]
struct Injected {
    total: u64,
    expected_errors: u64,
    forged_una: u64,
}

/// Feeds `count` bad datagrams derived from `real` (or random) into `kcp`, checking
/// each outcome.
fn inject(kcp: &mut Kcp, now: u32, real: &[u8], rng: &mut Xoshiro256PlusPlus, count: usize, tally: &mut Injected) {
    let conv = kcp.conv();
    let mut buf = [0u8; 1600];
    for _ in 0..count {
        tally.total += 1;
        let kind = rng.gen_range(0..8);
        let n = if kind == 0 || real.len() < HEADER_LEN { rng.gen_range(0..1600) } else { real.len() };
        if kind == 0 || real.len() < HEADER_LEN {
            // Random bytes: too short, or another conversation.
            rng.fill(&mut buf[..n]);
            if n >= 4 && u32::from_le_bytes(buf[..4].try_into().unwrap()) == conv {
                buf[0] ^= 1;
            }
            assert!(kcp.input(now, &buf[..n], true).is_err());
            tally.expected_errors += 1;
            continue;
        }
        let d = &mut buf[..n];
        d.copy_from_slice(real);
        let mut h = Header::decode(d).unwrap();
        let expect = match kind {
            1 => {
                // Truncated inside the first segment.
                let cut = rng.gen_range(0..(HEADER_LEN + h.len as usize).min(n));
                let r = kcp.input(now, &d[..cut], true);
                assert!(r == Err(SegmentError::TooShort) || r == Err(SegmentError::Truncated), "{r:?}");
                tally.expected_errors += 1;
                continue;
            }
            2 => {
                h.conv ^= rng.gen_range(1..=u32::MAX);
                Err(SegmentError::ConvMismatch)
            }
            3 => {
                h.cmd = loop {
                    let c: u8 = rng.gen();
                    if !(81..=84).contains(&c) {
                        break c;
                    }
                };
                Err(SegmentError::UnknownCommand)
            }
            4 => {
                h.len = rng.gen_range(h.len + (n - HEADER_LEN - h.len as usize) as u32 + 1..=u32::MAX);
                Err(SegmentError::Truncated)
            }
            5 => {
                h.wnd = rng.gen_range(0x8000..=0xffff);
                Ok(())
            }
            6 => {
                h.sn = h.sn.wrapping_add(rng.gen_range(0x0100_0000..0x8000_0000));
                Ok(())
            }
            _ => {
                h.una = h.una.wrapping_add(rng.gen_range(0x0100_0000..0x8000_0000));
                tally.forged_una += 1;
                Ok(())
            }
        };
        h.encode(d);
        let r = kcp.input(now, d, true);
        if expect.is_err() {
            assert_eq!(r, expect);
            tally.expected_errors += 1;
        }
    }
}

/// Wraps an endpoint and, for every real datagram it receives, feeds it bad ones too.
struct Attacked {
    inner: KcpEndpoint,
    rng: Xoshiro256PlusPlus,
    per_datagram: usize,
    tally: Injected,
    peak_rcv_buf: usize,
}

impl Endpoint for Attacked {
    fn handle_datagram(&mut self, now: u32, d: &[u8]) {
        inject(&mut self.inner.kcp, now, d, &mut self.rng, self.per_datagram, &mut self.tally);
        self.inner.handle_datagram(now, d);
        self.peak_rcv_buf = self.peak_rcv_buf.max(self.inner.kcp.state().rcv_buf);
    }
    fn handle_timeout(&mut self, now: u32) {
        self.inner.handle_timeout(now)
    }
    fn poll_timeout(&self) -> Option<u32> {
        self.inner.poll_timeout()
    }
    fn drain_transmits(&mut self, send: &mut dyn FnMut(&[u8])) {
        self.inner.drain_transmits(send)
    }
    fn can_write(&self) -> bool {
        self.inner.can_write()
    }
    fn write(&mut self, now: u32, data: &[u8]) -> usize {
        self.inner.write(now, data)
    }
    fn read(&mut self, buf: &mut [u8]) -> usize {
        self.inner.read(buf)
    }
}

#[test]
fn a_million_bad_datagrams_mid_transfer_are_dropped_and_counted() {
    let conv = 0x5eed;
    let total = 4u64 << 20;
    let attacked = |inner, seed| Attacked {
        inner,
        rng: Xoshiro256PlusPlus::seed_from_u64(seed),
        per_datagram: 120,
        tally: Injected::default(),
        peak_rcv_buf: 0,
    };
    let client_cfg: Config = client_config(Mode::Fast2);
    let server_cfg: Config = server_config(Mode::Fast2);
    let mut sim = Sim::new(
        attacked(KcpEndpoint::new(conv, client_cfg.clone()), 11),
        attacked(KcpEndpoint::new(conv, server_cfg.clone()), 12),
        Link::new(lossy_link(), 3),
        Link::new(lossy_link(), 4),
        Transfer::new(5, total, 6, total),
        Transfer::new(6, total, 5, total),
        u32::MAX - 500,
    );
    let live_before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live_before));
    let result = sim.run(600_000);
    let peak = PEAK.with(Cell::get) - live_before;
    assert!(result.finished, "transfer finished under attack");
    for app in [&sim.app_a, &sim.app_b] {
        assert_eq!(app.first_mismatch, None, "byte-exact under attack");
        assert_eq!(app.received, total);
    }
    let injected = sim.a.tally.total + sim.b.tally.total;
    println!("{injected} bad datagrams injected, peak heap growth {} KiB", peak / 1024);
    assert!(injected >= 1_000_000, "only {injected} injected");
    for (side, ep, cfg) in [("client", &sim.a, &client_cfg), ("server", &sim.b, &server_cfg)] {
        let stats = ep.inner.kcp.stats();
        assert_eq!(stats.in_errors, ep.tally.expected_errors, "{side}: every rejected datagram is counted");
        assert_eq!(stats.forged_una, ep.tally.forged_una, "{side}: every forged una is counted");
        assert!(ep.peak_rcv_buf <= cfg.rcv_wnd as usize, "{side}: receive buffer stays within the window");
    }
    // Two 4 MiB transfers are generated and verified on the fly; the simulator holds
    // at most a window of datagrams per link. 32 MiB is far above what honest traffic
    // needs and far below what a per-bad-datagram leak of a million would cost.
    assert!(peak < 32 << 20, "heap grew by {peak} bytes");
}
