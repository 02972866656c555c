//! docs/protocol.md §12, statements 29–52 and 55: FEC, packet crypto, the listener and
//! the rate limit. Each test carries the number of the statement it checks.

mod support;

use cipher::{BlockCipherEncrypt, KeyInit};
use kcpgate_core::crypto::{derive_key, Method, PacketCrypto, CFB_IV};
use kcpgate_core::fec::{self, paws, FecDecoder, FecEncoder, Shards, DATA_HEADER_LEN, TYPE_DATA, TYPE_PARITY};
use kcpgate_core::kcp::{Header, Mode};
use kcpgate_core::listener::{DropReason, Listener, Outcome, ACCEPT_BACKLOG};
use kcpgate_core::pipeline::Connection;
use kcpgate_core::wire::Datagram;
use support::netsim::{Link, LinkConfig, Transfer};
use support::pair::{Layers, Pair, TransferApp};
use support::{crypto, dialled, session_config};

fn shards(d: usize, p: usize) -> Shards {
    Shards::new(d, p).unwrap()
}

/// A KCP datagram of `len` bytes (one PUSH with filler), conv `conv`, sn `sn`.
fn kcp_datagram(conv: u32, sn: u32, len: usize) -> Vec<u8> {
    let payload = len - 24;
    let h = Header { conv, cmd: 81, frg: 0, wnd: 32, ts: 0, sn, una: 0, len: payload as u32 };
    let mut d = vec![0u8; len];
    h.encode(&mut d);
    for (i, b) in d[24..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(sn as u8);
    }
    d
}

/// Encodes one KCP datagram; returns the data shard and any parity shards.
fn encode(enc: &mut FecEncoder, now: u32, kcp: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut shard = vec![0u8; DATA_HEADER_LEN];
    shard.extend_from_slice(kcp);
    let n = enc.encode(now, &mut shard);
    let parity = (0..n)
        .map(|i| {
            let mut out = vec![0u8; enc.parity_len()];
            let len = enc.write_parity(i, &mut out);
            out.truncate(len);
            out
        })
        .collect();
    (shard, parity)
}

fn seqid(p: &[u8]) -> u32 {
    u32::from_le_bytes(p[0..4].try_into().unwrap())
}

fn kind(p: &[u8]) -> u16 {
    u16::from_le_bytes(p[4..6].try_into().unwrap())
}

#[test]
fn conformance_29_fec_header_layout() {
    let mut enc = FecEncoder::new(shards(2, 1));
    let kcp = kcp_datagram(7, 0, 100);
    let (data, _) = encode(&mut enc, 0, &kcp);
    assert_eq!(seqid(&data), 0);
    assert_eq!(kind(&data), TYPE_DATA);
    assert_eq!(u16::from_le_bytes([data[6], data[7]]), 2 + 100, "size counts itself");
    assert_eq!(&data[8..], &kcp[..]);
    let (_, parity) = encode(&mut enc, 1, &kcp_datagram(7, 1, 60));
    assert_eq!(parity.len(), 1);
    assert_eq!((seqid(&parity[0]), kind(&parity[0])), (2, TYPE_PARITY));
}

#[test]
fn conformance_30_consecutive_seqids_parity_after_each_group() {
    let mut enc = FecEncoder::new(shards(3, 2));
    let mut seen = Vec::new();
    for sn in 0..9 {
        let (data, parity) = encode(&mut enc, sn, &kcp_datagram(1, sn, 50));
        seen.push((seqid(&data), kind(&data)));
        seen.extend(parity.iter().map(|p| (seqid(p), kind(p))));
    }
    let expect: Vec<(u32, u16)> = (0..15).map(|s| (s, if s % 5 < 3 { TYPE_DATA } else { TYPE_PARITY })).collect();
    assert_eq!(seen, expect);
}

#[test]
fn conformance_31_seqids_wrap_at_paws() {
    let s = shards(10, 3);
    assert_eq!(paws(10, 3), 4_294_967_287);
    let mut enc = FecEncoder::new(s.clone()).with_next_seqid(paws(10, 3) - 13);
    let mut ids = Vec::new();
    for sn in 0..20 {
        let (data, parity) = encode(&mut enc, sn, &kcp_datagram(1, sn, 40));
        ids.push(seqid(&data));
        ids.extend(parity.iter().map(|p| seqid(p)));
    }
    let start = paws(10, 3) - 13;
    assert_eq!(&ids[..13], &(start..paws(10, 3)).collect::<Vec<_>>()[..], "the last group before the wrap");
    assert_eq!(&ids[13..], &(0..ids.len() as u32 - 13).collect::<Vec<_>>()[..], "then 0, 1, 2, …");
}

#[test]
fn conformance_32_parity_as_long_as_the_longest_data_datagram() {
    let mut enc = FecEncoder::new(shards(3, 2));
    let mut longest = 0;
    let mut parity = Vec::new();
    for (sn, len) in [(0, 300), (1, 1200), (2, 90)] {
        let (data, p) = encode(&mut enc, sn, &kcp_datagram(1, sn, len));
        longest = longest.max(data.len());
        parity = p;
    }
    assert_eq!(parity.len(), 2);
    assert!(parity.iter().all(|p| p.len() == longest));
}

// ---- an independent Reed–Solomon reference for statement 33 ----

fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1d;
        }
        b >>= 1;
    }
    r
}

fn gf_pow(a: u8, n: usize) -> u8 {
    (0..n).fold(1u8, |acc, _| gf_mul(acc, a))
}

fn gf_inv(a: u8) -> u8 {
    (1..=255u8).find(|&x| gf_mul(a, x) == 1).expect("non-zero has an inverse")
}

/// klauspost's default matrix: Vandermonde V (rows r^c), times the inverse of its top.
fn encoding_matrix(data: usize, parity: usize) -> Vec<Vec<u8>> {
    let n = data + parity;
    let v: Vec<Vec<u8>> = (0..n).map(|r| (0..data).map(|c| gf_pow(r as u8, c)).collect()).collect();
    // Gauss–Jordan on [top | I].
    let mut aug: Vec<Vec<u8>> = (0..data)
        .map(|r| {
            let mut row = v[r].clone();
            row.extend((0..data).map(|c| u8::from(c == r)));
            row
        })
        .collect();
    for col in 0..data {
        let pivot = (col..data).find(|&r| aug[r][col] != 0).expect("invertible");
        aug.swap(col, pivot);
        let inv = gf_inv(aug[col][col]);
        for x in aug[col].iter_mut() {
            *x = gf_mul(*x, inv);
        }
        for r in 0..data {
            if r != col && aug[r][col] != 0 {
                let f = aug[r][col];
                let pivot_row = aug[col].clone();
                for (x, p) in aug[r].iter_mut().zip(pivot_row) {
                    *x ^= gf_mul(f, p);
                }
            }
        }
    }
    let inv: Vec<Vec<u8>> = aug.into_iter().map(|row| row[data..].to_vec()).collect();
    (0..n)
        .map(|r| (0..data).map(|c| (0..data).fold(0u8, |acc, k| acc ^ gf_mul(v[r][k], inv[k][c]))).collect())
        .collect()
}

#[test]
fn conformance_33_parity_equals_the_vandermonde_reference() {
    for (d, p, lens) in [
        (10, 3, vec![700, 24, 1322, 64, 100, 300, 999, 1, 40, 555]),
        (1, 1, vec![400]),
        (5, 2, vec![50, 60, 70, 1300, 2]),
    ] {
        let m = encoding_matrix(d, p);
        let mut enc = FecEncoder::new(shards(d, p));
        let mut units = Vec::new();
        let mut parity = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let kcp: Vec<u8> = (0..len).map(|j| (j * 7 + i * 13) as u8).collect();
            let (data, par) = encode(&mut enc, i as u32, &kcp);
            units.push(data[fec::HEADER_LEN..].to_vec());
            parity = par;
        }
        let l = units.iter().map(Vec::len).max().unwrap();
        for (i, shard) in parity.iter().enumerate() {
            let expect: Vec<u8> = (0..l)
                .map(|j| (0..d).fold(0u8, |acc, k| acc ^ gf_mul(m[d + i][k], *units[k].get(j).unwrap_or(&0))))
                .collect();
            assert_eq!(&shard[fec::HEADER_LEN..], &expect[..], "({d}, {p}) parity {i}");
        }
    }
}

#[test]
fn conformance_34_slow_group_gets_no_parity_but_consumes_seqids() {
    let mut enc = FecEncoder::new(shards(3, 2));
    assert_eq!(encode(&mut enc, 0, &kcp_datagram(1, 0, 50)).1.len(), 0);
    assert_eq!(encode(&mut enc, 10, &kcp_datagram(1, 1, 50)).1.len(), 0);
    let (_, parity) = encode(&mut enc, 10 + fec::MAX_ENCODE_LATENCY_MS, &kcp_datagram(1, 2, 50));
    assert!(parity.is_empty(), "500 ms between the last two data shards: no parity");
    let (next, _) = encode(&mut enc, 600, &kcp_datagram(1, 3, 50));
    assert_eq!(seqid(&next), 5, "but seqids 3 and 4 are skipped");
    encode(&mut enc, 601, &kcp_datagram(1, 4, 50));
    let (_, parity) = encode(&mut enc, 601 + fec::MAX_ENCODE_LATENCY_MS - 1, &kcp_datagram(1, 5, 50));
    assert_eq!(parity.len(), 2, "499 ms is quick enough");
}

/// kcpgate's addition to docs/protocol.md §4 (slow groups): a group that took 5 s or more from its first data
/// shard to its last gets no parity either, however short its last gap.
#[test]
fn a_group_slower_than_five_seconds_gets_no_parity_but_consumes_seqids() {
    let mut enc = FecEncoder::new(shards(3, 2));
    encode(&mut enc, 0, &kcp_datagram(1, 0, 50));
    encode(&mut enc, fec::MAX_GROUP_AGE_MS - 1, &kcp_datagram(1, 1, 50));
    let (_, parity) = encode(&mut enc, fec::MAX_GROUP_AGE_MS, &kcp_datagram(1, 2, 50));
    assert!(parity.is_empty(), "a keep-alive and its ACK 1 ms apart close a group that began 5 s ago");
    let (next, _) = encode(&mut enc, 10_000, &kcp_datagram(1, 3, 50));
    assert_eq!(seqid(&next), 5, "seqids 3 and 4 are skipped");
    encode(&mut enc, 10_000 + 4_800, &kcp_datagram(1, 4, 50));
    let (_, parity) = encode(&mut enc, 10_000 + fec::MAX_GROUP_AGE_MS - 1, &kcp_datagram(1, 5, 50));
    assert_eq!(parity.len(), 2, "4,999 ms from the group's first shard, 199 ms from the one before");
}

#[test]
fn conformance_35_receiver_without_fec_decodes_and_retunes() {
    let layers = Layers { method: Method::Aes256, fec: Some((10, 3)), ..Layers::bare(Mode::Fast3) };
    let mut link = LinkConfig::ideal(10_000);
    link.loss = 0.05;
    let mut pair = Pair::with_links(&layers, Link::new(link, 1), Link::new(LinkConfig::ideal(10_000), 2), 1, 0);
    pair.server.session_config_mut().fec = None;
    let total = 2 << 20;
    let mut app = TransferApp::new(Transfer::new(1, total, 2, 0), Transfer::new(2, 0, 1, total));
    assert!(pair.run_transfers(&mut app, 120_000));
    assert_eq!(app.server.first_mismatch, None);
    let session = pair.server.sessions().next().expect("the session").2;
    let decoder = session.connection().fec_decoder().expect("a decoder");
    assert_eq!(decoder.shards(), &shards(10, 3), "re-tuned to the peer's 10/3");
    assert!(session.snmp().fec_recovered > 0, "and recovered lost data shards");
}

#[test]
fn conformance_36_other_type_fields_are_bare_kcp() {
    let cfg = session_config(Mode::Fast, 32, 32, Some((10, 3)));
    let mut conn = Connection::new(5, &cfg, crypto(Method::Null, ""), [0; 32]).unwrap();
    let bare = kcp_datagram(5, 0, 60);
    assert!(matches!(Datagram::parse(&bare), Ok(Datagram::Kcp(_))), "cmd 81, frg 0 at offset 4 is no FEC type");
    conn.handle_plain(0, &bare);
    let mut buf = [0u8; 64];
    assert_eq!(conn.read(&mut buf), 36);
}

#[test]
fn conformance_37_lost_data_rebuilt_from_any_data_count_of_shards() {
    let mut enc = FecEncoder::new(shards(3, 2));
    let kcp: Vec<Vec<u8>> = (0..3).map(|sn| kcp_datagram(1, sn, 100 + 300 * sn as usize)).collect();
    let mut packets = Vec::new();
    for (i, k) in kcp.iter().enumerate() {
        let (d, p) = encode(&mut enc, i as u32, k);
        packets.push(d);
        packets.extend(p);
    }
    // Lose data 0 and 2; data 1 and the two parity shards make three.
    let mut dec = FecDecoder::new(shards(3, 2));
    let mut rebuilt = Vec::new();
    for i in [1, 3, 4] {
        dec.decode(&packets[i], |k| rebuilt.push(k.to_vec()));
        if i != 4 {
            assert!(rebuilt.is_empty(), "nothing before three shards are in");
        }
    }
    assert_eq!(rebuilt, vec![kcp[0].clone(), kcp[2].clone()], "exactly the lost datagrams, unpadded, in order");
}

#[test]
fn conformance_38_duplicates_ignored_and_seqids_beyond_paws_dropped() {
    let mut enc = FecEncoder::new(shards(3, 2));
    let (d0, _) = encode(&mut enc, 0, &kcp_datagram(1, 0, 80));
    let (_, _) = encode(&mut enc, 1, &kcp_datagram(1, 1, 80));
    let (_, parity) = encode(&mut enc, 2, &kcp_datagram(1, 2, 80));
    let mut dec = FecDecoder::new(shards(3, 2));
    let mut rebuilt = 0;
    dec.decode(&d0, |_| rebuilt += 1);
    dec.decode(&d0, |_| rebuilt += 1);
    dec.decode(&parity[0], |_| rebuilt += 1);
    assert_eq!(rebuilt, 0, "the duplicate did not count as a second shard");
    assert_eq!(dec.stats.dropped, 1);
    dec.decode(&parity[1], |_| rebuilt += 1);
    assert_eq!(rebuilt, 2, "three distinct shards rebuild data 1 and 2");

    let mut beyond = d0.clone();
    beyond[0..4].copy_from_slice(&paws(3, 2).to_le_bytes());
    let mut dec = FecDecoder::new(shards(3, 2));
    dec.decode(&beyond, |_| rebuilt += 1);
    assert_eq!((dec.stats.dropped, dec.groups_held()), (1, 0));
}

/// Feeds data shard 0 of group 0, then one shard of group `newer`, then the rest
/// of group 0's shards minus data 0's twin; returns what was rebuilt.
fn rebuilt_after_newer_group(newer: u32) -> usize {
    let s = shards(3, 2);
    let mut enc = FecEncoder::new(s.clone());
    let mut packets = Vec::new();
    for sn in 0..(3 * (newer + 1)) {
        let (d, p) = encode(&mut enc, sn, &kcp_datagram(1, sn, 60));
        packets.push(d);
        packets.extend(p);
    }
    let mut dec = FecDecoder::new(s);
    let mut rebuilt = 0;
    dec.decode(&packets[1], |_| rebuilt += 1); // group 0, data 1
    dec.decode(&packets[5 * newer as usize], |_| rebuilt += 1); // group `newer`, data 0
    dec.decode(&packets[3], |_| rebuilt += 1); // group 0, parity
    dec.decode(&packets[4], |_| rebuilt += 1); // group 0, parity
    rebuilt
}

#[test]
fn conformance_39_groups_over_three_behind_are_discarded() {
    assert_eq!(rebuilt_after_newer_group(3), 2, "3 groups behind: kept, data 0 and 2 rebuilt");
    assert_eq!(rebuilt_after_newer_group(4), 0, "4 groups behind: discarded");
}

/// AES-`n` block encryption of the CFB IV with `key`.
fn aes_iv(key: &[u8]) -> [u8; 16] {
    let mut block = cipher::Array::from(CFB_IV);
    match key.len() {
        16 => aes::Aes128::new_from_slice(key).unwrap().encrypt_block(&mut block),
        24 => aes::Aes192::new_from_slice(key).unwrap().encrypt_block(&mut block),
        _ => aes::Aes256::new_from_slice(key).unwrap().encrypt_block(&mut block),
    }
    block.into()
}

fn sealed(method: Method, key: &[u8; 32], nonce: &[u8], payload: &[u8]) -> Vec<u8> {
    let c = PacketCrypto::new(method, key);
    let mut p = vec![0u8; c.header_len()];
    p.extend_from_slice(payload);
    p.resize(p.len() + c.tail_len(), 0);
    c.seal(&mut p, nonce);
    p
}

#[test]
fn conformance_40_cfb_format() {
    let key = derive_key("k");
    let nonce: Vec<u8> = (0..16).collect();
    let payload = b"the payload that follows the header".to_vec();
    let wire = sealed(Method::Aes256, &key, &nonce, &payload);
    assert_eq!(wire.len(), 20 + payload.len());
    let e_iv = aes_iv(&key);
    let first: Vec<u8> = nonce.iter().zip(e_iv).map(|(n, k)| n ^ k).collect();
    assert_eq!(&wire[..16], &first[..], "block 0 = E(IV) ⊕ nonce: CFB with the fixed IV");
    let mut plain = wire.clone();
    PacketCrypto::new(Method::Aes256, &key).decrypt(&mut plain);
    assert_eq!(&plain[..16], &nonce[..]);
    assert_eq!(&plain[16..20], &crc32fast::hash(&payload).to_le_bytes(), "CRC-32/IEEE of [20, end), LE");
    assert_eq!(&plain[20..], &payload[..]);
    // 64-bit block ciphers use the first 8 IV bytes.
    let wire = sealed(Method::Blowfish, &key, &[0u8; 16], b"x");
    let mut block = cipher::Array::from(<[u8; 8]>::try_from(&CFB_IV[..8]).unwrap());
    <blowfish::Blowfish as KeyInit>::new_from_slice(&key).unwrap().encrypt_block(&mut block);
    assert_eq!(&wire[..8], &block[..]);
}

#[test]
fn conformance_41_crc_mismatch_counted_short_datagram_not() {
    let c = crypto(Method::Aes256, "k");
    let mut listener: Listener<u32> =
        Listener::new(session_config(Mode::Fast, 32, 32, None), c.clone(), [0; 32]).unwrap();
    let mut wire = sealed(Method::Aes256, &derive_key("k"), &[3; 16], &kcp_datagram(1, 0, 40));
    wire[30] ^= 0x40;
    assert_eq!(listener.handle_datagram(0, &1, &mut wire), Outcome::Dropped(DropReason::Checksum));
    assert_eq!(listener.handle_datagram(0, &1, &mut [0u8; 19]), Outcome::Dropped(DropReason::TooShort));
    assert_eq!((listener.stats[DropReason::Checksum], listener.stats[DropReason::TooShort]), (1, 1));
    assert_eq!(listener.snmp().in_csum_errors, 1, "only the CRC failure is an InCsumError");
    assert!(listener.is_empty());
}

/// A datagram longer than any peer's MTU (kcp-go reads 1,500 bytes at most) is
/// refused before decryption: even a genuine one sealed with the right key.
#[test]
fn datagrams_longer_than_any_mtu_are_refused_before_decryption() {
    let c = crypto(Method::Aes256, "k");
    let mut listener: Listener<u32> =
        Listener::new(session_config(Mode::Fast, 32, 32, None), c.clone(), [0; 32]).unwrap();
    let payload = kcp_datagram(1, 0, 1500 - 20);
    let mut longest = sealed(Method::Aes256, &derive_key("k"), &[3; 16], &payload);
    assert_eq!(longest.len(), 1500);
    assert_eq!(listener.handle_datagram(0, &1, &mut longest), Outcome::Created, "1,500 bytes is a datagram");
    let mut longer = sealed(Method::Aes256, &derive_key("k"), &[4; 16], &kcp_datagram(2, 0, 1500 - 20 + 1));
    assert_eq!(longer.len(), 1501);
    let before = longer.clone();
    assert_eq!(listener.handle_datagram(0, &2, &mut longer), Outcome::Dropped(DropReason::Malformed));
    assert_eq!(longer, before, "not decrypted in place");
    assert_eq!(listener.stats[DropReason::Malformed], 1);
}

#[test]
fn conformance_42_aes_key_lengths() {
    let key = derive_key("key lengths");
    for (method, len) in [(Method::Aes256, 32), (Method::Aes128, 16), (Method::Aes192, 24)] {
        let wire = sealed(method, &key, &[0u8; 16], b"payload");
        assert_eq!(&wire[..16], &aes_iv(&key[..len]), "{} uses the first {len} key bytes", method.name());
    }
}

#[test]
fn conformance_43_salsa20_keeps_the_first_8_bytes_clear() {
    let key = derive_key("salsa");
    let nonce: Vec<u8> = (100..116).collect();
    let wire = sealed(Method::Salsa20, &key, &nonce, &[0u8; 64]);
    assert_eq!(&wire[..8], &nonce[..8]);
    assert_ne!(&wire[8..16], &nonce[8..16]);
    let mut keystream = [0u8; 76];
    cipher::StreamCipher::apply_keystream(
        &mut <salsa20::Salsa20 as cipher::KeyIvInit>::new(
            &key.into(),
            &<[u8; 8]>::try_from(&nonce[..8]).unwrap().into(),
        ),
        &mut keystream,
    );
    assert_eq!(&wire[20..], &keystream[12..], "payload ⊕ Salsa20/20(key, nonce = bytes 0..8) from counter 0");
}

#[test]
fn conformance_44_xor_pad() {
    let key = derive_key("xor");
    let mut pad = [0u8; 1500];
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(&key, b"sH3CIVoF#rWLtJo6", 32, &mut pad);
    let mut zeros = vec![0u8; 1600];
    PacketCrypto::new(Method::Xor, &key).encrypt(&mut zeros);
    assert_eq!(&zeros[..1500], &pad[..]);
    assert!(zeros[1500..].iter().all(|&b| b == 0), "bytes past 1500 are untouched");
}

/// Reference TEA with `cycles` iterations, big-endian words.
fn tea_reference(key: &[u8], block: [u8; 8], cycles: usize) -> [u8; 8] {
    let k: Vec<u32> = key.chunks(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect();
    let (mut v0, mut v1) =
        (u32::from_be_bytes(block[..4].try_into().unwrap()), u32::from_be_bytes(block[4..].try_into().unwrap()));
    let mut sum = 0u32;
    for _ in 0..cycles {
        sum = sum.wrapping_add(0x9E37_79B9);
        v0 = v0.wrapping_add((v1 << 4).wrapping_add(k[0]) ^ v1.wrapping_add(sum) ^ (v1 >> 5).wrapping_add(k[1]));
        v1 = v1.wrapping_add((v0 << 4).wrapping_add(k[2]) ^ v0.wrapping_add(sum) ^ (v0 >> 5).wrapping_add(k[3]));
    }
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&v0.to_be_bytes());
    out[4..].copy_from_slice(&v1.to_be_bytes());
    out
}

#[test]
fn conformance_45_tea_is_8_cycles_big_endian() {
    let key = derive_key("tea");
    let wire = sealed(Method::Tea, &key, &[0u8; 16], b"x");
    let iv: [u8; 8] = CFB_IV[..8].try_into().unwrap();
    assert_eq!(&wire[..8], &tea_reference(&key[..16], iv, 8), "E(IV) with 8 cycles");
    assert_ne!(&wire[..8], &tea_reference(&key[..16], iv, 32), "not standard 32-cycle TEA");
}

#[test]
fn conformance_46_none_in_clear_null_no_header() {
    let key = derive_key("n");
    let nonce = [9u8; 16];
    let payload = b"visible".to_vec();
    let wire = sealed(Method::None, &key, &nonce, &payload);
    assert_eq!(&wire[..16], &nonce);
    assert_eq!(&wire[16..20], &crc32fast::hash(&payload).to_le_bytes());
    assert_eq!(&wire[20..], &payload[..]);
    assert_eq!(sealed(Method::Null, &key, &[], &payload), payload);
}

#[test]
fn conformance_47_aes_128_gcm_layout_and_auth_failure() {
    let key = derive_key("gcm");
    let nonce = [5u8; 12];
    let payload = kcp_datagram(3, 0, 50);
    let wire = sealed(Method::Aes128Gcm, &key, &nonce, &payload);
    assert_eq!(wire.len(), 12 + payload.len() + 16, "nonce ‖ ciphertext ‖ tag, no CRC");
    assert_eq!(&wire[..12], &nonce);
    let c = crypto(Method::Aes128Gcm, "gcm");
    let mut tampered = wire.clone();
    tampered[20] ^= 1;
    let mut listener: Listener<u32> = Listener::new(session_config(Mode::Fast, 32, 32, None), c, [0; 32]).unwrap();
    assert_eq!(listener.handle_datagram(0, &1, &mut tampered), Outcome::Dropped(DropReason::Checksum));
    assert_eq!(listener.snmp().in_csum_errors, 1);
    assert_eq!(listener.handle_datagram(0, &1, &mut wire.clone()), Outcome::Created);
}

#[test]
fn conformance_48_unknown_crypt_names_are_aes() {
    assert_eq!(Method::from_name("chacha-whatever"), None);
    assert_eq!(Method::from_name_or_aes("chacha-whatever"), Method::Aes256);
    let key = derive_key("k");
    let unknown = sealed(Method::from_name_or_aes("rot13"), &key, &[1; 16], b"abc");
    assert_eq!(unknown, sealed(Method::Aes256, &key, &[1; 16], b"abc"));
}

#[test]
fn conformance_49_dialled_session_random_conv_and_source_check() {
    let cfg = session_config(Mode::Fast, 32, 32, None);
    let c = crypto(Method::Aes256, "k");
    let conv_of = |l: &Listener<u32>| l.session(&2).expect("dialled").conv();
    let (a, b) = (dialled(cfg.clone(), c.clone(), 1), dialled(cfg.clone(), c.clone(), 2));
    assert_ne!(conv_of(&a), conv_of(&b), "conv comes from the CSPRNG");
    let mut d = dialled(cfg, c, 1);
    let conv = conv_of(&d);
    let mut wire = sealed(Method::Aes256, &derive_key("k"), &[0; 16], &kcp_datagram(conv, 0, 30));
    assert_eq!(d.handle_datagram(0, &3, &mut wire.clone()), Outcome::Dropped(DropReason::NotAccepting));
    assert_eq!((d.stats[DropReason::NotAccepting], d.len()), (1, 1), "counted, and no session for the stranger");
    assert_eq!(d.handle_datagram(0, &2, &mut wire), Outcome::Delivered);
    assert_eq!(d.session(&2).expect("dialled").snmp().in_pkts, 1);
}

#[test]
fn conformance_50_only_datagrams_with_a_conv_create_sessions() {
    let mut l: Listener<u32> =
        Listener::new(session_config(Mode::Fast, 32, 32, Some((3, 2))), crypto(Method::Null, ""), [0; 32]).unwrap();
    let mut enc = FecEncoder::new(shards(3, 2));
    let mut parity = Vec::new();
    for sn in 0..3 {
        parity = encode(&mut enc, sn, &kcp_datagram(1, sn, 40)).1;
    }
    assert_eq!(l.handle_datagram(0, &10, &mut parity[0].clone()), Outcome::Dropped(DropReason::NoConv));
    let mut short_data = vec![0u8; 8 + 20];
    short_data[4..6].copy_from_slice(&TYPE_DATA.to_le_bytes());
    assert_eq!(l.handle_datagram(0, &11, &mut short_data), Outcome::Dropped(DropReason::NoConv), "FEC data < 32 bytes");
    let (data, _) = encode(&mut FecEncoder::new(shards(3, 2)), 0, &kcp_datagram(1, 0, 24));
    assert_eq!(data.len(), 32);
    assert_eq!(l.handle_datagram(0, &12, &mut data.clone()), Outcome::Created, "FEC data with a full KCP header");
    assert_eq!(l.handle_datagram(0, &13, &mut kcp_datagram(2, 0, 24)), Outcome::Created, "bare KCP ≥ 24 bytes");
    assert_eq!(
        l.handle_datagram(0, &14, &mut kcp_datagram(2, 0, 24)[..20].to_vec()),
        Outcome::Dropped(DropReason::NoConv)
    );
    assert_eq!((l.accept(), l.accept(), l.accept()), (Some(12), Some(13), None));
}

#[test]
fn conformance_51_restarted_peer_replaces_its_session_only_at_sn_0() {
    let mut l: Listener<u32> =
        Listener::new(session_config(Mode::Fast, 32, 32, None), crypto(Method::Null, ""), [0; 32]).unwrap();
    assert_eq!(l.handle_datagram(0, &1, &mut kcp_datagram(100, 0, 30)), Outcome::Created);
    assert_eq!(l.handle_datagram(0, &1, &mut kcp_datagram(200, 5, 30)), Outcome::Dropped(DropReason::ConvMismatch));
    assert_eq!(l.session(&1).unwrap().conv(), 100);
    let mut garbage = kcp_datagram(200, 0, 30);
    garbage[4] = 0x99;
    assert_eq!(
        l.handle_datagram(0, &1, &mut garbage),
        Outcome::Dropped(DropReason::ConvMismatch),
        "garbage cannot replace it"
    );
    assert_eq!(l.handle_datagram(0, &1, &mut kcp_datagram(200, 0, 30)), Outcome::Replaced { old_conv: 100 });
    assert_eq!(l.session(&1).unwrap().conv(), 200);
    let closed = l.take_closed();
    assert_eq!((closed.len(), closed[0].2.conv()), (1, 100));
}

#[test]
fn conformance_52_accept_backlog_holds_128() {
    let mut l: Listener<u32> =
        Listener::new(session_config(Mode::Fast, 32, 32, None), crypto(Method::Null, ""), [0; 32]).unwrap();
    for addr in 0..ACCEPT_BACKLOG as u32 {
        assert_eq!(l.handle_datagram(0, &addr, &mut kcp_datagram(addr, 0, 30)), Outcome::Created);
    }
    assert_eq!(l.handle_datagram(0, &999, &mut kcp_datagram(999, 0, 30)), Outcome::Dropped(DropReason::BacklogFull));
    assert_eq!(
        l.handle_datagram(0, &5, &mut kcp_datagram(5, 1, 30)),
        Outcome::Delivered,
        "known peers still get through"
    );
    assert_eq!(l.accept(), Some(0));
    assert_eq!(l.handle_datagram(0, &999, &mut kcp_datagram(999, 0, 30)), Outcome::Created);
}

/// A session the application closes stays closed to its peer's old conversation
/// for the hold time, and a new conversation from the same address opens at once.
#[test]
fn a_closed_session_refuses_its_old_conversation_for_the_hold_time() {
    let mut l: Listener<u32> =
        Listener::new(session_config(Mode::Fast, 32, 32, None), crypto(Method::Null, ""), [0; 32]).unwrap();
    assert_eq!(l.handle_datagram(0, &1, &mut kcp_datagram(100, 0, 30)), Outcome::Created);
    assert_eq!(l.handle_datagram(0, &2, &mut kcp_datagram(300, 0, 30)), Outcome::Created);
    let id = l.id_at(&1).expect("a session");
    assert_eq!(l.close(id, 1_000, 60_000).map(|(_, c)| c.conv()), Some(100));
    assert_eq!(l.close(id, 1_000, 60_000).map(|(_, c)| c.conv()), None, "already closed");
    assert_eq!(l.accept(), Some(2), "a closed session leaves the backlog");
    assert_eq!(l.handle_datagram(2_000, &1, &mut kcp_datagram(100, 7, 30)), Outcome::Dropped(DropReason::Closed));
    assert_eq!(l.stats[DropReason::Closed], 1);
    assert_eq!(l.handle_datagram(2_000, &2, &mut kcp_datagram(300, 1, 30)), Outcome::Delivered, "others unaffected");
    assert_eq!(l.handle_datagram(60_999, &1, &mut kcp_datagram(100, 8, 30)), Outcome::Dropped(DropReason::Closed));
    assert_eq!(
        l.handle_datagram(61_000, &1, &mut kcp_datagram(100, 9, 30)),
        Outcome::Dropped(DropReason::MidSession),
        "the hold ran out, and the stale conversation still opens nothing"
    );
    assert_eq!(
        l.handle_datagram(61_000, &1, &mut kcp_datagram(100, 0, 30)),
        Outcome::Created,
        "its first segment does"
    );

    l.close(l.id_at(&1).expect("a session"), 70_000, 60_000);
    assert_eq!(l.handle_datagram(70_001, &1, &mut kcp_datagram(101, 0, 30)), Outcome::Created, "a new conversation");
    assert_eq!(l.handle_datagram(70_002, &1, &mut kcp_datagram(100, 0, 30)), Outcome::Replaced { old_conv: 101 });
}

/// Pushes data from `a` to `b` over an instant link for `ms` milliseconds, stepping
/// 1 ms at a time, and returns the bytes `a` put on the wire by each millisecond's
/// end, and the bytes `b` received.
fn paced_transfer(rate_limit: u32, ms: u32) -> (Vec<u64>, Vec<u8>) {
    let mut cfg = session_config(Mode::Fast3, 1024, 1024, Some((10, 3)));
    cfg.rate_limit = rate_limit;
    let c = crypto(Method::Aes256, "pace");
    let mut a = Connection::new(7, &cfg, c.clone(), [1; 32]).unwrap();
    cfg.rate_limit = 0;
    let mut b = Connection::new(7, &cfg, c, [2; 32]).unwrap();
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let (mut written, mut wire, mut by_ms, mut got) = (0, 0u64, Vec::new(), Vec::new());
    let mut buf = vec![0u8; 1 << 16];
    for now in 0..ms {
        a.handle_timeout(now);
        b.handle_timeout(now);
        written += a.write(now, &data[written..]);
        for _ in 0..4 {
            let to_b: Vec<Vec<u8>> = a.transmits().map(<[u8]>::to_vec).collect();
            a.clear_transmits();
            wire += to_b.iter().map(|d| d.len() as u64).sum::<u64>();
            for mut d in to_b {
                b.handle_datagram(now, &mut d).unwrap();
            }
            loop {
                let n = b.read(&mut buf);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let to_a: Vec<Vec<u8>> = b.transmits().map(<[u8]>::to_vec).collect();
            b.clear_transmits();
            for mut d in to_a {
                a.handle_datagram(now, &mut d).unwrap();
            }
        }
        by_ms.push(wire);
    }
    assert_eq!(a.snmp().retrans_segs, 0, "paced segments are timed from when they leave, so none time out");
    assert_eq!(got[..], data[..got.len()], "byte-exact under the limit");
    (by_ms, got)
}

#[test]
fn conformance_55_ratelimit_caps_the_outgoing_byte_rate_with_a_96000_byte_burst() {
    let rate = 400_000u64;
    let (paced, got) = paced_transfer(rate as u32, 10_000);
    // Bytes are charged after a flush sends them, so one flush may run over by the
    // parity of the FEC group it completes and one more datagram: 4 × 1350 bytes.
    let overshoot = 4 * 1350;
    for (t, &sent) in paced.iter().enumerate() {
        let allowed = 96_000 + overshoot + rate * t as u64 / 1000;
        assert!(sent <= allowed, "{sent} bytes on the wire by {t} ms, over the {allowed} allowed");
    }
    let total = *paced.last().unwrap();
    assert!(total as f64 >= 0.95 * (96_000 + rate * 9) as f64, "the limit is used, not undercut: {total} bytes");
    // FEC 10/3 leaves 10/13 of the wire for data, headers take 3 % more.
    assert!(got.len() as f64 > 0.72 * total as f64, "{} of {total} bytes on the wire are data", got.len());
    let (free, _) = paced_transfer(0, 1_000);
    assert!(*free.last().unwrap() > 5 * rate, "unlimited, the same setup sends much more: {:?}", free.last());
}
