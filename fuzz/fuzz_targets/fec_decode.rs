//! The FEC decoder fed arbitrary shards: no panic, and nothing it rebuilds is
//! longer than the largest shard it was given.
#![no_main]

use kcpgate_core::fec::{FecDecoder, Shards};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [d, p, rest @ ..] = data else { return };
    let Some(shards) = Shards::new(usize::from(d % 32) + 1, usize::from(p % 16) + 1) else { return };
    let mut decoder = FecDecoder::new(shards);
    let mut rest = rest;
    let mut longest = 0;
    // Packets, each after a 2-byte little-endian length.
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (packet, next) = tail.split_at(len);
        rest = next;
        longest = longest.max(packet.len());
        decoder.decode(packet, |rebuilt| assert!(rebuilt.len() <= longest, "rebuilt {} > {longest}", rebuilt.len()));
    }
});
