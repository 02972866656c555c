//! Packet crypto, FEC and the whole datagram pipeline, on 1400-byte packets.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::fec::{FecDecoder, FecEncoder, Shards, DATA_HEADER_LEN};
use kcpgate_core::kcp::{self, Mode};
use kcpgate_core::pipeline::{Connection, SessionConfig};

const PACKET: usize = 1400;

fn crypto(c: &mut Criterion) {
    let mut group = c.benchmark_group("crypto_seal_open_1400");
    group.throughput(Throughput::Bytes(PACKET as u64));
    for method in Method::ALL {
        let crypto = PacketCrypto::from_passphrase(method, "bench");
        let mut packet = vec![0x42u8; PACKET];
        let nonce = [7u8; 16];
        let nonce = &nonce[..crypto.nonce_len()];
        group.bench_function(method.name(), |b| {
            b.iter(|| {
                crypto.seal(&mut packet, nonce);
                crypto.open(&mut packet).expect("own packet opens");
            })
        });
    }
    group.finish();

    // Encryption alone, the figure `openssl speed -evp aes-*-cfb` reports.
    let mut group = c.benchmark_group("crypto_cfb_encrypt_1400");
    group.throughput(Throughput::Bytes(PACKET as u64));
    for method in [Method::Aes256, Method::Aes128] {
        let crypto = PacketCrypto::from_passphrase(method, "bench");
        let mut packet = vec![0x42u8; PACKET];
        group.bench_function(method.name(), |b| b.iter(|| crypto.encrypt(&mut packet)));
    }
    group.finish();
}

fn kcp_datagrams(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| (0..PACKET - 28).map(|j| (i * 31 + j) as u8).collect()).collect()
}

fn fec(c: &mut Criterion) {
    let shards = Shards::new(10, 3).unwrap();
    let group_data: Vec<Vec<u8>> = kcp_datagrams(10);
    let data_bytes: u64 = group_data.iter().map(|d| d.len() as u64).sum();
    let mut group = c.benchmark_group("fec_10_3");
    group.throughput(Throughput::Bytes(data_bytes));

    let mut enc = FecEncoder::new(shards.clone());
    let mut shard = vec![0u8; PACKET];
    let mut parity = vec![0u8; PACKET];
    let mut now = 0u32;
    group.bench_function("encode_group", |b| {
        b.iter(|| {
            for d in &group_data {
                let s = &mut shard[..DATA_HEADER_LEN + d.len()];
                s[DATA_HEADER_LEN..].copy_from_slice(d);
                now += 1;
                for i in 0..enc.encode(now, s) {
                    enc.write_parity(i, &mut parity);
                }
            }
        })
    });

    // Every group loses three data shards and is rebuilt from seven data + three parity.
    let mut packets = Vec::new();
    let mut enc = FecEncoder::new(shards.clone());
    for (i, d) in group_data.iter().enumerate() {
        let mut s = vec![0u8; DATA_HEADER_LEN + d.len()];
        s[DATA_HEADER_LEN..].copy_from_slice(d);
        let n = enc.encode(i as u32, &mut s);
        packets.push(s);
        for p in 0..n {
            let mut out = vec![0u8; enc.parity_len()];
            let len = enc.write_parity(p, &mut out);
            out.truncate(len);
            packets.push(out);
        }
    }
    let survivors: Vec<&Vec<u8>> =
        packets.iter().enumerate().filter(|(i, _)| ![1, 4, 8].contains(i)).map(|(_, p)| p).collect();
    let mut dec = FecDecoder::new(shards);
    let mut group_id = 0u32;
    group.bench_function("recover_3_of_10", |b| {
        b.iter(|| {
            // Renumber into a fresh group each time so the decoder sees new groups.
            let base = group_id * 13;
            group_id += 1;
            let mut rebuilt = 0;
            for p in &survivors {
                let mut p = (*p).clone();
                let seqid = u32::from_le_bytes(p[0..4].try_into().unwrap()) + base;
                p[0..4].copy_from_slice(&seqid.to_le_bytes());
                dec.decode(&p, |_| rebuilt += 1);
            }
            assert_eq!(rebuilt, 3);
        })
    });
    group.finish();
}

fn session(fec: Option<Shards>) -> SessionConfig {
    let mut k = kcp::Config { snd_wnd: 1024, rcv_wnd: 1024, stream: true, ..kcp::Config::default() };
    Mode::Fast3.apply(&mut k);
    SessionConfig { mtu: 1350, kcp: k, fec, write_delay: false, rate_limit: 0 }
}

/// Moves `total` bytes from `a` to `b` with instant, lossless delivery.
fn transfer(a: &mut Connection, b: &mut Connection, total: usize, chunk: &[u8], sink: &mut [u8], wire: &mut Vec<u8>) {
    let (mut sent, mut received, mut now) = (0, 0, 0u32);
    while received < total {
        while sent < total && a.writable() {
            sent += a.write(now, &chunk[..chunk.len().min(total - sent)]);
        }
        a.flush(now);
        for d in a.transmits() {
            wire.clear();
            wire.extend_from_slice(d);
            b.handle_datagram(now, wire).expect("own datagram");
        }
        a.clear_transmits();
        loop {
            let n = b.read(sink);
            if n == 0 {
                break;
            }
            received += n;
        }
        b.flush(now);
        for d in b.transmits() {
            wire.clear();
            wire.extend_from_slice(d);
            a.handle_datagram(now, wire).expect("own datagram");
        }
        b.clear_transmits();
        now = now.wrapping_add(1);
    }
}

fn pipeline(c: &mut Criterion) {
    let total = 16 << 20;
    let mut group = c.benchmark_group("pipeline_in_memory");
    group.throughput(Throughput::Bytes(total as u64));
    group.sample_size(10);
    let chunk = vec![0xa5u8; 8192];
    let mut sink = vec![0u8; 65536];
    let mut wire = Vec::with_capacity(1500);
    for (name, method, fec) in [
        ("aes_fec10_3", Method::Aes256, Shards::new(10, 3)),
        ("aes_nofec", Method::Aes256, None),
        ("null_nofec", Method::Null, None),
    ] {
        let crypto = Arc::new(PacketCrypto::from_passphrase(method, "bench"));
        let cfg = session(fec);
        group.bench_function(name, |bench| {
            bench.iter_batched(
                || {
                    let a = Connection::new(1, &cfg, crypto.clone(), [1; 32]).unwrap();
                    let b = Connection::new(1, &cfg, crypto.clone(), [2; 32]).unwrap();
                    (a, b)
                },
                |(mut a, mut b)| transfer(&mut a, &mut b, total, &chunk, &mut sink, &mut wire),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, crypto, fec, pipeline);
criterion_main!(benches);
