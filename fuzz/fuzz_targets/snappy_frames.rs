//! The snappy framed-stream decoder: arbitrary input is decoded or refused without
//! a panic, and anything encoded decodes back to itself, however it is split.
#![no_main]

use kcpgate_core::snappy::{FrameDecoder, FrameEncoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [split, rest @ ..] = data else { return };
    let mut out = Vec::new();
    let _ = FrameDecoder::new().decode(rest, &mut out);

    let mut framed = Vec::new();
    let mut encoder = FrameEncoder::new();
    let half = rest.len() / 2;
    encoder.encode(&rest[..half], &mut framed);
    encoder.encode(&rest[half..], &mut framed);
    let cut = usize::from(*split) % (framed.len() + 1);
    let mut decoder = FrameDecoder::new();
    let mut back = Vec::new();
    decoder.decode(&framed[..cut], &mut back).expect("our own frames decode");
    decoder.decode(&framed[cut..], &mut back).expect("our own frames decode");
    assert_eq!(back, rest);
});
