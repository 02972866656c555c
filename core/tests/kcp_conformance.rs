//! docs/protocol.md §12, statements 1–28: the KCP header and ARQ. Each test carries the
//! number of the statement it checks.

use kcpgate_core::kcp::{Command, Compat, Config, Header, Kcp, SegmentError, Segments, HEADER_LEN};

const CONV: u32 = 0x1122_3344;
const PUSH: u8 = Command::Push as u8;
const ACK: u8 = Command::Ack as u8;
const WASK: u8 = Command::WindowAsk as u8;
const WINS: u8 = Command::WindowTell as u8;

fn header(cmd: u8, sn: u32, ts: u32, una: u32, wnd: u16) -> Header {
    Header { conv: CONV, cmd, frg: 0, wnd, ts, sn, una, len: 0 }
}

/// One encoded segment.
fn seg(mut h: Header, data: &[u8]) -> Vec<u8> {
    h.len = data.len() as u32;
    let mut out = vec![0; HEADER_LEN + data.len()];
    h.encode(&mut out);
    out[HEADER_LEN..].copy_from_slice(data);
    out
}

fn push(sn: u32, data: &[u8]) -> Vec<u8> {
    seg(header(PUSH, sn, 1000 + sn, 0, 128), data)
}

fn ack(sn: u32, ts: u32, una: u32) -> Vec<u8> {
    seg(header(ACK, sn, ts, una, 128), &[])
}

fn cfg() -> Config {
    Config { no_cwnd: true, snd_wnd: 128, rcv_wnd: 128, ..Config::default() }
}

/// Takes every queued datagram out of `kcp`.
fn drain(kcp: &mut Kcp) -> Vec<Vec<u8>> {
    let q = kcp.transmits();
    let out = q.iter().map(<[u8]>::to_vec).collect();
    q.clear();
    out
}

/// Headers of every segment in every queued datagram, in order.
fn sent(kcp: &mut Kcp) -> Vec<(Header, Vec<u8>)> {
    drain(kcp)
        .iter()
        .flat_map(|d| Segments::new(d).map(|r| r.map(|(h, p)| (h, p.to_vec())).unwrap()).collect::<Vec<_>>())
        .collect()
}

fn cmds(segs: &[(Header, Vec<u8>)]) -> Vec<(u8, u32)> {
    segs.iter().map(|(h, _)| (h.cmd, h.sn)).collect()
}

fn read_all(kcp: &mut Kcp) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = kcp.read(&mut buf);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// A connection with `n` one-byte segments in flight, sent at `now`.
fn sender_with_inflight(cfg: Config, n: u32, now: u32) -> Kcp {
    let mut k = Kcp::new(CONV, cfg);
    for i in 0..n {
        k.send(&[i as u8]).unwrap();
    }
    k.flush(now);
    assert_eq!(cmds(&sent(&mut k)).len(), n as usize);
    k
}

#[test]
fn conformance_01_header_is_24_bytes_little_endian() {
    let h = Header {
        conv: 0x0403_0201,
        cmd: 81,
        frg: 5,
        wnd: 0x0706,
        ts: 0x0b0a_0908,
        sn: 0x0f0e_0d0c,
        una: 0x1312_1110,
        len: 3,
    };
    let mut b = [0u8; HEADER_LEN];
    h.encode(&mut b);
    assert_eq!(b, [1, 2, 3, 4, 81, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 3, 0, 0, 0],);
    assert_eq!(Header::decode(&b), Some(h));

    let mut k = Kcp::new(CONV, cfg());
    k.send(b"abc").unwrap();
    k.flush(0);
    let d = drain(&mut k);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].len(), HEADER_LEN + 3, "header plus exactly len payload bytes");
    assert_eq!(&d[0][20..24], &3u32.to_le_bytes());
    assert_eq!(&d[0][HEADER_LEN..], b"abc");
}

#[test]
fn conformance_02_command_values_and_unknown_command_stops_input() {
    assert_eq!([PUSH, ACK, WASK, WINS], [81, 82, 83, 84]);
    let mut k = Kcp::new(CONV, cfg());
    let bogus = seg(header(99, 0, 0, 0, 128), &[]);
    let d = [push(0, b"a"), bogus, push(1, b"b")].concat();
    assert_eq!(k.input(0, &d, true), Err(SegmentError::UnknownCommand));
    assert_eq!(k.stats().in_errors, 1);
    assert_eq!(read_all(&mut k), b"a", "the segment before the bad one counts, the one after is ignored");
}

#[test]
fn conformance_03_foreign_conv_rejects_datagram_or_stops_parsing() {
    let mut k = Kcp::new(CONV, cfg());
    let mut foreign = push(0, b"x");
    foreign[0] ^= 0xff;
    assert_eq!(k.input(0, &foreign, true), Err(SegmentError::ConvMismatch));
    assert_eq!(k.stats().in_errors, 1);
    assert!(read_all(&mut k).is_empty());

    let mut later_foreign = push(1, b"z");
    later_foreign[0] ^= 0xff;
    let d = [push(0, b"y"), later_foreign].concat();
    assert_eq!(k.input(0, &d, true), Err(SegmentError::ConvMismatch));
    assert_eq!(k.stats().in_errors, 2);
    assert_eq!(read_all(&mut k), b"y");
}

#[test]
fn conformance_04_short_datagram_and_overlong_len() {
    let mut k = Kcp::new(CONV, cfg());
    assert_eq!(k.input(0, &push(0, b"")[..23], true), Err(SegmentError::TooShort));
    let mut d = push(0, b"abcd");
    d.truncate(HEADER_LEN + 3);
    assert_eq!(k.input(0, &d, true), Err(SegmentError::Truncated));
    assert_eq!(k.stats().in_errors, 2);
    assert!(read_all(&mut k).is_empty());
}

#[test]
fn conformance_05_concatenated_segments_and_trailing_bytes() {
    let mut k = Kcp::new(CONV, cfg());
    let d = [push(0, b"one"), push(1, b"two"), push(2, b"three"), vec![0xee; 23]].concat();
    assert_eq!(k.input(0, &d, true), Ok(()));
    assert_eq!(k.stats().in_segs, 3);
    assert_eq!(read_all(&mut k), b"onetwothree");
}

#[test]
fn conformance_06_ack_echoes_sn_and_ts() {
    let mut k = Kcp::new(CONV, cfg());
    k.input(0, &seg(header(PUSH, 0, 0xdead_beef, 0, 128), b"p"), true).unwrap();
    k.flush(5);
    let s = sent(&mut k);
    assert_eq!(s.len(), 1);
    let (h, payload) = &s[0];
    assert_eq!((h.cmd, h.sn, h.ts, h.frg, h.len), (ACK, 0, 0xdead_beef, 0, 0));
    assert!(payload.is_empty());
}

#[test]
fn conformance_07_una_and_wnd_sampled_at_flush_start() {
    let mut k = Kcp::new(CONV, Config { rcv_wnd: 8, ..cfg() });
    let d = [push(0, b"a"), push(1, b"b"), push(2, b"c")].concat();
    k.input(0, &d, true).unwrap();
    k.send(b"data").unwrap();
    k.flush(1);
    let s = sent(&mut k);
    assert_eq!(cmds(&s), vec![(ACK, 2), (PUSH, 0)]);
    for (h, _) in &s {
        assert_eq!((h.una, h.wnd), (3, 5), "una = rcv_nxt, wnd = rcv_wnd − rcv_queue");
    }
    assert_eq!(read_all(&mut k), b"abc");
    k.send(b"more").unwrap();
    k.flush(2);
    assert!(sent(&mut k).iter().all(|(h, _)| h.wnd == 8), "reading frees the window");
}

#[test]
fn conformance_08_full_flush_order_and_mtu_bound() {
    let mut k = sender_with_inflight(cfg(), 3, 0);
    // The peer closes its window; the first flush that sees it arms the probe timer.
    k.input(10, &seg(header(WINS, 0, 0, 0, 0), &[]), true).unwrap();
    k.flush(20);
    assert!(sent(&mut k).is_empty());
    // At 600 an ACK is owed, a window report is owed, the probe is due and every
    // segment's RTO (200 ms) has passed.
    let d = [seg(header(PUSH, 0, 600, 0, 0), b"x"), seg(header(WASK, 0, 0, 0, 0), &[])].concat();
    k.input(600, &d, true).unwrap();
    k.flush(600);
    let d = drain(&mut k);
    assert_eq!(d.len(), 1);
    let order: Vec<_> = Segments::new(&d[0]).map(|r| r.unwrap().0).map(|h| (h.cmd, h.sn)).collect();
    assert_eq!(order, vec![(ACK, 0), (WASK, 0), (WINS, 0), (PUSH, 0), (PUSH, 1), (PUSH, 2)]);

    let mut k = Kcp::new(CONV, Config { mtu: 200, ..cfg() });
    for _ in 0..20 {
        k.send(&[7u8; 150]).unwrap();
    }
    for sn in 0..40 {
        k.input(0, &push(sn, &[1; 3]), true).unwrap();
    }
    k.flush(0);
    let d = drain(&mut k);
    assert!(d.len() > 20);
    assert!(d.iter().all(|d| d.len() <= 200), "no datagram exceeds the KCP mtu");
}

#[test]
fn conformance_09_acks_below_rcv_nxt_omitted_unless_last() {
    let mut k = Kcp::new(CONV, cfg());
    let d = [push(0, b"a"), push(0, b"a"), push(1, b"b")].concat();
    k.input(0, &d, true).unwrap();
    k.flush(1);
    assert_eq!(cmds(&sent(&mut k)), vec![(ACK, 1)], "all three are below rcv_nxt = 2; only the last stays");

    let mut k = Kcp::new(CONV, cfg());
    let d = [push(0, b"a"), push(5, b"f"), push(0, b"a")].concat();
    k.input(0, &d, true).unwrap();
    k.flush(1);
    assert_eq!(cmds(&sent(&mut k)), vec![(ACK, 5), (ACK, 0)], "sn 5 ≥ rcv_nxt stays, the first sn 0 goes");
}

#[test]
fn conformance_10_pushes_outside_the_window() {
    let mut k = Kcp::new(CONV, Config { rcv_wnd: 4, ..cfg() });
    k.input(0, &push(4, b"beyond"), true).unwrap();
    k.flush(1);
    assert!(sent(&mut k).is_empty(), "sn = rcv_nxt + rcv_wnd is not acknowledged");
    assert_eq!(k.stats().repeat_segs, 1);
    assert_eq!(k.state().rcv_buf, 0, "nor stored");

    k.input(2, &push(0, b"a"), true).unwrap();
    k.input(3, &push(0, b"a"), true).unwrap();
    k.flush(4);
    assert_eq!(cmds(&sent(&mut k)), vec![(ACK, 0)], "the old segment is acknowledged (as the last entry)");
    assert_eq!(k.stats().repeat_segs, 2);
    assert_eq!(read_all(&mut k), b"a", "but not stored twice");

    k.input(5, &push(0, b"a"), false).unwrap();
    k.input(5, &push(9, b"z"), false).unwrap();
    assert_eq!(k.stats().repeat_segs, 2, "FEC-recovered datagrams are not counted");
}

#[test]
fn conformance_11_una_releases_send_buffer() {
    let mut k = sender_with_inflight(cfg(), 5, 0);
    k.input(10, &seg(header(WINS, 0, 0, 3, 128), &[]), true).unwrap();
    let st = k.state();
    assert_eq!((st.snd_una, st.snd_buf), (3, 2));
    // A una beyond anything sent can only be forged: ignored, counted.
    k.input(11, &seg(header(WINS, 0, 0, 1000, 128), &[]), true).unwrap();
    assert_eq!((k.state().snd_una, k.state().snd_buf), (3, 2));
    assert_eq!(k.stats().forged_una, 1);
}

#[test]
fn conformance_12_first_rtt_sample() {
    for (nodelay, interval, rtt, srtt, rttvar, rto) in [
        (false, 100, 80, 80, 40, 240),            // 80 + max(100, 160)
        (false, 100, 20, 20, 10, 120),            // 20 + max(100, 40)
        (true, 10, 4, 4, 2, 30),                  // 4 + max(10, 8) = 14, clamped to minrto 30
        (false, 100, 31000, 31000, 15500, 60000), // clamped to 60 s
    ] {
        let mut k = sender_with_inflight(Config { nodelay, interval, ..cfg() }, 1, 1000);
        k.input(1000 + rtt, &ack(0, 1000, 1), true).unwrap();
        let st = k.state();
        assert_eq!((st.srtt, st.rttvar, st.rto), (srtt, rttvar, rto), "sample {rtt}");
    }
}

#[test]
fn conformance_13_later_samples_use_shift_arithmetic() {
    let mut k = sender_with_inflight(cfg(), 8, 0);
    let mut now = 1000;
    let mut sample = |k: &mut Kcp, sn: u32, rtt: u32| {
        now += 1;
        k.input(now, &ack(sn, now - rtt, 0), true).unwrap();
        let st = k.state();
        (st.srtt, st.rttvar, st.rto)
    };
    assert_eq!(sample(&mut k, 0, 80), (80, 40, 240));
    // δ = 20: srtt 80 + 2; 100 ≥ 82 − 40, so rttvar += (20 − 40) >> 2 = −5.
    assert_eq!(sample(&mut k, 1, 100), (82, 35, 222));
    // δ = −72: srtt += −9 → 73; 10 < 73 − 35, so the 1/32 weight: rttvar += 37 >> 5 = 1.
    assert_eq!(sample(&mut k, 2, 10), (73, 36, 217));
    // δ = −23: −23 >> 3 is −3 (arithmetic shift, not −2); 50 < 70 − 36 is false: (23 − 36) >> 2 = −4.
    assert_eq!(sample(&mut k, 3, 50), (70, 32, 198));
}

#[test]
fn conformance_14_one_rtt_sample_per_datagram_from_its_last_ack() {
    let mut k = sender_with_inflight(cfg(), 2, 0);
    let d = [ack(0, 1000 - 80, 0), ack(1, 1000 - 20, 0)].concat();
    k.input(1000, &d, true).unwrap();
    assert_eq!((k.state().srtt, k.state().rttvar), (20, 10), "only the last ACK counts");

    let mut k = sender_with_inflight(cfg(), 1, 0);
    k.input(1000, &ack(0, 900, 1), false).unwrap();
    assert_eq!((k.state().srtt, k.state().rto), (0, 200), "FEC-recovered datagrams give no sample");
}

/// kcpgate's one departure from docs/protocol.md §2.2: an ACK repeated for a segment already
/// acknowledged (FEC recovering the first transmission of a segment whose
/// retransmission got through) echoes a stale send time and is not a sample.
#[test]
fn an_ack_of_a_segment_already_acknowledged_gives_no_rtt_sample() {
    let mut k = sender_with_inflight(cfg(), 3, 0);
    k.input(1000, &ack(0, 1000 - 40, 1), true).unwrap();
    assert_eq!((k.state().srtt, k.state().rto), (40, 140), "the first ACK of sn 0 is a sample");
    // sn 0 again, below una now: its echo is 300 ms old.
    k.input(1260, &ack(0, 1260 - 300, 1), true).unwrap();
    assert_eq!((k.state().srtt, k.state().rto), (40, 140), "a repeated ACK below una");
    // sn 2 acknowledged out of order, then again while sn 1 still holds una back.
    k.input(1300, &ack(2, 1300 - 40, 1), true).unwrap();
    let before = (k.state().srtt, k.state().rttvar, k.state().rto);
    k.input(1600, &ack(2, 1300 - 40, 1), true).unwrap();
    assert_eq!((k.state().srtt, k.state().rttvar, k.state().rto), before, "a repeated selective ACK");
    // In one datagram, a stale ACK after a fresh one does not replace the fresh sample.
    k.input(1650, &[ack(1, 1650 - 44, 1), ack(0, 100, 3)].concat(), true).unwrap();
    assert_eq!(k.state().snd_una, 3);
    assert!(k.state().rto < 150, "sampled from sn 1's 44 ms, not sn 0's stale echo: {:?}", k.state());
}

#[test]
fn conformance_15_min_rto_and_interval_clamp() {
    assert_eq!(Kcp::new(CONV, Config { nodelay: true, ..cfg() }).state().min_rto, 30);
    assert_eq!(Kcp::new(CONV, Config { nodelay: false, ..cfg() }).state().min_rto, 100);
    assert_eq!(Kcp::new(CONV, Config { interval: 1, ..cfg() }).config().interval, 10);
    assert_eq!(Kcp::new(CONV, Config { interval: 99_999, ..cfg() }).config().interval, 5000);
    let mut k = Kcp::new(CONV, cfg());
    k.set_nodelay(Some(true), Some(3), None, None);
    assert_eq!((k.state().min_rto, k.config().interval), (30, 10));
    k.set_nodelay(Some(false), Some(6000), None, None);
    assert_eq!((k.state().min_rto, k.config().interval), (100, 5000));
}

/// Times at which segment 0, first sent at 0, is transmitted again.
fn retransmission_times(nodelay: bool, until: u32) -> Vec<u32> {
    let mut k = sender_with_inflight(Config { nodelay, interval: 10, ..cfg() }, 1, 0);
    (1..=until)
        .filter(|&t| {
            k.flush(t);
            !sent(&mut k).is_empty()
        })
        .collect()
}

#[test]
fn conformance_16_rto_deadlines_and_backoff() {
    // rx_rto is 200 before any sample. nodelay = 0: rto 200 → 400 → 600 …
    assert_eq!(retransmission_times(false, 1300), vec![200, 600, 1200]);
    // nodelay ≠ 0: each timeout adds rx_rto / 2: rto 200 → 300 → 400 …
    assert_eq!(retransmission_times(true, 1300), vec![200, 500, 900]);
}

fn fast_setup(compat: Compat) -> Kcp {
    sender_with_inflight(Config { fast_resend: 2, compat, ..cfg() }, 4, 0)
}

/// Fast-retransmits sn 0, then sends two new segments and acknowledges both; returns
/// how often sn 0 went out again.
fn fast_retransmissions_of_sn0(compat: Compat) -> usize {
    let mut k = fast_setup(compat);
    let count = |k: &mut Kcp| cmds(&sent(k)).iter().filter(|c| **c == (PUSH, 0)).count();
    k.input(10, &ack(1, 0, 0), true).unwrap();
    let mut resent = count(&mut k);
    k.input(11, &ack(2, 0, 0), true).unwrap();
    resent += count(&mut k);
    k.flush(12);
    resent += count(&mut k);
    assert_eq!(resent, 1, "two ACKs for later segments resend sn 0");
    k.send(b"n").unwrap();
    k.send(b"m").unwrap();
    k.flush(13);
    sent(&mut k);
    // Both new segments left after sn 0's retransmission, so their ACKs count for it.
    k.input(14, &ack(4, 13, 0), true).unwrap();
    resent += count(&mut k);
    k.input(15, &ack(5, 13, 0), true).unwrap();
    resent += count(&mut k);
    k.flush(16);
    resent + count(&mut k)
}

#[test]
fn conformance_17_fast_retransmit_once_per_rto_latest() {
    let mut k = fast_setup(Compat::Latest);
    k.input(10, &ack(1, 0, 0), true).unwrap();
    assert!(sent(&mut k).is_empty(), "one later ACK is not enough");
    k.input(11, &ack(2, 0, 0), true).unwrap();
    assert_eq!(cmds(&sent(&mut k)), vec![(PUSH, 0)], "the second later ACK triggers a flush that resends sn 0");
    assert_eq!(k.stats().fast_retrans_segs, 1);

    assert_eq!(fast_retransmissions_of_sn0(Compat::Latest), 1, "not again before its RTO");
}

#[test]
fn conformance_17_fast_retransmit_repeats_in_kcp_go_5_6_1() {
    let mut k = fast_setup(Compat::KcpGo561);
    k.input(10, &ack(1, 0, 0), true).unwrap();
    k.input(11, &ack(2, 0, 0), true).unwrap();
    assert!(sent(&mut k).is_empty(), "5.6.1 does not flush on the fast-ack threshold");
    assert_eq!(fast_retransmissions_of_sn0(Compat::KcpGo561), 2, "5.6.1 resends it again before its RTO");
}

#[test]
fn conformance_18_early_retransmit_when_no_new_segments() {
    let mut k = fast_setup(Compat::Latest);
    k.input(10, &ack(1, 0, 0), true).unwrap();
    k.flush(20);
    assert_eq!(cmds(&sent(&mut k)), vec![(PUSH, 0)]);
    assert_eq!(k.stats().early_retrans_segs, 1);

    let mut k = fast_setup(Compat::Latest);
    k.input(10, &ack(1, 0, 0), true).unwrap();
    k.send(b"new").unwrap();
    k.flush(20);
    assert_eq!(cmds(&sent(&mut k)), vec![(PUSH, 4)], "a new segment entered the window: no early retransmit");
}

#[test]
fn conformance_19_send_window_with_and_without_cwnd() {
    let mut k = Kcp::new(CONV, Config { snd_wnd: 10, no_cwnd: true, ..cfg() });
    k.input(0, &seg(header(WINS, 0, 0, 0, 4), &[]), true).unwrap();
    for _ in 0..8 {
        k.send(b"s").unwrap();
    }
    k.flush(1);
    assert_eq!(sent(&mut k).len(), 4, "min(snd_wnd 10, rmt_wnd 4)");

    let mut k = Kcp::new(CONV, Config { snd_wnd: 10, no_cwnd: false, ..cfg() });
    for _ in 0..8 {
        k.send(b"s").unwrap();
    }
    assert_eq!(k.state().cwnd, 0);
    k.flush(1);
    assert!(sent(&mut k).is_empty(), "cwnd starts at 0");
    assert_eq!(k.state().cwnd, 1);
    k.flush(2);
    assert_eq!(cmds(&sent(&mut k)), vec![(PUSH, 0)]);
}

#[test]
fn conformance_20_cwnd_after_fast_retransmit_and_timeout() {
    let mut k = Kcp::new(CONV, Config { snd_wnd: 64, no_cwnd: false, fast_resend: 2, ..cfg() });
    for _ in 0..64 {
        k.send(b"c").unwrap();
    }
    // Grow the window by acknowledging everything in flight, round after round.
    let mut now = 0;
    k.flush(now);
    while k.state().snd_buf < 6 {
        now += 10;
        let una = k.state().snd_nxt;
        k.input(now, &seg(header(WINS, 0, 0, una, 128), &[]), true).unwrap();
        k.flush(now);
        sent(&mut k);
    }
    let st = k.state();
    let inflight = st.snd_nxt - st.snd_una;
    now += 1;
    k.input(now, &ack(st.snd_una + 1, now, st.snd_una), true).unwrap();
    k.input(now, &ack(st.snd_una + 2, now, st.snd_una), true).unwrap();
    assert_eq!(k.stats().fast_retrans_segs, 1);
    let ssthresh = (inflight / 2).max(2);
    assert_eq!((k.state().ssthresh, k.state().cwnd), (ssthresh, ssthresh + 2));

    let cwnd_eff = k.state().cwnd.min(64).min(128);
    k.flush(now + 1000);
    assert!(k.stats().lost_segs > 0);
    assert_eq!((k.state().ssthresh, k.state().cwnd), ((cwnd_eff / 2).max(2), 1));
}

fn probe_times(compat: Compat, until: u32) -> Vec<u32> {
    let mut k = Kcp::new(CONV, Config { compat, ..cfg() });
    k.input(0, &seg(header(WINS, 0, 0, 0, 0), &[]), true).unwrap();
    let mut times = Vec::new();
    let mut t = 100;
    while t <= until {
        k.flush(t);
        if cmds(&sent(&mut k)).contains(&(WASK, 0)) {
            times.push(t);
        }
        t += 1;
    }
    times
}

#[test]
fn conformance_21_zero_window_probe_schedule() {
    // Zero window first seen by the flush at 100: probes at +500, then ×1.5.
    assert_eq!(probe_times(Compat::Latest, 4000), vec![600, 1350, 2475]);
    assert_eq!(probe_times(Compat::KcpGo561, 20_000), vec![7100, 17600]);
    // The back-off stops at 120 s.
    let mut k = Kcp::new(CONV, cfg());
    k.input(0, &seg(header(WINS, 0, 0, 0, 0), &[]), true).unwrap();
    let mut t = 0u32;
    for _ in 0..40 {
        k.flush(t);
        t = t.wrapping_add(k.state().probe_wait.max(1));
    }
    assert_eq!(k.state().probe_wait, 120_000);
}

#[test]
fn conformance_22_wask_is_answered_by_wins() {
    let mut k = Kcp::new(CONV, cfg());
    k.input(0, &seg(header(WASK, 0, 0, 0, 128), &[]), true).unwrap();
    assert!(k.poll_timeout().is_some(), "an owed answer arms the timer");
    k.flush(1);
    let s = sent(&mut k);
    assert_eq!(cmds(&s), vec![(WINS, 0)]);
    assert_eq!(s[0].0.wnd, 128);
}

#[test]
fn conformance_23_rmt_wnd_only_from_network_datagrams() {
    let mut k = Kcp::new(CONV, cfg());
    k.input(0, &seg(header(WINS, 0, 0, 0, 7), &[]), false).unwrap();
    assert_eq!(k.state().rmt_wnd, 32);
    k.input(0, &seg(header(WINS, 0, 0, 0, 7), &[]), true).unwrap();
    assert_eq!(k.state().rmt_wnd, 7);
}

#[test]
fn conformance_24_ack_nodelay_answers_at_once() {
    let mut k = Kcp::new(CONV, Config { ack_nodelay: true, ..cfg() });
    k.input(0, &push(0, b"a"), true).unwrap();
    assert_eq!(cmds(&sent(&mut k)), vec![(ACK, 0)]);
    let mut k = Kcp::new(CONV, Config { ack_nodelay: false, ..cfg() });
    k.input(0, &push(0, b"a"), true).unwrap();
    assert!(sent(&mut k).is_empty(), "without ackNoDelay the ACK waits for the timer");
}

fn acks_after_burst(compat: Compat, pushes: u32) -> usize {
    let mut k = Kcp::new(CONV, Config { compat, rcv_wnd: 256, ..cfg() });
    let d: Vec<u8> = (0..pushes).flat_map(|sn| push(sn, b"x")).collect();
    k.input(0, &d, true).unwrap();
    sent(&mut k).len()
}

#[test]
fn conformance_25_ack_clocking_at_mtu_over_24_pending_acks() {
    // mtu 1400 / 24 = 58 ACKs.
    assert_eq!(acks_after_burst(Compat::Latest, 57), 0);
    assert!(acks_after_burst(Compat::Latest, 58) >= 1);
    assert_eq!(acks_after_burst(Compat::KcpGo561, 58), 0, "kcp-go 5.6.1 has no ACK clocking");
}

#[test]
fn conformance_26_stream_mode_sends_frg_0_and_messages_reassemble() {
    let mut k = Kcp::new(CONV, Config { stream: true, ..cfg() });
    k.send(&[3u8; 5000]).unwrap();
    k.flush(0);
    let s = sent(&mut k);
    assert_eq!(s.len(), 4);
    assert!(s.iter().all(|(h, _)| h.frg == 0));

    let mut k = Kcp::new(CONV, cfg());
    let frag = |sn: u32, frg: u8, data: &[u8]| seg(Header { frg, ..header(PUSH, sn, 0, 0, 128) }, data);
    k.input(0, &frag(2, 0, b"ccc"), true).unwrap();
    k.input(0, &frag(0, 2, b"aa"), true).unwrap();
    assert_eq!(k.peek_size(), None, "incomplete message");
    k.input(0, &frag(1, 1, b"b"), true).unwrap();
    assert_eq!(k.peek_size(), Some(6));
    let mut buf = [0u8; 5];
    assert!(k.recv(&mut buf).is_err(), "buffer too small for the whole message");
    let mut buf = [0u8; 16];
    assert_eq!(k.recv(&mut buf), Ok(6));
    assert_eq!(&buf[..6], b"aabccc");
}

#[test]
fn conformance_27_stream_mode_merges_small_writes() {
    let mut k = Kcp::new(CONV, Config { stream: true, ..cfg() });
    k.send(b"ab").unwrap();
    k.send(b"cd").unwrap();
    k.flush(0);
    let s = sent(&mut k);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].1, b"abcd");

    let mut k = Kcp::new(CONV, Config { stream: false, ..cfg() });
    k.send(b"ab").unwrap();
    k.send(b"cd").unwrap();
    k.flush(0);
    assert_eq!(sent(&mut k).len(), 2, "message mode keeps messages apart");
}

#[test]
fn conformance_28_mss_from_session_mtu_and_lower_headers() {
    // (crypto header + FEC header, AEAD tag) → mss, for kcptun's MTU 1350 (docs/protocol.md §2.4).
    for (room, tail, mss) in [(20 + 8, 0, 1298), (12 + 8, 16, 1290), (8, 0, 1318), (20, 0, 1306), (0, 0, 1326)] {
        let cfg = Config { stream: true, ..cfg() }.fit_session_mtu(1350, room, tail);
        let mut k = Kcp::new(CONV, cfg);
        assert_eq!(k.mss(), mss);
        k.send(&vec![9u8; 5 * mss + 1]).unwrap();
        k.flush(0);
        let q = k.transmits();
        assert_eq!(q.len(), 6);
        for d in q.iter() {
            assert!(d.len() + tail <= 1350, "datagram with headers and tag fits the session MTU");
        }
        assert_eq!(q.get(0).len(), room + HEADER_LEN + mss, "a full segment fills it exactly");
    }
}

/// Not a checklist statement but the reason for `poll_timeout`: once everything is
/// delivered and acknowledged, neither side needs a timer, and work that resumes
/// falls back on the flush-interval grid.
#[test]
fn idle_connection_needs_no_timer() {
    let mut a = Kcp::new(CONV, Config { interval: 40, ..cfg() });
    let mut b = Kcp::new(CONV, Config { interval: 40, ..cfg() });
    assert_eq!((a.poll_timeout(), b.poll_timeout()), (None, None), "a fresh connection sleeps");
    a.send(b"ping").unwrap();
    a.flush(1000);
    assert_eq!(a.poll_timeout(), Some(1040), "in flight: next flush one interval later");
    for d in drain(&mut a) {
        b.input(1010, &d, true).unwrap();
    }
    assert_eq!(b.poll_timeout(), Some(1040), "an owed ACK wakes the timer on the interval grid");
    b.handle_timeout(1040);
    for d in drain(&mut b) {
        a.input(1050, &d, true).unwrap();
    }
    assert_eq!(read_all(&mut b), b"ping");
    a.handle_timeout(1080);
    b.handle_timeout(1080);
    assert_eq!((a.poll_timeout(), b.poll_timeout()), (None, None), "delivered and acknowledged: both sleep");
    // Hours later, a new send is flushed by the caller; the timer resumes on the grid.
    a.send(b"again").unwrap();
    a.flush(1080 + 3_600_013);
    assert_eq!(a.poll_timeout(), Some(1080 + 3_600_040));

    // A send without a flush (write-delay) goes out at the next grid tick.
    let late = 1080 + 3_600_000 + 7_000_005;
    b.send(b"delayed").unwrap();
    let due = b.poll_timeout().expect("queued data needs the timer");
    assert!(kcpgate_core::kcp::diff(due, late) <= 0, "the stale deadline asks for a wake-up now");
    b.handle_timeout(late);
    assert!(drain(&mut b).is_empty(), "not before the tick");
    assert_eq!(b.poll_timeout(), Some(late + 35), "next tick of the 40 ms grid");
    b.handle_timeout(late + 35);
    assert_eq!(cmds(&sent(&mut b)), vec![(PUSH, 0)]);
}
