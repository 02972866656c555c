//! QPP with any seed and pad count: decrypting what was encrypted with the same
//! PRNG start gives the bytes back.
#![no_main]

use kcpgate_core::qpp::{PadGeneration, Qpp, QppPrng};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [pads, seed_len, rest @ ..] = data else { return };
    let (seed, payload) = rest.split_at(usize::from(*seed_len).min(rest.len()));
    if seed.is_empty() {
        return;
    }
    let generation = if pads & 1 == 0 { PadGeneration::Current } else { PadGeneration::Legacy };
    let qpp = Qpp::new(seed, u16::from(*pads % 16) + 1, generation);
    let mut bytes = payload.to_vec();
    qpp.encrypt(&mut QppPrng::new(seed), &mut bytes);
    qpp.decrypt(&mut QppPrng::new(seed), &mut bytes);
    assert_eq!(bytes, payload);
});
