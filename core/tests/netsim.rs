//! Bulk transfers through the simulated network, every kcptun mode preset against
//! every loss pattern the issue tracker asks for.

mod support;

use kcpgate_core::kcp::Mode;
use support::netsim::{GilbertElliott, Link, LinkConfig, Sim, Transfer};
use support::{client_config, server_config, KcpEndpoint};

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
            cfg.bursty = Some(GilbertElliott { p_good_to_bad: 0.01, p_bad_to_good: 0.25, loss_good: 0.0, loss_bad: 0.75 })
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
    let client = KcpEndpoint::new(0x1122_3344, client_config(mode));
    let server = KcpEndpoint::new(0x1122_3344, server_config(mode));
    let total = 8 * MB;
    let mut sim = Sim::new(
        client,
        server,
        Link::new(link(loss), seed),
        Link::new(link(loss), seed ^ 0xdead_beef),
        Transfer::new(1, total, 2, total),
        Transfer::new(2, total, 1, total),
        // Start close to the u32 wrap so every run crosses it.
        u32::MAX - 1_000,
    );
    let result = sim.run(600_000);
    assert!(result.finished, "{mode:?} {loss:?}: transfer did not finish in 600 s of simulated time");
    for (side, app) in [("client", &sim.app_a), ("server", &sim.app_b)] {
        assert_eq!(app.first_mismatch, None, "{mode:?} {loss:?}: {side} received a wrong byte");
        assert_eq!(app.received, total, "{mode:?} {loss:?}: {side} received a wrong amount");
    }
    let dropped = sim.a_to_b.stats.dropped() + sim.b_to_a.stats.dropped();
    let retransmitted = sim.a.kcp.stats().retrans_segs + sim.b.kcp.stats().retrans_segs;
    println!(
        "{:<6} {:<14} {:>8} ms  dropped {:>6}  retransmitted {:>6}  fast {:>5} early {:>5} lost {:>6}  steps {}",
        mode.name(),
        format!("{loss:?}"),
        result.elapsed_ms,
        dropped,
        retransmitted,
        sim.a.kcp.stats().fast_retrans_segs + sim.b.kcp.stats().fast_retrans_segs,
        sim.a.kcp.stats().early_retrans_segs + sim.b.kcp.stats().early_retrans_segs,
        sim.a.kcp.stats().lost_segs + sim.b.kcp.stats().lost_segs,
        result.steps,
    );
    Outcome { elapsed_ms: result.elapsed_ms, dropped, retransmitted }
}

macro_rules! grid {
    ($($name:ident: $mode:expr, $loss:expr;)*) => {$(
        #[test]
        fn $name() {
            let o = bulk($mode, $loss, 7);
            let _ = o;
        }
    )*};
}

grid! {
    bulk_normal_loss0: Mode::Normal, Loss::Random(0.0);
    bulk_normal_loss1: Mode::Normal, Loss::Random(0.01);
    bulk_normal_loss10: Mode::Normal, Loss::Random(0.10);
    bulk_normal_loss30: Mode::Normal, Loss::Random(0.30);
    bulk_normal_bursty: Mode::Normal, Loss::Bursty;
    bulk_fast_loss0: Mode::Fast, Loss::Random(0.0);
    bulk_fast_loss1: Mode::Fast, Loss::Random(0.01);
    bulk_fast_loss10: Mode::Fast, Loss::Random(0.10);
    bulk_fast_loss30: Mode::Fast, Loss::Random(0.30);
    bulk_fast_bursty: Mode::Fast, Loss::Bursty;
    bulk_fast2_loss0: Mode::Fast2, Loss::Random(0.0);
    bulk_fast2_loss1: Mode::Fast2, Loss::Random(0.01);
    bulk_fast2_loss10: Mode::Fast2, Loss::Random(0.10);
    bulk_fast2_loss30: Mode::Fast2, Loss::Random(0.30);
    bulk_fast2_bursty: Mode::Fast2, Loss::Bursty;
    bulk_fast3_loss0: Mode::Fast3, Loss::Random(0.0);
    bulk_fast3_loss1: Mode::Fast3, Loss::Random(0.01);
    bulk_fast3_loss10: Mode::Fast3, Loss::Random(0.10);
    bulk_fast3_loss30: Mode::Fast3, Loss::Random(0.30);
    bulk_fast3_bursty: Mode::Fast3, Loss::Bursty;
}
