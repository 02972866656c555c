//! Bulk transfers through the simulated network, every kcptun mode preset against
//! every loss pattern: two endpoints with no crypto header, FEC or compression, so
//! what is measured is KCP (with smux framing) under loss.

mod support;

use kcpgate_core::kcp::Mode;
use support::netsim::{GilbertElliott, Link, LinkConfig};
use support::pair::{Layers, Pair, TransferApp};

const MB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Loss {
    Random(f64),
    Bursty,
}

fn link(loss: Loss) -> LinkConfig {
    let mut cfg = LinkConfig::ideal(20_000);
    cfg.duplicate = 0.01;
    cfg.reorder = 0.01;
    cfg.reorder_extra_us = 15_000;
    cfg.bandwidth_bps = Some(100_000_000);
    cfg.queue_bytes = 512 * 1024;
    match loss {
        Loss::Random(p) => cfg.loss = p,
        // Mean loss about 2.9 %, in bursts averaging 4 packets.
        Loss::Bursty => {
            cfg.bursty =
                Some(GilbertElliott { p_good_to_bad: 0.01, p_bad_to_good: 0.25, loss_good: 0.0, loss_bad: 0.75 })
        }
    }
    cfg
}

struct Outcome {
    elapsed_ms: u64,
    dropped: u64,
    retransmitted: u64,
}

fn bulk(mode: Mode, loss: Loss, seed: u64) -> Outcome {
    let total = 8 * MB;
    let mut pair = Pair::with_links(
        &Layers::bare(mode),
        Link::new(link(loss), seed),
        Link::new(link(loss), seed ^ 0xdead_beef),
        seed,
        // Start close to the u32 wrap so every run crosses it.
        u32::MAX - 1_000,
    );
    let mut app = TransferApp::both_ways(total);
    let finished = pair.run_transfers(&mut app, 600_000);
    assert!(finished, "{mode:?} {loss:?}: transfer did not finish in 600 s of simulated time");
    for (side, t) in [("client", &app.client), ("server", &app.server)] {
        assert_eq!(t.first_mismatch, None, "{mode:?} {loss:?}: {side} received a wrong byte");
        assert_eq!(t.received, total, "{mode:?} {loss:?}: {side} received a wrong amount");
    }
    let dropped = pair.c2s.stats.dropped() + pair.s2c.stats.dropped();
    let (c, s) = (pair.client.snmp(), pair.server.snmp());
    let retransmitted = c.retrans_segs + s.retrans_segs;
    println!(
        "{:<6} {:<14} {:>8} ms  dropped {:>6}  retransmitted {:>6}  fast {:>5} early {:>5} lost {:>6}  steps {}",
        mode.name(),
        format!("{loss:?}"),
        pair.elapsed_ms(),
        dropped,
        retransmitted,
        c.fast_retrans_segs + s.fast_retrans_segs,
        c.early_retrans_segs + s.early_retrans_segs,
        c.lost_segs + s.lost_segs,
        pair.wakeups,
    );
    Outcome { elapsed_ms: pair.elapsed_ms(), dropped, retransmitted }
}

/// Retransmissions allowed per dropped datagram, and a fixed allowance.
///
/// Every dropped PUSH costs one retransmission, and a dropped ACK datagram can cost
/// one per segment it acknowledged. On top, 1 % reordering (15 ms) triggers spurious
/// fast/early retransmits, and with kcptun's `nc = 1` the server's 1024-segment
/// burst fills the 512 KiB bottleneck queue, whose queueing delay makes some RTOs
/// expire early. Measured over the grid: at most 2.5 retransmissions per drop at 1 %
/// loss (fast2), 1.6–1.9 at 10–30 %, and up to ~650 spurious ones at 0 % loss
/// (fast3, minimum RTO 30 ms). A storm (resending whole windows per RTO, or fast
/// retransmit without its once-per-RTO limit) costs several times the drops.
const RETRANS_PER_DROP: u64 = 2;
const RETRANS_ALLOWANCE: u64 = 1_000;

macro_rules! grid {
    ($($name:ident: $mode:expr, $loss:expr, $max_ms:expr;)*) => {$(
        #[test]
        fn $name() {
            let o = bulk($mode, $loss, 7);
            assert!(
                o.retransmitted <= RETRANS_PER_DROP * o.dropped + RETRANS_ALLOWANCE,
                "retransmission storm: {} retransmitted for {} dropped", o.retransmitted, o.dropped
            );
            assert!(o.elapsed_ms <= $max_ms, "took {} ms of simulated time, bound {}", o.elapsed_ms, $max_ms);
        }
    )*};
}

// Completion bounds in simulated ms: about 1.5× the measured time. The client's
// send window (128 segments) over a ~80 ms RTT (40 ms of propagation plus the
// queueing of the reverse direction's bulk) limits each run to about 2 MB/s at 0 %
// loss (~4 s for 8 MiB); loss slows normal mode most (minimum RTO 100 ms, RTO
// doubling) and fast3 least.
grid! {
    bulk_normal_loss0: Mode::Normal, Loss::Random(0.0), 6_500;
    bulk_normal_loss1: Mode::Normal, Loss::Random(0.01), 8_500;
    bulk_normal_loss10: Mode::Normal, Loss::Random(0.10), 25_000;
    bulk_normal_loss30: Mode::Normal, Loss::Random(0.30), 67_000;
    bulk_normal_bursty: Mode::Normal, Loss::Bursty, 8_500;
    bulk_fast_loss0: Mode::Fast, Loss::Random(0.0), 6_500;
    bulk_fast_loss1: Mode::Fast, Loss::Random(0.01), 8_000;
    bulk_fast_loss10: Mode::Fast, Loss::Random(0.10), 20_000;
    bulk_fast_loss30: Mode::Fast, Loss::Random(0.30), 51_000;
    bulk_fast_bursty: Mode::Fast, Loss::Bursty, 8_500;
    bulk_fast2_loss0: Mode::Fast2, Loss::Random(0.0), 6_500;
    bulk_fast2_loss1: Mode::Fast2, Loss::Random(0.01), 8_000;
    bulk_fast2_loss10: Mode::Fast2, Loss::Random(0.10), 18_000;
    bulk_fast2_loss30: Mode::Fast2, Loss::Random(0.30), 37_000;
    bulk_fast2_bursty: Mode::Fast2, Loss::Bursty, 8_000;
    bulk_fast3_loss0: Mode::Fast3, Loss::Random(0.0), 6_000;
    bulk_fast3_loss1: Mode::Fast3, Loss::Random(0.01), 7_500;
    bulk_fast3_loss10: Mode::Fast3, Loss::Random(0.10), 19_000;
    bulk_fast3_loss30: Mode::Fast3, Loss::Random(0.30), 37_000;
    bulk_fast3_bursty: Mode::Fast3, Loss::Bursty, 7_500;
}

/// The whole grid as a table, compared with the committed
/// `core/tests/snapshots/netsim_grid.txt`: any change in how KCP behaves under loss
/// shows up as a diff a reviewer can read. After an intended change, regenerate it
/// with `KCPGATE_UPDATE_SNAPSHOTS=1 cargo test -p kcpgate-core --test netsim` and
/// commit the file with the change that explains it.
#[test]
fn the_mode_and_loss_grid_matches_its_snapshot() {
    let mut table = String::from(
        "# 8 MiB each way, 20 ms each way, 1 % duplication and reordering, 100 Mbit/s, seed 7\n\
         mode   loss            simulated ms   KB/s each way   dropped   retransmitted\n",
    );
    for mode in Mode::ALL {
        for loss in [Loss::Random(0.0), Loss::Random(0.01), Loss::Random(0.10), Loss::Random(0.30), Loss::Bursty] {
            let o = bulk(mode, loss, 7);
            let rate = 8 * MB * 1000 / o.elapsed_ms.max(1) / 1024;
            table += &format!(
                "{:<6} {:<15} {:>12}   {:>13}   {:>7}   {:>13}\n",
                mode.name(),
                format!("{loss:?}"),
                o.elapsed_ms,
                rate,
                o.dropped,
                o.retransmitted
            );
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/netsim_grid.txt");
    if std::env::var_os("KCPGATE_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("the snapshot folder");
        std::fs::write(&path, &table).expect("the snapshot written");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != table {
        let diff: Vec<String> = committed
            .lines()
            .zip(table.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "the netsim grid changed ({} line(s)):\n{}\n\nIf the change is intended, run \
             KCPGATE_UPDATE_SNAPSHOTS=1 cargo test -p kcpgate-core --test netsim and commit {}",
            diff.len().max(1),
            diff.join("\n"),
            path.display()
        );
    }
}
