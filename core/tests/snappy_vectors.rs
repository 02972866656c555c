//! Snappy framing against `core/tests/vectors/snappy.json`.

mod support;

use kcpgate_core::snappy::{FrameDecoder, FrameEncoder};
use support::vectors::{hex, load, u64_of};

/// Chunk types and body lengths of a framed stream.
fn chunks(stream: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let len = u32::from_le_bytes([stream[at + 1], stream[at + 2], stream[at + 3], 0]) as usize;
        out.push((stream[at], len));
        at += 4 + len;
    }
    out
}

#[test]
fn recorded_streams_decode_and_ours_have_the_same_shape() {
    let v = load("snappy.json");
    for input in v["inputs"].as_array().unwrap() {
        let data = hex(&input["input_hex"]);
        assert_eq!(data.len() as u64, u64_of(&input["input_len"]));
        for case in input["cases"].as_array().unwrap() {
            let recorded = hex(&case["output_hex"]);
            let what = format!("{} / {}", input["name"], case["mode"]);
            // The Go stream decodes to the input, whole and fed in ragged pieces.
            for piece in [recorded.len().max(1), 7, 1] {
                let mut dec = FrameDecoder::new();
                let mut out = Vec::new();
                for p in recorded.chunks(piece) {
                    dec.decode(p, &mut out).unwrap_or_else(|e| panic!("{what}: {e}"));
                }
                assert_eq!(out, data, "{what}: decoding in pieces of {piece}");
            }
            // Our encoder, written the way kcptun writes (the recorded write sizes).
            let mut enc = FrameEncoder::new();
            let mut ours = Vec::new();
            let mut at = 0;
            for w in case["compstream_write_sizes"].as_array().unwrap() {
                let n = u64_of(w) as usize;
                enc.encode(&data[at..at + n], &mut ours);
                at += n;
            }
            let mut dec = FrameDecoder::new();
            let mut back = Vec::new();
            dec.decode(&ours, &mut back).unwrap();
            assert_eq!(back, data, "{what}: our stream decodes");
            let (theirs, mine) = (chunks(&recorded), chunks(&ours));
            assert_eq!(mine.len(), theirs.len(), "{what}: one chunk per write, as kcptun");
            for (m, t) in mine.iter().zip(&theirs) {
                assert_eq!(m.0, t.0, "{what}: same chunk type choice");
                if t.0 != 0x00 {
                    assert_eq!(m.1, t.1, "{what}: identifier and uncompressed chunks are exact");
                }
            }
            if theirs.iter().all(|c| c.0 != 0x00) {
                assert_eq!(ours, recorded, "{what}: without compressed chunks the bytes are identical");
            }
        }
    }
}
