//! KCP hot paths: the timer flush with a full window in flight, and bulk transfer
//! between two connections in memory (no network, no loss).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kcpgate_core::kcp::{Config, Kcp, Mode};

fn config(window: u32) -> Config {
    let mut cfg = Config { mtu: 1350, snd_wnd: window, rcv_wnd: window, stream: true, ..Config::default() };
    Mode::Fast3.apply(&mut cfg);
    cfg
}

/// A connection with `n` full segments sent once and none due for retransmission,
/// as in kcp-go's BenchmarkFlush.
fn in_flight(n: u32) -> Kcp {
    let mut k = Kcp::new(1, config(n));
    k.input(0, &window_update(n as u16), true).unwrap();
    let payload = vec![0x5a; k.mss()];
    for _ in 0..n {
        k.send(&payload).unwrap();
    }
    k.flush(0);
    assert_eq!(k.transmits().len(), n as usize);
    k.transmits().clear();
    k
}

/// A WINS segment from the peer announcing `wnd`.
fn window_update(wnd: u16) -> Vec<u8> {
    let h = kcpgate_core::kcp::Header { conv: 1, cmd: 84, frg: 0, wnd, ts: 0, sn: 0, una: 0, len: 0 };
    let mut d = vec![0; 24];
    h.encode(&mut d);
    d
}

fn flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("flush");
    for n in [32u32, 1024] {
        let mut k = in_flight(n);
        group.bench_function(format!("{n}_in_flight"), |b| {
            // 5 ms later: nothing is due (RTO ≥ 30 ms), every segment is scanned.
            b.iter(|| {
                k.flush(5);
                k.transmits().clear();
            })
        });
    }
    group.finish();
}

/// Moves `total` bytes from `a` to `b` with instant delivery; returns virtual ms used.
fn transfer(a: &mut Kcp, b: &mut Kcp, total: usize, chunk: &[u8], sink: &mut [u8]) -> u32 {
    let (mut sent, mut received, mut now) = (0, 0, 0u32);
    while received < total {
        while sent < total && a.wait_snd() < a.config().snd_wnd as usize {
            let n = chunk.len().min(total - sent);
            for piece in chunk[..n].chunks(a.mss()) {
                a.send(piece).unwrap();
            }
            sent += n;
        }
        a.flush(now);
        for d in a.transmits().iter() {
            b.input(now, d, true).unwrap();
        }
        a.transmits().clear();
        loop {
            let n = b.read(sink);
            if n == 0 {
                break;
            }
            received += n;
        }
        b.flush(now);
        for d in b.transmits().iter() {
            a.input(now, d, true).unwrap();
        }
        b.transmits().clear();
        now = now.wrapping_add(1);
    }
    now
}

fn bulk(c: &mut Criterion) {
    let total = 16 << 20;
    let mut group = c.benchmark_group("bulk_in_memory");
    group.throughput(Throughput::Bytes(total as u64));
    group.sample_size(20);
    let chunk = vec![0xa5u8; 8192];
    let mut sink = vec![0u8; 65536];
    group.bench_function("16MiB_window_1024", |bench| {
        bench.iter_batched(
            || (Kcp::new(9, config(1024)), Kcp::new(9, config(1024))),
            |(mut a, mut b)| transfer(&mut a, &mut b, total, &chunk, &mut sink),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, flush, bulk);
criterion_main!(benches);
