//! Allocation and bad-input behaviour of live sessions, measured with a counting
//! global allocator (per thread, so parallel tests do not mix).

mod support;

use std::cell::Cell;

use kcpgate_core::crypto::Method;
use kcpgate_core::endpoint::{Endpoint, Event};
use kcpgate_core::fec::{FecDecoder, FecEncoder, Shards, DATA_HEADER_LEN};
use kcpgate_core::kcp::{Header, Kcp, Mode, HEADER_LEN};
use kcpgate_core::listener::{DropReason, Outcome};
use kcpgate_core::smux::Role;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use support::counting::{counted, Counting, ALLOCATIONS, LIVE, PEAK};
use support::netsim::{Link, LinkConfig};
use support::pair::{App, Layers, Pair, Side, TransferApp};

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

/// The KCP connection of an endpoint's one session.
fn kcp(ep: &Endpoint<u32>) -> &Kcp {
    ep.sessions().next().expect("a session").2.connection().kcp()
}

/// Datagrams the endpoint's one session refused as KCP (kcp-go's `KCPInErrors`).
fn kcp_in_errors(ep: &Endpoint<u32>) -> u64 {
    ep.sessions().next().expect("a session").2.snmp().kcp_in_errors
}

/// Runs a 160 MiB transfer each way between bare endpoints (KCP and smux, nothing
/// else), warms up on the first quarter, and counts the allocations the endpoints
/// make in the rest. Returns (segments sent, allocations).
fn steady_state_allocations(link: LinkConfig, seed: u64) -> (u64, u64) {
    let total = 160u64 << 20;
    let mut pair =
        Pair::with_links(&Layers::bare(Mode::Fast3), Link::new(link, seed), Link::new(link, seed + 1), seed, 0);
    let mut app = TransferApp::both_ways(total);
    // The warm-up takes in the first smux keep-alives (every 10 s), whose queues
    // and frame buffers are first-time allocations.
    let warmed = |pair: &mut Pair, app: &TransferApp| pair.elapsed_ms() > 12_000 && app.client.received >= total / 4;
    assert!(pair.run(&mut app, 600_000, warmed), "warm-up");
    let before = ALLOCATIONS.with(Cell::get);
    let segments_before = pair.client.snmp().out_segs + pair.server.snmp().out_segs;
    assert!(pair.run_transfers(&mut app, 600_000));
    assert_eq!(app.client.first_mismatch, None);
    assert_eq!(app.server.first_mismatch, None);
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    let segments = pair.client.snmp().out_segs + pair.server.snmp().out_segs - segments_before;
    println!("seed {seed}: {segments} segments sent in steady state, {allocations} allocations");
    assert!(segments > 100_000, "the measured phase moved real traffic");
    (segments, allocations)
}

/// Under stationary conditions (periodic loss, fixed delay) every buffer, pool and
/// queue reaches its working size during the warm-up; after that a session
/// allocates nothing per packet, whatever KCP sends, receives, acknowledges or
/// retransmits and whatever smux frames. What is left are rare new records of smux
/// control frames (window updates) waiting behind a full KCP window, each one more
/// small buffer: one in the 377,000 segments measured; the bound is one per
/// 100,000.
#[test]
fn steady_state_transfer_allocates_nothing_per_packet() {
    let mut link = LinkConfig::ideal(20_000);
    link.drop_every = 50;
    let (segments, allocations) = steady_state_allocations(link, 1);
    assert!(allocations <= segments / 100_000, "{allocations} allocations for {segments} segments");
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

/// Runs whole sessions (aes, optional FEC, KCP, smux) under periodic loss, warms
/// up on half of a 96 MiB transfer each way, and returns the allocations in the
/// rest and the FEC recoveries there.
fn pipeline_steady_state(fec: Option<(usize, usize)>) -> (u64, u64) {
    let mut link = LinkConfig::ideal(20_000);
    link.drop_every = 50;
    let total = 96u64 << 20;
    let layers = Layers { fec, ..Layers { method: Method::Aes256, ..Layers::bare(Mode::Fast3) } };
    let mut pair = Pair::with_links(&layers, Link::new(link, 1), Link::new(link, 2), 1, 0);
    let mut app = TransferApp::both_ways(total);
    let warmed = |pair: &mut Pair, app: &TransferApp| pair.elapsed_ms() > 12_000 && app.client.received >= total / 2;
    assert!(pair.run(&mut app, 600_000, warmed), "warm-up (with the first keep-alives)");
    let before = ALLOCATIONS.with(Cell::get);
    let recovered_before = pair.server.snmp().fec_recovered;
    let out_before = pair.server.snmp().out_pkts;
    assert!(pair.run_transfers(&mut app, 600_000));
    assert_eq!((app.client.first_mismatch, app.server.first_mismatch), (None, None));
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    let snmp = pair.server.snmp();
    let recovered = snmp.fec_recovered - recovered_before;
    println!(
        "fec {fec:?}: {} server datagrams out, {recovered} FEC recoveries in steady state, {allocations} allocations",
        snmp.out_pkts - out_before
    );
    (allocations, recovered)
}

/// Sealing, opening, FEC encoding, KCP, smux and the session table: nothing
/// allocates in steady state.
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
    /// Dropped before any session saw them.
    dropped: u64,
    /// Refused by the session's KCP.
    refused: u64,
    forged_una: u64,
}

/// Feeds `count` bad datagrams derived from `real` (or random) into `ep`, as if from
/// `from`, checking each outcome: one that must be refused is dropped before the
/// session or refused by its KCP, and counted exactly once either way.
fn inject(
    ep: &mut Endpoint<u32>,
    now: u32,
    from: u32,
    real: &[u8],
    rng: &mut Xoshiro256PlusPlus,
    count: usize,
    tally: &mut Injected,
) {
    let conv = kcp(ep).conv();
    let mut buf = [0u8; 1600];
    for _ in 0..count {
        tally.total += 1;
        let kind = rng.gen_range(0..8);
        let random = kind == 0 || real.len() < HEADER_LEN;
        let n = if random { rng.gen_range(0..1600) } else { real.len() };
        let refused_before = kcp_in_errors(ep);
        // Where a datagram must be refused: `Some(Some(why))` before the session for
        // that reason, `Some(None)` by the session's KCP, `None` either (random bytes
        // and cuts).
        let refuse = |ep: &mut Endpoint<u32>, d: &mut [u8], tally: &mut Injected, at: Option<Option<DropReason>>| match (
            ep.handle_datagram(now, &from, d),
            at,
        ) {
            (Outcome::Dropped(why), None | Some(Some(_))) => {
                assert!(at.is_none() || at == Some(Some(why)), "kind {kind}: dropped for {why:?}, not {at:?}");
                tally.dropped += 1;
            }
            (Outcome::Delivered, None | Some(None)) => {
                assert_eq!(kcp_in_errors(ep), refused_before + 1, "kind {kind}: refused as KCP");
                tally.refused += 1;
            }
            (other, _) => panic!("kind {kind}: a forged datagram did {other:?}, expected {at:?}"),
        };
        if random {
            // Random bytes: too short, or another conversation, never with sn 0 (a
            // new conversation with sn 0 is the peer restarting, which replaces the
            // session).
            rng.fill(&mut buf[..n]);
            if n >= 4 && u32::from_le_bytes(buf[..4].try_into().unwrap()) == conv {
                buf[0] ^= 1;
            }
            if n >= 16 {
                buf[12] |= 1;
            }
            // Nor bytes 4–5 an FEC type field (0xF1–0xF3 with frg 0), which a
            // session hands to its FEC decoder.
            if n >= 6 {
                buf[5] |= 1;
            }
            refuse(ep, &mut buf[..n], tally, None);
            continue;
        }
        let d = &mut buf[..n];
        d.copy_from_slice(real);
        let mut h = Header::decode(d).unwrap();
        match kind {
            1 => {
                // Truncated inside the first segment.
                let cut = rng.gen_range(0..(HEADER_LEN + h.len as usize).min(n));
                refuse(ep, &mut d[..cut], tally, None);
                continue;
            }
            2 => {
                h.conv ^= rng.gen_range(1..=u32::MAX);
                h.sn |= 1;
            }
            3 => {
                // Not a KCP command, nor (with frg 0) one of the FEC type fields
                // 0xF1–0xF3, which a session reads as FEC.
                h.cmd = loop {
                    let c: u8 = rng.gen();
                    if !(81..=84).contains(&c) && !(0xF1..=0xF3).contains(&c) {
                        break c;
                    }
                };
            }
            4 => h.len = rng.gen_range(h.len + (n - HEADER_LEN - h.len as usize) as u32 + 1..=u32::MAX),
            5 => h.wnd = rng.gen_range(0x8000..=0xffff),
            6 => h.sn = h.sn.wrapping_add(rng.gen_range(0x0100_0000..0x8000_0000)),
            _ => {
                h.una = h.una.wrapping_add(rng.gen_range(0x0100_0000..0x8000_0000));
                tally.forged_una += 1;
            }
        }
        h.encode(d);
        if kind == 2 {
            refuse(ep, d, tally, Some(Some(DropReason::ConvMismatch)));
        } else if kind <= 4 {
            refuse(ep, d, tally, Some(None));
        } else {
            assert_eq!(ep.handle_datagram(now, &from, d), Outcome::Delivered, "kind {kind}");
        }
    }
}

/// A transfer in which, for every real datagram an endpoint receives, it is fed
/// bad ones too.
struct Attacked {
    inner: TransferApp,
    rng: [Xoshiro256PlusPlus; 2],
    per_datagram: usize,
    tally: [Injected; 2],
    peak_rcv_buf: [usize; 2],
}

impl App for Attacked {
    fn on_event(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, event: Event<u32>) {
        self.inner.on_event(side, now, ep, event);
    }

    fn deliver(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, from: u32, datagram: &mut [u8]) {
        let i = side as usize;
        if !ep.is_empty() {
            inject(ep, now, from, datagram, &mut self.rng[i], self.per_datagram, &mut self.tally[i]);
        }
        ep.handle_datagram(now, &from, datagram);
        // The server's session counts once its peer proved its address.
        if let Some((_, _, session)) = ep.sessions().next() {
            self.peak_rcv_buf[i] = self.peak_rcv_buf[i].max(session.connection().kcp().state().rcv_buf);
        }
    }

    fn next_wakeup_us(&self, now_us: u64) -> Option<u64> {
        self.inner.next_wakeup_us(now_us)
    }

    fn on_step(&mut self, side: Side, now: u32, now_us: u64, ep: &mut Endpoint<u32>) {
        self.inner.on_step(side, now, now_us, ep);
    }
}

#[test]
fn a_million_bad_datagrams_mid_transfer_are_dropped_and_counted() {
    let total = 4u64 << 20;
    let layers = Layers::bare(Mode::Fast2);
    let mut pair = Pair::with_links(&layers, Link::new(lossy_link(), 3), Link::new(lossy_link(), 4), 3, u32::MAX - 500);
    let mut app = Attacked {
        inner: TransferApp::both_ways(total),
        rng: [Xoshiro256PlusPlus::seed_from_u64(11), Xoshiro256PlusPlus::seed_from_u64(12)],
        per_datagram: 120,
        tally: Default::default(),
        peak_rcv_buf: [0; 2],
    };
    let live_before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live_before));
    let finished = pair.run(&mut app, 600_000, |_, app| app.inner.done());
    let peak = PEAK.with(Cell::get) - live_before;
    assert!(finished, "transfer finished under attack");
    for t in [&app.inner.client, &app.inner.server] {
        assert_eq!(t.first_mismatch, None, "byte-exact under attack");
        assert_eq!(t.received, total);
    }
    let injected = app.tally[0].total + app.tally[1].total;
    println!("{injected} bad datagrams injected, peak heap growth {} KiB: {:?}", peak / 1024, app.tally);
    assert!(injected >= 1_000_000, "only {injected} injected");
    for (side, ep, role) in [(Side::Client, &pair.client, Role::Client), (Side::Server, &pair.server, Role::Server)] {
        let (tally, stats) = (&app.tally[side as usize], kcp(ep).stats());
        assert_eq!(ep.len(), 1, "{side:?}: forged traffic opened or replaced no session");
        assert_eq!(kcp_in_errors(ep), tally.refused, "{side:?}: every datagram refused as KCP is counted");
        let l = ep.listener_stats();
        let dropped = l[DropReason::TooShort]
            + l[DropReason::Checksum]
            + l[DropReason::Runt]
            + l[DropReason::NoConv]
            + l[DropReason::Malformed]
            + l[DropReason::ConvMismatch]
            + l[DropReason::BacklogFull]
            + l[DropReason::Closed]
            + l[DropReason::NotAccepting];
        assert_eq!(dropped, tally.dropped, "{side:?}: every datagram dropped before the session is counted: {l:?}");
        assert_eq!(stats.forged_una, tally.forged_una, "{side:?}: every forged una is counted");
        let window = layers.config(role).session.kcp.rcv_wnd as usize;
        assert!(app.peak_rcv_buf[side as usize] <= window, "{side:?}: receive buffer stays within the window");
    }
    // Two 4 MiB transfers are generated and verified on the fly; the simulator holds
    // at most a window of datagrams per link. 32 MiB is far above what honest traffic
    // needs and far below what a per-bad-datagram leak of a million would cost.
    assert!(peak < 32 << 20, "heap grew by {peak} bytes");
}
